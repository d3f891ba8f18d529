"""VerneMQ webhooks front-end: aiohttp's low-level server on the server's event loop, every POST a webhook.

The hook is the `vernemq-hook` header, the path is free (VerneMQ allows any endpoint URL, query
included). A body hookrules cannot read gets a JSON error with a status that says what is wrong;
anything a rule does gets a 200 with a reply VerneMQ accepts (adapters/vernemq.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import HttpVersion11, web

from .. import metrics
from ..engine import Engine
from ..errors import printable
from ..health import Handler
from ..hooks import HOOKS
from ..ratelimit import Every
from .admission import Admission
from .httpbody import read_body
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
_CONSTANT = {id(r): encode(r.body) for r in (OK, NEXT, NOTIFIED)}
_FLAGS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def body_limited_requests(max_body: int) -> Callable[..., web.BaseRequest]:
    """The request factory web.Server documents: where a low-level request learns its body limit."""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=max_body)

    return make


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
        self._get_routes: dict[str, Handler] = {}
        self._prefixes: tuple[tuple[str, Handler], ...] = ()

    def server(self, get_routes: Mapping[str, Handler] | None = None,
               prefixes: Mapping[str, Handler] | None = None) -> web.Server:
        """aiohttp's low-level server: every request comes to dispatch(), with no router or middleware.

        Each POST is a webhook whatever its path (VerneMQ may be pointed at any URL), except where
        `prefixes` gives another front-end of the port a path prefix (RabbitMQ's /rabbitmq/): a
        request under it goes there, whatever its method, unless it names a VerneMQ hook. `get_routes`
        answers GET and HEAD by path (health); anything else is refused with 405. Measured: the
        Application's routing and middleware machinery cost more than a rule run.
        """
        self._get_routes = dict(get_routes or {})
        self._prefixes = tuple((prefix, handler) for prefix, handler in (prefixes or {}).items())
        # auto_decompress=False: VerneMQ never compresses; a compressed body is refused with a JSON 415
        # here, not left to the parser's own plain-text errors (or its waiting on a broken stream)
        return web.Server(self.dispatch, request_factory=body_limited_requests(self.max_body), access_log=None,
                          auto_decompress=False)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            for prefix, handler in self._prefixes:
                if request.path.startswith(prefix) and HOOK_HEADER not in request.headers:
                    if "Expect" in request.headers:  # else a client that waits for 100 stalls until the body timeout
                        await self._continue(request)
                    return await handler(request)
            method = request.method
            if method == "POST":
                if "Expect" in request.headers and (refused := await self._expect(request)) is not None:
                    return refused
                return await self.handle(request)
            if method in ("GET", "HEAD"):
                route = self._get_routes.get(request.path)
                if route is not None:
                    return await route(request)
            return await self.not_post(request)
        except Exception:  # the last line: aiohttp would answer 500, which VerneMQ reads as a refusal of all
            hook = request.headers.get(HOOK_HEADER, "")
            info = HOOKS.get(hook)
            if info is None or info.broker != BROKER:
                hook = ""
            decision = self.engine.internal_error(BROKER, hook or "unknown")
            if not hook:  # not a webhook call: no broker reads this answer
                return web.Response(body=b'{"error": "internal error"}', status=500, content_type="application/json")
            return self._respond(hook, reply_for(hook, decision, True))

    async def _expect(self, request: web.BaseRequest) -> web.Response | None:
        """`Expect: 100-continue` (curl sends it with bodies over 1 KiB): say continue, or the client
        waits before sending the body. An Application's router did this; the low-level server does not."""
        expect = request.headers.get("Expect", "")
        if request.version != HttpVersion11 or await self._continue(request):
            return None
        return self._bad(BadRequest(417, "bad_expect", f"Expect: {expect[:40]!r} is not understood, only 100-continue"))

    @staticmethod
    async def _continue(request: web.BaseRequest) -> bool:
        """Answer `Expect: 100-continue` (HTTP/1.1) with the interim 100; False for any other expectation."""
        if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            return False
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the reply's own size starts after this interim line
        return True

    async def not_post(self, request: web.BaseRequest) -> web.Response:
        return self._bad(BadRequest(405, "not_post", f"VerneMQ webhooks are POST requests, not {request.method[:20]}"))

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """One webhook. Past max_concurrent calls in progress it refuses at once: VerneMQ then applies
        its own failure handling instead of every client waiting on an overloaded server."""
        admission = self.admission
        if not admission.enter():
            return self._bad(BadRequest(503, "overloaded", f"overloaded: {admission.in_flight} calls in progress"))
        try:
            await asyncio.sleep(0)  # let every request already received be counted first (admission.py)
            return await self._handle(request)
        finally:
            admission.leave()

    async def _handle(self, request: web.BaseRequest) -> web.Response:
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
            body = await self._body(request)
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
            if hook in HOOKS and HOOKS[hook].broker == BROKER:
                self._timer(hook).observe(time.perf_counter() - started)

    def _respond(self, hook: str, reply: Reply) -> web.Response:
        """The HTTP response, encoded here, inside the error handling: a reply the encoder refuses (a
        value no check foresaw) is answered by the failure policy, counted and logged, never a 500."""
        try:
            if not reply.headers:
                constant = _CONSTANT.get(id(reply))
                if constant is not None:  # most answers are one of three: no need to encode them each time
                    return web.Response(body=constant, content_type="application/json")
            for name, value in reply.headers.items():  # aiohttp would refuse these only while sending
                if not (value.isascii() and value.isprintable()):
                    raise ValueError(f"header {name} holds a character HTTP cannot carry")
            return web.Response(body=encode(reply.body), headers=reply.headers, content_type="application/json")
        except Exception:
            fallback = reply_for(hook, self.engine.internal_error(BROKER, hook), True)
            return web.Response(body=reference_encode(fallback.body), content_type="application/json")

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

    def _base64(self, request: web.BaseRequest) -> bool:
        """The endpoint URL may say how its payloads come (`?base64=off`), like vmq_webhooks' base64encode."""
        # most endpoint URLs have no query: the raw path says so without building the URL object
        if "?" not in request.raw_path or "base64" not in request.query_string:
            return self.base64
        flag = request.query.get("base64")
        if flag is None:
            return self.base64
        if flag.lower() not in _FLAGS:
            raise BadRequest(400, "bad_query", f"query parameter base64 must be on or off, not {flag[:20]!r}")
        return _FLAGS[flag.lower()]

    async def _body(self, request: web.BaseRequest) -> dict[str, Any]:
        raw = await read_body(request, "send plain JSON")  # VerneMQ never compresses
        try:
            body = decode(raw)  # json.loads(raw.decode("utf-8")), faster (jsonwire.py): UTF-8 only, no detection
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            raise BadRequest(400, "malformed_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "not_an_object", "the body must be a JSON object")
        return body

    def _bad(self, bad: BadRequest) -> web.Response:
        metrics.BAD_REQUESTS.labels(BROKER, bad.reason).inc()
        if self._bad_log.due():
            log.warning("refused a webhook request: %s (HTTP %d); more within %.0f s are only counted in "
                        "hookrules_bad_requests_total", bad, bad.status, BAD_REQUEST_LOG_INTERVAL)
        return web.json_response({"error": str(bad)}, status=bad.status)

    def _timer(self, hook: str) -> Any:
        timer = self._timers.get(hook)
        if timer is None:
            timer = self._timers[hook] = metrics.REQUEST_SECONDS.labels(BROKER, hook)
        return timer


def fault_description(exc: BaseException) -> str:
    """What aiohttp says is wrong with a request, without the request's own bytes.

    aiohttp's parser quotes the offending line after its description (`Got more than 8190 bytes when
    reading: b'/rabbitmq/user?username=..&password=...'`, `Invalid char in url query:\n\n  b'GET ...'`),
    and a RabbitMQ GET carries the password in its request line: only the description before the
    first colon or quote is kept, so no request text reaches a log line, whatever the fault."""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else str(exc)
    cut = min((i for i in (text.find(c) for c in ":'\"?\n") if i >= 0), default=len(text))
    description = " ".join(text[:cut].split())
    return printable(description[:120]) or "(no description)"


class QuietProtocolErrors(logging.Filter):
    """aiohttp logs every malformed HTTP request (a port scanner, a client that hangs up) with a
    traceback: keep one line, without the traceback, at most every BAD_REQUEST_LOG_INTERVAL seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._last = float("-inf")
        self._skipped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        metrics.BAD_REQUESTS.labels(BROKER, "malformed_http").inc()
        now = time.monotonic()
        if now - self._last < BAD_REQUEST_LOG_INTERVAL:
            self._skipped += 1
            return False
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"malformed HTTP request refused: {type(exc).__name__}: {fault_description(exc)}"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        if self._skipped:
            record.msg = f"{record.getMessage()} ({self._skipped} more since the last report)"
            record.args = ()
        self._last = now
        self._skipped = 0
        return True
