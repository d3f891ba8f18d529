"""The rule engine: an event in, a decision out, with the failure policy applied and metrics kept.

It knows no broker and no wire format (OPA's topdown): adapters hand it an Event and translate the
Decision. The rule set is swapped in by one assignment; a run in progress keeps the set it started on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from . import metrics
from .decisionlog import DecisionLog
from .decisions import ALLOW, IGNORE, POLICY_DECISIONS, Decision
from .errors import Location, RuleError
from .events import Event
from .hooks import CHAINS, HOOKS, Policy
from .nodefaults import NO_RULE_DEFAULTS, no_rule_decision
from .modifiers import decision_problem
from .ratelimit import Every
from .ruleset import Limits, RuleRuntimeError, RuleSet

if TYPE_CHECKING:
    from .shadow import Shadow
    from .watchdog import RunClock

log = logging.getLogger(__name__)
_perf_counter = time.perf_counter

Source = Literal["rule", "no_rule", "filtered", "policy"]

#: The `source` label of hookrules_decisions_total: a rule's own decision, a failure-policy answer
#: (the rule failed, never loaded, or its call's budget was spent), or the default ignore() of a hook
#: with no rule for the event. Three values whatever the rules do, so the series stay bounded.
SOURCE_LABELS: Mapping[str, str] = {"rule": "rule", "policy": "policy", "no_rule": "default", "filtered": "default"}

#: A rule that fails on every event logs its error at most this often (the count says how many).
ERROR_LOG_INTERVAL = 10.0
#: errors remembered for rate-limiting their log lines; past it, those of versions no longer served go
MAX_ERROR_KEYS = 1000

#: An adapter's own check of a decision against what its wire can carry (None: it can), run where
#: the decision is made so a decision it cannot send is a rule error answered by the failure policy.
WireCheck = Callable[[Decision], "str | None"]


class Outcome(NamedTuple):
    """A decision and where it came from. A NamedTuple: built on every call, and a frozen
    dataclass's __init__ costs four times as much."""

    decision: Decision
    source: Source
    version: str = ""
    error: RuleError | None = None
    #: the hook whose rule file answered (its own, a twin's or a portable one), "" for none
    rule: str = ""


NO_RULE = Outcome(IGNORE, "no_rule")


