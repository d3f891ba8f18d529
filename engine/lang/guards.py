"""Size guards for what one step of a rule can build: the step budget and deadline bound how many
steps run, these bound what each step costs.

asteval guards `str * int` and `str + str` at 256 KiB and exponents and shifts by their operand.
That leaves `int * str`, bytes, lists, big-integer products, `%` widths and str.replace/join able to
allocate gigabytes, or compute for seconds, in a single step. Every binary operator and the two
amplifying methods go through here instead.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..events import JSONArray, JSONObject
from .allocation import charge
from .values import CONTAINERS, HASHED, MAPPINGS, RECORDS, SETS

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
        return charge(a + b)  # type: ignore[operator]
    return a + b


def mult(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b):
        _check_bits(a.bit_length() + b.bit_length())
    elif isinstance(a, _SEQUENCE) and _is_int(b):
        _check_repeat(a, b)
    elif isinstance(b, _SEQUENCE) and _is_int(a):
        _check_repeat(b, a)
    else:
        return a * b
    return charge(a * b)


#: items a value may stand for, counting a list as often as it is referred to: [[big] * 1000] * 1000
#: is cheap to build and a thousand times bigger for ==, `in`, hash() or str(), which walk it in C
MAX_WALK = MAX_ITEMS * 10


def _walked(value: Any) -> Any:
    """What a walk of a container visits: items, or a mapping's keys and values (the raw data under
    a JSON view)."""
    cls = value.__class__
    if cls is JSONObject or cls is JSONArray:
        value = value._data
        cls = value.__class__
    if cls in MAPPINGS:
        return itertools.chain(value, value.values())
    if cls is range:
        return ()
    return value


#: a walk charges one item per 2**TEXT_UNIT characters of a str or bytes (compared, or hashed once,
#: 16 at a time or so) and per 2**INT_UNIT bits of an int (compared and hashed a 30-bit digit at a time)
TEXT_UNIT = 4
INT_UNIT = 5


def walk_size(value: Any, budget: int = MAX_WALK, sized: bool = True) -> int:
    """How many items a walk of the value visits, shared parts counted each time; stops past budget.
    Every container of the closed set counts (lang/values.CONTAINERS), mappings twice (key and value),
    and (with `sized`) every str, bytes and int in it by its size, wherever it sits."""
    seen = 0
    stack = [value]
    while stack:
        v = stack.pop()
        cls = v.__class__
        if cls in CONTAINERS:
            if cls is JSONObject or cls is JSONArray:
                v = v._data
                cls = v.__class__
            seen += 2 * len(v) if cls in MAPPINGS else len(v)
            if seen > budget:
                return seen
            for x in _walked(v):
                xcls = x.__class__
                if xcls in CONTAINERS:
                    stack.append(x)
                elif not sized:
                    continue
                elif xcls is str or xcls is bytes:
                    seen += len(x) >> TEXT_UNIT  # each item by its size: a list of 1 MB strings is not cheap
                elif xcls is int:
                    seen += x.bit_length() >> INT_UNIT
        elif not sized:
            continue
        elif cls is str or cls is bytes:
            seen += len(v) >> TEXT_UNIT
        elif cls is int:
            seen += v.bit_length() >> INT_UNIT
    return seen


def _check_repeat(seq: Any, times: int) -> None:
    _check_len(seq, len(seq) * times)
    if isinstance(seq, (list, tuple)) and times > 1:
        # lists only: a list of one long text repeated is cheap to hold; comparing it is charged then
        size = walk_size(seq, MAX_WALK // times + 1, sized=False) * times
        if size > MAX_WALK:
            raise TooBig(f"repeating this list would stand for over {MAX_WALK} items (lists inside count "
                         "each time they appear)")


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
    result = charge(a**b)
    if result.__class__ is complex:  # (-8) ** (1 / 3): complex numbers are not among a rule's values
        raise ValueError(f"{a!r} ** {b!r} has no real value (rules have no complex numbers)")
    return result


def lshift(a: Any, b: Any) -> Any:
    if _is_int(b) and b > MAX_SHIFT:
        raise TooBig(f"shift by {b} is over the limit of {MAX_SHIFT}")
    if _is_int(a) and _is_int(b):
        _check_bits(a.bit_length() + b)
        return charge(a << b)
    return a << b


#: one %-directive: an optional (key), flags, width, precision, length modifier, the conversion
_DIRECTIVE = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(?:\*|\d*)(?:\.(?:\*|\d*))?[hlL]?(.)", re.S)
_DIRECTIVE_BYTES = re.compile(_DIRECTIVE.pattern.encode(), re.S)
_CONVERTERS: dict[str, Any] = {"s": str, "r": repr, "a": ascii, "b": str}


def mod(a: Any, b: Any) -> Any:
    """`%` of a str or bytes: what each field will write is measured (guards.charge_text) before the
    text is made. '%(k)s' * 40 % {'k': big} writes `big` 40 times, '%s' % (big_list,) its repr."""
    if a.__class__ is not str and a.__class__ is not bytes:
        return a % b
    if isinstance(a, str) and _WIDE.search(a) or isinstance(a, bytes) and _WIDE_BYTES.search(a):
        raise TooBig("%-formatting with a width or precision of 1000 or more, or '*', is not allowed")
    percent: Any = "%" if isinstance(a, str) else b"%"
    if a.count(percent) > 2 * MAX_FORMAT_FIELDS:
        raise TooBig(f"%-formatting with more than {MAX_FORMAT_FIELDS} fields is not allowed")
    budget = [MAX_TEXT - len(a)]
    position = 0
    pattern: Any = _DIRECTIVE if a.__class__ is str else _DIRECTIVE_BYTES
    for match in pattern.finditer(a):
        key: Any = match.group(1)
        kind: Any = match.group(2)
        if isinstance(kind, bytes):
            kind = kind.decode("latin-1")
            key = key.decode("latin-1") if key is not None else None
        if kind == "%":
            continue
        try:
            if key is not None:
                value = b[key if a.__class__ is str else key.encode("latin-1")]
            elif b.__class__ is tuple:
                value = b[position]
                position += 1
            else:
                value = b
        except (KeyError, IndexError, TypeError):
            break  # Python's own error says what is wrong
        convert = _CONVERTERS.get(kind)
        if convert is None:  # a number: its digits (or one character for %c)
            budget[0] -= value.bit_length() // 3 + 2 if value.__class__ is int else 40
            if budget[0] < 0:
                raise TooBig(f"%-formatting would make a text of over {MAX_TEXT} characters")
        elif a.__class__ is bytes and kind in "sb":
            budget[0] -= len(value) if isinstance(value, (bytes, bytearray)) else 0
            if budget[0] < 0:
                raise TooBig(f"%-formatting would make bytes of over {MAX_TEXT}")
        else:
            charge_text(value, ascii if a.__class__ is bytes else convert, budget)
    return check_size(a % b)


def check_size(value: Any) -> Any:
    """The result of a call or format, refused when over the limits an operator's result has: a method
    (encode('utf-32'), hex(), upper(), split()) or helper can make its input several times bigger."""
    cls = value.__class__
    if cls is str or cls is bytes:
        if len(value) > MAX_TEXT:
            _check_len(value, len(value))
    elif cls is int:
        _check_bits(value.bit_length())
    elif len(value) > MAX_ITEMS:  # list, tuple, dict, set
        raise TooBig(f"a {cls.__name__} of {len(value)} items is over the limit of {MAX_ITEMS}")
    return charge(value)


#: the classes check_size looks at (a set lookup decides whether a call's result needs it)
SIZED = frozenset({str, bytes, list, tuple, int, dict, set, frozenset})

#: a format spec's width or precision of 5 digits or more: format(x, '>99999999') is 100 MB
_WIDE_SPEC = re.compile(r"\d{5,}")


def format_value(value: Any, spec: str) -> str:
    """format() of an f-string field, refused for widths and precisions of 10,000 or more."""
    if spec and _WIDE_SPEC.search(spec):
        raise TooBig("an f-string field with a width or precision of 10000 or more is not allowed")
    return charge(format(value, spec))


def join_fields(parts: list[str]) -> str:
    """An f-string's fields joined, refused when the result would be over the size limit."""
    total = sum(len(p) for p in parts)
    if total > MAX_TEXT:
        raise TooBig(f"an f-string of {total} characters is over the limit of {MAX_TEXT}")
    return charge("".join(parts))


