"""Metrics over HTTP, parsed as Prometheus parses them, after real calls."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .emqx_session import client_info, meta, run_session
from .support import ServerProcess, Stubs, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(s: dict[Any, float], name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


def test_latency_decisions_and_versions_are_exported(start_server: Any, rules_dir: Any, stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(rules_dir)
    s = stubs["v3"]
    with server.channel() as channel:
        stub = s.stub(channel)
        run_session(s, stub, "m-1", "gooduser", [("t/demo", b"x"), ("sensors/1", b"")])
        run_session(s, stub, "m-2", "baduser", [])
    text = server.metrics_text()
    m = samples(text)
    # latency histograms per hook with sub-millisecond buckets
    for name in ("hookrules_request_duration_seconds_bucket", "hookrules_rule_duration_seconds_bucket"):
        assert any(k[0] == name and dict(k[1]).get("le") == "0.0001" for k in m), name
    assert value(m, "hookrules_request_duration_seconds_count", broker="emqx", hook="client.authenticate") == 2
    assert value(m, "hookrules_rule_duration_seconds_count", hook="client.authenticate") == 2
    # decisions per hook, decision and source: the rules' own
    decided = {"source": "rule"}
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="client.authenticate", decision="allow", **decided) == 1
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="client.authenticate", decision="deny", **decided) == 1
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="message.publish", decision="rewrite", **decided) == 1
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="message.publish", decision="drop", **decided) == 1
    # notification hooks without a rule are counted as ignore, by default
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="client.connected", decision="ignore",
                 source="default") == 2
    assert {dict(k[1])["source"] for k in m if k[0] == "hookrules_decisions_total"} <= {"rule", "policy", "default"}
    # nothing is broken
    assert not any(k[0] == "hookrules_rule_broken" for k in m)
    assert value(m, "hookrules_rules_broken", state="never_loaded") == value(m, "hookrules_rules_broken", state="stale") == 0
    # loaded versions and reloads
    infos = {dict(k[1])["hook"]: dict(k[1])["version"] for k, v in m.items() if k[0] == "hookrules_rule_info" and v == 1}
    assert set(infos) == {"authenticate", "authorize", "message.publish"}
    assert all(len(v) == 12 for v in infos.values())
    assert value(m, "hookrules_reloads_total", hook="authenticate", result="loaded") == 1
    assert value(m, "hookrules_rules_loaded") == 3


def test_runtime_errors_are_counted_logged_and_answered_by_policy(start_server: Any, tmp_path: Any,
                                                                  stubs: dict[str, Stubs]) -> None:
    rules = tmp_path / "broken"
    rules.mkdir()
    (rules / "client.authenticate.star").write_text('# fails on purpose\nlimits = {}\nif limits["x"] > 1:\n    allow()\n')
    (rules / "client.authorize.star").write_text('n = int(client.username)\nallow()\n')
    server: ServerProcess = start_server(rules, "--failure-policy", "client.authorize=ignore")
    s = stubs["v2"]
    pb = s.pb2
    vr = pb.ValuedResponse
    with server.channel() as channel:
        stub = s.stub(channel)
        authn = stub.OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "u"), meta=meta(pb)), timeout=10)
        authz = stub.OnClientAuthorize(pb.ClientAuthorizeRequest(
            clientinfo=client_info(pb, "c", "not-a-number"), topic="a", meta=meta(pb)), timeout=10)
    assert (authn.type, authn.bool_result) == (vr.STOP_AND_RETURN, False)  # default policy for authn: deny
    assert authz.type == vr.IGNORE  # the configured policy
    assert wait_for(lambda: "client.authenticate.star:3:4: runtime_error: KeyError" in server.log())
    assert "answered deny by failure policy" in server.log()
    assert "client.authorize.star:1:5: runtime_error: ValueError" in server.log()
    m = samples(server.metrics_text())
    assert value(m, "hookrules_rule_errors_total", hook="client.authenticate", kind="runtime") == 1
    assert value(m, "hookrules_rule_errors_total", hook="client.authorize", kind="runtime") == 1
    # a failure-policy answer is told from a rule's own decision
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="client.authenticate", decision="deny",
                 source="policy") == 1
    assert value(m, "hookrules_decisions_total", broker="emqx", hook="client.authenticate", decision="deny",
                 source="rule") == 0


# -- the lock-free families of the hot path export what prometheus-client's own would ------------------


def test_loop_histogram_and_counter_export_exactly_what_prometheus_client_would() -> None:
    """Same observations, one registry each: the scraped text must be identical, edges included
    (a value equal to a bucket bound counts in that bucket, as Prometheus' `le` says)."""
    from hookrules.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("t_seconds", "doc", ["hook"], buckets=LATENCY_BUCKETS, registry=theirs)
    reference_count = Counter("t_calls", "doc", ["hook", "decision"], registry=theirs)
    fast = LoopHistogram("t_seconds", "doc", ["hook"], buckets=LATENCY_BUCKETS, registry=ours)
    fast_count = LoopCounter("t_calls", "doc", ["hook", "decision"], registry=ours)
    observations = [0.0, 1e-6, 25e-6, 25.000001e-6, 3e-4, 0.1, 1.0, 1.5, 60.0]
    for i, amount in enumerate(observations):
        hook = ("a", "b")[i % 2]
        reference.labels(hook).observe(amount)
        fast.labels(hook).observe(amount)
        reference_count.labels(hook, "allow").inc()
        fast_count.labels(hook, "allow").inc()
    assert samples(generate_latest(ours).decode()) == samples(generate_latest(theirs).decode())
    assert value(samples(generate_latest(ours).decode()), "t_seconds_bucket", hook="a", le="2.5e-05") == 2  # 0 and 25e-6
    with pytest.raises(ValueError):
        fast.labels("a", "extra")
