"""The event loop the server runs on: asyncio's own, or uvloop when HOOKRULES_LOOP=uvloop asks for it.

Why a choice at all: a webhook's price over a bare endpoint is largely the event loop's Python
machinery (task steps, handles, the selector, the transport's write: 22-35% of a webhook's server
CPU under py-spy), which uvloop does in C (libuv). Measured with bench/ab_webhooks.py: 76.1 -> 71.5
us of server CPU per VerneMQ webhook; ExHook quick runs 174-201 -> 147-158 us per call. grpc.aio
runs on it unchanged (tests/test_eventloop.py runs every front-end on both loops).

Why it was not the default: uvloop's own server accepts about one new connection per loop turn
(asyncio's accepts up to the backlog at once), so a burst of new connections waited in the kernel's
accept queue, where the admission count (adapters/admission.py) cannot see it, and calls past
--max-concurrent-calls were answered late instead of refused at once. Since 2026-12-05 the --http
port accepts with its own loop (adapters/httpaccept.py: every waiting connection at once, on either
loop), and test_an_http_backlog_past_the_limit_is_refused_at_once passes on uvloop too (so does
tests/test_httpwire.py's burst test, which fails with uvloop's own server). What is left: uvloop is
not a dependency (pip install uvloop), and its gain is smaller now that the port creates no task per
request (45.1 -> 43.1 us per webhook, bench/README.md); choosing it still logs a warning.

HOOKRULES_LOOP: empty or `asyncio` for asyncio's loop, `uvloop` for uvloop; anything else (or uvloop
when it is not installed) refuses to start, it is not guessed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .config import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)

ENV = "HOOKRULES_LOOP"
CHOICES = ("asyncio", "uvloop")
UVLOOP_CAVEAT = ("uvloop is an opt-in, not a dependency: it saves about 4% of the CPU of a "
                 "webhook (bench/README.md)")


class LoopChoiceError(ConfigError):
    """HOOKRULES_LOOP names no loop this process can run: the server refuses to start (exit 2)."""


def loop_factory(choice: str | None = None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, factory) of the loop to run: `choice`, else HOOKRULES_LOOP, else asyncio's."""
    wanted = (choice if choice is not None else os.environ.get(ENV, "")).strip().lower()
    if wanted not in ("", *CHOICES):
        raise LoopChoiceError(f"{ENV}={wanted[:20]!r}: the event loop is one of {', '.join(CHOICES)}")
    if wanted == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise LoopChoiceError(f"{ENV}=uvloop but uvloop is not installed (pip install uvloop)") from None
        return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """asyncio.run(main) on the chosen loop."""
    try:
        name, factory = loop_factory(choice)
    except LoopChoiceError:
        main.close()  # never started: no "coroutine was never awaited" warning on the way out
        raise
    if name == "uvloop":
        log.warning("event loop: uvloop (%s); %s", ENV, UVLOOP_CAVEAT)
    else:
        log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
