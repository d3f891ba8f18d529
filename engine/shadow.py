"""Shadow rules: a second rules directory run on the live events, after their answers are sent, to see
what a change would decide before it decides anything.

Why it looks like this:
- Where it hooks in: Engine.decide, the one place every front-end's decisions pass (EMQX over gRPC,
  VerneMQ and RabbitMQ over HTTP, whatever serves the port). decide() only offers the event and its
  live outcome to a bounded queue (a sampling draw, an append: well under a microsecond); nothing of
  the shadow runs inside the call.
- When it runs: the queue is drained by a callback scheduled with loop.call_soon. A callback scheduled
  during a call runs only after the task or protocol callback that made the call has given the loop
  back, and every front-end hands its reply to the transport before it does: grpc.aio starts the
  reply's send batch in the same task step in which the handler returns, aiohttp writes the response
  in the step in which its handler returns, and a synchronous protocol writes inside data_received.
  So the live answer is on its way before any shadow rule runs, and no shadow rule can change it.
- What it may cost the calls that come next: each turn of the loop runs at most BATCH shadow runs, and
  stops early once TURN_SECONDS have gone by; then the loop serves whatever arrived meanwhile. One run
  holds the loop at most its own budget (--shadow-rule-timeout, --shadow-max-steps), as a live run
  does. A full queue drops the event (counted in hookrules_shadow_skipped_total), never waits.
- A shadow rule that fails is counted (hookrules_shadow_rule_errors_total) and logged, rate-limited,
  like a live one, and answered by the failure policy, as it would be live: that is the shadow's
  decision, compared like any other. Nothing of it reaches a broker.
- One step stuck in C: the shadow runs on the same thread as the live rules, under the same watchdog
  (its RunClock.shadow() names the shadow rule), which kills the server past --hard-timeout like a
  stuck live rule. The call that triggered it has had its answer; the calls after it wait, as they
  would behind a stuck live rule. Running the shadow in another process would keep them, at the
  price of copying every sampled event across; not done (see the README's "Shadow rules and replay").
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import metrics
from .decisionlog import DecisionLog, Verdict
from .decisions import Decision
from .engine import Engine, Outcome, WireCheck
from .events import Event
from .hooks import Policy
from .ratelimit import Every
from .reload import ReloadMetrics, Reloader
from .ruleset import Limits

log = logging.getLogger(__name__)

#: sampled events waiting for their shadow run; past it they are dropped (counted). An event holds its
#: call's body (a webhook's up to --http-max-body), so this bounds the memory a shadow that fell behind holds
QUEUE_SIZE = 256
#: shadow runs in one turn of the event loop at most ...
BATCH = 32
#: ... and none started once this much of the turn has gone to them
TURN_SECONDS = 0.002
#: share of calls the shadow rules run on by default (see the README: what the shadow costs)
DEFAULT_SAMPLE = 0.1
#: internal errors (bugs of ours) are logged at most this often
INTERNAL_LOG_INTERVAL = 10.0

SHADOW_METRICS = ReloadMetrics(reloads=metrics.SHADOW_RELOADS, rule_errors=metrics.SHADOW_RULE_ERRORS,
                               rule_info=metrics.SHADOW_RULE_INFO, rules_loaded=metrics.SHADOW_RULES_LOADED,
                               last_reload=None)


class ShadowEngine(Engine):
    """The engine of the shadow rules: the live engine's logic, with the shadow's own metrics and log
    lines, and no decision counts of its own (the comparison is counted instead)."""

    LOG_PREFIX = "shadow rules: "

    def _count(self, broker: str, hook: str, decision: Decision, source: str, amount: int = 1) -> None:
        pass

    def _error_counter(self, hook: str, kind: str) -> Any:
        return metrics.SHADOW_RULE_ERRORS.labels(hook, kind)

    def _rule_timer(self, hook: str) -> metrics.HistogramChild:
        timer = self._rule_timers.get(hook)
        if timer is None:
            timer = self._rule_timers[hook] = metrics.SHADOW_RULE_SECONDS.labels(hook)
        return timer


def verdict(outcome: Outcome) -> Verdict:
    return Verdict(outcome.decision, outcome.source, outcome.version,
                   outcome.error.one_line() if outcome.error is not None else "", outcome.rule)


class Shadow:
    """The shadow rules of one server: their directory, hot-reloaded, and the queue of events to run."""

    def __init__(self, directory: Path, *, limits: Limits, policies: Mapping[str, Policy], sample: float = DEFAULT_SAMPLE,
                 decision_log: DecisionLog | None = None, polling: bool = False, queue_size: int = QUEUE_SIZE):
        self.directory = directory
        self.sample = sample
        self.decision_log = decision_log
        self.engine = ShadowEngine(policies=policies, limits=limits)
        self.reloader = Reloader(directory, self.engine, polling=polling, report=SHADOW_METRICS,
                                 log_prefix="shadow rules: ")
        self._queue: deque[tuple[Event, Outcome, WireCheck | None]] = deque()
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled: asyncio.Handle | None = None
        self._full = metrics.SHADOW_SKIPPED.labels("queue_full")
        self._internal = metrics.SHADOW_SKIPPED.labels("internal_error")
        self._internal_log = Every(INTERNAL_LOG_INTERVAL)
        self._counters: dict[tuple[str, str, str, str], metrics.CounterChild] = {}
        self._random = random.random

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        """The first load, before serving (as the live rules')."""
        self.reloader.load()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.reloader.start(loop)

    def stop(self) -> None:
        self.reloader.stop()
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._loop = None
        self._queue.clear()

    # -- on the live path -----------------------------------------------------------------------

    def needs_event(self, hook: str) -> bool:
        """Whether a call to a hook the live rules do not answer must still be built and decided:
        the shadow rules answer it."""
        return self.engine.ruleset.answer(hook)[0] is not None

    def offer(self, event: Event, live: Outcome, check: WireCheck | None) -> None:
        """Called by the live engine with every decision it made: queue a share of them (the sample)."""
        if self.sample < 1.0 and self._random() >= self.sample:
            return
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._full.inc()
            return
        queue.append((event, live, check))
        if self._scheduled is None and self._loop is not None:
            self._scheduled = self._loop.call_soon(self.drain)

    # -- after the answers ----------------------------------------------------------------------

    def drain(self) -> None:
        """Run queued events, at most BATCH and TURN_SECONDS' worth, then give the loop back."""
        self._scheduled = None
        queue = self._queue
        deadline = time.perf_counter() + TURN_SECONDS
        for _ in range(BATCH):
            if not queue:
                break
            self.run(*queue.popleft())
            if time.perf_counter() >= deadline:
                break
        if queue and self._loop is not None:
            self._scheduled = self._loop.call_soon(self.drain)

    def run(self, event: Event, live: Outcome, check: WireCheck | None = None) -> Outcome | None:
        """One shadow run on an event the live rules decided: counted by both decisions, and a
        disagreement logged. Never raises."""
        try:
            outcome = self.engine.decide(event, None, check)
            live_kind, shadow_kind = live.decision.kind, outcome.decision.kind
            key = (event.broker, event.hook, live_kind, shadow_kind)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = metrics.SHADOW_DECISIONS.labels(*key)
            counter.inc()
            if live_kind != shadow_kind and self.decision_log is not None:
                self.decision_log.record_shadow(event, verdict(live), verdict(outcome))
            return outcome
        except Exception:  # a bug of ours: the live answers went out; the shadow goes on with the next
            self._internal.inc()
            if self._internal_log.due():
                log.exception("shadow rules: internal error running %s (live answers are not affected; more "
                              "within %.0f s are only counted in hookrules_shadow_skipped_total)", event.hook,
                              INTERNAL_LOG_INTERVAL)
            return None
