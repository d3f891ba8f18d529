"""The interpreter's and the engine's fast paths (issue 11) give what the general paths give.

- a tuple literal of scalar constants is folded into one tuple shared by every run: it is immutable
  all the way down, so no run can change what the next one reads; only `is` can tell (as in CPython);
- a constant is read by C (operator.attrgetter), a comparison of two non-containers skips compare()'s
  guards (which only act on containers): every comparison operator, on every pair of kinds, agrees with
  the guarded path;
- RuleSet.answer() is memoized per rule set: a reload (a new set) answers from its own files, and only
  hooks hookrules knows are remembered.
"""

from __future__ import annotations

import ast
import itertools
import keyword
import time
from pathlib import Path

import pytest

from hookrules.decisions import ALLOW
from hookrules.engine import Engine
from hookrules.events import Client, Event, Message, frozen_map
from hookrules.hooks import HOOKS
from hookrules.lang.boundary import COMPARISONS, compare
from hookrules.ruleset import Limits, RuleRuntimeError, RuleSet, scan

from .rule_helpers import compile_src

AUTHZ = "client.authorize"


def _event(topic: str = "a/b") -> Event:
    return Event(AUTHZ, "emqx", Client(id="c1", username="u"), frozen_map({"action": "publish", "topic": topic,
                                                                             "result": False}), "exhook")


def test_a_folded_tuple_reads_the_same_on_every_run() -> None:
    rule = compile_src("t = ('a', 'b')\nif t != ('a', 'b') or len(t) != 2:\n    deny('changed')\n"
                       "u = list(t)\nu.append('c')\nallow()\n")
    for _ in range(3):  # the same tuple on every run, never changed by one
        assert rule.run(_event()) is ALLOW


def test_folded_tuples_are_the_same_object_and_unfolded_ones_are_built_fresh() -> None:
    rule = compile_src("def f():\n    return ('+', '#')\nif f() is f():\n    deny('shared')\nallow()\n")
    assert rule.run(_event()).kind == "deny"  # folded: CPython's own constant tuples behave so
    rule = compile_src("def f():\n    return ('+', topic)\nif f() is f():\n    deny('shared')\nallow()\n")
    assert rule.run(_event()) is ALLOW  # not all constants: a new tuple each time


@pytest.mark.parametrize("src", [
    "t = (1, 2)\nt[0] = 3\n", "t = ('a',)\nt.append('b')\n", "t = (b'x', None, True, 1.5)\nt += (1,)\nt[0] = 1\n",
])
def test_a_folded_tuple_refuses_every_change(src: str) -> None:
    rule = compile_src(src + "allow()\n")
    with pytest.raises(RuleRuntimeError):
        rule.run(_event())
    assert compile_src("t = (1, 2)\nu = t\nu += (3,)\nif t != (1, 2):\n    deny('x')\nallow()\n").run(_event()) is ALLOW


def test_only_scalar_constant_tuples_are_folded() -> None:
    rule = compile_src("a = ('x', 1, None, b'', 2.5, True)\nb = ('x', [1])\nc = ('x', ('y',))\n"
                       "e = (" + ", ".join(["1"] * 17) + ")\nf = ('x', topic)\nallow()\n")
    folded = {ast.unparse(n): hasattr(n, "hr_value") for n in ast.walk(rule.tree) if isinstance(n, ast.Tuple)}
    assert folded == {"('x', 1, None, b'', 2.5, True)": True, "('x', [1])": False, "('x', ('y',))": False,
                      "('y',)": True, "(" + ", ".join(["1"] * 17) + ")": False, "('x', topic)": False}


VALUES = [0, 1, -1, 2.5, True, False, None, "", "a", "b", b"", b"a", (), (1,), ("a", "b"), frozenset({1})]


@pytest.mark.parametrize("op", list(COMPARISONS), ids=lambda o: o.__name__)
def test_the_comparison_fast_path_agrees_with_the_guarded_one_on_every_pair(op: type[ast.cmpop]) -> None:
    """Every operator on every pair of scalar kinds (and the tuples and sets that are not containers to the
    guards): the rule's answer, or its error, is the guarded compare()'s."""
    symbol = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Is: "is",
              ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}[op]
    for left, right in itertools.product(VALUES, repeat=2):
        try:
            expected: object = bool(compare(op, left, right))
        except Exception as exc:  # noqa: BLE001 - the kind of failure is what must agree
            expected = type(exc)
        rule = compile_src(f"if action {symbol} topic:\n    deny('yes')\nallow()\n")
        event = Event(AUTHZ, "emqx", Client(id="c1"), frozen_map({"action": left, "topic": right}), "exhook")
        try:
            got: object = rule.run(event).kind == "deny"
        except RuleRuntimeError as exc:
            got = exc.error.message.split(":")[0]
            expected = getattr(expected, "__name__", expected)
        assert got == expected, (left, symbol, right)


