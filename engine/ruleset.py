"""Compiled rules and the immutable rule set the engine reads; built off to the side, swapped whole.

A rule file is read, checked and parsed once per save (`compile_rule`); a run only executes the
tree. `scan` rebuilds the set from a directory the way OPA activates bundles: a file that fails
keeps its last good version serving.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .decisions import Decision
from .errors import Location, RuleError, RuleLoadError, char_col, redact, source_lines
from .events import Event
from .hooks import CHAINS, HOOKS, RULE_SUFFIX, HookInfo, hook_for_file, valid_file_names
from .lang.builtins import HELPERS, SAFE_BUILTINS, decision_makers, make_decisions, make_log, topic_filter_test
from .datafiles import DataNamespace, DataSet, scan_data
from .files import MAX_RULE_BYTES, RULE_SIZE_HINT, FileRefused, collector_paused, read_file
from .lang.checker import TOPICS_NAME, check
from .lang.loader import DATA_NAME, Libraries, Linker, reads_data, strip_loads, time_dependent
from .lang.functions import MAX_CALL_DEPTH, CallsTooDeep, ListChanged, RuleAbort
from .lang.compiler import RuleBody
from .lang.interp import RuleInterpreter


class RuleRuntimeError(Exception):
    """A run that failed; `error` says where and why."""

    def __init__(self, error: RuleError):
        super().__init__(error.one_line())
        self.error = error


#: What to do about the usual run-time failures, most specific first.
RUNTIME_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (KeyError, "check with 'if key in d:' or use d.get(key, default)"),
    (IndexError, "check len(...) before indexing"),
    (ZeroDivisionError, "check the divisor before dividing"),
    (CallsTooDeep, f"call fewer functions inside one another (at most {MAX_CALL_DEPTH}), or nest their bodies less"),
    (RecursionError, "loop with 'for' instead of calling a function from itself"),
    (NameError, "assign the name on every path before it is used"),
    (AttributeError, "see the README for the fields each object has"),
    (TypeError, "check the values' types (a payload is bytes: compare it with b\"...\")"),
    (ValueError, "check the value before passing it on"),
    (ListChanged, "loop over one list and build another: for x in items: out.append(...)"),
    (RuntimeError, "keep values small: huge strings and numbers are refused"),
)
DEFAULT_RUNTIME_HINT = "guard the failing expression; until then the hook answers by its failure policy"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run bounds: asteval has none of its own."""

    max_steps: int = 100_000
    timeout: float = 0.1  # seconds


DEFAULT_LIMITS = Limits()
_monotonic = time.monotonic


