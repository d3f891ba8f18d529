"""Health and metrics over HTTP: /healthz (alive), /readyz (rules loaded, not draining), /metrics.

Served by aiohttp on the server's own loop (on the metrics address, and /healthz and /readyz also on
the webhooks address), so a probe answers only when the loop that serves brokers does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

#: what /readyz reports: (ready, detail, more fields of its JSON body, e.g. the broken hooks)
Readiness = Callable[[], tuple[bool, str, dict[str, Any]]]


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def health_handlers(readiness: Readiness) -> dict[str, Handler]:
    """GET handlers by path, for an Application's router or the webhooks' own dispatch."""

    async def healthz(request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.BaseRequest) -> web.Response:
        try:
            ready, detail, extra = readiness()
        except Exception:  # a probe must get an answer, not aiohttp's 500 page
            log.exception("readiness check failed")
            ready, detail, extra = False, "internal error (see the log)", {}
        return web.json_response({**extra, "status": "ready" if ready else "not ready", "detail": detail},
                                 status=200 if ready else 503)

    return {"/healthz": healthz, "/readyz": readyz}


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