def _hashed_pair(a: Any, b: Any) -> None:
    """`| & - ^` between sets (or dicts): one C call hashes the items of both into a new table."""
    if a.__class__ in HASHED and b.__class__ in HASHED:
        check_spread(itertools.chain(keys_of(a, False), keys_of(b, False)))


def bit_or(a: Any, b: Any) -> Any:
    _hashed_pair(a, b)
    return charge(a | b)


def bit_and(a: Any, b: Any) -> Any:
    _hashed_pair(a, b)
    return charge(a & b)


def bit_xor(a: Any, b: Any) -> Any:
    _hashed_pair(a, b)
    return charge(a ^ b)


def sub(a: Any, b: Any) -> Any:
    if a.__class__ in SETS:
        _hashed_pair(a, b)
        return charge(a - b)
    return a - b


#: The arithmetic that can grow values, or hash many keys in one C call; lang/interp lays these
#: over asteval's operator table.
GUARDED_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: add, ast.Mult: mult, ast.Pow: power, ast.LShift: lshift, ast.Mod: mod,
    ast.BitOr: bit_or, ast.BitAnd: bit_and, ast.BitXor: bit_xor, ast.Sub: sub,
}


def replace(s: Any, old: Any, new: Any, count: int = -1) -> Any:
    """str.replace / bytes.replace, refused when the result would be over the size limit."""
    if isinstance(s, _TEXT) and isinstance(old, _TEXT) and isinstance(new, _TEXT):
        hits = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
        if count >= 0:
            hits = min(hits, count)
        _check_len(s, len(s) + hits * (len(new) - len(old)))
    return charge(s.replace(old, new, count))