@dataclass(eq=False)
class CompiledRule:
    hook: HookInfo
    path: str
    #: what decision logs and hookrules_rule_info name: the file's version alone when the rule uses no
    #: library or data file, else a hash of it and theirs (a library change is a new rule version)
    version: str
    tree: ast.Module
    topics: tuple[str, ...]
    lines: tuple[str, ...]
    base: dict[str, Any] = field(repr=False)
    interp: RuleInterpreter = field(repr=False)
    #: what it was built from besides its own file: (library module, version) pairs and the data version
    deps: tuple[tuple[str, str], ...] = ()
    #: the lines of the libraries it loads, by path, so a failure inside one is shown in its own file
    library_lines: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    file_version: str = ""  # sha256 of the rule file's bytes, first 12 hex digits
    #: TOPICS as one test of a topic, None without TOPICS (every event is wanted)
    topic_test: Callable[[str], bool] | None = field(init=False, repr=False, default=None)
    #: the engine's outcomes of this rule's allow() and ignore(), the same on every run: made once (engine.py)
    usual: Any = field(init=False, repr=False, default=None)
    #: what a run starts from: the names of `base` the rule's text names
    run_base: dict[str, Any] = field(init=False, repr=False, default_factory=dict)
    #: the top level as one function (lang/compiler), or None: run by the interpreter's walk
    body: RuleBody | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.topic_test = topic_filter_test(self.topics) if self.topics else None
        # Not every builtin and helper: a rule looks a name up only through a Name node of its tree (the
        # language has no dynamic lookup; a def's body is in the tree, a library's functions read their
        # own module), so a name the text never writes is one no run can reach. Copying all 44 touches
        # 88 objects' reference counts, and between a server's calls those are out of the CPU's caches:
        # about 5 us a run, against about 1 for the few a rule names (bench/README.md, cold runs).
        names = {node.id for node in ast.walk(self.tree) if node.__class__ is ast.Name}
        self.run_base = {name: value for name, value in self.base.items() if name in names}
        self.body = self.interp.compiled_body(self.tree)

    def wants(self, event: Event) -> bool:
        """False when TOPICS is declared and the message topic matches none of them."""
        test = self.topic_test
        if test is None:
            return True
        msg = event.message
        return msg is None or test(msg.topic)

    def run(self, event: Event, limits: Limits = DEFAULT_LIMITS, timeout: float | None = None) -> Decision | None:
        """One run; `timeout` (seconds) overrides limits.timeout when given, e.g. a gRPC deadline."""
        symtable = self.run_base.copy()
        symtable.update(event.data)  # event.names(), without building it first
        symtable["hook"] = event.hook
        symtable["broker"] = event.broker
        symtable["client"] = event.client
        symtable["channel"] = event.channel
        deadline = _monotonic() + (limits.timeout if timeout is None else timeout)
        try:
            return self.interp.execute(self.tree, symtable, limits.max_steps, deadline, self.body)  # type: ignore[no-any-return]
        except RuleAbort as exc:
            hint = ("keep loops short, or raise --max-steps" if exc.steps else
                    "keep loops short; raise --rule-timeout above the cost of slow helpers (password hashes)")
            raise RuleRuntimeError(self._error("deadline_error", str(exc), exc.node, hint)) from None
        except Exception as exc:
            hint = next((h for kind, h in RUNTIME_HINTS if isinstance(exc, kind)), DEFAULT_RUNTIME_HINT)
            # read-only data is a mappingproxy to Python; to a rule author it is a dict they cannot change
            text = str(exc).replace("'mappingproxy' object", "read-only dict")
            message = redact(f"{type(exc).__name__}: {text}", event.secrets())
            raise RuleRuntimeError(self._error("runtime_error", message, self.interp.error_node, hint)) from None

    def _error(self, code: str, message: str, node: ast.AST | None, hint: str) -> RuleError:
        path = self.interp.error_file or getattr(node, "hr_file", "") or self.path
        lines = self.lines if path == self.path else self.library_lines.get(path, ())
        line = getattr(node, "lineno", 0) or 0
        col = (getattr(node, "col_offset", 0) or 0) + 1
        src = lines[line - 1] if 1 <= line <= len(lines) else ""
        if line and src:
            col = char_col(src, col - 1)
        return RuleError(code, Location(path, line, col), message, hint, src)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Context:
    """What a rule is compiled against besides its own text: its directory's libraries and data."""

    libraries: Libraries | None = None
    data: DataSet = DataSet()
    #: the interpreter class rules run on (hookrules test/eval use a tracing one)
    interpreter: type[RuleInterpreter] = RuleInterpreter
    #: the watchdog's clock (watchdog.RunClock), if any, for libraries' top levels
    run_clock: Any = None


DATA_DEP = "data/"  # the deps key of the data files' version
DATA_HOOK = "data"  # FileOutcome.hook (and metric label) of a data file
NO_DATA = DataNamespace({})  # what `data` is in a rule that never names it


def _common_names(path: str, data: DataSet) -> dict[str, Any]:
    """What every rule and library starts with: builtins, helpers, its own log(), the data files."""
    base: dict[str, Any] = dict(SAFE_BUILTINS)
    base.update(HELPERS)
    base["log"] = make_log(path)
    base["data"] = data.namespace()
    return base


