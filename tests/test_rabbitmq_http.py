"""The RabbitMQ front-end over real HTTP: what rabbitmq_auth_backend_http sends, what it reads back.

The fields and paths are those of deps/rabbitmq_auth_backend_http/src/rabbit_auth_backend_http.erl
(user_login_authentication/2, check_vhost_access/3, check_resource_access/4, check_topic_access/4),
with the values rabbitmq_mqtt gives them (tests/test_rabbitmq_e2e.py drives a real broker).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from .support import ServerProcess, wait_for

AUTHENTICATE = """\
if client.username == "admin" and client.password == "s3cret":
    allow()
elif client.username == "ignored":
    ignore()
else:
    deny("unknown user")
"""

AUTHORIZE = """\
if action == "subscribe" and topic == "devices/" + client.id + "/+":
    allow()
elif action == "publish" and topic_match("devices/" + client.id + "/#", topic):
    allow()
else:
    deny()
"""

USER = {"username": "admin", "password": "s3cret", "vhost": "/", "client_id": "dev-1"}
VHOST = {"username": "admin", "vhost": "/", "ip": "127.0.0.1", "tags": "", "client_id": "dev-1"}
TOPIC = {"username": "admin", "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "write",
         "tags": "", "routing_key": "devices.dev-1.temp", "variable_map.client_id": "dev-1",
         "variable_map.username": "admin"}


def rules_with(tmp_path: Path, files: Mapping[str, str]) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in files.items():
        (rules / name).write_text(text)
    return rules


def resource(kind: str, name: str, permission: str, client_id: str | None = "dev-1") -> dict[str, str]:
    """A resource check as rabbitmq_mqtt makes it (with the client id), or with client_id=None as an
    AMQP 0-9-1 client's check comes (rabbit_channel gives it no variable map: no client_id field)."""
    fields = {"username": "admin", "vhost": "/", "resource": kind, "name": name, "permission": permission, "tags": ""}
    return fields if client_id is None else {**fields, "client_id": client_id}


def call(server: ServerProcess, check: str, fields: Mapping[str, str], method: str = "GET",
         content_type: str = "application/x-www-form-urlencoded", raw: bytes | None = None) -> tuple[int, str, str]:
    """One call as RabbitMQ's httpc makes it: (status, content type, body)."""
    query = urllib.parse.urlencode(fields)
    url = f"http://127.0.0.1:{server.http_port}/rabbitmq/{check}"
    if method == "GET":
        request = urllib.request.Request(url + ("?" + query if query else ""), method="GET")
    else:
        request = urllib.request.Request(url, data=raw if raw is not None else query.encode(), method=method,
                                         headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get_content_type(), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), err.read().decode()


