"""`hookrules check DIR`: every problem a rules directory has, before it meets a broker.

It loads every rule file exactly as the server would (libraries and data files included), then
looks at what the server would pass over in silence but an author wants to hear about before a
commit: a library no rule loads yet (checked on its own, so it is not broken when one starts to),
a file in data/ the server does not read, and the test tables.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import TextIO

from .datafiles import DATA_DIR, SUFFIXES
from .errors import Location, RuleError, RuleLoadError
from .hooks import RULE_SUFFIX
from .files import MAX_RULE_BYTES, RULE_SIZE_HINT, FileRefused, inside, read_file
from .lang.loader import Libraries, loaded_modules, module_path_problem
from .ruleset import DATA_HOOK, RuleSet, rule_files, scan
from .tester import TESTS_DIR, check_test_files, test_files

LIBRARY_SUFFIX = ".star"


def check_directory(directory: Path, out: TextIO, err: TextIO) -> int:
    """Print every problem as file:line:col, and a summary; the exit status (0: none, 1: some)."""
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
            print(text, file=err)
    for path in _ignored_data_files(directory):
        print(RuleError("load_error", Location(str(path)), "not read: data files are .json, .yaml, .yml or .csv",
                        "rename it, or keep it outside data/").format().replace(": load_error:", ": warning:"),
              file=err)
    rules = [o for o in outcomes if o.hook != DATA_HOOK]
    data = [o for o in outcomes if o.hook == DATA_HOOK]
    bad_rules = sum(1 for o in rules if o.errors)
    summary = f"{len(rules) - bad_rules} rule file(s) OK, {bad_rules} with errors"
    if unused:
        summary += f"; {len(unused)} library file(s) no rule loads"
    if data:
        bad_data = sum(1 for o in data if o.errors)
        summary += f"; {len(data) - bad_data} data file(s) OK, {bad_data} with errors"
    table_problems = check_test_files(directory)
    for problem in table_problems:
        print(problem, file=err)
    tables = len(test_files(directory))
    if tables:
        summary += f"; {tables} test file(s), {len(table_problems)} problem(s)"
    failed = bool(errors or table_problems)
    for line in answering(ruleset):
        print(line, file=out)
    print(summary, file=err if failed else out)
    return 1 if failed else 0


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
