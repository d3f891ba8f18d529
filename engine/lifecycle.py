"""The one lifecycle of a serving process (a server, or the supervisor of its workers): start, wait for the
signal to stop, stop; and stop whatever did start when the start fails, so nothing outlives it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def serve_until_stopped(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]],
                              stopped: asyncio.Event, stopping: Callable[[], None]) -> None:
    """start(); then wait for `stopped`, say so with stopping(), and stop(). A failed start is stopped too."""
    try:
        await start()
    except BaseException:
        await stop()  # whatever did start must not outlive a failed start
        raise
    try:
        await stopped.wait()
        stopping()
    finally:
        await stop()
