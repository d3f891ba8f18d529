"""The bytes of the `--http` port's answers (adapters/httpwire.py writes them): made with no object per
answer, and the head of the few answers most calls get (`{"result": "ok"}`) made once."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

#: what a handler answers: status, Content-Type, body, more headers (or None)
Reply = tuple[int, str, bytes, Mapping[str, str] | None]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_PHRASES = {s.value: s.phrase for s in HTTPStatus}
_date_second = 0
_date_line = b""


def _date() -> bytes:
    """The Date header (an origin server with a clock sends one), formatted once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_line


def _head(version: str, status: int, content_type: str, length: int, headers: Mapping[str, str] | None,
          keep_alive: bool) -> bytes:
    out = [b"HTTP/%s %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        version.encode("ascii"), status, _PHRASES.get(status, "Unknown").encode("ascii"),
        content_type.encode("ascii"), length)]
    if headers:
        out += [f"{name}: {value}\r\n".encode("ascii") for name, value in headers.items()]
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    elif version == "1.0":
        out.append(b"Connection: keep-alive\r\n")
    return b"".join(out)


_heads: dict[tuple[str, int, str, int, bool], bytes] = {}


def encode_reply(version: str, reply: Reply, keep_alive: bool, head_only: bool = False) -> bytes:
    """The bytes of a response. Extra header values must be printable ASCII (the front-ends check).
    Most answers are one of a few (`{"result": "ok"}`): their head is made once."""
    status, content_type, body, headers = reply
    if headers:
        head = _head(version, status, content_type, len(body), headers, keep_alive)
    else:
        key = (version, status, content_type, len(body), keep_alive)
        cached = _heads.get(key)
        if cached is None:
            if len(_heads) > 4096:  # (bodies of many lengths: a bound, not a leak)
                _heads.clear()
            cached = _heads[key] = _head(version, status, content_type, len(body), None, keep_alive)
        head = cached
    return b"".join((head, _date(), b"\r\n", b"" if head_only else body))


def fault_reply(status: int, description: str) -> bytes:
    body = ('{"error": "malformed HTTP request: %s"}' % description.replace('"', "'")).encode("ascii", "replace")
    # HTTP/1.0: the request's own version is not known to be valid; the connection closes after it
    return encode_reply("1.0", (status, "application/json", body, None), False)
