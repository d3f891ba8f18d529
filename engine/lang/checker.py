"""Static check of a rule file, before it may serve: the Starlark-like subset, as an allow-list.

Everything is refused by default; `ALLOWED_NODES` lists what a rule may contain and `HINTS` says what
to write instead of the rest. Every problem in a file is reported at once, with file:line:col.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from dataclasses import dataclass, fields

from ..errors import Location, RuleError, RuleLoadError, char_col, source_lines
from ..events import Client, Conn, Message, SubOpts
from ..hooks import HOOKS, PUBLISH, RULE_SUFFIX, HookInfo, answered_hooks
from ..emqxoptions import CHECKS as EMQX_OPTION_CHECKS
from ..emqxoptions import OPTIONS as EMQX_OPTIONS
from ..emqxoptions import carriable
from ..modifiers import SCHEMAS as MODIFIER_SCHEMAS
from .builtins import DECISIONS, HELPERS, provided_names, validate_filter
from .helpers import PATTERN_HELPERS, pattern_problem

MAX_SOURCE_BYTES = 256 * 1024
MAX_DEPTH = 64
TOPICS_NAME = "TOPICS"

ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset(
    {
        ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.If, ast.For, ast.Break, ast.Continue,
        ast.Pass, ast.FunctionDef, ast.Return, ast.arguments, ast.arg, ast.keyword, ast.comprehension,
        ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.IfExp, ast.Compare, ast.Call, ast.Constant,
        ast.Attribute, ast.Subscript, ast.Slice, ast.Name, ast.List, ast.Tuple, ast.Dict, ast.Set,
        ast.ListComp, ast.DictComp, ast.SetComp, ast.JoinedStr, ast.FormattedValue,
        ast.Load, ast.Store,
        ast.And, ast.Or, ast.Not, ast.Invert, ast.UAdd, ast.USub,
        ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
        ast.LShift, ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd,
        ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
    }
)

#: Refused constructs: (what is wrong, what to do instead), keyed by AST node name.
HINTS: dict[str, tuple[str, str]] = {
    "While": ("'while' is not allowed in rules", "loop over a finite collection with 'for x in ...'"),
    "Import": ("'import' is not allowed in rules", "the helpers (topic_match, json_decode, log, ...) need no import"),
    "ImportFrom": ("'import' is not allowed in rules", "the helpers (topic_match, json_decode, log, ...) need no import"),
    "ClassDef": ("'class' is not allowed in rules", "use dicts, tuples and functions (def)"),
    "Global": ("'global' is not allowed in rules", "return a value from the function instead"),
    "Nonlocal": ("'nonlocal' is not allowed in rules", "return a value from the function instead"),
    "Try": ("'try' is not allowed in rules", "check values first (e.g. 'if key in d:'); a failing rule is answered by the hook's failure policy"),
    "TryStar": ("'try' is not allowed in rules", "check values first; a failing rule is answered by the hook's failure policy"),
    "Raise": ("'raise' is not allowed in rules", "call deny(reason) to refuse"),
    "With": ("'with' is not allowed in rules", "rules have no resources to open or close"),
    "AsyncWith": ("'async with' is not allowed in rules", "rules run synchronously"),
    "AsyncFor": ("'async for' is not allowed in rules", "rules run synchronously"),
    "AsyncFunctionDef": ("'async def' is not allowed in rules", "use a plain 'def'"),
    "Await": ("'await' is not allowed in rules", "rules run synchronously"),
    "Yield": ("'yield' is not allowed in rules", "return a list instead"),
    "YieldFrom": ("'yield' is not allowed in rules", "return a list instead"),
    "Lambda": ("'lambda' is not allowed in rules", "define a function with 'def'"),
    "Delete": ("'del' is not allowed in rules", "build a new value instead; event data is read-only"),
    "Assert": ("'assert' is not allowed in rules", "write 'if not condition: deny(reason)'"),
    "GeneratorExp": ("generator expressions are not allowed in rules", "use a list comprehension [x for x in ...]"),
    "NamedExpr": ("':=' is not allowed in rules", "assign on a line of its own"),
    "Starred": ("'*' unpacking is not allowed in rules", "pass the arguments one by one"),
    "Match": ("'match' is not allowed in rules", "use if/elif/else"),
    "AnnAssign": ("annotations are not allowed in rules", "write 'name = value'"),
    "MatMult": ("'@' is not allowed in rules", "rules have no matrices"),
}

#: Attributes refused although they have no leading underscore: they reach outside the sandbox
#: (str.format walks attributes) or allocate without bound ("x".ljust(10**9)).
DENIED_ATTRS: dict[str, str] = {
    "format": "build strings with + or f-strings: str.format can read hidden attributes",
    "format_map": "build strings with + or f-strings: str.format_map can read hidden attributes",
    "mro": "rules cannot inspect types",
    "ljust": "pad with + and a short literal", "rjust": "pad with + and a short literal",
    "center": "pad with + and a short literal", "zfill": "pad with + and a short literal",
    "expandtabs": "replace tabs with .replace('\\t', ' ')",
    "translate": "use .replace(...): translate can grow a string without bound",
    "maketrans": "use .replace(...): translate can grow a string without bound",
    "to_bytes": "int.to_bytes allocates what it is asked for: build bytes from short literals",
}
DENIED_ATTR_PREFIXES = ("func_", "im_", "gi_", "cr_", "ag_", "f_", "tb_", "co_")

_BIG_NUMBER = re.compile(r"\d{4,}")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One `load("lib/x.star", "f", g="h")`: the module path and (alias, exported name) pairs."""

    module: str
    names: tuple[tuple[str, str], ...]
    node: ast.Call


