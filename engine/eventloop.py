"""The event loop the server runs on: uvloop, unless HOOKRULES_LOOP=asyncio asks for asyncio's own.

Why uvloop: a call's price over a bare endpoint is largely the event loop's Python machinery (task
steps, handles, the selector, the transport's write), which uvloop does in C (libuv). grpc.aio feels it
most: its calls reach Python through the loop, and on asyncio's loop an ExHook call cost 22-33 us more
CPU at saturation (bench/peers_bench.py, 2026-12-05, the same code on both loops: an authenticate 197 -> 165
us and a publish rewrite 233 -> 200 after that day's per-call work, 202 -> 178 and 240 -> 218 before it):
the largest single step toward issue 11's goal against a hand-written servicer.
A webhook gains less (about 1 us of 37), the --http port making no task per request. Every front-end runs on both loops
(tests/test_eventloop.py).

What uvloop's own servers do differently: they accept about one new connection per loop turn
(asyncio's accept up to the backlog at once), so a burst of new connections would wait in the kernel's
accept queue, where the admission count (adapters/admission.py) cannot see it. The --http port does
not use them: it accepts with its own loop (adapters/httpaccept.py: every waiting connection at once,
on either loop), and test_an_http_backlog_past_the_limit_is_refused_at_once passes on both. The gRPC
port is grpc-core's, and the metrics port sees a scrape at a time.

The supervisor of --workers (supervisor.py) answers no broker and stays on asyncio's loop.

HOOKRULES_LOOP: empty or `uvloop` for uvloop (a dependency; should it be missing, asyncio's loop with a
warning), `asyncio` for asyncio's loop; anything else refuses to start, it is not guessed.
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

class LoopChoiceError(ConfigError):
    """HOOKRULES_LOOP names no loop this process can run: the server refuses to start (exit 2)."""


def wanted(choice: str | None = None) -> str:
    """`choice`, else HOOKRULES_LOOP, checked ("" for the default)."""
    value = (choice if choice is not None else os.environ.get(ENV, "")).strip().lower()
    if value not in ("", *CHOICES):
        raise LoopChoiceError(f"{ENV}={value[:20]!r}: the event loop is one of {', '.join(CHOICES)}")
    return value


def loop_factory(choice: str | None = None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, factory) of the loop to run: `choice`, else HOOKRULES_LOOP, else uvloop."""
    wanted_loop = wanted(choice)
    if wanted_loop == "asyncio":
        return "asyncio", asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if wanted_loop == "uvloop":
            raise LoopChoiceError(f"{ENV}=uvloop but uvloop is not installed (pip install uvloop)") from None
        log.warning("uvloop is not installed (it is a dependency of hookrules): running on asyncio's event loop, "
                    "which costs more CPU per call; pip install uvloop")
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """asyncio.run(main) on the chosen loop."""
    try:
        name, factory = loop_factory(choice)
    except LoopChoiceError:
        main.close()  # never started: no "coroutine was never awaited" warning on the way out
        raise
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
