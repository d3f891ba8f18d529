"""The `--http` port's glue for EMQX's HTTP authenticator and authorizer at /emqx/authn and /emqx/authz:
read the method, query, content type and body of a request (adapters/httpwire.py), write the status and
JSON body. Everything else is in emqx_http_service.py, which takes and returns plain values.

The port's router (adapters/webhooks.py) hands it every request under /emqx/ that is not a VerneMQ
webhook. A call at one of the two paths by GET or POST takes a place among max_concurrent_calls (the
port's admission, shared with the other front-ends); anything else is refused at once, whatever the load.
"""

from __future__ import annotations

import time

from .emqx_http import PATHS
from .emqx_http_service import CONTENT_TYPE, Answer, EmqxHttpService
from .httpbody import plain_body
from .httpreply import Reply
from .httpwire import Request, Route
from .refusal import BadRequest


def _reply(answer: Answer) -> Reply:
    status, body = answer
    return status, CONTENT_TYPE, body, None


class EmqxHttpRoute:
    def __init__(self, service: EmqxHttpService):
        self.service = service
        self._call = Route(self.answer, self.refuse, True)
        self._not_a_call = Route(self.answer, self.refuse, False)

    def route(self, request: Request) -> Route:
        return self._call if request.path in PATHS and request.method in ("GET", "POST") else self._not_a_call

    def answer(self, request: Request) -> Reply:
        service, path, method = self.service, request.path, request.method
        refused = service.check(path, method)
        if refused is not None:
            return _reply(refused)
        started = time.perf_counter()
        try:
            try:
                body = plain_body(request, "send plain JSON or a form") if method == "POST" else b""
            except BadRequest as bad:
                return _reply(service.refuse(path, bad))
            return _reply(service.answer(path, method, request.query, request.headers.get("content-type", ""), body))
        finally:
            service.observe(path, started)

    def refuse(self, request: Request, bad: BadRequest) -> Reply:
        """A call the port refuses before its answer runs (overloaded, too large, too slow)."""
        if request.path in PATHS:
            return _reply(self.service.refuse(request.path, bad))
        return _reply(self.service.error(bad))