class Engine:
    def __init__(self, ruleset: RuleSet | None = None, policies: Mapping[str, Policy] | None = None,
                 limits: Limits | None = None, decision_log: DecisionLog | None = None):
        self.ruleset = ruleset if ruleset is not None else RuleSet()  # an all-broken set is empty, not absent
        self.decision_log = decision_log
        self.policies = dict(policies or {})
        self.limits = limits or Limits()
        self._error_log: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._error_log_ruleset: RuleSet | None = None  # the rule set _error_log was last pruned for
        self._decision_counters: dict[tuple[str, str, str, str], metrics.CounterChild] = {}
        self._internal_log = Every(ERROR_LOG_INTERVAL)
        self._internal_skipped = 0
        self._rule_timers: dict[str, metrics.HistogramChild] = {}
        #: where a watchdog process sees how long the current run has taken (watchdog.py), if any
        self.run_clock: RunClock | None = None
        #: the shadow rules (shadow.py), offered every decision once it is made; None: no shadow
        self.shadow: Shadow | None = None

    def policy(self, hook: str) -> Policy:
        """The failure policy of a hook: the config's, else the hook's default."""
        info = HOOKS.get(hook)
        if info is None:
            return self.policies.get(hook, "ignore")
        if hook in self.policies:
            return self.policies[hook]
        # a hook answered by another file (a _m5 hook by its twin's, any by a portable one) follows the
        # policy configured for the hooks between it and that file, the nearest first
        source = self.ruleset.source(hook)
        if source is not None and source != hook:
            for name in CHAINS[hook][1:]:
                if name in self.policies:
                    return self.policies[name]
                if name == source:
                    break
        return info.failure_policy

    def never_loaded(self, hook: str) -> str | None:
        """The hook whose rule file answers `hook` (its own, or its twin's when it falls back) when that
        file never loaded, so every call to `hook` is answered by `hook`'s failure policy; else None.
        The same lookup decide() makes: readiness asks it of every authentication hook."""
        source, rule = self.ruleset.answer(hook)
        return source if source is not None and rule is None else None

    def needs_event(self, hook: str) -> bool:
        """False when the hook has no rule file and no default of its own: the answer is ignore()
        whatever the event says, so an adapter may skip building it (most EMQX calls are notifications
        nobody wrote a rule for) and call skip()."""
        shadow = self.shadow
        return (self.ruleset.answer(hook)[0] is not None or hook in NO_RULE_DEFAULTS
                or (shadow is not None and shadow.needs_event(hook)))

    def skip(self, broker: str, hook: str) -> Outcome:
        """The outcome of a call to a hook needs_event() said needs none: ignore(), counted like any
        other decision."""
        self._count(broker, hook, IGNORE, "no_rule")
        return NO_RULE

    def internal_error(self, broker: str, hook: str) -> Decision:
        """The answer to a call an adapter failed on by a bug of hookrules' own: counted, logged (with
        the traceback: call it from the except block) at most once per ERROR_LOG_INTERVAL, and decided
        by the failure policy, so the broker still gets an answer it reads."""
        policy = self.policy(hook)
        metrics.BAD_REQUESTS.labels(broker, "internal_error").inc()
        if self._internal_log.due():
            more = (f"; {self._internal_skipped} more internal errors since the last report"
                    if self._internal_skipped else "")
            self._internal_skipped = 0
            log.exception("internal error answering %s %s; answered %s by failure policy%s (more within %.0f s "
                          "are only counted in hookrules_bad_requests_total)", broker, hook, policy, more,
                          ERROR_LOG_INTERVAL)
        else:
            self._internal_skipped += 1
        return POLICY_DECISIONS[policy]

    def decide(self, event: Event, timeout: float | None = None, check: WireCheck | None = None) -> Outcome:
        """Run the hook's rule on the event. Never raises for anything a rule does.

        The decision is checked against what the broker's reply can carry (modifiers.decision_problem,
        and the adapter's own `check`): one it cannot is a rule error, answered by the failure policy."""
        ruleset = self.ruleset  # one read: a swap during this call does not affect it
        source, rule = ruleset.answer(event.hook)
        answered = source or ""
        if rule is None and source is not None:  # its file exists but never loaded
            outcome = self._failed(event, "", RuleError("load_error", Location(ruleset.broken[source]),
                                                        "the rule file has errors and no earlier version loaded",
                                                        "run 'hookrules check' on the rules directory"), source)
            if self.decision_log is not None:  # answered by policy: a decision an audit must see
                self._log_decision(event, outcome, 0.0)
        elif rule is None:  # no file: ignore(), or the hook's own default (a RabbitMQ check's allow or deny)
            default = no_rule_decision(event)
            outcome = NO_RULE if default is IGNORE else Outcome(default, "no_rule")
        elif rule.topic_test is not None and not rule.wants(event):
            outcome = Outcome(IGNORE, "filtered", rule.version, None, answered)
        else:
            limits = self.limits
            budget = limits.timeout if timeout is None or timeout > limits.timeout else timeout
            clock = self.run_clock
            if clock is not None:
                clock.started(event.hook)
            started = _perf_counter()
            try:
                decision = rule.run(event, limits, budget)
                if decision is None or decision is ALLOW or decision is IGNORE:  # the usual: nothing to check
                    usual = rule.usual  # (allow, ignore) outcomes, made on the rule's first run
                    if usual is None:
                        usual = rule.usual = (Outcome(ALLOW, "rule", rule.version, None, answered),
                                              Outcome(IGNORE, "rule", rule.version, None, answered))
                    outcome = usual[0] if decision is ALLOW else usual[1]
                else:
                    problem = decision_problem(event.hook, decision, event.channel) or (check(decision) if check else None)
                    if problem is None:
                        outcome = Outcome(decision, "rule", rule.version, None, answered)
                    else:
                        outcome = self._failed(event, rule.version, RuleError(
                            "runtime_error", Location(rule.path), f"{decision.kind}() cannot be sent to "
                            f"{event.broker}: {problem}", "check the values the rule passes to its decision"),
                            answered)
            except RuleRuntimeError as exc:
                outcome = self._failed(event, rule.version, exc.error, answered)
            finally:
                elapsed = _perf_counter() - started
                if clock is not None:
                    clock.finished()
                self._rule_timer(event.hook).observe(elapsed)
            if self.decision_log is not None:
                self._log_decision(event, outcome, elapsed)
        self._count(event.broker, event.hook, outcome.decision, outcome.source)
        shadow = self.shadow
        if shadow is not None:  # queued: the shadow runs after this call's answer is sent (shadow.py)
            shadow.offer(event, outcome, check)
        return outcome

    def decide_each(self, events: Iterator[Event], count: int, check: WireCheck | None = None) -> list[Decision]:
        """The decisions of one call that runs the rule `count` times, once per event (a VerneMQ
        subscription: once per topic). One run gets the whole budget; several share it, so a slow rule
        cannot keep the broker waiting once per topic; once it is spent the remaining events are
        answered by the failure policy without running the rule, nor even being built (`events` is
        read lazily), so one call holds the loop for its budget and a few microseconds a topic."""
        if count == 1:
            return [self.decide(next(events), None, check).decision]
        deadline = time.monotonic() + self.limits.timeout
        decisions: list[Decision] = []
        for event in events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                decisions.extend(self._spent(event, len(decisions), count))
                break
            decisions.append(self.decide(event, remaining, check).decision)
        return decisions

    def _spent(self, event: Event, ran: int, count: int) -> list[Decision]:
        """The failure policy's answer for the `count - ran` events of a call left when its budget ran
        out, `event` the first of them: counted per event, logged (and decision-logged) once."""
        left = count - ran
        policy = self.policy(event.hook)
        self._error_counter(event.hook, "deadline").inc()
        source, rule = self.ruleset.answer(event.hook)
        error = RuleError("deadline_error", Location(rule.path if rule is not None else event.hook),
                          f"the call's budget ({self.limits.timeout:g} s, --rule-timeout) was spent after {ran} of "
                          f"{count} runs; the other {left} were answered by the failure policy without running the "
                          "rule", "make the rule cheaper, or raise --rule-timeout")
        self._log_error(event.hook, rule.version if rule is not None else "", error, policy)
        decision = POLICY_DECISIONS[policy]
        if self.decision_log is not None:
            self._log_decision(event, Outcome(decision, "policy", rule.version if rule else "", error, source or ""), 0.0)
        self._count(event.broker, event.hook, decision, "policy", left)
        return [decision] * left

    def _log_decision(self, event: Event, outcome: Outcome, seconds: float) -> None:
        self.decision_log.record(event, outcome.decision, outcome.source, outcome.version,  # type: ignore[union-attr]
                                 outcome.error.one_line() if outcome.error else "", seconds, outcome.rule)

    def _failed(self, event: Event, version: str, error: RuleError, rule: str = "") -> Outcome:
        policy = self.policy(event.hook)
        kind = "deadline" if error.code == "deadline_error" else "runtime"
        if error.code != "load_error":  # load errors were counted when the file was read
            self._error_counter(event.hook, kind).inc()
        self._log_error(event.hook, version, error, policy)
        return Outcome(POLICY_DECISIONS[policy], "policy", version, error, rule)

    def _log_error(self, hook: str, version: str, error: RuleError, policy: str) -> None:
        key = (hook, version, str(error.location))
        now = time.monotonic()
        if key not in self._error_log and (self.ruleset is not self._error_log_ruleset
                                           or len(self._error_log) >= MAX_ERROR_KEYS):
            self._prune_error_log()
        last, suppressed = self._error_log.get(key, (0.0, 0))
        if last and now - last < ERROR_LOG_INTERVAL:
            self._error_log[key] = (last, suppressed + 1)
            return
        self._error_log[key] = (now, 0)
        more = f"; {suppressed} more like it since the last report" if suppressed else ""
        log.error("%s%s (hook %s, answered %s by failure policy)%s", self.LOG_PREFIX, error.one_line(), hook, policy,
                  more)

    def _prune_error_log(self) -> None:
        """Forget the errors of rule versions no longer served (every save of a failing rule added its
        own), and past MAX_ERROR_KEYS the oldest: the rate limit's memory stays bounded."""
        ruleset = self.ruleset
        self._error_log_ruleset = ruleset

        def served(hook: str, version: str) -> bool:
            source, rule = ruleset.answer(hook)
            return source is not None and (rule.version if rule is not None else "") == version

        kept = {k: v for k, v in self._error_log.items() if served(k[0], k[1])}
        if len(kept) >= MAX_ERROR_KEYS:
            kept = dict(sorted(kept.items(), key=lambda kv: kv[1][0])[len(kept) - MAX_ERROR_KEYS // 2:])
        self._error_log = kept

    #: before every rule error's log line (the shadow rules' engine says so)
    LOG_PREFIX = ""

    def _error_counter(self, hook: str, kind: str) -> Any:
        return metrics.RULE_ERRORS.labels(hook, kind)

    def _count(self, broker: str, hook: str, decision: Decision, source: str, amount: int = 1) -> None:
        key = (broker, hook, decision.kind, source)
        counter = self._decision_counters.get(key)
        if counter is None:
            counter = self._decision_counters[key] = metrics.DECISIONS.labels(
                broker, hook, decision.kind, SOURCE_LABELS[source])
        counter.inc(amount)

    def _rule_timer(self, hook: str) -> metrics.HistogramChild:
        timer = self._rule_timers.get(hook)
        if timer is None:
            timer = self._rule_timers[hook] = metrics.RULE_SECONDS.labels(hook)
        return timer
