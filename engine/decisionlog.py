"""The decision log: one JSON line per decision a rule made, for audits and for debugging rules.

Like OPA's decision logs, adapted: time, broker, hook, client id, username, decision, reason, rule
version, duration. Passwords and payloads are left out unless asked for, and a sampling rate keeps
busy brokers' logs affordable. Calls to hooks with no rule are not logged (there is no decision).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from .events import Event
from .ratelimit import Every

log = logging.getLogger(__name__)

#: write failures are reported at most this often, each report with the entries lost since the last
FAILURE_LOG_INTERVAL = 10.0


class DecisionLog:
    def __init__(self, out: TextIO, *, sample: float = 1.0, secrets: bool = False):
        self.out = out
        self.sample = sample
        self.secrets = secrets
        self._report = Every(FAILURE_LOG_INTERVAL)
        #: entries lost since the last report (a failure that was not yet reported included)
        self._lost = 0
        #: whether the last write failed, to say when writing works again
        self._failing = False

    @classmethod
    def open(cls, target: str, *, sample: float = 1.0, secrets: bool = False) -> DecisionLog:
        """'stdout', or a file path (appended to, line-buffered)."""
        out = sys.stdout if target == "stdout" else open(target, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        return cls(out, sample=sample, secrets=secrets)

    def close(self) -> None:
        if self.out is not sys.stdout:
            self.out.close()

    def record(self, event: Event, decision: Any, source: str, version: str, error: str, seconds: float) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        client = event.client
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="milliseconds"),
            "broker": event.broker,
            "hook": event.hook,
            "client_id": client.id,
            "username": client.username,
            "decision": decision.kind,
            "reason": getattr(decision, "reason", ""),
            "source": source,
            "rule_version": version,
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
        try:
            self.out.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        except (OSError, ValueError) as exc:  # a full disk must not stop decisions
            self._lost += 1
            self._failing = True
            if self._report.due():  # every failure is reported, at most once per interval, with a count
                log.error("decision log: cannot write (%s); decisions go on unlogged (entries lost since the last "
                          "report: %d)", exc, self._lost)
                self._lost = 0
            return
        if self._failing:
            self._failing = False
            log.warning("decision log: writing again (entries lost since the last report: %d)", self._lost)
            self._lost = 0
