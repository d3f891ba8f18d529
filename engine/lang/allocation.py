"""What one rule run may allocate in all: the step budget bounds how many steps run and the size
guards what each step makes, but 100,000 steps of 256 KiB strings is 25 GB, far past any deadline's
worth of memory. Every place that already measures a value it made (guards' operators, call results,
f-strings, comprehension results) also charges it here, and the run fails past MAX_ALLOCATION, as it
does past its step budget. One budget per thread (libraries load in the scan thread); outside a run
it is unlimited.
"""

from __future__ import annotations

import math
import threading
from typing import Any, TypeVar

_V = TypeVar("_V")

#: bytes (an estimate: text by its characters, 4 a character past ASCII; 40 an item of a list or
#: tuple, 100 an entry of a dict or set, as the items may be new numbers too; an int by its bits) a
#: run may make in all
MAX_ALLOCATION = 64 * 1024 * 1024


class OverAllocation(RuntimeError):
    """The run made more than MAX_ALLOCATION; a RuntimeError, so the hint says to keep values small."""


class _Allocation(threading.local):
    left: float = math.inf


ALLOCATION = _Allocation()


def start() -> None:
    ALLOCATION.left = MAX_ALLOCATION


def stop() -> None:
    ALLOCATION.left = math.inf


def size_of(value: Any) -> int:
    cls = value.__class__
    if cls is str:
        return len(value) if value.isascii() else 4 * len(value)
    if cls is bytes:
        return len(value)
    if cls is list or cls is tuple:
        return 40 * len(value)
    if cls is dict or cls is set or cls is frozenset:
        return 100 * len(value)
    if cls is int:
        return value.bit_length() >> 3  # type: ignore[no-any-return]
    return 0


def charge(value: _V) -> _V:
    """Take what `value` holds from the run's budget; the value, or OverAllocation past the budget."""
    left = ALLOCATION.left - size_of(value)
    ALLOCATION.left = left
    if left < 0:
        raise OverAllocation(f"the rule made more than {MAX_ALLOCATION // (1024 * 1024)} MiB of values in one run: "
                             "build fewer or smaller strings and lists")
    return value
