"""aiohttp's glue for EMQX's HTTP authenticator and authorizer at /emqx/authn and /emqx/authz: read the
method, query, content type and body, write the status and JSON body. Everything else is in
emqx_http_service.py, which takes and returns plain values.

The port's dispatcher (adapters/webhooks.py) hands it every request under /emqx/ that is not a
VerneMQ webhook.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .emqx_http_service import CONTENT_TYPE, Answer, EmqxHttpService
from .httpbody import read_body
from .refusal import BadRequest


def _respond(answer: Answer) -> web.Response:
    status, body = answer
    return web.Response(body=body, status=status, content_type=CONTENT_TYPE)


class EmqxHttpRoute:
    def __init__(self, service: EmqxHttpService):
        self.service = service

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        service, path, method = self.service, request.path, request.method
        refused = service.check(path, method)
        if refused is not None:
            return _respond(refused)
        refused = service.admit(path)
        if refused is not None:
            return _respond(refused)
        started = time.perf_counter()
        try:
            await asyncio.sleep(0)  # every call already received is counted first (admission.py)
            try:
                body = await read_body(request, "send plain JSON or a form") if method == "POST" else b""
            except BadRequest as bad:
                return _respond(service.refuse(path, bad))
            return _respond(service.answer(path, method, request.rel_url.raw_query_string,
                                           request.headers.get("Content-Type", ""), body))
        finally:
            service.release(path, started)
