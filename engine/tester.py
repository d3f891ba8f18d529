"""`hookrules test`: table tests kept beside the rules, run through the real engine.

A test file is `<rules>/tests/*.yaml` (or .yml, .json): a list of cases, each
    {name, hook, broker (optional, checked), event: {...names the rule reads...}, expect: {decision, reason, ...}}
Only the expected keys are compared, so a case states just what it is about. Output follows
pytest: a line per case, a diff for each failure, a summary, and line coverage with --coverage.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, get_args

import yaml

from .datafiles import MAX_DATA_BYTES, DataError, parse as parse_data
from .decisions import Decision, Kind
from .files import MAX_RULE_BYTES, FileRefused, read_file
from .engine import Engine, Outcome
from .errors import Code
from .emqxoptions import OPTIONS as EMQX_OPTIONS
from .emqxoptions import reply_fields
from .events import Event
from .eventspec import SpecError, build_event
from .hooks import HOOKS, RULE_SUFFIX, Policy
from .ruleset import FileOutcome, Limits, RuleSet, scan
from .testreport import junit_xml, write_text
from .watchdog import RunClock
from .lang.builtins import RULE_LOGGER, unlimited_log
from .lang.interp import RuleInterpreter
from .lang.loader import strip_loads
from .lang.trace import TracingInterpreter, statement_lines

TESTS_DIR = "tests"
SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class CaseResult:
    file: str
    name: str
    problems: list[str] = field(default_factory=list)
    line: int = 0
    #: what the rule's log() calls said during the case, shown under a failure (pytest's captured log)
    logs: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _rewritten(key: str) -> Callable[[Outcome, Event], Any]:
    """A message field the rule rewrote; None when it kept the broker's value (`topic: null` in a
    table says "not rewritten")."""

    def get(o: Outcome, event: Event) -> Any:
        value = getattr(o.decision, key, None)
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    return get


MESSAGE_FIELDS = ("topic", "payload", "qos", "retain")


def _modifiers(d: Decision) -> Any:
    mods = getattr(d, "modifiers", None)
    return None if mods is None else json.loads(json.dumps(dict(mods), default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _emqx_option(name: str) -> Callable[[Outcome, Event], Any]:
    """allow(superuser/attrs/expire_at/acl=...) as EMQX's HTTP authenticator receives it (plain JSON)."""
    field = EMQX_OPTIONS[name]

    def get(o: Outcome, event: Event) -> Any:
        return reply_fields(o.decision).get(field)

    return get


#: expect key -> what of the outcome (and the event it answered) it is compared with
EXPECTATIONS: dict[str, Callable[[Outcome, Event], Any]] = {
    "decision": lambda o, e: o.decision.kind,
    "reason": lambda o, e: getattr(o.decision, "reason", None),
    "error": lambda o, e: o.error.code if o.error else None,
    "topic": _rewritten("topic"),
    "payload": _rewritten("payload"),
    "qos": _rewritten("qos"),
    "retain": _rewritten("retain"),
    "topics": lambda o, e: list(t) if (t := getattr(o.decision, "topics", None)) is not None else None,
    "modifiers": lambda o, e: _modifiers(o.decision),
    "cache": lambda o, e: getattr(o.decision, "cache", None),
    "tags": lambda o, e: list(t) if (t := getattr(o.decision, "tags", None)) is not None else None,
    **{name: _emqx_option(name) for name in EMQX_OPTIONS},
}
CASE_KEYS = ("name", "hook", "broker", "event", "expect")
DECISIONS: tuple[str, ...] = get_args(Kind)
ERROR_CODES: tuple[str, ...] = get_args(Code)


