"""The --http port's protocol (adapters/httpwire.py) driven byte by byte: the real WireServer, router,
front-ends and engine with the bundled rules, and a transport that records what is written.

Feeding data_received directly is what lets a test split a request at EVERY byte offset and know each
part arrives as its own read (two writes on a socket may coalesce); the live tests in
test_httpwire.py use real sockets for what needs the kernel (timers, flow control, TLS).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hookrules.adapters.httpwire import HttpConnection, WireServer
from hookrules.adapters.rabbitmq import PREFIX
from hookrules.adapters.rabbitmq_http import RabbitMQAdapter
from hookrules.adapters.webhooks import WebhookAdapter
from hookrules.engine import Engine
from hookrules.health import sync_health_handlers
from hookrules.ruleset import Limits, RuleSet, scan

from . import vernemq_examples as spec

BUNDLED = Path(__file__).resolve().parent.parent / "rules"
MAX_BODY = 4096


class Transport(asyncio.Transport):
    """What a connection writes, whether it closed, and whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """The server's end of the connection (it lingers to drop what the client still sends): as closed."""
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0


def wire_server(max_concurrent: int = 1000, faults: list[str] | None = None, **timeouts: float) -> WireServer:
    """The port as server.py builds it, on the bundled rules."""
    ruleset, _ = scan(BUNDLED, RuleSet())
    engine = Engine(ruleset, limits=Limits(timeout=30.0))  # a busy machine must not change an answer
    webhooks = WebhookAdapter(engine, max_body=MAX_BODY, max_concurrent=max_concurrent)
    rabbitmq = RabbitMQAdapter(engine, admission=webhooks.admission)
    router = webhooks.router(sync_health_handlers(lambda: (True, "ready", {})), {PREFIX: rabbitmq.route})

    def on_fault(description: str) -> None:
        webhooks.malformed(description)
        if faults is not None:
            faults.append(description)

    return WireServer(router, webhooks.admission, max_body=MAX_BODY, on_fault=on_fault, **timeouts)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def feed(server: WireServer, parts: Iterable[bytes], eof: bool = False) -> tuple[bytes, Transport, HttpConnection]:
    """A new connection, each part one read, the queue drained after each; (what it wrote, transport, conn)."""
    transport = Transport()
    conn = server.protocol()
    conn.connection_made(transport)
    for part in parts:
        if transport.closed:
            break
        conn.data_received(part)
        await turns()
    if eof or transport.closed:
        conn.connection_lost(None)
    return bytes(transport.out), transport, conn


_DATE = re.compile(rb"\r\nDate: [^\r]*")


def undated(raw: bytes) -> bytes:
    """An exchange without its Date lines (the one part that changes with the clock)."""
    return _DATE.sub(b"", raw)


