"""`hookrules check DIR`: every problem a rules directory has, before it meets a broker.

It loads every rule file exactly as the server would (libraries and data files included), then
looks at what the server would pass over in silence but an author wants to hear about before a
commit: a library no rule loads yet (checked on its own, so it is not broken when one starts to),
a file in data/ the server does not read, and the test tables.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .datafiles import DATA_DIR, SUFFIXES
from .errors import Location, RuleError, RuleLoadError
from .hooks import RULE_SUFFIX
from .files import MAX_RULE_BYTES, RULE_SIZE_HINT, FileRefused, inside, read_file
from .lang.loader import Libraries, loaded_modules, module_path_problem
from .ruleset import DATA_HOOK, RuleSet, rule_files, scan
from .tester import TESTS_DIR, check_test_files, test_files

LIBRARY_SUFFIX = ".star"


@dataclass
class CheckReport:
    """What `check` found, as data: the text and the JSON output are two renderings of it."""

    errors: list[RuleError] = field(default_factory=list)
    warnings: list[RuleError] = field(default_factory=list)
    table_problems: list[str] = field(default_factory=list)
    answering: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.table_problems)


def inspect_directory(directory: Path) -> CheckReport:
    """Load every rule file as the server would, then look at what it would pass over in silence."""
    report = CheckReport()
    ruleset, outcomes = scan(directory, RuleSet())
    errors = [e for o in outcomes for e in o.errors]
    reached = _loaded_modules(directory)
    libraries = Libraries(directory)
    unused = [m for m in _library_modules(directory) if m not in reached]
    for module in unused:
        try:
            libraries.get(module)
        except RuleLoadError as exc:
            errors.extend(exc.errors)
    shown: set[str] = set()
    for error in errors:
        text = error.format()
        if text not in shown:  # a broken library is reported by every rule that loads it: once is enough
            shown.add(text)
            report.errors.append(error)
    for path in _ignored_data_files(directory):
        report.warnings.append(RuleError("load_error", Location(str(path)),
                                         "not read: data files are .json, .yaml, .yml or .csv",
                                         "rename it, or keep it outside data/"))
    rules = [o for o in outcomes if o.hook != DATA_HOOK]
    data = [o for o in outcomes if o.hook == DATA_HOOK]
    bad_rules = sum(1 for o in rules if o.errors)
    summary = f"{len(rules) - bad_rules} rule file(s) OK, {bad_rules} with errors"
    if unused:
        summary += f"; {len(unused)} library file(s) no rule loads"
    if data:
        bad_data = sum(1 for o in data if o.errors)
        summary += f"; {len(data) - bad_data} data file(s) OK, {bad_data} with errors"
    report.table_problems = check_test_files(directory)
    tables = len(test_files(directory))
    if tables:
        summary += f"; {tables} test file(s), {len(report.table_problems)} problem(s)"
    report.answering = answering(ruleset)
    report.summary = summary
    return report


def check_directory(directory: Path, out: TextIO, err: TextIO, fmt: str = "text") -> int:
    """Print every problem as file:line:col (or all of it as one JSON object), and a summary; the exit
    status (0: none, 1: some)."""
    report = inspect_directory(directory)
    if fmt == "json":
        json.dump(report_json(report), out, indent=2)
        out.write("\n")
        return 1 if report.failed else 0
    for error in report.errors:
        print(error.format(), file=err)
    for warning in report.warnings:
        print(warning.format().replace(": load_error:", ": warning:"), file=err)
    for problem in report.table_problems:
        print(problem, file=err)
    for line in report.answering:
        print(line, file=out)
    print(report.summary, file=err if report.failed else out)
    return 1 if report.failed else 0


_WHERE = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): (?P<message>.*)$", re.DOTALL)


def _problem(error: RuleError, severity: str) -> dict[str, Any]:
    loc = error.location
    return {"severity": severity, "file": loc.file, "line": loc.line or 1, "col": loc.col or 1,
            "code": error.code, "message": error.message, "hint": error.hint}


def _table_problem(text: str) -> dict[str, Any]:
    m = _WHERE.match(text)
    if m is None:
        return {"severity": "error", "file": "", "line": 1, "col": 1, "code": "test_table", "message": text, "hint": ""}
    return {"severity": "error", "file": m["file"], "line": int(m["line"]), "col": int(m["col"]),
            "code": "test_table", "message": m["message"], "hint": ""}


def report_json(report: CheckReport) -> dict[str, Any]:
    """`check --format json`: every problem with file, line and col (1-based, as in the text), for editors
    and CI annotations; `ok` is what the exit status says."""
    return {
        "ok": not report.failed,
        "problems": ([_problem(e, "error") for e in report.errors]
                     + [_table_problem(p) for p in report.table_problems]
                     + [_problem(w, "warning") for w in report.warnings]),
        "answering": report.answering,
        "summary": report.summary,
    }


def answering(ruleset: RuleSet) -> list[str]:
    """For each rule file that answers more than its own hook (a VerneMQ _m5 twin, a portable file),
    the hooks it answers: a broker's own file wins, so this shows who answers what."""
    by_file: dict[str, list[str]] = {}
    for hook, source in ruleset.answered().items():
        by_file.setdefault(source, []).append(hook)
    return [f"{source}{RULE_SUFFIX} answers {', '.join(hooks)}" for source, hooks in sorted(by_file.items())
            if hooks != [source]]


