"""Compiled rule runs (lang/compiler) against the interpreter's walk, and the emitted code's closure.

The compiled function must be the interpreter by other means: for every rule of the sandbox's attack
corpus, of a corpus that uses every construct the checker allows, and of a few hundred generated
rules, both ways give the same decision, or the same error (code, file, line, column, message, hint),
after the same number of steps. And the emitted source itself may only do what the guards do: every
name, attribute, constant and node kind in it is enumerated here against a fixed set, so rule text can
reach it only as string constants.
"""

from __future__ import annotations

import ast
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from hookrules.decisions import Allow, Deny
from hookrules.errors import RuleLoadError
from hookrules.hooks import HOOKS
from hookrules.lang import compiler
from hookrules.lang.checker import ALLOWED_NODES
from hookrules.lang.interp import RUNTIME as INTERP_RUNTIME
from hookrules.lang.functions import MAX_CALL_DEPTH
from hookrules.lang.interp import RuleInterpreter
from hookrules.lang.trace import TracingInterpreter
from hookrules.ruleset import CompiledRule, Context, Limits, RuleRuntimeError, RuleSet, compile_rule, scan

from .rule_helpers import AUTHZ, compile_src, rule_path
from .test_sandbox import EVENTS, RUNTIME, authz_event

#: names the checker knows (the file assigns them) that no run binds: for NameErrors at run time
_UNBOUND = "if topic == 'never':\n    nope = w = n = x = 1\n"