def join(sep: Any, items: Iterable[Any]) -> Any:
    """str.join / bytes.join, refused when the result would be over the size limit."""
    parts = list(items)
    if isinstance(sep, _TEXT):
        _check_len(sep, sum(len(p) for p in parts if isinstance(p, _TEXT)) + len(sep) * max(len(parts) - 1, 0))
    return charge(sep.join(parts))


#: Methods of str and bytes served by the guarded versions above (what they make is measured first).
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
#: how deep bounded_text follows a value (lang/nesting keeps values within this)
MAX_TEXT_DEPTH = 100


def _record_fields(value: Any) -> list[Any]:
    """What a record's repr shows: its fields with repr=True (never the password or the payload)."""
    return [getattr(value, f.name) for f in dataclasses.fields(value) if f.repr]


def _quoted_size(value: str | bytes, convert: Any, sizes: dict[int, int]) -> int:
    """Characters of repr()/ascii() of a str or bytes (escapes make it up to 10 times its length): a
    close bound for printable ASCII text, else the exact size, computed once per object."""
    if value.__class__ is str and value.isascii() and value.isprintable():
        return len(value) + 2 + value.count("\\") + value.count("'")
    known = sizes.get(id(value))
    if known is None:
        known = sizes[id(value)] = len(convert(value))
    return known


