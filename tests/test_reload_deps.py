"""Issue 9 points 4 and 7: linking once per compile under one budget, and rebuilding a rule whenever
anything it loads or tried to load changes; and the reloader's worker-thread scans.

A rule that loaded a library before it existed (or while it was broken) stayed on its failure policy
after the library was added or fixed, with no log line: `Linker._module` raised before recording the
dependency. Each case below is one way a dependency can change, at one depth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from hookrules import datafiles, reload, ruleset as ruleset_module
from hookrules.engine import Engine
from hookrules.lang import loader
from hookrules.lang.interp import RuleInterpreter
from hookrules.reload import Reloader
from hookrules.ruleset import RuleSet, scan

from .bad_files import diamond_files
from .test_files import authn

AUTHN = "client.authenticate.star"
RULE = 'load("lib/a.star", "who")\nif client.username == who():\n    allow()\nelse:\n    deny("no")\n'
CHAIN = 'load("lib/b.star", "who")\n'  # lib/a.star re-exports lib/b.star's who()
GOOD = 'def who():\n    return "alice"\n'
BROKEN = 'def who(:\n    return "alice"\n'
FAILING = 'X = {}["k"]\ndef who():\n    return "alice"\n'


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def answer(reloader: Reloader) -> str:
    out = reloader.engine.decide(authn("alice"))
    return "allow" if out.source == "rule" and type(out.decision).__name__ == "Allow" else out.source


async def poll(predicate: Callable[[], object], tries: int = 500) -> None:
    """Await until predicate() is true, every 10 ms, at most `tries` times (the test asserts after)."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)


# (library state before, library state after): each a change the rule must follow
CHANGES = {"added": (None, GOOD), "fixed_syntax": (BROKEN, GOOD), "fixed_top_level": (FAILING, GOOD)}