#: every construct the checker allows, each where it can fail and where it cannot
CONSTRUCTS: list[tuple[str, str]] = [
    ("names", "x = topic\ny = x\nif y == topic:\n    allow()\n"),
    ("undefined-name", _UNBOUND + "x = 1\nif x:\n    y = nope\n"),
    ("undefined-function", _UNBOUND + "x = nope(1)\n"),
    ("undefined-function-as-a-statement", _UNBOUND + "if topic:\n    nope('x')\n"),
    ("attributes", "if client.id == 'c1' or client.username.upper() == 'MALLORY':\n    deny(client.username)\n"),
    ("attribute-missing", "c = [client][0]\nx = c.nothing\n"),
    ("attribute-underscore-at-run-time", "x = [client][0]\ny = x.id.upper\n"),
    ("method-of-a-constant", "deny('a-b'.replace('-', '+'))\n"),
    ("subscripts", "w = topic_words(topic)\nif w[0] == 'a' and w[-1] == 'b':\n    deny(w[1:][0])\n"),
    ("subscript-out-of-range", "w = topic_words(topic)\nx = w[7]\n"),
    ("subscript-key-error", "d = {'a': 1}\nx = d['b']\n"),
    ("subscript-of-data-by-slice", "x = 'abcdef'[1:4:2]\ndeny(x)\n"),
    ("slice-charged", "l = [0] * 1000\nm = l[:]\ndeny(str(len(m)))\n"),
    ("compare-every-op", "a = 1\nb = 2\nif a < b and a <= b and b > a and b >= a and a != b and not a == b:\n"
     "    if a is not None and a in [1] and 3 not in [1] and None is None:\n        deny('all')\n"),
    ("compare-chains", "a = 1\nif 0 < a < 2 <= 2 != 3:\n    deny('chain')\nif 0 < a > 5:\n    deny('no')\n"),
    ("compare-chain-fails-mid-way", "if 0 < topic < 3:\n    deny('no')\n"),
    ("compare-containers", "if [1, [2]] == [1, [2]] and (1, 2) < (1, 3) and {'a': 1} != {}:\n    deny('c')\n"),
    ("compare-in-folded-tuple", "if client.id in ('+', '#') or topic in ('a/b', 'c'):\n    deny('t')\n"),
    ("compare-type-error", "if client.id < 3:\n    deny('no')\n"),
    ("boolops-values", _UNBOUND + "x = 0 or '' or None\ny = 1 and 'a' and [1]\nz = (0 and nope) or (1 or nope)\n"
     "deny(str([x, y, z]))\n"),
    ("boolop-short-circuit-keeps-errors-away", _UNBOUND + "if topic == 'zz' and nope:\n    deny('x')\nallow()\n"),
    ("unary", "a = -1\nb = +a\nc = ~a\nd = not a\ndeny(str([a, b, c, d]))\n"),
    ("unary-type-error", "x = -topic\n"),
    ("binops", "a = 7\ndeny(str([a + 1, a - 1, a * 2, a / 2, a // 2, a % 4, a ** 2, a << 1, a >> 1, a | 8,"
     " a ^ 1, a & 3, 'x' * 3, [1] + [2]]))\n"),
    ("binop-too-big", "x = 'a' * (10 ** 9)\n"),
    ("binop-zero-division", "x = 1 // 0\n"),
    ("calls", "x = len(topic)\ny = str(x)\nz = sorted([3, 1, 2], reverse=True)\ndeny(y + str(z))\n"),
    ("call-keyword-error", "x = sorted([1], nope=1)\n"),
    ("call-not-callable", "x = topic()\n"),
    ("call-decision-in-an-expression", "x = [deny('inner')]\n"),
    ("call-decision-with-a-bad-argument", "deny(3)\n"),
    ("call-rewrite-keywords", "allow()\n"),
    ("ifexp", "x = 'a' if topic else 'b'\ndeny(x)\n"),
    ("literals", "x = [1, 2]\ny = (x, 3)\nz = {'k': y}\ns = {1, 2}\ndeny(str([x, y, z, s]))\n"),
    ("comprehensions", "x = [w for w in topic_words(topic) if w]\ny = {w: 1 for w in x}\nz = {w for w in x}\n"
     "deny(str([x, y, z]))\n"),
    ("fstrings", "x = f'{topic!r}:{client.id:>5}:{1 + 1}'\ndeny(x)\n"),
    ("for-break-continue", "n = 0\nfor w in topic_words(topic):\n    if w == 'a':\n        continue\n"
     "    n = n + 1\n    break\nelse:\n    n = -1\ndeny(str(n))\n"),
    ("for-decides", "for w in topic_words(topic):\n    if w == 'b':\n        deny('b')\nallow()\n"),
    ("def-return", "def f(a, b=2):\n    return a * b\nx = f(3)\ndeny(str(x))\n"),
    ("def-decides", "def f():\n    deny('in f')\nf()\n"),
    ("def-fails", "def f(w):\n    return w[9]\nx = f(topic_words(topic))\n"),
    ("def-returns-in-branches", "def f(x):\n    if x:\n        return\n    elif x == 0:\n        return None\n"
     "    return x\ny = [f(1), f(0), f([])]\ndeny(str(y))\n"),
    ("def-decides-in-a-branch", "def f(x):\n    if x > 1:\n        deny('big')\n    return x\nf(1)\nf(2)\nallow()\n"),
    ("def-decides-in-a-loop", "def f(xs):\n    for x in xs:\n        if x:\n            ignore()\n    return 0\nf([0, 1])\n"),
    ("def-nested-and-closures", "def outer(a):\n    b = a + 1\n    def inner(c):\n        return [a, b, c, topic]\n"
     "    return inner(b)\ndeny(str(outer(1)))\n"),
    ("def-recursion-refused", "def f(n):\n    if n:\n        return fs[0](n - 1)\n    return 0\nfs = [f]\nx = f(3)\n"),
    ("def-key-function", "def k(v):\n    return -v\ndeny(str(sorted([1, 3, 2], key=k)))\n"),
    ("def-fails-deep-in-a-branch", "def f(d):\n    if d:\n        x = 1\n    else:\n        return d['nope']\n"
     "    return x\ny = f({})\n"),
    ("def-break-outside-a-loop-body", "def f(xs):\n    for x in xs:\n        if x:\n            break\n"
     "        continue\n    else:\n        return 'none'\n    return 'found'\ndeny(f([0, 1]) + f([]))\n"),
    ("def-steps-run-out", "def f():\n    n = 0\n    for i in range(200000):\n        n = n + 1\n    return n\nx = f()\n"),
    ("augassign", "x = 1\nx += 2\nl = [1]\nl[0] += 5\ndeny(str([x, l]))\n"),
    ("assign-to-subscript", "d = {}\nd['a'] = topic\nl = [0]\nl[0] = 1\ndeny(str([d, l]))\n"),
    ("assign-to-subscript-error", "l = []\nl[3] = 1\n"),
    ("assign-tuple-unpacking", "a, b = 1, 2\n(c, d), e = (3, 4), 5\ndeny(str([a, b, c, d, e]))\n"),
    ("assign-chained", "a = b = topic\ndeny(a + b)\n"),
    ("pass-only", "pass\n"),
    # `is` sees each constant's own object, as the walk does (compile() would merge equal ones)
    ("identity-of-constants", "x = 'user'\ny = 1000\nz = b'payload-x'\nt = ('a', 'b')\nu = 2.5\n"
     "deny(str([x is 'user', y is 1000, z is b'payload-x', t is ('a', 'b'), u is 2.5, action is 'publish',"
     " x is not 'user', None is None, True is True, topic is topic]))\n"),
    ("empty-if-bodies", "if topic:\n    pass\nelif client.id:\n    pass\nelse:\n    pass\n"),
    ("expression-statements", "1\ntopic\nclient.id\n[1, 2]\nlen(topic)\n"),
    ("no-decision", "x = 1\n"),
    ("steps-run-out", "for i in range(200000):\n    pass\n"),
    ("log", "log('seen ' + client.id)\nallow()\n"),
    ("data-namespace", "x = data\nallow()\n"),
    ("helpers", "if topic_match('a/#', topic) and json_decode('[1]') == [1]:\n    deny('h')\n"),
    ("big-int-constant", "x = 0x" + "f" * 40 + "\ndeny(str(x % 7))\n"),
    ("float-constants", "x = 1.5\ny = 1e400\ndeny(str([x, y, x < y]))\n"),
    ("bytes-and-none", "x = b'\\x00\\xff'\ny = None\ndeny(str([x, y, x[1:]]))\n"),
    ("unicode-text", "x = 'é\\u2028\\ud800'\ndeny(str(len(x)))\n"),
    ("deep-elif", "x = 5\n" + "".join(f"{'if' if i == 0 else 'elif'} x == {i}:\n    deny('{i}')\n"
                                     for i in range(40)) + "else:\n    allow()\n"),
]