def http(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
         version: str = "1.1", chunked: bool = False) -> bytes:
    head = [f"{method} {target} HTTP/{version}", "Host: 127.0.0.1"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


RABBITMQ_FIELDS: dict[str, dict[str, str]] = {
    "user": {"username": "admin", "password": "s3cret", "vhost": "/", "client_id": "dev-1"},
    "vhost": {"username": "admin", "vhost": "/", "ip": "127.0.0.1", "tags": "", "client_id": "dev-1"},
    "resource": {"username": "admin", "vhost": "/", "resource": "queue", "name": "mqtt-subscription-dev-1qos0",
                 "permission": "read", "tags": "", "variable_map.client_id": "dev-1"},
    "topic": {"username": "admin", "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "write",
              "tags": "", "routing_key": "devices.dev-1.temp", "variable_map.client_id": "dev-1",
              "variable_map.username": "admin"},
}


def corpus() -> dict[str, bytes]:
    """Every request of the webhook and RabbitMQ corpora, as the brokers send them, and the other
    shapes the port serves (chunked, HTTP/1.0, HEAD, Expect, probes, refusals): name -> raw request.
    All keep the connection open, so they can be pipelined."""
    out: dict[str, bytes] = {}
    for hook, body in spec.EXAMPLES.items():
        raw = json.dumps(body).encode()
        headers = {"vernemq-hook": hook, "Content-Type": "application/json"}
        out[f"vernemq {hook}"] = http("POST", "/?base64=off", headers, raw)
        out[f"vernemq {hook} chunked"] = http("POST", "/hooks?base64=off", headers, raw, chunked=True)
        out[f"vernemq {hook} expect"] = http("POST", "/?base64=off", {**headers, "Expect": "100-continue"}, raw)
    register = json.dumps(spec.EXAMPLES["auth_on_register"]).encode()
    out["vernemq http/1.0 keep-alive"] = http("POST", "/", {"vernemq-hook": "auth_on_register",
                                                            "Connection": "keep-alive"}, register, version="1.0")
    out["vernemq base64 on"] = http("POST", "/", {"vernemq-hook": "auth_on_publish"},
                                    json.dumps({**spec.EXAMPLES["auth_on_publish"], "payload": "aGVsbG8="}).encode())
    out["vernemq malformed json"] = http("POST", "/", {"vernemq-hook": "auth_on_register"}, b'{"client_id": ')
    out["vernemq unknown hook"] = http("POST", "/", {"vernemq-hook": "nope"}, register)
    out["vernemq missing hook"] = http("POST", "/", {}, register)
    out["vernemq gzip"] = http("POST", "/", {"vernemq-hook": "auth_on_register", "Content-Encoding": "gzip"}, register)
    out["put"] = http("PUT", "/", {"vernemq-hook": "auth_on_register"}, register)
    for check, fields in RABBITMQ_FIELDS.items():
        query = urllib.parse.urlencode(fields)
        out[f"rabbitmq GET {check}"] = http("GET", f"/rabbitmq/{check}?{query}")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        out[f"rabbitmq POST {check}"] = http("POST", f"/rabbitmq/{check}", form, query.encode())
        out[f"rabbitmq POST {check} chunked"] = http("POST", f"/rabbitmq/{check}", form, query.encode(), chunked=True)
    out["rabbitmq unknown path"] = http("GET", "/rabbitmq/nope?username=a")
    out["rabbitmq DELETE"] = http("DELETE", "/rabbitmq/user")
    out["rabbitmq json"] = http("POST", "/rabbitmq/user", {"Content-Type": "application/json"}, b"{}")
    for probe in ("/healthz", "/readyz"):
        out[f"GET {probe}"] = http("GET", probe)
        out[f"HEAD {probe}"] = http("HEAD", probe)
    return out


def closing_corpus() -> dict[str, bytes]:
    """Requests answered and then closed: they end a pipeline."""
    register = json.dumps(spec.EXAMPLES["auth_on_register"]).encode()
    hook = {"vernemq-hook": "auth_on_register"}
    return {
        "too large": http("POST", "/", hook, b"x" * (MAX_BODY + 1)),
        "too large chunked": http("POST", "/", hook, b"x" * (MAX_BODY + 1), chunked=True),
        "unknown expectation": http("POST", "/", {**hook, "Expect": "teapot"}, register),
        "http/1.0": http("POST", "/", hook, register, version="1.0"),
        "connection close": http("POST", "/", {**hook, "Connection": "close"}, register),
        "rabbitmq connection close": http("GET", "/rabbitmq/user?username=a&password=b", {"Connection": "close"}),
        "malformed": b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
    }


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each answer in an exchange (Content-Length framed; interim 100s skipped; no HEAD)."""
    out = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, raw
        status = status_of(head)
        if status == 100:
            continue
        match = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert match, head
        length = int(match.group(1))
        out.append((status, rest[:length]))
        rest = rest[length:]
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def start_wire(adapter: WebhookAdapter) -> tuple[WireServer, int]:
    """`adapter` alone (no RabbitMQ, no probes) on a loopback port of its own, as server.py serves it."""
    from hookrules.adapters.httpwire import listen_socket

    server = WireServer(adapter.router(), adapter.admission, max_body=adapter.max_body, on_fault=adapter.malformed)
    sock = listen_socket("127.0.0.1", 0, reuse_port=False)
    await server.start(sock)
    return server, int(sock.getsockname()[1])
