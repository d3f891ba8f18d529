"""Shadow rules (issue 13): a second rules directory run on the live events after their answers, counted
and logged, never changing an answer. In process for the queue's mechanics; the real server, with EMQX
gRPC stubs and VerneMQ webhooks, for everything a user sees."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hookrules import metrics, metricsmerge
from hookrules.decisions import Deny
from hookrules.engine import Engine
from hookrules.events import Client, Event
from hookrules.hooks import HOOKS
from hookrules.nodefaults import no_rule_decision
from hookrules.ruleset import Limits, RuleSet, scan
from hookrules.shadow import BATCH, Shadow

from .adapter_events import broker_events
from .broker_calls import emqx_authenticate, vernemq, vernemq_register
from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs, wait_for

LIVE_AUTH = 'if client.username == "baduser":\n    deny("banned")\nallow()\n'
SHADOW_AUTH = 'if client.username in ("baduser", "eve"):\n    deny("banned in shadow")\nallow()\n'


def shadow_counts(text: str) -> dict[tuple[str, str, str, str], float]:
    """hookrules_shadow_decisions_total of a /metrics text: (broker, hook, live, shadow) -> count."""
    out = {}
    pattern = re.compile(r'^hookrules_shadow_decisions_total\{broker="([^"]*)",hook="([^"]*)",live="([^"]*)",'
                         r'shadow="([^"]*)"\} (\S+)$', re.M)
    for m in pattern.finditer(text):
        out[(m[1], m[2], m[3], m[4])] = float(m[5])
    return out


def counter_value(text: str, name: str, **labels: str) -> float:
    """One counter series' value in a /metrics text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def write_rules(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def make_shadow(tmp_path: Path, live: dict[str, str], shadow: dict[str, str], **kwargs: Any) -> tuple[Engine, Shadow]:
    ruleset, _ = scan(write_rules(tmp_path / "live", live), RuleSet())
    engine = Engine(ruleset)
    sh = Shadow(write_rules(tmp_path / "shadow", shadow), limits=kwargs.pop("limits", Limits()), policies={},
                sample=kwargs.pop("sample", 1.0), **kwargs)
    sh.load()
    engine.shadow = sh
    return engine, sh


def authn(username: str) -> Event:
    return Event("client.authenticate", "emqx", Client(id="c", username=username, password="pw"))


# -- in process: when the shadow runs, and what it costs the live call ----------------------------


def test_the_shadow_runs_only_after_the_call_that_made_the_decision_has_returned(tmp_path: Path) -> None:
    """decide() queues; the shadow runs in a later turn of the loop, after the front-end (here, the
    callback that called decide) has given the loop back."""
    engine, sh = make_shadow(tmp_path, {"client.authenticate.star": LIVE_AUTH},
                             {"client.authenticate.star": SHADOW_AUTH})
    seen: dict[str, Any] = {}
    before = metrics.SHADOW_DECISIONS.labels("emqx", "client.authenticate", "allow", "deny").value

    def call() -> None:  # as a front-end: decide, and reply within the same step
        seen["decision"] = engine.decide(authn("eve")).decision
        seen["ran_in_call"] = metrics.SHADOW_DECISIONS.labels("emqx", "client.authenticate", "allow", "deny").value

    async def main() -> None:
        sh.start(asyncio.get_running_loop())
        try:
            asyncio.get_running_loop().call_soon(call)
            for _ in range(5):
                await asyncio.sleep(0)
        finally:
            sh.stop()

    asyncio.run(main())
    assert seen["decision"].kind == "allow" and seen["ran_in_call"] == before
    assert metrics.SHADOW_DECISIONS.labels("emqx", "client.authenticate", "allow", "deny").value == before + 1


