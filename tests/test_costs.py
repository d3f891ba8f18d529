"""What one C call may cost (issue 9, second audit): calls a builtin makes back into a rule's
function, comparisons of containers holding long texts and big numbers, hashing of big keys, and the
methods that put values into a container (the depth bound's insert table).

Each test enumerates: every builtin, helper and method a rule can reach with a probe function in
every argument position; every comparing operator and call over every costly shape of value; every
bulk-hashing call over every kind of costly key; every method of every mutable container.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hookrules.lang.boundary import INSERTS as _INSERTS
from hookrules.lang.values import MUTABLE

from .test_values import RECEIVERS, Runner, public_attributes

# -- F2: a function handed to a builtin is called back through the interpreter's checks ---------------

_PROBE_CALLS = ["{t}(P)", "{t}(L, P)", "{t}(P, L)", "{t}(P, P)", "{t}(L, key=P)", "{t}(key=P)", "{t}(L, L, key=P)",
                "{t}(L, P, key=P)"]


def test_no_builtin_calls_a_function_back_past_the_checks() -> None:
    """Result: every builtin, helper and method a rule can reach, given a probe function in every
    argument position and as key=, calls it (if at all) only through the interpreter's checked call
    path (the frame that calls the probe is _call_host with func=probe), never from C, where it would
    run past the step budget, the deadline and the result checks (`sorted(l, key=dict)`)."""
    direct: list[str] = []
    checked = [0]
    current = [""]

    def probe(*args: Any, **kwargs: Any) -> int:
        caller = sys._getframe(1)
        if caller.f_code.co_name == "_call_host" and caller.f_locals.get("func") is probe:
            checked[0] += 1
        else:
            direct.append(f"{current[0]} (called from {caller.f_code.co_name})")
        return 0

    runner = Runner()
    targets: list[tuple[str, Any]] = []
    for name, receiver in RECEIVERS.items():
        if callable(receiver) and not isinstance(receiver, type):
            targets.append(("o", receiver))
        for attr in public_attributes(receiver):
            ok, value = runner(f"o.{attr}", o=receiver)
            if ok and callable(value):
                targets.append((f"o.{attr}", receiver))
    assert len(targets) > 200
    for target, receiver in targets:
        for shape in _PROBE_CALLS:
            current[0] = f"{shape.format(t=target)} with o={receiver!r:.40}"
            runner(shape.format(t=target), o=receiver.copy() if isinstance(receiver, (list, dict, set)) else receiver,
                   P=probe, L=[[2], [1]])
    assert not direct, "\n".join(direct[:20])
    assert checked[0] >= 10  # sorted/min/max/list.sort did call it, the checked way


def test_a_builtin_as_a_key_meets_the_same_guards_as_a_call() -> None:
    """Result: `key=dict` over pairs built to collide, `key=sorted` over costly lists, `key=o.update`
    are refused by the guard a direct call meets; ordinary keys give Python's answers."""
    m = 2**61 - 1
    colliding = [(k, 0) for k in range(0, 2000 * m, m)]
    runner = Runner()
    for call in ["sorted(L, key=dict)", "max(L, key=dict)", "min(L, key=dict)", "L.sort(key=dict)",
                 "list.sort(L, key=dict)", "sorted(L, key=d.update)", "max(L, key=s.union)"]:
        ok, value = runner(call, L=[colliding] * 3, d={}, s={1})
        assert not ok and "share one hash value" in value, (call, value)
    text = "x" * 65_536
    for call in ["sorted(L, key=sorted)", "max(L, key=sorted)", "sorted(L, key=list)"]:
        ok, value = runner(call, L=[[text + "a"] * 300, [text + "b"] * 300])
        assert not ok and "walk over" in value, (call, value)
    for expression, expected in [("sorted(L, key=len)", ["a", "bb", "ccc"]), ("max(L, key=len)", "ccc"),
                                 ("min(L, key=d.get)", "bb"), ("sorted(L, key=d.get, reverse=True)", ["a", "ccc", "bb"]),
                                 ("min([], key=len, default=7)", 7), ("max('a', 'bb', key=len)", "bb"),
                                 ("sorted([(2, 'b'), (1, 'z'), (2, 'a')], key=first)", [(1, "z"), (2, "b"), (2, "a")])]:
        ok, value = runner(expression, L=["bb", "ccc", "a"], d={"a": 3, "bb": 1, "ccc": 2}, first=lambda p: p[0])
        assert ok and value == expected, (expression, value)
    ok, value = runner("[L.sort(key=len), L][1]", L=["bb", "ccc", "a"])
    assert ok and value == ["a", "bb", "ccc"], value


