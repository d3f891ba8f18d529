"""Issue 9 live audit, F1 and F2: what a compile's time budgets may and may not do.

F1: a rule loading 40 libraries of 64 KiB got the server SIGKILLed by the watchdog at start-up and on
every reload: one watchdog stretch covered reading and checking every library. Now the watchdog sees
the libraries' top-level runs only, and reading, checking and running share a CPU budget whose end
is a load error of the rule.
F2: a library that ran past its deadline on a busy machine was cached as a permanent failure: the
save (a revocation) never deployed until SIGHUP. Now every failure that depends on time is retried,
with backoff; failures that depend on the files alone are still cached.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hookrules import ruleset as ruleset_module
from hookrules.engine import Engine
from hookrules.lang import loader
from hookrules.lang.interp import RuleInterpreter
from hookrules.reload import Reloader
from hookrules.ruleset import RuleSet, scan

from .test_files import authn
from .test_reload_deps import AUTHN, SpyClock, answer, poll, write

SLOW_LIB = "N = 0\nfor i in range(3000):\n    N = N + i\ndef who():\n    return 'alice'\n"
RULE = 'load("lib/slow.star", "who")\nif client.username == who():\n    allow()\nelse:\n    deny("no")\n'


def _time_out_library_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every library run finds its deadline already past, as on a machine too busy to run it in time."""
    runs: list[int] = []
    real = RuleInterpreter.execute

    def counted(self: RuleInterpreter, tree: Any, symtable: Any, max_steps: int, deadline: float,
                body: Any = None) -> Any:
        runs.append(1)
        return real(self, tree, symtable, max_steps, deadline, body)

    monkeypatch.setattr(RuleInterpreter, "execute", counted)
    monkeypatch.setattr(loader, "LIBRARY_TIMEOUT", 1e-9)
    return runs


def test_a_library_that_ran_out_of_time_is_tried_again_and_a_code_failure_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "lib/slow.star", SLOW_LIB)
    write(tmp_path, AUTHN, RULE)
    runs = _time_out_library_runs(monkeypatch)
    rs, outcomes = scan(tmp_path, RuleSet())
    assert [o.result for o in outcomes] == ["error"]
    assert any("deadline" in e.message for e in outcomes[0].errors), outcomes[0].errors
    failure = rs.failed["client.authenticate"]
    assert failure.retry_at > time.monotonic() and failure.backoff == ruleset_module.RETRY_FIRST
    assert ruleset_module.next_retry(rs) == failure.retry_at
    # before its retry time the failure stands without running anything again
    rs2, outcomes = scan(tmp_path, rs)
    assert len(runs) == 1 and [o.result for o in outcomes] == ["error"]
    # the machine is still busy at the retry: it fails again, and waits twice as long
    monkeypatch.setattr(ruleset_module, "_now", lambda: failure.retry_at + 0.01)
    rs3, _ = scan(tmp_path, rs2)
    assert len(runs) == 2 and rs3.failed["client.authenticate"].backoff == 2 * ruleset_module.RETRY_FIRST
    # the machine is idle again: the retry loads the rule
    monkeypatch.setattr(loader, "LIBRARY_TIMEOUT", 1.0)
    retry_at = rs3.failed["client.authenticate"].retry_at
    monkeypatch.setattr(ruleset_module, "_now", lambda: retry_at + 0.01)
    rs4, outcomes = scan(tmp_path, rs3)
    assert [o.result for o in outcomes] == ["loaded"] and not rs4.failed
    assert Engine(rs4).decide(authn("alice")).source == "rule"


@pytest.mark.parametrize("library", [
    "X = {}['k']\n",  # fails to run
    "N = 0\nfor i in range(1000000):\n    N = N + i\n",  # out of steps: the code alone
    "def f(:\n    pass\n",  # does not parse
])
def test_failures_of_the_files_alone_are_cached_without_a_retry(tmp_path: Path, library: str) -> None:
    write(tmp_path, "lib/slow.star", library)
    write(tmp_path, AUTHN, RULE)
    rs, outcomes = scan(tmp_path, RuleSet())
    assert [o.result for o in outcomes] == ["error"]
    assert rs.failed["client.authenticate"].retry_at == 0.0 and ruleset_module.next_retry(rs) is None


