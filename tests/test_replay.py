"""`hookrules replay` (issue 13): decision logs written by the real server from real EMQX (gRPC), VerneMQ and
RabbitMQ (HTTP) calls, replayed against changed rules by the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hookrules.cli import main

from .broker_calls import emqx_authenticate, rabbitmq_user, vernemq_register
from .emqx_session import message, meta
from .support import ServerProcess, Stubs, wait_for

LIVE = {
    "authenticate.star": 'if client.username == "baduser":\n    deny("banned")\nallow()\n',
    "message.publish.star": "allow()\n",
}
#: eve is now refused; a password is now checked (bob's is pw-bob); one payload is now refused
CHANGED = {
    "authenticate.star": 'if client.username in ("baduser", "eve"):\n    deny("no eve")\n'
                         'if client.username == "bob" and client.password != "pw-bob":\n    deny("bad password")\n'
                         "allow()\n",
    "message.publish.star": 'if message.payload == b"secret payload":\n    deny("leak")\nallow()\n',
}
#: log lines the calls below write: 3 EMQX, 2 VerneMQ and 1 RabbitMQ authentications, 1 publish
CALLS = 7


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def serve_calls(tmp: Path, stubs: dict[str, Stubs], *extra: str) -> Path:
    """A decision log written by a real server answering real calls of all three brokers."""
    live = write(tmp / "live", LIVE)
    log = tmp / "decisions.jsonl"
    server = ServerProcess(live, "--decision-log", str(log), *extra, log_path=tmp / "server.log")
    try:
        s = stubs["v3"]
        assert [emqx_authenticate(server, s, f"c{i}", user, pw) for i, (user, pw) in
                enumerate([("eve", "secret-eve"), ("bob", "pw-bob"), ("baduser", "x")])] == [True, True, False]
        assert vernemq_register(server, "v1", "eve", "secret-eve") == {"result": "ok"}
        assert vernemq_register(server, "v2", "bob", "pw-bob") == {"result": "ok"}
        assert rabbitmq_user(server, "r1", "eve", "secret-eve") == "allow"
        pb = s.pb2
        with server.channel() as channel:
            reply = s.stub(channel).OnMessagePublish(pb.MessagePublishRequest(
                message=message(pb, "c1", "eve", "t/1", b"secret payload"), meta=meta(pb)), timeout=10)
        assert reply.type == pb.ValuedResponse.STOP_AND_RETURN
        assert wait_for(lambda: sum(1 for line in log.read_text().splitlines()
                                    if not json.loads(line).get("shadow")) == CALLS, timeout=10), log.read_text()
    finally:
        assert server.stop() == 0
    return log


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, Stubs]) -> Iterator[dict[str, Path]]:
    """Two real logs: without secrets (and with shadow lines: a shadow ran beside), and with them."""
    plain = tmp_path_factory.mktemp("plain")
    shadow = write(plain / "shadow", CHANGED)
    with_secrets = tmp_path_factory.mktemp("secrets")
    yield {
        "plain": serve_calls(plain, stubs, "--shadow", str(shadow), "--shadow-sample", "1"),
        "secrets": serve_calls(with_secrets, stubs, "--decision-log-secrets"),
        "live": plain / "live",
    }


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookrules", "replay", *args], capture_output=True, text=True,
                          timeout=120)


def replay_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = replay(*args, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_log_without_secrets_replays_with_each_redacted_event_counted(logs: dict[str, Path], tmp_path: Path) -> None:
    rules = write(tmp_path / "changed", CHANGED)
    code, report = replay_json(str(logs["plain"]), "--rules", str(rules))
    assert code == 1
    assert report["replayed"] == CALLS
    # eve refused on all three brokers; bob's password reads empty (redacted), so he is refused too; the
    # payload reads empty, so the publish is not refused: replay says these are not faithful
    assert {(c["hook"], c["live"], c["new"]): c["count"] for c in report["changes"]} == {
        ("client.authenticate", "allow", "deny"): 2, ("auth_on_register", "allow", "deny"): 2,
        ("rabbitmq.user", "allow", "deny"): 1}
    assert report["differ"] == 5
    assert report["redacted"] == CALLS and report["redacted_differ"] == 5
    assert report["hooks"]["client.authenticate"] == {"replayed": 3, "differ": 2}
    assert report["hooks"]["message.publish"] == {"replayed": 1, "differ": 0}
    shadow_lines = sum(1 for line in logs["plain"].read_text().splitlines() if json.loads(line).get("shadow"))
    assert shadow_lines == 4 and report["skipped"] == {"shadow_lines": 4}  # eve x3, the payload
    first = report["first"]
    assert len(first) == 5 and all(d["redacted"] for d in first)
    lines = logs["plain"].read_text().splitlines()
    for d in first:  # each names its log line, which holds that event
        entry = json.loads(lines[d["line"] - 1])
        assert (entry["hook"], entry["username"], entry["decision"]) == (d["hook"], d["username"], d["live"])
    assert "secret-eve" not in json.dumps(report)


def test_a_log_with_secrets_replays_faithfully(logs: dict[str, Path], tmp_path: Path) -> None:
    rules = write(tmp_path / "changed", CHANGED)
    code, report = replay_json(str(logs["secrets"]), "--rules", str(rules))
    assert code == 1
    assert {(c["hook"], c["live"], c["new"]): c["count"] for c in report["changes"]} == {
        ("client.authenticate", "allow", "deny"): 1, ("auth_on_register", "allow", "deny"): 1,
        ("rabbitmq.user", "allow", "deny"): 1, ("message.publish", "allow", "deny"): 1}
    assert (report["replayed"], report["differ"], report["redacted"], report["skipped"]) == (CALLS, 4, 0, {})
    assert {d["new_reason"] for d in report["first"]} == {"no eve", "leak"}


def test_the_text_report_lists_counts_and_the_first_n(logs: dict[str, Path], tmp_path: Path) -> None:
    rules = write(tmp_path / "changed", CHANGED)
    result = replay(str(logs["plain"]), "--rules", str(rules), "--show", "2")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"replayed {CALLS} event(s)" in out and "4 shadow lines" in out
    assert "would be decided differently: 5 of 7" in out
    assert "first 2 that differ (--show 2):" in out
    listed = [line for line in out.splitlines() if line.startswith(f"  {logs['plain']}:")]
    assert len(listed) == 2 and all("allow -> deny" in line for line in listed)
    assert "7 of 7 event(s) could not be replayed faithfully" in out and "5 of them differ" in out


def test_nothing_differs_against_the_rules_that_wrote_the_log(logs: dict[str, Path]) -> None:
    for name in ("plain", "secrets"):
        result = replay(str(logs[name]), "--rules", str(logs["live"]))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no decision would change (7 replayed)" in result.stdout


def test_the_deployed_failure_policy_from_config_decides_a_failing_rule(logs: dict[str, Path], tmp_path: Path) -> None:
    """A rule that raises on every event: answered by the failure policy, the one --config deploys."""
    rules = write(tmp_path / "broken", {"authenticate.star": "x = {}['k']\nallow()\n", "message.publish.star": "allow()\n"})
    code, default = replay_json(str(logs["secrets"]), "--rules", str(rules))
    assert code == 1 and default["differ"] == 5 and default["rule_errors"] == 6  # deny: every allow differs
    config = tmp_path / "hookrules.toml"
    config.write_text(f'rules = "{rules.name}"\n[failure_policy]\n"authenticate" = "allow"\n')
    code, deployed = replay_json(str(logs["secrets"]), "--config", str(config))  # its rules directory too
    assert code == 1 and deployed["differ"] == 1 and deployed["changes"] == [
        {"hook": "client.authenticate", "live": "deny", "new": "allow", "count": 1}]
    code, flagged = replay_json(str(logs["secrets"]), "--config", str(config), "--failure-policy",
                                "authenticate=deny")  # a flag wins over the file
    assert flagged["differ"] == 5


def test_usage_and_io_errors_exit_2(logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = logs["live"]
    lines = logs["secrets"].read_text().splitlines(keepends=True)
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    cases = {
        (str(tmp_path / "missing.jsonl"), "--rules", str(rules)): "cannot read",
        (str(corrupt), "--rules", str(rules)): f"{corrupt}:2: not a JSON line",
        (str(logs["secrets"]), "--rules", str(tmp_path / "nope")): "is not a directory",
        (str(logs["secrets"]), "--rules", str(rules), "--show", "-1"): "--show -1",
        (str(logs["secrets"]), "--rules", str(rules), "--rule-timeout", "0"): "must be positive",
    }
    bad_event = tmp_path / "bad-event.jsonl"
    entry = json.loads(lines[0])
    entry["event"]["client"]["nope"] = 1
    bad_event.write_text(json.dumps(entry) + "\n")
    cases[(str(bad_event), "--rules", str(rules))] = f"{bad_event}:1: client: Client has no field 'nope'"
    for args, message in cases.items():  # the command in this process: a start each would cost seconds
        assert main(["replay", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)


def test_a_last_line_cut_short_is_skipped_and_old_lines_without_an_event_are_counted(logs: dict[str, Path],
                                                                                     tmp_path: Path) -> None:
    lines = logs["secrets"].read_text().splitlines(keepends=True)
    old = json.loads(lines[0])
    del old["event"]
    cut = tmp_path / "cut.jsonl"
    cut.write_text(json.dumps(old) + "\n" + "".join(lines) + lines[0][: len(lines[0]) // 2])
    code, report = replay_json(str(cut), "--rules", str(logs["live"]))
    assert code == 0 and report["replayed"] == CALLS
    assert report["skipped"] == {"incomplete_last_line": 1, "no_event": 1}


def test_events_whose_body_was_too_big_to_log_are_counted(tmp_path: Path) -> None:
    """A webhook body past the log's limit is omitted from the event (eventcodec.MAX_BODY_CHARS): replay
    runs the rest of the event and says how many lacked their body."""
    from hookrules.adapters.vernemq import iter_events
    from hookrules.decisionlog import DecisionLog
    from hookrules.decisions import ALLOW
    from hookrules.replay import replay as run_replay

    log = tmp_path / "big.jsonl"
    with open(log, "w") as out:
        dlog = DecisionLog(out)
        body = {"client_id": "c", "mountpoint": "", "username": "u", "topic": "t/1", "qos": 0, "retain": False,
                "payload": "aGk=", "properties": {"p_content_type": "x" * 40_000}}
        dlog.record(next(iter_events("auth_on_publish_m5", body, True)), ALLOW, "rule", "v", "", 0.0)
        assert dlog.close()
    rules = write(tmp_path / "rules", {"auth_on_publish_m5.star": 'if request == None:\n    deny("no body")\nallow()\n'})
    report = run_replay(log, rules)
    assert (report.replayed, report.omitted, report.omitted_differ, report.differ) == (1, 1, 1, 1)