@contextmanager
def walking() -> Iterator[None]:
    """Rules compiled meanwhile run on the interpreter's walk alone: top level and defs."""
    saved = compiler.MAX_NODES
    compiler.MAX_NODES = -1
    try:
        yield
    finally:
        compiler.MAX_NODES = saved


def outcome(rule: CompiledRule, limits: Limits = Limits()) -> tuple[Any, ...]:
    """What one run ends in, and the steps it took (but for a deadline, which depends on time)."""
    try:
        result: tuple[Any, ...] = ("decision", repr(rule.run(EVENTS[AUTHZ](), limits)))
    except RuleRuntimeError as exc:
        e = exc.error
        result = ("error", e.code, e.location.file, e.location.line, e.location.col, e.message, e.hint, e.source_line)
    if result[:2] == ("error", "deadline_error"):
        return result
    return result + (rule.interp._steps,)


def both_ways(src: str) -> tuple[tuple[Any, ...], tuple[Any, ...], CompiledRule]:
    """The walk's outcome, the compiled one's, and the compiled rule."""
    with walking():
        walked = compile_src(src)
    assert walked.body is None
    rule = compile_src(src)
    return outcome(walked), outcome(rule), rule


@pytest.mark.parametrize("src", [pytest.param(src, id=name) for name, src in CONSTRUCTS])
def test_every_construct_runs_the_same_both_ways(src: str) -> None:
    walked, compiled, rule = both_ways(src)
    assert rule.body is not None, "the rule fell back to the interpreter"
    defs = [n for n in ast.walk(rule.tree) if isinstance(n, ast.FunctionDef)]
    assert all(n.hr_body is not None for n in defs), "a def fell back to the interpreter"  # type: ignore[attr-defined]
    assert compiled == walked


