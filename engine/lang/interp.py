"""The only module that knows asteval: a restricted Interpreter that runs checked rule trees.

asteval supplies the node handlers; this subclass replaces the hot ones (run, name, attribute,
call, def) with leaner versions that also count steps, keep a deadline, refuse recursion and
let Python exceptions carry the failing node out, so errors point at file:line:col. Functions
are its own: asteval's Procedure scopes names dynamically (a function sees its caller's
variables, a returned function forgets its own); rules get Python's lexical scoping instead.
One interpreter belongs to one compiled rule and is used by one run at a time: runs are synchronous
on the server's event loop. The functions themselves (RuleFunction) live in lang/functions, the checks
made before a call, comparison or insert reaches C code in lang/boundary.
"""

from __future__ import annotations

import ast
import operator
import time
from collections.abc import Callable
from types import BuiltinMethodType, FunctionType, MethodDescriptorType, ModuleType
from typing import Any

from asteval import Interpreter
from asteval.astutils import OPERATORS as ASTEVAL_OPERATORS
from asteval.astutils import ReturnedNone, safe_getattr

from ..decisions import Decision
from . import allocation
from .builtins import Decided
from .checker import DENIED_ATTR_PREFIXES, DENIED_ATTRS
from .compiler import MAX_RULE_SOURCE, RuleBody, Runtime, compile_body, compile_function, frame_position
from .guards import (
    GUARDED_METHODS,
    GUARDED_OPERATORS,
    SIZED,
    SPREAD_FREE,
    bounded_text,
    check_size,
    check_spread,
    check_walk,
    format_value,
    join_fields,
    keys_of,
)
from .boundary import BULK_HASHING, COMPARISONS, INSERTS, SCANS, check_bulk, compare, container_method
from .functions import FRAME_BUDGET, MAX_CALL_DEPTH, CallsTooDeep, RuleAbort, RuleFunction, each, frames_of
from .passwords import RunBudget
from .nesting import Nesting
from .ordering import ORDERING, is_ordering, ordered
from .textmethods import TEXT_ARG_CHECKS
from .values import CONTAINERS, HELD, MUTABLE, BoundMethod, admit

# Everything the checker refuses is also switched off in asteval, so a tree that somehow skipped
# the checker still cannot loop, import, raise or open files.
_DISABLED_NODES = ("while", "try", "with", "raise", "import", "importfrom", "lambda", "delete", "assert", "print")

# Concrete and abstract classes can share a lower-cased name (Expr/expr, BoolOp/boolop): keep all.
_monotonic = time.monotonic

#: asteval's operators, with everything that can grow a value replaced by a size-guarded version
OPERATORS = {**ASTEVAL_OPERATORS, **GUARDED_OPERATORS}

#: a list or tuple literal this short is not charged to the run's allocation (bounded by the file)
_SMALL = 16

#: `_interrupt` after a decision made as a statement: every block stops as at a `return`
_DECIDED = object()

_FOREVER = float("inf")  # no deadline

#: what compiled code (lang/compiler) needs of this module: the operator table and the markers
RUNTIME = Runtime(OPERATORS, _DECIDED, ReturnedNone)

_NODE_CLASSES = [cls for cls in vars(ast).values() if isinstance(cls, type) and issubclass(cls, ast.AST)]


_CONSTANT = operator.attrgetter("value")
_FOLDED = operator.attrgetter("hr_value")
#: the constants a folded tuple may hold: immutable scalars, so the tuple is immutable all the way down
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _constant_items(node: ast.Tuple) -> bool:
    """A tuple literal read (not assigned to) whose items are all scalar constants, few enough that
    on_tuple would charge nothing for it."""
    return (isinstance(node.ctx, ast.Load) and len(node.elts) <= _SMALL
            and all(e.__class__ is ast.Constant and e.value.__class__ in _SCALARS for e in node.elts))


def _innermost_node(tb: Any) -> tuple[ast.AST | None, str]:
    """The deepest node a handler was working on when the exception left it, and the file of the
    deepest statement around it (a library's, when the error is inside one of its functions)."""
    found = None
    file = ""
    while tb is not None:
        names = tb.tb_frame.f_locals
        node = names.get("node")
        compiled = frame_position(names) if node is None else None
        if compiled is not None:  # a compiled frame (lang/compiler): its node, and its statement's file
            node, statement = compiled
            file = getattr(statement, "hr_file", file)
        if isinstance(node, ast.AST) and hasattr(node, "lineno"):
            found = node
            file = getattr(node, "hr_file", file)
        tb = tb.tb_next
    return found, file


