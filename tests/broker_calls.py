"""One call of each broker, as the broker makes it, for tests that ask the same question of all three:
EMQX over gRPC (protoc-generated stubs), VerneMQ over its webhook, RabbitMQ as rabbitmq_auth_backend_http."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs


def emqx_authenticate(server: ServerProcess, stubs: Stubs, client_id: str, username: str, password: str) -> bool:
    """client.authenticate: True for allow, False for deny (ignore: EMQX's own result, here False)."""
    pb = stubs.pb2
    with server.channel() as channel:
        reply = stubs.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, client_id, username, password=password), result=False, meta=meta(pb)),
            timeout=10)
    return bool(reply.bool_result)


def emqx_authorize(server: ServerProcess, stubs: Stubs, client_id: str, action: str, topic: str) -> bool:
    pb = stubs.pb2
    kind = pb.ClientAuthorizeRequest.PUBLISH if action == "publish" else pb.ClientAuthorizeRequest.SUBSCRIBE
    with server.channel() as channel:
        reply = stubs.stub(channel).OnClientAuthorize(pb.ClientAuthorizeRequest(
            clientinfo=client_info(pb, client_id, "u"), type=kind, topic=topic, result=False, meta=meta(pb)),
            timeout=10)
    return bool(reply.bool_result)


def vernemq(server: ServerProcess, hook: str, body: Mapping[str, Any]) -> Any:
    """A webhook's JSON reply (payloads as plain text: ?base64=off)."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/?base64=off",
                                     data=json.dumps(body).encode(),
                                     headers={"vernemq-hook": hook, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def vernemq_register(server: ServerProcess, client_id: str, username: str, password: str) -> Any:
    return vernemq(server, "auth_on_register", {"peer_addr": "127.0.0.1", "peer_port": 1, "mountpoint": "",
                                                "client_id": client_id, "username": username, "password": password,
                                                "clean_session": True})


def vernemq_subscribe(server: ServerProcess, client_id: str, topic: str, qos: int = 0) -> Any:
    return vernemq(server, "auth_on_subscribe", {"client_id": client_id, "mountpoint": "", "username": "u",
                                                 "topics": [{"topic": topic, "qos": qos}]})


def vernemq_publish(server: ServerProcess, client_id: str, topic: str, qos: int = 0) -> Any:
    return vernemq(server, "auth_on_publish", {"client_id": client_id, "mountpoint": "", "username": "u",
                                               "topic": topic, "qos": qos, "payload": "hi", "retain": False})


def rabbitmq(server: ServerProcess, check: str, fields: Mapping[str, str], method: str = "GET") -> tuple[int, str]:
    """(status, body) of one check."""
    query = urllib.parse.urlencode(fields)
    url = f"http://127.0.0.1:{server.http_port}/rabbitmq/{check}"
    request = (urllib.request.Request(f"{url}?{query}") if method == "GET" else
               urllib.request.Request(url, data=query.encode(), method="POST",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"}))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def rabbitmq_user(server: ServerProcess, client_id: str, username: str, password: str) -> str:
    return rabbitmq(server, "user", {"username": username, "password": password, "vhost": "/",
                                     "client_id": client_id})[1]


def rabbitmq_topic(server: ServerProcess, client_id: str, action: str, routing_key: str) -> str:
    return rabbitmq(server, "topic", {"username": "u", "vhost": "/", "resource": "topic", "name": "amq.topic",
                                      "permission": "write" if action == "publish" else "read", "tags": "",
                                      "routing_key": routing_key, "variable_map.client_id": client_id,
                                      "variable_map.username": "u"})[1]