def test_the_constructs_use_every_node_the_checker_allows() -> None:
    """So the comparison above covers every node kind, natively compiled or handed over."""
    used = {node.__class__ for _, src in CONSTRUCTS for node in ast.walk(ast.parse(src))}
    runnable = {cls for cls in ALLOWED_NODES if issubclass(cls, (ast.stmt, ast.expr))}
    assert runnable - used == set()
    assert compiler.NATIVE_STATEMENTS | compiler.NATIVE_EXPRESSIONS <= runnable


@pytest.mark.parametrize(("src", "hook"), [pytest.param(case[1], case[2], id=case[0]) for case in RUNTIME
                                           if case[2] == AUTHZ])
def test_the_sandbox_corpus_runs_the_same_both_ways(src: str, hook: str) -> None:
    walked, compiled, _ = both_ways(src)
    if walked[:2] == ("error", "deadline_error"):  # where it stops depends on time: the kind must agree
        assert compiled[:2] == walked[:2]
    elif walked[0] == "error" and "maximum recursion depth" in walked[5]:
        # Python's own stack: a compiled def takes fewer Python frames a call than the walk, so a chain
        # of calls that overflowed it on the walk may end, or overflow further down
        assert compiled[0] == "decision" or "maximum recursion depth" in compiled[5]
    else:
        assert compiled == walked


# -- generated rules ------------------------------------------------------------------------------

_ATOMS = ["topic", "client.id", "client.username", "action", "broker", "qos", "'a'", "'devices'", "''", "0", "1",
          "2", "-1", "True", "None", "b''", "b'x'", "1.5", "('+', '#')", "[1, 'a']", "{'k': 'v'}", "nope",
          "client.nope", "w", "n"]
_COMPARE = ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not"]
_BINOPS = ["+", "-", "*", "%", "//"]
_CALLS = ["len({})", "str({})", "topic_words({})", "topic_match('a/#', {})", "sorted({})", "{}.upper()",
          "{}.startswith('a')", "int({})", "{}[0]", "{}[1:]", "{}['k']", "bool({})"]


def _expr(rng: random.Random, depth: int) -> str:
    if depth <= 0 or rng.random() < 0.25:
        return rng.choice(_ATOMS)
    kind = rng.randrange(7)
    sub = lambda: _expr(rng, depth - 1)  # noqa: E731
    if kind == 0:
        ops = rng.choice([1, 1, 1, 2])
        return "(" + sub() + "".join(f" {rng.choice(_COMPARE)} {sub()}" for _ in range(ops)) + ")"
    if kind == 1:
        return "(" + f" {rng.choice(['and', 'or'])} ".join(sub() for _ in range(rng.randint(2, 3))) + ")"
    if kind == 2:
        return f"(not {sub()})" if rng.random() < 0.7 else f"(-{sub()})"
    if kind == 3:
        return f"({sub()} {rng.choice(_BINOPS)} {sub()})"
    if kind == 4:
        return rng.choice(_CALLS).format(sub())
    if kind == 5:
        return f"({sub()} if {sub()} else {sub()})"
    return f"[{sub()}, {sub()}]"


def _statements(rng: random.Random, depth: int, indent: str) -> list[str]:
    out = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        if kind <= 1:
            out.append(f"{indent}{rng.choice(['w', 'n', 'x'])} = {_expr(rng, 3)}")
        elif kind == 2 and depth > 0:
            out.append(f"{indent}if {_expr(rng, 3)}:")
            out += _statements(rng, depth - 1, indent + "    ")
            if rng.random() < 0.5:
                out.append(f"{indent}else:")
                out += _statements(rng, depth - 1, indent + "    ")
        elif kind == 3:
            out.append(f"{indent}{rng.choice(['deny(str(' + _expr(rng, 2) + '))', 'allow()', 'ignore()'])}")
        elif kind == 4:
            out.append(f"{indent}{_expr(rng, 2)}")
        else:
            out.append(f"{indent}pass")
    return out


