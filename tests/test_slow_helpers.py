"""Finding 6: a password check whose cost is known before it starts (bcrypt's cost, pbkdf2's iterations x
blocks) is refused, as a deadline error answered by the failure policy, when its estimate does not fit in
what is left of the run's budget: a hash cannot be stopped once started, and it held the event loop (every
broker call) for 0.4 s (pbkdf2 1,000,000 x sha512) or 1.1 s (bcrypt cost 14) with a 0.1 s budget.
A cached result is still answered, whatever the budget."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from hookrules.engine import Engine
from hookrules.events import Client, Event, frozen_map
from hookrules.hooks import HOOKS
from hookrules.lang import helpers, passwords
from hookrules.ruleset import CompiledRule, Limits, RuleRuntimeError, RuleSet, compile_rule, scan

from . import vernemq_examples as spec
from .support import ServerProcess
from .test_webhooks import call, metric, write_rules

AUTHN = "client.authenticate"
BUDGET = Limits(timeout=0.1)
HASHPW, PBKDF2 = bcrypt.hashpw, hashlib.pbkdf2_hmac  # for the tests' own hashes: `computed` counts the helpers'


def compile_src(src: str) -> CompiledRule:
    return compile_rule(f"rules/{AUTHN}.star", src.encode(), HOOKS[AUTHN])


def authn(password: str = "pw") -> Event:
    return Event(AUTHN, "emqx", Client(id="c", username="u", password=password), frozen_map({"result": False}))


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    passwords.clear_check_cache()
    yield
    passwords.clear_check_cache()


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hashes a check really computed (calibration, which uses its own references, not counted)."""
    calls: list[str] = []
    real_hashpw, real_pbkdf2 = bcrypt.hashpw, hashlib.pbkdf2_hmac

    def hashpw(password: bytes, salt: bytes) -> bytes:
        calls.append("bcrypt")
        return real_hashpw(password, salt)

    def pbkdf2(digest: str, *args: Any) -> bytes:
        calls.append(f"pbkdf2-{digest}")
        return real_pbkdf2(digest, *args)

    monkeypatch.setattr(passwords.bcrypt, "hashpw", hashpw)
    monkeypatch.setattr(passwords.hashlib, "pbkdf2_hmac", pbkdf2)
    return calls


def pbkdf2_rule(iterations: int, digest: str) -> str:
    size = hashlib.new(digest).digest_size
    derived = PBKDF2(digest, b"pw", b"salt", iterations).hex() if iterations <= 1000 else "00" * size
    return (f"ok = pbkdf2_check(client.password, {derived!r}, 'salt', iterations={iterations}, "
            f"algorithm={digest!r})\nif ok:\n    allow()\ndeny()\n")


def refused(rule: CompiledRule, event: Event, limits: Limits = BUDGET) -> str:
    with pytest.raises(RuleRuntimeError) as info:
        rule.run(event, limits)
    error = info.value.error
    assert error.code == "deadline_error" and "refused before it started" in error.message, error
    assert error.location.line == 1, error.location  # the line that calls the helper
    return error.message


def test_the_audit_cases_are_refused_before_they_start(computed: list[str]) -> None:
    """pbkdf2 1,000,000 x sha512 (0.4 s here) and bcrypt cost 12 (0.3 s), with 0.1 s: neither starts."""
    message = refused(compile_src(pbkdf2_rule(1_000_000, "sha512")), authn())
    assert "pbkdf2_check would take about" in message
    cost12 = HASHPW(b"pw", bcrypt.gensalt(12)).decode()
    rule = compile_src(f"if bcrypt_check(client.password, {cost12!r}):\n    allow()\ndeny()\n")
    assert "bcrypt_check would take about" in refused(rule, authn())
    assert computed == []