@pytest.mark.parametrize("depth", ["direct", "through_a_library"])
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("had_version", [False, True])
def test_a_rule_follows_a_library_that_appears_or_is_fixed(tmp_path: Path, depth: str, change: str, had_version: bool,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    before, after = CHANGES[change]
    target = "lib/a.star" if depth == "direct" else "lib/b.star"
    if depth == "through_a_library":
        write(tmp_path, "lib/a.star", CHAIN)
    if had_version:  # an older version of the rule, without the load, serves meanwhile (stale)
        write(tmp_path, AUTHN, 'deny("old")\n')
    else:
        write(tmp_path, AUTHN, RULE)
    if before is not None:
        write(tmp_path, target, before)
    reloader = Reloader(tmp_path, Engine(), settle=0.0)
    reloader.load()
    if had_version:
        write(tmp_path, AUTHN, RULE)
        reloader.rescan()
        assert reloader.engine.ruleset.stale == {"client.authenticate": str(tmp_path / AUTHN)}
    else:
        assert reloader.engine.ruleset.broken == {"client.authenticate": str(tmp_path / AUTHN)}
    assert answer(reloader) != "allow"
    write(tmp_path, target, after)
    with caplog.at_level(logging.INFO, logger="hookrules.reload"):
        outcomes = reloader.rescan()
    assert [o.result for o in outcomes if o.hook == "client.authenticate"] == ["loaded"]
    assert answer(reloader) == "allow"
    ruleset = reloader.engine.ruleset
    assert not ruleset.broken and not ruleset.stale
    assert any("client.authenticate.star" in r.getMessage() and "loaded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("depth", ["direct", "through_a_library"])
@pytest.mark.parametrize("change", ["removed", "broken"])
def test_a_rule_follows_a_library_that_is_removed_or_broken(tmp_path: Path, depth: str, change: str) -> None:
    target = "lib/a.star" if depth == "direct" else "lib/b.star"
    if depth == "through_a_library":
        write(tmp_path, "lib/a.star", CHAIN)
    write(tmp_path, target, GOOD)
    write(tmp_path, AUTHN, RULE)
    reloader = Reloader(tmp_path, Engine(), settle=0.0)
    reloader.load()
    assert answer(reloader) == "allow"
    if change == "removed":
        (tmp_path / target).unlink()
    else:
        write(tmp_path, target, BROKEN)
    outcomes = reloader.rescan()
    assert [o.result for o in outcomes if o.hook == "client.authenticate"] == ["error"]
    assert reloader.engine.ruleset.stale == {"client.authenticate": str(tmp_path / AUTHN)}
    write(tmp_path, target, GOOD.replace("alice", "bob"))
    assert [o.result for o in reloader.rescan() if o.hook == "client.authenticate"] == ["loaded"]
    assert answer(reloader) != "allow" and not reloader.engine.ruleset.stale


def diamond(root: Path, levels: int) -> None:
    """The rule loads the top and never calls f (that would take 2^levels calls)."""
    for rel, text in diamond_files("lib", levels, AUTHN, bottom='log("bottom ran")\n').items():
        write(root, rel, text)


class SpyClock:
    """A watchdog clock that records what told it what."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.spent: list[float] = []

    def started(self, hook: str) -> None:
        self.calls.append(f"run {hook}")

    def finished(self) -> None:
        self.calls.append("run end")

    def compile_started(self, hook: str, spent: float = 0.0) -> None:
        self.calls.append(f"compile {hook}")
        self.spent.append(spent)

    def compile_finished(self) -> None:
        self.calls.append("compile end")


def test_a_diamond_of_libraries_runs_each_once_per_compile_under_one_budget_and_one_watchdog_stretch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """18 levels: the bottom library ran 2^18 times (116 s, the watchdog blind: its clock restarted
    for each library). Result: once; every library top level of the compile gets the same deadline;
    the watchdog sees the runs, and only them, as one stretch in its compile slot, with the rule's hook:
    each run's deadline is what the earlier runs left of the budget, and the watchdog's stretch goes on
    from what they spent (reading and checking between runs are in neither)."""
    diamond(tmp_path, 18)
    remaining: list[float] = []
    real = RuleInterpreter.execute

    def spy(self: RuleInterpreter, tree: Any, symtable: Any, max_steps: int, deadline: float,
                body: Any = None) -> Any:
        remaining.append(deadline - time.monotonic())
        return real(self, tree, symtable, max_steps, deadline, body)

    monkeypatch.setattr(RuleInterpreter, "execute", spy)
    clock = SpyClock()
    with caplog.at_level(logging.INFO, logger="hookrules.rule"):
        rs, outcomes = scan(tmp_path, RuleSet(), run_clock=clock)
    assert [o.errors for o in outcomes] == [()]
    assert sum(1 for r in caplog.records if r.getMessage().endswith("bottom ran")) == 1
    assert len(remaining) == 1 + 2 * 18  # l0a, then both of each level
    assert all(r <= loader.LIBRARY_TIMEOUT - spent for r, spent in zip(remaining, clock.spent))
    assert clock.calls == ["compile client.authenticate", "compile end"] * len(remaining)
    assert clock.spent == sorted(clock.spent) and clock.spent[0] == 0.0 and clock.spent[-1] > 0
    assert Engine(rs).decide(authn("x")).source == "rule"


def test_a_compile_over_its_library_budget_is_a_load_error_naming_the_library(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is the whole compile's, checked before each library too (not only inside a run)."""
    monkeypatch.setattr(loader, "LIBRARY_TIMEOUT", 0.0)
    write(tmp_path, "lib/a.star", "A = 1\n")
    write(tmp_path, AUTHN, 'load("lib/a.star", "A")\nallow()\n')
    _, outcomes = scan(tmp_path, RuleSet())
    errors = [e for o in outcomes for e in o.errors]
    assert any(e.location.file == str(tmp_path / "lib/a.star") and "took over" in e.message for e in errors), \
        [e.one_line() for e in errors]


def test_an_unchanged_broken_file_is_not_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules had failure caching only when their libraries failed; data files had none (a 2.2 MB YAML
    file with an error at its end was parsed again on every rescan). Result: rules, libraries and data
    files are each parsed once per content, broken or not."""
    write(tmp_path, AUTHN, "allow(\n")
    write(tmp_path, "auth_on_register.star", 'load("lib/x.star", "X")\nallow()\n')
    write(tmp_path, "lib/x.star", "X = (\n")
    write(tmp_path, "data/d.yaml", "a: [\n")
    write(tmp_path, "data/e.json", "[" + "7" * 5000 + "]")
    parsed: list[str] = []
    real_check, real_parse = ruleset_module.check, datafiles._parse
    monkeypatch.setattr(ruleset_module, "check", lambda path, *a: parsed.append(path) or real_check(path, *a))
    monkeypatch.setattr(datafiles, "_parse", lambda path, raw: parsed.append(path) or real_parse(path, raw))
    rs, first = scan(tmp_path, RuleSet())
    assert len(parsed) == 4 and sum(1 for o in first if o.errors) == 4
    parsed.clear()
    rs, again = scan(tmp_path, rs)
    assert parsed == [] and [(o.path, o.errors) for o in again] == [(o.path, o.errors) for o in first]
    write(tmp_path, "data/d.yaml", "a: [1]\n")
    write(tmp_path, AUTHN, "allow()\n")
    rs, fixed = scan(tmp_path, rs)
    assert sorted(parsed) == sorted([str(tmp_path / "data/d.yaml"), str(tmp_path / AUTHN)])
    assert rs.data.files["d"].value == {"a": (1,)} and "client.authenticate" in rs.rules


def test_the_reloader_scans_off_the_loop_and_survives_a_failed_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception in one rescan stopped every later one (the periodic task died with it).
    Result: logged, and the next request scans again; scans run in the worker thread, and requests
    made during one are served by one more scan after it."""
    write(tmp_path, AUTHN, 'deny("v1")\n')
    threads: list[str] = []
    real_scan = reload.scan
    fail = [True]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        import threading
        threads.append(threading.current_thread().name)
        if fail[0]:
            fail[0] = False
            raise ValueError("boom")
        return real_scan(*args, **kwargs)

    async def main() -> list[str]:
        reloader = Reloader(tmp_path, Engine(), settle=0.0, rescan_interval=0)
        reloader.load()
        monkeypatch.setattr(reload, "scan", flaky)
        reloader.start(asyncio.get_running_loop())
        try:
            done: list[list[Any]] = []
            write(tmp_path, AUTHN, "allow()\n")
            reloader.request(done=done.append)  # fails: logged, and a retry is scheduled
            for _ in range(3):
                reloader.request(done=done.append)  # asked meanwhile: one more scan after it
            await poll(lambda: done and answer(reloader) == "allow")
            return [answer(reloader), str(len(done))]
        finally:
            reloader.stop()

    with caplog.at_level(logging.ERROR, logger="hookrules.reload"):
        result = asyncio.run(main())
    assert result == ["allow", "4"]
    assert any("internal error rescanning" in r.getMessage() for r in caplog.records)
    assert threads and all(name.startswith("hookrules-scan") for name in threads)
    assert len(threads) == 2  # the failed scan, and one for the three requests made meanwhile
