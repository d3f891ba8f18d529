"""The `--http` port's accept loop: every connection waiting in the backlog is taken at once, on any loop.

Why not loop.create_server: uvloop's server accepts about one new connection per loop turn, so a burst
of new connections waits in the kernel's accept queue, where admission (adapters/admission.py) cannot
count it, and calls past --max-concurrent-calls are answered late instead of refused at once
(eventloop.py). Accepting until the backlog is empty, then handing each socket to
loop.connect_accepted_socket (TLS included), gives asyncio's behaviour on both loops: the requests of
a burst arrive in the same turn and are counted before any runs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)

#: at most this many accepted per wake-up (the listen backlog): the loop's other work is not starved
ACCEPT_BATCH = 1024
#: out of file descriptors: stop accepting for this long (as asyncio's own server does)
EMFILE_PAUSE = 1.0
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor:
    def __init__(self, sock: socket.socket, protocol: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None):
        self.sock = sock
        self.protocol = protocol
        self.ssl = ssl_context
        self.loop = asyncio.get_running_loop()
        self._handshakes: set[asyncio.Task[object]] = set()
        self._open = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.loop.add_reader(self.sock.fileno(), self._accept)
        self._open = True

    def close(self) -> None:
        """Stop accepting and close the listening socket (accepted connections are the server's)."""
        if self._open:
            self._open = False
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS and self._open:
                    log.error("cannot accept connections on the --http port: %s; retrying in %.0f s",
                              exc.strerror, EMFILE_PAUSE)
                    self.loop.remove_reader(self.sock.fileno())
                    self._open = False
                    self.loop.call_later(EMFILE_PAUSE, self._resume)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task: asyncio.Task[object] = self.loop.create_task(
                self.loop.connect_accepted_socket(self.protocol, conn, ssl=self.ssl))
            self._handshakes.add(task)
            task.add_done_callback(self._connected)

    def _resume(self) -> None:
        if not self._open and self.sock.fileno() >= 0:
            self.start()

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a TLS handshake that failed, a reset
            log.debug("an --http connection failed before its first request: %s", type(task.exception()).__name__)
