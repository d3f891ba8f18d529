"""How both HTTP front-ends of the `--http` port (VerneMQ's webhooks, RabbitMQ's checks) take a body.

The port's protocol (adapters/httpwire.py) has read the whole body before a front-end sees the
request, within BODY_TIMEOUT and max_body (refused 408 and 413 there), so a slow or endless body
never holds a place among max_concurrent_calls for longer than BODY_TIMEOUT. What is left here is
the one check both front-ends make of a body they read: it must come as sent, uncompressed.
"""

from __future__ import annotations

from typing import Protocol

from .refusal import BadRequest

BODY_TIMEOUT = 10.0  # seconds for a body to arrive once its headers have


class HasBody(Protocol):
    headers: dict[str, str]
    body: bytes


def plain_body(request: HasBody, advice: str) -> bytes:
    """The whole body, uncompressed as sent (`advice` says what to send instead of a compressed one: a
    decompressor is one more way to stall, and a bomb); BadRequest 415 otherwise."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise BadRequest(415, "bad_encoding", f"Content-Encoding {encoding[:20]!r} is not accepted: {advice}")
    return request.body
