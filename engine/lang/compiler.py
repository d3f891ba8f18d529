"""A rule's top level, and each def's body, as one Python function that does, node for node, what the
interpreter does.

Why: in a server a rule run costs 4-5x its in-process time, because the CPU caches are cold between
calls (bench/README.md, session 8), and the interpreter touches a Python frame, an AST node and its
attribute dict for every node it visits. The same run as one function touches one code object and
the guard functions the handlers would have called.

Closed by construction, not by cases:
- Rule text reaches the emitted source only as ascii() of an identifier: names are read from and
  written to the run's symtable under it, attribute names go to the interpreter's own attribute check
  as it, keyword names are the keys of the keyword dict. The rule's constants stay objects (read from a
  tuple by index: `is` sees the objects the walk sees); the source names nothing else of the rule's.
- Every operation is the one the interpreter's handler performs, in the same order, through the same
  guard: attributes through `attribute()`, calls through `_call_host()` and `_call_function()`,
  comparisons through COMPARISONS and `compare()`, operators through OPERATORS, subscripts as
  `on_subscript` does, decisions made as statements through the interpreter's makers.
- Everything else (literals other than constants and folded tuples, comprehensions, f-strings, for
  loops, a def statement itself, augmented assignments, ...) is handed to the interpreter node by node,
  so the compiled subset can only be narrower than the interpreted language, never wider.
- The function's globals hold the guard functions and no builtins.
tests/test_compiler.py checks all of it on the emitted code itself, and runs rules both ways.

Errors: the function keeps the index of the node it is working on in `hr_at`, and of the statement in
`hr_stmt`, which frame_position reads for interp._innermost_node and passwords._calling_node as they read
a handler's `node`, so a failure points at the same file:line:col either way. Steps and the deadline:
one step per statement (and one for a return's value, which on_return runs through run()), checked as
RuleInterpreter.run() checks it.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FunctionType
from typing import Any

from . import allocation
from .boundary import COMPARISONS, compare
from .functions import RuleFunction
from .values import CONTAINERS

#: a top level or def with more nodes than this runs on the walk: a bigger one is not the kind whose
#: per-call cost is mostly the walk (the bundled rules are 40-70 nodes), and emitting it costs time
MAX_NODES = 1000
#: nor one whose emitted source is longer than this: compile() holds the GIL (the event loop waits) for
#: as long as the source takes, about 6 ms for 50,000 characters on the scan thread
MAX_SOURCE = 50_000
#: the characters of source one rule may compile for its defs and its libraries' defs in all (its top
#: level has MAX_SOURCE of its own): bounds the compile time and the memory each rule adds; the defs
#: past it, in the order the rule links them, run on the walk
MAX_RULE_SOURCE = 200_000
#: constants that are one object whatever the source: written into it as they are
_SINGLETONS = frozenset({bool, type(None)})

#: statements and expressions compiled here; every other node is run by the interpreter (Return: in a
#: def's body; at the top level the interpreter refuses it)
NATIVE_STATEMENTS = frozenset({ast.Assign, ast.If, ast.Expr, ast.Pass, ast.Return})
NATIVE_EXPRESSIONS = frozenset({ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Compare, ast.BoolOp,
                                ast.UnaryOp, ast.BinOp, ast.Call})

RuleBody = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class Runtime:
    """What the emitted code needs of the interpreter besides its methods: its operator table, and the
    markers its blocks and calls read (lang/interp passes its own)."""

    operators: Mapping[type[ast.AST], Callable[..., Any]]
    #: `_interrupt` after a decision made as a statement
    decided: object
    #: `retval` after `return` or `return None` (asteval's ReturnedNone)
    returned_none: object
    #: the globals of every function compiled for it: read-only to the emitted code, so one dict serves all
    names: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", _globals(self))


class _Unsupported(Exception):
    """A shape the emitter does not take: that top level, or that def, runs on the walk."""


def _undefined(name: str) -> None:
    raise NameError(f"name '{name}' is not defined")


def _globals(runtime: Runtime) -> dict[str, Any]:
    """What the emitted function may name besides its arguments: the guards, and no builtins."""
    names: dict[str, Any] = {
        "_DECIDED": runtime.decided,
        "_ReturnedNone": runtime.returned_none,
        "__builtins__": {},
        "_mono": time.monotonic,
        "_undefined": _undefined,
        "_RuleFunction": RuleFunction,
        "_FunctionType": FunctionType,
        "_CONTAINERS": CONTAINERS,
        "_compare": compare,
        "_charge": allocation.charge,
        "_slice": slice,
    }
    for op, fn in COMPARISONS.items():
        names[f"_cmp_{op.__name__}"] = fn
        names[f"_op_{op.__name__}"] = op
    for kind, fn in runtime.operators.items():
        names[f"_ops_{kind.__name__}"] = fn
    return names


class _Emitter:
    def __init__(self, function: bool) -> None:
        #: a def's body (a decision sets _interrupt and returns; `return` is compiled), or the top level
        self.function = function
        self.lines: list[str] = []
        self.depth = 1
        self.temps = 0
        self.nodes: list[ast.AST] = []
        self.index: dict[int, int] = {}
        self.constants: list[Any] = []

    def at(self, node: ast.AST) -> int:
        """The node's index in hr_nodes."""
        key = id(node)
        found = self.index.get(key)
        if found is None:
            found = self.index[key] = len(self.nodes)
            self.nodes.append(node)
        return found

    def line(self, text: str) -> None:
        self.lines.append(" " * self.depth + text)  # one space a level: deep elif chains stay short

    def temp(self) -> str:
        self.temps += 1
        return f"t{self.temps}"

    # -- statements -------------------------------------------------------------------------

    def block(self, body: list[ast.stmt]) -> None:
        if not body:
            self.line("pass")
        for stmt in body:
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:
        k = self.at(node)
        cls = node.__class__
        if cls not in NATIVE_STATEMENTS or (cls is ast.Assign and not node.targets) or (  # type: ignore[attr-defined]
                cls is ast.Return and not self.function):
            # RuleInterpreter.run counts its step; a decision it made, or anything else that stops a
            # block at the top level, ends the run as _block would
            self.line(f"I.run(hr_nodes[{k}])")
            self.line(f"if I._interrupt is not None: return{'' if self.function else ' I.decision'}")
            return
        self.line(f"hr_stmt = {k}")  # for a helper that names the statement it was called from (passwords)
        self.step(k)
        if cls is ast.Pass:
            return
        if cls is ast.Return:
            self.returns(node, k)  # type: ignore[arg-type]
            return
        if cls is ast.Expr:
            value = node.value  # type: ignore[attr-defined]
            if value.__class__ is ast.Call:
                self.call(value, statement=True)
            else:
                self.expr(value)
            return
        if cls is ast.Assign:
            value = self.expr(node.value)  # type: ignore[attr-defined]
            for target in node.targets:  # type: ignore[attr-defined]
                if target.__class__ is ast.Name:
                    self.line(f"S[{ascii(target.id)}] = {value}")
                else:  # on_assign: node_assign, which checks what it assigns to
                    self.line(f"hr_at = {k}")
                    self.line(f"I.node_assign(hr_nodes[{self.at(target)}], {value})")
            return
        # If: the test, then one of the two blocks
        test = self.expr(node.test)  # type: ignore[attr-defined]
        self.line(f"if {test}:")
        self.depth += 1
        self.block(node.body)  # type: ignore[attr-defined]
        self.depth -= 1
        if node.orelse:  # type: ignore[attr-defined]
            self.line("else:")
            self.depth += 1
            self.block(node.orelse)  # type: ignore[attr-defined]
            self.depth -= 1

    def step(self, k: int) -> None:
        """RuleInterpreter.run's step and deadline check, for the node at index k."""
        self.line("I._steps -= 1")
        self.line(f"if I._steps < 0 or _mono() > D: I._check_budget(hr_nodes[{k}])")

    def returns(self, node: ast.Return, k: int) -> None:
        """on_return: the value through run() (a step of its own), ReturnedNone for None, and the
        Return node in _interrupt as on_return leaves it (the walk's blocks stop on it; _call_function
        clears it)."""
        if node.value is None:
            value = "(None)"
        else:
            self.step(self.at(node.value))
            value = self.expr(node.value)
        self.line(f"I.retval = _ReturnedNone if {value} is None else {value}")
        self.line(f"I._interrupt = hr_nodes[{k}]")
        self.line("return")

    # -- expressions: each returns a local name, or a parenthesized constant ----------------------

    def expr(self, node: ast.expr) -> str:
        cls = node.__class__
        if cls is ast.Constant:
            value = node.value  # type: ignore[attr-defined]
            if value.__class__ in _SINGLETONS:
                return f"({value!r})"
            # The node's own object, as the walk reads it: compile() would merge equal constants and
            # intern short strings, and `is` would then answer otherwise
            return self.constant(value)
        elif cls is ast.Tuple and hasattr(node, "hr_value"):  # folded by prepare(): the same tuple every run
            return self.constant(node.hr_value)
        elif cls in NATIVE_EXPRESSIONS:
            return getattr(self, f"on_{cls.__name__.lower()}")(node)  # type: ignore[no-any-return]
        return self.delegate(node)

    def constant(self, value: Any) -> str:
        """A constant read from K, the tuple of the rule's constants: never written into the source."""
        self.constants.append(value)
        return f"(K[{len(self.constants) - 1}])"

    def delegate(self, node: ast.expr) -> str:
        """The interpreter's handler for this node: as the parent handler would call it (hr_run)."""
        k = self.at(node)
        t = self.temp()
        self.line(f"hr_at = {k}")
        self.line(f"{t} = hr_nodes[{k}].hr_run(hr_nodes[{k}])")
        return t

    def on_name(self, node: ast.Name) -> str:
        if not isinstance(node.ctx, ast.Load):
            raise _Unsupported("a name stored inside an expression")
        return self.load(node.id, self.at(node))

    def load(self, name: str, k: int) -> str:
        """A name from the symtable, as on_name reads it; a miss is a NameError at node k."""
        t = self.temp()
        key = ascii(name)
        self.line(f"if {key} in S: {t} = S[{key}]")
        self.line(f"else: hr_at = {k}; _undefined({key})")
        return t

    def on_attribute(self, node: ast.Attribute) -> str:
        if not isinstance(node.ctx, ast.Load):
            raise _Unsupported("an attribute stored inside an expression")
        obj = self.expr(node.value)
        k = self.at(node)
        t = self.temp()
        self.line(f"hr_at = {k}")
        self.line(f"{t} = I.attribute({obj}, {ascii(node.attr)}, hr_nodes[{k}])")
        return t

    def on_subscript(self, node: ast.Subscript) -> str:
        if not isinstance(node.ctx, ast.Load):
            raise _Unsupported("a subscript stored inside an expression")
        key = self.expr(node.slice)  # on_subscript reads the index first
        value = self.expr(node.value)
        if value.startswith("("):  # (None)[k] is valid, but compile() warns of it (or fails, under -W error)
            literal, value = value, self.temp()
            self.line(f"{value} = {literal}")
        t = self.temp()
        self.line(f"hr_at = {self.at(node)}")
        if key.startswith("("):
            self.line(f"{t} = {value}[{key}]")  # a constant: never a slice
        else:
            self.line(f"{t} = {value}[{key}] if {key}.__class__ is not _slice else _charge({value}[{key}])")
        return t

    def on_compare(self, node: ast.Compare) -> str:
        left = self.expr(node.left)
        k = self.at(node)
        t = self.temp()
        if len(node.ops) == 1:
            right = self.expr(node.comparators[0])
            op = node.ops[0].__class__.__name__
            self.line(f"hr_at = {k}")
            plain = f"True if _cmp_{op}({left}, {right}) else False"
            guarded = f"True if _compare(_op_{op}, {left}, {right}) else False"
            right_node = node.comparators[0]
            if right.startswith("("):  # a constant: a scalar (no container), or a folded tuple (one)
                self.line(f"{t} = {plain if right_node.__class__ is ast.Constant else guarded}")
            else:
                self.line(f"{t} = ({plain}) if {right}.__class__ not in _CONTAINERS else ({guarded})")
            return t
        # a chain: every link through compare(), until the first false one (flat: a chain of any length
        # stays within the indentation Python's tokenizer takes)
        self.line(f"{t} = True")
        for i, (op_node, right_node) in enumerate(zip(node.ops, node.comparators)):
            if i:
                self.line(f"if {t}:")
                self.depth += 1
            right = self.expr(right_node)
            self.line(f"hr_at = {k}")
            self.line(f"if not _compare(_op_{op_node.__class__.__name__}, {left}, {right}): {t} = False")
            if i:
                self.depth -= 1
            left = right
        return t

    def on_boolop(self, node: ast.BoolOp) -> str:
        """The first value that decides, or the last: the next value is only looked at while the one
        before says go on (flat, like a chain)."""
        t = self.temp()
        go_on = f"if {t}:" if node.op.__class__ is ast.And else f"if not {t}:"
        for i, child in enumerate(node.values):
            if i:
                self.line(go_on)
                self.depth += 1
            self.line(f"{t} = {self.expr(child)}")
            if i:
                self.depth -= 1
        return t

    def on_unaryop(self, node: ast.UnaryOp) -> str:
        operand = self.expr(node.operand)
        t = self.temp()
        self.line(f"hr_at = {self.at(node)}")
        if node.op.__class__ is ast.Not:  # asteval's Not is `not a`
            self.line(f"{t} = not {operand}")
        else:
            self.line(f"{t} = _ops_{node.op.__class__.__name__}({operand})")
        return t

    def on_binop(self, node: ast.BinOp) -> str:
        left = self.expr(node.left)
        right = self.expr(node.right)
        t = self.temp()
        self.line(f"hr_at = {self.at(node)}")
        self.line(f"{t} = _ops_{node.op.__class__.__name__}({left}, {right})")
        return t

    def on_call(self, node: ast.Call) -> str:
        return self.call(node, statement=False)

    def call(self, node: ast.Call, statement: bool) -> str:
        """on_call: the function, the arguments in order, then who is called decides the guard."""
        if any(k.arg is None for k in node.keywords):
            raise _Unsupported("**kwargs")
        k = self.at(node)
        func_node = node.func
        if func_node.__class__ is ast.Name:  # on_call looks the name up itself: a miss is the call's error
            func = self.load(func_node.id, k)
        else:
            func = self.expr(func_node)
        args = "[" + "".join(self.expr(a) + ", " for a in node.args) + "]"
        kwargs = "{" + "".join(f"{ascii(kw.arg)}: {self.expr(kw.value)}, " for kw in node.keywords) + "}"
        t = self.temp()
        self.line(f"hr_at = {k}")
        self.line(f"if {func}.__class__ is _RuleFunction: {t} = I._call_function({func}, {args}, {kwargs})")
        if statement:  # a decision made as a statement ends the run with its value
            self.line(f"elif {func}.__class__ is _FunctionType and {func} in I.makers:")
            self.line(f"    I.decision = I.makers[{func}](*{args}, **{kwargs})")
            if self.function:  # _call_function ends the run from there
                self.line("    I._interrupt = _DECIDED")
                self.line("    return")
            else:
                self.line("    return I.decision")
        self.line(f"else: {t} = I._call_host({func}, {args}, {kwargs}, hr_nodes[{k}])")
        return t


