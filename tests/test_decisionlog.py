"""The decision log: JSON lines from the real server, and sampling and redaction in process."""

from __future__ import annotations

import http.client
import io
import json
import logging
import select
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from hookrules.decisionlog import FAILURE_LOG_INTERVAL, DecisionLog
from hookrules.decisions import Deny
from hookrules.engine import Engine
from hookrules.events import Client, Event, Message, frozen_map, json_view
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
    # written by the log's own thread: wait for all four
    lines = wait_for(lambda: len(log_file.read_text().splitlines()) >= 4 and log_file.read_text().splitlines(),
                     timeout=10) or []
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
    # no secret's value in any form (the password "secret", the payload, its base64); the event's fields
    # are there, the secrets' values null and named as redacted (the words "password" and "payload"
    # are now field names of the event: issue 13's replay needs to tell a redacted value from an empty one)
    assert "secret" not in text and "c2VjcmV0" not in text and "payload_base64" not in text
    assert all("password" not in e for e in entries)
    assert authn["event"]["client"]["password"] is None and authn["event"]["redacted"] == ["client.password"]
    assert entries[3]["event"]["data"]["message"]["Message"]["payload"] is None


def event() -> Event:
    return Event("message.publish", "emqx", Client(id="c", username="u", password="pw"),
                 frozen_map({"message": Message(topic="a/b", payload=b"\x00data")}))


def test_secrets_only_when_asked() -> None:
    out = io.StringIO()
    log = DecisionLog(out, secrets=True)
    log.record(event(), Deny("no"), "rule", "abc", "", 0.000012)
    assert log.close()
    entry = json.loads(out.getvalue())
    assert entry["password"] == "pw" and entry["payload_base64"] == "AGRhdGE="
    assert entry["topic"] == "a/b" and entry["duration_us"] == 12.0


@pytest.mark.parametrize(("draw", "logged"), [(0.05, True), (0.5, False)])
def test_sampling(monkeypatch: pytest.MonkeyPatch, draw: float, logged: bool) -> None:
    monkeypatch.setattr("hookrules.decisionlog.random.random", lambda: draw)
    out = io.StringIO()
    log = DecisionLog(out, sample=0.1)
    log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    assert log.close()
    assert bool(out.getvalue()) is logged


class FlakySink:
    """A sink that fails while `failing` is set (a full disk), and keeps what it could write."""

    def __init__(self) -> None:
        self.failing = True
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        self.lines.extend(text.splitlines())