def test_a_folded_tuple_costs_no_steps_and_a_loop_still_runs_out() -> None:
    rule = compile_src("for i in range(100000):\n    t = ('a', 'b')\nallow()\n")
    with pytest.raises(RuleRuntimeError, match="ran out of steps"):
        rule.run(_event(), Limits(max_steps=1000))


def _rules(tmp: Path, files: dict[str, str]) -> Path:
    for name in list(tmp.glob("*.star")):
        name.unlink()
    for name, src in files.items():
        (tmp / name).write_text(src)
    return tmp


def test_the_answer_memo_follows_each_reload(tmp_path: Path) -> None:
    portable = _rules(tmp_path, {"authorize.star": "deny('portable')\n"})
    first, _ = scan(portable, RuleSet())
    engine = Engine(first)
    assert engine.decide(_event()).decision.reason == "portable"  # type: ignore[union-attr]
    assert first.answer(AUTHZ)[0] == "authorize"
    _rules(tmp_path, {"authorize.star": "deny('portable')\n", "client.authorize.star": "deny('own')\n"})
    time.sleep(0.01)
    second, _ = scan(tmp_path, first, force=True)
    engine.ruleset = second
    outcome = engine.decide(_event())
    assert (outcome.decision.reason, outcome.rule) == ("own", AUTHZ)  # type: ignore[union-attr]
    assert first.answer(AUTHZ)[0] == "authorize"  # the old set still answers as it did
    _rules(tmp_path, {"authorize.star": "allow()\n"})
    third, _ = scan(tmp_path, second, force=True)
    engine.ruleset = third
    outcome = engine.decide(_event())
    assert (outcome.decision, outcome.rule, outcome.version) == (ALLOW, "authorize", third.rules["authorize"].version)


def test_the_answer_memo_keeps_only_known_hooks(tmp_path: Path) -> None:
    ruleset, _ = scan(_rules(tmp_path, {"authorize.star": "allow()\n"}), RuleSet())
    for i in range(1000):
        assert ruleset.answer(f"no.such.hook.{i}") == (None, None)
    ruleset.answer(AUTHZ)
    assert set(ruleset._answers) <= set(HOOKS) and len(ruleset._answers) == 1


def test_a_run_starts_from_exactly_the_names_its_text_names() -> None:
    """CompiledRule.run_base: every name of the rule's base (builtins, helpers, decisions, TOPICS, data),
    one rule a name: a rule that writes the name (here in a def's body) starts its runs with the very
    object its base holds; the names it does not write are not in its runs' start."""
    full = compile_src("allow()\n", hook=AUTHZ).base
    assert len(full) > 30
    for name in full:
        rule = compile_src(f"def f():\n    return {name}\nx = f()\nallow()\n", hook=AUTHZ)
        if keyword.iskeyword(name):  # True, False, None: constants to the parser, never a lookup
            assert name not in rule.run_base
            continue
        assert set(rule.run_base) == {name, "allow"}, name
        assert rule.run_base[name] is rule.base[name], name
        assert rule.run(_event()) is ALLOW, name
    rule = compile_src("allow() if len('ab') == 2 else deny('no')\n", hook=AUTHZ)
    assert set(rule.run_base) == {"allow", "deny", "len"}


def test_topics_and_loaded_names_reach_a_run_that_names_them(tmp_path: Path) -> None:
    """TOPICS (a message.publish rule's own, read in a def) and a library's names (load(), whose function
    reads its own module's names: len here, which the rule never names)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "util.star").write_text("LIMIT = 3\ndef short(words):\n    return len(words) <= LIMIT\n")
    (tmp_path / "message.publish.star").write_text(
        'load("lib/util.star", "short", "LIMIT")\nTOPICS = ["t/#"]\ndef declared():\n    return TOPICS\n'
        'if declared()[0] != "t/#" or LIMIT != 3 or not short(topic_words(message.topic)):\n    deny("no")\nallow()\n')
    ruleset, outcomes = scan(tmp_path, RuleSet())
    rule = ruleset.get("message.publish")
    assert rule is not None, outcomes
    assert set(rule.run_base) == {"TOPICS", "short", "LIMIT", "topic_words", "deny", "allow"}
    message = Message("m1", "c1", "t/a/b", b"x", 0, False, 0, frozen_map({}), frozen_map({}), frozen_map({}), "n")
    event = Event("message.publish", "emqx", Client(id="c1"), frozen_map({"message": message}), "exhook")
    assert rule.run(event) is ALLOW
