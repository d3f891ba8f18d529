"""Every Prometheus metric hookrules exports, declared once (names follow Prometheus conventions).

The three families updated on every broker call (request and rule latency, decisions) are kept by
LoopHistogram and LoopCounter: plain numbers in lists, read by the registry at scrape time.
prometheus-client's own take a lock per update (about 1 us each, measured: a tenth of a rule run),
which buys nothing here: every call is answered on the one event loop thread, and so is /metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

# The *_created series double the series count and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Sub-millisecond resolution: a rule run takes microseconds, a gRPC round trip well under 1 ms.
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)
#: A broker call also waits for its turn on the loop, so under overload it can take as long as the broker
#: waits (EMQX and VerneMQ 5 s, RabbitMQ 15 s): these bounds let a p99 alert tell "near the broker's
#: timeout" from "over 1 s" (a quantile past the last finite bound reads as that bound).
REQUEST_BUCKETS = LATENCY_BUCKETS + (2.5, 5.0, 10.0)


def _go_float(value: float) -> str:
    """A bucket bound as prometheus-client writes it in `le`."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


class HistogramChild:
    """One labelled histogram: per-bucket counts (not cumulative: one increment per observation)."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1  # bucket i holds amount <= bounds[i]
        self.sum += amount


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


Child = TypeVar("Child", HistogramChild, CounterChild)


class _LoopFamily(Generic[Child]):
    """A metric family whose children are updated without locks and exported when scraped."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry = REGISTRY):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)  # type: ignore[arg-type]  # a Collector by its collect()/describe()

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Child:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return []  # no name collision checks against families declared elsewhere: none are


class LoopHistogram(_LoopFamily[HistogramChild]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry = REGISTRY):
        self.bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for values, child in list(self._children.items()):
            cumulative, total = [], 0
            for edge, count in zip(edges, list(child.counts)):
                total += count
                cumulative.append((edge, float(total)))
            family.add_metric(list(values), cumulative, child.sum)
        yield family


class LoopCounter(_LoopFamily[CounterChild]):
    def _new_child(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


REQUEST_SECONDS = LoopHistogram(
    "hookrules_request_duration_seconds",
    "Time to answer one broker call, from decoded request to encoded reply",
    ["broker", "hook"], buckets=REQUEST_BUCKETS,
)
RULE_SECONDS = LoopHistogram(
    "hookrules_rule_duration_seconds", "Time of one rule run", ["hook"], buckets=LATENCY_BUCKETS,
)
DECISIONS = LoopCounter(
    "hookrules_decisions", "Decisions made, by hook, decision (allow, deny, ignore, rewrite, drop) and source "
    "(rule: the rule's own; policy: the failure policy's, for a rule that failed, never loaded or ran out of "
    "budget; default: ignore() for a hook with no rule for the call)",
    ["broker", "hook", "decision", "source"],
)
RULE_ERRORS = Counter(
    "hookrules_rule_errors", "Rule errors by hook and kind (load, runtime, deadline)", ["hook", "kind"],
)
RELOADS = Counter(
    "hookrules_reloads", "Rule file (re)loads by hook and result (loaded, error, removed)", ["hook", "result"],
)
RULE_INFO = Gauge(
    "hookrules_rule_info", "1 for the version (sha256 prefix of the file) each hook serves", ["hook", "version"],
)
RULES_LOADED = Gauge("hookrules_rules_loaded", "Hooks that have a rule loaded")
LAST_RELOAD = Gauge(
    "hookrules_last_reload_timestamp_seconds", "Unix time of the last rescan that changed the rule set",
)
#: the states hookrules_rule_broken reports
BROKEN_STATES = ("never_loaded", "data_missing", "stale")  # worst first


class PairsWhenScraped:
    """A collector of gauges computed when scraped from the (label, label) pairs `watch` was given: always
    the rule set serving now, whatever changed it, with nothing to keep in step on every reload."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self._source: Callable[[], Iterable[tuple[str, str]]] | None = None
        registry.register(self)

    def watch(self, source: Callable[[], Iterable[tuple[str, str]]] | None) -> None:
        self._source = source

    def pairs(self) -> list[tuple[str, str]]:
        return sorted(self._source()) if self._source is not None else []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:  # each subclass yields its families
        return iter(())


class RuleStates(PairsWhenScraped):
    """hookrules_rule_broken{hook, state} (1 per hook whose rule is broken) and hookrules_rules_broken{state}
    (how many; 0 too, so an alert has a series to read); the pairs are (hook, state), state one of
    BROKEN_STATES."""

    def collect(self) -> Iterator[Metric]:
        pairs = self.pairs()
        per_hook = GaugeMetricFamily("hookrules_rule_broken", "1 for each hook whose rule is broken: its file "
                                     "never loaded (answered by the failure policy), its current contents "
                                     "failed and an older version serves, or a data file it reads did (stale), "
                                     "or it reads data while a data file never loaded (data_missing)",
                                     labels=["hook", "state"])
        totals = GaugeMetricFamily("hookrules_rules_broken", "Hooks whose rule is broken, by state", labels=["state"])
        for hook, state in pairs:
            per_hook.add_metric([hook, state], 1.0)
        for state in BROKEN_STATES:
            totals.add_metric([state], float(sum(1 for _, s in pairs if s == state)))
        yield per_hook
        yield totals


RULE_BROKEN = RuleStates()


class AnsweredBy(PairsWhenScraped):
    """hookrules_hook_rule{hook, rule}: 1 for each broker hook a rule file answers, naming the file (its
    own, its MQTT 3 twin's, or the portable authenticate.star / authorize.star); the pairs are (broker
    hook, file name). Joined with hookrules_rule_info, it says which version answers a hook."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("hookrules_hook_rule", "1 for each broker hook answered by a rule file, and "
                                   "which file answers it (its own, a twin's or a portable one)",
                                   labels=["hook", "rule"])
        for hook, rule in self.pairs():
            family.add_metric([hook, rule], 1.0)
        yield family


