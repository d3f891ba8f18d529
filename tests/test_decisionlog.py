"""The decision log: JSON lines from the real server, and sampling and redaction in process."""

from __future__ import annotations

import io
import json
import logging
import select
from pathlib import Path
from typing import Any

import pytest

from hookrules.decisionlog import FAILURE_LOG_INTERVAL, DecisionLog
from hookrules.decisions import Deny
from hookrules.engine import Engine
from hookrules.events import Client, Event, Message, frozen_map
from hookrules.ruleset import RuleSet, scan

from .emqx_session import run_session
from .support import ServerProcess, Stubs, wait_for


def test_server_writes_one_json_line_per_rule_decision(start_server: Any, rules_dir: Path, tmp_path: Path,
                                                       stubs: dict[str, Stubs]) -> None:
    log_file = tmp_path / "decisions.jsonl"
    server: ServerProcess = start_server(rules_dir, "--decision-log", str(log_file))
    s = stubs["v3"]
    with server.channel() as channel:
        run_session(s, s.stub(channel), "c-1", "baduser", [("t/demo", b"secret payload")])
    lines = wait_for(lambda: log_file.read_text().splitlines() if log_file.exists() else [], timeout=10)
    entries = [json.loads(line) for line in lines]
    hooks = [e["hook"] for e in entries]
    # only hooks with a rule: authenticate, authorize x2 (subscribe, publish), publish
    assert hooks == ["client.authenticate", "client.authorize", "client.authorize", "message.publish"]
    authn = entries[0]
    assert (authn["broker"], authn["client_id"], authn["username"]) == ("emqx", "c-1", "baduser")
    assert (authn["decision"], authn["reason"], authn["source"]) == ("deny", "user is banned", "rule")
    assert len(authn["rule_version"]) == 12 and authn["duration_us"] > 0
    assert authn["time"].endswith("+00:00")
    assert entries[3]["decision"] == "rewrite" and entries[3]["topic"] == "t/demo"
    text = log_file.read_text()
    assert "secret" not in text and "password" not in text and "payload" not in text


def event() -> Event:
    return Event("message.publish", "emqx", Client(id="c", username="u", password="pw"),
                 frozen_map({"message": Message(topic="a/b", payload=b"\x00data")}))


def test_secrets_only_when_asked() -> None:
    out = io.StringIO()
    DecisionLog(out, secrets=True).record(event(), Deny("no"), "rule", "abc", "", 0.000012)
    entry = json.loads(out.getvalue())
    assert entry["password"] == "pw" and entry["payload_base64"] == "AGRhdGE="
    assert entry["topic"] == "a/b" and entry["duration_us"] == 12.0


@pytest.mark.parametrize(("draw", "logged"), [(0.05, True), (0.5, False)])
def test_sampling(monkeypatch: pytest.MonkeyPatch, draw: float, logged: bool) -> None:
    monkeypatch.setattr("hookrules.decisionlog.random.random", lambda: draw)
    out = io.StringIO()
    DecisionLog(out, sample=0.1).record(event(), Deny("no"), "rule", "abc", "", 0.0)
    assert bool(out.getvalue()) is logged


def test_a_broken_log_does_not_stop_decisions_and_every_failure_is_reported(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first failure the log used to go silent for good: a disk that filled up again an hour
    later went unreported. Now every failure is reported, at most once per interval, with a count, and
    so is the moment it writes again."""
    clock = [1000.0]
    monkeypatch.setattr("hookrules.ratelimit.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    out.close()
    log = DecisionLog(out)
    for _ in range(3):
        log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    clock[0] += FAILURE_LOG_INTERVAL
    for _ in range(2):
        log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    log.out = working = io.StringIO()
    log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    assert working.getvalue().count("\n") == 1
    closed = "decision log: cannot write (I/O operation on closed file); decisions go on unlogged"
    assert [r.message for r in caplog.records if "decision log" in r.message] == [
        f"{closed} (entries lost since the last report: 1)",
        f"{closed} (entries lost since the last report: 3)",
        "decision log: writing again (entries lost since the last report: 1)"]


LEAKY_RULES = {
    # Python's messages quote the value they choke on; neither log may show it
    "int(client.password)": "invalid literal for int()",
    "int(message.payload)": "invalid literal for int()",
    "{}[client.password]": "KeyError",
    "{}[message.payload]": "KeyError",
    "float(client.password + client.password)": "could not convert",
    "int(message.payload.decode())": "invalid literal for int()",  # quoted as str, not as bytes
    "int(client.password[:7])": "invalid literal for int()",  # a piece of it
    "{}[client.password.upper()]": "KeyError",  # in another case
}


@pytest.mark.parametrize("expr", sorted(LEAKY_RULES))
def test_error_messages_do_not_carry_secrets(expr: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "message.publish.star").write_text(f"x = {expr}\nallow()\n")
    out = io.StringIO()
    ruleset, _ = scan(tmp_path, RuleSet())
    engine = Engine(ruleset, decision_log=DecisionLog(out))
    secret_event = Event("message.publish", "emqx", Client(id="c", password="hunter2-pw"),
                         frozen_map({"message": Message(topic="a/b", payload=b"TOP-SECRET-'\"\\n" * 40)}))
    with caplog.at_level(logging.ERROR):
        outcome = engine.decide(secret_event)
    assert outcome.error is not None and LEAKY_RULES[expr] in outcome.error.message
    logged = out.getvalue() + caplog.text
    assert LEAKY_RULES[expr] in logged and "<redacted>" in logged
    assert "hunter2" not in logged.lower() and "top-secret" not in logged.lower()


def test_a_rule_that_never_loaded_is_logged_with_the_policy_answer(tmp_path: Path) -> None:
    (tmp_path / "client.authenticate.star").write_text("while True:\n    pass\n")
    out = io.StringIO()
    ruleset, _ = scan(tmp_path, RuleSet())
    Engine(ruleset, decision_log=DecisionLog(out)).decide(Event("client.authenticate", "emqx", Client(id="c")))
    entry = json.loads(out.getvalue())
    assert (entry["decision"], entry["reason"], entry["source"]) == ("deny", "rule error", "policy")
    assert "load_error" in entry["error"]


def test_with_the_log_on_stdout_stdout_holds_only_json_lines(start_server: Any, rules_dir: Path,
                                                             stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(rules_dir, "--decision-log", "stdout")
    assert "hookrules: EMQX ExHook" in server.log()  # the banner went to stderr
    s = stubs["v3"]
    with server.channel() as channel:
        run_session(s, s.stub(channel), "c-1", "gooduser", [])
    assert server.proc.stdout is not None
    readable, _, _ = select.select([server.proc.stdout], [], [], 10)  # bounded: never hang on a silent log
    assert readable, server.log()
    first = json.loads(server.proc.stdout.readline())
    assert (first["hook"], first["decision"]) == ("client.authenticate", "allow")
    server.stop()


def test_a_password_that_is_not_text_is_redacted_without_a_crash(tmp_path: Path) -> None:
    """A hand-written test event may give `password: 1234`; a failing rule must not crash the run."""
    (tmp_path / "client.authenticate.star").write_text("x = {}[str(client.password)]\nallow()\n")
    ruleset, _ = scan(tmp_path, RuleSet())
    outcome = Engine(ruleset).decide(Event("client.authenticate", "emqx", Client(id="c", password=1234)))  # type: ignore[arg-type]
    assert outcome.error is not None and "1234" not in outcome.error.message
