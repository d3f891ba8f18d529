"""The event loop the server runs on: uvloop where it is installed, else asyncio's own.

Why: a webhook's price over a bare endpoint is mostly the event loop's Python machinery (task steps,
handles, the selector and transport written in Python), not the rule; uvloop does the same work in C
(libuv). Measured with bench/webhooks_bench.py: see the commit that made it the default. grpc.aio runs
on it unchanged (its completion queue is polled by grpc-core's own thread and handed to whatever loop
is running), and tests/test_eventloop.py checks both front-ends on it.

HOOKRULES_LOOP=asyncio picks asyncio's loop anyway (a platform uvloop does not support, or to tell a
problem of uvloop's from one of ours); any other value but uvloop or empty is refused, not guessed.
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
CHOICES = ("uvloop", "asyncio")


class LoopChoiceError(ConfigError):
    """HOOKRULES_LOOP names no loop this process can run: the server refuses to start (exit 2)."""


def loop_factory(choice: str | None = None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """(name, factory) of the loop to run: `choice`, else HOOKRULES_LOOP, else uvloop when importable."""
    wanted = (choice if choice is not None else os.environ.get(ENV, "")).strip().lower()
    if wanted not in ("", *CHOICES):
        raise LoopChoiceError(f"{ENV}={wanted[:20]!r}: the event loop is one of {', '.join(CHOICES)}")
    if wanted != "asyncio":
        try:
            import uvloop
        except ImportError:
            if wanted == "uvloop":
                raise LoopChoiceError(f"{ENV}=uvloop but uvloop is not installed (pip install uvloop)") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


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