def test_a_broken_log_does_not_stop_decisions_and_every_failure_is_reported(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first failure the log used to go silent for good: a disk that filled up again an hour
    later went unreported. Now every failure is reported, at most once per interval, with a count, and
    so is the moment it writes again (rate-limited too: a disk that flaps must not flood the log)."""
    clock = [1000.0]
    monkeypatch.setattr("hookrules.ratelimit.time.monotonic", lambda: clock[0])
    sink = FlakySink()
    log = DecisionLog(sink)

    def record(n: int) -> None:
        for _ in range(n):
            log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
            assert log.flush()  # one write per entry, as a quiet server does

    record(3)
    clock[0] += FAILURE_LOG_INTERVAL
    record(2)
    sink.failing = False
    record(1)
    for _ in range(50):  # flapping within one interval: one more failure line and no more recovery lines
        sink.failing = True
        record(1)
        sink.failing = False
        record(1)
    assert log.close()
    assert len(sink.lines) == 51
    closed = "decision log: cannot write ([Errno 28] No space left on device); decisions go on unlogged"
    assert [r.message for r in caplog.records if "decision log" in r.message] == [
        f"{closed} (entries lost since the last report: 1)",
        f"{closed} (entries lost since the last report: 3)",
        "decision log: writing again (entries lost since the last report: 1)"]


class BlockedSink:
    """A write that does not return until released: a pipe nobody reads, a stalled NFS mount."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> None:
        self.entered.set()
        self.release.wait(30)


def test_a_blocked_writer_never_blocks_a_decision_and_drops_are_counted_and_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    """record() returns at once whatever the writer is doing; past the queue's size entries are dropped,
    counted in hookrules_decision_log_dropped_total and reported (rate-limited) with the count; close()
    gives up on the writer after its timeout instead of waiting for ever."""
    dropped = REGISTRY.get_sample_value("hookrules_decision_log_dropped_total", {"reason": "queue_full"}) or 0.0
    sink = BlockedSink()
    log = DecisionLog(sink, queue_size=5)
    log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    assert sink.entered.wait(10)  # the writer holds one entry, blocked
    for _ in range(105):
        log.record(event(), Deny("no"), "rule", "abc", "", 0.0)
    after = REGISTRY.get_sample_value("hookrules_decision_log_dropped_total", {"reason": "queue_full"})
    assert after == dropped + 100
    reports = [r.message for r in caplog.records if "writer is behind" in r.message]
    assert len(reports) == 1 and reports[0].endswith("entries dropped since the last report: 1")
    assert not log.close(timeout=0.2)
    assert "the writer is blocked" in caplog.text and "5 entries unwritten" in caplog.text
    sink.release.set()


STRINGS = ["e\ud800", "\udfff", "a\x00b", "\u2028\u2029", "caf\u00e9", "\U0001f600", "\x7f\x1b[31m", '"\\\n', ""]


@pytest.mark.parametrize("text", STRINGS)
def test_every_decision_is_written_whatever_its_strings_hold(text: str, caplog: pytest.LogCaptureFixture) -> None:
    """A lone surrogate a client sent as its id ("e\ud800" is valid JSON) used to fail the write as
    'cannot write' and lose the decision; every string field is now written as ASCII JSON that reads
    back as the same string."""
    sink = FlakySink()
    sink.failing = False
    log = DecisionLog(sink, secrets=True)
    message = Message(topic=text or "t", payload=b"x")
    evil = Event("message.publish", "emqx", Client(id=text, username=text, password=text),
                 frozen_map({"message": message}))
    log.record(evil, Deny(text), "rule", text, text, 0.0)
    assert log.close()
    assert len(sink.lines) == 1 and sink.lines[0].isascii()
    entry = json.loads(sink.lines[0])
    for field in ("client_id", "username", "password", "reason", "rule_version", "error"):
        assert entry.get(field, "") == text, field
    assert "decision log" not in caplog.text


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
    dlog = DecisionLog(out)
    engine = Engine(ruleset, decision_log=dlog)
    secret_event = Event("message.publish", "emqx", Client(id="c", password="hunter2-pw"),
                         frozen_map({"message": Message(topic="a/b", payload=b"TOP-SECRET-'\"\\n" * 40)}))
    with caplog.at_level(logging.ERROR):
        outcome = engine.decide(secret_event)
    assert dlog.close()
    assert outcome.error is not None and LEAKY_RULES[expr] in outcome.error.message
    logged = out.getvalue() + caplog.text
    assert LEAKY_RULES[expr] in logged and "<redacted>" in logged
    assert "hunter2" not in logged.lower() and "top-secret" not in logged.lower()


#: every check that quotes the value it refuses, cut to 60 characters (`'eyJhbGciOi...`), fed a
#: secret longer than the cut: (hook, broker, the rule's line)
CUT_QUOTING_RULES = {
    "superuser": ("client.authenticate", "emqx", "allow(superuser=S)"),
    "expire_at": ("client.authenticate", "emqx", "allow(expire_at=S)"),
    "acl action": ("client.authenticate", "emqx", 'allow(acl=[{"permission": "allow", "action": S, "topic": "t"}])'),
    "acl topic": ("client.authenticate", "emqx",
                  'allow(acl=[{"permission": "allow", "action": "all", "topic": "a/#/" + S}])'),
    "acl ipaddr": ("client.authenticate", "emqx",
                   'allow(acl=[{"permission": "allow", "action": "all", "topic": "t", "ipaddr": S}])'),
    "acl qos": ("client.authenticate", "emqx",
                'allow(acl=[{"permission": "allow", "action": "all", "topic": "t", "qos": S}])'),
    "acl retain": ("client.authenticate", "emqx",
                   'allow(acl=[{"permission": "allow", "action": "all", "topic": "t", "retain": S}])'),
    "acl field": ("client.authenticate", "emqx", 'allow(acl=[{"permission": "allow", "action": "all", S: 1}])'),
    "attrs name": ("client.authenticate", "emqx", 'allow(attrs={"x " + S: "v"})'),
    "modifier bool": ("auth_on_register", "vernemq", 'allow(modifiers={"clean_session": S})'),
    "modifier number": ("auth_on_register", "vernemq", 'allow(modifiers={"max_message_size": S})'),
    "modifier choice": ("auth_on_register", "vernemq", 'allow(modifiers={"queue_type": S})'),
    "cache": ("auth_on_register", "vernemq", "allow(cache=S)"),
    "tags": ("rabbitmq.user", "rabbitmq", 'allow(tags=[S + " x"])'),
}


@pytest.mark.parametrize("case", sorted(CUT_QUOTING_RULES))
@pytest.mark.parametrize("secret", ["client.password", "client.password.upper()", "message_key"])
def test_a_secret_longer_than_a_quoted_cut_is_not_logged(case: str, secret: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The checks quote a refused value as its repr cut at 60 characters, with no closing quote: a
    password longer than that (a JWT) left its first 57 characters in the log, past the redaction of
    whole quoted values. Each such check, with the secret as is, in capitals, and behind a prefix."""
    hook, broker, line = CUT_QUOTING_RULES[case]
    expr = {"message_key": '"devices/" + client.password'}.get(secret, secret)
    (tmp_path / f"{hook}.star").write_text(f"S = {expr}\n{line}\nallow()\n")
    out = io.StringIO()
    ruleset, _ = scan(tmp_path, RuleSet())
    dlog = DecisionLog(out)
    password = "eyJhbGciOiJSUzI1NiJ9.Zk8Wv3-" + "q" * 80
    event = Event(hook, broker, Client(id="c", username="u", password=password), frozen_map({"vhost": "/"}))
    with caplog.at_level(logging.ERROR):
        outcome = Engine(ruleset, decision_log=dlog).decide(event)
    assert dlog.close()
    assert outcome.error is not None, case
    logged = out.getvalue() + caplog.text + outcome.error.message
    assert "<redacted>" in logged, logged
    for i in range(len(password) - 5):  # no six characters of it in a row, whatever the case
        assert password[i:i + 6].lower() not in logged.lower(), (case, password[i:i + 6], logged)


def test_a_rule_that_never_loaded_is_logged_with_the_policy_answer(tmp_path: Path) -> None:
    (tmp_path / "client.authenticate.star").write_text("while True:\n    pass\n")
    out = io.StringIO()
    ruleset, _ = scan(tmp_path, RuleSet())
    dlog = DecisionLog(out)
    Engine(ruleset, decision_log=dlog).decide(Event("client.authenticate", "emqx", Client(id="c")))
    assert dlog.close()
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


def test_a_reader_that_stops_reading_stops_nothing(start_server: Any, tmp_path: Path) -> None:
    """`--decision-log stdout` into a pipe nobody reads: once its 64 KiB buffer was full every call,
    /healthz and SIGTERM used to hang behind the write. Calls go on being answered, the probes answer,
    and SIGTERM stops the server cleanly (giving up on the blocked writer)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "auth_on_register.star").write_text('if client.username == "bob":\n    allow()\ndeny("no")\n')
    server: ServerProcess = start_server(rules, "--decision-log", "stdout")  # its stdout is never read here
    body = {"peer_addr": "127.0.0.1", "peer_port": 1, "mountpoint": "", "client_id": "c" * 200,
            "username": "bob", "password": "p", "clean_session": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        for i in range(1500):  # about 600 KB of log lines: ten pipe buffers
            conn.request("POST", "/", body=json.dumps({**body, "client_id": f"c{i}" + "x" * 200}).encode(),
                         headers={"vernemq-hook": "auth_on_register", "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())) == (200, {"result": "ok"}), i
        conn.request("GET", "/healthz")
        health = conn.getresponse()
        assert (health.status, health.read()) == (200, b'{"status": "ok"}')
    finally:
        conn.close()
    assert server.stop() == 0, server.log()  # by SIGTERM, not the kill stop() falls back to
    assert "decision log: the writer is blocked" in server.log_path.read_text()


def test_the_queue_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line carries its event, and a VerneMQ body may be up to --http-max-body (1 MiB): 10,000
    queued lines could hold gigabytes behind a blocked writer. Past MAX_QUEUED_BYTES they are dropped,
    counted like a full queue; what was queued is written once the writer moves again."""
    monkeypatch.setattr("hookrules.decisionlog.MAX_QUEUED_BYTES", 50_000)
    dropped = REGISTRY.get_sample_value("hookrules_decision_log_dropped_total", {"reason": "queue_full"}) or 0.0
    sink = BlockedSink()
    log = DecisionLog(sink)
    big = Event("auth_on_publish", "vernemq", Client(id="c"),
                frozen_map({"request": json_view({"topic": "t", "blob": "x" * 10_000})}))
    log.record(big, Deny("no"), "rule", "abc", "", 0.0)
    assert sink.entered.wait(10)  # the writer holds the first, blocked
    for _ in range(20):
        log.record(big, Deny("no"), "rule", "abc", "", 0.0)
    after = REGISTRY.get_sample_value("hookrules_decision_log_dropped_total", {"reason": "queue_full"})
    assert after == dropped + 16  # four lines of about 10 KB fit in 50 KB
    sink.release.set()
    assert log.close()


def test_a_subscriptions_topics_do_not_each_write_its_whole_body() -> None:
    """VerneMQ's subscription of N topics is N events holding the same body: each line used to carry the
    whole body, N^2 bytes for one call, encoded on the event loop inside the call's budget. The body is
    now encoded once per call, and one past MAX_BODY_CHARS is omitted (named in "omitted"), so every
    line stays small and every topic is still decided by its rule."""
    from hookrules.adapters.vernemq import count_events, iter_events
    from hookrules.eventcodec import MAX_BODY_CHARS, decode_event
    from hookrules.ruleset import Limits

    tmp = Path(__import__("tempfile").mkdtemp())
    (tmp / "auth_on_subscribe.star").write_text('if topic.startswith("bad"):\n    deny("no")\nallow()\n')
    ruleset, _ = scan(tmp, RuleSet())
    for topics, omitted in ((3, False), (2000, True)):
        out = io.StringIO()
        dlog = DecisionLog(out)
        engine = Engine(ruleset, limits=Limits(timeout=30.0), decision_log=dlog)
        body = {"client_id": "c", "mountpoint": "", "username": "u",
                "topics": [{"topic": f"t/{i:05d}/x", "qos": 1} for i in range(topics)]}
        decisions = engine.decide_each(iter_events("auth_on_subscribe", body, True), count_events("auth_on_subscribe", body))
        assert dlog.close()
        lines = out.getvalue().splitlines()
        assert len(lines) == topics and all(d.kind == "allow" for d in decisions)
        assert max(len(line) for line in lines) < (4096 if omitted else MAX_BODY_CHARS)
        for line in lines:
            event, redacted, missing = decode_event(json.loads(line)["event"])
            assert missing == (("data.request",) if omitted else ())
            assert (event.data["request"] is None) is omitted
        if not omitted:
            assert len(event.data["request"]["topics"]) == topics


def test_the_events_of_one_call_share_the_encoded_body_and_its_redactions() -> None:
    shared = json_view({"client_id": "c", "password": "hunter2", "topics": [{"topic": "a", "qos": 0}]})
    out = io.StringIO()
    dlog = DecisionLog(out)
    for topic in ("a", "b"):
        dlog.record(Event("auth_on_subscribe", "vernemq", Client(id="c"),
                          frozen_map({"request": shared, "topic": topic})), Deny("no"), "rule", "v", "", 0.0)
    dlog.record(Event("auth_on_subscribe", "vernemq", Client(id="c"),
                      frozen_map({"request": shared, "topic": "c"})), Deny("no"), "rule", "v", "", 0.0)
    assert dlog.close()
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert all(e["redacted"] == ["data.request.password"] for e in events)
    assert all(e["data"]["request"]["json"]["password"] is None for e in events)
    assert "hunter2" not in out.getvalue()