# -- F1: comparisons charge every text, bytes and number inside by its size ----------------------------


def _costly() -> dict[str, Any]:
    """Values cheap to hold (one object referred to many times) that walk far past MAX_WALK in C."""
    text = "x" * 65_536
    big = 2**60_000 + 1
    return {
        "list-of-long-str": [text + "a"] * 300, "tuple-of-long-str": (text + "a",) * 300,
        "list-of-long-bytes": [text.encode() + b"a"] * 300, "list-of-big-int": [big] * 1_000,
        "nested-lists-of-long-str": [[text + "a"] * 30] * 10, "tuple-of-big-int": (big,) * 1_000,
        "list-of-wide-str": [("\U0001d11e" * 65_536)] * 300,
    }


COSTLY = _costly()
_COMPARING = ["X == Y", "X != Y", "X < Y", "X <= Y", "X > Y", "X >= Y", "Z in X", "Z not in X", "X.count(Z)",
              "X.index(Z)", "max(X, Y)", "min(X, Y)", "sorted([X, Y])", "sorted(X)", "max(X)", "min(X)",
              "sorted([X, Y], key=same)", "max([X, Y], key=same)", "[X] == [Y]", "(X, 1) < (Y, 2)"]


@pytest.mark.parametrize("shape", sorted(COSTLY))
def test_every_comparing_call_charges_what_is_inside(shape: str) -> None:
    """Result: every operator and call that compares many items in C is refused before it starts when
    the items (texts, bytes, big numbers, inside lists) would walk past the budget by their size."""
    runner = Runner()
    value = COSTLY[shape]
    copy = type(value)(list(value)) if isinstance(value, list) else tuple(value)
    probe = next(iter(value))
    other = probe[:-1] + probe[-1:] if not isinstance(probe, int) else probe + 0
    for expression in _COMPARING + (["X.remove(Z)", "X.sort()", "list.sort(X)"] if isinstance(value, list) else []):
        ok, result = runner(expression, X=value, Y=copy, Z=other, same=lambda v: v)
        assert not ok and "walk over" in result, (expression, result)
    ok, result = runner("sorted(X) == sorted(Y) and 'a' in X and max(X) == 3", X=[3, "a"][:1] * 3 + [1], Y=[1, 3, 3, 3])
    assert ok, result


# -- F3: hashing big keys is charged ------------------------------------------------------------------

BULK = ["dict.fromkeys(L)", "dict(zip(L, L))", "s.union(L)", "s.union(L, L, L, L)", "s.update(L)", "s.issubset(L)",
        "d.update(zip(L, L))", "s.intersection(L)", "s.symmetric_difference(L)", "s.isdisjoint(L)",
        "s.symmetric_difference_update(L)", "s.difference_update(L)"]
_BIG_KEYS = {"big-int": lambda: [2**99_990 + 12345] * 4_000, "long-str": lambda: ["y" * 65_536] * 400,
             "long-bytes": lambda: [b"y" * 65_536] * 400, "tuple-of-big-int": lambda: [(2**99_990, 1)] * 4_000}


@pytest.mark.parametrize("expression", BULK)
@pytest.mark.parametrize("keys", sorted(_BIG_KEYS))
def test_bulk_hashing_charges_each_key_by_its_size(expression: str, keys: str) -> None:
    """Result: a call that hashes a big number or long text thousands of times (an int's hash is not
    cached and walks all its digits) is refused before it starts; ordinary keys work."""
    runner = Runner()
    ok, value = runner(expression, L=_BIG_KEYS[keys](), s={1}, d={})
    assert not ok and "walk over" in value, (expression, value)
    ok, value = runner(expression, L=[2**70 + i for i in range(3000)] + ["k" * 100] * 50, s={1}, d={})
    assert ok, value