def _function(rng: random.Random) -> list[str]:
    """A def whose body mixes the same statements with returns, called from the top level."""
    body = _statements(rng, 2, "    ")
    for i in range(len(body) - 1, 0, -1):
        if rng.random() < 0.2 and not body[i].endswith(":"):
            indent = body[i][: len(body[i]) - len(body[i].lstrip())]
            body.insert(i + 1, f"{indent}return {_expr(rng, 2)}")
    return ["def g(w, n=1):", *body, f"    return {_expr(rng, 2)}", f"x = g({_expr(rng, 2)})"]


def generated_rules(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [_UNBOUND + "\n".join((_function(rng) if rng.random() < 0.4 else []) + _statements(rng, 3, "")) + "\n"
            for _ in range(count)]


def test_generated_rules_run_the_same_both_ways() -> None:
    kinds: set[str] = set()
    for src in generated_rules(400):
        try:
            walked, compiled, rule = both_ways(src)
        except RuleLoadError:  # a generated rule the checker refuses: nothing to run
            continue
        assert rule.body is not None, src
        assert compiled == walked, src
        kinds.add("none" if walked[:2] == ("decision", "None") else walked[0])
    # the corpus reached decisions, no decision and errors: a comparison of one kind would prove little
    assert kinds == {"none", "decision", "error"}


# -- the emitted code's closure -------------------------------------------------------------------

#: what the emitted source may name, besides its temporaries (t1, t2, ...)
_LOCALS = {"I", "S", "D", "K", "hr_nodes", "hr_at", "hr_stmt", "hr_rule"}
#: the attributes it may read or write: the interpreter's state and guards, and a value's class
_ATTRIBUTES = {"__class__", "_steps", "_check_budget", "_call_function", "_call_host", "attribute", "decision",
               "_interrupt", "run", "hr_run", "makers", "node_assign", "_deadline", "retval"}
#: the node kinds it may hold
_EMITTED_NODES = {ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.AugAssign, ast.If,
                  ast.Expr, ast.Return, ast.Pass, ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Call,
                  ast.Compare, ast.IfExp, ast.UnaryOp, ast.List, ast.Tuple, ast.Dict, ast.Starred, ast.BoolOp,
                  ast.keyword, ast.Load, ast.Store, ast.Sub, ast.Not, ast.Or, ast.And, ast.Is, ast.IsNot, ast.In, ast.NotIn,
                  ast.Lt, ast.Gt}


def _check_emitted(source: str) -> None:
    allowed_names = _LOCALS | set(compiler._globals(INTERP_RUNTIME))
    for node in ast.walk(ast.parse(source)):
        assert node.__class__ in _EMITTED_NODES, ast.dump(node)
        if isinstance(node, ast.Name):
            assert node.id in allowed_names or re.fullmatch(r"t\d+", node.id), node.id
        elif isinstance(node, ast.Attribute):
            assert node.attr in _ATTRIBUTES, node.attr
        elif isinstance(node, ast.Constant):  # identifiers, indices, True, False, None: the rule's stay in K
            assert node.value.__class__ in (bool, int, type(None)) or (
                node.value.__class__ is str and node.value.isidentifier()), node.value
        elif isinstance(node, ast.keyword):
            assert node.arg is None or isinstance(node.arg, str)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "S":
            assert isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)  # by name only


def _bodies(rule: CompiledRule) -> list[tuple[list[ast.stmt], bool]]:
    """The rule's top level and every def's body, as the compiler emits them."""
    defs = [n for n in ast.walk(rule.tree) if isinstance(n, ast.FunctionDef)]
    return [(rule.tree.body, False)] + [(n.body, True) for n in defs]


