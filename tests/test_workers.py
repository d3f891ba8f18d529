"""`hookrules serve --workers N`: a supervisor and N worker processes on shared ports, end to end.

Every test starts the real command on loopback ports the OS picks, talks to it with real clients over
fresh connections (so the kernel spreads them over the workers), and ends every process it started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs, alive, wait_for
from .test_lifecycle import SLOW_RULE, authenticate_futures, get, outcomes, serve_check

#: fresh connections made to spread calls: the chance all of them reach one of two workers is 2**-39
CONNECTIONS = 40


def fresh_channel(server: ServerProcess) -> grpc.Channel:
    """A channel with a connection of its own (channels of one process share connections otherwise)."""
    return grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])


def authenticate(server: ServerProcess, stubs: Stubs, username: str) -> bool:
    pb = stubs.pb2
    with fresh_channel(server) as channel:
        reply = stubs.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", username), result=False, meta=meta(pb)), timeout=10)
    return bool(reply.bool_result)


def register(server: ServerProcess, username: str) -> Any:
    """A VerneMQ auth_on_register over a connection of its own (urllib closes it after the reply)."""
    body = {"peer_addr": "127.0.0.1", "peer_port": 1, "mountpoint": "", "client_id": "c", "username": username,
            "password": "p", "clean_session": True}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/?base64=off", data=json.dumps(body).encode(),
                                     headers={"vernemq-hook": "auth_on_register", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def series(text: str, name: str) -> dict[str, float]:
    """{label text: value} of one sample name in a /metrics text."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m[1] or ""] = float(m[2])
    return out


def total(text: str, name: str) -> float:
    return sum(series(text, name).values())


def per_worker(text: str, name: str) -> dict[str, float]:
    return {re.search(r'worker="(\d+)"', labels)[1]: value  # type: ignore[index]
            for labels, value in series(text, name).items()}


def worker_pids(server: ServerProcess) -> dict[str, int]:
    status, body = get(server.metrics_port, "/readyz")
    return {index: answer["pid"] for index, answer in body["workers"].items()}


def test_two_workers_share_both_ports_and_the_connections(start_server: Any, rules_dir: Path,
                                                          stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    s = stubs["v3"]
    answers = [authenticate(server, s, "u") for _ in range(CONNECTIONS)]
    answers += [authenticate(server, s, "baduser") for _ in range(2)]
    replies = [register(server, "u") for _ in range(CONNECTIONS)]
    assert answers == [True] * CONNECTIONS + [False, False]
    assert all(r == {"result": "ok"} for r in replies), replies[:3]
    text = server.metrics_text()
    assert list(text_string_to_metric_families(text))  # what Prometheus scrapes is valid text
    calls = per_worker(text, "hookrules_worker_calls_total")
    assert set(calls) == {"1", "2"} and all(v > 0 for v in calls.values()), calls  # both workers answered
    assert sum(calls.values()) == 2 * CONNECTIONS + 2
    decisions = series(text, "hookrules_decisions_total")  # summed over workers: one series, no worker label
    assert decisions == {
        '{broker="emqx",decision="allow",hook="client.authenticate",source="rule"}': CONNECTIONS,
        '{broker="emqx",decision="deny",hook="client.authenticate",source="rule"}': 2,
        '{broker="vernemq",decision="allow",hook="auth_on_register",source="rule"}': CONNECTIONS}, decisions
    assert total(text, "hookrules_request_duration_seconds_count") == 2 * CONNECTIONS + 2
    version = hashlib.sha256((rules_dir / "authenticate.star").read_bytes()).hexdigest()[:12]
    info = series(text, "hookrules_rule_info")
    for worker in ("1", "2"):
        assert f'{{hook="authenticate",version="{version}",worker="{worker}"}}' in info, info
    status, body = get(server.metrics_port, "/readyz")
    assert status == 200 and body["status"] == "ready" and set(body["workers"]) == {"1", "2"}, body
    assert get(server.metrics_port, "/healthz") == (200, {"status": "ok"})


def test_a_killed_worker_is_restarted_and_no_counter_goes_back(start_server: Any, rules_dir: Path,
                                                               stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    s = stubs["v3"]
    for _ in range(CONNECTIONS):
        assert authenticate(server, s, "u")
    before = server.metrics_text()  # a scrape also refreshes the copy the supervisor keeps of each worker
    assert total(before, "hookrules_decisions_total") == CONNECTIONS
    pids = worker_pids(server)
    os.kill(pids["1"], signal.SIGKILL)
    restarted = wait_for(lambda: per_worker(server.metrics_text(), "hookrules_worker_restarts_total") == {"1": 1, "2": 0}
                         and worker_pids(server)["1"] not in (None, pids["1"])
                         and get(server.metrics_port, "/readyz")[0] == 200, timeout=60, interval=0.2)
    assert restarted, server.log()
    assert "worker 1 (pid %d) was killed by SIGKILL" % pids["1"] in server.log()
    assert "worker 1: its counts join the retired totals, from the last copy taken" in server.log()
    after = server.metrics_text()
    for name in ("hookrules_decisions_total", "hookrules_request_duration_seconds_count",
                 "hookrules_request_duration_seconds_bucket", "hookrules_rule_duration_seconds_count"):
        old, new = series(before, name), series(after, name)
        for labels, value in old.items():
            assert new.get(labels, 0.0) >= value, (name, labels, value, new.get(labels))
    assert total(after, "hookrules_decisions_total") == CONNECTIONS  # none lost: the last copy was current
    for _ in range(CONNECTIONS):  # and every call is answered, by both workers
        assert authenticate(server, s, "u")
    text = server.metrics_text()
    assert total(text, "hookrules_decisions_total") == 2 * CONNECTIONS
    assert all(v > 0 for v in per_worker(text, "hookrules_worker_calls_total").values())
    assert server.stop() == 0


def test_a_worker_stopped_alone_hands_over_its_last_counts(start_server: Any, rules_dir: Path) -> None:
    """A worker that drains and exits by itself (SIGTERM sent to it, not to the group) writes its last
    metrics for the supervisor, which folds them in and starts the worker again: no count is lost,
    even those made after the supervisor's last copy."""
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    pids = worker_pids(server)
    for _ in range(CONNECTIONS):
        register(server, "u")
    os.kill(pids["2"], signal.SIGTERM)  # at once: the supervisor's copy (once a second) may predate the calls
    assert wait_for(lambda: per_worker(server.metrics_text(), "hookrules_worker_restarts_total") == {"1": 0, "2": 1},
                    timeout=60, interval=0.2), server.log()
    assert "worker 2 (pid %d) exited with status 0" % pids["2"] in server.log()
    assert "worker 2: its counts join the retired totals, from what it wrote after its drain" in server.log()
    assert total(server.metrics_text(), "hookrules_decisions_total") == CONNECTIONS


def test_sigterm_drains_every_worker_and_exits_zero(start_server: Any, tmp_path: Path,
                                                    stubs: dict[str, Stubs]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "client.authenticate.star").write_text(SLOW_RULE)
    server: ServerProcess = start_server(rules, "--workers", "2")
    pids = worker_pids(server)
    s = stubs["v3"]
    channels = [fresh_channel(server) for _ in range(8)]
    try:
        calls = [call for ch in channels for call in authenticate_futures(s.stub(ch), s.pb2, 20, timeout=30)]
        for call in calls[::20]:
            call.result()  # every connection is open and its worker at work
        server.proc.send_signal(signal.SIGTERM)
        counts = outcomes(calls)
    finally:
        for ch in channels:
            ch.close()
    assert counts == {"answered": 160}, counts
    assert server.proc.wait(30) == 0
    log = server.log()
    for worker in ("1", "2"):
        assert f"[worker {worker}] hookrules.server: stopping: draining" in log
    assert wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=10)


def test_sighup_reaches_every_worker(start_server: Any, rules_dir: Path, tmp_path: Path,
                                     stubs: dict[str, Stubs]) -> None:
    """The config file's failure policy, changed and then re-read on SIGHUP, holds in every worker."""
    (rules_dir / "authenticate.star").write_text("fail('broken on purpose')\n")
    config = tmp_path / "hookrules.toml"
    config.write_text('[failure_policy]\n"client.authenticate" = "deny"\n')
    server: ServerProcess = start_server(rules_dir, "--workers", "2", "--config", str(config))
    s = stubs["v3"]
    assert not any(authenticate(server, s, "u") for _ in range(CONNECTIONS))
    config.write_text('[failure_policy]\n"client.authenticate" = "allow"\n')
    server.proc.send_signal(signal.SIGHUP)
    log = lambda: server.log()  # noqa: E731
    assert wait_for(lambda: all(f"[worker {w}] hookrules.server: SIGHUP: reloaded" in log() for w in "12")), log()
    answers = [authenticate(server, s, "u") for _ in range(CONNECTIONS)]
    assert answers == [True] * CONNECTIONS
    assert all(v > 0 for v in per_worker(server.metrics_text(), "hookrules_worker_calls_total").values())


def test_a_save_reaches_every_worker(start_server: Any, rules_dir: Path, stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    new = b'deny("closed for maintenance")\n'
    version = hashlib.sha256(new).hexdigest()[:12]
    (rules_dir / "authenticate.star").write_bytes(new)
    saved = time.monotonic()

    def serving() -> bool:
        info = series(server.metrics_text(), "hookrules_rule_info")
        return all(f'{{hook="authenticate",version="{version}",worker="{w}"}}' in info for w in "12")

    assert wait_for(serving, timeout=10), server.metrics_text()
    print(f"every worker serves the save after {time.monotonic() - saved:.2f} s")  # measured, not asserted
    s = stubs["v3"]
    assert not any(authenticate(server, s, "u") for _ in range(CONNECTIONS))
    assert all(v > 0 for v in per_worker(server.metrics_text(), "hookrules_worker_calls_total").values())


@pytest.mark.parametrize("to", ["file", "stdout"])
def test_the_decision_log_has_whole_lines_from_every_worker(start_server: Any, rules_dir: Path, tmp_path: Path,
                                                            stubs: dict[str, Stubs], to: str) -> None:
    target = tmp_path / "decisions.log"
    server: ServerProcess = start_server(rules_dir, "--workers", "2",
                                         "--decision-log", str(target) if to == "file" else "stdout")
    s = stubs["v3"]
    long_name = "x" * 6000  # lines past a pipe's atomic 4 KiB
    for i in range(CONNECTIONS):
        authenticate(server, s, long_name if i % 2 else "u")
    assert all(v > 0 for v in per_worker(server.metrics_text(), "hookrules_worker_calls_total").values())
    if to == "stdout":
        assert server.proc.stdout is not None
        server.proc.send_signal(signal.SIGTERM)
        text = server.proc.stdout.read().decode()  # to its end: every process has exited
    assert server.stop() == 0
    lines = (target.read_text() if to == "file" else text).splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole
    assert len(entries) == CONNECTIONS
    assert sorted(e["username"] for e in entries) == sorted([long_name, "u"] * (CONNECTIONS // 2))


def test_the_workers_stop_when_the_supervisor_is_killed(start_server: Any, rules_dir: Path) -> None:
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    pids = worker_pids(server)
    server.proc.kill()
    server.proc.wait(10)
    assert wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=20), pids


def test_bad_worker_counts_are_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for value in ("0", "-1", "many", "1.5", ""):
        result = serve_check("--rules", str(rules), "--workers", value)
        assert result.returncode == 2, value
        assert "--workers" in result.stderr and ("1 or more" in result.stderr or "at least 1" in result.stderr), \
            result.stderr
    for text, message in (("workers = 0\n", "workers = 0: must be at least 1"),
                          ('workers = "many"\n', "workers = 'many': is not a number of worker processes"),
                          ("workers = true\n", "workers = True has the wrong type"),
                          ("workers = 2.5\n", "workers = 2.5 has the wrong type")):
        config = tmp_path / "bad.toml"
        config.write_text(text)
        result = serve_check("--config", str(config), "--rules", str(rules))
        assert result.returncode == 2, text
        assert message in result.stderr, (text, result.stderr)


def test_auto_is_one_worker_per_available_cpu() -> None:
    from hookrules.config import parse_workers

    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    assert parse_workers("3") == parse_workers(3) == 3


def test_a_port_someone_else_serves_is_refused(start_server: Any, rules_dir: Path, tmp_path: Path) -> None:
    """As with one process: another server on the port (a plain socket, or another group) fails the start."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for flag in ("--grpc", "--http"):
            result = serve_check("--rules", str(rules_dir), "--workers", "2", "--metrics", "off",
                                 "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", flag, f"127.0.0.1:{port}")
            assert result.returncode == 2, result.stderr
            assert "is another server on that port?" in result.stderr, result.stderr
    group: ServerProcess = start_server(rules_dir, "--workers", "2")
    result = serve_check("--rules", str(rules_dir), "--workers", "2", "--metrics", "off",
                         "--http", "off", "--grpc", group.target)
    assert result.returncode == 2 and "is another server on that port?" in result.stderr, result.stderr


def test_one_worker_is_the_single_process_server(start_server: Any, rules_dir: Path) -> None:
    """--workers 1 starts no supervisor: the process that prints the banner serves (its only child: the watchdog)."""
    server: ServerProcess = start_server(rules_dir, "--workers", "1")
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in children]
    assert [c[2] for c in commands] == [b"hookrules.watchdog"], commands
    assert "[worker" not in server.log() and "supervisor" not in server.log()


def test_a_problem_only_a_worker_finds_fails_the_start_once(tmp_path: Path, rules_dir: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    result = serve_check("--rules", str(rules_dir), "--workers", "3", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                         "--metrics", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("cannot use the TLS files") == 1, result.stderr  # the first worker's, alone
    assert "worker 1 exited with status 2 while starting" in result.stderr
    assert "serving" not in result.stdout


def test_a_worker_that_cannot_start_is_retried_until_it_can(start_server: Any, rules_dir: Path) -> None:
    """While its rules directory is gone a restarted worker fails at start: the supervisor tries again, with
    growing pauses, and the other worker serves on; once the directory is back the worker serves again."""
    server: ServerProcess = start_server(rules_dir, "--workers", "2")
    pids = worker_pids(server)
    away = rules_dir.with_name("away")
    rules_dir.rename(away)
    try:
        os.kill(pids["1"], signal.SIGKILL)
        assert wait_for(lambda: server.log().count("worker 1 failed to start") >= 2, timeout=30), server.log()
        status, body = get(server.metrics_port, "/readyz")
        assert status == 503 and "worker 1" in body["detail"] and body["workers"]["2"]["status"] == "ready", body
    finally:
        away.rename(rules_dir)
    assert wait_for(lambda: get(server.metrics_port, "/readyz")[0] == 200, timeout=30, interval=0.2), server.log()
    assert per_worker(server.metrics_text(), "hookrules_worker_restarts_total") == {"1": 1, "2": 0}
    pauses = [float(p) for p in re.findall(r"worker 1 failed to start .*; trying again in ([\d.]+) s", server.log())]
    assert len(pauses) >= 2 and pauses == sorted(pauses) and pauses[-1] > pauses[0], pauses  # growing
    assert server.stop() == 0


def test_a_port_with_connections_in_time_wait_can_be_reserved_but_not_one_that_listens() -> None:
    """A restart from one process to --workers 2 within a minute of the last broker call: the old
    server's closed connections sit in TIME_WAIT on the port, which must not refuse the new start (found by
    running the systemd unit); a port another server listens on still is refused."""
    from hookrules.config import ConfigError
    from hookrules.workerlink import reserve

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.close()
    with pytest.raises(ConfigError, match="Address already in use"):
        reserve(f"127.0.0.1:{port}", "--http")  # still listening: refused
    listener.close()
    address, held = reserve(f"127.0.0.1:{port}", "--http")
    try:
        assert address == f"127.0.0.1:{port}"
    finally:
        for sock in held:
            sock.close()
