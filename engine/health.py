"""Health and metrics over HTTP: /healthz (alive), /readyz (rules loaded, not draining), /metrics.

Served on the server's own loop (by aiohttp on the metrics address; /healthz and /readyz also on the
webhooks address, by its own protocol, adapters/httpwire.py), so a probe answers only when the loop that
serves brokers does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

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


def metrics_app(readiness: Readiness) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    add_health_routes(app, readiness)
    return app