def test_emitted_code_only_names_the_guards() -> None:
    """Over every rule of the corpora: rule text reaches the source as constants and nothing else."""
    sources = [src for _, src in CONSTRUCTS] + [case[1] for case in RUNTIME if case[2] == AUTHZ]
    sources += generated_rules(400)
    checked = 0
    for src in sources:
        try:
            rule = compile_src(src)
        except Exception:
            continue
        for body, function in _bodies(rule):
            source, _, _ = compiler.emit(body, function)
            assert source is not None
            _check_emitted(source)
            checked += 1
    assert checked > 400


def test_rule_text_that_looks_like_code_stays_a_string() -> None:
    src = ("x = \"'] ; import os ; S['\"\ny = {\"__class__\": 1}\nif client.id == \"\\\")\\nimport os#\":\n"
           "    deny(\"__import__('os')\")\nallow()\n")
    walked, compiled, rule = both_ways(src)
    source, _, _ = compiler.emit(rule.tree.body)
    assert source is not None
    _check_emitted(source)
    assert compiled == walked
    assert rule.body is not None and rule.body.__globals__["__builtins__"] == {}
    assert rule.body.__globals__ is INTERP_RUNTIME.names  # one dict for every compiled function
    assert set(INTERP_RUNTIME.names) == set(compiler._globals(INTERP_RUNTIME))


# -- where rules run interpreted ------------------------------------------------------------------


def test_tracing_interpreter_walks_every_node() -> None:
    rule = compile_rule(rule_path(AUTHZ), b"allow()\n", HOOKS[AUTHZ], Context(interpreter=TracingInterpreter))
    assert rule.body is None and type(rule.interp) is TracingInterpreter
    assert compile_src("allow()\n").body is not None and type(compile_src("allow()\n").interp) is RuleInterpreter


