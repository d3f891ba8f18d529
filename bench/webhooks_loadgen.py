"""Broker HTTP auth traffic for bench/webhooks_bench.py: the requests, and the Python load generator.

MIXES holds one Mix per broker: the requests it sends, cycled, and how a good reply looks.

vernemq: what VerneMQ's vmq_webhooks POSTs to "/" for a client that connects, subscribes and publishes
(bodies as in ../shared/reference/vernemq-webhooks.md, section 1.3, payloads base64 as by default),
each with `Content-Type: application/json` and `vernemq-hook: <hook>`; a good reply is HTTP 200 and a
JSON object whose result is "ok":

    auth_on_register   username "gooduser" (authenticate.star lets everyone but "baduser" in)
    auth_on_subscribe  two topics: t/1 and the client's own devices/<id>/cmd/# (authorize.star allows both)
    auth_on_publish    t/demo, payload "MjEuNQ==" (21.5; allowed, and answered a plain "ok": only EMQX's
                       message.publish.star rewrites t/demo, VerneMQ's auth_on_publish goes to authorize.star)
    auth_on_publish    sensors/1, payload "MjEuNQ==" (allowed)

rabbitmq: what RabbitMQ 3.10's rabbitmq_auth_backend_http POSTs as forms
(`auth_http.http_method = post`, application/x-www-form-urlencoded) to /rabbitmq/<check> for a client
that connects, subscribes and publishes, in this order; a good reply is HTTP 200 and the body exactly
`allow` (what RabbitMQ reads; a `deny` is a bad reply):

    user      username, password, vhost=/, client_id          (authenticate.star)
    vhost     username, vhost, ip=127.0.0.1, tags="", client_id (no rule file: the default, allow)
    resource  queue mqtt-subscription-<id>qos1, configure, client_id (no rule file: the client's own queue)
    resource  exchange amq.topic, read                         (no rule file: amq.topic is allowed)
    topic     read devices.<id>.cmd.# (the client's own command topics, with variable_map.client_id,
              variable_map.username, variable_map.vhost)       (authorize.star, subscribe)
    topic     write sensors.1                                  (authorize.star, publish)
    resource  exchange amq.topic, write                        (the default again)
    topic     write sensors.1 again (RabbitMQ asks twice per PUBLISH)

Each Mix also has a probe: one request the bundled rules refuse (user "baduser"), which webhooks_bench.py
sends hookrules once to show that its rules really run; it is never part of the load.

webhooks_bench.py hands the same bytes to wrk (in a generated Lua script) or to this module run as a
script: one process, an aiohttp ClientSession whose TCPConnector keeps at most --connections
keep-alive connections (VerneMQ's pool keeps up to 100 per endpoint) and --concurrency requests in
flight, each worker cycling through the --broker's requests (staggered). After --warmup seconds the
measured window opens: the CPU time of the server (utime+stime of --server-pid from /proc), our own and the whole
machine's (/proc/stat) are read at both ends of it, and every request that completes inside it is
counted and its latency kept. Every reply is checked as its Mix says, so a server that answers fast but
wrongly shows up as bad replies rather than as a win.

Prints one JSON object on stdout. Every loop is bounded: the run ends after warm-up + duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from loadgen import _delta, cpu_seconds, machine_busy_seconds, summarize

CLIENT_ID = "bench-0001"
USERNAME = "gooduser"
#: the one user the bundled authenticate.star refuses: the probe that shows the rules run
BAD_USERNAME = "baduser"
#: "21.5", base64-encoded as vmq_webhooks sends payloads by default (base64encode = on)
PAYLOAD_B64 = "MjEuNQ=="
#: VerneMQ's webhook response_timeout (5 s by the schema)
REQUEST_TIMEOUT = 5.0
#: a hard bound on every worker loop, far above what the duration allows
MAX_REQUESTS_PER_WORKER = 10_000_000
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Request:
    label: str
    path: str
    headers: dict[str, str]
    body: bytes  # ASCII only (JSON, or a percent-encoded form)


@dataclass(frozen=True, slots=True)
class Mix:
    """One broker's requests, cycled by the load, and what a good reply to them is."""
    broker: str
    requests: tuple[Request, ...]
    #: a request the bundled rules refuse: sent once to hookrules, never in the load
    probe: Request
    reply_ok: Callable[[int, bytes], bool]
    #: the same check for wrk's Lua `response(status, headers, body)` hook, an expression
    lua_reply_ok: str
    #: what the check asks, for people
    good_reply: str


# -- VerneMQ --------------------------------------------------------------------------------------


def _webhook(label: str, hook: str, body: dict[str, Any]) -> Request:
    return Request(label, "/", {"Content-Type": "application/json", "vernemq-hook": hook},
                   json.dumps(body, separators=(",", ":")).encode("ascii"))


def _publish(topic: str) -> Request:
    return _webhook(f"auth_on_publish {topic}", "auth_on_publish", {
        "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID, "qos": 1, "topic": topic,
        "payload": PAYLOAD_B64, "retain": False})


def _register(username: str) -> Request:
    return _webhook("auth_on_register" + ("" if username == USERNAME else f" {username}"), "auth_on_register", {
        "peer_addr": "127.0.0.1", "peer_port": 50000, "mountpoint": "", "client_id": CLIENT_ID,
        "username": username, "password": "secret", "clean_session": True, "listener_addr": "127.0.0.1",
        "listener_port": 1883, "listener_type": "mqtt"})


def _vernemq_ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        reply = json.loads(body)
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("result") == "ok"


