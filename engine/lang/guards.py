"""Size guards for what one step of a rule can build: the step budget and deadline bound how many
steps run, these bound what each step costs.

asteval guards `str * int` and `str + str` at 256 KiB and exponents and shifts by their operand.
That leaves `int * str`, bytes, lists, big-integer products, `%` widths and str.replace/join able to
allocate gigabytes, or compute for seconds, in a single step. Every binary operator and the two
amplifying methods go through here instead.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from typing import Any

MAX_TEXT = 256 * 1024  # characters of a str, bytes of a bytes (asteval's MAX_STR_LEN)
MAX_EXPONENT = 10_000  # asteval's
MAX_SHIFT = 1_000  # asteval's
MAX_ITEMS = 100_000  # items of a list or tuple (the range limit too)
MAX_INT_BITS = 100_000  # ~30,000 decimal digits; a product of two such numbers is still cheap

_TEXT = (str, bytes)
_SEQUENCE = (str, bytes, list, tuple)
# a %-directive with a width or precision from '*' or of four digits or more
_WIDE = re.compile(r"%[-#0 +]*(?:\*|\d{4,}|\d*\.(?:\*|\d{4,}))")
_WIDE_BYTES = re.compile(_WIDE.pattern.encode())


class TooBig(RuntimeError):
    """A value over the sandbox's size limits; a RuntimeError, so the hint says to keep values small."""


def _check_len(value: Any, length: int) -> None:
    limit = MAX_TEXT if isinstance(value, _TEXT) else MAX_ITEMS
    if length > limit:
        kind = type(value).__name__
        raise TooBig(f"a {kind} of {length} {'items' if kind in ('list', 'tuple') else 'characters'} "
                     f"is over the limit of {limit}")


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not a number here


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise TooBig(f"an integer of about {bits} bits is over the limit of {MAX_INT_BITS}")


def add(a: Any, b: Any) -> Any:
    if isinstance(a, _SEQUENCE) and type(a) is type(b):
        _check_len(a, len(a) + len(b))
    return a + b


def mult(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b):
        _check_bits(a.bit_length() + b.bit_length())
    elif isinstance(a, _SEQUENCE) and _is_int(b):
        _check_len(a, len(a) * b)
    elif isinstance(b, _SEQUENCE) and _is_int(a):
        _check_len(b, len(b) * a)
    return a * b


def power(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and b > MAX_EXPONENT:
        raise TooBig(f"exponent {b} is over the limit of {MAX_EXPONENT}")
    if _is_int(a) and _is_int(b) and b > 0:
        _check_bits(a.bit_length() * b)
    return a**b


def lshift(a: Any, b: Any) -> Any:
    if _is_int(b) and b > MAX_SHIFT:
        raise TooBig(f"shift by {b} is over the limit of {MAX_SHIFT}")
    if _is_int(a) and _is_int(b):
        _check_bits(a.bit_length() + b)
    return a << b


def mod(a: Any, b: Any) -> Any:
    if isinstance(a, str) and _WIDE.search(a) or isinstance(a, bytes) and _WIDE_BYTES.search(a):
        raise TooBig("%-formatting with a width or precision of 1000 or more, or '*', is not allowed")
    return a % b


#: The arithmetic that can grow values; lang/interp lays these over asteval's operator table.
GUARDED_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: add, ast.Mult: mult, ast.Pow: power, ast.LShift: lshift, ast.Mod: mod,
}


def replace(s: Any, old: Any, new: Any, count: int = -1) -> Any:
    """str.replace / bytes.replace, refused when the result would be over the size limit."""
    if isinstance(s, _TEXT) and isinstance(old, _TEXT) and isinstance(new, _TEXT):
        hits = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
        if count >= 0:
            hits = min(hits, count)
        _check_len(s, len(s) + hits * (len(new) - len(old)))
    return s.replace(old, new, count)


def join(sep: Any, items: Iterable[Any]) -> Any:
    """str.join / bytes.join, refused when the result would be over the size limit."""
    parts = list(items)
    if isinstance(sep, _TEXT):
        _check_len(sep, sum(len(p) for p in parts if isinstance(p, _TEXT)) + len(sep) * max(len(parts) - 1, 0))
    return sep.join(parts)


#: Methods of str and bytes served by the guarded versions above.
GUARDED_METHODS: dict[str, Callable[..., Any]] = {"replace": replace, "join": join}