def charge_text(value: Any, convert: Any, budget: list[int], quoted: bool = False) -> None:
    """Take what `convert(value)` (str, repr or ascii) would write from `budget[0]`, before it is
    written, raising TooBig when that runs out. Every container of the closed set is measured (items
    in their repr form, shared parts each time they appear), records by the fields their text shows,
    strings and bytes by what their escapes make of them, numbers by their digits."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, int, bool]] = [(value, 0, quoted)]
    while stack:
        v, depth, inner = stack.pop()
        vcls = v.__class__
        if vcls is str or vcls is bytes:
            budget[0] -= _quoted_size(v, repr if convert is str else convert, sizes) if inner or convert is not str \
                or vcls is bytes else len(v)
        elif vcls is int:
            budget[0] -= v.bit_length() // 3 + 2
        elif vcls in CONTAINERS or vcls in RECORDS:
            if depth > MAX_TEXT_DEPTH:
                raise TooBig(f"a value nested more than {MAX_TEXT_DEPTH} levels deep cannot be turned into text")
            if vcls in CONTAINERS:
                budget[0] -= 2 + (2 * len(v) if vcls is not range else 40)
                parts: Any = _walked(v)
            else:
                budget[0] -= 40
                parts = _record_fields(v)
            if budget[0] < 0:
                break
            stack.extend((item, depth + 1, True) for item in parts)  # at most budget / 2 of them
        else:
            budget[0] -= 40  # None, bool, float, a function: short
        if budget[0] < 0:
            raise TooBig(f"the text of this value would be over the limit ({MAX_TEXT_OF_VALUE} characters for "
                         f"str/repr/log of a container, {MAX_TEXT} for a formatted string)")


def bounded_text(value: Any, convert: Any) -> str:
    """str()/repr()/ascii() of a value, measured before it is made: a list of big lists repeated is
    cheap to build and gigabytes to print."""
    cls = value.__class__
    if cls is str and convert is str:
        return value  # type: ignore[no-any-return]
    charge_text(value, convert, [MAX_TEXT_OF_VALUE if cls in CONTAINERS or cls in RECORDS else MAX_TEXT])
    return str(convert(value))


def safe_repr(value: Any) -> str:
    return bounded_text(value, repr)


# -- hash collisions ------------------------------------------------------------------------------

#: below this many keys even a table of all-colliding keys is cheap to build (n**2 / 2 probes)
SPREAD_FREE = 512
#: distinct keys one full hash value may stand for: natural data never has more than a handful
MAX_SHARED_HASH = 64


def _hash_walk(key: tuple[Any, ...], memo: dict[int, int]) -> int:
    """Items hashing a tuple visits (CPython does not cache a tuple's hash; str, bytes and frozenset
    cache theirs, an int's is its value): its items, and the tuples inside each time they appear."""
    known = memo.get(id(key))
    if known is None:
        known = len(key)
        for item in key:
            known += _hash_cost(item, memo)
        memo[id(key)] = known
    return known


def _hash_cost(key: Any, memo: dict[int, int]) -> int:
    """What hashing one key walks: a tuple all of it, an int its digits (never cached), a str or bytes
    its length (cached after the first time, charged as if not: a new string hashes whole)."""
    cls = key.__class__
    if cls is tuple:
        return _hash_walk(key, memo)
    if cls is int:
        return key.bit_length() >> INT_UNIT  # type: ignore[no-any-return]
    if cls is str or cls is bytes:
        return len(key) >> TEXT_UNIT
    return 0


def check_spread(keys: Iterable[Any]) -> None:
    """Before one C call hashes many keys into a table (dict(), dict.fromkeys, update, set operations
    and comparisons): what hashing them all costs, and keys built to share one hash value.

    A tuple's hash walks all of it, every time: one big tuple repeated 4,000 times is billions of
    steps in one call, so every key's hash walk is charged against one budget (MAX_WALK) first.
    Keys sharing a hash make each insert walk all the others, so the call is quadratic and runs past
    any deadline: 20,000 tuples of small ints colliding by design take about 3 s in dict.fromkeys,
    and integers equal modulo 2**61 - 1 (Python's int hash) collide at will. Keys added one by one in
    a loop or comprehension meet the deadline between steps instead. An unhashable key raises
    TypeError here as the call itself would."""
    items = keys if isinstance(keys, (list, tuple)) else list(itertools.islice(keys, 2 * MAX_ITEMS + 1))
    walk = 0
    memo: dict[int, int] = {}
    for key in items:
        kcls = key.__class__
        if kcls is tuple or kcls is int or kcls is str or kcls is bytes:
            walk += _hash_cost(key, memo)
            if walk > MAX_WALK:
                raise TooBig(f"hashing these keys would walk over {MAX_WALK} items (a tuple key is walked "
                             "whole each time it is hashed, a big number or long text by its size): use "
                             "shorter keys")
    if len(items) <= SPREAD_FREE:
        return
    hashes = list(map(hash, items))  # each key hashed once, here
    counts = Counter(hashes)
    if len(items) - len(counts) < MAX_SHARED_HASH:
        return  # too few shared hashes to matter
    crowded = {h for h, n in counts.items() if n > MAX_SHARED_HASH}
    groups: dict[int, list[Any]] = {}
    for key, h in zip(items, hashes):
        if h in crowded:
            distinct = groups.setdefault(h, [])
            if all(key != seen for seen in distinct):  # equal keys share one slot: no walk
                distinct.append(key)
                if len(distinct) > MAX_SHARED_HASH:
                    raise TooBig(f"over {MAX_SHARED_HASH} different keys share one hash value (numbers or "
                                 "tuples chosen to collide): a table of them takes quadratic time")


def keys_of(value: Any, pairs: bool) -> Iterable[Any]:
    """What a bulk insert hashes: a mapping's keys; with `pairs`, the first item of each pair (dict(),
    dict.update), whatever iterable of two items the pair is; else the items themselves (dict.fromkeys,
    set operations)."""
    if value.__class__ in MAPPINGS or hasattr(value, "keys"):
        return list(value.keys())
    if pairs:  # dict() takes any iterable of two items as a pair: a range, a str, a JSON array, a dict...
        keys = []
        for pair in itertools.islice(value, 2 * MAX_ITEMS + 1):
            try:
                if len(pair) != 2:
                    continue
            except TypeError:
                continue  # dict() will refuse it
            keys.append(next(iter(pair)))
        return keys
    return value  # type: ignore[no-any-return]
