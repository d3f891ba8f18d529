"""A recording stand-in for rabbitmq_auth_backend_http's server: it logs every call RabbitMQ makes, as sent.

Why: to test the RabbitMQ node on its own, and to measure what RabbitMQ really sends (method, content type,
field names, their order and values) and how it reads answers, before hookrules' own front-end exists. It runs
aiohttp on its own event loop in a thread, so synchronous tests (paho-mqtt is synchronous) can use it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass(frozen=True)
class Call:
    """One request from RabbitMQ: `fields` keeps the order and duplicates the wire had."""

    check: str  # user, vhost, resource, topic (the last path segment)
    method: str
    content_type: str
    fields: tuple[tuple[str, str], ...]
    raw: str  # query string (GET) or body (POST), undecoded
    at: float = field(default_factory=time.monotonic)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.fields)


@dataclass(frozen=True)
class Answer:
    body: str = "allow"
    status: int = 200
    delay: float = 0.0  # seconds before answering


Responder = Callable[[Call], Answer]


def allow_all(call: Call) -> Answer:
    return Answer()


class Recorder:
    """`with Recorder() as rec:` serves http://127.0.0.1:<port>/rabbitmq/{user,vhost,resource,topic}."""

    def __init__(self, responder: Responder = allow_all) -> None:
        self.responder = responder
        self.calls: list[Call] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rabbit-recorder", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = request.query_string if request.method == "GET" else (await request.read()).decode("latin-1")
        call = Call(check=request.match_info["check"], method=request.method,
                    content_type=request.headers.get("Content-Type", ""),
                    fields=tuple(parse_qsl(raw, keep_blank_values=True)), raw=raw)
        with self._lock:
            self.calls.append(call)
        answer = self.responder(call)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, body=answer.body.encode(), content_type="text/plain")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/rabbitmq/{check}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.close()

    def snapshot(self, check: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if check is None or c.check == check]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
