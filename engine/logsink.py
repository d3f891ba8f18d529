"""The server's own log (stderr), written so that a reader who stops reading never blocks the server.

Under a supervisor stderr is a pipe: a container runtime or a log shipper that stalls lets its 64 KiB
buffer fill, and then a plain write blocks the event loop, and with it every broker call, /healthz
and SIGTERM (the decision log had the same defect: see decisionlog.py). Here each line is written
only while the pipe has room: a poll with no timeout before each piece of at most PIPE_BUF bytes (a
write that size into a pipe with room never blocks). A line that finds no room is dropped, counted
in hookrules_log_lines_dropped_total, and the next line that gets through says how many were lost
(at most once per interval). Lines are written at once, in order, by the thread that logs them: no
queue, so a log line is out before the reply that follows it.
"""

from __future__ import annotations

import logging
import os
import select

from . import metrics
from .ratelimit import Every

#: the most a write into a pipe takes in one piece (POSIX PIPE_BUF on Linux)
PIECE = 4096
#: how often a line says how many before it were dropped
DROP_REPORT_INTERVAL = 10.0


class NonBlockingHandler(logging.Handler):
    """Formats each record and writes it to `fd` only if that cannot block; drops and counts otherwise."""

    def __init__(self, fd: int = 2, level: int = logging.NOTSET):
        super().__init__(level)
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        self._dropped = 0
        self._cut = False  # the last line was cut short: the next one starts on a line of its own
        self._report = Every(DROP_REPORT_INTERVAL)
        self._metric = metrics.LOG_LINES_DROPPED

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._dropped and self._report.due():
            text = (f"(log: {self._dropped} line(s) before this one were dropped: stderr was not being read)\n"
                    + text)
            self._dropped = 0
        if self._cut:
            text = "\n" + text
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        whole = len(data)
        while data:
            try:
                written = os.write(self.fd, data[:PIECE]) if self._writable() else 0
            except OSError:
                written = 0
            if not written:  # no room: the rest of the line is dropped
                self._dropped += 1
                self._metric.inc()
                self._cut = self._cut or len(data) < whole
                return
            self._cut = False
            data = data[written:]

    def _writable(self) -> bool:
        try:
            return any(event & select.POLLOUT for _, event in self._poll.poll(0))
        except OSError:
            return False
