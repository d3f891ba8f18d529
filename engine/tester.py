"""`hookrules test`: table tests kept beside the rules, run through the real engine.

A test file is `<rules>/tests/*.yaml` (or .yml, .json): a list of cases, each
    {name, hook, event: {...names the rule reads...}, expect: {decision, reason, ...}}
Only the expected keys are compared, so a case states just what it is about. Output follows
pytest: a line per case, a diff for each failure, a summary, and line coverage with --coverage.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from .decisions import Decision
from .engine import Engine, Outcome
from .eventspec import SpecError, build_event
from .hooks import Policy
from .ruleset import FileOutcome, Limits, RuleSet, scan
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

    @property
    def passed(self) -> bool:
        return not self.problems


def _rewrite_field(key: str) -> Callable[[Decision], Any]:
    return lambda d: getattr(d, key, None)


def _payload(d: Decision) -> Any:
    payload = getattr(d, "payload", None)
    return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload


def _modifiers(d: Decision) -> Any:
    mods = getattr(d, "modifiers", None)
    return None if mods is None else json.loads(json.dumps(dict(mods), default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


#: expect key -> what of the outcome it is compared with
EXPECTATIONS: dict[str, Callable[[Outcome], Any]] = {
    "decision": lambda o: o.decision.kind,
    "reason": lambda o: getattr(o.decision, "reason", None),
    "error": lambda o: o.error.code if o.error else None,
    "topic": lambda o: _rewrite_field("topic")(o.decision),
    "payload": lambda o: _payload(o.decision),
    "qos": lambda o: _rewrite_field("qos")(o.decision),
    "retain": lambda o: _rewrite_field("retain")(o.decision),
    "topics": lambda o: list(t) if (t := getattr(o.decision, "topics", None)) is not None else None,
    "modifiers": lambda o: _modifiers(o.decision),
    "cache": lambda o: getattr(o.decision, "cache", None),
}


def _compare(expect: Any, outcome: Outcome) -> list[str]:
    if not isinstance(expect, Mapping) or not expect:
        return ["'expect' must be a mapping with at least 'decision'"]
    problems = []
    for key, wanted in expect.items():
        getter = EXPECTATIONS.get(key)
        if getter is None:
            problems.append(f"unknown expectation '{key}'; known: {', '.join(EXPECTATIONS)}")
            continue
        got = getter(outcome)
        if key == "topics" and isinstance(wanted, tuple):
            wanted = list(wanted)
        if got != wanted:
            problems.append(f"{key}: expected {wanted!r}, got {got!r}")
    if problems and outcome.error is not None and "error" not in expect:
        problems.append(f"the rule failed: {outcome.error.one_line()}")
    return problems


def load_cases(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text)
    if isinstance(data, Mapping) and "cases" in data:
        data = data["cases"]
    if not isinstance(data, list):
        raise ValueError("a test file is a list of cases (or a mapping with 'cases')")
    return data


def check_test_files(directory: Path) -> list[str]:
    """Problems in the test tables a run would hit before any rule runs (for `hookrules check`)."""
    problems: list[str] = []
    for path in test_files(directory):
        try:
            cases = load_cases(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{path}: cannot read the test file: {exc}")
            continue
        for index, case in enumerate(cases):
            where = f"{path}: case {index + 1}"
            if not isinstance(case, Mapping):
                problems.append(f"{where}: a case is a mapping with name, hook, event, expect")
                continue
            where = f"{path}: {case.get('name') or f'case {index + 1}'}"
            hook = case.get("hook")
            if not isinstance(hook, str):
                problems.append(f"{where}: the case has no 'hook'")
                continue
            try:
                build_event(hook, case.get("event") or {})
            except SpecError as exc:
                problems.append(f"{where}: event: {exc}")
            expect = case.get("expect")
            if not isinstance(expect, Mapping) or not expect:
                problems.append(f"{where}: 'expect' must be a mapping with at least 'decision'")
            else:
                problems.extend(f"{where}: unknown expectation '{k}'; known: {', '.join(EXPECTATIONS)}"
                                for k in expect if k not in EXPECTATIONS)
    return problems


def run_case(engine: Engine, file: str, index: int, case: Any) -> CaseResult:
    if not isinstance(case, Mapping):
        return CaseResult(file, f"case {index + 1}", ["a case is a mapping with name, hook, event, expect"])
    result = CaseResult(file, str(case.get("name") or f"case {index + 1}"))
    hook = case.get("hook")
    if not isinstance(hook, str):
        result.problems.append("the case has no 'hook'")
        return result
    try:
        event = build_event(hook, case.get("event") or {})
    except SpecError as exc:
        result.problems.append(f"event: {exc}")
        return result
    outcome = engine.decide(event)
    result.problems.extend(_compare(case.get("expect"), outcome))
    return result


def test_files(directory: Path) -> list[Path]:
    tests = directory / TESTS_DIR
    if not tests.is_dir():
        return []
    return sorted(p for p in tests.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))


def run_tests(directory: Path, out: TextIO, *, coverage: bool = False, verbose: bool = True,
              policies: Mapping[str, Policy] | None = None, limits: Limits | None = None) -> int:
    """Run every case of the directory's tests; the exit status (0 all passed, 1 any failed)."""
    interpreter: type[RuleInterpreter] = TracingInterpreter if coverage else RuleInterpreter
    ruleset, outcomes = scan(directory, RuleSet(), interpreter=interpreter)
    load_errors = [o for o in outcomes if o.errors]
    for bad in load_errors:
        for err in bad.errors:
            out.write(err.format() + "\n")
    engine = Engine(ruleset, policies, limits)
    results: list[CaseResult] = []
    files = test_files(directory)
    for path in files:
        shown = str(path)
        try:
            cases = load_cases(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            results.append(CaseResult(shown, "(file)", [f"cannot read the test file: {exc}"]))
            continue
        for index, case in enumerate(cases):
            results.append(run_case(engine, shown, index, case))
    for r in results:
        if verbose or not r.passed:
            out.write(f"{r.file}::{r.name} {'PASSED' if r.passed else 'FAILED'}\n")
    failed = [r for r in results if not r.passed]
    if failed:
        out.write("\n" + "=" * 30 + " failures " + "=" * 30 + "\n")
        for r in failed:
            out.write(f"FAILED {r.file}::{r.name}\n")
            for problem in r.problems:
                out.write(f"    {problem}\n")
    if coverage:
        _coverage_report(ruleset, outcomes, out)
    passed = len(results) - len(failed)
    if not files:
        out.write(f"no test files in {directory / TESTS_DIR}\n")
    if load_errors:
        out.write(f"{len(load_errors)} file(s) failed to load\n")
    out.write(f"{passed} passed, {len(failed)} failed\n")
    return 1 if failed or load_errors or not results else 0


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
                files[lib_path] = _library_lines(Path(lib_path))
    out.write("\ncoverage (statement lines run by the tests):\n")
    width = max((len(p) for p in files), default=0)
    for path in sorted(files):
        lines = files[path]
        hit = {line for file, line in covered if file == path} & lines
        missing = sorted(lines - hit)
        pct = 100.0 * len(hit) / len(lines) if lines else 100.0
        detail = f"  missing: {_ranges(missing)}" if missing else ""
        out.write(f"  {path:<{width}}  {len(hit):>3}/{len(lines):<3} {pct:5.1f}%{detail}\n")


def _library_lines(path: Path) -> set[int]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
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
