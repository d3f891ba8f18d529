"""How deeply a value a rule makes may nest, checked where values are made.

CPython hashes a tuple by recursing into its items in C with no recursion check: a tuple nested
some 100,000 levels deep (cheap to build: `t = (t,)` in a loop, or enumerate/zip of their own
results) crashes the process when it becomes a dict key or a set member. Other C walks (repr,
==, sorted, json) stop at Python's recursion limit, but one bound for every value is simpler to
reason about than which walk checks what.

So every container a rule makes (a literal, a comprehension, what a builtin, helper or method
returns, an item put into a list, dict or set) is measured when it is made: its depth is one more
than its deepest item's, and may be at most MAX_DEPTH. Depths are remembered by object for the run
(`_memo`; `_lasting` for read-only containers whose depth cannot change), so building a value costs
a look at its new items, not a walk of everything under them. A tuple's hash walk (its items,
shared parts counted each time they appear) is measured too: a tuple standing for more than
MAX_HASH_WALK items is refused when made.

Nothing a run makes outlives the run: the meter lets go of everything at the run's end (keeping a
run's read-only containers for later runs let one request after another pile up megabytes). Only
library values, frozen when the library loads, are remembered across runs (`pin`, by lang/freeze),
up to MAX_PINNED_ITEMS items in all, so a rule holding a big library table is not walked per run.

Mutation can deepen a list, dict or set after it was put inside other containers. So the meter
also remembers, for the run, which containers hold each container whose depth can still change
(`_holders`), and an insert that deepens a container deepens those too, up the chain, refusing
at MAX_DEPTH: a list holding itself is infinitely deep. Each container's depth can only grow, and
at most MAX_DEPTH times, so this costs at most MAX_DEPTH steps per link over a whole run.

Operators are not measured: `[l] * 3`, `a + b`, `d | e` or a slice make a container of items that
another container already holds (the literal or call that made them, measured), exactly as deep as
it; whatever deepens one of those items deepens that measured holder too, which is refused first.
"""

from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Any

from ..events import JSONArray, JSONObject
from .guards import MAX_WALK, TooBig
from .values import CONTAINERS

MAX_DEPTH = 100
#: items hashing a tuple may visit (guards.MAX_WALK: what == and `in` may walk)
MAX_HASH_WALK = MAX_WALK
#: items of the library values remembered across runs (`pin`), before they are all let go
MAX_PINNED_ITEMS = 2_000_000
#: nested containers one run may make: each is remembered (with what holds it) until the run ends
MAX_MEMO = 200_000

#: a flat list or tuple this short is looked at again rather than remembered
_SMALL = 16

#: containers whose depth cannot change once made: remembered across runs
_FIXED = frozenset({tuple, frozenset, MappingProxyType, range, JSONObject, JSONArray})


#: id -> entry (as Nesting's) of library values frozen at load time; `_PINNED_KEPT` keeps them alive,
#: so no id is reused while its entry stands. Written when a library loads, read by every run.
_PINNED: dict[int, int] = {}
_PINNED_KEPT: list[Any] = []
_PINNED_SIZE = [0]


def pin(value: Any) -> None:
    """A library value just frozen (lang/freeze): measure it once, for every later run. A value over
    the bounds is not remembered (each run that makes something of it is refused as before)."""
    if value.__class__ not in _FIXED or id(value) in _PINNED:
        return
    meter = Nesting()
    try:
        meter._walk(value)
    except TooBig:
        return
    size = sum(len(v) for v in meter._lasting_kept if v.__class__ is not range)
    if _PINNED_SIZE[0] + size > MAX_PINNED_ITEMS:  # libraries reloaded many times: start over
        _PINNED.clear()
        _PINNED_KEPT.clear()
        _PINNED_SIZE[0] = 0
    _PINNED_KEPT.extend(meter._lasting_kept)  # alive before its entry exists
    _PINNED.update(meter._lasting)
    _PINNED_SIZE[0] += size


class TooDeep(TooBig):
    """A value nested more than MAX_DEPTH levels deep."""


def _too_deep() -> TooDeep:
    return TooDeep(f"a value nested more than {MAX_DEPTH} levels deep is not allowed (flatten it, or keep "
                   "a list of the parts)")


def _too_many() -> TooBig:
    return TooBig(f"a run may build at most {MAX_MEMO} containers (small flat lists and tuples aside)")


