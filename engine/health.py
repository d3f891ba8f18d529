"""Health and metrics over HTTP: /healthz (alive), /readyz (rules loaded, not draining), /metrics.

Served on the server's own loop (by aiohttp on the metrics address; /healthz and /readyz also on the
webhooks address, by its own protocol, adapters/httpwire.py), so a probe answers only when the loop that
serves brokers does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .errors import printable

log = logging.getLogger(__name__)

#: what /readyz reports: (ready, detail, more fields of its JSON body, e.g. the broken hooks)
Readiness = Callable[[], tuple[bool, str, dict[str, Any]]]


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def probes(readiness: Readiness) -> dict[str, Callable[[], tuple[int, dict[str, Any]]]]:
    """What each probe answers, by path: (status, JSON body), whatever serves it."""

    def healthz() -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok"}

    def readyz() -> tuple[int, dict[str, Any]]:
        try:
            ready, detail, extra = readiness()
        except Exception:  # a probe must get an answer, not a 500 page
            log.exception("readiness check failed")
            ready, detail, extra = False, "internal error (see the log)", {}
        return (200 if ready else 503), {**extra, "status": "ready" if ready else "not ready", "detail": detail}

    return {"/healthz": healthz, "/readyz": readyz}


#: a synchronous handler of the webhook port: (status, Content-Type, body, more headers)
SyncHandler = Callable[[Any], tuple[int, str, bytes, Mapping[str, str] | None]]


def sync_health_handlers(readiness: Readiness) -> dict[str, SyncHandler]:
    """GET handlers by path for the webhook port's router (adapters/webhooks.py)."""

    def handler(probe: Callable[[], tuple[int, dict[str, Any]]]) -> SyncHandler:
        def answer(request: Any) -> tuple[int, str, bytes, Mapping[str, str] | None]:
            status, body = probe()
            return status, "application/json; charset=utf-8", json.dumps(body).encode(), None
        return answer

    return {path: handler(probe) for path, probe in probes(readiness).items()}


def health_handlers(readiness: Readiness) -> dict[str, Handler]:
    """GET handlers by path, for an aiohttp Application's router (the metrics port)."""

    def handler(probe: Callable[[], tuple[int, dict[str, Any]]]) -> Handler:
        async def answer(request: web.BaseRequest) -> web.StreamResponse:
            status, body = probe()
            return web.json_response(body, status=status)
        return answer

    return {path: handler(probe) for path, probe in probes(readiness).items()}


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    for path, handler in health_handlers(readiness).items():
        app.router.add_get(path, handler)


#: malformed requests to the metrics port are logged at most this often
FAULT_LOG_INTERVAL = 10.0


def fault_description(exc: BaseException) -> str:
    """What aiohttp says is wrong with a request, without the request's own bytes: its parser quotes
    the offending line after its description (`Got more than 8190 bytes when reading: b'...'`), so
    only the description before the first colon or quote is kept."""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    cut = min((i for i in (text.find(c) for c in ":'\"?\n") if i >= 0), default=len(text))
    description = " ".join(text[:cut].split())
    return printable(description[:120]) or "(no description)"


class QuietProtocolErrors(logging.Filter):
    """aiohttp logs every malformed HTTP request to the metrics port (a port scanner, a client that
    hangs up) with a traceback: keep one line, without it, at most every FAULT_LOG_INTERVAL seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._last = float("-inf")
        self._skipped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < FAULT_LOG_INTERVAL:
            self._skipped += 1
            return False
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"malformed HTTP request to the metrics port refused: {type(exc).__name__}: " \
                         f"{fault_description(exc)}"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        if self._skipped:
            record.msg = f"{record.getMessage()} ({self._skipped} more since the last report)"
            record.args = ()
        self._last = now
        self._skipped = 0
        return True


def metrics_app(readiness: Readiness) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    add_health_routes(app, readiness)
    return app