@dataclass(frozen=True, slots=True)
class CheckedRule:
    tree: ast.Module
    topics: tuple[str, ...]
    loads: tuple[LoadSpec, ...] = ()


#: Stands for "a library file" where a hook is expected: it reads no event and makes no decision.
LIBRARY = HookInfo("library", "emqx", frozenset(), ())
LIBRARY_NAMES = ("data",)


#: the fields of the event objects rules read, for spotting a misspelt one (client.usernam)
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in fields(cls))
    for name, cls in (("client", Client), ("message", Message), ("conn", Conn), ("subopts", SubOpts))
}


def _plain_signature(signature: inspect.Signature) -> str:
    """(filter, topic), without the annotations a rule author does not write."""
    return "(" + ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                           for p in signature.parameters.values()) + ")"


def _col(lines: list[str], lineno: int, col_offset: int) -> int:
    if 1 <= lineno <= len(lines):
        return char_col(lines[lineno - 1], col_offset)
    return col_offset + 1


class _Checker:
    def __init__(self, path: str, text: str, hook: HookInfo | None):
        self.path = path
        self.lines = source_lines(text)
        self.library = hook is None
        self.hook = LIBRARY if hook is None else hook
        self.errors: list[RuleError] = []
        common = provided_names() - set(DECISIONS)
        self.provided = common if hook is None else set(hook.all_names) | common | hook.decisions
        self.bound: set[str] = set()
        self.topics: tuple[str, ...] = ()
        self.loads: list[LoadSpec] = []
        self._unknown_count = 0
        self._load_statements: set[int] = set()

    def error(self, node: ast.AST | None, message: str, hint: str = "", code: str = "check_error") -> None:
        line = getattr(node, "lineno", 0) or 0
        col = _col(self.lines, line, getattr(node, "col_offset", 0) or 0) if line else 0
        src = self.lines[line - 1] if 1 <= line <= len(self.lines) else ""
        self.errors.append(RuleError(code, Location(self.path, line, col), message, hint, src))  # type: ignore[arg-type]

    # -- passes ---------------------------------------------------------------------------------

    def check(self, tree: ast.Module) -> None:
        self._collect_loads(tree)
        self._collect_bindings(tree)
        self._walk(tree, 0)
        self._check_topics(tree)
        self._check_recursion(tree)

    def _collect_loads(self, tree: ast.Module) -> None:
        """Starlark's load(): a top-level statement of literal strings, resolved when the file loads."""
        for stmt in tree.body:
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "load"):
                continue
            self._load_statements.add(id(stmt))
            spec = self._load_spec(call)
            if spec is not None:
                self.loads.append(spec)
                for alias, _ in spec.names:
                    self._bind(call, alias, False)

    def _load_spec(self, call: ast.Call) -> LoadSpec | None:
        usage = 'write load("lib/acl.star", "can_publish", check="check_user")'
        args = call.args
        if not args or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args) \
                or not all(isinstance(k.value, ast.Constant) and isinstance(k.value.value, str) for k in call.keywords):
            self.error(call, "load() takes only literal strings: the module, then the names to import", usage)
            return None
        module = args[0].value  # type: ignore[attr-defined]
        names = [(a.value, a.value) for a in args[1:]] + [(k.arg, k.value.value) for k in call.keywords]  # type: ignore[attr-defined]
        if not names:
            self.error(call, f"load(\"{module}\") imports nothing", usage)
            return None
        problem = module_path_problem(module)
        if problem:
            self.error(args[0], problem, "libraries live under the rules directory, e.g. lib/acl.star")
            return None
        for alias, name in names:
            if alias is None or alias.startswith("_") or name.startswith("_"):
                self.error(call, f"load() cannot import '{name}': names starting with '_' are private", usage)
                return None
        return LoadSpec(module, tuple((str(a), str(n)) for a, n in names), call)

    def _collect_bindings(self, tree: ast.Module) -> None:
        """Top-level names may not shadow what hookrules provides; inside a def they may (asteval
        restores the caller's names when a function returns)."""
        for node, in_function in _walk_scoped(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self._bind(node, node.id, in_function)
            elif isinstance(node, ast.FunctionDef):
                self._bind(node, node.name, in_function)
            elif isinstance(node, ast.arg):
                self._bind(node, node.arg, True)

    def _bind(self, node: ast.AST, name: str, in_function: bool) -> None:
        if not in_function and (name in self.provided or name in DECISIONS or name in HOOK_NAMES):
            self.error(node, f"cannot assign to '{name}': hookrules provides it",
                       "choose another name for your variable")
        self.bound.add(name)

    def _walk(self, node: ast.AST, depth: int, where: ast.AST | None = None,
              in_loop: bool = False, in_function: bool = False) -> None:
        """`where` is the nearest node with a position (operators have none); the flags say what
        encloses the node, for break/continue/return."""
        if hasattr(node, "lineno"):
            where = node
        if depth > MAX_DEPTH:
            self.error(where, f"nested more than {MAX_DEPTH} levels deep", "split the expression with variables or functions")
            return
        if id(node) in self._load_statements:
            return  # checked by _collect_loads
        kind = type(node)
        if kind not in ALLOWED_NODES:
            message, hint = HINTS.get(kind.__name__, (f"'{kind.__name__}' is not allowed in rules", ""))
            self.error(where, message, hint)
            return
        if kind in (ast.Break, ast.Continue) and not in_loop:
            word = "break" if kind is ast.Break else "continue"
            self.error(node, f"'{word}' outside a loop", f"'{word}' works inside 'for'; to end the rule call allow(), deny(...) or ignore()")
        elif kind is ast.Return and not in_function:
            self.error(node, "'return' outside a function", "end the rule with allow(), deny(...) or ignore()")
        handler = getattr(self, f"visit_{kind.__name__}", None)
        if handler is not None:
            handler(node)
        if kind is ast.FunctionDef:
            in_loop, in_function = False, True
        for child in ast.iter_child_nodes(node):
            loop_body = kind is ast.For and (child in node.body)  # type: ignore[attr-defined]
            self._walk(child, depth + 1, where, in_loop or loop_body, in_function)

    # -- per-node checks ------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("_"):
            self.error(node, f"name '{name}' starts with '_': such names are not allowed",
                       "rename it without the leading underscore")
        elif isinstance(node.ctx, ast.Load) and name not in self.provided and name not in self.bound:
            self._unknown_name(node, name)

    def _unknown_name(self, node: ast.Name, name: str) -> None:
        if name == "load":
            self.error(node, "load() must be a statement of its own at the top level of the file",
                       'put load("lib/x.star", "name") on a line of its own, before the rule')
            return
        if self.library and (name in DECISIONS or name in HOOK_NAMES):
            self.error(node, f"'{name}' is not available in a library: libraries hold functions and constants",
                       "pass event values in as arguments and return a result; decide in the rule file")
            return
        if name in DECISIONS:
            self.error(node, *_decision_unavailable(name, self.hook))
            return
        if name in HOOK_NAMES:
            self.error(node, f"'{name}' is not available in {self.hook.name}",
                       f"this hook provides: {', '.join(sorted(self.hook.all_names))}")
            return
        if name == "print":
            self.error(node, "'print' is not available in rules", "use log(text): it goes to the server log with the file name")
            return
        self._unknown_count += 1  # suggestions compare with every name: only for the first few
        close = (difflib.get_close_matches(name, sorted(self.provided | self.bound)[:1000], n=1)
                 if self._unknown_count <= 20 else [])
        hint = f"did you mean '{close[0]}'?" if close else "define it first, or see the README for the names each hook provides"
        self.error(node, f"unknown name '{name}'", hint)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("_"):
            self.error(node, f"attribute '{attr}' starts with '_': such attributes are not allowed",
                       "rules may read only public data")
        elif attr in DENIED_ATTRS:
            self.error(node, f"attribute '{attr}' is not allowed in rules", DENIED_ATTRS[attr])
        elif attr.startswith(DENIED_ATTR_PREFIXES):
            self.error(node, f"attribute '{attr}' is not allowed in rules", "rules cannot inspect functions or frames")
        if isinstance(node.ctx, ast.Store):
            self.error(node, f"cannot assign to attribute '{attr}'", "event data is read-only: build a new value")

        value = node.value
        refused = attr.startswith("_") or attr in DENIED_ATTRS or attr.startswith(DENIED_ATTR_PREFIXES)
        if (not refused and isinstance(value, ast.Name) and isinstance(node.ctx, ast.Load)
                and value.id in EVENT_FIELDS and value.id in self.hook.all_names and value.id not in self.bound):
            known = EVENT_FIELDS[value.id]
            if attr not in known:
                close = difflib.get_close_matches(attr, known, n=1)
                self.error(node, f"'{value.id}' has no field '{attr}'; every run would fail here",
                           f"did you mean '{close[0]}'?" if close else f"its fields: {', '.join(known)}")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # Assigning into a container the rule built itself is fine; event data refuses at run time.
        pass

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            self.error(node.decorator_list[0], "decorators are not allowed in rules", "call the function directly")
        if node.returns is not None:
            self.error(node.returns, "annotations are not allowed in rules", "remove the annotation")
        args = node.args
        for a in args.posonlyargs + args.kwonlyargs:
            self.error(a, "positional-only and keyword-only parameters are not allowed", "use plain parameters")
        for star in (args.vararg, args.kwarg):
            if star is not None:
                self.error(star, "'*args' and '**kwargs' parameters are not allowed", "use plain parameters")
        for a in args.args:
            if a.annotation is not None:
                self.error(a.annotation, "annotations are not allowed in rules", "remove the annotation")
        for default in args.defaults:
            if not _is_constant(default):
                self.error(default, "a default value must be a constant (a number, string, bool, None or tuple of those)",
                           "use None as the default and compute the value inside the function")

    def visit_Call(self, node: ast.Call) -> None:
        for kw in node.keywords:
            if kw.arg is None:
                self.error(kw.value, "'**' unpacking is not allowed in rules", "pass the keyword arguments one by one")
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("allow", "rewrite") and func.id in self.hook.decisions:
            self._check_decision_call(func.id, node)
        if isinstance(func, ast.Name) and func.id in HELPERS and func.id not in self.bound:
            self._check_helper_call(func.id, node)

    def _check_helper_call(self, name: str, node: ast.Call) -> None:
        """A helper called with the wrong arguments, or a literal pattern that cannot compile, fails
        every run: say so before the rule meets a broker."""
        if any(isinstance(a, ast.Starred) for a in node.args):
            return
        try:
            signature = inspect.signature(HELPERS[name])
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg is not None})
        except TypeError as exc:
            self.error(node, f"{name}(): {exc}", f"call it as {name}{_plain_signature(signature)}")
            return
        if name in PATTERN_HELPERS and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            problem = pattern_problem(node.args[0].value)
            if problem:
                self.error(node.args[0], f"{name}(): {problem}", "fix the pattern (Python re syntax)")

    def _check_decision_call(self, name: str, node: ast.Call) -> None:
        """What allow()/rewrite() may carry depends on the hook; keywords are static, so say it now."""
        hook = self.hook
        if name == "rewrite":
            accepted = set(hook.rewrites)
            example = ", ".join(f"{f}=..." for f in sorted(hook.rewrites))
        else:
            accepted = (({"modifiers"} if hook.name in MODIFIER_SCHEMAS else set()) | ({"cache"} if hook.cacheable else set())
                        | ({"tags"} if hook.tagged else set()) | (set(EMQX_OPTIONS) if carriable(hook.name) else set()))
            example = ", ".join(f"{f}=..." for f in sorted(accepted)) or ""
        if node.args:
            self.error(node, f"{name}() takes keyword arguments only", f"write {name}({example})")
        for kw in node.keywords:
            if kw.arg is not None and kw.arg not in accepted:
                can = f"it takes {', '.join(sorted(accepted))}" if accepted else f"in {hook.name} it takes none"
                owner = KEYWORD_HOOKS.get(kw.arg)
                if owner and name == "allow":
                    can += f"; {kw.arg}= is for {owner}"
                self.error(kw.value, f"{name}() in {hook.name} has no '{kw.arg}'", can)
            elif name == "allow" and kw.arg in EMQX_OPTION_CHECKS:
                self._check_literal_option(kw.arg, kw.value)

    def _check_literal_option(self, option: str, value: ast.expr) -> None:
        """allow(superuser=..., attrs=..., expire_at=..., acl=...) with a literal value: checked now as
        EMQX would check it, so a value it drops or denies the client for never reaches a broker."""
        try:
            literal = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return  # computed when the rule runs: checked then
        try:
            EMQX_OPTION_CHECKS[option](literal)
        except ValueError as exc:
            self.error(value, str(exc), "see the README's EMQX HTTP authentication section for what EMQX accepts")

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, complex):  # lang/values: not among the values a rule can hold
            self.error(node, "complex numbers are not allowed in rules", "use int or float")

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        spec = node.format_spec
        if spec is None:
            return
        parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
        if not all(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts):
            self.error(spec, "an f-string format spec must be a literal", "write the width or precision as a number")
            return
        text = "".join(str(p.value) for p in parts)  # type: ignore[attr-defined]
        if _BIG_NUMBER.search(text):
            self.error(spec, f"f-string format spec '{text}' asks for too wide a field", "keep widths under 1000")

    # -- whole-file checks ------------------------------------------------------------------------

    def _check_topics(self, tree: ast.Module) -> None:
        """TOPICS = ["a/#", ...] at top level declares the message topics (EMQX HookSpec.topics)."""
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Name) and node.id == TOPICS_NAME and isinstance(node.ctx, ast.Store)):
                continue
            top = next((s for s in tree.body if isinstance(s, ast.Assign) and node in s.targets), None)
            if top is None:
                self.error(node, f"{TOPICS_NAME} may only be assigned once, at the top level, as 'TOPICS = [\"a/#\", ...]'",
                           "declare the topic filters as a literal list of strings")
                continue
            if not self.hook.topic_filtered:
                self.error(node, f"{TOPICS_NAME} is only read in EMQX message.* rules",
                           "filter on the topic in the rule with topic_match(filter, topic)")
                continue
            value = top.value
            if not (isinstance(value, (ast.List, ast.Tuple))
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts)):
                self.error(value, f"{TOPICS_NAME} must be a literal list of topic filter strings",
                           'write TOPICS = ["sensors/#", "cmd/+/set"]')
                continue
            topics = []
            for elt in value.elts:
                try:
                    validate_filter(elt.value)  # type: ignore[attr-defined]
                    topics.append(elt.value)  # type: ignore[attr-defined]
                except ValueError as exc:
                    self.error(elt, str(exc), "'+' stands for one whole level, '#' for the rest and comes last")
            if self.topics:
                self.error(node, f"{TOPICS_NAME} is assigned twice", "declare every filter in one list")
            self.topics = tuple(topics)

    def _check_recursion(self, tree: ast.Module) -> None:
        """Starlark has no recursion; refuse call cycles among the file's functions (also checked at run time).

        Strongly connected components of the call graph (Tarjan, iterative): linear in the file, so a
        long chain of functions cannot stall a reload.
        """
        defs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        calls: dict[str, list[ast.Call]] = {name: [] for name in defs}
        # one walk, each call charged to the innermost function around it (walking every function's
        # subtree again was quadratic in the nesting: 58 nested defs took 50 s)
        work: list[tuple[ast.AST, str | None]] = [(tree, None)]
        while work:
            node, owner = work.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef):
                    work.append((child, child.name))
                    continue
                if (owner is not None and isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                        and child.func.id in defs):
                    calls[owner].append(child)
                work.append((child, owner))
        for component in _cycles({n: [c.func.id for c in cs] for n, cs in calls.items()}):  # type: ignore[attr-defined]
            start = component[0]
            # reported where the cycle closes: the call back to its first function
            caller = next((n for n in component[1:] if any(c.func.id == start for c in calls[n])), start)  # type: ignore[attr-defined]
            call = next(c for c in calls[caller] if c.func.id == start)  # type: ignore[attr-defined]
            via = " -> ".join(component + [start])
            self.error(call, f"function '{start}' calls itself ({via}): recursion is not allowed",
                       "loop over a finite collection with 'for' instead")


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The call cycles: strongly connected components with more than one function, or a self-call."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            callees = graph.get(node, [])
            if i < len(callees):
                work.append((node, i + 1))
                callee = callees[i]
                if callee not in index:
                    work.append((callee, 0))
                elif callee in on_stack:
                    low[node] = min(low[node], index[callee])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, []):
                    out.append(sorted(component, key=list(graph).index))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def _walk_scoped(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Every node with whether it lies inside a function body (a def's own name lies outside it)."""
    out: list[tuple[ast.AST, bool]] = []
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, inside = stack.pop()
        out.append((node, inside))
        child_inside = inside or isinstance(node, ast.FunctionDef)
        stack.extend((child, child_inside) for child in ast.iter_child_nodes(node))
    return out


def _is_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant)
    return isinstance(node, ast.Tuple) and all(_is_constant(e) for e in node.elts)


#: allow()'s keywords only some hooks take, and where they belong, for the hint of a rule that used one
KEYWORD_HOOKS = {"tags": "RabbitMQ's user check: rabbitmq.user.star",
                 "cache": "VerneMQ's auth_on_register, auth_on_publish and auth_on_subscribe files",
                 "modifiers": "VerneMQ's files (see the README's VerneMQ hooks)",
                 **{name: "EMQX's HTTP authenticator: client.authenticate.star or authenticate.star"
                    for name in ("superuser", "attrs", "expire_at", "acl")}}

#: Every name some hook provides; used to say "not in this hook" rather than "unknown".
HOOK_NAMES = frozenset(n for h in HOOKS.values() for n in h.all_names)


def _decision_unavailable(name: str, hook: HookInfo) -> tuple[str, str]:
    if not hook.can_decide:
        return (f"{name}() cannot be used in {hook.name}: the broker does not wait for an answer to this hook",
                "notification hooks only observe: use log(...)")
    able = sorted(h.name for h in HOOKS.values() if name in h.decisions and h.broker == hook.broker)
    if name in PUBLISH and able:
        return (f"{name}() is not available in {hook.name}", f"{name}() works in: {', '.join(able)}")
    decides = f"this hook decides with: {', '.join(sorted(hook.decisions))}"
    if name in PUBLISH:  # no hook of its broker can (RabbitMQ's; a portable file: its brokers' own files can)
        own = sorted(h + RULE_SUFFIX for h in answered_hooks(hook.name) if name in HOOKS[h].decisions)
        where = (f"{name}() works in a broker's own file: {', '.join(own)}" if own else
                 f"no {hook.broker} hook can {name}()")
        return (f"{name}() is not available in {hook.name}", f"{decides}; {where}")
    return (f"{name}() is not available in {hook.name}", decides)


def _syntax_hint(message: str, line: str) -> str:
    if re.search(r"\.\s*from\b", line):
        return "'from' is a Python keyword: the publisher's client id is message.from_"
    if message.startswith(("expected ':'", "invalid syntax")):
        return "rules use Python syntax: check the line for a missing ':' or bracket"
    if "indent" in message:
        return "indent blocks with spaces, consistently"
    return "rules use Python syntax"


def module_path_problem(module: str) -> str:
    """Why a load() path is not one hookrules will read, or ''."""
    if not module.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in module):
        return f"load({module!r}): the path holds characters a file name cannot"
    if not module.endswith(".star"):
        return f"load(\"{module}\"): a library file ends with .star"
    if module.startswith("/") or "\\" in module or any(part in ("", ".", "..") for part in module.split("/")):
        return f"load(\"{module}\"): the path must be relative to the rules directory, without '..'"
    if "/" not in module:
        return f"load(\"{module}\"): libraries live in a subdirectory (files at the top are rules)"
    return ""


