"""How both HTTP front-ends of the `--http` port (VerneMQ's webhooks, RabbitMQ's checks) read a body:
without letting a slow or endless one hold a place among max_concurrent_calls."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .refusal import BadRequest

BODY_TIMEOUT = 10.0  # seconds for a body to arrive once its headers have


async def read_body(request: web.BaseRequest, advice: str) -> bytes:
    """The whole body, uncompressed as sent (`advice` says what to send instead of a compressed one: a
    decompressor is one more way to stall); BadRequest when it is too large, too slow or broken."""
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":
        raise BadRequest(415, "bad_encoding", f"Content-Encoding {encoding[:20]!r} is not accepted: {advice}")
    try:
        if request.content.is_eof():  # all of it has arrived (a small POST comes in one segment)
            return await request.read()
        async with asyncio.timeout(BODY_TIMEOUT):  # a body that never finishes must not hold a place for ever
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(413, "too_large", f"the body is over {request.client_max_size} bytes") from None
    except TimeoutError:
        raise BadRequest(408, "slow_body", f"the body did not arrive within {BODY_TIMEOUT:.0f} s") from None
    except Exception as exc:  # the client went away, a broken chunked encoding, ...
        raise BadRequest(400, "bad_body", f"the body could not be read ({type(exc).__name__})") from None