def _unknown(what: str, key: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
    return f"unknown {what} '{key}'{hint}"


@dataclass
class Case:
    """One table row, checked before it runs: a typo must fail the case, never test nothing."""

    file: str
    line: int
    name: str
    event: Event | None = None
    expect: Mapping[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:1" if self.line else self.file


def parse_case(file: str, line: int, index: int, raw: Any) -> Case:
    if not isinstance(raw, Mapping):
        return Case(file, line, f"case {index + 1}", problems=["a case is a mapping with name, hook, event, expect"])
    case = Case(file, line, str(raw.get("name") or f"case {index + 1}"))
    problems = case.problems
    problems.extend(_unknown("case key", k, CASE_KEYS) for k in raw if k not in CASE_KEYS)
    hook = raw.get("hook")
    info = HOOKS.get(hook) if isinstance(hook, str) else None
    if not isinstance(hook, str):
        problems.append("the case has no 'hook'")
    elif info is None:
        problems.append(_unknown("hook", hook, sorted(HOOKS)))
    broker = raw.get("broker")
    if info is not None and broker is not None and broker != info.broker:
        problems.append(f"broker: {hook} is {info.broker}'s hook, not {str(broker)[:40]}'s")
    if info is not None:
        try:
            case.event = build_event(hook, raw.get("event") or {})  # type: ignore[arg-type]
        except SpecError as exc:
            problems.append(f"event: {exc}")
    expect = raw.get("expect")
    if not isinstance(expect, Mapping) or not expect:
        problems.append("'expect' must be a mapping with at least 'decision'")
        return case
    case.expect = expect
    problems.extend(_unknown("expectation", k, list(EXPECTATIONS)) for k in expect if k not in EXPECTATIONS)
    if "decision" not in expect:
        problems.append("'expect' has no 'decision'")
    else:
        if expect["decision"] not in DECISIONS:
            problems.append(_unknown("decision", expect["decision"], DECISIONS))
        if "error" in expect and expect["error"] is not None and expect["error"] not in ERROR_CODES:
            problems.append(_unknown("error code", expect["error"], ERROR_CODES))
    return case


def _compare(expect: Mapping[str, Any], outcome: Outcome, event: Event) -> list[str]:
    problems = []
    for key, wanted in expect.items():
        got = EXPECTATIONS[key](outcome, event)
        if key == "topics" and isinstance(wanted, tuple):
            wanted = list(wanted)
        if got != wanted:
            kept = ""
            if got is None and key in MESSAGE_FIELDS and event.message is not None:
                original = getattr(event.message, key)
                shown = original.decode("utf-8", errors="replace") if isinstance(original, bytes) else original
                kept = f" (not rewritten: the message keeps {shown!r})"
            problems.append(f"{key}: expected {wanted!r}, got {got!r}{kept}")
    if problems and outcome.error is not None and "error" not in expect:
        problems.append(f"the rule failed: {outcome.error.one_line()}")
    if problems:  # which file answered: the hook's own, its twin's, or a portable one
        problems.append(f"answered by {outcome.rule}{RULE_SUFFIX}" if outcome.rule
                        else f"no rule file answers {event.hook}")
    return problems


def load_cases(path: Path, root: Path | None = None) -> list[tuple[int, Any]]:
    """The cases of a test file, each with the line it starts on (0 when unknown).

    Read like every file of the rules directory (`root`, by default the tests directory's parent):
    only a regular file inside it, within the data files' size limit (a FIFO hung `hookrules test`,
    a link to /dev/zero ran it out of memory), and parsed like a data file (no YAML aliases: a
    billion laughs). DataError, FileRefused or OSError when it cannot be."""
    raw, _ = read_file(root if root is not None else path.parent.parent, path, MAX_DATA_BYTES)
    data = _thaw(parse_data(str(path), raw))
    text = raw.decode("utf-8")
    listed = isinstance(data, Mapping) and "cases" in data
    if listed:
        data = data["cases"]
    if not isinstance(data, list):
        raise ValueError("a test file is a list of cases (or a mapping with 'cases')")
    return list(zip(_case_lines(text, listed, len(data)), data))


def _thaw(value: Any) -> Any:
    """Plain lists and dicts from a data file's frozen values: a case is edited as it is read."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _case_lines(text: str, listed: bool, count: int) -> list[int]:
    """Where each case starts, from YAML's node marks (JSON is YAML enough for this)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if listed and isinstance(node, yaml.MappingNode):
            node = next(v for k, v in node.value if k.value == "cases")
        if isinstance(node, yaml.SequenceNode) and len(node.value) == count:
            return [item.start_mark.line + 1 for item in node.value]
    except (yaml.YAMLError, StopIteration):
        pass
    return [0] * count


def check_test_files(directory: Path) -> list[str]:
    """Problems in the test tables a run would hit before any rule runs (for `hookrules check`)."""
    problems: list[str] = []
    for path in test_files(directory):
        try:
            cases = load_cases(path, directory)
        except (OSError, ValueError, yaml.YAMLError, DataError, FileRefused) as exc:
            problems.append(f"{path}:1:1: cannot read the test file: {exc}")
            continue
        for index, (line, raw) in enumerate(cases):
            case = parse_case(str(path), line, index, raw)
            problems.extend(f"{case.where}: {case.name}: {p}" for p in case.problems)
    return problems


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_case(engine: Engine, case: Case) -> CaseResult:
    result = CaseResult(case.file, case.name, list(case.problems), case.line)
    if case.event is None or case.problems:
        return result
    logger = logging.getLogger(RULE_LOGGER)
    captured = _Captured()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        outcome = engine.decide(case.event)
    finally:
        logger.removeHandler(captured)
        logger.setLevel(level)
        logger.propagate = propagate
    result.problems.extend(_compare(case.expect, outcome, case.event))
    result.logs = captured.lines
    return result


def test_files(directory: Path) -> list[Path]:
    tests = directory / TESTS_DIR
    if not tests.is_dir():
        return []
    return sorted(p for p in tests.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))


def run_tests(directory: Path, out: TextIO, *, coverage: bool = False, verbose: bool = True,
              policies: Mapping[str, Policy] | None = None, limits: Limits | None = None,
              run_clock: RunClock | None = None, fmt: str = "text", err: TextIO | None = None) -> int:
    """Run every case of the directory's tests; the exit status (0 all passed, 1 any failed).

    `fmt` text is for people; json and junit (JUnit XML, what CI systems show as test results) are
    for machines: then the coverage report, if asked for, goes to `err`."""
    interpreter: type[RuleInterpreter] = TracingInterpreter if coverage else RuleInterpreter
    ruleset, outcomes = scan(directory, RuleSet(), interpreter=interpreter)
    load_errors = [o for o in outcomes if o.errors]
    engine = Engine(ruleset, policies, limits)
    engine.run_clock = run_clock  # a watchdog's: a step stuck in C must not hang a CI job
    results: list[CaseResult] = []
    files = test_files(directory)
    for path in files:
        shown = str(path)
        try:
            cases = load_cases(path, directory)
        except (OSError, ValueError, yaml.YAMLError, DataError, FileRefused) as exc:
            results.append(CaseResult(shown, "(file)", [f"cannot read the test file: {exc}"]))
            continue
        with unlimited_log():
            for index, (line, raw) in enumerate(cases):
                results.append(run_case(engine, parse_case(shown, line, index, raw)))
    failed = [r for r in results if not r.passed]
    status = 1 if failed or load_errors or not results else 0
    load_texts = [e.format() for o in load_errors for e in o.errors]
    if fmt == "json":
        json.dump({"ok": status == 0, "passed": len(results) - len(failed), "failed": len(failed),
                   "load_errors": load_texts,
                   "cases": [{"file": r.file, "name": r.name, "line": r.line or 1, "passed": r.passed,
                              "problems": r.problems, "logs": r.logs} for r in results]}, out, indent=2)
        out.write("\n")
    elif fmt == "junit":
        out.write(junit_xml(directory, results, load_texts))
    else:
        for text in load_texts:
            out.write(text + "\n")
        write_text(out, results, failed, verbose)
    if coverage:
        _coverage_report(ruleset, outcomes, out if fmt == "text" else (err or out))
    if fmt == "text":
        if not files:
            out.write(f"no test files in {directory / TESTS_DIR}\n")
        if load_errors:
            out.write(f"{len(load_errors)} file(s) failed to load\n")
        out.write(f"{len(results) - len(failed)} passed, {len(failed)} failed\n")
    return status


def _coverage_report(ruleset: RuleSet, outcomes: list[FileOutcome], out: TextIO) -> None:
    """Line coverage per rule file and library: which statements ran in any case."""
    covered: set[tuple[str, int]] = set()
    files: dict[str, set[int]] = {}
    for rule in ruleset.rules.values():
        interp = rule.interp
        if isinstance(interp, TracingInterpreter):
            covered |= interp.covered
        files[rule.path] = statement_lines(rule.tree)
        for module, _ in rule.deps:
            lib_path = str(Path(rule.path).parent / module)
            if module.endswith(".star") and lib_path not in files:
                files[lib_path] = _library_lines(Path(rule.path).parent, Path(lib_path))
    out.write("\ncoverage (statement lines run by the tests):\n")
    width = max((len(p) for p in files), default=0)
    for path in sorted(files):
        lines = files[path]
        hit = {line for file, line in covered if file == path} & lines
        missing = sorted(lines - hit)
        pct = 100.0 * len(hit) / len(lines) if lines else 100.0
        detail = f"  missing: {_ranges(missing)}" if missing else ""
        out.write(f"  {path:<{width}}  {len(hit):>3}/{len(lines):<3} {pct:5.1f}%{detail}\n")


def _library_lines(root: Path, path: Path) -> set[int]:
    try:
        raw, _ = read_file(root, path, MAX_RULE_BYTES)  # the one safe reader, like the scan's
        tree = ast.parse(raw.decode("utf-8"))
    except (OSError, SyntaxError, ValueError, FileRefused):
        return set()
    strip_loads(tree)
    return statement_lines(tree)


def _ranges(lines: list[int]) -> str:
    out: list[str] = []
    start = prev = None
    for n in lines + [None]:
        if start is not None and n is not None and n == prev + 1:  # type: ignore[operator]
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(out)