def test_a_big_rule_runs_interpreted_and_compiling_stays_short() -> None:
    # each `if` of these is 11 nodes, and about 600 characters of emitted source
    lines = "".join(f"if topic == 't{i}':\n    deny('{i}')\n" for i in range(compiler.MAX_NODES // 10))
    big = compile_src(lines + "allow()\n")
    assert compiler.size(big.tree) > compiler.MAX_NODES and big.body is None
    assert outcome(big)[:2] == ("decision", repr(Allow()))
    # a big def runs on the walk, and the top level that calls it is compiled all the same
    in_def = compile_src("def f():\n" + "".join("    " + line + "\n" for line in lines.splitlines())
                         + "    return 0\nx = f()\nallow()\n")
    assert in_def.body is not None and in_def.tree.body[0].hr_body is None  # type: ignore[attr-defined]
    assert outcome(in_def)[:2] == ("decision", repr(Allow()))
    # under MAX_NODES but over MAX_SOURCE: on the walk too (compile() would hold the GIL for longer)
    long = "".join(f"if topic == 't{i}':\n    deny('{i}')\n" for i in range(compiler.MAX_NODES // 12))
    source, _, _ = compiler.emit(compile_src(long).tree.body)
    assert source is not None and len(source) > compiler.MAX_SOURCE and compile_src(long).body is None
    # what fits is compiled, in a bounded time (a generous bound: the machine is shared)
    fits = "".join(f"if topic == 't{i}':\n    deny('{i}')\n" for i in range(40))
    started = time.thread_time()
    rule = compile_src(fits + "allow()\n")
    assert rule.body is not None
    assert time.thread_time() - started < 2.0
    walked, compiled, _ = both_ways(fits + "allow()\n")
    assert compiled == walked


def test_defs_past_the_rules_source_budget_run_on_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_RULE_SOURCE bounds what one rule's defs compile to: the defs past it, in order, are walked."""
    defs = "".join(f"def f{i}(x):\n    if x == {i}:\n        return 'hit {i}'\n    return x\n" for i in range(30))
    src = defs + "x = 3\n" + "".join(f"x = f{i}(x)\n" for i in range(30)) + "deny(str(x))\n"
    monkeypatch.setattr(RuleInterpreter, "__init__", _small_room(RuleInterpreter.__init__, 3000))
    walked, compiled, rule = both_ways(src)
    bodies = [n.hr_body for n in rule.tree.body if isinstance(n, ast.FunctionDef)]  # type: ignore[attr-defined]
    assert bodies[0] is not None and bodies[-1] is None  # some compiled, then the budget ran out
    assert rule.interp.compile_room < 3000
    assert compiled == walked and compiled[:2] == ("decision", repr(Deny("hit 3")))


def _small_room(init: Any, room: int) -> Any:
    def patched(self: RuleInterpreter) -> None:
        init(self)
        self.compile_room = room
    return patched


@pytest.mark.parametrize(("depth", "fails"), [(MAX_CALL_DEPTH, False), (MAX_CALL_DEPTH + 1, True)])
def test_functions_call_each_other_at_most_max_call_depth_deep_either_way(depth: int, fails: bool) -> None:
    """A chain of distinct defs (no recursion) fails at the language's bound, whichever way it runs, not
    where Python's stack happens to end (a compiled def takes fewer Python frames a call)."""
    src = "".join(f"def f{i}(x):\n    return f{i + 1}(x) + 1\n" for i in range(depth - 1))
    src += f"def f{depth - 1}(x):\n    return x\ndeny(str(f0(0)))\n"
    walked, compiled, _ = both_ways(src)
    assert compiled == walked
    if fails:
        assert compiled[:2] == ("error", "runtime_error") and f"more than {MAX_CALL_DEPTH} deep" in compiled[5]
        assert "call fewer functions inside one another" in compiled[6]
    else:
        assert compiled[:2] == ("decision", repr(Deny(str(depth - 1))))


@pytest.mark.parametrize("nesting", [0, 5, 15, 40])  # 50 calls of 6 + nesting frames: 600 fits 0 and 5
def test_deeply_nested_bodies_allow_fewer_calls_either_way(nesting: int) -> None:
    """A chain of 50 defs, each nesting its call `nesting` expressions deep: the walk takes a Python
    frame per level, so the bound charges each call its body's nesting (FRAME_BUDGET) and the chain
    fails alike both ways, with the bound's hint, instead of where Python's stack ends on the walk."""
    src = ""
    for i in range(MAX_CALL_DEPTH - 1):
        call = f"f{i + 1}(x)"
        for _ in range(nesting):
            call = f"({call} + 1)"
        src += f"def f{i}(x):\n    return {call}\n"
    src += f"def f{MAX_CALL_DEPTH - 1}(x):\n    return x\ndeny(str(f0(0)))\n"
    walked, compiled, _ = both_ways(src)
    assert compiled == walked
    if nesting <= 5:
        assert compiled[0] == "decision"
    else:
        assert compiled[:2] == ("error", "runtime_error") and "too deeply for how deeply their bodies nest" in compiled[5]
        assert "call fewer functions inside one another" in compiled[6]  # not the hint for recursion


def test_a_for_target_that_calls_a_def_runs_the_whole_def() -> None:
    """The last item's `continue` is cleared before the next target is assigned (found by an audit: the
    walk stopped f after its first statement, the compiled def did not)."""
    src = ("calls = []\ndef f():\n    calls.append(1)\n    if len(calls) > 1:\n        deny('second call of f')\n"
           "    return 'k'\nd = {}\nfor d[f()] in [1, 2]:\n    continue\nallow()\n")
    walked, compiled, _ = both_ways(src)
    assert compiled == walked and compiled[:2] == ("decision", repr(Deny("second call of f")))


def test_long_chains_and_deep_nesting_compile() -> None:
    """BoolOps and comparison chains are emitted flat, and the checker's nesting bound keeps the ifs
    far from the indentation Python's tokenizer takes (100 levels)."""
    ors = " or ".join(f"topic == 't{i}'" for i in range(150))
    chain = " < ".join(str(i) for i in range(150))
    nested = "".join("    " * i + f"if topic != 'x{i}':\n" for i in range(31)) + "    " * 31 + "deny('deep')\n"
    for src in (f"if {ors}:\n    deny('or')\nallow()\n", f"if {chain}:\n    deny('chain')\n", nested):
        walked, compiled, rule = both_ways(src)
        assert rule.body is not None
        assert compiled == walked


# -- libraries --------------------------------------------------------------------------------------

LIBRARY = """\
LIMITS = {"devices": 2, "sensors": 3}

def depth_ok(topic):
    words = topic_words(topic)
    if words[0] not in LIMITS:
        return True
    return len(words) <= LIMITS[words[0]]

def check(topic, who):
    if who == "mallory" and topic.startswith("admin/"):
        return False
    for word in topic_words(topic):
        if word == "secret":
            return False
    return depth_ok(topic)

def broken(topic):
    return topic_words(topic)[9]
"""


@pytest.mark.parametrize(("rule_src", "topic"), [
    ('load("lib/acl.star", "check")\nif not check(topic, client.username):\n    deny("acl")\nallow()\n', "a/b"),
    ('load("lib/acl.star", "check")\nif not check(topic, client.username):\n    deny("acl")\nallow()\n', "devices/a/b"),
    ('load("lib/acl.star", "check")\nif not check(topic, client.username):\n    deny("acl")\nallow()\n', "admin/x"),
    ('load("lib/acl.star", "check")\nif not check(topic, client.username):\n    deny("acl")\nallow()\n', "a/secret"),
    ('load("lib/acl.star", "broken")\nx = broken(topic)\n', "a/b"),
])
def test_library_functions_run_the_same_both_ways(tmp_path: Path, rule_src: str, topic: str) -> None:
    """A library's defs are compiled per rule that loads them; an error inside one names the library."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "acl.star").write_text(LIBRARY)
    (tmp_path / "authorize.star").write_text(rule_src)
    event = authz_event(topic=topic)
    results = []
    for walk in (True, False):
        with walking() if walk else nullcontext():
            ruleset, outcomes = scan(tmp_path, RuleSet())
        assert [o.errors for o in outcomes] == [()]
        rule = ruleset.get("authorize")
        assert rule is not None and (rule.body is None) == walk
        loaded = next(v for k, v in rule.base.items() if k in ("check", "broken"))
        assert (loaded._node.hr_body is None) == walk  # the library's def, compiled for this rule
        try:
            results.append(("decision", repr(rule.run(event)), rule.interp._steps))
        except RuleRuntimeError as exc:
            e = exc.error
            results.append(("error", str(e.location), e.message, e.hint, e.source_line, rule.interp._steps))
    assert results[0] == results[1]
    if "broken" in rule_src:
        assert results[1][0] == "error" and "lib/acl.star:18:" in results[1][1]


def test_a_library_def_out_of_steps_is_reported_in_the_library(tmp_path: Path) -> None:
    """Steps run out at an expression of a library def (a comprehension's loop): the error names the
    library's file and line, either way (it named the rule's file before, with the library's line)."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sq.star").write_text("def squares(n):\n    return [i * i for i in range(n)]\n")
    (tmp_path / "authorize.star").write_text('load("lib/sq.star", "squares")\nx = squares(90000)\nallow()\n')
    locations = []
    for walk in (True, False):
        with walking() if walk else nullcontext():
            ruleset, _ = scan(tmp_path, RuleSet())
        rule = ruleset.get("authorize")
        assert rule is not None
        with pytest.raises(RuleRuntimeError) as failed:
            rule.run(authz_event(), Limits(max_steps=50_000))
        error = failed.value.error
        assert error.code == "deadline_error" and "steps" in error.message
        assert "--max-steps" in error.hint  # the budget it ran out of, not --rule-timeout
        locations.append((str(error.location), error.source_line))
    assert locations[0] == locations[1]
    assert "lib/sq.star:2:" in locations[0][0] and "range(n)" in locations[0][1]
