"""metricsmerge: one /metrics from several workers' texts, for every kind of family prometheus-client writes.

The merged text is read back with prometheus-client's own parser: what Prometheus scrapes must be valid."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hookrules import metrics as _metrics  # noqa: F401  (created series off, as in the server)
from hookrules.metricsmerge import SUMMED, WORKER_LABEL, fold, merge, parse, render, sample_total

#: one family of every type prometheus-client writes; what each is read back as, and whether it is summed
KINDS = {"counter": True, "gauge": False, "histogram": True, "summary": True, "info": False, "stateset": False}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def worker_text(amount: float, label: str = "a") -> str:
    """A worker's /metrics with one family of each kind, two label sets, its numbers scaled by `amount`."""
    registry = CollectorRegistry()
    counter = Counter("t_counter", "c", ["k"], registry=registry)
    gauge = Gauge("t_gauge", "g", ["k"], registry=registry)
    histogram = Histogram("t_histogram", "h", ["k"], buckets=(1.0, 10.0), registry=registry)
    summary = Summary("t_summary", "s", ["k"], registry=registry)
    info = Info("t_info", "i", ["k"], registry=registry)
    enum = Enum("t_stateset", "e", ["k"], states=["on", "off"], registry=registry)
    for k in (label, "b"):
        counter.labels(k).inc(amount)
        gauge.labels(k).set(amount)
        for _ in range(int(amount)):
            histogram.labels(k).observe(5.0)
        summary.labels(k).observe(amount)
        info.labels(k).info({"version": str(amount)})
        enum.labels(k).state("on")
    return generate_latest(registry).decode()


def official(text: str | bytes) -> Samples:
    """Every sample, as prometheus-client's parser reads the text (it raises on invalid text)."""
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def kind_of(sample_name: str) -> str:
    return next(kind for kind in KINDS if sample_name.startswith(f"t_{kind}"))


def test_every_kind_of_family_is_summed_or_kept_per_worker() -> None:
    one, two = worker_text(2), worker_text(3)
    merged = official(render(merge({}, {"1": parse(one), "2": parse(two)})))
    mine, theirs = official(one), official(two)
    seen = set()
    for worker, source in (("1", mine), ("2", theirs)):
        for (name, labels), value in source.items():
            kind = kind_of(name)
            seen.add(kind)
            if KINDS[kind]:
                assert merged[(name, labels)] == mine[(name, labels)] + theirs[(name, labels)], name
            else:
                assert merged[(name, tuple(sorted((*labels, (WORKER_LABEL, worker)))))] == value, name
    assert seen == set(KINDS)
    assert len(merged) == sum(2 if not KINDS[kind_of(name)] else 1 for name, _ in mine)
    assert {f.type for f in parse(one) if f.type in SUMMED} == {"counter", "histogram", "summary"}


def test_a_retired_worker_keeps_every_summed_sample_from_going_back() -> None:
    """Worker 2 dies after its last snapshot; its replacement starts from zero."""
    one, two = parse(worker_text(2)), parse(worker_text(3))
    before = official(render(merge({}, {"1": one, "2": two})))
    retired = fold({}, two)
    fresh = worker_text(0)
    after = official(render(merge(retired, {"1": one, "2": parse(fresh)})))
    for key, value in before.items():
        if KINDS[kind_of(key[0])]:
            assert after[key] == value + official(fresh).get(key, 0.0) >= value, key
    # the pure functions change nothing they are given
    assert fold({}, one) and fold(retired, one) != retired and fold({}, two) == retired
    assert render(merge(retired, {"1": one})) == render(merge(retired, {"1": one}))


def test_a_series_only_the_retired_total_has_stays_in_one_piece() -> None:
    """A histogram series of a label set no live worker has is listed whole, its buckets together."""
    retired = fold({}, parse(worker_text(4, label="gone")))
    text = render(merge(retired, {"1": parse(worker_text(1))})).decode()
    lines = [line for line in text.splitlines() if line.startswith("t_histogram")]
    keys = [line.split('k="')[1].split('"')[0] for line in lines]
    assert keys == sorted(keys, key=keys.index)  # each label set's samples are contiguous
    assert keys.count("gone") == keys.count("a") == keys.count("b") > 0
    assert official(text)  # and valid


def test_the_servers_own_metrics_merge_as_well() -> None:
    """The real registry of hookrules (with its lock-free families) through the same functions."""
    from prometheus_client import REGISTRY

    _metrics.DECISIONS.labels("emqx", "client.authenticate", "allow", "rule").inc()
    _metrics.REQUEST_SECONDS.labels("emqx", "client.authenticate").observe(0.001)
    text = generate_latest(REGISTRY).decode()
    merged = official(render(merge(fold({}, parse(text)), {"1": parse(text), "2": parse(text)})))
    single = official(text)
    for (name, labels), value in single.items():
        if name.startswith("hookrules_decisions") or name.startswith("hookrules_request_duration"):
            assert merged[(name, labels)] == 3 * value, name
    assert sample_total(parse(text), "hookrules_request_duration_seconds_count") >= 1


@pytest.mark.parametrize("text", ["no_family_yet 1\n", "# TYPE x counter\nx_total one\n"])
def test_text_that_is_not_metrics_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_readiness_of_a_group_is_every_workers() -> None:
    from hookrules.metrics import BROKEN_STATES
    from hookrules.supervisor import readiness

    ready = {"status": "ready", "detail": "3 rule file(s) loaded", "broken": {}}
    assert readiness("ready", {"1": ready, "2": ready})[:2] == (True, "2 workers ready; 3 rule file(s) loaded")
    for state in ("starting", "draining"):
        assert readiness(state, {"1": ready})[:2] == (False, state)
    ok, detail, _ = readiness("ready", {"1": ready, "2": {"status": "not ready", "detail": "starting"}})
    assert not ok and detail == "not every worker is ready: worker 2: starting"
    # a hook broken differently in two workers (a save reaching them) is reported in its worst state
    for better in BROKEN_STATES:
        for worse in BROKEN_STATES[:BROKEN_STATES.index(better) + 1]:
            answers = {"1": {**ready, "broken": {"h": better}}, "2": {**ready, "broken": {"h": worse, "g": better}}}
            assert readiness("ready", answers)[2] == {"g": better, "h": worse}
