"""metricsmerge: one /metrics from several workers' texts, for every kind of family prometheus-client writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary, generate_latest
from prometheus_client.metrics_core import Metric

from hookrules import metrics as _metrics  # noqa: F401  (created series off, as in the server)
from hookrules.metricsmerge import SUMMED, WORKER_LABEL, Totals, fold, merge, parse, render

#: one family of every type prometheus-client writes, each with a label
KINDS = ("counter", "gauge", "histogram", "summary", "info", "stateset")


def worker_text(amount: float) -> str:
    """A worker's /metrics with one family of each kind, its numbers scaled by `amount`."""
    registry = CollectorRegistry()
    Counter("t_counter", "c", ["k"], registry=registry).labels("a").inc(amount)
    Gauge("t_gauge", "g", ["k"], registry=registry).labels("a").set(amount)
    h = Histogram("t_histogram", "h", ["k"], buckets=(1.0, 10.0), registry=registry)
    for _ in range(int(amount)):
        h.labels("a").observe(5.0)
    s = Summary("t_summary", "s", ["k"], registry=registry)
    s.labels("a").observe(amount)
    Info("t_info", "i", ["k"], registry=registry).labels("a").info({"version": str(amount)})
    Enum("t_stateset", "e", ["k"], states=["on", "off"], registry=registry).labels("a").state("on")
    return generate_latest(registry).decode()


def samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_every_kind_of_family_is_summed_or_kept_per_worker() -> None:
    one, two = parse(worker_text(2)), parse(worker_text(3))
    assert {f.type for f in one} >= {"counter", "gauge", "histogram", "summary"}  # info/stateset read as gauges
    merged = merge(Totals(), {"1": one, "2": two})
    by_name = {f.name: f for f in merged}
    for family in one:
        out = by_name[family.name]
        if family.type in SUMMED:
            for s in out.samples:
                assert WORKER_LABEL not in s.labels
                mine = samples([family])[(s.name, tuple(sorted(s.labels.items())))]
                theirs = samples([f for f in two if f.name == family.name])[(s.name, tuple(sorted(s.labels.items())))]
                assert s.value == mine + theirs, s
        else:
            assert {s.labels[WORKER_LABEL] for s in out.samples} == {"1", "2"}, family.name
            assert len(out.samples) == 2 * len(family.samples)
    for kind in KINDS:
        assert any(f.name.startswith(f"t_{kind}") for f in merged), kind


def test_a_retired_worker_keeps_every_summed_sample_from_going_back() -> None:
    """Worker 2 dies after its last snapshot; its replacement starts from zero."""
    one, two = parse(worker_text(2)), parse(worker_text(3))
    before = samples(merge(Totals(), {"1": one, "2": two}))
    retired = fold(Totals(), two)
    after = samples(merge(retired, {"1": one, "2": parse(worker_text(0))}))
    for key, value in before.items():
        if not any(key[0].startswith(f"t_{kind}") for kind in ("gauge", "info", "stateset")):
            assert after[key] >= value, key
    # the pure functions change nothing they are given
    assert fold(Totals(), one).values and not Totals().values
    assert samples(merge(Totals(), {"1": one})) == samples(merge(Totals(), {"1": one}))


def test_the_merge_renders_as_prometheus_text_that_reads_back_the_same() -> None:
    merged = merge(fold(Totals(), parse(worker_text(1))), {"1": parse(worker_text(2)), "2": parse(worker_text(3))})
    again = parse(render(merged).decode())
    assert samples(again) == samples(merged)


def test_a_series_only_the_retired_total_has_stays_in_one_piece() -> None:
    """A histogram series of a label set no live worker has is listed whole, its buckets together."""
    retired = fold(Totals(), parse(worker_text(4).replace('k="a"', 'k="gone"')))
    merged = merge(retired, {"1": parse(worker_text(1))})
    histogram = next(f for f in merged if f.name == "t_histogram")
    keys = [s.labels["k"] for s in histogram.samples]
    assert keys == sorted(keys, key=keys.index)  # each label set's samples are contiguous
    assert keys.count("gone") == keys.count("a") > 0
