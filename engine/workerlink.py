"""The links between a supervisor (supervisor.py) and its workers, each side's half in one place.

- The shared ports: the supervisor reserves each one (reserve) and its workers bind it with SO_REUSEPORT
  (server.py, when Config.worker is set).
- The supervisor's life: a worker's stdin is a pipe from it, and end of file stops the worker
  (stop_with_parent), so no worker keeps serving a port alone after its supervisor is gone.
- The last counts: after its drain a worker writes its metrics on stdout (report_final_metrics), and
  the supervisor folds them into its totals.
- The decision log: each worker writes its lines into a pipe of its own, and the supervisor copies
  whole lines to the one target (LineRelay): lines of different workers never interleave (a pipe write
  over 4 KiB is not atomic, and O_APPEND is not over NFS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable

from .config import ConfigError, bind_problem, parse_address

log = logging.getLogger(__name__)

#: the line a worker writes on stdout after its drain, followed by its last metrics
FINAL_METRICS = "hookrules: final metrics"


def stop_with_parent(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """A worker's stdin is a pipe from its supervisor: end of file means the supervisor is gone (even
    by SIGKILL), and the worker stops as on SIGTERM rather than keep the port alone."""

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop()

    os.set_blocking(0, False)
    loop.add_reader(0, readable)


def report_final_metrics() -> None:
    """A worker's last counts, after its drain, for the supervisor to fold into its totals."""
    from prometheus_client import REGISTRY, generate_latest

    try:
        sys.stdout.write(FINAL_METRICS + "\n")
        sys.stdout.flush()
        sys.stdout.buffer.write(generate_latest(REGISTRY))
        sys.stdout.flush()
    except OSError:  # the supervisor is gone
        pass


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reserve(address: str, flag: str) -> tuple[str, list[socket.socket]]:
    """Bind (not listen) SO_REUSEPORT sockets on every address `address` stands for, all on one port
    (port 0: the one the OS picks for the first); returns "HOST:PORT" with that port, and the sockets.
    A port anything else serves is refused first, with the message a single server gives."""
    host, port = parse_address(address, flag)
    what = "gRPC" if flag == "--grpc" else "HTTP"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen for {what} on {address} ({flag}): {exc.strerror}") from None
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in infos:
            if port:  # free for anyone? (a socket of another group, SO_REUSEPORT or not, is listening)
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(sockaddr)
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            # SO_REUSEADDR as every listener has it: a single server's connections still in TIME_WAIT (a
            # restart from --workers 1 to 2 within a minute of the last broker call) must not refuse the
            # port. The probe above has already refused a port anything listens on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in held:
            sock.close()
        raise ConfigError(f"cannot listen for {what} on {address} ({flag}): {bind_problem(exc)}") from None
    return hostport(host, port), held


class LineRelay:
    """The decision log's one writer: whole lines from every worker's pipe to the target descriptor."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def follow(self, read_fd: int, name: str) -> None:
        """Copy from this pipe until its writer (a worker) is gone."""
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=self._copy, args=(read_fd,), name=f"decision-log-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _copy(self, read_fd: int) -> None:
        pending = b""
        try:
            while True:
                data = os.read(read_fd, 1 << 16)
                if not data:
                    return  # the worker is gone; a line it had not finished is dropped, never written in part
                pending += data
                end = pending.rfind(b"\n") + 1
                if end:
                    self._write(pending[:end])
                    pending = pending[end:]
        except OSError as exc:
            log.error("decision log: cannot copy a worker's lines: %s", exc)
        finally:
            os.close(read_fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._lock:
            while view:
                view = view[os.write(self.fd, view):]

    def close(self, timeout: float = 2.0) -> None:
        """Once the workers are gone: what their pipes still hold is written (for up to `timeout` seconds
        each: a target that blocks, e.g. a stdout nobody reads, is left behind)."""
        for thread in self._threads:
            thread.join(timeout)
        if self.fd != sys.stdout.fileno() and not any(t.is_alive() for t in self._threads):
            os.close(self.fd)