def frame_position(names: Mapping[str, Any]) -> tuple[ast.AST, ast.AST] | None:
    """The node and the statement a compiled function was at, from its frame's locals (`hr_at`,
    `hr_stmt`, `hr_nodes`); None for any other frame. What a handler's `node` local is to the walk."""
    if "hr_at" not in names:
        return None
    nodes = names["hr_nodes"]
    return nodes[names["hr_at"]], nodes[names["hr_stmt"]]


def size(root: ast.AST) -> int:
    """The nodes of a top level or a def, without the defs inside it (each is compiled on its own)."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(c for c in ast.iter_child_nodes(node) if c.__class__ is not ast.FunctionDef)
    return count


def compile_body(tree: ast.Module, runtime: Runtime) -> RuleBody | None:
    """The rule's top level as one function `body(interp, symtable)`, run by RuleInterpreter.execute in
    place of its own walk; None when it is too big or takes a shape the emitter does not (it then runs
    interpreted, as it always could). The tree must have been through prepare()."""
    return _compiled(tree, tree.body, False, runtime, MAX_SOURCE, 0)[0]


def compile_function(node: ast.FunctionDef, runtime: Runtime, room: int) -> tuple[RuleBody | None, int]:
    """A def's body as one function `body(interp, frame)`, run by RuleInterpreter._call_function in
    place of its walk, or None as for compile_body; and what it takes of `room` (what is left of the
    rule's MAX_RULE_SOURCE): its source's characters, or all of the room when it does not fit in it, so
    the defs after it run on the walk too without being emitted one by one."""
    return _compiled(node, node.body, True, runtime, min(room, MAX_SOURCE), room)


def _compiled(root: ast.AST, body: list[ast.stmt], function: bool, runtime: Runtime,
              limit: int, room: int) -> tuple[RuleBody | None, int]:
    if size(root) > MAX_NODES:
        return None, 0
    source, nodes, constants = emit(body, function)
    if source is None:
        return None, 0
    if len(source) > limit:
        return None, room if len(source) > room else 0
    try:
        code = compile(source, "<hookrules compiled rule>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):  # nested past what Python's compiler takes
        return None, 0
    # The module's one constant that is code: hr_rule's. Made a function here, with the shared globals,
    # rather than by running the module (nothing of the emitted source runs until a rule does)
    function_code = next(c for c in code.co_consts if c.__class__ is CodeType)
    return FunctionType(function_code, runtime.names, "hr_rule", (tuple(nodes), tuple(constants))), len(source)


def emit(body: list[ast.stmt], function: bool = False) -> tuple[str | None, list[ast.AST], list[Any]]:
    """The emitted source, and the nodes and constants it refers to by index; (None, [], []) for an
    unsupported shape."""
    out = _Emitter(function)
    out.lines.append("def hr_rule(I, S, hr_nodes=(), K=()):")
    out.line("hr_at = hr_stmt = 0")
    out.line("D = I._deadline")
    try:
        for stmt in body:
            out.statement(stmt)
    except (_Unsupported, RecursionError):
        return None, [], []
    out.line("return" if function else "return I.decision")
    return "\n".join(out.lines) + "\n", out.nodes, out.constants


__all__ = ["MAX_NODES", "MAX_RULE_SOURCE", "MAX_SOURCE", "NATIVE_EXPRESSIONS", "NATIVE_STATEMENTS", "RuleBody",
           "Runtime", "compile_body", "compile_function", "emit", "frame_position", "size"]
