"""One /metrics for a group of worker processes: pure functions over parsed metric families.

Each worker keeps its own metrics in its own process (the lock-free LoopCounter/LoopHistogram
families stay as they are: nothing is added to a call). The supervisor reads every worker's /metrics
text and merges it here:
- counters, histograms and summaries are summed over the workers, plus a retired total: the last
  snapshot of every worker process that has exited, so a restart never makes a counter go backwards;
- every other family (gauges: which rule version a worker serves, its memory) is kept per worker,
  with a `worker` label, because the sum of "1 for the version served" over workers means nothing.
prometheus-client's multiprocess mode would do the summing through files written on every update
(one mmap write per call and label set) and does not support the lock-free families or custom
collectors; merging the text costs the supervisor a few milliseconds per scrape instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

#: family types whose samples add up across processes (a gauge histogram is a gauge: kept per worker)
SUMMED = frozenset({"counter", "histogram", "summary"})
#: the label that tells the workers' own series apart
WORKER_LABEL = "worker"
#: labels that split one series into several samples (histogram buckets, summary quantiles)
_PART_LABELS = frozenset({"le", "quantile"})

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


@dataclass
class Totals:
    """Summed samples by family: {family: {(sample name, sorted labels): value}}, with each family's
    type and help text, in the order first seen."""

    meta: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (type, documentation, unit)
    values: dict[str, dict[SampleKey, float]] = field(default_factory=dict)


def parse(text: str) -> list[Metric]:
    """The families of one /metrics text (Prometheus text format)."""
    return list(text_string_to_metric_families(text))


def _key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def fold(totals: Totals, families: Iterable[Metric]) -> Totals:
    """`totals` plus the summed families of one snapshot, as a new Totals (neither input changes)."""
    meta = dict(totals.meta)
    values = {name: dict(samples) for name, samples in totals.values.items()}
    for family in families:
        if family.type not in SUMMED:
            continue
        meta.setdefault(family.name, (family.type, family.documentation, family.unit))
        target = values.setdefault(family.name, {})
        for sample in family.samples:
            key = _key(sample.name, sample.labels)
            target[key] = target.get(key, 0.0) + sample.value
    return Totals(meta, values)


def _grouped(samples: dict[SampleKey, float]) -> list[tuple[SampleKey, float]]:
    """Samples with the parts of one series (its buckets, _sum and _count) next to each other, series
    in the order first seen: a series only a retired worker had is listed whole, not split."""
    order: dict[Labels, int] = {}
    for name, labels in samples:
        order.setdefault(tuple(kv for kv in labels if kv[0] not in _PART_LABELS), len(order))
    return sorted(samples.items(),
                  key=lambda item: order[tuple(kv for kv in item[0][1] if kv[0] not in _PART_LABELS)])


def merge(retired: Totals, workers: Mapping[str, Iterable[Metric]]) -> list[Metric]:
    """One set of families for the whole group: summed families are `retired` plus every worker's
    samples; the others are every worker's samples with a `worker` label (its key in `workers`)."""
    summed = retired
    per_worker: dict[str, Metric] = {}
    order: list[str] = list(retired.meta)
    for worker, families in workers.items():
        families = list(families)
        summed = fold(summed, families)
        for family in families:
            if family.name not in order:
                order.append(family.name)
            if family.type in SUMMED:
                continue
            out = per_worker.get(family.name)
            if out is None:
                out = per_worker[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                out.add_sample(sample.name, {**sample.labels, WORKER_LABEL: worker}, sample.value)
    merged = []
    for name in order:
        if name in per_worker:
            merged.append(per_worker[name])
        elif name in summed.meta:
            kind, documentation, unit = summed.meta[name]
            family = Metric(name, documentation, kind, unit)
            for (sample_name, labels), value in _grouped(summed.values.get(name, {})):
                family.add_sample(sample_name, dict(labels), value)
            merged.append(family)
    return merged


def sample_total(families: Iterable[Metric], sample_name: str) -> float:
    """The sum of every sample of this name (e.g. all hookrules_request_duration_seconds_count)."""
    return sum(s.value for family in families for s in family.samples if s.name == sample_name)


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: list[Metric]) -> bytes:
    """The Prometheus text format of these families."""
    return generate_latest(_Families(families))
