"""VerneMQ webhooks front-end, and the router of the `--http` port (adapters/httpwire.py) it shares.

The hook is the `vernemq-hook` header, the path is free (VerneMQ allows any endpoint URL, query
included). A body hookrules cannot read gets a JSON error with a status that says what is wrong;
anything a rule does gets a 200 with a reply VerneMQ accepts (adapters/vernemq.py). Every answer is
made synchronously from the port's queue: a rule never awaits, so a request needs no task of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from .. import metrics
from ..engine import Engine
from ..errors import printable
from ..hooks import HOOKS
from ..ratelimit import Every
from .admission import Admission
from .httpbody import plain_body
from .httpreply import Reply as HttpReply
from .httpwire import Request, Route, Router
from .jsonwire import decode, encode, reference_encode
from .vernemq import (
    BROKER,
    NEXT,
    NOTIFIED,
    OK,
    SUBSCRIBE_HOOKS,
    BadRequest,
    Reply,
    count_events,
    iter_events,
    plain_payload_problem,
    reply_for,
    subscribe_reply,
)

log = logging.getLogger(__name__)

HOOK_HEADER = "vernemq-hook"
DEFAULT_MAX_BODY = 1024 * 1024
#: bad requests are logged at most this often (all are counted)
BAD_REQUEST_LOG_INTERVAL = 10.0
JSON = "application/json"
_JSON_TEXT = "application/json; charset=utf-8"
_CONSTANT = {id(r): encode(r.body) for r in (OK, NEXT, NOTIFIED)}
_FLAGS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}

#: a GET handler of the port (health): the request, its reply
GetHandler = Callable[[Request], HttpReply]


class WebhookAdapter:
    """Answers every VerneMQ webhook from the engine's rules."""

    def __init__(self, engine: Engine, *, base64: bool = True, max_body: int = DEFAULT_MAX_BODY,
                 max_concurrent: int = 1000):
        self.engine = engine
        self.base64 = base64
        self.max_body = max_body
        self.admission = Admission(max_concurrent)
        self._timers: dict[str, Any] = {}
        self._bad_log = Every(BAD_REQUEST_LOG_INTERVAL)
        self._fault_log = Every(BAD_REQUEST_LOG_INTERVAL)
        self._faults_unlogged = 0

    def router(self, get_routes: Mapping[str, GetHandler] | None = None,
               prefixes: Mapping[str, Router] | None = None) -> Router:
        """Where each request of the port goes, from its head.

        Each POST is a webhook whatever its path (VerneMQ may be pointed at any URL), except where
        `prefixes` gives another front-end of the port a path prefix (RabbitMQ's /rabbitmq/): a
        request under it goes there, whatever its method, unless it names a VerneMQ hook. `get_routes`
        answers GET and HEAD by path (health); anything else is refused with 405.
        """
        gets = {path: Route(handler, self.refuse, False) for path, handler in (get_routes or {}).items()}
        subs = tuple((prefix, router) for prefix, router in (prefixes or {}).items())
        webhook = Route(self.answer, self.refuse, True)
        not_post = Route(self.not_post, self.refuse, False)

        def route(request: Request) -> Route:
            for prefix, router in subs:
                if request.path.startswith(prefix) and HOOK_HEADER not in request.headers:
                    return router(request)
            method = request.method
            if method == "POST":
                return webhook
            if method == "GET" or method == "HEAD":
                return gets.get(request.path, not_post)
            return not_post

        return route

    def answer(self, request: Request) -> HttpReply:
        """One webhook; never an exception out of here (the protocol's last line would answer 500,
        which VerneMQ reads as a refusal of all)."""
        try:
            return self._handle(request)
        except Exception:
            hook = request.headers.get(HOOK_HEADER, "")
            info = HOOKS.get(hook)
            if info is None or info.broker != BROKER:
                hook = ""
            decision = self.engine.internal_error(BROKER, hook or "unknown")
            if not hook:  # not a webhook call: no broker reads this answer
                return 500, JSON, b'{"error": "internal error"}', None
            return self._respond(hook, reply_for(hook, decision, True))

    def not_post(self, request: Request) -> HttpReply:
        return self._bad(BadRequest(405, "not_post", f"VerneMQ webhooks are POST requests, not {request.method[:20]}"))

    def refuse(self, request: Request, bad: BadRequest) -> HttpReply:
        """A request the port refuses before its answer runs (too large, too slow, overloaded, an
        expectation it does not meet): said and counted as every bad webhook request is."""
        return self._bad(bad)

    def malformed(self, description: str) -> None:
        """The port refused bytes that are not HTTP: counted, and one line at most every
        BAD_REQUEST_LOG_INTERVAL seconds that names the fault, never the request's bytes."""
        metrics.BAD_REQUESTS.labels(BROKER, "malformed_http").inc()
        if not self._fault_log.due():
            self._faults_unlogged += 1
            return
        more = f" ({self._faults_unlogged} more since the last report)" if self._faults_unlogged else ""
        self._faults_unlogged = 0
        log.warning("malformed HTTP request refused: %s%s", printable(description[:160]), more)

    def _handle(self, request: Request) -> HttpReply:
        started = time.perf_counter()
        hook = request.headers.get(HOOK_HEADER, "")
        try:
            info = HOOKS.get(hook)
            if not hook:
                raise BadRequest(400, "missing_hook", f"the {HOOK_HEADER} header is missing: it names the hook")
            if info is None or info.broker != BROKER:
                raise BadRequest(404, "unknown_hook", f"unknown hook '{hook[:100]}'; VerneMQ hooks: "
                                 + ", ".join(h for h, i in HOOKS.items() if i.broker == BROKER))
            b64 = self._base64(request)
            body = self._body(request)
            try:
                reply = self._answer(hook, body, b64)
            except RecursionError:  # a body the JSON decoder could parse but too deep to copy read-only
                raise BadRequest(400, "too_deep", "the body is nested too deeply") from None
            except BadRequest:
                raise
            except Exception:  # a bug of ours must still give VerneMQ a 200 it reads, never a 500
                # (VerneMQ reads a non-200 as a refusal of everything); allow/deny/ignore carry no payload
                reply = reply_for(hook, self.engine.internal_error(BROKER, hook), True)
            return self._respond(hook, reply)
        except BadRequest as bad:
            return self._bad(bad)
        finally:
            if info is not None and info.broker == BROKER:
                self._timer(hook).observe(time.perf_counter() - started)

    def _respond(self, hook: str, reply: Reply) -> HttpReply:
        """The HTTP response, encoded here, inside the error handling: a reply the encoder refuses (a
        value no check foresaw) is answered by the failure policy, counted and logged, never a 500."""
        try:
            if not reply.headers:
                constant = _CONSTANT.get(id(reply))
                if constant is not None:  # most answers are one of three: no need to encode them each time
                    return 200, JSON, constant, None
            for name, value in reply.headers.items():  # HTTP carries printable ASCII only
                if not (value.isascii() and value.isprintable()):
                    raise ValueError(f"header {name} holds a character HTTP cannot carry")
            return 200, JSON, encode(reply.body), reply.headers or None
        except Exception:
            fallback = reply_for(hook, self.engine.internal_error(BROKER, hook), True)
            return 200, JSON, reference_encode(fallback.body), None

    def _answer(self, hook: str, body: dict[str, Any], b64: bool) -> Reply:
        engine = self.engine
        if not engine.needs_event(hook):
            iter_events(hook, body, b64)  # still refuse a malformed body, as with a rule
            return reply_for(hook, engine.skip(BROKER, hook).decision, b64)
        check = None if b64 else plain_payload_problem  # what this endpoint's replies cannot carry
        events = iter_events(hook, body, b64)
        if hook in SUBSCRIBE_HOOKS:  # a subscription's topics share one run's budget
            return subscribe_reply(hook, body, engine.decide_each(events, count_events(hook, body), check))
        return reply_for(hook, engine.decide(next(events), None, check).decision, b64)

    def _base64(self, request: Request) -> bool:
        """The endpoint URL may say how its payloads come (`?base64=off`), like vmq_webhooks' base64encode."""
        query = request.query
        if not query or "base64" not in query:  # most endpoint URLs have no query
            return self.base64
        values = parse_qs(query, keep_blank_values=True).get("base64")
        if values is None:
            return self.base64
        flag = values[0]
        if flag.lower() not in _FLAGS:
            raise BadRequest(400, "bad_query", f"query parameter base64 must be on or off, not {flag[:20]!r}")
        return _FLAGS[flag.lower()]

    def _body(self, request: Request) -> dict[str, Any]:
        raw = plain_body(request, "send plain JSON")  # VerneMQ never compresses
        try:
            body = decode(raw)  # json.loads(raw.decode("utf-8")), faster (jsonwire.py): UTF-8 only, no detection
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            raise BadRequest(400, "malformed_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "not_an_object", "the body must be a JSON object")
        return body

    def _bad(self, bad: BadRequest) -> HttpReply:
        metrics.BAD_REQUESTS.labels(BROKER, bad.reason).inc()
        if self._bad_log.due():
            log.warning("refused a webhook request: %s (HTTP %d); more within %.0f s are only counted in "
                        "hookrules_bad_requests_total", bad, bad.status, BAD_REQUEST_LOG_INTERVAL)
        return bad.status, _JSON_TEXT, reference_encode({"error": str(bad)}), None

    def _timer(self, hook: str) -> Any:
        timer = self._timers.get(hook)
        if timer is None:
            timer = self._timers[hook] = metrics.REQUEST_SECONDS.labels(BROKER, hook)
        return timer