def check(path: str, text: str, hook: HookInfo | None) -> CheckedRule:
    """Parse and check one rule file (a library when hook is None); raise RuleLoadError listing every problem."""
    lines = source_lines(text)
    if len(text.encode("utf-8", errors="replace")) > MAX_SOURCE_BYTES:
        raise RuleLoadError([RuleError("load_error", Location(path), f"file is over {MAX_SOURCE_BYTES // 1024} KiB",
                                       "split shared logic into smaller rules")])
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        line = exc.lineno or 0
        src = lines[line - 1] if 1 <= line <= len(lines) else ""
        msg = exc.msg or "invalid syntax"
        raise RuleLoadError([RuleError("parse_error", Location(path, line, exc.offset or 1), msg,
                                       _syntax_hint(msg, src), src)]) from None
    except (RecursionError, MemoryError):
        raise RuleLoadError([RuleError("parse_error", Location(path), "too deeply nested to parse",
                                       "split the expression with variables or functions")]) from None
    except ValueError as exc:  # NUL bytes
        raise RuleLoadError([RuleError("parse_error", Location(path), f"cannot parse: {exc}",
                                       "rules are UTF-8 Python text without NUL bytes")]) from None
    checker = _Checker(path, text, hook)
    checker.check(tree)
    if checker.errors:
        raise RuleLoadError(checker.errors)
    return CheckedRule(tree, checker.topics, tuple(checker.loads))
