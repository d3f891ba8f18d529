"""Every Prometheus metric hookrules exports, declared once (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The *_created series double the series count and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Sub-millisecond resolution: a rule run takes microseconds, a gRPC round trip well under 1 ms.
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)

REQUEST_SECONDS = Histogram(
    "hookrules_request_duration_seconds",
    "Time to answer one broker call, from decoded request to encoded reply",
    ["broker", "hook"], buckets=LATENCY_BUCKETS,
)
RULE_SECONDS = Histogram(
    "hookrules_rule_duration_seconds", "Time of one rule run", ["hook"], buckets=LATENCY_BUCKETS,
)
DECISIONS = Counter(
    "hookrules_decisions", "Decisions made, by hook and decision (allow, deny, ignore, rewrite, drop)",
    ["broker", "hook", "decision"],
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
BAD_REQUESTS = Counter(
    "hookrules_bad_requests", "Broker calls that could not be read, by broker and reason", ["broker", "reason"],
)

__all__ = ["Counter", "Histogram", "LATENCY_BUCKETS", "REQUEST_SECONDS", "RULE_SECONDS", "DECISIONS", "RULE_ERRORS",
           "RELOADS", "RULE_INFO", "RULES_LOADED", "LAST_RELOAD", "BAD_REQUESTS"]