def compile_rule(path: str, data: bytes, hook: HookInfo, context: Context = Context()) -> CompiledRule:
    """Check and parse one rule file and link its load()s; raises RuleLoadError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleLoadError([RuleError("parse_error", Location(path), f"file is not UTF-8 ({exc.reason} at byte {exc.start})",
                                       "save the file as UTF-8")]) from None
    checked = check(path, text, hook)
    lines = tuple(source_lines(text))
    if checked.topics:
        # A literal declaration: bound once here instead of rebuilt on every run.
        checked.tree.body = [s for s in checked.tree.body if not _declares_topics(s)]
    interp = context.interpreter()
    base = _common_names(path, context.data)
    base.update(make_decisions(hook))
    interp.makers = decision_makers(base)
    deps: dict[str, str] = {}
    library_lines: dict[str, tuple[str, ...]] = {}
    reads = reads_data(checked.tree)
    if checked.loads:
        if context.libraries is None:
            raise RuleLoadError([RuleError("load_error", Location(path, checked.loads[0].node.lineno, 1),
                                           "load() needs the rules directory, which this compile has not got",
                                           "compile the rule with its directory's Context")])
        linker = Linker(context.libraries, interp, lambda lib: _common_names(lib, context.data), deps,
                        run_clock=context.run_clock, hook=hook.name)
        try:
            base.update(linker.link(checked.loads, path, lines))
        except RuleLoadError as exc:  # what it was built from, so an unchanged broken rule is not rebuilt
            if reads or linker.reads_data:
                deps[DATA_DEP] = context.data.version
            exc.deps = tuple(sorted(deps.items()))  # type: ignore[attr-defined]
            raise
        except RecursionError:
            exc2 = RuleLoadError([RuleError("load_error", Location(path, checked.loads[0].node.lineno, 1),
                                            "libraries load each other too deeply", "flatten the chain of load() calls")])
            exc2.deps = tuple(sorted(deps.items()))  # type: ignore[attr-defined]
            raise exc2 from None
        library_lines = linker.sources
        strip_loads(checked.tree)
        reads = reads or linker.reads_data
    if checked.topics:
        base[TOPICS_NAME] = checked.topics
    interp.prepare(checked.tree, path)
    if reads:  # only a rule that reads data (itself or through a library) is rebuilt when data changes
        deps[DATA_DEP] = context.data.version
    else:
        base[DATA_NAME] = NO_DATA  # and holds none: an old data set is not kept alive by it
    file_version = hashlib.sha256(data).hexdigest()[:12]
    built_from = tuple(sorted(deps.items()))
    version = file_version
    if len(deps) > (1 if reads else 0) or (reads and context.data.files):
        version = hashlib.sha256(";".join([file_version] + [f"{m}={v}" for m, v in built_from]).encode()).hexdigest()[:12]
    return CompiledRule(hook, path, version, checked.tree, checked.topics, lines, base, interp, built_from,
                        library_lines, file_version)


def _declares_topics(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == TOPICS_NAME)


@dataclass(frozen=True, slots=True)
class Failure:
    """A rule that failed while running its libraries' top levels, and the file and library versions
    it failed with: a rescan that finds them unchanged reports the same errors without running the
    libraries again (a slow one held the event loop on every periodic rescan)."""

    path: str
    file_version: str
    deps: tuple[tuple[str, str], ...]
    errors: tuple[RuleError, ...]
    #: a failure that depends on time (a library ran past its deadline on a busy machine, a compile over
    #: its CPU budget) is no property of the files: it is tried again once time.monotonic() passes this,
    #: and `backoff` (seconds) doubles each time it fails again. 0: it depends on the files alone.
    retry_at: float = 0.0
    backoff: float = 0.0

    def current(self, path: str, file_version: str, context: Context, now: float) -> bool:
        """Whether this failure still stands for the file as it is, without compiling it again."""
        return (self.path == path and self.file_version == file_version and _versions_current(self.deps, context)
                and (not self.retry_at or now < self.retry_at))


_now = time.monotonic  # the clock of retries (a test moves it)
#: the first wait before a time-dependent load failure is tried again, and the longest
RETRY_FIRST = 5.0
RETRY_MAX = 300.0


def _failure(path: str, version: str, exc: BaseException, errors: tuple[RuleError, ...],
             earlier: Failure | None, now: float) -> Failure:
    deps = getattr(exc, "deps", ())
    if not time_dependent(exc):
        return Failure(path, version, deps, errors)
    backoff = min(earlier.backoff * 2, RETRY_MAX) if earlier is not None and earlier.backoff else RETRY_FIRST
    return Failure(path, version, deps, errors, now + backoff, backoff)


def next_retry(ruleset: RuleSet) -> float | None:
    """When (time.monotonic()) the earliest time-dependent failure of the set is to be tried again."""
    return min((f.retry_at for f in ruleset.failed.values() if f.retry_at), default=None)


@dataclass(frozen=True)
class RuleSet:
    """Immutable {hook name: CompiledRule}; a reload makes a new one."""

    rules: Mapping[str, CompiledRule] = field(default_factory=lambda: MappingProxyType({}))
    #: hooks whose file exists but has never loaded: they answer by failure policy, not as if absent,
    #: so a broken authentication rule fails closed
    broken: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # hook -> path
    #: the data files every rule was compiled with
    data: DataSet = DataSet()
    #: rule files whose libraries failed to load, and what that was built from (see Failure)
    failed: Mapping[str, Failure] = field(default_factory=lambda: MappingProxyType({}))
    #: hooks whose file's current contents failed to load: they serve an older version (hook -> path)
    stale: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: answer()'s memo: the set never changes, so neither does what answers a hook
    _answers: dict[str, tuple[str | None, CompiledRule | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def get(self, hook: str) -> CompiledRule | None:
        return self.rules.get(hook)

    def answer(self, hook: str) -> tuple[str | None, CompiledRule | None]:
        """(source(hook), the rule loaded for it or None): the engine's lookup on every call, memoized
        for the hooks hookrules knows (a name from elsewhere is looked up, not remembered)."""
        found = self._answers.get(hook)
        if found is None:
            source = self.source(hook)
            found = (source, self.rules.get(source) if source is not None else None)
            if hook in HOOKS:
                self._answers[hook] = found
        return found

    def source(self, hook: str) -> str | None:
        """The hook whose rule file answers `hook`: the first of hooks.CHAINS[hook] with a file
        (loaded, or present and never loaded), else None."""
        rules, broken = self.rules, self.broken
        for name in CHAINS.get(hook, (hook,)):
            if name in rules or name in broken:
                return name
        return None

    def answered(self) -> dict[str, str]:
        """{broker hook: the hook whose rule file answers it}, in HOOKS' order, for every broker hook a
        file answers (portable hooks are no broker's and never asked)."""
        answered = {}
        for hook, info in HOOKS.items():
            if info.broker != "portable" and (source := self.source(hook)) is not None:
                answered[hook] = source
        return answered

    def __iter__(self) -> Iterator[str]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def versions(self) -> dict[str, str]:
        return {hook: rule.version for hook, rule in self.rules.items()}


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What a scan did with one file: loaded, unchanged, failed (kept or not), removed, invalid name,
    pending (not read yet: it may still be being written) or missing (gone, rule kept for now)."""

    hook: str  # the hook, or the file name when it names none
    result: str  # "loaded" | "unchanged" | "error" | "removed" | "invalid_name" | "pending" | "missing"
    path: str
    version: str = ""
    errors: tuple[RuleError, ...] = ()
    kept_version: str = ""


def rule_files(directory: Path) -> Iterator[Path]:
    """The *.star files directly in the directory; hidden and editor temp files are skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(RULE_SUFFIX) and not entry.name.startswith("."):
            yield Path(entry.path)


def scan(directory: Path, previous: RuleSet, hold: frozenset[str] = frozenset(),
         interpreter: type[RuleInterpreter] = RuleInterpreter, force: bool = False,
         settle: float = 0.0, removable: frozenset[str] | None = None,
         run_clock: Any = None) -> tuple[RuleSet, list[FileOutcome]]:
    """Build the rule set from the directory's current files, reusing what has not changed.

    A rule is rebuilt when its file, a library it loads or the data files change. `hold` names hooks
    whose file is in flux (being written, or briefly gone while an editor renames it away): they
    keep their previous rule, or stay without one, and their file is not read. With `settle`, a file
    modified less than that many seconds ago, or changed while it was read, is "pending" and keeps
    its previous rule too: the watcher's events can arrive after an editor has started writing.
    With `removable`, only those hooks lose their rule when their file is not in the listing; the
    others keep it and are reported "missing": this listing is the only one that counts, an earlier
    look at the directory may have caught another moment of an editor's save.
    """
    data, outcomes = _scan_data(directory, previous.data)  # unchanged data is the same data: no need to force
    context = Context(Libraries(directory), data, interpreter, run_clock)
    rules: dict[str, CompiledRule] = {}
    broken: dict[str, str] = {}
    stale: dict[str, str] = {}
    failed: dict[str, Failure] = {}
    seen: set[str] = set()
    for path in rule_files(directory):
        shown = str(path)
        hook_name = hook_for_file(path.name)
        if hook_name is None:
            outcomes.append(FileOutcome(path.name, "invalid_name", shown, errors=(_invalid_name(path),)))
            continue
        seen.add(hook_name)
        old = previous.get(hook_name)
        raw = None
        if hook_name not in hold:
            problem: RuleError | None = None
            try:
                raw = _read_settled(directory, path, settle)
            except FileNotFoundError:
                raw = None  # renamed away between listing and reading (vim): as if it were briefly gone
                if _dangling_for_a_while(path, settle):  # a ConfigMap update leaves links dangling for a moment only
                    problem = RuleError("load_error", Location(shown), "cannot read: it is a symbolic link to nothing",
                                        "fix or remove the link")
            except FileRefused as exc:
                problem = RuleError("load_error", Location(shown), f"cannot read: {exc.reason}", exc.hint)
            except OSError as exc:
                problem = RuleError("load_error", Location(shown), f"cannot read: {exc.strerror or exc}",
                                    "check the file's permissions")
            if problem is not None:
                outcomes.append(FileOutcome(hook_name, "error", shown, errors=(problem,),
                                            kept_version=old.version if old else ""))
                if old is not None:
                    rules[hook_name] = old
                    stale[hook_name] = shown
                else:
                    broken[hook_name] = shown
                continue
        if raw is None:  # held, gone for a moment, or still being written: keep what served
            if hook_name not in hold:
                outcomes.append(FileOutcome(hook_name, "pending", shown))
            if old is not None:
                rules[hook_name] = old
            elif hook_name in previous.broken:
                broken[hook_name] = previous.broken[hook_name]
            if hook_name in previous.stale:
                stale[hook_name] = previous.stale[hook_name]
            continue
        version = hashlib.sha256(raw).hexdigest()[:12]
        if not force and old is not None and old.file_version == version and old.path == shown and _deps_current(old, context):
            rules[hook_name] = old
            outcomes.append(FileOutcome(hook_name, "unchanged", shown, old.version))
            continue
        failure = previous.failed.get(hook_name)
        if not force and failure is not None and failure.current(shown, version, context, _now()):
            errors: tuple[RuleError, ...] = failure.errors  # nothing it was built from changed: same errors
            failed[hook_name] = failure
        else:
            try:
                with collector_paused():  # and what the compile left collected after it, in this thread
                    rule = compile_rule(shown, raw, HOOKS[hook_name], context)
            except RuleLoadError as exc:
                errors = tuple(exc.errors)
                # what it was built from: an unchanged broken rule is not parsed or linked again
                failed[hook_name] = _failure(shown, version, exc, errors, failure, _now())
            except Exception as exc:  # a limit of the parser, or a bug: this file's error, never the scan's
                errors = (RuleError("load_error", Location(shown), f"cannot load: {type(exc).__name__}: {exc}",
                                    "simplify the file; if it looks right, report this as a hookrules bug"),)
                failed[hook_name] = Failure(shown, version, (), errors)
            else:
                rules[hook_name] = rule
                outcomes.append(FileOutcome(hook_name, "loaded", shown, rule.version))
                continue
        outcomes.append(FileOutcome(hook_name, "error", shown, version, errors, kept_version=old.version if old else ""))
        if old is not None:
            rules[hook_name] = old
            stale[hook_name] = shown
        else:
            broken[hook_name] = shown
    for hook_name, old in previous.rules.items():
        if hook_name in seen:
            continue
        if hook_name in hold:
            rules[hook_name] = old
        elif removable is not None and hook_name not in removable:
            rules[hook_name] = old
            outcomes.append(FileOutcome(hook_name, "missing", old.path, old.version))
        else:
            outcomes.append(FileOutcome(hook_name, "removed", old.path, old.version))
    return (RuleSet(MappingProxyType(rules), MappingProxyType(broken), data, MappingProxyType(failed),
                    MappingProxyType(stale)), outcomes)


#: how long a symbolic link may point to nothing before that is its load error (kubelet swaps `..data`
#: first and removes the links of files no longer in the ConfigMap after)
DANGLING_GRACE = 2.0


def _dangling_for_a_while(path: Path, settle: float) -> bool:
    try:
        if not os.path.islink(path) or os.path.exists(path):
            return False
        return not settle or time.time() - os.lstat(path).st_mtime >= DANGLING_GRACE
    except OSError:
        return False


#: how long a rule file must stay empty before it loads as empty (it decides nothing: every call is
#: ignored): an in-place save truncates first, and on a loaded machine its writer may stall past `settle`
EMPTY_SETTLE = 3.0


def _read_settled(directory: Path, path: Path, settle: float) -> bytes | None:
    """The file's bytes, or None when it may still be being written (see scan). Read the one safe
    way (files.read_file): a regular file inside the directory, of at most MAX_RULE_BYTES."""
    if settle and time.time() - path.stat().st_mtime < settle:
        return None  # young already: not worth reading
    raw, before = read_file(directory, path, MAX_RULE_BYTES, RULE_SIZE_HINT)  # follows links inside: ConfigMaps link into ..data/
    if settle and time.time() - before.st_mtime < settle:
        return None  # changed (truncated by an in-place save?) since the look above: what was read is the fstat's
    after = path.stat()
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
        return None
    if settle and not raw.strip() and time.time() - before.st_mtime < EMPTY_SETTLE:
        return None  # truncated by an in-place save whose writer has not written yet (a loaded machine)
    return raw


def _deps_current(rule: CompiledRule, context: Context) -> bool:
    """Whether every library the rule loaded and the data files are as they were when it compiled."""
    return _versions_current(rule.deps, context)


def _versions_current(deps: tuple[tuple[str, str], ...], context: Context) -> bool:
    for module, version in deps:
        current = context.data.version if module == DATA_DEP else context.libraries.version(module)  # type: ignore[union-attr]
        if current != version:
            return False
    return True


def _scan_data(directory: Path, previous: DataSet) -> tuple[DataSet, list[FileOutcome]]:
    data, found = scan_data(directory, previous)
    return data, [FileOutcome(DATA_HOOK, o.result, o.path, o.version, o.errors, o.kept_version) for o in found]


def _invalid_name(path: Path) -> RuleError:
    names = valid_file_names()
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    hint = (f"did you mean '{close[0]}'? " if close else "") + \
        "name the file after the hook it answers; valid names: " + ", ".join(names)
    return RuleError("load_error", Location(str(path)), f"'{path.name}' names no hook, so it is not loaded", hint)