def _too_wide() -> TooBig:
    return TooBig(f"this tuple stands for over {MAX_HASH_WALK} items (tuples inside count each time they "
                  "appear): hashing it would walk them all")


def _items(value: Any) -> Any:
    """What a container holds: items, or a mapping's keys and values (keys may be nested tuples)."""
    cls = value.__class__
    if cls is dict or cls is MappingProxyType:
        return itertools.chain(value, value.values())
    if cls is JSONObject or cls is JSONArray:
        raw = value._data
        return raw.values() if isinstance(raw, dict) else raw
    if cls is range:
        return ()
    return value


class Nesting:
    """The depth meter of one interpreter.

    An entry is an int, `depth + (hash walk << 8)` (the hash walk of a tuple; 0 for the others),
    keyed by id; what it measures is kept alive in a list beside it, so the id cannot be reused by
    another object meanwhile. Ints and a list append: no tuple per entry for the collector to track.
    """

    __slots__ = ("_memo", "_kept", "_lasting", "_lasting_kept", "_holders")

    def __init__(self) -> None:
        self._memo: dict[int, int] = {}
        self._kept: list[Any] = []
        self._lasting: dict[int, int] = {}
        self._lasting_kept: list[Any] = []
        #: id of a container whose depth can change -> the containers holding it, by id
        self._holders: dict[int, dict[int, Any]] = {}

    def reset(self) -> None:
        """At the start and at the end of a run: let go of everything the run made."""
        if self._memo:
            self._memo = {}
            self._kept = []
        if self._holders:
            self._holders = {}
        if self._lasting:
            self._lasting = {}
            self._lasting_kept = []

    def _known(self, key: int) -> int | None:
        """The remembered entry (depth, and hash walk << 8) of the container with id `key`: this run's,
        a read-only one's of this run, or a pinned library value's; None when never measured."""
        known = self._memo.get(key)
        if known is None:
            known = self._lasting.get(key)
            if known is None:
                known = _PINNED.get(key)
        return known

    def depth(self, value: Any) -> int:
        if value.__class__ not in CONTAINERS:
            return 0
        known = self._known(id(value))
        if known is None:
            known = self._walk(value)
        return known & 255

    def made(self, value: Any) -> Any:
        """A container just made (or handed back by a call): measured, remembered, returned.

        The hot path: its items are scalars or containers measured before, so its depth is one look
        at each item; only a container never seen (from event data, a library, a C call) is walked."""
        cls = value.__class__
        if cls not in CONTAINERS:
            return value
        key = id(value)
        memo, lasting = self._memo, self._lasting
        if key in memo or key in lasting or key in _PINNED:
            return value  # measured before, and kept up to date by inserted() since
        if (cls is list or cls is tuple) and len(value) <= _SMALL and CONTAINERS.isdisjoint(map(type, value)):
            return value  # small and flat, one level deep: looking again is as cheap as remembering
        if (cls is dict and len(value) <= _SMALL and CONTAINERS.isdisjoint(map(type, value.values()))
                and CONTAINERS.isdisjoint(map(type, value))):
            return value
        is_tuple = cls is tuple
        deepest = 0
        walk = len(value) if is_tuple else 0
        fixed = cls in _FIXED
        for item in (value if cls is list or is_tuple or cls is set else _items(value)):
            icls = item.__class__
            if icls not in CONTAINERS:
                continue
            iid = id(item)
            known = self._known(iid)
            if known is None or iid not in memo:
                if known is None:
                    if (icls is list or icls is tuple) and len(item) <= _SMALL and CONTAINERS.isdisjoint(map(type, item)):
                        known = 1 + (len(item) << 8 if icls is tuple else 0)  # small and flat
                    else:  # something never measured under it: the full walk
                        self._walk(value)
                        return value
                if icls is not tuple:
                    fixed = False
                    self._holders.setdefault(iid, {})[key] = value
            else:
                fixed = False
                self._holders.setdefault(iid, {})[key] = value
            if known & 255 > deepest:
                deepest = known & 255
            if is_tuple and icls is tuple:
                walk += known >> 8
        if deepest >= MAX_DEPTH:
            raise _too_deep()
        if walk > MAX_HASH_WALK:
            raise _too_wide()
        if fixed:
            self._last(key, value, deepest + 1 + (walk << 8))
        else:
            if len(memo) > MAX_MEMO:
                raise _too_many()
            memo[key] = deepest + 1 + (walk << 8)
            self._kept.append(value)
        return value

    def inserted(self, container: Any, item: Any, level: int = 1) -> None:
        """`item` went into `container` (append, d[k] = v, add, ...; level 0 when its items went in:
        extend, update). Raises TooDeep when the container, or one holding it, is now too deep."""
        known = self._memo.get(id(container))
        if known is None:  # measured now, with the item in it (and linked to what it holds)
            depth = self._walk(container) & 255
            for holder in list(self._holders.get(id(container), {}).values()):
                self._deepen(holder, depth + 1)
            return
        if item.__class__ not in CONTAINERS:
            return
        if level:
            self._link(item, container)
        else:  # its items went in: they are held now, not it
            for part in _items(item):
                if part.__class__ in CONTAINERS:
                    self._link(part, container)
        depth = self.depth(item) + level
        if depth > known & 255:
            self._deepen(container, depth)

    def _last(self, key: int, value: Any, entry: int) -> None:
        if len(self._lasting) > MAX_MEMO:
            raise _too_many()
        self._lasting[key] = entry
        self._lasting_kept.append(value)

    def _link(self, item: Any, holder: Any) -> None:
        """Remember that `holder` holds `item`, when `item`'s depth can still change."""
        if id(item) not in self._lasting and id(item) not in _PINNED:
            self._holders.setdefault(id(item), {})[id(holder)] = holder

    def _deepen(self, container: Any, depth: int) -> None:
        """`container` is now `depth` deep: so are the containers holding it one more, and so on up."""
        memo, holders = self._memo, self._holders
        todo = [(container, depth)]
        while todo:
            value, depth = todo.pop()
            if depth > MAX_DEPTH:
                raise _too_deep()
            known = self._known(id(value))
            if known is None:  # not remembered (small and flat): measure it
                known = self._walk(value)
            if known & 255 >= depth:
                continue
            memo[id(value)] = depth + (known >> 8 << 8)
            todo.extend((holder, depth + 1) for holder in holders.get(id(value), {}).values())

    def _walk(self, root: Any) -> int:
        """Depth (and, for tuples, hash walk) of a container not measured before, iteratively; each
        container under it is measured once (shared parts are looked up, not walked again)."""
        memo, holders = self._memo, self._holders
        # frame: [container, its items, deepest item, all items fixed, hash walk]
        entry: int
        stack: list[list[Any]] = [[root, iter(_items(root)), 0, root.__class__ in _FIXED,
                                   len(root) if root.__class__ is tuple else 0]]
        while True:
            frame = stack[-1]
            is_tuple = frame[0].__class__ is tuple
            for item in frame[1]:
                cls = item.__class__
                if cls not in CONTAINERS:
                    continue
                iid = id(item)
                known = self._known(iid)
                if known is None or iid in memo:  # its depth may still change: link it to its holder
                    holders.setdefault(iid, {})[id(frame[0])] = frame[0]
                if known is None:
                    if len(stack) >= MAX_DEPTH:
                        raise _too_deep()
                    stack.append([item, iter(_items(item)), 0, cls in _FIXED, len(item) if cls is tuple else 0])
                    break
                if known & 255 > frame[2]:
                    frame[2] = known & 255
                if iid in memo:
                    frame[3] = False
                if is_tuple and cls is tuple:
                    frame[4] += known >> 8
            else:
                stack.pop()
                depth = frame[2] + 1
                if depth > MAX_DEPTH:
                    raise _too_deep()
                if frame[4] > MAX_HASH_WALK:
                    raise _too_wide()
                entry = depth + int(frame[4] << 8)
                if frame[3]:
                    self._last(id(frame[0]), frame[0], entry)
                else:
                    if len(memo) > MAX_MEMO:
                        raise _too_many()
                    memo[id(frame[0])] = entry
                    self._kept.append(frame[0])
                if not stack:
                    return entry
                parent = stack[-1]
                if depth > parent[2]:
                    parent[2] = depth
                if not frame[3]:
                    parent[3] = False
                if frame[0].__class__ is tuple and parent[0].__class__ is tuple:
                    parent[4] += frame[4]
