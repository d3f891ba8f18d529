"""Shared libraries: `load("lib/acl.star", "can_publish")`, Starlark style.

A library is checked like a rule but reads no event and makes no decision: it holds functions and
constants. It runs once, when a rule that loads it is compiled, inside that rule's interpreter (so
its functions share the rule's step budget and deadline), and everything it leaves at top level is
frozen, so no run can change what the next one sees. Cycles and missing names are load errors
with file:line:col.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Location, RuleError, RuleLoadError, source_lines
from ..files import MAX_RULE_BYTES, RULE_SIZE_HINT, FileRefused, read_file
from .checker import CheckedRule, LoadSpec, check, module_path_problem
from .freeze import _freeze_scope, _MutableMethod
from .interp import RuleInterpreter

#: a library's top level runs once per compile; it gets the same step bound as a rule run
LIBRARY_MAX_STEPS = 100_000
#: seconds all the library top levels of one rule's compile share, together
LIBRARY_TIMEOUT = 1.0
#: CPU seconds (of the scan's own thread) one rule's compile may spend on its libraries: reading,
#: checking and running them. CPU time, not wall-clock: a scan thread that is merely slow (busy cores,
#: its nice 10) stalls no call, and must neither fail a load nor get the server killed
COMPILE_BUDGET = 5.0
#: bytes of library source one rule may load in all: a checked library takes up to ~230 bytes of memory
#: a byte of dense code (a 64 KiB library of 600 small functions: 15 MB), and each rule holds its own
#: copy of what it linked; 40 such libraries took 600 MB for one rule
MAX_LIBRARY_BYTES = 1024 * 1024
MAX_LOAD_DEPTH = 32  # libraries loading libraries


@dataclass(frozen=True)
class Library:
    module: str  # as written in load(), relative to the rules directory
    path: str  # as shown in errors
    version: str
    checked: CheckedRule
    lines: tuple[str, ...]
    size: int = 0  # bytes of source
    #: whether its code names `data`: only rules that read data are rebuilt when a data file changes
    reads_data: bool = False
    #: CPU seconds its reading and checking took: charged to every compile that loads it, cached or not,
    #: so whether a rule fits COMPILE_BUDGET does not depend on which rule happened to check it first
    cost: float = 0.0


def time_dependent(exc: BaseException) -> bool:
    """Whether a load error depends on time (a deadline, a budget) rather than on the files alone:
    such a failure is retried later, never cached as a property of the files (ruleset.Failure)."""
    return bool(getattr(exc, "transient", False))


def _transient(exc: RuleLoadError) -> RuleLoadError:
    exc.transient = True  # type: ignore[attr-defined]
    return exc


def reads_data(tree: ast.AST) -> bool:
    """Whether the code names `data` (the data files' namespace): the only way to reach it."""
    return any(isinstance(node, ast.Name) and node.id == DATA_NAME for node in ast.walk(tree))


DATA_NAME = "data"


class Libraries:
    """The library files of one rules directory, read and checked at most once per scan."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, Library | RuleLoadError] = {}

    def get(self, module: str) -> Library:
        cached = self._cache.get(module)
        if cached is None:
            cached = self._cache[module] = self._read(module)
        if isinstance(cached, RuleLoadError):
            # a fresh exception each time: raising the cached one would grow its traceback on every
            # scan, and keep every scan's interpreter alive with it
            fresh = RuleLoadError(cached.errors)
            fresh.version = getattr(cached, "version", "")  # type: ignore[attr-defined]
            raise fresh
        return cached

    def version(self, module: str) -> str:
        """The library's current content hash, or '' when it cannot be read."""
        try:
            return self.get(module).version
        except RuleLoadError as exc:
            return getattr(exc, "version", "")

    def _read(self, module: str) -> Library | RuleLoadError:
        started = time.thread_time()
        path = self.root / module
        shown = str(path)
        problem = module_path_problem(module)
        if problem:  # the checker refuses such a load(); a direct caller (check) may not have asked it
            return RuleLoadError([RuleError("load_error", Location(shown), problem, "check the path given to load()")])
        try:
            data, _ = read_file(self.root, path, MAX_RULE_BYTES, RULE_SIZE_HINT)
        except FileRefused as exc:
            return RuleLoadError([RuleError("load_error", Location(shown), f"cannot read library: {exc.reason}", exc.hint)])
        except (OSError, ValueError) as exc:  # ValueError: a path no file system takes (checked, but be sure)
            return RuleLoadError([RuleError("load_error", Location(shown), f"cannot read library: {getattr(exc, 'strerror', None) or exc}",
                                            "check the path given to load()")])
        version = hashlib.sha256(data).hexdigest()[:12]
        key = (module, shown)
        with _CHECKED_LOCK:
            known = _CHECKED.get(key)
            if known is not None and known[0] == version:  # unchanged since an earlier scan: so is its check
                _CHECKED.move_to_end(key)
                return known[1]
        result = self._check(module, shown, version, data)
        if isinstance(result, Library):
            result = dataclasses.replace(result, cost=time.thread_time() - started)
        global _checked_bytes
        with _CHECKED_LOCK:
            old = _CHECKED.pop(key, None)
            if old is not None:
                _checked_bytes -= old[2]
            _CHECKED[key] = (version, result, len(data))  # the current version only: an old one is never asked for again
            _checked_bytes += len(data)
            while _checked_bytes > MAX_CHECKED_BYTES and len(_CHECKED) > 1:
                _checked_bytes -= _CHECKED.popitem(last=False)[1][2]
        return result

    @staticmethod
    def _check(module: str, shown: str, version: str, data: bytes) -> Library | RuleLoadError:
        try:
            text = data.decode("utf-8")
            checked = check(shown, text, None)
        except UnicodeDecodeError:
            err = RuleLoadError([RuleError("parse_error", Location(shown), "library is not UTF-8", "save it as UTF-8")])
            err.version = version  # type: ignore[attr-defined]
            return err
        except RuleLoadError as exc:
            exc.version = version  # type: ignore[attr-defined]
            return exc
        except (RecursionError, MemoryError, ValueError) as exc:  # the parser's own limits: an error of this file
            err = RuleLoadError([RuleError("parse_error", Location(shown), f"cannot parse: {type(exc).__name__}: {exc}",
                                           "simplify the file")])
            err.version = version  # type: ignore[attr-defined]
            return err
        return Library(module, shown, version, checked, tuple(source_lines(text)), len(data), reads_data(checked.tree))


#: the last check of each library, by (module, path), with the content hash it was made on and its
#: size: every rescan (each save, and the periodic one) reads every library, and checking a big one
#: again each time held the event loop. Runs never change a checked tree (the linker runs a deep
#: copy). Scans run in a worker thread (reload.py) and `hookrules check` in the main one: one lock.
_CHECKED: OrderedDict[tuple[str, str], tuple[str, Library | RuleLoadError, int]] = OrderedDict()
_CHECKED_LOCK = threading.Lock()
#: bounded by the bytes of source it holds (a checked tree takes up to ~230 times its source), not by a
#: count: a directory of 300 small libraries must not check them all again on every periodic rescan
MAX_CHECKED_BYTES = 4 * 1024 * 1024
_checked_bytes = 0


class _Linked:
    """A library's result within one compile: its frozen top level, or the errors it failed with."""

    __slots__ = ("env", "errors", "transient")

    def __init__(self, env: dict[str, Any] | None, errors: list[RuleError], transient: bool = False):
        self.env = env
        self.errors = errors
        self.transient = transient


@dataclass
class Linker:
    """Binds a file's load() statements inside one interpreter, collecting what they depended on.

    Each library is linked once per compile, however many files load it (a diamond of libraries 18
    deep ran the bottom one 2^18 times). Two budgets, both per compile:
    - the library top levels (user code) share LIBRARY_TIMEOUT of run time, and the watchdog sees
      their runs, and only them, as one stretch (the compile slot of watchdog.RunClock, named after
      `hook`): reading and checking are the scan thread's own work, which holds no call up for long;
    - reading, checking and running all the libraries share COMPILE_BUDGET seconds of the scan
      thread's CPU time: past it no more libraries are read, and the rule's load fails for now.
    Both depend on time, not only on the files: such a failure is marked transient and retried.
    """

    libraries: Libraries
    interp: RuleInterpreter
    base: Callable[[str], dict[str, Any]]  # the names a library starts with, given its path (log is per file)
    deps: dict[str, str]  # module -> version of every library reached, or tried ('' when unreadable)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # path -> lines, for error locations
    #: the watchdog's clock (watchdog.RunClock), if any: a library's top level holds the GIL like a run
    run_clock: Any = None
    #: the hook of the rule being compiled: what the watchdog names if linking holds the server
    hook: str = ""
    #: whether a library reached names `data`
    reads_data: bool = False
    _linked: dict[str, _Linked] = field(default_factory=dict)
    _run_spent: float = 0.0  # wall seconds the library top levels have run so far
    _cpu_spent: float = 0.0  # CPU seconds charged so far: libraries' reading and checking, and their runs
    _bytes: int = 0  # source bytes of the libraries linked so far
    _deadline: float = 0.0  # the current library run's (set by _run)

    def link(self, loads: tuple[LoadSpec, ...], importer: str, lines: tuple[str, ...]) -> dict[str, Any]:
        """bind() for a rule: every library it reaches, under one budget and one watchdog stretch."""
        return self.bind(loads, importer, lines)

    def bind(self, loads: tuple[LoadSpec, ...], importer: str, lines: tuple[str, ...],
             stack: tuple[str, ...] = ()) -> dict[str, Any]:
        """The names the load() statements import, by alias."""
        out: dict[str, Any] = {}
        errors: list[RuleError] = []
        transient = False
        for spec in loads:
            try:
                env = self._module(spec.module, stack + (importer,), spec, lines)
            except RuleLoadError as exc:
                transient = transient or time_dependent(exc)
                errors.extend(exc.errors)
                if self._cpu_spent > COMPILE_BUDGET or self._bytes > MAX_LIBRARY_BYTES:
                    break  # a budget of the whole compile is spent: the loads after it would fail alike
                if any(e.location.file != importer for e in exc.errors):  # say where the import happened too
                    errors.append(_at(importer, lines, spec.node, f"cannot load \"{spec.module}\": see its errors",
                                      "fix the library; every rule that loads it reloads when it is saved"))
                continue
            for alias, name in spec.names:
                if name not in env:
                    public = sorted(k for k in env if not k.startswith("_") and k not in self._provided)
                    errors.append(_at(importer, lines, spec.node, f"\"{spec.module}\" has no '{name}'",
                                      f"it defines: {', '.join(public) or 'nothing'}"))
                else:
                    out[alias] = env[name]
        if errors:
            err = RuleLoadError(errors)
            raise _transient(err) if transient else err
        return out

    @property
    def _provided(self) -> set[str]:
        return set(self.base(""))

    def _over_budget(self, importer: str, lines: tuple[str, ...], spec: LoadSpec) -> RuleLoadError:
        err = _transient(RuleLoadError([_at(importer, lines, spec.node,
                                            f"this rule's libraries take over {COMPILE_BUDGET:g} s to load",
                                            "load fewer or smaller libraries; hookrules tries again later")]))
        return err

    @staticmethod
    def _too_big(importer: str, lines: tuple[str, ...], spec: LoadSpec) -> RuleLoadError:
        """What the files are, not time: no retry."""
        err = RuleLoadError([_at(importer, lines, spec.node, f"this rule's libraries are over "
                                 f"{MAX_LIBRARY_BYTES // 1024} KiB in all",
                                 "load fewer or smaller libraries: tables belong in data files")])
        return err

    def _module(self, module: str, stack: tuple[str, ...], spec: LoadSpec, lines: tuple[str, ...]) -> dict[str, Any]:
        if len(stack) > MAX_LOAD_DEPTH:
            raise RuleLoadError([_at(stack[-1], lines, spec.node, f"libraries load each other more than "
                                     f"{MAX_LOAD_DEPTH} deep", "flatten the chain of load() calls")])
        linked = self._linked.get(module)
        if linked is None and self._cpu_spent > COMPILE_BUDGET:  # not read: the retry (ruleset.Failure) reads it
            raise self._over_budget(stack[-1], lines, spec)
        if linked is None and self._bytes > MAX_LIBRARY_BYTES:  # over already: not worth reading
            raise self._too_big(stack[-1], lines, spec)
        # Recorded before anything can fail: a rule that loads a missing or broken library is built
        # again when the library appears or is fixed (its version changes from '' or the broken one).
        self.deps[module] = self.libraries.version(module)
        lib = self.libraries.get(module)
        self.sources[lib.path] = lib.lines
        if lib.path in stack:
            root = os.path.dirname(stack[0])  # the rule's directory: show paths as load() names them
            chain = " -> ".join(os.path.relpath(p, root) for p in stack + (lib.path,))
            raise RuleLoadError([_at(stack[-1], lines, spec.node, f"load cycle: {chain}",
                                     "move what both files need into a third library")])
        if linked is None:
            self._cpu_spent += lib.cost
            self._bytes += lib.size
            if self._bytes > MAX_LIBRARY_BYTES:
                raise self._too_big(stack[-1], lines, spec)
            try:
                linked = _Linked(self._run(lib, stack, spec, lines), [])
            except RuleLoadError as exc:
                linked = _Linked(None, list(exc.errors), time_dependent(exc))
            self._linked[module] = linked
        if linked.env is None:
            err = RuleLoadError(linked.errors)
            raise _transient(err) if linked.transient else err
        return linked.env

    def _run(self, lib: Library, stack: tuple[str, ...], spec: LoadSpec, lines: tuple[str, ...]) -> dict[str, Any]:
        """Run the library's top level once, after the libraries it loads, and freeze what it left."""
        self.reads_data = self.reads_data or lib.reads_data
        tree = copy.deepcopy(lib.checked.tree)  # handlers are bound per interpreter (prepare)
        tree.body = [s for s in tree.body if not _is_load(s)]
        env = self.base(lib.path)
        if not lib.reads_data:
            env.pop(DATA_NAME, None)  # it never names data: it must not keep an old data set alive
        env.update(self.bind(lib.checked.loads, lib.path, lib.lines, stack))
        if self._run_spent >= LIBRARY_TIMEOUT:
            raise _transient(RuleLoadError([_at(lib.path, lib.lines, None, f"loading libraries took over "
                                                f"{LIBRARY_TIMEOUT:g} s for one rule", "load fewer or smaller libraries")]))
        if self._cpu_spent > COMPILE_BUDGET:
            raise self._over_budget(stack[-1], lines, spec)
        preparing = time.thread_time()
        self.interp.prepare(tree, lib.path)  # which compiles its defs (lang/compiler): charged to COMPILE_BUDGET
        self._cpu_spent += time.thread_time() - preparing
        clock = self.run_clock
        started, cpu_started = time.monotonic(), time.thread_time()
        self._deadline = started + LIBRARY_TIMEOUT - self._run_spent
        if clock is not None:  # the runs so far and this one: one stretch, however long reading took between
            clock.compile_started(self.hook, self._run_spent)
        try:
            self.interp.execute(tree, env, LIBRARY_MAX_STEPS, self._deadline)
        except Exception as exc:
            node = self.interp.error_node
            raise RuleLoadError([_at(lib.path, lib.lines, node, f"library failed to run: {type(exc).__name__}: {exc}",
                                     "a library's top level may only define functions and constants")]) from None
        except BaseException as exc:  # RuleAbort: over its budget
            err = RuleLoadError([_at(lib.path, lib.lines, getattr(exc, "node", None), str(exc),
                                      "keep a library's top level small, and the libraries a rule loads few")])
            # past the deadline: time (a busy machine) had a part in it; out of steps: the code alone
            raise (_transient(err) if time.monotonic() >= self._deadline else err) from None
        finally:
            if clock is not None:
                clock.compile_finished()
            self._run_spent += time.monotonic() - started
            self._cpu_spent += time.thread_time() - cpu_started
        # Starlark freezes a module once it has run: no run can change what the next one sees. In
        # place: the module's functions keep this very dict as their globals.
        try:
            _freeze_scope(env, set(), {})
        except RecursionError:
            raise RuleLoadError([_at(lib.path, lib.lines, None, "a value in this library is nested too deeply",
                                     "flatten the data")]) from None
        except _MutableMethod as exc:
            raise RuleLoadError([_at(lib.path, lib.lines, None, str(exc),
                                     "keep data in constants and read it in functions: a library cannot hold "
                                     "state that runs share")]) from None
        return env


def _is_load(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "load")


def loaded_modules(tree: ast.Module) -> list[str]:
    """The modules a file's top-level load() statements name (the literal first argument of each)."""
    found = []
    for stmt in tree.body:
        if _is_load(stmt):
            args = stmt.value.args  # type: ignore[attr-defined]
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found.append(args[0].value)
    return found


def strip_loads(tree: ast.Module) -> None:
    """load() statements are resolved when the file compiles; runs never see them."""
    tree.body = [s for s in tree.body if not _is_load(s)]


def _at(path: str, lines: tuple[str, ...], node: ast.AST | None, message: str, hint: str) -> RuleError:
    line = getattr(node, "lineno", 0) or 0
    src = lines[line - 1] if 1 <= line <= len(lines) else ""
    col = (getattr(node, "col_offset", 0) or 0) + 1
    if src:
        col = len(src.encode("utf-8")[: col - 1].decode("utf-8", errors="replace")) + 1
    return RuleError("load_error", Location(path, line, col if line else 0), message, hint, src)


__all__ = ["Libraries", "Library", "Linker", "loaded_modules", "module_path_problem", "reads_data", "strip_loads",
           "time_dependent"]