def test_every_cost_is_refused_exactly_when_its_estimate_does_not_fit(monkeypatch: pytest.MonkeyPatch,
                                                                      computed: list[str]) -> None:
    """Enumerated over every bcrypt cost and every pbkdf2 digest, with a known cost per unit (1 ms a bcrypt
    round, 10 us a pbkdf2 iteration): what fits runs (and answers), what does not is refused untouched."""
    monkeypatch.setattr(passwords, "_PER_UNIT", {k: 1e-3 if k == "bcrypt" else 1e-5
                                               for k in ("bcrypt", *set(passwords._DIGESTS.values()))})
    limits = Limits(timeout=0.5)
    for cost in range(4, passwords.MAX_BCRYPT_COST + 1):
        computed.clear()
        if cost <= 8:  # 16 to 256 rounds: 20 to 320 ms estimated, with the safety factor; real ones run
            hashed = HASHPW(b"pw", bcrypt.gensalt(cost)).decode()
            rule = compile_src(f"if bcrypt_check(client.password, {hashed!r}):\n    allow()\ndeny()\n")
            assert rule.run(authn(), limits).kind == "allow", cost
            assert computed == ["bcrypt"], cost
        else:  # 512 rounds and more: over 0.5 s; refused before it starts, so the hash needs no real salt
            hashed = HASHPW(b"pw", bcrypt.gensalt(4)).decode().replace("$04$", f"${cost:02d}$")
            rule = compile_src(f"if bcrypt_check(client.password, {hashed!r}):\n    allow()\ndeny()\n")
            refused(rule, authn(), limits)
            assert computed == [], cost
    digests = [d for d in sorted(set(passwords._DIGESTS.values())) if _available(d)]
    assert len(digests) >= 6
    for digest in digests:
        computed.clear()
        assert compile_src(pbkdf2_rule(1000, digest)).run(authn(), limits).kind == "allow"  # 12.5 ms: runs
        assert computed == [f"pbkdf2-{digest}"]
        computed.clear()
        refused(compile_src(pbkdf2_rule(100_000, digest)), authn(), limits)  # 1.25 s: refused
        assert computed == []


def _available(digest: str) -> bool:
    try:
        hashlib.new(digest)
    except ValueError:
        return False
    return True


def test_a_cached_result_is_answered_whatever_the_budget(computed: list[str]) -> None:
    cost12 = HASHPW(b"pw", bcrypt.gensalt(12)).decode()
    rule = compile_src(f"if bcrypt_check(client.password, {cost12!r}):\n    allow()\ndeny()\n")
    assert passwords.bcrypt_check("pw", cost12) is True  # outside a run: no budget, computed and cached
    assert computed == ["bcrypt"]
    computed.clear()
    for _ in range(3):
        assert rule.run(authn(), BUDGET).kind == "allow"  # over budget, but cached: answered
    refused(rule, authn("other"))  # another password is not cached: refused
    assert computed == []


def test_outside_a_run_there_is_no_budget() -> None:
    assert passwords.RunBudget.deadline == math.inf
    compile_src("allow()\n").run(authn(), BUDGET)
    assert passwords.RunBudget.deadline == math.inf  # cleared when the run ends


def test_a_refused_check_is_answered_by_the_policy_on_a_live_server(start_server: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_register": pbkdf2_rule(1_000_000, "sha512").replace(
        "client.password", "client.password or ''")})
    server: ServerProcess = start_server(rules, "--rule-timeout", "0.1")
    reply = call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"])
    assert (reply.status, reply.body) == (200, {"result": {"error": "rule error"}}), reply.raw
    assert metric(server, "hookrules_rule_errors_total", hook="auth_on_register", kind="deadline") == 1
    assert metric(server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_register", decision="deny",
                  source="policy") == 1
    assert "pbkdf2_check would take about" in server.log() and "refused before it started" in server.log()
    assert "auth_on_register.star:1:" in server.log()


def test_the_run_budget_is_per_thread() -> None:
    """Libraries run in the scan thread while rules run on the event loop: one thread's run must not set
    (or clear) the deadline another thread's helpers read. Result: each thread sees only its own."""
    import threading

    from hookrules.lang.passwords import RunBudget

    seen: list[float] = []
    RunBudget.deadline = 123.0
    try:
        worker = threading.Thread(target=lambda: seen.append(RunBudget.deadline))
        worker.start()
        worker.join(10)
        assert seen == [float("inf")]
        assert RunBudget.deadline == 123.0
    finally:
        RunBudget.deadline = float("inf")