VERNEMQ = Mix(
    "vernemq",
    (
        _register(USERNAME),
        _webhook("auth_on_subscribe (2 topics)", "auth_on_subscribe", {
            "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID,
            "topics": [{"topic": "t/1", "qos": 1}, {"topic": f"devices/{CLIENT_ID}/cmd/#", "qos": 1}]}),
        _publish("t/demo"),
        _publish("sensors/1"),
    ),
    _register(BAD_USERNAME),
    _vernemq_ok,
    """status == 200 and string.find(body, '"result":%s*"ok"') ~= nil""",
    'HTTP 200 and a result of "ok"',
)


# -- RabbitMQ -------------------------------------------------------------------------------------


def _check(label: str, check: str, fields: dict[str, str]) -> Request:
    return Request(label, f"/rabbitmq/{check}", {"Content-Type": FORM}, urlencode(fields).encode("ascii"))


def _user(username: str) -> Request:
    return _check(f"user {username}", "user", {"username": username, "password": "secret", "vhost": "/",
                                               "client_id": CLIENT_ID})


def _resource(kind: str, name: str, permission: str) -> Request:
    return _check(f"resource {kind} {name} {permission}", "resource", {
        "username": USERNAME, "vhost": "/", "resource": kind, "name": name, "permission": permission, "tags": "",
        "client_id": CLIENT_ID})  # rabbitmq_mqtt sends it; without it the default refuses (an AMQP client)


def _topic(permission: str, routing_key: str) -> Request:
    return _check(f"topic {permission} {routing_key}", "topic", {
        "username": USERNAME, "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": permission,
        "tags": "", "routing_key": routing_key, "variable_map.client_id": CLIENT_ID,
        "variable_map.username": USERNAME, "variable_map.vhost": "/"})


def _rabbitmq_ok(status: int, body: bytes) -> bool:
    return status == 200 and body == b"allow"


RABBITMQ = Mix(
    "rabbitmq",
    (
        _user(USERNAME),  # CONNECT: user, then vhost
        _check("vhost /", "vhost", {"username": USERNAME, "vhost": "/", "ip": "127.0.0.1", "tags": "",
                                    "client_id": CLIENT_ID}),
        _resource("queue", f"mqtt-subscription-{CLIENT_ID}qos1", "configure"),  # SUBSCRIBE: resource, then topic
        _resource("exchange", "amq.topic", "read"),
        _topic("read", f"devices.{CLIENT_ID}.cmd.#"),
        _topic("write", "sensors.1"),  # PUBLISH: topic, resource, topic
        _resource("exchange", "amq.topic", "write"),
        _topic("write", "sensors.1"),
    ),
    _user(BAD_USERNAME),
    _rabbitmq_ok,
    'status == 200 and body == "allow"',
    "HTTP 200 and the body `allow`",
)

MIXES: dict[str, Mix] = {mix.broker: mix for mix in (VERNEMQ, RABBITMQ)}


class State:
    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.latencies: list[float] = []
        self.errors = 0
        self.bad_replies = 0
        self.first_error = ""


async def _worker(index: int, session: aiohttp.ClientSession, base_url: str, mix: Mix, state: State) -> None:
    perf = time.perf_counter
    reply_ok = mix.reply_ok
    requests = [(r.label, base_url + r.path, r.body, r.headers) for r in mix.requests]
    k = index % len(requests)  # stagger the workers over the cycle
    for _ in range(MAX_REQUESTS_PER_WORKER):
        if state.stop:
            return
        label, url, body, headers = requests[k]
        k = k + 1 if k + 1 < len(requests) else 0
        started = perf()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                status, reply = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            state.errors += 1
            state.first_error = state.first_error or f"{label}: {type(exc).__name__} {exc}"
            continue
        elapsed = perf() - started
        if not reply_ok(status, reply):
            state.bad_replies += 1
            state.first_error = state.first_error or f"{label}: HTTP {status} {reply[:200]!r}"
        if state.measuring:
            state.latencies.append(elapsed)


async def run(url: str, server_pid: int, connections: int, concurrency: int, warmup: float,
              duration: float, mix: Mix = VERNEMQ) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        state = State()
        base_url = url.rstrip("/")
        tasks = [asyncio.create_task(_worker(i, session, base_url, mix, state)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        # open the window: CPU readings and the `measuring` flag change in the same loop step
        busy0, server_cpu0, client_cpu0 = machine_busy_seconds(), cpu_seconds(server_pid), cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        state.measuring = True
        await asyncio.sleep(duration)
        state.measuring = False
        t1 = time.perf_counter()
        client_cpu1, server_cpu1, busy1 = cpu_seconds(os.getpid()), cpu_seconds(server_pid), machine_busy_seconds()
        state.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT + 5.0)
    report = summarize(t1 - t0, state.latencies, _delta(server_cpu0, server_cpu1), _delta(client_cpu0, client_cpu1),
                       _delta(busy0, busy1), state)
    report["requests"] = report.pop("calls")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="broker HTTP auth load generator (used by webhooks_bench.py)")
    parser.add_argument("--url", required=True, help="the server, http://HOST:PORT/ (each request adds its path)")
    parser.add_argument("--broker", choices=sorted(MIXES), default="vernemq", help="whose requests (default vernemq)")
    parser.add_argument("--server-pid", type=int, required=True, help="whose CPU time to read from /proc")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections at most (default 32)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.server_pid, args.connections, args.concurrency, args.warmup,
                             args.duration, MIXES[args.broker]))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