def _library_modules(directory: Path) -> list[str]:
    """Every .star file below a subdirectory (where libraries live), as load() would name it.

    Found by the names an author uses, following links: in a Kubernetes ConfigMap volume `lib` is kubelet's
    link to `..data/lib`, and the real files sit under a hidden `..2026_...` directory, so a walk of the
    real directories (pathlib's rglob) saw none of them. Hidden entries are never entered (`..data` holds
    the same files again, editors keep their temp files there); each real directory is entered once (a
    link back up cannot loop), and only inside the rules directory: what resolves outside is refused by
    load() anyway, and is no part of this directory to list."""
    found: list[str] = []
    entered: set[str] = set()

    def visit(path: Path, rel: tuple[str, ...]) -> None:
        try:
            real = inside(directory, path) if rel else os.path.realpath(directory)
        except (FileRefused, OSError):
            return
        if real in entered:
            return
        entered.add(real)
        try:
            # real directories before links: a file reached both ways is named by its real place
            entries = sorted(os.scandir(path), key=lambda e: (e.is_symlink(), e.name))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links: kubelet's `lib -> ..data/lib`
            except OSError:
                continue
            if is_dir:
                if rel or entry.name not in (TESTS_DIR, DATA_DIR):
                    visit(Path(entry.path), (*rel, entry.name))
            elif rel and entry.name.endswith(LIBRARY_SUFFIX):
                found.append("/".join((*rel, entry.name)))

    visit(directory, ())  # its own files are rules, not libraries; tests/ and data/ hold none
    return sorted(found)


def _loaded_modules(directory: Path) -> set[str]:
    """What the rule files load, and what those libraries load in turn, read from their load()
    statements: a rule that fails on an error of its own still loads its libraries."""
    todo = list(rule_files(directory))
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        try:
            tree = ast.parse(read_file(directory, path, MAX_RULE_BYTES, RULE_SIZE_HINT)[0])
        except (OSError, FileRefused, SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # the scan reports the file's own problem
        for module in loaded_modules(tree):
            if module not in seen and not module_path_problem(module):
                seen.add(module)
                todo.append(directory / module)
    return seen


def _ignored_data_files(directory: Path) -> list[Path]:
    data = directory / DATA_DIR
    if not data.is_dir():
        return []
    return sorted(p for p in data.iterdir()
                  if p.is_file() and p.suffix not in SUFFIXES and not p.name.startswith("."))
