"""RabbitMQ front-end: answers rabbitmq_auth_backend_http's calls at /rabbitmq/{user,vhost,resource,topic}.

It shares the `--http` port with VerneMQ's webhooks: the port's dispatcher (adapters/webhooks.py)
hands it every request under /rabbitmq/ that is not a VerneMQ webhook. Every answer is text/plain
`allow` or `deny` (adapters/rabbitmq.py says why nothing else), never a 500: a bad request is
answered `deny`, counted in hookrules_bad_requests_total and logged on one rate-limited line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import metrics
from ..engine import Engine
from ..ratelimit import Every
from .admission import Admission
from .httpbody import plain_body
from .httpreply import Reply
from .httpwire import Request, Route
from .rabbitmq import ANSWER_DENY, BROKER, PATHS, BadRequest, answer_text, event_for, parse_fields

log = logging.getLogger(__name__)

BAD_REQUEST_LOG_INTERVAL = 10.0
FORM = "application/x-www-form-urlencoded"
_TEXT = "text/plain; charset=utf-8"  # RabbitMQ reads only the status and the body


def _text(body: str, status: int = 200) -> Reply:
    return status, _TEXT, body.encode("ascii"), None


class RabbitMQAdapter:
    """Answers every rabbitmq_auth_backend_http check from the engine's rules."""

    def __init__(self, engine: Engine, *, admission: Admission | None = None, max_concurrent: int = 1000):
        self.engine = engine
        #: shared with the other front-end of the port, so max_concurrent_calls bounds the port
        self.admission = admission if admission is not None else Admission(max_concurrent)
        self._bad_log = Every(BAD_REQUEST_LOG_INTERVAL)
        self._timers: dict[str, Any] = {}
        self._check = Route(self.answer, self.refuse, True)  # a check: counted among the calls in progress
        self._not_a_check = Route(self.answer, self.refuse, False)  # refused at once, whatever the load

    def route(self, request: Request) -> Route:
        """The port's router for requests under /rabbitmq/ (adapters/webhooks.py hands them here)."""
        if request.path in PATHS and request.method in ("GET", "POST"):
            return self._check
        return self._not_a_check

    def answer(self, request: Request) -> Reply:
        """One call, whatever it is: a reply RabbitMQ reads, and never an exception out of here."""
        hook = PATHS.get(request.path)
        try:
            if hook is None:
                raise BadRequest(404, "unknown_path", f"unknown path {request.path[:60]!r}; RabbitMQ's paths: "
                                 + ", ".join(PATHS))
            if request.method not in ("GET", "POST"):
                raise BadRequest(405, "bad_method", f"rabbitmq_auth_backend_http sends GET or POST, not "
                                 f"{request.method[:20]}")
            started = time.perf_counter()
            try:
                fields = parse_fields(self._raw_fields(request))
                # no rule file: decide() answers the check's default (nodefaults.NO_RULE_DEFAULTS), as eval and test do
                return _text(answer_text(self.engine.decide(event_for(hook, fields)).decision))
            finally:
                self._timer(hook).observe(time.perf_counter() - started)
        except BadRequest as bad:
            return self._bad(bad)
        except Exception:  # a bug of ours: still an answer RabbitMQ reads, by the failure policy
            return _text(answer_text(self.engine.internal_error(BROKER, hook or "unknown")))

    def refuse(self, request: Request, bad: BadRequest) -> Reply:
        """A call the port refuses before its answer runs (overloaded, too large, too slow)."""
        return self._bad(bad)

    def _raw_fields(self, request: Request) -> str:
        """The query string of a GET, the form body of a POST (undecoded: parse_fields decodes once)."""
        if request.method == "GET":
            return request.query
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != FORM:
            raise BadRequest(415, "bad_content_type", f"a POST carries a form ({FORM}), not {content_type[:60]!r}")
        raw = plain_body(request, "send a plain form")
        try:
            return raw.decode("ascii")  # a form body is percent-encoded: anything else is not one
        except UnicodeDecodeError:
            raise BadRequest(400, "bad_encoding", "the form body is not percent-encoded ASCII") from None

    def _bad(self, bad: BadRequest) -> Reply:
        metrics.BAD_REQUESTS.labels(BROKER, bad.reason).inc()
        if self._bad_log.due():
            log.warning("refused a RabbitMQ request: %s (HTTP %d, answered deny); more within %.0f s are only "
                        "counted in hookrules_bad_requests_total", bad, bad.status, BAD_REQUEST_LOG_INTERVAL)
        # a check whose fields are wrong gets the 200 deny RabbitMQ reads as a refusal; the rest (unknown
        # path, method, overload) say what is wrong with their status, which RabbitMQ reads as an error
        return _text(ANSWER_DENY, 200 if bad.status == 400 else bad.status)

    def _timer(self, hook: str) -> Any:
        timer = self._timers.get(hook)
        if timer is None:
            timer = self._timers[hook] = metrics.REQUEST_SECONDS.labels(BROKER, hook)
        return timer
