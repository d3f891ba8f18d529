"""The event loop the server runs on: asyncio's own, or uvloop when HOOKRULES_LOOP=uvloop asks for it.

Why a choice at all: a webhook's price over a bare endpoint is largely the event loop's Python
machinery (task steps, handles, the selector, the transport's write: 22-35% of a webhook's server
CPU under py-spy), which uvloop does in C (libuv). Measured with bench/ab_webhooks.py: 76.1 -> 71.5
us of server CPU per VerneMQ webhook; ExHook quick runs 174-201 -> 147-158 us per call. grpc.aio
runs on it unchanged (tests/test_eventloop.py runs every front-end on both loops).

Why not the default: on uvloop the listening socket accepts about one new connection per loop turn
(asyncio's accepts up to the backlog at once). A rule that takes its time then holds every other
new connection in the kernel's accept queue, where the admission count (adapters/admission.py)
cannot see it: under a burst of new connections --max-concurrent-calls no longer refuses the
backlog at once with 503, it is answered late instead (tests/test_lifecycle.py's
test_an_http_backlog_past_the_limit_is_refused_at_once fails on uvloop). Calls on connections
already open (VerneMQ's and RabbitMQ's keep-alive pools, EMQX's gRPC channels) are counted alike on
both loops. So uvloop is for those who measured it on their load and accept that; it is not a
dependency (pip install uvloop), and choosing it logs a warning that says so.

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
UVLOOP_CAVEAT = ("uvloop accepts about one new connection per loop turn: under a burst of new connections the "
                 "calls past --max-concurrent-calls wait in the accept queue instead of being refused at once "
                 "(calls on open keep-alive connections and gRPC channels are counted as on asyncio)")


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