# -- F5: every method that puts a value into a container is in the insert table -----------------------

_MARKER = ("marker",)


def _holds(container: Any) -> bool:
    items = list(container) + (list(container.values()) if isinstance(container, dict) else [])
    return any(x is _MARKER for x in items)


@pytest.mark.parametrize("cls", sorted(MUTABLE, key=lambda c: c.__name__))
def test_every_inserting_method_is_in_the_insert_table(cls: type) -> None:
    """Result: each method of list, dict and set is called with the marker passed directly and inside
    a list, a dict and a list of pairs; one that leaves the marker in the container must be in the
    table the depth bound reads (boundary.INSERTS), at the level it went in at (1: as itself, 0: its
    items), or values could nest past the bound through it (set.symmetric_difference_update)."""
    samples = {list: lambda: [1, 2], dict: lambda: {1: 2}, set: lambda: {1, 2}}
    found: dict[str, int] = {}
    for name in public_attributes(samples[cls]()):
        for args, level in [((_MARKER,), 1), ((0, _MARKER), 1), ((_MARKER, _MARKER), 1), (([_MARKER],), 0),
                            (({_MARKER: 1},), 0), (([(_MARKER, 1)],), 0), (({_MARKER},), 0)]:
            container = samples[cls]()
            try:
                getattr(container, name)(*args)
            except Exception:  # noqa: BLE001 - not a call this method takes
                continue
            if _holds(container):
                found[name] = max(found.get(name, 0), level)
    assert found, "the enumeration found no inserting method at all"
    missing = {n: lvl for n, lvl in found.items() if n not in _INSERTS or _INSERTS[n] < lvl}
    assert not missing, f"methods that put values in, missing from boundary.INSERTS: {missing}"


@pytest.mark.parametrize("put", ["s.symmetric_difference_update([t])", "s.update([t])", "s.add(t)",
                                 "s.symmetric_difference_update({t})"])
def test_a_set_grown_by_any_inserting_method_is_as_deep_as_what_went_in(put: str) -> None:
    """Result: the audit's instance and its siblings: a tuple nested near the bound put into a set
    (by symmetric_difference_update as by add), the set then wrapped in lists, is refused at the bound
    instead of being measured as one level deep."""
    from hookrules.lang.nesting import MAX_DEPTH

    src = (f"0\nt = 0\nfor i in range({MAX_DEPTH - 3}):\n    t = (t,)\ns = {{0}}\n{put}\nl = [s]\n"
           f"for i in range({MAX_DEPTH - 5}):\n    l = [l]\n")
    ok, value = Runner()(src)
    assert not ok and "deep" in value, value
    ok, value = Runner()(src.replace(f"range({MAX_DEPTH - 5})", "range(1)"))
    assert ok, value


# -- F4: what one run allocates in all is bounded ------------------------------------------------------

_MAKERS = ["s + str(i)", "f'{s}{i}'", "s * 1 + 'x'", "'%s%d' % (s, i)", "s.replace('a', 'b', i)", "'-'.join([s, 'x'])", "s[i:]", "L[i:]", "D | {i: 0}",
           "s.upper()", "s.encode()", "[0] * 50000", "list(range(50000))",
           "dict.fromkeys(L[:3000])", "(2**9999) ** 10 + i", "repr(s)", "str(b)",
           "sorted(L)", "L + L"]


@pytest.mark.parametrize("make", _MAKERS)
def test_a_run_cannot_allocate_past_its_budget(make: str) -> None:
    """Result: a loop that keeps what every step makes (each step within the size limits) fails as a
    rule error when the run's values pass MAX_ALLOCATION, whichever operator, call, f-string or
    comprehension made them, long before the step budget or deadline; the same loop kept short works."""
    from hookrules.lang.allocation import MAX_ALLOCATION

    runner = Runner()
    names = {"s": "a" * 200_000, "L": list(range(30_000)), "D": {j: 0 for j in range(5_000)}, "b": b"x" * 100_000}
    ok, value = runner(f"[{make} for i in range(5000)]", **names)
    assert not ok and f"{MAX_ALLOCATION // 2**20} MiB" in value, (make, value[:200])
    ok, value = runner(f"[{make} for i in range(2)]", **names)
    assert ok, (make, value)
