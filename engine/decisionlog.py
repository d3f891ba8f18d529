"""The decision log: one JSON line per decision a rule made, for audits and for debugging rules.

Like OPA's decision logs, adapted: time, broker, hook, client id, username, decision, reason, rule
version, duration, and the event the rule read (eventcodec.py), so that `hookrules replay` can run
it again on other rules. Passwords and payloads are left out unless asked for (and marked as left
out), and a sampling rate keeps busy brokers' logs affordable. Calls to hooks with no rule are not logged (there is no decision).

The log never blocks a decision. A pipe nobody reads (`--decision-log stdout` into a stopped
reader) or a file on a stalled NFS mount blocks a write for as long as it likes, and the write used
to happen on the event loop: every broker call, /healthz and SIGTERM waited behind it. Now the
loop only formats the line (pure ASCII JSON, so any string a client sent can be written) and hands
it to a bounded queue; one writer thread does the I/O. A full queue drops the entry, counted in
hookrules_decision_log_dropped_total{reason="queue_full"} and reported in a rate-limited log line,
and close() waits a bounded time for a writer that may never come back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol

from . import metrics
from .eventcodec import BodyCache, encode_event
from .events import Event
from .hooks import RULE_SUFFIX
from .ratelimit import Every

log = logging.getLogger(__name__)

#: write failures and drops are reported at most this often, each report with the entries lost since the last
FAILURE_LOG_INTERVAL = 10.0
#: entries waiting for the writer; past it they are dropped (about 300 bytes each: a few MB at most)
QUEUE_SIZE = 10_000
#: ... and bytes: a line carries its event, and a VerneMQ body in it may be up to --http-max-body
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: lines the writer joins into one write (at most about 1 MB): it gets the GIL only between the
#: loop's own waits, so each turn must take all that waits
BATCH = 4096
#: how long close() waits for the writer to write what is queued (a blocked writer is left behind)
CLOSE_TIMEOUT = 2.0

_STOP = object()


class Verdict(NamedTuple):
    """One side of a shadow comparison, as the log writes it (engine.Outcome, with the error as text)."""

    decision: Any
    source: str
    version: str
    error: str = ""
    rule: str = ""


class Sink(Protocol):
    """Where lines go: a text file object (tests pass io.StringIO), or _FdSink."""

    def write(self, text: str, /) -> Any: ...


class _FdSink:
    """Writes to a file descriptor with os.write, under no lock a Python object holds: a writer
    blocked in it never stops the interpreter's exit from flushing (or closing) sys.stdout, as a
    write through sys.stdout's buffer would (a fatal 'could not acquire lock' at shutdown)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> None:
        data = memoryview(text.encode("ascii"))  # the lines are ASCII JSON
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)