HOOK_RULE = AnsweredBy()
BAD_REQUESTS = Counter(
    "hookrules_bad_requests", "Broker calls that could not be read, by broker and reason", ["broker", "reason"],
)

DECISION_LOG_DROPPED = Counter(
    "hookrules_decision_log_dropped", "Decision log entries not written, by reason (queue_full: the writer is "
    "behind, e.g. a reader that stopped reading; write_error: the write failed)", ["reason"],
)
LOG_LINES_DROPPED = Counter(
    "hookrules_log_lines_dropped", "The server's own log lines (stderr) dropped because stderr was not being read",
)

# -- the shadow rules (shadow.py): their own families, so nothing of theirs shows in the live ones --
SHADOW_DECISIONS = LoopCounter(
    "hookrules_shadow_decisions", "Shadow rule runs, by the live decision and the shadow rules' decision on the same "
    "event (allow, deny, ignore, rewrite, drop): a disagreement is any series where live and shadow differ",
    ["broker", "hook", "live", "shadow"],
)
SHADOW_RULE_SECONDS = LoopHistogram(
    "hookrules_shadow_rule_duration_seconds", "Time of one shadow rule run", ["hook"], buckets=LATENCY_BUCKETS,
)
SHADOW_RULE_ERRORS = Counter(
    "hookrules_shadow_rule_errors", "Shadow rule errors by hook and kind (load, runtime, deadline); they never "
    "reach a broker", ["hook", "kind"],
)
SHADOW_RELOADS = Counter(
    "hookrules_shadow_reloads", "Shadow rule file (re)loads by hook and result (loaded, error, removed)",
    ["hook", "result"],
)
SHADOW_RULE_INFO = Gauge(
    "hookrules_shadow_rule_info", "1 for the version each shadow rule file serves", ["hook", "version"],
)
SHADOW_RULES_LOADED = Gauge("hookrules_shadow_rules_loaded", "Hooks that have a shadow rule loaded")
SHADOW_SKIPPED = Counter(
    "hookrules_shadow_skipped", "Sampled events the shadow rules did not run on, by reason (queue_full: the "
    "shadow was behind; internal_error: a bug of hookrules' own, logged)", ["reason"],
)

__all__ = ["Counter", "Histogram", "CounterChild", "HistogramChild", "LATENCY_BUCKETS", "REQUEST_BUCKETS", "REQUEST_SECONDS", "RULE_SECONDS", "DECISIONS", "RULE_ERRORS",
           "RELOADS", "RULE_INFO", "RULES_LOADED", "LAST_RELOAD", "BAD_REQUESTS", "RULE_BROKEN", "BROKEN_STATES", "HOOK_RULE",
           "DECISION_LOG_DROPPED", "LOG_LINES_DROPPED", "SHADOW_DECISIONS", "SHADOW_RULE_SECONDS", "SHADOW_RULE_ERRORS",
           "SHADOW_RELOADS", "SHADOW_RULE_INFO", "SHADOW_RULES_LOADED", "SHADOW_SKIPPED"]