def test_a_full_queue_drops_and_counts_and_a_turn_runs_a_bounded_number(tmp_path: Path) -> None:
    engine, sh = make_shadow(tmp_path, {"client.authenticate.star": LIVE_AUTH},
                             {"client.authenticate.star": SHADOW_AUTH}, queue_size=BATCH + 5)
    dropped = metrics.SHADOW_SKIPPED.labels("queue_full")
    before = dropped._value.get()
    for _ in range(BATCH + 8):
        assert engine.decide(authn("bob")).decision.kind == "allow"
    assert dropped._value.get() == before + 3 and len(sh._queue) == BATCH + 5
    sh.drain()  # one turn: at most BATCH runs
    assert len(sh._queue) >= 5
    while sh._queue:
        sh.drain()


@pytest.mark.parametrize(("shadow_rule", "kind"), [
    ("x = {}['k']\nallow()\n", "runtime"),
    ("n = 0\nfor i in range(1000):\n    for j in range(1000):\n        n += j\nallow()\n", "deadline"),
    ("deny(123456)\n", "runtime"),  # a decision that cannot be sent: a rule error, as it is live
])
def test_a_failing_shadow_rule_is_counted_answered_by_its_policy_and_never_reaches_the_caller(
        tmp_path: Path, shadow_rule: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    engine, sh = make_shadow(tmp_path, {"client.authenticate.star": LIVE_AUTH},
                             {"client.authenticate.star": shadow_rule}, limits=Limits(2000, 0.05))
    errors = metrics.SHADOW_RULE_ERRORS.labels("client.authenticate", kind)
    live_errors = metrics.RULE_ERRORS.labels("client.authenticate", kind)
    before, live_before = errors._value.get(), live_errors._value.get()
    assert engine.decide(authn("bob")).decision.kind == "allow"
    outcome = sh.run(*sh._queue.popleft())
    assert outcome is not None and outcome.source == "policy" and outcome.decision.kind == "deny"
    assert errors._value.get() == before + 1 and live_errors._value.get() == live_before
    assert "shadow rules: " in caplog.text


def test_a_hook_without_a_shadow_file_answers_what_the_shadow_directory_would(tmp_path: Path) -> None:
    """Every hook of every broker, with its adapter's real event: the live directory answers it with a
    rule, the shadow directory has none, so the shadow decides as a server with that directory would
    (ignore(), or a RabbitMQ check's default): a file deleted in the shadow shows as a disagreement."""
    events = broker_events()
    live = {f"{hook}.star": "x = 1\n" for hook in events}  # a rule that decides nothing: ignore()
    engine, sh = make_shadow(tmp_path, live, {})
    for hook, event in events.items():
        assert engine.decide(event).source == "rule", hook
        outcome = sh.run(*sh._queue.popleft())
        assert outcome is not None and outcome.decision == no_rule_decision(event), hook
    assert not sh._queue


def test_a_hook_only_the_shadow_answers_is_still_decided_and_offered(tmp_path: Path) -> None:
    """The live rules have no file for a hook (calls to it are answered ignore() without building the
    event); the shadow has one: the event is built, decided ignore() live, and run in the shadow."""
    engine, sh = make_shadow(tmp_path, {}, {"auth_on_publish.star": "deny('new')\n"})
    assert engine.needs_event("auth_on_publish") and not engine.needs_event("auth_on_subscribe")
    event = broker_events()["auth_on_publish"]
    assert engine.decide(event).decision.kind == "ignore"
    outcome = sh.run(*sh._queue.popleft())
    assert outcome is not None and outcome.decision == Deny("new")


def test_sampling_runs_the_share_asked(tmp_path: Path) -> None:
    engine, sh = make_shadow(tmp_path, {"client.authenticate.star": LIVE_AUTH}, {}, sample=0.25)
    draws = iter([0.1, 0.3, 0.24, 0.9])
    sh._random = lambda: next(draws)
    for _ in range(4):
        engine.decide(authn("bob"))
    assert len(sh._queue) == 2


def test_the_workers_supervisor_sums_the_shadow_counter() -> None:
    """--workers: each worker counts its own shadow runs; the supervisor's merge (metricsmerge) sums the
    family over the workers, as it does every counter."""
    texts = []
    for n in (2, 3):
        registry = CollectorRegistry()
        family = metrics.LoopCounter("hookrules_shadow_decisions", "x", ["broker", "hook", "live", "shadow"],
                                     registry=registry)
        family.labels("emqx", "client.authenticate", "allow", "deny").inc(n)
        texts.append(generate_latest(registry).decode())
    merged = metricsmerge.merge({}, {str(i): metricsmerge.parse(t) for i, t in enumerate(texts, 1)})
    text = metricsmerge.render(merged).decode()
    assert shadow_counts(text) == {("emqx", "client.authenticate", "allow", "deny"): 5.0}
    assert "worker=" not in text


# -- the real server ------------------------------------------------------------------------------


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_the_real_server_runs_the_shadow_counts_logs_and_reloads_it(start_server: Any, tmp_path: Path,
                                                                    stubs: dict[str, Stubs]) -> None:
    """Live rules and a shadow directory from the config file; EMQX (gRPC) and VerneMQ (HTTP) calls.
    The live answers are the live rules' whatever the shadow does (disagrees, raises, loops); every run
    is counted in /metrics, each disagreement is a decision log line with both decisions, versions and
    the event; a save in the shadow directory is picked up."""
    live = write_rules(tmp_path / "live", {"client.authenticate.star": LIVE_AUTH, "auth_on_register.star": LIVE_AUTH,
                                           "client.authorize.star": "allow()\n"})
    shadow = write_rules(tmp_path / "shadow", {
        "client.authenticate.star": SHADOW_AUTH,
        "auth_on_register.star": "x = {}['k']\nallow()\n",  # raises: answered by its policy, deny
        "client.authorize.star": "n = 0\nfor i in range(1000):\n    for j in range(1000):\n        n += j\nallow()\n",
    })
    config = tmp_path / "hookrules.toml"
    config.write_text('shadow = "shadow"\nshadow_sample = 1\n[limits]\nshadow_max_steps = 5000\n')
    log_file = tmp_path / "decisions.jsonl"
    server: ServerProcess = start_server(live, "--config", str(config), "--decision-log", str(log_file))
    s = stubs["v3"]
    pb = s.pb2
    assert [emqx_authenticate(server, s, "c1", user, "pw") for user in ("eve", "bob", "baduser")] == [True, True, False]
    with server.channel() as channel:
        reply = s.stub(channel).OnClientAuthorize(pb.ClientAuthorizeRequest(
            clientinfo=client_info(pb, "c1", "eve"), type=pb.ClientAuthorizeRequest.PUBLISH, topic="t/1",
            result=False, meta=meta(pb)), timeout=10)
    assert reply.bool_result is True
    assert vernemq_register(server, "v1", "eve", "pw") == {"result": "ok"}
    expected = {("emqx", "client.authenticate", "allow", "deny"): 1.0,
                ("emqx", "client.authenticate", "allow", "allow"): 1.0,
                ("emqx", "client.authenticate", "deny", "deny"): 1.0,
                ("emqx", "client.authorize", "allow", "deny"): 1.0,
                ("vernemq", "auth_on_register", "allow", "deny"): 1.0}
    assert wait_for(lambda: shadow_counts(server.metrics_text()) == expected, timeout=10), server.metrics_text()
    text = server.metrics_text()
    assert counter_value(text, "hookrules_shadow_rule_errors_total", hook="auth_on_register", kind="runtime") == 1
    assert counter_value(text, "hookrules_shadow_rule_errors_total", hook="client.authorize", kind="deadline") == 1
    assert counter_value(text, "hookrules_rule_errors_total", hook="auth_on_register") == 0  # nothing live
    # the live decisions' own counts are only the live ones
    assert counter_value(text, "hookrules_decisions_total", hook="client.authenticate", decision="deny") == 1
    assert wait_for(lambda: sum(1 for x in log_entries(log_file) if x.get("shadow")) == 3), log_file.read_text()
    entries = log_entries(log_file)
    shadow_lines = [e for e in entries if e.get("shadow")]
    first = shadow_lines[0]
    assert (first["hook"], first["username"], first["decision"], first["shadow_decision"]) == \
        ("client.authenticate", "eve", "allow", "deny")
    assert first["shadow_reason"] == "banned in shadow" and first["shadow_source"] == "rule"
    assert len(first["rule_version"]) == 12 and len(first["shadow_rule_version"]) == 12
    assert first["rule_version"] != first["shadow_rule_version"]
    assert first["event"]["client"]["username"] == "eve" and first["event"]["client"]["password"] is None
    errored = [e for e in shadow_lines if e["hook"] == "auth_on_register"][0]
    assert errored["shadow_source"] == "policy" and "KeyError" in errored["shadow_error"]
    assert "pw" not in json.dumps([e["event"]["data"] for e in entries])  # secrets policy: off
    # hot reload of the shadow directory
    old = first["shadow_rule_version"]
    (shadow / "client.authenticate.star").write_text(LIVE_AUTH)
    assert wait_for(lambda: "shadow rules: loaded" in server.log() and old not in (
        [line for line in server.metrics_text().splitlines() if line.startswith("hookrules_shadow_rule_info{")
         and 'hook="client.authenticate"' in line] or [old])[0], timeout=15), server.log()[-3000:]
    assert emqx_authenticate(server, s, "c1", "eve", "pw") is True
    assert wait_for(lambda: shadow_counts(server.metrics_text()).get(
        ("emqx", "client.authenticate", "allow", "allow")) == 2.0, timeout=10)
    # the shadow's loads show in its own families, never the live ones
    text = server.metrics_text()
    assert counter_value(text, "hookrules_shadow_reloads_total", hook="client.authenticate", result="loaded") >= 2
    assert counter_value(text, "hookrules_reloads_total", hook="client.authenticate", result="loaded") == 1
    server.proc.send_signal(signal.SIGHUP)  # rebuilds the shadow rules with the live ones
    assert wait_for(lambda: "SIGHUP: reloaded 3 shadow file(s), 0 with errors" in server.log(), timeout=15)


_WAITING_HELPER = """
import os, time
from hookrules.lang import builtins

_calls = [0]


def _waits(*args, **kwargs):
    # one step that does not return until the test says so (or after a bounded wait)
    _calls[0] += 1
    release = os.path.join(os.environ["SHADOW_TEST_DIR"], f"release{_calls[0]}")
    for _ in range(6000):
        if os.path.exists(release):
            return True
        time.sleep(0.01)
    return True


builtins.HELPERS["topic_match"] = _waits
"""


def with_helper(tmp_path: Path, monkeypatch: Any, source: str) -> None:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SHADOW_TEST_DIR", str(tmp_path))


def test_the_live_answer_is_sent_before_the_shadow_run_ends(start_server: Any, tmp_path: Path,
                                                            stubs: dict[str, Stubs], monkeypatch: Any) -> None:
    """A shadow rule whose one step holds the server until the test releases it: the EMQX answer and the
    VerneMQ answer each reach the client while their shadow run is still held, so neither waited for it
    (ordering, not timing: without the release file the run would hold for 60 s)."""
    with_helper(tmp_path, monkeypatch, _WAITING_HELPER)
    live = write_rules(tmp_path / "live", {"authenticate.star": LIVE_AUTH})
    shadow = write_rules(tmp_path / "shadow", {"authenticate.star": "x = topic_match('a', 'b')\ndeny('later')\n"})
    server: ServerProcess = start_server(live, "--shadow", str(shadow), "--shadow-sample", "1",
                                         "--shadow-rule-timeout", "90", "--hard-timeout", "100")
    s = stubs["v3"]
    assert emqx_authenticate(server, s, "c1", "bob", "pw") is True  # answered while the shadow run holds
    assert not (tmp_path / "release1").exists()
    (tmp_path / "release1").write_text("")
    assert vernemq_register(server, "v1", "bob", "pw") == {"result": "ok"}  # the same on the HTTP side
    (tmp_path / "release2").write_text("")
    assert wait_for(lambda: shadow_counts(server.metrics_text()) == {
        ("emqx", "client.authenticate", "allow", "deny"): 1.0, ("vernemq", "auth_on_register", "allow", "deny"): 1.0})


_ENDLESS_HELPER = """
import time
from hookrules.lang import builtins


def _blocks(*args, **kwargs):
    time.sleep(3600)  # one step that never returns to the interpreter


builtins.HELPERS["topic_match"] = _blocks
"""


def test_a_shadow_rule_stuck_in_c_is_ended_by_the_watchdog_after_the_live_answer(
        start_server: Any, tmp_path: Path, stubs: dict[str, Stubs], monkeypatch: Any) -> None:
    """One endless step in a shadow rule: the call that triggered it has its live answer; then the
    watchdog (--hard-timeout) kills the server for its supervisor to restart, naming the shadow rule, as
    it does a stuck live rule, so the calls after it wait at most that bound."""
    with_helper(tmp_path, monkeypatch, _ENDLESS_HELPER)
    live = write_rules(tmp_path / "live", {"client.authenticate.star": LIVE_AUTH})
    shadow = write_rules(tmp_path / "shadow", {"client.authenticate.star": "x = topic_match('a', 'b')\nallow()\n"})
    server: ServerProcess = start_server(live, "--shadow", str(shadow), "--shadow-sample", "1", "--hard-timeout", "1",
                                         "--rule-timeout", "0.5")
    s = stubs["v3"]
    assert emqx_authenticate(server, s, "c1", "baduser", "pw") is False  # the live rule's answer
    assert server.proc.wait(30) == -signal.SIGKILL
    log = server.log()
    assert "watchdog: a run of the client.authenticate shadow rule has held the server for over 1 s" in log, log[-2000:]
    with pytest.raises(grpc.RpcError):  # and it is gone: its supervisor would start it again
        emqx_authenticate(server, s, "c2", "bob", "pw")


def test_shadow_settings_are_checked_at_start(tmp_path: Path) -> None:
    import subprocess

    live = write_rules(tmp_path / "live", {"authenticate.star": "allow()\n"})
    cases = {
        ("--shadow", str(tmp_path / "missing")): "shadow rules directory",
        ("--shadow", str(live)): "is the live rules directory",
        ("--shadow", str(live / ".."), "--shadow-sample", "0"): "--shadow-sample 0.0 must be above 0",
        ("--shadow-rule-timeout", "6", "--hard-timeout", "5"): "must be below --hard-timeout",
        ("--shadow-max-steps", "0"): "--shadow-max-steps 0 must be at least 1",
    }
    for flags, message in cases.items():
        result = subprocess.run([sys.executable, "-m", "hookrules", "serve", "--rules", str(live), "--grpc",
                                 "127.0.0.1:0", "--http", "off", "--metrics", "off", *flags],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)


def test_the_shadow_works_with_workers(start_server: Any, tmp_path: Path) -> None:
    """--workers 2: each worker runs the shadow on the calls it answers; the one /metrics sums them."""
    live = write_rules(tmp_path / "live", {"auth_on_register.star": LIVE_AUTH})
    shadow = write_rules(tmp_path / "shadow", {"auth_on_register.star": SHADOW_AUTH})
    server: ServerProcess = start_server(live, "--shadow", str(shadow), "--shadow-sample", "1", "--workers", "2")
    for i in range(20):  # a new connection each: the kernel spreads them over the workers
        assert vernemq(server, "auth_on_register", {"client_id": f"c{i}", "username": "eve", "password": "p",
                                                    "mountpoint": "", "peer_addr": "127.0.0.1", "peer_port": 1}) == \
            {"result": "ok"}
    assert wait_for(lambda: shadow_counts(server.metrics_text()).get(
        ("vernemq", "auth_on_register", "allow", "deny")) == 20.0, timeout=15), server.metrics_text()[-3000:]