class DecisionLog:
    def __init__(self, out: Sink, *, sample: float = 1.0, secrets: bool = False, queue_size: int = QUEUE_SIZE):
        self.out = out
        self.sample = sample
        self.secrets = secrets
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        #: the last webhook body encoded: a subscription's per-topic entries share it (eventcodec.py)
        self._bodies = BodyCache()
        #: characters of the lines queued and not yet written (the writer takes them off)
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        #: for the writer thread: write failures
        self._report = Every(FAILURE_LOG_INTERVAL)
        self._recovered = Every(FAILURE_LOG_INTERVAL)
        self._lost = 0  # entries lost since the last report (a failure not yet reported included)
        self._failing = False  # whether the last write failed, to say when writing works again
        #: for the event loop: entries dropped on a full queue
        self._drop_report = Every(FAILURE_LOG_INTERVAL)
        self._dropped = 0
        self._dropped_metric = metrics.DECISION_LOG_DROPPED.labels("queue_full")
        self._lost_metric = metrics.DECISION_LOG_DROPPED.labels("write_error")
        self._writer = threading.Thread(target=self._write_loop, name="decision-log", daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, target: str, *, sample: float = 1.0, secrets: bool = False) -> DecisionLog:
        """'stdout', or a file path (appended to). stdout is written through a descriptor of its own."""
        if target == "stdout":
            fd = os.dup(sys.stdout.fileno())
        else:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return cls(_FdSink(fd), sample=sample, secrets=secrets)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Let the writer write what is queued, for up to `timeout` seconds; False (and a log line)
        when it did not finish, e.g. blocked on a pipe nobody reads: it is then left behind (a daemon
        thread, which does not hold the process's exit), and so is its descriptor."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() >= deadline or not self._writer.is_alive():
                    break
        self._writer.join(max(0.0, deadline - time.monotonic()))
        if self._writer.is_alive():
            log.error("decision log: the writer is blocked (a pipe nobody reads, or a stalled file system?); "
                      "stopping without it, %d entries unwritten", self._queue.qsize())
            return False
        closer = getattr(self.out, "close", None)
        if isinstance(self.out, _FdSink) and closer is not None:
            closer()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every entry queued so far was written (or failed); False on timeout. For tests
        and tools: the server never waits for the log."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0 or not done.wait(left):
                    return False
        return True

    def record(self, event: Event, decision: Any, source: str, version: str, error: str, seconds: float,
               rule: str = "") -> None:
        """One entry; `rule` is the hook whose file answered (a twin's or portable file, for one
        without its own), written as the file name."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        self._put(self._entry(event, decision, source, version, error, seconds, rule))

    def record_shadow(self, event: Event, live: Verdict, shadow: Verdict) -> None:
        """A disagreement of the shadow rules with the live ones (shadow.py): the live decision's
        entry, marked `"shadow": true`, with the shadow's decision beside it. Not sampled: the shadow's
        own sampling bounds how many there are, and each one is what the shadow is run for."""
        entry = self._entry(event, live.decision, live.source, live.version, live.error, 0.0, live.rule)
        del entry["duration_us"]  # the live run's time is in its own entry; this one records no run
        entry["shadow"] = True
        entry["shadow_decision"] = shadow.decision.kind
        entry["shadow_reason"] = getattr(shadow.decision, "reason", "")
        entry["shadow_source"] = shadow.source
        entry["shadow_rule_version"] = shadow.version
        entry["shadow_rule"] = shadow.rule + RULE_SUFFIX if shadow.rule else ""
        if shadow.error:
            entry["shadow_error"] = shadow.error
        self._put(entry)

    def _entry(self, event: Event, decision: Any, source: str, version: str, error: str, seconds: float,
               rule: str) -> dict[str, Any]:
        client = event.client
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="milliseconds"),
            "broker": event.broker,
            "hook": event.hook,
            "channel": event.channel,
            "client_id": client.id,
            "username": client.username,
            "decision": decision.kind,
            "reason": getattr(decision, "reason", ""),
            "source": source,
            "rule_version": version,
            "rule": rule + RULE_SUFFIX if rule else "",
            "duration_us": round(seconds * 1e6, 1),
        }
        topic = event.data.get("topic")
        message = event.message
        if isinstance(topic, str):
            entry["topic"] = topic
        elif message is not None:
            entry["topic"] = message.topic
        if error:
            entry["error"] = error
        if self.secrets:
            entry["password"] = client.password
            if message is not None:
                entry["payload_base64"] = base64.b64encode(message.payload).decode("ascii")
        try:  # what the rule read, for `hookrules replay` (eventcodec.py), secrets as above
            entry["event"] = encode_event(event, self.secrets, self._bodies)
        except TypeError as exc:  # a value no adapter makes (a hand-built event): the decision is still logged
            entry["event_error"] = str(exc)
        return entry

    def _put(self, entry: dict[str, Any]) -> None:
        # ensure_ascii: any str can be written, a lone surrogate a client sent ("e\ud800") included,
        # and reads back as the same string; the line is valid JSON whatever the strings hold
        line = json.dumps(entry, ensure_ascii=True, default=str) + "\n"
        try:
            with self._bytes_lock:
                if self._queued_bytes + len(line) > MAX_QUEUED_BYTES and self._queued_bytes:
                    raise queue.Full
                self._queue.put_nowait(line)
                self._queued_bytes += len(line)
        except queue.Full:
            self._dropped_metric.inc()
            self._dropped += 1
            if self._drop_report.due():
                log.error("decision log: the writer is behind (queue of %d entries or %d MiB full: a reader that "
                          "stopped reading, or a slow disk?); decisions go on, entries dropped since the last report: %d",
                          self._queue.maxsize, MAX_QUEUED_BYTES >> 20, self._dropped)
                self._dropped = 0

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        get, task_done = self._queue.get, self._queue.task_done
        while True:
            lines = [get()]
            while len(lines) < BATCH:  # whatever else is waiting goes in the same write
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in lines
            text = "".join(line for line in lines if line is not _STOP)  # type: ignore[misc]
            with self._bytes_lock:
                self._queued_bytes -= len(text)
            try:
                if text:
                    self._write(text, len(lines) - stop)
            finally:
                for _ in lines:
                    task_done()
            if stop:
                return

    def _write(self, text: str, count: int) -> None:
        try:
            self.out.write(text)
            flush = getattr(self.out, "flush", None)
            if flush is not None:
                flush()
        except Exception as exc:  # a full disk, a closed pipe: decisions go on
            self._lost += count
            self._lost_metric.inc(count)
            self._failing = True
            if self._report.due():  # every failure is reported, at most once per interval, with a count
                log.error("decision log: cannot write (%s); decisions go on unlogged (entries lost since the last "
                          "report: %d)", exc, self._lost)
                self._lost = 0
            return
        if self._failing:
            self._failing = False
            if self._recovered.due():  # rate-limited like the failures: a disk that flaps must not flood
                log.warning("decision log: writing again (entries lost since the last report: %d)", self._lost)
                self._lost = 0
