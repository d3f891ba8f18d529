"""The `--http` port's HTTP/1.1 server: one asyncio.Protocol on httptools (llhttp), no task per request.

Why not aiohttp here: its per-request Task, StreamReader, request and response objects cost ~25 us of
CPU per call (bench/README.md), more than a rule run, and a rule engine that decides synchronously needs
none of them. What this module does instead:

* data_received parses every complete request on the connection and appends it to ONE server-wide
  queue; one loop.call_soon(drain) per loop turn (not per request) answers the queue in order. So
  every call received in a turn is counted (adapters/admission.py) before any runs, with no extra task
  step, and a connection's pipelined answers leave in the order their requests came.
* Admission is entered when a request's head has arrived (a body still arriving holds its place); a
  call past the limit gets its front-end's 503 at once, queued in its connection's order.
* Limits (each refused, never buffered without bound): request line and each header name and value
  at most MAX_LINE bytes (aiohttp's 8190), MAX_HEADERS fields, MAX_HEAD bytes of head; a body over
  max_body is refused 413 on its Content-Length before it is read (chunked: as it passes the limit).
* Timers (one lazy timer per connection, re-armed only when it fires): a head that does not arrive
  within HEAD_TIMEOUT (slowloris) is answered 408 and closed, a body not complete within BODY_TIMEOUT
  gets its front-end's 408, an idle keep-alive connection is closed after KEEPALIVE_TIMEOUT.
* `Expect: 100-continue` gets the interim 100 (in order), any other expectation 417; HTTP/1.0, HEAD,
  `Connection: close`, chunked bodies; flow control: a client that does not read its answers stops
  being read (pause_reading past the transport's high-water mark) until it does.
* Malformed HTTP: 400 (431 for a head over the limits), then close; reported to `on_fault` with a
  description that never quotes the request (a RabbitMQ GET carries a password in its request line).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import unquote

import httptools

from .admission import Admission
from .httpaccept import Acceptor
from .httpbody import BODY_TIMEOUT
from .httpreply import CONTINUE, Reply, encode_reply, fault_reply
from .refusal import BadRequest

log = logging.getLogger(__name__)

MAX_LINE = 8190  # bytes of the request line, and of a header's name or value (aiohttp's limits)
MAX_HEADERS = 100  # header fields in one request (VerneMQ sends 5)
MAX_HEAD = 32768  # bytes of one request's head in all
HEAD_TIMEOUT = 10.0  # seconds for a request's head to arrive once it has begun
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default)
#: how long a connection closed after a refusal still reads (and drops) what its client sends (see _linger)
LINGER = 2.0
BACKLOG = 1024  # connections waiting to be accepted (VerneMQ keeps up to 100 per endpoint)

_IDLE, _HEAD, _BODY = 0, 1, 2


class Request:
    """One request as the front-ends read it: headers lower-cased (the first of repeated ones), the
    path percent-decoded, the query string raw, the whole body."""

    __slots__ = ("method", "path", "query", "headers", "body", "version", "keep_alive")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], version: str,
                 keep_alive: bool, body: bytes = b""):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive


class Route:
    """Where a request goes, chosen from its head: `answer` makes the reply (run from the queue,
    synchronously), `refuse` says a BadRequest the way this front-end answers one (counted by it),
    `counted`: the call takes a place among max_concurrent_calls."""

    __slots__ = ("answer", "refuse", "counted")

    def __init__(self, answer: Callable[[Request], Reply], refuse: Callable[[Request, BadRequest], Reply],
                 counted: bool):
        self.answer = answer
        self.refuse = refuse
        self.counted = counted


Router = Callable[[Request], Route]


class _Stop(Exception):
    """Raised from a callback to stop parsing: the connection reads no more (its answers still go)."""


class _WireFault(Exception):
    """A request the protocol refuses before any front-end sees it: the status, and a description
    made by us (never the request's bytes)."""

    def __init__(self, status: int, description: str):
        super().__init__(description)
        self.status = status


_NAMES: dict[bytes, str] = {}  # header names as sent -> lower-cased
_METHODS = {m: m.decode("ascii") for m in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}


class WireServer:
    """The port: its connections, the queue of requests to answer, start and a draining stop."""

    def __init__(self, router: Router, admission: Admission, *, max_body: int,
                 on_fault: Callable[[str], None] = lambda description: None,
                 head_timeout: float = HEAD_TIMEOUT, body_timeout: float = BODY_TIMEOUT,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self.router = router
        self.admission = admission
        self.max_body = max_body
        self.on_fault = on_fault
        self.timeouts = (keepalive_timeout, head_timeout, body_timeout)  # by connection state
        self.connections: set[HttpConnection] = set()
        self.draining = False
        #: (connection, request, route, reply): reply None = run route.answer; bytes = write as is
        self.queue: deque[tuple[HttpConnection, Request | None, Route | None, Reply | bytes | None]] = deque()
        self.scheduled = False  # a drain is due in this loop turn
        self._acceptor: Acceptor | None = None

    def protocol(self) -> HttpConnection:
        return HttpConnection(self)

    async def start(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve on `sock`, a listening socket (listen_socket()); TLS when `ssl_context` is given."""
        self._acceptor = Acceptor(sock, self.protocol, ssl_context)  # every waiting connection at once
        self._acceptor.start()

    def schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.drain)

    def drain(self) -> None:
        """Answer every queued request, in order, synchronously (rules never await)."""
        self.scheduled = False
        queue = self.queue
        admission = self.admission
        while queue:
            conn, request, route, reply = queue.popleft()
            if reply is None and route is not None and request is not None:
                try:
                    reply = route.answer(request)
                except Exception:  # the front-ends answer their own errors: this is the last line
                    log.exception("unanswered error in an HTTP handler")
                    reply = (500, "application/json", b'{"error": "internal error"}', None)
                finally:
                    if route.counted:
                        admission.in_flight -= 1  # (leave(), its clock read once for the whole queue below)
            conn.send(request, reply)
        admission.leave(0)

    async def stop(self, grace: float) -> None:
        """Stop accepting; every request already received is answered (a head or body still arriving
        may finish within its timeouts); then connections close. Past `grace`, what is left is cut."""
        self.draining = True
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        self._acceptor = None


class HttpConnection(asyncio.Protocol):
    """One client connection: parses with httptools, queues complete requests on the server."""

    def __init__(self, server: WireServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.pending = 0  # entries of this connection in the server's queue
        self.closing = False  # no more input is read: the queued answers go, then the connection closes
        self.state = _IDLE
        self.since = 0.0  # when the head or body in progress began (loop.time)
        self.active = False  # data came since the timer last looked
        self.begun = 0  # requests begun on this connection
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0  # bytes of the reads a head spans, after the one it began in
        self._fields_size = 0  # bytes of its header fields
        self._request: Request | None = None
        self._route: Route | None = None
        self._admitted = False
        self._discard = False
        self._body: list[bytes] = []
        self._body_size = 0

    # -- the transport's side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)
        self.server.connections.add(self)
        self.since = self.loop.time()
        self._timer = self.loop.call_at(self.since + self.server.timeouts[_IDLE], self._tick)
        if self.server.draining:
            self.closing = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if self._admitted:  # a head that came without its body: its place is free again
            self._admitted = False
            self.server.admission.leave()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        first = self.state
        begun = self.begun
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # Upgrade or CONNECT: answered, then closed (no protocol switch)
            self._stop_reading()
        except _WireFault as fault:
            self._fault(fault.status, str(fault))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _WireFault):
                self._fault(cause.status, str(cause))
            elif not isinstance(cause, _Stop):
                log.error("HTTP request handling failed: %s", type(cause).__name__)
                self._fault(400, "the request could not be handled")
        except httptools.HttpParserError as exc:
            if not self.closing:  # (bytes after a request that closes the connection are not read)
                self._fault(400, _describe(exc))
        self.active = True
        if first or self.state:  # a request spans reads: its head or body has a deadline
            self._spanning(first, begun, len(data))
        if self.pending:
            server = self.server
            if not server.scheduled:
                server.scheduled = True
                self.loop.call_soon(server.drain)

    def _spanning(self, first: int, begun: int, size: int) -> None:
        state = self.state
        if state == _HEAD and first == _HEAD and begun == self.begun and not self.closing:
            # the same head, begun before this read and not done after it: bound what it holds
            self._head_size += size
            if self._head_size > MAX_HEAD:
                self._fault(431, "the request head is over the size limit")
                return
        if state != first:
            self.since = self.loop.time()
            if state != _IDLE:
                self._rearm()

    # -- httptools' callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:  # what follows a request that closes the connection is not read
            raise _Stop()
        self.state = _HEAD
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _WireFault(400, f"LineTooLong: Got more than {MAX_LINE} bytes when reading the request line")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._fields_size + len(name) + len(value) + 4
        self._fields_size = size
        if size > MAX_LINE:  # (a head within one line's size passes at once)
            if len(name) + len(value) > MAX_LINE:
                raise _WireFault(431, f"a header field is over {MAX_LINE} bytes")
            if size > MAX_HEAD:
                raise _WireFault(431, "the request head is over the size limit")
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < 512:  # the names clients send are few: each is decoded once
                _NAMES[name] = key
        self._headers.setdefault(key, value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _WireFault(505, f"HTTP/{version[:8]} is not served, only HTTP/1.1 and 1.0")
        if len(self._headers) > MAX_HEADERS:
            raise _WireFault(431, f"more than {MAX_HEADERS} header fields")
        url = self._url
        if b"#" in url:  # (a client should not send one)
            url = url.partition(b"#")[0]
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, "latin-1")
        headers = self._headers
        method = parser.get_method()
        request = self._request = Request(_METHODS.get(method) or method.decode("ascii"), path,
                                          query.decode("latin-1"), headers, version, parser.should_keep_alive())
        self.state = _BODY
        route = self._route = self.server.router(request)
        expect = headers.get("expect") if version == "1.1" else None
        if expect is not None and expect.lower() != "100-continue":
            return self._refuse_early(BadRequest(417, "bad_expect", f"Expect: {expect[:40]!r} is not understood, "
                                                                    "only 100-continue"), close=True)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            return self._refuse_early(BadRequest(413, "too_large", f"the body is over {self.server.max_body} bytes"),
                                      close=True)
        if route.counted:
            admission = self.server.admission
            if not admission.enter():
                return self._refuse_early(BadRequest(503, "overloaded",
                                                     f"overloaded: {admission.in_flight} calls in progress"),
                                          close=expect is not None)
            self._admitted = True
        if expect is not None:
            self._queue(None, None, CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._discard:
            return
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > self.server.max_body:  # chunked: refused as it passes the limit
            self._refuse_early(BadRequest(413, "too_large", f"the body is over {self.server.max_body} bytes"),
                               close=True)

    def on_message_complete(self) -> None:
        request, route = self._request, self._route
        discard = self._discard
        if request is not None and route is not None and not discard:
            body = self._body
            request.body = body[0] if len(body) == 1 else b"".join(body)
            self._admitted = False  # the queue's entry holds the place now (drain leaves it)
            self._queue(request, route, None)
            if not request.keep_alive or self.server.draining:
                self.closing = True
        elif request is not None and not request.keep_alive or self.server.draining:
            self.closing = True
        self.state = _IDLE
        self._reset()

    # -- answers ---------------------------------------------------------------------------------------

    def _queue(self, request: Request | None, route: Route | None, reply: Reply | bytes | None) -> None:
        self.pending += 1
        self.server.queue.append((self, request, route, reply))

    def _refuse_early(self, bad: BadRequest, close: bool) -> None:
        """Answer the request now (in its connection's order), before or without its body."""
        request, route = self._request, self._route
        assert request is not None and route is not None
        if self._admitted:
            self._admitted = False
            self.server.admission.leave()
        self._discard = True
        self._queue(request, None, route.refuse(request, bad))
        if close:
            request.keep_alive = False
            self._stop_reading()

    def _stop_reading(self) -> None:
        self.closing = True
        if self._admitted:
            self._admitted = False
            self.server.admission.leave()
        if self.transport is not None and not self.pending:
            self._linger()

    def _linger(self) -> None:
        """Close after the answers, without losing them: a client still sending a body we refused (413, a
        fault) would get a reset on a plain close (the unread bytes), and a reset can destroy the answer
        before the client reads it. So: half-close (FIN after the answers), read and drop whatever else
        comes for at most LINGER seconds, then close. (TLS has no half-close: closed at once.)"""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self.loop.call_later(LINGER, transport.close)

    def _fault(self, status: int, description: str) -> None:
        self.server.on_fault(description)
        self._queue(None, None, fault_reply(status, description))
        self._stop_reading()
        self.server.schedule(self.loop)

    def send(self, request: Request | None, reply: Reply | bytes | None) -> None:
        """Write one answer (called by the server's drain, in queue order)."""
        self.pending -= 1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        last = not self.pending
        if isinstance(reply, bytes):  # the interim 100, or the answer to a malformed request
            transport.write(reply)
        else:
            assert reply is not None and request is not None
            keep = request.keep_alive and not (last and (self.closing or self.server.draining and self.state == _IDLE))
            transport.write(encode_reply(request.version, reply, keep, request.method == "HEAD"))
            if not keep:
                self.closing = True
        if self.closing and last:
            self._linger()

    def close_if_idle(self) -> None:
        """Draining: a connection with nothing received and nothing to answer closes now."""
        if self.state == _IDLE and not self.pending and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- the timer -------------------------------------------------------------------------------------

    def _rearm(self) -> None:
        """A head or body began: the one timer must fire by its deadline (it is lazy otherwise)."""
        due = self.since + self.server.timeouts[self.state]
        timer = self._timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        state = self.state
        now = self.loop.time()
        if state == _IDLE:
            if self.active or self.pending:  # not idle for a whole period yet: look again after one
                self.active = False
                self._timer = self.loop.call_at(now + self.server.timeouts[_IDLE], self._tick)
            elif transport.get_write_buffer_size():  # idle, and not reading what it was sent: gone
                transport.abort()
            else:
                transport.close()
            return
        due = self.since + self.server.timeouts[state]
        if now < due:
            self._timer = self.loop.call_at(due, self._tick)
        elif state == _HEAD:
            self._fault(408, f"the request head did not arrive within {self.server.timeouts[_HEAD]:g} s")
        elif self._discard:  # already answered: the rest of its body never came
            self._stop_reading()
        else:
            self._refuse_early(BadRequest(408, "slow_body", f"the body did not arrive within "
                                                            f"{self.server.timeouts[_BODY]:g} s"), close=True)
            self.server.schedule(self.loop)


def _describe(exc: BaseException) -> str:
    """llhttp's description of a fault: fixed texts ("Invalid method encountered"), kept to printable
    words without quotes or colons in case a version ever quotes the request."""
    text = str(exc)
    cut = min((i for i in (text.find(c) for c in ":'\"?\n") if i >= 0), default=len(text))
    words = " ".join(text[:cut].split())
    return "".join(c for c in words[:120] if c.isprintable()) or type(exc).__name__


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket (ours, so port 0 can be reported); SO_REUSEPORT for a worker group's port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock

