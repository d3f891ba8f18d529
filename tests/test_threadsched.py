"""The server's helper threads yield to its event loop (threadsched.py): every thread but the loop's at
SCHED_BATCH, read from /proc as an operator would; HOOKRULES_THREADS=normal leaves them; a system that
refuses sched_setscheduler (a real seccomp filter) gets one warning and a server that answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hookrules import threadsched
from hookrules.config import ConfigError

from . import broker_calls as call
from . import seccomp_refuse
from .support import BUNDLED_RULES, ServerProcess, Stubs, alive, refused_start, wait_for

SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5
pytestmark = [
    pytest.mark.skipif(not threadsched.supported(), reason="Linux's per-thread scheduling policies"),
    # the servers started here inherit the runner's policy, and one at SCHED_BATCH leaves its threads alone
    pytest.mark.skipif(threadsched.supported() and os.sched_getscheduler(0) != SCHED_OTHER,
                       reason="the test runner itself runs at SCHED_OTHER"),
]
#: runs the command after it at SCHED_BATCH, as `chrt --batch 0` would
AT_BATCH = [sys.executable, "-c", "import os, sys; os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)); "
            "os.execv(sys.argv[1], sys.argv[1:])"]


def policies(pid: int) -> dict[int, int]:
    """{thread id: scheduling policy} of a process, from /proc/PID/task/TID/stat (field 41)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{name}/stat").read_text()
        except OSError:  # ended since the listing
            continue
        found[int(name)] = int(stat[stat.rindex(")") + 2:].split()[38])
    return found


@pytest.mark.parametrize(("value", "policy"), [("", "batch"), ("batch", "batch"), (" NORMAL ", "normal")])
def test_the_choice(value: str, policy: str) -> None:
    assert threadsched.wanted(value) == policy


@pytest.mark.parametrize("value", ["idle", "fifo", "batch,normal", "x" * 100])
def test_an_unknown_choice_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="the helper threads' policy is one of batch, normal"):
        threadsched.wanted(value)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_an_unknown_choice(workers: str) -> None:
    """With --workers, the supervisor refuses it once, before any worker starts; the value as given."""
    said = refused_start("--workers", workers, **{threadsched.ENV: "FIFO"})
    assert said.count("HOOKRULES_THREADS='FIFO': the helper threads' policy is one of batch, normal") == 1, said


