"""Clients that keep calling a real server while bad files are saved into its rules directory.

Used by tests/test_files_load.py (behaviour) and bench/load_stall.py (figures). Two client threads,
each on its own keep-alive connection: EMQX's OnClientAuthenticate over gRPC and VerneMQ's
auth_on_register webhook over HTTP, both for user "alice", whom the rules allow (the rules read a
data file and a library, so data and library saves rebuild them). Every call is recorded with its
start, its latency and whether its answer was the expected one.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .bad_files import CATALOGUE
from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs

RULES = {"client.authenticate.star": 'if client.username in data.users:\n    allow()\nelse:\n    deny("who?")\n',
         "auth_on_register.star": 'load("lib/acl.star", "known")\nif known(client.username):\n    allow()\n'
                                  'else:\n    deny("who?")\n',
         "lib/acl.star": 'def known(u):\n    return u in data.users\n',
         "data/users.json": '["alice"]'}
CALL_TIMEOUT = 30.0


def write_rules(rules: Path) -> Path:
    for rel, text in RULES.items():
        (rules / rel).parent.mkdir(parents=True, exist_ok=True)
        (rules / rel).write_text(text)
    return rules


@dataclass
class Call:
    start: float
    latency: float
    answer: str


@dataclass
class Caller:
    """One client thread: calls until stopped, records every call."""

    name: str
    call: Callable[[str], str]  # username -> answer
    close: Callable[[], None]  # its connection
    user: str = "alice"
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = self.call(self.user)
            except Exception as exc:  # recorded: the test fails on it, the bench reports it
                answer = f"error: {type(exc).__name__}: {exc}"
                self.errors.append(answer)
            self.calls.append(Call(started, time.monotonic() - started, answer))
            time.sleep(0.002)  # a steady stream, not a flood: the figure is the wait, not the throughput

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CALL_TIMEOUT + 5)
            self._thread = None
        self.close()


def grpc_caller(server: ServerProcess, stubs: Stubs) -> Caller:
    channel = server.channel()
    stub = stubs.stub(channel)
    pb = stubs.pb2

    def call(user: str) -> str:
        reply = stub.OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "dev-1", user), result=False, meta=meta(pb)), timeout=CALL_TIMEOUT)
        if reply.WhichOneof("value") == "bool_result":
            return "allow" if reply.bool_result else "deny"
        return "ignore"

    return Caller("grpc", call, channel.close)


def http_caller(server: ServerProcess) -> Caller:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=CALL_TIMEOUT)
    body = {"peer_addr": "127.0.0.1", "peer_port": 8888, "username": "", "password": "password", "mountpoint": "",
            "client_id": "clientid", "clean_session": False}

    def call(user: str) -> str:
        data = json.dumps(dict(body, username=user)).encode()
        conn.request("POST", "/", body=data, headers={"Content-Type": "application/json",
                                                      "vernemq-hook": "auth_on_register"})
        result = json.loads(conn.getresponse().read())["result"]
        return "allow" if result == "ok" else "deny" if isinstance(result, dict) else str(result)

    return Caller("http", call, conn.close)


def logged_error_for(log: str, path: Path) -> bool:
    """Whether the server logged a load error located at this file."""
    prefix = f"{path}:"
    return any(prefix in line and " => " in line for line in log.splitlines())


@dataclass
class KindResult:
    kind: str
    reported: tuple[str, ...]
    window: tuple[float, float]  # monotonic start and end of the calls attributed to it
    logged: bool  # every reported file's error was logged (legitimate files: no error logged)
    seconds: float  # until the server had dealt with it


def save_each(server: ServerProcess, rules: Path, outside: Path, kinds: list[str] | None = None,
              settle: float = 1.0, timeout: float = 60.0) -> list[KindResult]:
    """Save each kind of file in turn, waiting until the server logged its error (or, for a
    legitimate file, its load), then `settle` seconds more for the calls after it."""
    results = []
    for kind in kinds or list(CATALOGUE):
        start = time.monotonic()
        reported = CATALOGUE[kind](rules, outside)
        deadline = start + timeout
        if reported:
            def done() -> bool:
                log = server.log()
                return all(logged_error_for(log, rules / rel) for rel in reported)
        else:
            before = server.log().count("loaded ")

            def done() -> bool:
                return server.log().count("loaded ") > before
        ok = done()
        while not ok and time.monotonic() < deadline:
            time.sleep(0.05)
            ok = done()
        seconds = time.monotonic() - start
        time.sleep(settle)
        results.append(KindResult(kind, reported, (start, time.monotonic()), ok, seconds))
    return results


def _status_mb(pid: int, field: str) -> float:
    """A memory field of /proc/<pid>/status (kB there), in MB; 0 when the kernel gives none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def calls_in(callers: list[Caller], window: tuple[float, float]) -> list[Call]:
    """The calls that were in flight at some moment of the window."""
    start, end = window
    return [c for caller in callers for c in caller.calls if c.start <= end and c.start + c.latency >= start]


def outside_dir(base: Path) -> Path:
    path = base / "outside"
    path.mkdir(exist_ok=True)
    return path