class RuleInterpreter(Interpreter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(symtable={}, use_numpy=False, config={n: False for n in _DISABLED_NODES})
        self.symtable: dict[str, Any] = {}
        self.error: list[Any] = []
        self.code_text: list[str] = []
        self._calldepth: int = 0
        #: the walk's Python frames the calls in progress are charged (FRAME_BUDGET)
        self._frames = 0
        self._dispatch = {cls: self.node_handlers[cls.__name__.lower()] for cls in _NODE_CLASSES
                          if cls.__name__.lower() in self.node_handlers}
        self._defaults: dict[ast.FunctionDef, tuple[list[str], dict[str, Any]]] = {}
        self._active: list[RuleFunction] = []
        self._steps = 0
        self._deadline = 0.0
        #: the depths of the containers this run made (lang/nesting)
        self.nesting = Nesting()
        #: (class, attribute) pairs that passed every check, asteval's safe_getattr included: the
        #: verdict depends on the class only (types themselves and guarded methods are never cached)
        self._vetted: set[tuple[object, str]] = set()
        #: the innermost node that raised, and its file, for the error location
        self.error_node: ast.AST | None = None
        self.error_file = ""
        #: decision function -> its maker (builtins.decision_makers), for decisions made as statements
        self.makers: dict[Callable[..., None], Callable[..., Decision]] = {}
        self.decision: Decision | None = None
        #: characters of source its defs (a library's too) may still compile to (lang/compiler)
        self.compile_room = MAX_RULE_SOURCE
        #: what stops the statement lists: a Return, Break or Continue node, _DECIDED, or None
        self._interrupt: Any = None

    def prepare(self, tree: ast.Module, path: str = "") -> None:
        """Bind every node of the tree to its handler once, so run() skips the per-node lookup.

        Statements also learn their file (`hr_file`), for coverage and --explain across libraries; each
        def what a call of it is charged against FRAME_BUDGET (`hr_frames`) and, on this class (not a
        subclass that watches nodes), its body compiled (`hr_body`, lang/compiler) while the rule's
        `compile_room` lasts.
        """
        plain = type(self).on_tuple is RuleInterpreter.on_tuple  # a subclass that watches tuples sees each
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt):
                node.hr_file = path  # type: ignore[attr-defined]
            # only statements and expressions run; contexts and operators (ast.Load, ast.Add, ...) are
            # singletons shared by every tree in the process and must not hold an interpreter
            if isinstance(node, (ast.stmt, ast.expr, ast.Module)):
                node.hr_run = self._dispatch.get(node.__class__, self.unimplemented)  # type: ignore[union-attr]
            if isinstance(node, ast.Call):  # a call that is a statement of its own may be a decision
                node.hr_statement = False  # type: ignore[attr-defined]
            if node.__class__ is ast.Constant:  # its value, read by C: no Python frame (asteval's on_constant)
                node.hr_run = _CONSTANT  # type: ignore[attr-defined]
            elif plain and node.__class__ is ast.Tuple and _constant_items(node):
                # ("+", "#"): the same immutable, flat tuple on every run (as CPython's constant tuples),
                # which on_tuple would rebuild, measure and find flat and small every time
                node.hr_value = tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
                node.hr_run = _FOLDED  # type: ignore[attr-defined]
        for node in ast.walk(tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                node.value.hr_statement = True  # type: ignore[attr-defined]
        # Each def's body as one function (lang/compiler), which _call_function runs in place of the walk
        compiled = self.compiles()
        for node in ast.walk(tree):
            if node.__class__ is ast.FunctionDef:
                node.hr_frames = frames_of(node)  # type: ignore[attr-defined]
                body = None
                if compiled and self.compile_room > 0:
                    body, used = compile_function(node, RUNTIME, self.compile_room)
                    self.compile_room -= used
                node.hr_body = body  # type: ignore[attr-defined]

    def compiles(self) -> bool:
        """Whether this interpreter runs compiled code (lang/compiler): not a subclass, such as
        trace.TracingInterpreter, which watches every node it runs."""
        return type(self) is RuleInterpreter

    def compiled_body(self, tree: ast.Module) -> RuleBody | None:
        """The prepared tree's top level compiled, for execute(); None where it runs on the walk."""
        return compile_body(tree, RUNTIME) if self.compiles() else None

    def execute(self, tree: ast.Module, symtable: dict[str, Any], max_steps: int, deadline: float,
                body: RuleBody | None = None) -> Any:
        """Run a whole rule; returns the Decision it made, or None when it made none.

        `body`: the tree's top level compiled (lang/compiler), run in place of the walk, with the same
        state around it."""
        self.symtable = symtable
        self.retval = None
        self._interrupt = None
        if self.error or self._active or self.code_text or self._calldepth:  # left over by a failed run
            self.error = []
            self.error_msg = None
            self._active = []
            self.code_text = []
            self._calldepth = 0
            self._frames = 0
        self.error_node = None
        self.error_file = ""
        self.decision = None
        self._steps = max_steps - 1  # the module's own step (run() is skipped for it)
        self._deadline = RunBudget.deadline = deadline  # slow helpers refuse what cannot fit (passwords._cached)
        allocation.ALLOCATION.left = allocation.MAX_ALLOCATION  # what the run makes in all (allocation.start())
        try:
            if body is not None:
                return body(self, symtable)
            self._block(tree.body)
            return self.decision  # made as a statement, or None: no decision
        except Decided as made:  # made inside an expression or a function
            return made.decision
        except Exception as exc:
            self.error_node, self.error_file = _innermost_node(exc.__traceback__)
            raise
        except RuleAbort as abort:  # its node is the location; the file is that of the statement it stopped
            self.error_node, self.error_file = abort.node, _innermost_node(abort.__traceback__)[1]
            raise
        finally:
            self.symtable = {}  # nothing a run bound survives it
            RunBudget.deadline = _FOREVER
            allocation.ALLOCATION.left = _FOREVER  # allocation.stop(), inline as start is
            self.nesting.reset()  # nor what the depth meter remembered of it (so a run starts with none)

    # -- the dispatch loop ----------------------------------------------------------------------

    def run(self, node: Any, expr: Any = None, lineno: Any = None, with_raise: bool = True) -> Any:
        """Statements (and asteval's own handlers) come through here; it counts the steps.

        The hot expression handlers below call a child's bound handler directly (`n.hr_run(n)`),
        skipping this frame: expressions without a loop or call are bounded by the file's size, and
        every loop, comprehension item and function body statement still counts a step.
        No retval/_interrupt checks either (asteval has them on every node): the statement-list
        handlers stop at a return, break or continue instead.
        """
        if node is None:
            return None
        self._steps -= 1
        # The clock is read on every statement (about 50 ns): one costly statement (a sort of a big
        # list) must not run on for hundreds of steps past the deadline.
        if self._steps < 0 or _monotonic() > self._deadline:
            self._check_budget(node)
        return node.hr_run(node)  # bound by prepare()

    def _block(self, body: list[ast.stmt]) -> None:
        run = self.run
        for stmt in body:
            run(stmt)
            if self._interrupt is not None:
                return

    def _check_budget(self, node: ast.AST) -> None:
        if self._steps < 0:
            raise RuleAbort("the rule ran out of steps (an unbounded loop?)", node, steps=True)
        if _monotonic() > self._deadline:
            raise RuleAbort("the rule ran past its deadline (a long loop, or a slow helper such as bcrypt_check "
                            "just before this line)", node)

    # -- hot handlers, leaner than asteval's ----------------------------------------------------

    def on_name(self, node: Any) -> Any:
        try:
            return self.symtable[node.id]
        except KeyError:
            raise NameError(f"name '{node.id}' is not defined") from None

    def on_attribute(self, node: Any) -> Any:
        value_node = node.value
        return self.attribute(value_node.hr_run(value_node), node.attr, node)

    def attribute(self, obj: Any, attr: str, node: Any) -> Any:
        """`obj.attr` in a rule: the Attribute node's handler, after its value (compiled rules call it too)."""
        if (obj.__class__, attr) in self._vetted:  # this class and attribute passed every check before
            try:
                value = getattr(obj, attr)
            except AttributeError:
                raise AttributeError(f"'{type(obj).__name__}' has no attribute '{attr}'") from None
            if value.__class__ is ModuleType:
                raise AttributeError(f"attribute '{attr}' is a module: not allowed in rules")
            return value if value.__class__ in HELD else admit(value)
        return self._attribute(obj, attr, node)

    def _attribute(self, obj: Any, attr: str, node: Any) -> Any:
        """Every check, for a class and attribute not seen before (or a type, or a guarded method)."""
        if attr.startswith("_") or attr in DENIED_ATTRS or attr.startswith(DENIED_ATTR_PREFIXES):
            raise AttributeError(f"attribute '{attr}' is not allowed in rules")
        if obj.__class__ is RuleFunction:
            raise AttributeError(f"functions have no attributes ('{attr}')")
        if attr in GUARDED_METHODS and (isinstance(obj, (str, bytes)) or obj is str or obj is bytes) \
                and hasattr(obj, attr):
            guarded = GUARDED_METHODS[attr]
            return guarded if isinstance(obj, type) else BoundMethod(guarded, obj)
        # asteval's own guard as a second line (per-type deny-lists, unsafe modules)
        safe_getattr(obj, attr, self.raise_exception, node)
        try:
            value = getattr(obj, attr)
        except AttributeError:
            raise AttributeError(f"'{type(obj).__name__}' has no attribute '{attr}'") from None
        if isinstance(value, ModuleType):
            raise AttributeError(f"attribute '{attr}' is a module: not allowed in rules")
        value = admit(value)  # lang/values: views become lists, what is outside the set is refused
        if not isinstance(obj, type):  # a type's verdict depends on which type, not its class
            self._vetted.add((obj.__class__, attr))
        return value

    # Statement lists stop at return/break/continue (asteval checks that in run(), per node).
    def on_module(self, node: Any) -> None:
        self._block(node.body)

    def on_if(self, node: Any) -> None:
        test = node.test
        self._block(node.body if test.hr_run(test) else node.orelse)

    def on_for(self, node: Any) -> None:
        for value in each(self.run(node.iter)):
            # cleared before the target is assigned: a target that calls a def (`for d[f()] in ...`) must
            # not find the last item's `continue` still set, which would stop f's body at its first statement
            self._interrupt = None
            self.node_assign(node.target, value)
            self._block(node.body)
            interrupt = self._interrupt
            if interrupt is not None and interrupt.__class__ is not ast.Continue:
                if interrupt.__class__ is ast.Break:
                    self._interrupt = None
                return  # break, or a return inside the loop (left set for the function to see)
        self._interrupt = None  # a `continue` in the last item
        # What the else block leaves stands, as in Python: a decision, a return, an enclosing loop's break.
        self._block(node.orelse)

    def on_assign(self, node: Any) -> None:
        value_node = node.value
        value = value_node.hr_run(value_node)
        for target in node.targets:
            if target.__class__ is ast.Name:  # checked names: no re-validation per run
                self.symtable[target.id] = value
            else:
                self.node_assign(target, value)

    def on_augassign(self, node: Any) -> None:
        # asteval builds new Assign/BinOp nodes here on every run; prepared trees need no new nodes
        target = node.target
        if isinstance(target, ast.Name):
            current = self._load_name(target.id)
        elif isinstance(target, ast.Subscript):
            current = self.run(target.value)[self.run(target.slice)]
        else:
            raise TypeError("augmented assignment works on names and subscripts only")
        self.node_assign(target, OPERATORS[node.op.__class__](current, self.run(node.value)))

    def _load_name(self, name: str) -> Any:
        try:
            return self.symtable[name]
        except KeyError:
            raise NameError(f"name '{name}' is not defined") from None

    def node_assign(self, node: ast.AST, val: Any) -> None:
        # Names were vetted by the checker; asteval re-tokenizes each one on every assignment.
        cls = node.__class__
        if cls is ast.Name:
            self.symtable[node.id] = val  # type: ignore[attr-defined]
        elif cls is ast.Attribute:
            raise AttributeError(f"cannot assign to attribute '{node.attr}': event data is read-only")  # type: ignore[attr-defined]
        elif cls is ast.Subscript:
            target = self.run(node.value)  # type: ignore[attr-defined]
            key = self.run(node.slice)  # type: ignore[attr-defined]
            target[key] = val
            if target.__class__ in MUTABLE:  # a value put into a list or dict: it is as deep as that makes it
                self.nesting.inserted(target, val, 0 if key.__class__ is slice else 1)
                self.nesting.inserted(target, key, 1)
        else:
            super().node_assign(node, val)  # tuple unpacking (which comes back here per name)

    # Literals: every container a rule makes is measured (lang/nesting); one with many keys or
    # members is checked for keys chosen to collide before one C call hashes them all.
    def on_list(self, node: Any) -> list[Any]:
        run = self.run
        items = [run(e) for e in node.elts]
        if len(items) > _SMALL:
            allocation.charge(items)
        return items if CONTAINERS.isdisjoint(map(type, items)) else self.nesting.made(items)

    def on_tuple(self, node: Any) -> tuple[Any, ...]:
        run = self.run
        items = tuple([run(e) for e in node.elts])
        if len(items) > _SMALL:
            allocation.charge(items)
        return items if CONTAINERS.isdisjoint(map(type, items)) else self.nesting.made(items)

    def on_set(self, node: Any) -> set[Any]:
        run = self.run
        members = [run(e) for e in node.elts]
        if len(members) > SPREAD_FREE or tuple in map(type, members):  # tuples: each hash walks all of one
            check_spread(members)
        return self.nesting.made(allocation.charge(set(members)))  # type: ignore[no-any-return]

    def on_dict(self, node: Any) -> dict[Any, Any]:
        run = self.run
        keys = [run(k) for k in node.keys]
        if len(keys) > SPREAD_FREE or tuple in map(type, keys):
            check_spread(keys)
        return self.nesting.made(allocation.charge(dict(zip(keys, [run(v) for v in node.values]))))  # type: ignore[no-any-return]

    # Comprehensions: asteval deep-copies shadowed names and re-validates targets on every run.
    def on_listcomp(self, node: Any) -> list[Any]:
        out: list[Any] = []
        self._comprehend(node.generators, lambda: out.append(self.run(node.elt)))
        return self.nesting.made(allocation.charge(out))  # type: ignore[no-any-return]

    def on_setcomp(self, node: Any) -> set[Any]:
        out: set[Any] = set()
        self._comprehend(node.generators, lambda: out.add(self.run(node.elt)))
        return self.nesting.made(allocation.charge(out))  # type: ignore[no-any-return]

    def on_dictcomp(self, node: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}

        def emit() -> None:
            out[self.run(node.key)] = self.run(node.value)

        self._comprehend(node.generators, emit)
        return self.nesting.made(allocation.charge(out))  # type: ignore[no-any-return]

    def _comprehend(self, generators: list[ast.comprehension], emit: Any) -> None:
        """Python 3 scoping: the loop names are local to the comprehension, the outer ones come back."""
        names = getattr(generators[0], "hr_names", None)
        if names is None:  # the same for every run: found once
            names = {n.id for g in generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            generators[0].hr_names = names  # type: ignore[attr-defined]
        saved = {n: self.symtable[n] for n in names if n in self.symtable}
        try:
            self._generate(generators, 0, emit)
        finally:
            for name in names:
                if name in saved:
                    self.symtable[name] = saved[name]
                else:
                    self.symtable.pop(name, None)

    def _generate(self, generators: list[ast.comprehension], index: int, emit: Any) -> None:
        gen = generators[index]
        last = index == len(generators) - 1
        for value in each(self.run(gen.iter)):
            self._steps -= 1  # one step per item: the element may be a leaf, which costs none
            if self._steps < 0 or _monotonic() > self._deadline:
                self._check_budget(gen.iter)  # the comprehension node itself has no position
            self.node_assign(gen.target, value)
            if all(self.run(cond) for cond in gen.ifs):
                if last:
                    emit()
                else:
                    self._generate(generators, index + 1, emit)

    def on_boolop(self, node: Any) -> Any:
        is_and = node.op.__class__ is ast.And
        value = None
        for child in node.values:
            value = child.hr_run(child)
            if bool(value) is not is_and:
                return value
        return value

    def on_compare(self, node: Any) -> Any:
        left_node = node.left
        left = left_node.hr_run(left_node)
        ops = node.ops
        if len(ops) == 1:  # a == b: no chain to walk
            right_node = node.comparators[0]
            right = right_node.hr_run(right_node)
            if right.__class__ not in CONTAINERS:  # nothing for compare()'s guards to walk: its operator
                return bool(COMPARISONS[ops[0].__class__](left, right))
            return bool(compare(ops[0].__class__, left, right))
        for op, right_node in zip(ops, node.comparators):
            right = right_node.hr_run(right_node)
            if not compare(op.__class__, left, right):
                return False
            left = right
        return True

    def on_binop(self, node: Any) -> Any:
        # asteval's operator table: its +, * and ** refuse results too large (safe_add, safe_mult, safe_pow)
        left, right = node.left, node.right
        return OPERATORS[node.op.__class__](left.hr_run(left), right.hr_run(right))

    def on_unaryop(self, node: Any) -> Any:
        operand = node.operand
        return OPERATORS[node.op.__class__](operand.hr_run(operand))

    def on_subscript(self, node: Any) -> Any:
        value, index = node.value, node.slice
        key = index.hr_run(index)
        if key.__class__ is slice:  # a slice is a new value: charged to the run (lang/allocation)
            return allocation.charge(value.hr_run(value)[key])
        return value.hr_run(value)[key]

    def on_formattedvalue(self, node: Any) -> Any:
        # asteval formats with str()/repr() of the whole value: a list of big lists is gigabytes
        value_node = node.value
        value = value_node.hr_run(value_node)
        conversion = node.conversion
        if conversion == 114:  # !r
            value = bounded_text(value, repr)
        elif conversion == 97:  # !a
            value = bounded_text(value, ascii)
        elif conversion == 115 or not isinstance(value, (str, int, float, bool)):  # !s, or a container
            value = bounded_text(value, str)
        spec = self.run(node.format_spec) if node.format_spec is not None else ""
        return format_value(value, spec)

    def on_joinedstr(self, node: Any) -> str:
        return join_fields([self.run(v) for v in node.values])

    def on_expr(self, node: Any) -> Any:
        value = node.value
        return value.hr_run(value)

    def on_call(self, node: Any) -> Any:
        func_node = node.func
        if func_node.__class__ is ast.Name:  # the usual case, inline
            try:
                func = self.symtable[func_node.id]
            except KeyError:
                raise NameError(f"name '{func_node.id}' is not defined") from None
        else:
            func = func_node.hr_run(func_node)
        arg_nodes = node.args
        if len(arg_nodes) == 1:  # no list comprehension frame for the most common call shapes
            only = arg_nodes[0]
            args = [only.hr_run(only)]
        elif arg_nodes:
            args = [a.hr_run(a) for a in arg_nodes]
        else:
            args = []
        kwargs: dict[str, Any] = {k.arg: k.value.hr_run(k.value) for k in node.keywords} if node.keywords else {}
        if func.__class__ is RuleFunction:
            return self._call_function(func, args, kwargs)
        if node.hr_statement and func.__class__ is FunctionType:  # a decision made as a statement ends the run
            maker = self.makers.get(func)
            if maker is not None:  # a decision: its value, and every block stops (no exception to unwind)
                self.decision = maker(*args, **kwargs)
                self._interrupt = _DECIDED
                return None
        return self._call_host(func, args, kwargs, node)

    def _call_host(self, func: Any, args: list[Any], kwargs: dict[str, Any], node: Any) -> Any:
        """A call of anything but a rule's def, with every check: from the rule (on_call), or from C
        code calling a key= function back (lang/ordering, through _order), so both meet the same guards."""
        if not callable(func):
            raise TypeError(f"'{type(func).__name__}' object is not callable")
        method = None
        fcls = func.__class__
        if fcls is BuiltinMethodType:  # len(), s.upper(), d.update(): a method of a container?
            owner = func.__self__
            ocls = owner.__class__
            if ocls in CONTAINERS or owner is dict:
                method = (owner, func.__name__, args)
                if ocls is list and method[1] == "sort":
                    return self._order(func, args, kwargs, node)
            elif func in ORDERING:  # sorted, min, max: compared and key= called under the guards
                return self._order(func, args, kwargs, node)
            elif ocls is str or ocls is bytes:  # s.strip(chars), b.decode(codec): arguments bounded
                text_check = TEXT_ARG_CHECKS.get(func.__name__)
                if text_check is not None:
                    text_check(func.__name__, args, kwargs)
        elif fcls is MethodDescriptorType:  # list.append(l, x), taken from the type
            if is_ordering(func):  # list.sort(l)
                return self._order(func, args, kwargs, node)
            method = container_method(func, args, kwargs)
        elif func is dict and args:
            check_spread(keys_of(args[0], True))
        if method is not None:
            name = method[1]
            if name in BULK_HASHING:
                check_bulk(*method)
            elif name in SCANS and method[2]:  # l.count(x): x compared with every item, as `x in l`
                check_walk(method[2][0], method[0], ast.In)
        result = func(*args, **kwargs) if kwargs else func(*args)
        cls = result.__class__
        if cls not in HELD:  # lang/values: a view or an iterator becomes a list, anything else is refused
            result = admit(result)
            cls = result.__class__
        if cls in SIZED:  # a method or helper may have made its input several times bigger
            check_size(result)
        if cls in CONTAINERS and (cls is not tuple and cls is not list or len(result) > 16
                                  or not CONTAINERS.isdisjoint(map(type, result))):
            self.nesting.made(result)  # (a short flat list or tuple, one level deep, needs no look)
        if method is not None and method[0].__class__ in MUTABLE:
            level = INSERTS.get(method[1])
            if level is not None:  # append, update, ...: the container is as deep as what went in makes it
                owner = method[0]
                for arg in method[2]:
                    self.nesting.inserted(owner, arg, level)
                for arg in kwargs.values():
                    self.nesting.inserted(owner, arg, 1)
        return result

    def _order(self, func: Any, args: list[Any], kwargs: dict[str, Any], node: Any) -> Any:
        """sorted/min/max/list.sort (lang/ordering): the key function is called from here, one step
        a call, with the same checks as a call in the rule; the result is measured like any other."""
        def call(key: Any, item: Any) -> Any:
            self._steps -= 1
            if self._steps < 0 or _monotonic() > self._deadline:
                self._check_budget(node)
            if key.__class__ is RuleFunction:
                return self._call_function(key, [item], {})
            return self._call_host(key, [item], {}, node)

        result = ordered(func, args, kwargs, call)
        if result.__class__ is list:
            check_size(result)
            self.nesting.made(result)
        return result

    def on_functiondef(self, node: Any) -> None:
        # Defaults are constants (checker), so they are evaluated once per load, not per run.
        signature = self._defaults.get(node)
        if signature is None:
            params = [a.arg for a in node.args.args]
            values = [ast.literal_eval(d) for d in node.args.defaults]
            signature = self._defaults[node] = (params, dict(zip(params[len(params) - len(values):], values)))
        # The scope it is defined in is its closure: the run's globals, or the enclosing call's locals.
        self.symtable[node.name] = RuleFunction(node, signature[0], signature[1], self.symtable, self)

    def _call_function(self, func: RuleFunction, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if func in self._active:
            raise RecursionError(f"function '{func.name}' called recursively: recursion is not allowed")
        if len(self._active) >= MAX_CALL_DEPTH:  # bounds of the language's, not Python's stack
            raise CallsTooDeep(f"functions call each other more than {MAX_CALL_DEPTH} deep")
        frames = getattr(func._node, "hr_frames", None) or frames_of(func._node)
        if self._frames + frames > FRAME_BUDGET:
            raise CallsTooDeep(f"functions call each other too deeply for how deeply their bodies nest "
                               f"({len(self._active) + 1} calls)")
        frame = func.bind(args, kwargs)
        caller = self.symtable
        self.symtable = frame
        self._active.append(func)
        self._calldepth += 1  # asteval's on_return refuses a return at depth 0
        self._frames += frames
        try:
            body = getattr(func._node, "hr_body", None)
            if body is not None:
                body(self, frame)
            else:
                self._block(func._node.body)
            result = self.retval
            decided = self._interrupt is _DECIDED
        finally:
            self.symtable = caller
            self._active.pop()
            self._calldepth -= 1
            self._frames -= frames
            self.retval = None
            self._interrupt = None
        if decided:  # inside a function the caller may be in mid-expression: end the run the sure way
            raise Decided(self.decision)  # type: ignore[arg-type]
        return None if result is None or result is ReturnedNone else result