def test_the_reloader_retries_a_time_dependent_failure_by_itself(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit's case: the save (deny) failed while the machine was busy, and no rescan ever
    retried it. Nothing changes in the directory here: only the retry can deploy it."""
    write(tmp_path, "lib/slow.star", SLOW_LIB)
    write(tmp_path, AUTHN, 'deny("old")\n')
    monkeypatch.setattr(ruleset_module, "RETRY_FIRST", 0.2)

    async def main() -> list[str]:
        reloader = Reloader(tmp_path, Engine(), settle=0.0, rescan_interval=0)
        reloader.load()
        seen = [answer(reloader)]
        monkeypatch.setattr(loader, "LIBRARY_TIMEOUT", 1e-9)  # a machine too busy to run it in time
        reloader.start(asyncio.get_running_loop())
        try:
            write(tmp_path, AUTHN, RULE)
            done: list[Any] = []
            reloader.request(done=done.append)
            await poll(lambda: done)
            seen.append(answer(reloader))
            monkeypatch.setattr(loader, "LIBRARY_TIMEOUT", 1.0)
            await poll(lambda: answer(reloader) == "allow")
            seen.append(answer(reloader))
            return seen
        finally:
            reloader.stop()

    assert asyncio.run(main()) == ["rule", "rule", "allow"]  # deny (old), still old, then the new rule


def count_checks(monkeypatch: pytest.MonkeyPatch, cost: float = 0.0) -> list[str]:
    """The libraries checked from now on, in order; each check first spends `cost` s of CPU time (what
    the compile budget counts)."""
    checks: list[str] = []
    real_check = loader.Libraries._check

    def counting(module: str, shown: str, version: str, data: bytes) -> Any:
        checks.append(module)
        deadline = time.thread_time() + cost
        while time.thread_time() < deadline:
            pass
        return real_check(module, shown, version, data)

    monkeypatch.setattr(loader.Libraries, "_check", staticmethod(counting))
    return checks


def test_reading_and_checking_libraries_are_outside_the_watchdogs_stretch_and_under_the_cpu_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 big libraries: the watchdog killed the server while they were being checked. The watchdog
    is now told only about runs, and their stretch goes on from the runs before it (not from the
    compile's start); a compile that spends its CPU budget stops reading libraries, as a transient
    load error of the rule."""
    checks = count_checks(monkeypatch, cost=0.02)
    loader._CHECKED.clear()
    for k in range(10):
        write(tmp_path, f"lib/l{k}.star", f"def f{k}():\n    return {k}\n")
    write(tmp_path, AUTHN, "".join(f'load("lib/l{k}.star", "f{k}")\n' for k in range(10)) + "allow()\n")
    clock = SpyClock()
    rs, outcomes = scan(tmp_path, RuleSet(), run_clock=clock)
    assert [o.result for o in outcomes] == ["loaded"]
    assert clock.calls == ["compile client.authenticate", "compile end"] * 10
    assert clock.spent[-1] < 0.02 * 10  # the checks' CPU time is not in the stretch
    # the same compile with a budget smaller than the checks: a load error, later libraries unread
    monkeypatch.setattr(loader, "COMPILE_BUDGET", 0.05)
    loader._CHECKED.clear()
    checks.clear()
    rs, outcomes = scan(tmp_path, RuleSet(), force=True)
    assert [o.result for o in outcomes] == ["error"] and len(checks) < 10
    assert any("take over 0.05 s to load" in e.message for e in outcomes[0].errors)
    assert len(outcomes[0].errors) == 1
    assert rs.failed["client.authenticate"].retry_at > 0


def test_the_check_cache_holds_a_directory_of_many_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It held 256 entries: a directory with more checked every library again on every rescan."""
    checks = count_checks(monkeypatch)
    count = 400
    for k in range(count):
        write(tmp_path, f"lib/l{k}.star", f"def f():\n    return {k}\n")
    write(tmp_path, AUTHN, "".join(f'load("lib/l{k}.star", f{k}="f")\n' for k in range(count)) + "allow()\n")
    rs, outcomes = scan(tmp_path, RuleSet())
    assert [o.result for o in outcomes] == ["loaded"]
    first = len(checks)
    assert first >= count
    scan(tmp_path, rs, force=True)
    assert len(checks) == first  # every library's check was cached


def test_the_libraries_of_one_rule_are_bounded_in_bytes_as_a_fault_of_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 libraries of 64 KiB took 600 MB for one rule (a checked tree is up to ~230 bytes a byte of
    source). Past the total no more are read, and the error is cached (the files must change)."""
    checks = count_checks(monkeypatch)
    monkeypatch.setattr(loader, "MAX_LIBRARY_BYTES", 120)
    loader._CHECKED.clear()
    for k in range(10):
        write(tmp_path, f"lib/l{k}.star", f"def f():\n    return {k}\n" + "# padding\n" * 3)  # 52 bytes
    write(tmp_path, AUTHN, "".join(f'load("lib/l{k}.star", f{k}="f")\n' for k in range(10)) + "allow()\n")
    rs, outcomes = scan(tmp_path, RuleSet())
    assert [o.result for o in outcomes] == ["error"]
    assert any("over 0 KiB in all" in e.message for e in outcomes[0].errors), outcomes[0].errors
    assert len(checks) == 3  # two fit, the third goes over: the rest are not read
    assert len(outcomes[0].errors) == 1  # and not one error for each load() after it
    assert rs.failed["client.authenticate"].retry_at == 0.0
