"""Finding 1's class for the server's own log: a stderr nobody reads (a stalled log shipper) must not block
the server. Lines that find the pipe full are dropped and counted; calls, probes and SIGTERM go on."""

from __future__ import annotations

import http.client
import logging
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .support import _LISTEN

RULE = 'log("x" * 900)\nallow()\n'  # about 50 KB of log a second (log() allows 50 lines a second)


def _dropped(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "hookrules_log_lines_dropped_total")


def test_a_stderr_nobody_reads_blocks_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "auth_on_register.star").write_text(RULE)
    cmd = [sys.executable, "-m", "hookrules", "serve", "--rules", str(rules), "--grpc", "off", "--http",
           "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--log-level", "debug"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # stderr: never read
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout is not None
        ports: dict[str, int] = {}
        out = b""
        deadline = time.monotonic() + 30
        while len(ports) < 2 and time.monotonic() < deadline:
            if not select.select([proc.stdout], [], [], 1)[0]:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, "the server exited early"
            out += chunk
            for line in out.decode().splitlines():
                found = _LISTEN.match(line)
                if found:
                    ports[found["what"]] = int(found["port"])
        http_port, metrics_port = ports["VerneMQ webhooks"], ports["Prometheus metrics"]
        body = json.dumps({"peer_addr": "127.0.0.1", "peer_port": 1, "mountpoint": "", "client_id": "c",
                           "username": "u", "password": "p", "clean_session": True}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        dropped = 0.0
        try:
            for i in range(20000):  # until the pipe is full and lines are dropped (a few seconds)
                conn.request("POST", "/", body=body, headers={"vernemq-hook": "auth_on_register"})
                resp = conn.getresponse()
                assert (resp.status, json.loads(resp.read())) == (200, {"result": "ok"}), i
                if i % 200 == 199:
                    dropped = _dropped(metrics_port)
                    if dropped:
                        break
            assert dropped > 0  # the pipe was full, and the server went on
            conn.request("GET", "/healthz")
            health = conn.getresponse()
            assert (health.status, health.read()) == (200, b'{"status": "ok"}')
        finally:
            conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_the_handler_drops_what_finds_no_room_and_says_so_once_there_is(monkeypatch: Any) -> None:
    from prometheus_client import REGISTRY

    from hookrules.logsink import NonBlockingHandler

    clock = [1000.0]
    monkeypatch.setattr("hookrules.ratelimit.time.monotonic", lambda: clock[0])
    read_end, write_end = os.pipe()
    try:
        handler = NonBlockingHandler(write_end)
        logger = logging.getLogger("test_log_sinks")
        logger.propagate = False
        logger.addHandler(handler)
        before = REGISTRY.get_sample_value("hookrules_log_lines_dropped_total") or 0.0
        sizes = [10, 5000, 70000]  # shorter than a piece, longer, longer than the pipe
        for size in sizes * 40:  # several pipe buffers: the write end fills up
            logger.error("%s", "y" * size)  # returns, whatever the pipe holds
        dropped = (REGISTRY.get_sample_value("hookrules_log_lines_dropped_total") or 0.0) - before
        assert dropped > 0
        drained = b""
        while select.select([read_end], [], [], 0)[0]:
            drained += os.read(read_end, 1 << 20)
        clock[0] += 60
        logger.error("after")
        tail = os.read(read_end, 1 << 20).decode()
        assert tail.lstrip("\n").startswith("(log: ") and "dropped: stderr was not being read" in tail and tail.endswith("after\n")
        assert drained.count(b"\n") + dropped >= len(sizes) * 40  # every line: written (perhaps cut) or counted
    finally:
        logging.getLogger("test_log_sinks").handlers.clear()
        os.close(read_end)
        os.close(write_end)
