"""The decision log: JSON lines from the real server, and sampling and redaction in process."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from hookrules.decisionlog import DecisionLog
from hookrules.decisions import Deny
from hookrules.events import Client, Event, Message, frozen_map

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


def test_a_broken_log_does_not_stop_decisions(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    out.close()
    log = DecisionLog(out)
    log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    assert [r.message for r in caplog.records if "decision log" in r.message] == [
        "decision log: cannot write (I/O operation on closed file); decisions go on unlogged"]
