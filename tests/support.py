"""Test support: real gRPC stubs generated from protos/, and a real hookrules server in a subprocess."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUNDLED_RULES = ROOT / "rules"
START_TIMEOUT = 60.0  # seconds; a cold start imports grpc and compiles two protos


@dataclass
class Stubs:
    """pb2 and pb2_grpc modules for one proto version, as protoc generates them for any client."""

    version: str
    pb2: ModuleType
    grpc: ModuleType

    def stub(self, channel: grpc.Channel) -> Any:
        return self.grpc.HookProviderStub(channel)


def generate_stubs(out_dir: Path) -> dict[str, Stubs]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("exhook_v2.proto", "exhook_v3.proto"):
        rc = protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", name])
        assert rc == 0, f"protoc failed on {name}"
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))
    return {v: Stubs(v, importlib.import_module(f"exhook_{v}_pb2"), importlib.import_module(f"exhook_{v}_pb2_grpc"))
            for v in ("v2", "v3")}


_LISTEN = re.compile(r"^hookrules: (?P<what>EMQX ExHook|VerneMQ webhooks|Prometheus metrics) .*"
                     r"on (?:https?://)?(?P<host>[\d.]+):(?P<port>\d+)")


class ServerProcess:
    """`hookrules serve` as an operator runs it, on loopback ports the OS picks."""

    def __init__(self, rules: Path, *extra: str, log_path: Path, launcher: Sequence[str] = ()):
        """`launcher`: a command that runs the server's command line given after it (it must exec it)."""
        self.rules = rules
        self.extra = extra
        self.log_path = log_path
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        cmd = [*launcher, sys.executable, "-m", "hookrules", "serve", "--rules", str(rules), "--grpc", "127.0.0.1:0",
               "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--log-level", "debug", *extra]
        # the last front-end to start announces last
        self._last = "VerneMQ webhooks" if "--http" not in extra else "EMQX ExHook"
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._wait_ready()

    def _banner_lines(self) -> Iterator[str]:
        """The start banner's lines: on stdout, or in the log when the decision log has stdout."""
        assert self.proc.stdout is not None
        on_stderr = "--decision-log" in self.extra and self.extra[self.extra.index("--decision-log") + 1] == "stdout"
        seen = 0
        while True:
            if not on_stderr:
                yield self.proc.stdout.readline().decode()
                continue
            lines = self.log().splitlines(keepends=True)
            if seen < len(lines) and lines[-1].endswith("\n"):
                yield from lines[seen:]
                seen = len(lines)
            elif self.proc.poll() is not None:
                yield ""
            else:
                time.sleep(0.02)
                yield "\n"  # nothing yet: lets the caller look at its deadline

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        ready = False
        lines = self._banner_lines()
        while time.monotonic() < deadline and not ready:
            line = next(lines)
            if not line:
                raise RuntimeError(f"server exited early (rc={self.proc.poll()}):\n{self.log()}")
            m = _LISTEN.match(line)
            if m:
                attr = {"EMQX ExHook": "grpc_port", "VerneMQ webhooks": "http_port"}.get(m["what"], "metrics_port")
                setattr(self, attr, int(m["port"]))
                ready = m["what"] == self._last
        if not ready:
            self.stop()
            raise RuntimeError(f"server did not report its ports in {START_TIMEOUT}s:\n{self.log()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        """The VerneMQ webhooks endpoint."""
        return f"http://127.0.0.1:{self.http_port}/"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def refused_start(*extra: str, **env: str) -> str:
    """`hookrules serve` on the bundled rules with these flags and environment variables: it must refuse to
    start (exit 2, before binding anything, with nothing on stdout); returns what it said on stderr."""
    proc = subprocess.run([sys.executable, "-m", "hookrules", "serve", "--rules", str(BUNDLED_RULES), "--grpc",
                           "127.0.0.1:0", "--http", "127.0.0.1:0", "--metrics", "off", *extra],
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "", proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hookrules: error:")]
    assert len(errors) == 1, proc.stderr  # said once: by the supervisor itself, not by a worker and then it
    return proc.stderr


def alive(pid: int) -> bool:
    """True while `pid` exists and has not exited: a zombie (exited, not yet reaped by whoever is its
    parent now) is gone too."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; bounded, and returns the last value (tests assert on it)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