@pytest.fixture
def portable(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(rules_with(tmp_path, {"authenticate.star": AUTHENTICATE, "authorize.star": AUTHORIZE}))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_portable_rules_answer_the_user_and_topic_checks(portable: ServerProcess, method: str) -> None:
    assert call(portable, "user", USER, method) == (200, "text/plain", "allow")
    assert call(portable, "user", {**USER, "password": "wrong"}, method) == (200, "text/plain", "deny")
    # the routing key comes back as the MQTT topic: devices.dev-1.temp -> devices/dev-1/temp
    assert call(portable, "topic", TOPIC, method)[2] == "allow"
    assert call(portable, "topic", {**TOPIC, "routing_key": "devices.dev-2.temp"}, method)[2] == "deny"
    # a subscription's filter: * comes back as +
    sub = {**TOPIC, "permission": "read", "routing_key": "devices.dev-1.*"}
    assert call(portable, "topic", sub, method)[2] == "allow"
    assert call(portable, "topic", {**sub, "routing_key": "devices.dev-1.#"}, method)[2] == "deny"


def test_ignore_answers_deny_and_the_answer_has_no_newline(portable: ServerProcess) -> None:
    status, kind, body = call(portable, "user", {**USER, "username": "ignored"})
    assert (status, kind, body) == (200, "text/plain", "deny")
    with urllib.request.urlopen(f"http://127.0.0.1:{portable.http_port}/rabbitmq/user?"
                                + urllib.parse.urlencode(USER), timeout=10) as resp:
        assert resp.read() == b"allow"  # exactly: RabbitMQ crashes the connection on "allow\n"


def test_without_rules_each_check_answers_its_default(tmp_path: Path,
                                                      start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(rules_with(tmp_path, {}))
    assert call(server, "user", USER)[2] == "deny"
    assert call(server, "vhost", VHOST)[2] == "allow"
    # only the default vhost: an MQTT client picks its vhost (`tenant-b:admin`), which no portable file sees
    for vhost in ("tenant-b", "", "/x", " /"):
        assert call(server, "vhost", {**VHOST, "vhost": vhost})[2] == "deny", vhost
    assert call(server, "topic", TOPIC)[2] == "allow"
    expected = {
        ("queue", "mqtt-subscription-dev-1qos1", "configure"): "allow",
        ("queue", "mqtt-subscription-dev-1qos0", "read"): "allow",
        ("exchange", "amq.topic", "read"): "allow",
        ("exchange", "amq.topic", "write"): "allow",
        ("exchange", "amq.topic", "configure"): "deny",
        ("exchange", "amq.direct", "write"): "deny",
        ("queue", "orders", "read"): "deny",
    }
    for (kind, name, permission), answer in expected.items():
        assert call(server, "resource", resource(kind, name, permission))[2] == answer, (kind, name, permission)
    text = server.metrics_text()
    assert 'hookrules_decisions_total{broker="rabbitmq",decision="allow",hook="rabbitmq.vhost",source="default"} 1.0' in text
    assert 'hookrules_decisions_total{broker="rabbitmq",decision="deny",hook="rabbitmq.user",source="default"} 1.0' in text


def test_the_resource_default_gives_each_mqtt_client_its_own_queues_only(tmp_path: Path,
                                                                      start_server: Callable[..., ServerProcess]) -> None:
    """Without rabbitmq.resource.star a client may use only the queues rabbitmq_mqtt declares for its
    own client id, and a check without a client id (an AMQP 0-9-1 client with the same credentials)
    gets nothing: else an AMQP client could consume, purge or delete any MQTT client's subscription
    queue, reading the messages of another client's subscriptions past every topic check."""
    server = start_server(rules_with(tmp_path, {}))
    clients = ["dev-1", "dev-2", "dev-1qos1", "a.b", "x y", None, ""]
    queues = {f"mqtt-subscription-{c}qos{n}" for c in clients if c for n in (0, 1, 2)}
    queues |= {"mqtt-subscription-", "mqtt-subscription-qos1", "mqtt-subscription-dev-1qos1qos1",
               "mqtt-subscription-dev-1", "orders", "amq.topic"}
    for client_id in clients:
        own = {f"mqtt-subscription-{client_id}qos{n}" for n in (0, 1, 2)} if client_id else set()
        for permission in ("configure", "read", "write"):
            for name in sorted(queues):
                expected = "allow" if name in own else "deny"
                got = call(server, "resource", resource("queue", name, permission, client_id))
                assert got == (200, "text/plain", expected), (client_id, name, permission)
            for name in ("amq.topic", "amq.direct", "mqtt-subscription-dev-1qos1", ""):
                expected = "allow" if client_id and name == "amq.topic" and permission != "configure" else "deny"
                got = call(server, "resource", resource("exchange", name, permission, client_id))
                assert got == (200, "text/plain", expected), (client_id, name, permission)


def test_own_files_win_and_the_user_check_answers_tags(tmp_path: Path,
                                                       start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(rules_with(tmp_path, {
        "authenticate.star": "deny()\n",
        "authorize.star": "deny()\n",
        "rabbitmq.user.star": 'if vhost == "/" and client.id == "dev-1":\n    allow(tags=["monitoring", "management"])\n',
        "rabbitmq.topic.star": ('if name == "amq.topic" and permission == "write" and routing_key == "a.b" and "ops" in tags:\n'
                                '    allow()\n'),
        "rabbitmq.vhost.star": 'if ip == "127.0.0.1" and vhost == "/" and client.peerhost == ip:\n    allow()\n',
        "rabbitmq.resource.star": 'if resource == "queue" and name == "q" and permission == "read":\n    allow()\n',
    }))
    assert call(server, "user", USER)[2] == "allow monitoring management"
    assert call(server, "user", {**USER, "client_id": "other"})[2] == "deny"  # the rule returns nothing: ignore
    assert call(server, "topic", {**TOPIC, "routing_key": "a.b", "tags": "ops admin"})[2] == "allow"
    assert call(server, "topic", {**TOPIC, "routing_key": "a.b"})[2] == "deny"
    assert call(server, "vhost", VHOST)[2] == "allow"
    assert call(server, "vhost", {**VHOST, "ip": "10.0.0.1"})[2] == "deny"
    assert call(server, "resource", resource("queue", "q", "read"))[2] == "allow"
    assert call(server, "resource", resource("queue", "q", "write"))[2] == "deny"


def test_tags_outside_the_user_check_are_a_rule_error(tmp_path: Path,
                                                      start_server: Callable[..., ServerProcess]) -> None:
    # written plainly, `hookrules check` and the loader refuse it; called under another name, the run does
    aliased = 'let_in = allow\nlet_in(tags=["administrator"])\n'
    rules = rules_with(tmp_path, {"authenticate.star": aliased, "rabbitmq.vhost.star": aliased,
                                  "rabbitmq.resource.star": 'allow(tags=["administrator"])\n'})
    server = start_server(rules, "--failure-policy", "rabbitmq.vhost=allow")
    # authenticate.star cannot give tags, even when it answers RabbitMQ's user check
    assert call(server, "user", USER)[2] == "deny"
    assert call(server, "vhost", VHOST)[2] == "allow"  # by the check's own failure policy, configured
    assert call(server, "resource", resource("queue", "mqtt-subscription-cqos0", "read"))[2] == "deny"
    text = server.metrics_text()
    assert 'hookrules_rule_errors_total{hook="rabbitmq.user",kind="runtime"} 1.0' in text
    assert 'hookrules_rule_errors_total{hook="rabbitmq.vhost",kind="runtime"} 1.0' in text
    log = server.log()
    assert "allow(tags=...) means nothing in authenticate" in log
    assert "allow() in rabbitmq.resource has no 'tags'" in log


def test_bad_requests_are_answered_deny_and_counted(portable: ServerProcess) -> None:
    assert call(portable, "user", {"password": "x"}) == (200, "text/plain", "deny")
    assert call(portable, "topic", {k: v for k, v in TOPIC.items() if k != "permission"})[2] == "deny"
    assert call(portable, "topic", {k: v for k, v in TOPIC.items() if k != "routing_key"})[2] == "deny"
    # a topic permission other than write (publish) and read (subscribe) is no action authorize.star knows
    for permission in ("configure", "", "WRITE"):
        assert call(portable, "topic", {**TOPIC, "permission": permission}) == (200, "text/plain", "deny"), permission
    assert call(portable, "nope", USER) == (404, "text/plain", "deny")
    assert call(portable, "user", USER, method="PUT")[0:3:2] == (405, "deny")
    assert call(portable, "user", USER, "POST", content_type="application/json")[0:3:2] == (415, "deny")
    repeated = b"username=admin&username=other&password=s3cret"
    assert call(portable, "user", {}, "POST", raw=repeated) == (200, "text/plain", "deny")
    assert call(portable, "user", {}, "POST", raw=b"username=%ff&password=s3cret") == (200, "text/plain", "deny")
    assert call(portable, "user", {}, "POST", raw="username=é".encode()) == (200, "text/plain", "deny")
    text = portable.metrics_text()
    for reason in ("missing_field", "unknown_path", "bad_method", "bad_content_type", "repeated_field",
                   "bad_encoding", "bad_field"):
        assert f'hookrules_bad_requests_total{{broker="rabbitmq",reason="{reason}"}}' in text, reason
    log = wait_for(lambda: "refused a RabbitMQ request" in portable.log() and portable.log())
    assert "s3cret" not in log  # never a password in the log
    # and the server still answers
    assert call(portable, "user", USER)[2] == "allow"


def test_a_vernemq_webhook_under_the_prefix_is_still_a_webhook(portable: ServerProcess) -> None:
    body = b'{"client_id": "c", "username": "admin", "password": "s3cret", "mountpoint": "", "peer_addr": "127.0.0.1", "peer_port": 1, "clean_session": true}'
    request = urllib.request.Request(f"http://127.0.0.1:{portable.http_port}/rabbitmq/user", data=body,
                                     headers={"vernemq-hook": "auth_on_register", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers.get_content_type() == "application/json"
        assert json.loads(resp.read()) == {"result": "ok"}


@pytest.mark.parametrize("check", ["user", "vhost", "resource", "topic", "nope"])
def test_expect_100_continue_is_answered_under_the_prefix(portable: ServerProcess, check: str) -> None:
    """A client that sends `Expect: 100-continue` waits for the interim 100 before its body: without it,
    the call stalled until the body timeout and was refused 408."""
    fields = {"user": USER, "vhost": VHOST, "resource": resource("queue", "mqtt-subscription-dev-1qos0", "read"),
              "topic": TOPIC, "nope": USER}[check]
    body = urllib.parse.urlencode(fields).encode()
    with socket.create_connection(("127.0.0.1", portable.http_port), timeout=5) as sock:
        sock.sendall(f"POST /rabbitmq/{check} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        reply = b""
        while len(reply) < len(interim):  # an unknown path's 404 may follow the 100 at once
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(interim), reply
        reply = reply[len(interim):]
        sock.sendall(body)
        while not reply.endswith((b"allow", b"deny")):
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert (status, reply.rsplit(b"\r\n\r\n", 1)[1]) == ((404, b"deny") if check == "nope" else (200, b"allow"))


def test_eval_and_test_answer_a_check_no_file_answers_as_the_server_does(
        tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    """Without a rule file each RabbitMQ check answers its default (user deny, vhost allow for "/", topic allow,
    resource the asking client's own MQTT resources). `hookrules eval` and `hookrules test` said
    `ignore` (which RabbitMQ reads as deny) for every one: a table test of the defaults failed, and eval
    told the author a topic the server allows was refused. Each check's events, live and through eval."""
    rules = rules_with(tmp_path, {})
    server = start_server(rules)
    checks = [("user", USER), ("vhost", VHOST), ("vhost", {**VHOST, "vhost": "tenant-b"}), ("topic", TOPIC),
              ("topic", {**TOPIC, "permission": "read"})]
    checks += [("resource", resource(kind, name, permission, client_id))
               for kind, name in (("queue", "mqtt-subscription-dev-1qos1"), ("queue", "orders"),
                                  ("exchange", "amq.topic"), ("exchange", "amq.direct"))
               for permission in ("configure", "read") for client_id in ("dev-1", None)]
    cases = []
    for check, fields in checks:
        live = call(server, check, fields)[2]
        said = subprocess.run([sys.executable, "-m", "hookrules", "eval", "--rules", str(rules), f"rabbitmq.{check}",
                               "--raw", "--event", json.dumps(fields)], capture_output=True, text=True, timeout=60).stdout
        decision = said.split("decision: ", 1)[-1].split()[0] if "decision: " in said else ""
        assert (decision if decision != "ignore" else "deny") == live, (check, fields, said)
        event = {"client": {"id": fields.get("client_id", fields.get("variable_map.client_id", "")),
                            "username": fields["username"]},
                 **{k: v for k, v in fields.items() if k in ("vhost", "resource", "name", "permission", "routing_key")}}
        cases.append({"name": f"{check} {len(cases)}", "hook": f"rabbitmq.{check}", "event": event,
                      "expect": {"decision": live}})
    (rules / "tests").mkdir()
    (rules / "tests" / "defaults.yaml").write_text(json.dumps(cases))  # JSON is YAML
    tested = subprocess.run([sys.executable, "-m", "hookrules", "test", str(rules)], capture_output=True, text=True,
                            timeout=60)
    assert tested.returncode == 0 and f"{len(cases)} passed" in tested.stdout, tested.stdout + tested.stderr
