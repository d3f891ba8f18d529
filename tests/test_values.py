"""The closed set of values (lang/values): everything a rule can reach, called on sample values,
gives a value inside the set, and what comes from a library is frozen.

The enumeration runs each call through the real interpreter (on_attribute, on_call), so it checks
the boundary itself, not a copy of its rules: every builtin and helper a rule is given, and every
public attribute and method of every kind of value a rule can hold, with none, one and two sample
arguments. A call that raises (wrong arguments, a refused value) is fine; one that returns must
return something in the set.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import jwt
import pytest
from hookrules.datafiles import DataNamespace
from hookrules.decisions import Deny
from hookrules.engine import Engine
from hookrules.events import Client, Conn, JSONArray, JSONObject, Message, SubOpts, TopicFilter, json_view
from hookrules.lang.builtins import DECISIONS, HELPERS, SAFE_BUILTINS, make_log
from hookrules.lang.checker import DENIED_ATTR_PREFIXES, DENIED_ATTRS
from hookrules.lang.freeze import _freeze_value
from hookrules.lang.interp import Decided, RuleAbort, RuleFunction, RuleInterpreter
from hookrules.lang.nesting import MAX_DEPTH
from hookrules.lang.values import CONSTRUCTORS, CONTAINERS, HELD, MAPPINGS, MUTABLE
from hookrules.ruleset import scan

from .test_sandbox import LIB, authz_event, scan_rules, write

# -- what a value in the set is ----------------------------------------------------------------------


def problems(value: Any, frozen: bool = False) -> list[str]:
    """Why `value` is not in the closed set (or, with `frozen`, not read-only all the way down):
    empty when it is. Walks containers, keys included, at most MAX_DEPTH levels."""
    found: list[str] = []
    stack = [(value, 0, "value")]
    seen: set[int] = set()
    while stack:
        v, depth, where = stack.pop()
        cls = v.__class__
        if cls not in HELD or (cls is type and v not in CONSTRUCTORS):
            found.append(f"{where} is a {cls.__name__}")
            continue
        if frozen and cls in MUTABLE:
            found.append(f"{where} is a mutable {cls.__name__}")
        if cls not in CONTAINERS or id(v) in seen or cls in (JSONObject, JSONArray, range):
            continue
        seen.add(id(v))
        if depth >= MAX_DEPTH:
            found.append(f"{where} is nested more than {MAX_DEPTH} deep")
            continue
        parts = itertools.chain(v.keys(), v.values()) if cls in MAPPINGS else v
        stack.extend((p, depth + 1, f"{where}[{i}]") for i, p in enumerate(parts))
    return found


def reachable(value: Any) -> set[int]:
    """Ids of every container under `value` (itself included)."""
    out: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v.__class__ in CONTAINERS and id(v) not in out and v.__class__ not in (JSONObject, JSONArray, range):
            out.add(id(v))
            stack.extend(itertools.chain(v.keys(), v.values()) if v.__class__ in MAPPINGS else v)
    return out


# -- sample values of every kind ----------------------------------------------------------------------

ARGS: list[Any] = [None, True, 0, 2, -1, 2**70, 1.5, math.inf, "a/b", "", "é", b"xy", b"", [1, "a"], [], (1, "a"), (),
                   {"k": 1}, {}, {1, 2}, range(3), MappingProxyType({"k": (1,)}), frozenset({1}), ["a", "b"],
                   (("k", 1),)]
#: a smaller set for two arguments (every pair is run)
PAIRS: list[Any] = [None, 0, 2, "a", b"a", [1], ("k", 1), {"k": 1}, {1}]


def receivers() -> dict[str, Any]:
    """One value of every kind a rule can hold, by a name for the test id."""
    msg = Message(id="m", from_="c", topic="t/a", payload=b"p", qos=1, headers=MappingProxyType({"k": "v"}),
                  user_properties=MappingProxyType({"u": "1"}))
    out: dict[str, Any] = {
        "none": None, "bool": True, "int": 7, "bigint": 2**70, "float": 2.5, "str": "a/b c", "bytes": b"a/b c",
        "list": [3, "x", (1, 2)], "tuple": (3, "x", [1]), "dict": {"k": [1], 2: "v"}, "set": {1, "a"},
        "range": range(2, 9, 3), "frozenset": frozenset({1, "a"}), "mappingproxy": MappingProxyType({"k": (1,)}),
        "json-object": json_view({"a": [1, {"b": 2}], "c": "d"}), "json-array": json_view([1, {"b": [2]}]),
        "client": Client(id="c", username="u", password="pw"), "conn": Conn(id="c"), "message": msg,
        "subopts": SubOpts(qos=1), "topic-filter": TopicFilter("a/#", 1),
        "data": DataNamespace({"users": MappingProxyType({"alice": ("a",)})}),
    }
    out.update({f"builtin-{name}": fn for name, fn in SAFE_BUILTINS.items() if callable(fn)})
    out.update({f"helper-{name}": fn for name, fn in HELPERS.items()})
    return out


class Runner:
    """Runs `r = <expression>` in a RuleInterpreter over a symtable of builtins and the samples."""

    def __init__(self) -> None:
        self.interp = RuleInterpreter()
        self.base = {**SAFE_BUILTINS, **HELPERS, "log": make_log("rules/x.star")}
        self.trees: dict[str, ast.Module] = {}

    def __call__(self, expression: str, **names: Any) -> tuple[bool, Any]:
        """(True, the value) or (False, the exception's text)."""
        tree = self.trees.get(expression)
        if tree is None:
            tree = self.trees[expression] = ast.parse(f"r = {expression}\n")
            self.interp.prepare(tree, "rules/x.star")
        symtable = {**self.base, **names}
        try:
            self.interp.execute(tree, symtable, 10_000, time.monotonic() + 2.0)
        except (Exception, Decided, RuleAbort) as exc:  # noqa: BLE001 - a refused call is a pass
            return False, f"{type(exc).__name__}: {exc}"
        return True, symtable["r"]


def public_attributes(value: Any) -> list[str]:
    return sorted(a for a in dir(value) if not a.startswith("_") and a not in DENIED_ATTRS
                  and not a.startswith(DENIED_ATTR_PREFIXES))


def _valid_calls() -> dict[str, list[tuple[Any, ...]]]:
    """Arguments the helpers that check passwords accept (the samples never make a valid hash)."""
    salt = bcrypt.gensalt(4)
    return {
        "helper-bcrypt_check": [("pw", bcrypt.hashpw(b"pw", salt).decode())],
        "helper-pbkdf2_check": [("pw", hashlib.pbkdf2_hmac("sha256", b"pw", b"s", 1).hex(), "s", 1)],
        "helper-hash_check": [("pw", hashlib.sha256(b"pw").hexdigest())],
        "helper-topic_fill": [("u/%u/#", "alice")],
        "helper-json_decode": [('{"a": [1, {"b": null}]}',)],
        "helper-regex_search": [("b+", "abbc")],
        "helper-jwt_decode": [(jwt.encode({"sub": "a", "l": [1, {"m": None}]}, "k" * 32, algorithm="HS256"),
                               "k" * 32, ["HS256"]),
                              ("not-a-token", "k" * 32, ["HS256"])],
    }


VALID_CALLS = _valid_calls()


def calls(runner: Runner, target: str, names: dict[str, Any], extra: list[tuple[Any, ...]] = ()) -> Iterator[tuple[str, Any]]:  # type: ignore[assignment]
    """Every result of calling `target` with no, one and two sample arguments: (what was run, result)."""
    for args in itertools.chain([()], ((a,) for a in ARGS), itertools.product(PAIRS, PAIRS), extra):
        arg_names = {f"a{i}": a for i, a in enumerate(args)}
        ok, result = runner(f"{target}({', '.join(arg_names)})", **names, **arg_names)
        if ok:
            yield f"{target}{args!r}"[:200], result


RECEIVERS = receivers()


@pytest.mark.parametrize("name", sorted(RECEIVERS))
def test_every_method_and_attribute_gives_a_value_in_the_set(name: str) -> None:
    """Result: every attribute read, and every call of it that returns, lands in the closed set."""
    runner = Runner()
    receiver = RECEIVERS[name]
    assert not problems(receiver), "the sample itself is outside the set"
    bad: list[str] = []
    checked = 0
    targets = ["o"] if callable(receiver) and not isinstance(receiver, type) else []
    for attr in public_attributes(receiver):
        ok, value = runner(f"o.{attr}", o=receiver)
        if not ok:
            continue
        checked += 1
        bad += [f"o.{attr}: {p}" for p in problems(value)]
        if callable(value):
            targets.append(f"o.{attr}")
    for target in targets:
        for what, result in calls(runner, target, {"o": receiver}, VALID_CALLS.get(name, []) if target == "o" else []):
            checked += 1
            bad += [f"{what}: {p}" for p in problems(result)]
    assert checked or receiver is None
    assert not bad, "\n".join(bad[:30])


def _function_values() -> dict[str, Any]:
    """Every function-class value a rule can reach: the builtins and helpers, and every method or
    callable attribute of every sample receiver (the guarded str/bytes methods among them)."""
    runner = Runner()
    out: dict[str, Any] = {}
    for name, receiver in RECEIVERS.items():
        if callable(receiver):
            out[name] = receiver
        for attr in public_attributes(receiver):
            ok, value = runner(f"o.{attr}", o=receiver)
            if ok and callable(value):
                out[f"{name}.{attr}"] = value
    return out


FUNCTION_VALUES = _function_values()


def test_no_function_value_exposes_state_through_an_attribute() -> None:
    """Result: every public attribute a rule can read on any function value it can reach is refused,
    or is a number, a string or another function: never a dict, list, the bound object or anything
    a later run could see changed (functools.partial's .keywords carried passwords between clients)."""
    runner = Runner()
    assert any(".replace" in n for n in FUNCTION_VALUES) and any(".join" in n for n in FUNCTION_VALUES)
    bad: list[str] = []
    for name, fn in sorted(FUNCTION_VALUES.items(), key=lambda kv: kv[0]):
        for attr in sorted(set(dir(fn)) | {"func", "args", "keywords", "__self__", "__func__", "__closure__"}):
            ok, value = runner(f"f.{attr}", f=fn)
            if not ok:
                continue
            if value.__class__ not in (type(None), bool, int, float, str, bytes) and not (
                    callable(value) and not problems(value)):
                bad.append(f"{name}.{attr} is a {type(value).__name__}")
    assert not bad, "\n".join(bad[:30])


def test_the_enumeration_covers_every_name_a_rule_is_given() -> None:
    """Every builtin and helper (decisions end the run and return nothing) is a receiver above."""
    given = set(SAFE_BUILTINS) | set(HELPERS)
    covered = {n.split("-", 1)[1] for n in RECEIVERS if n.startswith(("builtin-", "helper-"))}
    assert given - {"True", "False", "None"} <= covered
    assert set(DECISIONS) == {"allow", "deny", "ignore", "rewrite", "drop"}


def test_views_and_iterators_become_lists() -> None:
    runner = Runner()
    for expression in ["d.keys()", "d.values()", "d.items()", "m.keys()", "m.values()", "m.items()", "j.keys()",
                       "j.values()", "j.items()", "enumerate(l)", "zip(l, l)", "reversed(l)", "sorted(d)"]:
        ok, value = runner(expression, d={"a": [1]}, m=MappingProxyType({"a": (1,)}), j=json_view({"a": [1]}),
                           l=[[1], [2]])
        assert ok and value.__class__ is list, (expression, value)
    ok, value = runner("d.values()", d={"a": [1]})
    value[0].append(2)  # the items are the dict's own (as in Python); the list is new
    ok, again = runner("d.values()", d={"a": [1]})
    assert again is not value


# -- library values: frozen inside the set ------------------------------------------------------------

def _library_values() -> dict[str, Any]:
    interp = RuleInterpreter()
    tree = ast.parse("def make():\n    box = []\n    def get():\n        return box\n    return get\n")
    interp.prepare(tree, "lib/x.star")
    env: dict[str, Any] = {}
    interp.execute(tree, env, 1000, time.monotonic() + 1)
    fn = env["make"]()
    assert isinstance(fn, RuleFunction)
    shared = [1, [2]]
    return {
        "dict-values": {"users": []}.values(), "dict-items": {"k": [1]}.items(), "dict-keys": {(1, (2,)): 0}.keys(),
        "closure-as-key": {fn: "x"}, "tuple-key-with-closure": {(1, fn): "x"}, "nested-views": [{"a": [[]]}.values()],
        "set-of-tuples": {(1, 2), (3, (4,))}, "shared-parts": (shared, shared), "mapping-of-lists": {"a": [[1], {2}]},
        "range": range(3), "text": "abc",
    }


LIBRARY_VALUES = _library_values()


@pytest.mark.parametrize("name", sorted(LIBRARY_VALUES))
def test_library_values_freeze_inside_the_set(name: str) -> None:
    """Result: the frozen value is in the set and read-only all the way down (keys too), and every
    method of it gives values in the set."""
    frozen = _freeze_value(LIBRARY_VALUES[name], set(), {})
    assert not problems(frozen, frozen=True)
    runner = Runner()
    bad: list[str] = []
    for attr in public_attributes(frozen):
        ok, method = runner(f"o.{attr}", o=frozen)
        if not ok or not callable(method):
            continue
        for what, result in calls(runner, f"o.{attr}", {"o": frozen}):
            bad += [f"{what}: {p}" for p in problems(result)]
    assert not bad, "\n".join(bad[:30])


def _mutable_ids(value: Any) -> set[int]:
    out: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v.__class__ in CONTAINERS and v.__class__ not in (JSONObject, JSONArray, range):
            if v.__class__ in MUTABLE:
                if id(v) in out:
                    continue
                out.add(id(v))
            stack.extend(itertools.chain(v.keys(), v.values()) if v.__class__ in MAPPINGS else v)
    return out


@pytest.mark.parametrize("name", sorted(LIBRARY_VALUES))
def test_what_a_library_value_gives_is_new_each_time(name: str) -> None:
    """Result: a method of a frozen value that gives a list, dict or set gives a new one on each call
    (keys(), values(), items(), copy(), union(), ...): the next run cannot see what this one put in."""
    frozen = _freeze_value(LIBRARY_VALUES[name], set(), {})
    runner = Runner()
    for attr in public_attributes(frozen):
        ok, first = runner(f"o.{attr}()", o=frozen)
        if not ok:
            continue
        ok, second = runner(f"o.{attr}()", o=frozen)
        assert ok
        assert not _mutable_ids(first) & _mutable_ids(second), f"o.{attr}() gives the same mutable value twice"


def test_freezing_refuses_what_has_no_read_only_form() -> None:
    from hookrules.lang.freeze import _MutableMethod

    for value in ([].append, {}.setdefault, {1}.add, bytearray(b"x"), memoryview(b"x"), object()):
        with pytest.raises(_MutableMethod):
            _freeze_value(value, set(), {})


# (id, library source, how the rule reaches a list in it): each a way a library could hand every run
# the same mutable list; the audit found the first two
LEAKS: list[tuple[str, str, str]] = [
    ("dict-values", 'SEEN = {"users": []}.values()\n', "[b for b in SEEN][0]"),
    ("closure-as-dict-key", "def make():\n    box = []\n    def get():\n        return box\n    return get\n"
     'TABLE = {make(): "x"}\n', "[f for f in TABLE][0]()"),
    ("dict-items", 'SEEN = {"users": []}.items()\n', "[p for p in SEEN][0][1]"),
    ("dict-keys-of-closures", "def make():\n    box = []\n    def get():\n        return box\n    return get\n"
     "SEEN = {(1, make()): 0}.keys()\n", "[k for k in SEEN][0][1]()"),
    ("view-in-a-list", 'SEEN = [{"users": []}.values()]\n', "[b for b in SEEN[0]][0]"),
    ("view-in-a-closure", "def make():\n    v = {'a': []}.values()\n    def get():\n        return v\n"
     "    return get\nget = make()\nSEEN = 0\n", "[b for b in get()][0]"),
    ("enumerate-result", 'SEEN = enumerate([[]])\n', "SEEN[0][1]"),
    ("zip-result", 'SEEN = zip([[]])\n', "SEEN[0][0]"),
    ("reversed-result", 'SEEN = reversed([[]])\n', "SEEN[0]"),
    ("sorted-keys-of-a-set-of-tuples", "SEEN = sorted({(1, 2)})\nBOX = [[]]\n", "BOX[0]"),
    ("method-returning-a-view", 'T = {"a": []}\nget_values = T.values\nSEEN = 0\n', "get_values()[0]"),
    ("keywords-of-a-guarded-method", 'R = "x".replace\nSEEN = 0\n', "[R.keywords.setdefault('k', [])][0]"),
    ("args-of-a-guarded-join", 'J = ",".join\nSEEN = 0\n', "[J.args, J.func][0]"),
    ("values-of-a-mapping-of-closures", "def make():\n    box = []\n    def get():\n        return box\n    return get\n"
     "SEEN = {'g': make()}.values()\n", "[g for g in SEEN][0]()"),
]


@pytest.mark.parametrize(("lib", "reach"), [pytest.param(c[1], c[2], id=c[0]) for c in LEAKS])
def test_no_library_value_carries_state_between_clients(tmp_path: Path, lib: str, reach: str) -> None:
    """Result: a library either does not load, or the list a rule reaches in it cannot be appended to;
    bob never sees alice's password."""
    names = sorted({n for n in ("SEEN", "TABLE", "BOX", "get", "get_values", "R", "J") if f"{n} =" in lib or f"def {n}" in lib})
    quoted = ", ".join(f'"{n}"' for n in names)
    write(tmp_path, {LIB: lib, "client.authorize.star": f'load("{LIB}", {quoted})\nb = {reach}\n'
                                                     'b.append(client.password)\ndeny(",".join(b))\n'})
    ruleset, outcomes = scan_rules(tmp_path)
    errors = [e.one_line() for o in outcomes.values() for e in o.errors]
    if errors:  # refused when the library loads: nothing runs
        assert ruleset.get("client.authorize") is None, errors
        return
    engine = Engine(ruleset)
    engine.decide(authz_event("alice"))
    second = engine.decide(authz_event("bob"))
    assert "alice-secret" not in repr(second), f"bob's run saw alice's password: {second!r}"
    assert second.error is not None, second


def test_library_keys_are_frozen(tmp_path: Path) -> None:
    """A closure kept as a dict key keeps its scope frozen too: its list cannot grow."""
    write(tmp_path, {LIB: "def make():\n    box = []\n    def get():\n        return box\n    return get\n"
                          'TABLE = {make(): "x"}\nKEYS = {(1, make()): 1}\n',
                     "client.authorize.star": f'load("{LIB}", "TABLE", "KEYS")\n'
                                              "a = [f for f in TABLE][0]()\nb = [k for k in KEYS][0][1]()\n"
                                              'deny(type(a) + type(b))\n'})
    ruleset, outcomes = scan_rules(tmp_path)
    assert not [e.one_line() for o in outcomes.values() for e in o.errors]
    assert Engine(ruleset).decide(authz_event("alice")).decision == Deny("tupletuple")


def test_host_freezing_reaches_keys_and_views_and_bounds_depth() -> None:
    """events.freeze (data files): keys and views are frozen too, and nesting is bounded."""
    from hookrules.events import MAX_FROZEN_DEPTH, freeze

    frozen = freeze({("k", (1,)): [1, {2}], "v": {"a": [1]}.values(), "s": {(1, 2)}})
    assert not problems(frozen, frozen=True)
    deep: Any = []
    for _ in range(MAX_FROZEN_DEPTH + 5):
        deep = [deep]
    with pytest.raises(RecursionError):
        freeze(deep)


# -- every guard covers every container of the set -----------------------------------------------------

def _big(cls: type) -> Any:
    """An instance of `cls` that stands for over guards.MAX_WALK items through shared parts."""
    row = tuple(range(1000))
    rows = [row] * 1001
    return {
        list: list(rows), tuple: tuple(rows), dict: dict(enumerate(rows)), set: {(i, row) for i in range(1001)},
        frozenset: frozenset((i, row) for i in range(1001)), MappingProxyType: MappingProxyType(dict(enumerate(rows))),
        range: None, JSONObject: json_view({str(i): list(row) for i in range(1001)}),
        JSONArray: json_view([list(row)] * 1001),
    }[cls]


@pytest.mark.parametrize("cls", sorted((c for c in CONTAINERS if c is not range), key=lambda c: c.__name__))
def test_the_text_and_walk_guards_measure_every_container(cls: type) -> None:
    """Result: str/repr/log/f-strings refuse it, and so do == and < (guards.bounded_text, check_walk)."""
    from hookrules.lang.guards import MAX_WALK, TooBig, bounded_text, check_walk, walk_size

    value = _big(cls)
    assert value.__class__ is cls
    with pytest.raises(TooBig):
        bounded_text(value, repr)
    assert walk_size(value) > MAX_WALK
    with pytest.raises(TooBig):
        check_walk(value, value, ast.Eq)
    runner = Runner()
    for expression in ("str(v)", "repr(v)", "f'{v}'", "'%s' % (v,)", "log(v)", "v == v", "[v] == [v]",
                       "json_encode(v)"):
        ok, result = runner(expression, v=value)
        assert not ok, (expression, str(result)[:100])


def test_a_record_is_measured_by_the_text_it_shows() -> None:
    from hookrules.lang.guards import TooBig, bounded_text

    big = MappingProxyType({str(i): "x" * 100 for i in range(1000)})
    with pytest.raises(TooBig):
        bounded_text(Message(user_properties=big), repr)
    assert "pw" not in bounded_text(Client(password="pw"), repr)


def test_json_encode_takes_every_json_shaped_value_of_the_set() -> None:
    """Found by the nesting tests: a webhook body's arrays (JSONArray) had no JSON form, its objects had."""
    runner = Runner()
    for value in ([1], (1,), {"a": 1}, MappingProxyType({"a": (1,)}), json_view({"a": [1, {"b": [2]}]}),
                  json_view([1, [2]])):
        ok, text = runner("json_encode(v)", v=value)
        assert ok and text.__class__ is str, (value, text)


# -- F2: nothing a run makes outlives the run -----------------------------------------------------------

# (id, source): each makes read-only containers (the kind the depth meter could keep) in another way;
# "fails" variants end in an error after making them
RUN_MADE: list[tuple[str, str]] = [
    ("topic-words-of-a-long-topic", "w = topic_words('/' * 60000)\nx = [w]\n"),
    ("tuple-of-a-list", "L = list(range(60000))\nkeep = [len(tuple(L)) for i in range(3)]\nx = [tuple(L)]\n"),
    ("nested-tuple-literals", "t = tuple(range(1000))\nx = [(t, (t, i)) for i in range(200)]\n"),
    ("zip-and-enumerate-results", "L = list(range(20000))\nx = [zip(L, L), enumerate(L)]\n"),
    ("tuple-concatenation", "t = tuple(range(30000)) + (1,)\nx = [[t]]\nx[0].append(t + t)\n"),
    ("sorted-items-of-a-dict", "d = {i: (i, str(i)) for i in range(5000)}\nx = [sorted(d.items())]\n"),
    ("made-then-failed", "t = tuple(range(60000))\nx = [t, [t]]\ny = x[5]\n"),
]


@pytest.mark.parametrize("src", [pytest.param(c[1], id=c[0]) for c in RUN_MADE])
def test_nothing_a_run_makes_outlives_it(src: str) -> None:
    """Result: after each run (ended by a decision or an error) the depth meter holds nothing, the
    library cache (nesting._PINNED) has not grown, and runs leave no memory behind (8 runs)."""
    import gc
    import tracemalloc

    from hookrules.lang import nesting
    from hookrules.decisions import Allow
    from hookrules.ruleset import Limits, RuleRuntimeError

    from .rule_helpers import compile_src

    rule = compile_src(src + "allow()\n")
    pinned = len(nesting._PINNED)

    def run() -> None:
        try:
            assert rule.run(authz_event(), Limits(timeout=5.0)) == Allow()
        except RuleRuntimeError as exc:
            assert "made-then-failed" in src or "index" in str(exc)
        meter = rule.interp.nesting
        assert not (meter._memo or meter._kept or meter._lasting or meter._lasting_kept or meter._holders)
        assert len(nesting._PINNED) == pinned

    run()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(8):
            run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"{grown} bytes left behind by 8 runs"


def test_a_library_table_is_measured_once_for_every_run(tmp_path: Path) -> None:
    """Result: the frozen tables of a library are remembered across runs (pinned at load), so a rule
    putting one in a list is not walked each run; and they still count for the depth bound."""
    from hookrules.lang import nesting

    write(tmp_path, {LIB: "TABLE = {str(i): (i, [i]) for i in range(3000)}\nDEEP = [[[[[[1]]]]]]\n",
                     "client.authorize.star": f'load("{LIB}", "TABLE", "DEEP")\nx = [TABLE]\ny = [DEEP]\nallow()\n'})
    ruleset, outcomes = scan_rules(tmp_path)
    assert not [e for o in outcomes.values() for e in o.errors]
    engine = Engine(ruleset)
    assert engine.decide(authz_event()).decision.kind == "allow"
    assert any(v.__class__ is MappingProxyType and len(v) == 3000 for v in nesting._PINNED_KEPT)
    assert nesting.Nesting().depth(next(v for v in nesting._PINNED_KEPT
                                        if v.__class__ is MappingProxyType and len(v) == 3000)) == 3


# -- F4, F5: what one C call hashes, whatever shape the keys come in ------------------------------------

_M = 2**61 - 1  # Python's int hash is n mod _M: i * _M all hash to 0


def _pairs(kind: str, n: int = 3000) -> Any:
    """n pairs whose keys (their first items) all share one hash value, as a `kind` of pair."""
    if kind == "list":
        return [[i * _M, 0] for i in range(n)]
    if kind == "tuple":
        return [(i * _M, 0) for i in range(n)]
    if kind == "range":
        return [range(i * _M, i * _M + 2) for i in range(n)]
    if kind == "json-array":  # a webhook body's array of arrays
        return json_view([[i * _M, 0] for i in range(n)])
    if kind == "dict":
        return [{i * _M: 0, -1: 0} for i in range(n)]
    if kind == "read-only-dict":
        return tuple(MappingProxyType({i * _M: 0, -1: 0}) for i in range(n))
    if kind == "list-of-json-arrays":
        return [json_view([i * _M, 0]) for i in range(n)]
    raise AssertionError(kind)


PAIR_KINDS = ["list", "tuple", "range", "json-array", "dict", "read-only-dict", "list-of-json-arrays"]


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_colliding_keys_are_refused_whatever_iterable_holds_the_pair(kind: str) -> None:
    """Result: dict(P), d.update(P) and dict.update(d, P) refuse keys chosen to collide, for every
    kind of two-item value dict() takes as a pair; a control with ordinary keys works."""
    runner = Runner()
    for expression in ["dict(P)", "d.update(P)", "dict.update(d, P)"]:
        ok, value = runner(expression, P=_pairs(kind), d={})
        assert not ok and "share one hash value" in value, (expression, value)
    assert list(dict(_pairs(kind, 10))) == [i * _M for i in range(10)]  # the sample is what it says
    ok, value = runner("dict(P)", P=[[i, 0] for i in range(3000)])
    assert ok and len(value) == 3000


BULK_HASHING: list[str] = ["dict.fromkeys(L)", "dict(zip(L, L))", "s.union(L)", "s.update(L)", "s.issubset(L)",
                           "d.update(zip(L, L))", "s.intersection(L)", "s.symmetric_difference(L)"]


@pytest.mark.parametrize("expression", BULK_HASHING)
@pytest.mark.parametrize("keys", ["one-big-tuple-repeated", "tuples-holding-one-big-tuple", "few-copies"])
def test_bulk_hashing_of_big_tuples_is_charged_against_one_budget(expression: str, keys: str) -> None:
    """Result: a call that would hash one big tuple thousands of times (each hash walks it whole) is
    refused before it starts, below the collision check's size too; small tuple keys work."""
    big = tuple(range(100_000))
    sample = {"one-big-tuple-repeated": [big] * 4000, "tuples-holding-one-big-tuple": [(big, i) for i in range(4000)],
              "few-copies": [big] * 20}[keys]
    runner = Runner()
    ok, value = runner(expression, L=sample, s={1}, d={})
    assert not ok and "walk over" in value, (expression, value)
    ok, value = runner(expression, L=[(i, i + 1) for i in range(3000)], s={1}, d={})
    assert ok, value


def test_scans_of_a_list_are_walk_guarded() -> None:
    """Result: count/index/remove compare the argument with every item, as `in` does: the same guard."""
    big = tuple(range(100_000))
    runner = Runner()
    for expression in ["L.count(x)", "L.index(x)", "L.remove(x)", "T.count(x)", "T.index(x)"]:
        ok, value = runner(expression, L=[tuple(list(big)) for _ in range(12)], T=tuple(tuple(list(big)) for _ in range(12)),
                           x=tuple(list(big)))
        assert not ok and "walk over" in value, (expression, value)
        ok, value = runner(expression, L=[1, 2, 3], T=(1, 2, 3), x=2)
        assert ok, value


# -- F7: a webhook body's JSON compares as the JSON it is ----------------------------------------------

_BODY = {"x": ["a", "b"], "o": {"k": [1, {"m": None}]}, "n": 1.5, "e": [], "z": {}}


def _forms(value: Any) -> list[Any]:
    """The same JSON value in each form a rule can hold it: lists or tuples, dicts or read-only dicts."""
    if isinstance(value, list):
        parts = [_forms(v) for v in value]
        return [[p[0] for p in parts], tuple(p[-1] for p in parts)]
    if isinstance(value, dict):
        parts2 = {k: _forms(v) for k, v in value.items()}
        return [{k: p[0] for k, p in parts2.items()}, MappingProxyType({k: p[-1] for k, p in parts2.items()})]
    return [value]


@pytest.mark.parametrize("key", sorted(_BODY) + ["(whole)"])
def test_json_views_equal_the_values_they_show(key: str) -> None:
    """Result: every part of a webhook body equals (==, and not !=) the same JSON as a list, tuple, dict
    or read-only dict, on either side, and another view of it; and differs from a changed copy."""
    raw = _BODY if key == "(whole)" else _BODY[key]
    view = json_view({"v": raw})["v"]
    runner = Runner()
    changed = {"(whole)": {**_BODY, "n": 2}, "x": ["a", "c"], "o": {"k": [1, {"m": 0}]}, "n": 1.25, "e": [0],
               "z": {"a": 1}}[key]
    for form in _forms(raw) + [json_view({"v": raw})["v"]]:
        for expression, expected in [("v == f", True), ("f == v", True), ("v != f", False), ("f != v", False)]:
            ok, value = runner(expression, v=view, f=form)
            assert ok and value is expected, (expression, form, value)
    for form in _forms(changed):
        ok, value = runner("v == f", v=view, f=form)
        assert ok and value is False, (form, value)


def test_comparing_json_views_keeps_the_walk_guard() -> None:
    row = [0] * 1000
    runner = Runner()
    ok, value = runner("v == f", v=json_view({"v": [row] * 2000})["v"], f=[row] * 2000)
    assert not ok and "walk over" in value, value


# -- F3: every path that turns a value into text measures it first -----------------------------------

_S = "a" * 200_000  # legal on its own; a few of them are over every text limit
_B = b"a" * 200_000


def _big_texts() -> dict[str, Any]:
    """A value of each kind whose text is over the limits, built cheaply from shared big strings."""
    rows = [_S] * 3
    return {
        "list": rows, "tuple": tuple(rows), "dict-values": {1: _S, 2: _S}, "dict-keys": {_S: 1, _S + "b": 2},
        "set": {_S, _S + "b"}, "frozenset": frozenset({_S, _S + "b"}), "read-only-dict": MappingProxyType({1: _S, 2: _S}),
        "json-object": json_view({"a": _S, "b": _S}), "json-array": json_view([_S, _S]), "bytes-in-a-list": [_B, _B],
        "escaped-str": "\x00" * 100_000, "non-ascii-str": "ā" * 200_000, "bytes": b"\x00" * 100_000,
        "message": Message(user_properties=MappingProxyType({"k": _S, "l": _S})),
    }


BIG_TEXTS = _big_texts()
#: every operator, builtin and helper that makes text of a value
TEXT_PATHS = ["'%s' % (v,)", "'%r' % (v,)", "'%a' % (v,)", "'%(k)s' % {'k': v}", "'%s' % {'k': v}",
              "'%(k)s%(k)s%(k)s' % {'k': v}", "'%s%s%s' % (v, v, v)", "b'%a' % (v,)", "b'%r' % (v,)", "str(v)", "repr(v)",
              "f'{v}'", "f'{v!r}'", "f'{v!a}'", "f'{v}{v}{v}'", "log(v)", "json_encode(v)"]


@pytest.mark.parametrize("path", TEXT_PATHS)
def test_every_text_path_measures_before_it_writes(path: str) -> None:
    """Result: for every kind of value whose text is over the limits, every way of making its text is
    refused (TooBig), or fails for its own reason (json_encode of bytes); the guard is not
    bypassed by the container type, escapes, or a field repeated."""
    import json

    runner = Runner()
    plain_path = path.replace("log(v)", "(v if isinstance(v, str) else repr(v))").replace("json_encode(v)", "json.dumps(v, ensure_ascii=False)")
    wrong: list[str] = []
    for name, value in BIG_TEXTS.items():
        try:
            plain = eval(plain_path, {"json": json}, {"v": value})  # noqa: S307 - the same text, made by Python
        except (TypeError, ValueError):
            plain = None
        over = plain is None or len(plain) > 256 * 1024
        ok, result = runner(path, v=value)
        if over and ok:
            wrong.append(f"{name}: {len(result) if result is not None else 'a line'} made")
        elif over and "TooBig" not in result and not ("json_encode" in path and "TypeError" in result):
            wrong.append(f"{name}: {result[:120]}")
        elif not over and not ok:
            wrong.append(f"{name}: refused though its text is {len(plain)} characters: {result[:120]}")
    assert not wrong, "\n".join(wrong)
    assert sum(1 for v in BIG_TEXTS.values() if v.__class__ not in (str, bytes)) >= 10


def test_formatting_small_values_works() -> None:
    runner = Runner()
    for expression, expected in [("'%s-%d' % ('x', 5)", "x-5"), ("'%(a)s %(b)r' % {'a': 1, 'b': 'q'}", "1 'q'"),
                                 ("b'%s %d' % (b'x', 3)", b"x 3"), ("'%s' % [1, 'a']", "[1, 'a']"),
                                 ("'%.3f %5s %%' % (1.5, 'ab')", "1.500    ab %"), ("'%x' % 255", "ff"),
                                 ("'%s' % {'k': 1}", "{'k': 1}"), ("'%a' % ('é',)", "'\\xe9'"),
                                 ("str(('a\\\\b', 'é'))", "('a\\\\b', 'é')"), ("repr(b'\\x00')", "b'\\x00'")]:
        ok, value = runner(expression)
        assert ok and value == expected, (expression, value)


@pytest.mark.parametrize("expression", ["'%(k)s' * 40 % {'k': L}", "b'%a' % (L,)", "'%s' % {'k': L}", "'%r' % (L,)",
                                        "b'%r' % {b'k': L}", "'%s%s' % (J, J)", "f'{L!a}'", "repr(J)"])
def test_formatting_is_refused_before_the_text_is_made(expression: str) -> None:
    """Result: the audit's `%` attacks (240 references to one 256 KiB string) are refused with at most
    a few MB allocated: what each field writes is measured first, not after the text exists."""
    import tracemalloc

    s = "a" * 262144
    names = {"L": [s] * 240, "J": json_view({"k": [s] * 240})}
    runner = Runner()
    runner("1")  # the interpreter's own first-run allocations out of the way
    tracemalloc.start()
    try:
        ok, value = runner(expression, **names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not ok and "TooBig" in value, value
    assert peak < 8 << 20, f"{peak >> 20} MB allocated before refusing"


# -- F6: str and bytes methods whose cost is not linear, or whose arguments choose an algorithm ----------

def test_every_text_method_is_measured_linear_or_guarded() -> None:
    """Result: each public method of str and bytes a rule may call is either guarded (its argument
    bounded, its codec allow-listed) or on the list of methods measured linear: a method new in a
    later Python is neither, and fails this test until someone measures it."""
    from hookrules.lang.guards import GUARDED_METHODS
    from hookrules.lang.textmethods import LINEAR_TEXT_METHODS, TEXT_ARG_CHECKS

    reachable = {a for v in ("x", b"x") for a in public_attributes(v) if callable(getattr(v, a))}
    classified = set(GUARDED_METHODS) | set(TEXT_ARG_CHECKS) | LINEAR_TEXT_METHODS
    assert reachable == classified, reachable ^ classified


_LONG_CHARS = "Ă" * 300 + "ā"
#: (expression, what its refusal says): each a costly or algorithm-choosing argument, through the
#: method of a value and the builtin (rules are given no str or bytes type to take methods from)
REFUSED_TEXT_CALLS: list[tuple[str, str]] = [
    *[(f"s.{m}(c)", "characters to strip") for m in ("strip", "lstrip", "rstrip")],
    *[(f"b.{m}(c.encode())", "characters to strip") for m in ("strip", "lstrip", "rstrip")],
    *[(f"s.encode('{codec}')", "not allowed") for codec in ("punycode", "idna", "utf-7", "cp037", "gb18030",
                                                            "unicode_escape", "raw_unicode_escape", "hz", "big5")],
    *[(f"b.decode('{codec}')", "not allowed") for codec in ("punycode", "idna", "utf_7", "unicode-escape",
                                                            "iso2022_jp", "mac_roman")],
    ("str(b, 'punycode')", "not allowed"), ("str(b, 'utf-8', 'custom')", "not allowed"),
    ("s.encode('utf-8', 'mine')", "not allowed"), ("b.decode(errors='x')", "not allowed"),
    ("s.startswith(P)", "walk over"), ("b.endswith(Q)", "walk over"),
]


@pytest.mark.parametrize(("expression", "says"), REFUSED_TEXT_CALLS)
def test_costly_text_calls_are_refused(expression: str, says: str) -> None:
    long = "ā" * 100_000
    names = {"s": long, "b": long.encode(), "c": _LONG_CHARS, "P": (long,) * 2000, "Q": (long.encode(),) * 2000}
    ok, value = Runner()(expression, **names)
    assert not ok and says in value, (expression, value)


def test_ordinary_text_calls_work() -> None:
    runner = Runner()
    for expression, expected in [("s.strip()", "é x"), ("s.strip(' é')", "x"), ("b.rstrip(b' x')", b" \xc3\xa9"),
                                 ("s.encode()", " é x ".encode()), ("s.encode('UTF-16-LE')", " é x ".encode("utf-16-le")),
                                 ("s.encode('ascii', 'replace')", b" ? x "), ("b.decode('latin-1')", " Ã© x "),
                                 ("b.decode(errors='strict')", " é x "), ("str(b, 'utf-8')", " é x "),
                                 ("s.startswith((' ', 'x'))", True), ("b.endswith(b'x ')", True),
                                 ("s.lstrip(' ')", "é x ")]:
        ok, value = runner(expression, s=" é x ", b=" é x ".encode())
        assert ok and value == expected, (expression, value)


def test_literals_of_big_tuple_keys_are_charged_too() -> None:
    """Result: a set or dict literal hashes each tuple in it whole: 40 entries of one 100,000-item
    tuple are refused like the bulk calls; small tuple keys work."""
    runner = Runner()
    entries = ", ".join(["T"] * 40)
    for expression in [f"{{{entries}}}", "{" + ", ".join(f"(T, {i}): {i}" for i in range(40)) + "}"]:
        ok, value = runner(expression, T=tuple(range(100_000)))
        assert not ok and "walk over" in value, value
    ok, value = runner("{(1, 2): 'a', (3, 4): 'b', 'k': {(5,)}}")
    assert ok and value == {(1, 2): "a", (3, 4): "b", "k": {(5,)}}