def test_only_threads_at_sched_other_move_and_never_the_one_kept(tmp_path: Path) -> None:
    """In a process of its own (the policies stay with the threads): a thread an operator put at
    SCHED_IDLE keeps it, the kept thread stays at SCHED_OTHER, the others move; a second sweep moves none."""
    script = textwrap.dedent("""
        import os, threading
        from hookrules.threadsched import batch_other_threads
        stop = threading.Event()
        ids = {}
        def park(name, policy):
            ids[name] = threading.get_native_id()
            if policy is not None:
                os.sched_setscheduler(0, policy, os.sched_param(0))
            stop.wait(30)
        threads = [threading.Thread(target=park, args=(name, policy)) for name, policy in
                   (("idle", os.SCHED_IDLE), ("plain1", None), ("plain2", None))]
        for t in threads:
            t.start()
        while len(ids) < 3:
            stop.wait(0.01)
        main = threading.get_native_id()
        first, second = batch_other_threads(main), batch_other_threads(main)
        print(first, second, *(os.sched_getscheduler(ids[n]) for n in ("idle", "plain1", "plain2")),
              os.sched_getscheduler(main))
        stop.set()
        for t in threads:
            t.join(5)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second, idle, plain1, plain2, main = map(int, out.stdout.split())
    assert (idle, plain1, plain2, main) == (SCHED_IDLE, SCHED_BATCH, SCHED_BATCH, SCHED_OTHER)
    assert (first, second) == (2, 0)


def test_the_servers_helper_threads_yield_to_its_loop(tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    """grpc-core's threads (several, the poller's among them) at SCHED_BATCH, the loop's (the main thread)
    at SCHED_OTHER; threads grpc starts under calls are moved within a sweep or two."""
    server = ServerProcess(BUNDLED_RULES, log_path=tmp_path / "server.log")
    try:
        pid = server.proc.pid
        for i in range(50):
            assert call.emqx_authenticate(server, stubs["v3" if i % 2 else "v2"], f"c{i}", "gooduser", "pw") is True
        found = wait_for(lambda: (lambda p: p if all(v == SCHED_BATCH for t, v in p.items() if t != pid) else None)(
            policies(pid)), timeout=3 * threadsched.SWEEP_INTERVAL + 5)
        assert found, policies(pid)
        assert found[pid] == SCHED_OTHER
        assert len(found) >= 4  # the loop, grpc-core's I/O threads, the poller: the helpers are there to move
        assert re.search(r"helper threads: \d+ moved to SCHED_BATCH", server.log())
    finally:
        rc = server.stop()
    assert rc == 0, server.log()


@pytest.mark.parametrize(("env", "launcher", "policy", "said"), [
    ({threadsched.ENV: "normal"}, [], SCHED_OTHER, "left as they start (HOOKRULES_THREADS=normal)"),
    # `chrt --batch` for the whole server: every thread, the loop's too, stays where the operator put it
    ({}, AT_BATCH, SCHED_BATCH, "left as they start (the server started at SCHED_BATCH"),
], ids=["normal", "operator's policy"])
def test_a_server_left_as_it_starts(env: dict[str, str], launcher: list[str], policy: int, said: str,
                                    tmp_path: Path, stubs: dict[str, Stubs], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = ServerProcess(BUNDLED_RULES, log_path=tmp_path / "server.log", launcher=launcher)
    try:
        assert call.emqx_authenticate(server, stubs["v3"], "c1", "gooduser", "pw") is True
        found = policies(server.proc.pid)
        assert len(found) >= 4 and set(found.values()) == {policy}, found
        assert f"helper threads: {said}" in server.log()
    finally:
        rc = server.stop()
    assert rc == 0, server.log()


@pytest.mark.skipif(not seccomp_refuse.supported(), reason="a seccomp filter for this machine's system calls")
def test_a_refused_sched_setscheduler_is_said_once_and_the_server_serves(tmp_path: Path,
                                                                       stubs: dict[str, Stubs]) -> None:
    server = ServerProcess(BUNDLED_RULES, log_path=tmp_path / "server.log",
                           launcher=[sys.executable, str(Path(seccomp_refuse.__file__))])
    try:
        assert call.emqx_authenticate(server, stubs["v3"], "c1", "gooduser", "pw") is True
        assert call.emqx_authenticate(server, stubs["v3"], "c2", "baduser", "pw") is False
        time.sleep(threadsched.SWEEP_INTERVAL + 0.5)  # a sweep's time: the refusal is not said again
        found = policies(server.proc.pid)
        assert len(found) >= 4 and set(found.values()) == {SCHED_OTHER}, found
    finally:
        rc = server.stop()
    log = server.log_path.read_text(errors="replace")
    assert rc == 0, log
    assert log.count("helper threads: cannot move them to SCHED_BATCH (Operation not permitted)") == 1, log
    assert "Traceback" not in log


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a PID namespace of its own needs root and util-linux's unshare")
def test_a_proc_of_another_pid_namespace_is_not_swept(tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    """Under `unshare --pid --fork` without a /proc of its own, /proc/self/task lists the ids of the outer
    namespace: they are not this process's to move, so none is, and the server serves."""
    server = ServerProcess(BUNDLED_RULES, log_path=tmp_path / "server.log",
                           launcher=["unshare", "--pid", "--fork", "--kill-child=SIGTERM"])
    inner = 0
    try:
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
        assert len(children) == 1, children  # the server, pid 1 of its namespace
        inner = int(children[0])
        assert call.emqx_authenticate(server, stubs["v3"], "c1", "gooduser", "pw") is True
        assert "helper threads: left as they start (/proc is another PID namespace's" in server.log()
        assert "moved to SCHED_BATCH" not in server.log()
        assert set(policies(inner).values()) == {SCHED_OTHER}
    finally:
        server.stop()  # unshare ends, and its child gets SIGTERM (--kill-child): it drains and exits
        assert not inner or wait_for(lambda: not alive(inner), timeout=20)
    assert "Traceback" not in server.log_path.read_text(errors="replace")
