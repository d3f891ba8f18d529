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
from types import MappingProxyType
from typing import Any

MAX_TEXT = 256 * 1024  # characters of a str, bytes of a bytes (asteval's MAX_STR_LEN)
MAX_EXPONENT = 10_000  # asteval's
MAX_SHIFT = 1_000  # asteval's
MAX_ITEMS = 100_000  # items of a list or tuple (the range limit too)
MAX_INT_BITS = 100_000  # ~30,000 decimal digits; a product of two such numbers is still cheap

_TEXT = (str, bytes)
_SEQUENCE = (str, bytes, list, tuple)
# a %-directive (optionally with a (key)) whose width or precision comes from '*' or has 4+ digits
_WIDE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{4,}|\d*\.(?:\*|\d{4,}))")
MAX_FORMAT_FIELDS = 100
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
        _check_repeat(a, b)
    elif isinstance(b, _SEQUENCE) and _is_int(a):
        _check_repeat(b, a)
    return a * b


#: items a value may stand for, counting a list as often as it is referred to: [[big] * 1000] * 1000
#: is cheap to build and a thousand times bigger for ==, `in`, hash() or str(), which walk it in C
MAX_WALK = MAX_ITEMS * 10
CONTAINERS = frozenset({list, tuple, dict, set, frozenset, MappingProxyType})


def walk_size(value: Any, budget: int = MAX_WALK) -> int:
    """How many items a walk of the value visits, shared parts counted each time; stops past budget."""
    seen = 0
    stack = [value]
    while stack:
        v = stack.pop()
        cls = v.__class__
        if cls in (dict, MappingProxyType):
            seen += 2 * len(v)
            if seen > budget:
                return seen
            stack.extend(x for x in v.values() if x.__class__ in CONTAINERS)
            stack.extend(x for x in v if x.__class__ is tuple or x.__class__ is frozenset)
        elif cls in CONTAINERS:
            seen += len(v)
            if seen > budget:
                return seen
            stack.extend(x for x in v if x.__class__ in CONTAINERS)
        elif cls is str or cls is bytes:
            seen += len(v) // 64  # text is compared a machine word at a time
    return seen


def _check_repeat(seq: Any, times: int) -> None:
    _check_len(seq, len(seq) * times)
    if isinstance(seq, (list, tuple)) and times > 1:
        size = walk_size(seq, MAX_WALK // times + 1) * times
        if size > MAX_WALK:
            raise TooBig(f"repeating this list would stand for over {MAX_WALK} items (lists inside count "
                         "each time they appear)")


#: containers `in` looks up by hash: it walks only what it looks for
HASHED = frozenset({set, frozenset, dict, MappingProxyType})


def check_walk(a: Any, b: Any, op: type[ast.cmpop] | None = None) -> None:
    """Before comparing two containers (==, <, `in`): the C code walks both, past any deadline. `in`
    a set or dict hashes the left side only, and `is` walks nothing."""
    if op is ast.Is or op is ast.IsNot:
        return
    if (op is ast.In or op is ast.NotIn) and b.__class__ in HASHED:
        b = ()
    if walk_size(a) > MAX_WALK or walk_size(b) > MAX_WALK:
        raise TooBig(f"comparing these values would walk over {MAX_WALK} items (lists inside count each "
                     "time they appear)")


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
    percent: Any = "%" if isinstance(a, str) else b"%"
    if isinstance(a, (str, bytes)) and a.count(percent) > 2 * MAX_FORMAT_FIELDS:
        raise TooBig(f"%-formatting with more than {MAX_FORMAT_FIELDS} fields is not allowed")
    return check_size(a % b)  # '%(k)s' * 100 % {'k': big}: 100 fields of one big value


def check_size(value: Any) -> Any:
    """The result of a call or format, refused when over the limits an operator's result has: a method
    (encode('utf-32'), hex(), upper(), split()) or helper can make its input several times bigger."""
    cls = value.__class__
    if cls is str or cls is bytes:
        if len(value) > MAX_TEXT:
            _check_len(value, len(value))
    elif cls is list or cls is tuple:
        if len(value) > MAX_ITEMS:
            _check_len(value, len(value))
    elif cls is int:
        _check_bits(value.bit_length())
    return value


#: the classes check_size looks at (a set lookup decides whether a call's result needs it)
SIZED = frozenset({str, bytes, list, tuple, int})

#: a format spec's width or precision of 5 digits or more: format(x, '>99999999') is 100 MB
_WIDE_SPEC = re.compile(r"\d{5,}")


def format_value(value: Any, spec: str) -> str:
    """format() of an f-string field, refused for widths and precisions of 10,000 or more."""
    if spec and _WIDE_SPEC.search(spec):
        raise TooBig("an f-string field with a width or precision of 10000 or more is not allowed")
    return format(value, spec)


def join_fields(parts: list[str]) -> str:
    """An f-string's fields joined, refused when the result would be over the size limit."""
    total = sum(len(p) for p in parts)
    if total > MAX_TEXT:
        raise TooBig(f"an f-string of {total} characters is over the limit of {MAX_TEXT}")
    return "".join(parts)


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


# -- builtins that would hand rules lazy iterators or unbounded text ---------------------------------


def _items(values: Any, what: str) -> list[Any]:
    out = list(values)
    if len(out) > MAX_ITEMS:
        raise TooBig(f"{what}() of {len(out)} items is over the limit of {MAX_ITEMS}")
    return out


def safe_enumerate(values: Any, start: int = 0) -> list[tuple[int, Any]]:
    """enumerate() as a list: a chain of nested lazy iterators overflows CPython's C stack."""
    return _items(enumerate(values, start), "enumerate")


def safe_zip(*values: Any) -> list[tuple[Any, ...]]:
    """zip() as a list (see safe_enumerate)."""
    return _items(zip(*values), "zip")


def safe_reversed(values: Any) -> list[Any]:
    """reversed() as a list (see safe_enumerate)."""
    return _items(reversed(values), "reversed")


MAX_TEXT_OF_VALUE = 64 * 1024


def bounded_text(value: Any, convert: Any) -> str:
    """str()/repr() of a value, refused when it would be huge: a list of big lists repeated is cheap
    to build and gigabytes to print."""
    if isinstance(value, (list, tuple, dict, set, frozenset)) or hasattr(value, "keys"):
        budget = [MAX_TEXT_OF_VALUE]

        def measure(v: Any, depth: int) -> None:
            if depth > 100:
                raise TooBig("a value nested more than 100 levels deep cannot be turned into text")
            if isinstance(v, (list, tuple, set, frozenset)):
                budget[0] -= 2 + len(v)
                for item in v:
                    if budget[0] < 0:
                        break
                    measure(item, depth + 1)
            elif isinstance(v, dict) or hasattr(v, "keys") and hasattr(v, "items"):
                budget[0] -= 2 + len(v)
                for k, item in v.items():
                    if budget[0] < 0:
                        break
                    measure(k, depth + 1)
                    measure(item, depth + 1)
            elif isinstance(v, (str, bytes)):
                budget[0] -= len(v)
            else:
                budget[0] -= 8
            if budget[0] < 0:
                raise TooBig(f"the text of this value would be over {MAX_TEXT_OF_VALUE} characters")

        measure(value, 0)
    return str(convert(value))


def safe_str(*args: Any) -> str:
    if len(args) == 1:
        return bounded_text(args[0], str)
    return str(*args)  # str(bytes, encoding): bounded by the bytes


def safe_repr(value: Any) -> str:
    return bounded_text(value, repr)
