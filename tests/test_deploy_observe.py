"""The Grafana dashboard and the Prometheus alerts of deploy/, checked by the real tools and a real scrape.

- promtool (Debian's, from `apt-get download prometheus` + `dpkg -x`: see system_packages) checks the alert
  rules, runs their unit tests, and parses every dashboard query (as recording rules) and a real /metrics;
- every alert has a unit test where it fires and one where it must not;
- the PrometheusRule carries exactly the groups of the alerts file;
- every metric name, label and label value the dashboard and the alerts name is in a real scrape of hookrules
  after real calls of each kind (one process and --workers 2): a renamed metric or a misspelt label breaks a
  panel or silences an alert without any error, so only a scrape can tell.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from . import broker_calls
from .emqx_session import run_session
from .support import BUNDLED_RULES, ROOT, ServerProcess, Stubs, wait_for
from .system_packages import require_extracted_tool

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "hookrules.json"
ALERTS = DEPLOY / "prometheus" / "hookrules-alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "hookrules-alerts.test.yaml"
PROMETHEUS_RULE = DEPLOY / "kubernetes" / "prometheusrule.yaml"
PROMTOOL_HINT = ("promtool is missing: `apt-get download prometheus && dpkg -x prometheus_*.deb DIR` and put "
                 "DIR/usr/bin on PATH (CI=true as root does this by itself)")

#: labels Prometheus adds to every series of a target: not in a scrape
TARGET_LABELS = frozenset({"job", "instance"})


@pytest.fixture(scope="module")
def promtool() -> Path:
    return require_extracted_tool("promtool", "prometheus", "usr/bin/promtool", PROMTOOL_HINT)


def run_promtool(promtool: Path, *args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    res = subprocess.run([str(promtool), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"promtool {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}"
    return res.stdout + res.stderr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def panel_queries(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p.get("targets", [])]


def variable_queries(dash: dict[str, Any]) -> list[str]:
    return [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            for v in dash["templating"]["list"] if v["type"] == "query"]


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    """Every PromQL query the dashboard runs: its panels' targets and its query variables'."""
    return panel_queries(dash) + variable_queries(dash)


# -- the alerts: promtool, unit tests, conventions --------------------------------------------------------------


def test_the_alert_rules_pass_promtool_check(promtool: Path) -> None:
    out = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_the_alert_unit_tests_pass(promtool: Path) -> None:
    out = run_promtool(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert "SUCCESS" in out


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"
    assert (fires | silent) - names == set(), "tests of alerts that do not exist"


def test_every_alert_follows_the_conventions() -> None:
    rules = alert_rules()
    assert rules and all("alert" in rule for rule in rules), "only alerting rules here"
    assert len({rule["alert"] for rule in rules}) == len(rules), "one rule per alert name"
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Hookrules(?:[A-Z][a-z0-9]*)+", name), f"{name}: CamelCase, starting Hookrules"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert set(rule["annotations"]) >= {"summary", "description"}, name
        assert re.fullmatch(r"\d+[mh]", rule.get("for", "")), f"{name}: a `for:` of minutes or hours"


def test_the_prometheusrule_carries_exactly_the_alert_groups() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert resource["metadata"]["name"] == "hookrules"
    assert resource["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        f"{PROMETHEUS_RULE.relative_to(ROOT)} must carry the groups of {ALERTS.relative_to(ROOT)}: copy them "
        "over, indented under spec:")


# -- the dashboard: shape, and every query parsed by promtool ---------------------------------------------------


def test_the_dashboard_has_a_fixed_uid_and_a_prometheus_datasource_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "hookrules"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_dashboard_selector_follows_the_job_and_instance_variables() -> None:
    """A panel that forgets `$instance` mixes every instance in silently."""
    for query in panel_queries(dashboard()):
        refs = list(metric_refs(query))
        assert refs, query
        for ref in refs:
            matchers = {(m.label, m.op, m.value) for m in ref.matchers}
            assert {("job", "=~", "$job"), ("instance", "=~", "$instance")} <= matchers, (ref.name, query)


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    queries = "\n".join(dashboard_queries(dashboard()))
    wanted = {
        "calls per second by broker and hook": r"sum by \(broker, hook\) \(rate\(hookrules_request_duration_seconds_count",
        "decision mix": r"sum by \(decision, source\) \(rate\(hookrules_decisions_total",
        "failure-policy answers": r'hookrules_decisions_total\{source="policy"',
        "p50 latency": r"histogram_quantile\(0\.5, sum by \([^)]*\) \(rate\(hookrules_request_duration_seconds_bucket",
        "p99 latency": r"histogram_quantile\(0\.99, sum by \([^)]*\) \(rate\(hookrules_request_duration_seconds_bucket",
        "rule run time": r"hookrules_rule_duration_seconds_bucket",
        "rule errors by kind": r"sum by \(hook, kind\) \(rate\(hookrules_rule_errors_total",
        "reloads": r"hookrules_reloads_total",
        "broken hooks": r"hookrules_rule_broken\{",
        "load shedding": r'hookrules_bad_requests_total\{reason="overloaded"',
        "bad requests": r'hookrules_bad_requests_total\{reason!="overloaded"',
        "per-worker calls": r"hookrules_worker_calls_total",
        "workers up": r"hookrules_worker_up",
        "worker restarts": r"hookrules_worker_restarts_total",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, queries)]
    assert missing == []


def test_every_dashboard_query_parses(promtool: Path, tmp_path: Path) -> None:
    """Each query, its Grafana variables given values, as a recording rule: promtool parses its PromQL."""
    values = {"$__rate_interval": "5m", "$__interval": "1m", "$job": "hookrules", "$instance": ".*"}
    rules = []
    for i, query in enumerate(dashboard_queries(dashboard())):
        if query.startswith("label_values("):
            query = query[len("label_values("):query.rindex(",")]  # its metric selector
        for var, value in values.items():
            query = query.replace(var, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query{i}", "expr": query})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(promtool, "check", "rules", str(path))


# -- what the queries name ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class MetricRef:
    name: str
    matchers: tuple[Matcher, ...]


_NAME = re.compile(r"(?<![\w:])((?:hookrules|process|python)_[A-Za-z0-9_]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def metric_refs(query: str) -> Iterator[MetricRef]:
    """Each metric a PromQL query reads, with its label matchers (hookrules', and the process_/python_
    metrics prometheus-client adds; `up` is Prometheus' own)."""
    for m in _NAME.finditer(query):
        if _inside_string(query, m.start()):
            continue
        yield MetricRef(m[1], tuple(Matcher(*x) for x in _MATCHER.findall(m[2] or "")))


def _inside_string(query: str, pos: int) -> bool:
    return any(s.start() < pos < s.end() for s in _STRING.finditer(query))


def grouping_labels(query: str) -> set[str]:
    """Labels a query groups or joins by: by (...), without (...), on (...), ignoring (...), group_left (...)."""
    return {label.strip() for group in _GROUPING.findall(query) for label in group.split(",") if label.strip()}


def test_the_query_reader_finds_names_matchers_and_groupings() -> None:
    """The reader the scrape test relies on, on the forms the files use."""
    query = ('histogram_quantile(0.99, sum by (job, instance, broker, hook, le) (rate('
             'hookrules_request_duration_seconds_bucket{broker=~"emqx|vernemq", hook!="x"}[5m]))) > 2.5 '
             'or absent(up{job="hookrules"}) or max by (worker) (process_open_fds) / on (instance) '
             'group_left (state) hookrules_rules_broken{state="hookrules_in_a_string"}')
    refs = list(metric_refs(query))
    assert [r.name for r in refs] == ["hookrules_request_duration_seconds_bucket", "process_open_fds",
                                      "hookrules_rules_broken"]
    assert refs[0].matchers == (Matcher("broker", "=~", "emqx|vernemq"), Matcher("hook", "!=", "x"))
    assert refs[2].matchers == (Matcher("state", "=", "hookrules_in_a_string"),)
    assert grouping_labels(query) == {"job", "instance", "broker", "hook", "le", "worker", "state"}


def named_queries() -> list[tuple[str, str]]:
    """(where, query) for every query of the dashboard and the alerts."""
    out = [(f"dashboard query {i}", q) for i, q in enumerate(dashboard_queries(dashboard()))]
    out += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return out


# -- a real scrape after real calls of each kind ------------------------------------------------------------------

#: rules added to the bundled ones so that every series the dashboard and alerts read exists
EXTRA_RULES = {
    # a run that raises: kind="runtime", answered by the failure policy (source="policy")
    "auth_on_publish.star": "n = int(client.username)\nallow()\n",
    # a run over its steps: kind="deadline"
    "on_unsubscribe.star": "n = 0\nfor i in range(100000):\n    for j in range(10):\n        n += j\nignore()\n",
    # a file that never loads: kind="load", reloads result="error", hookrules_rule_broken state="never_loaded"
    "message.delivered.star": "allow(\n",
    # slow enough (a few ms) that calls arriving together are shed past --max-concurrent-calls 1
    "auth_on_subscribe.star": "n = 0\nfor i in range(20000):\n    n += i\nallow()\n",
}


@dataclass
class Scrape:
    """The series of one /metrics text: each sample name's label names and the values each label took."""

    labels: dict[str, dict[str, set[str]]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        labels: dict[str, dict[str, set[str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                seen = labels.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    seen.setdefault(label, set()).add(value)
        return cls(labels)


def shed_some_calls(server: ServerProcess) -> int:
    """Slow webhook calls sent together until some are refused as overloaded; how many were."""
    statuses: list[int] = []

    def one() -> None:
        try:
            broker_calls.vernemq_subscribe(server, "shed", "t/1")
            statuses.append(200)
        except urllib.error.HTTPError as err:
            statuses.append(err.code)

    for _ in range(30):  # bounded: each round sends 8 calls at once
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if 503 in statuses:
            break
    return statuses.count(503)


def drive_every_kind_of_call(server: ServerProcess, stubs: Stubs) -> None:
    """EMQX (a whole session: authenticate, authorize, publish, notifications), VerneMQ and RabbitMQ calls, a
    rule error of each kind, a bad request, load shedding and a failed reload."""
    with server.channel() as channel:
        stub = stubs.stub(channel)
        run_session(stubs, stub, "m-1", "gooduser", [("t/demo", b"x")])
        run_session(stubs, stub, "m-2", "baduser", [])
    broker_calls.vernemq_register(server, "v-1", "gooduser", "secret")
    broker_calls.vernemq_publish(server, "v-1", "t/1")  # raises in the rule: the policy answers
    broker_calls.vernemq(server, "on_unsubscribe", {"client_id": "v-1", "mountpoint": "", "username": "u",
                                                         "topics": ["t/1"]})
    broker_calls.rabbitmq_user(server, "r-1", "gooduser", "secret")
    broker_calls.rabbitmq_topic(server, "r-1", "publish", "t.1")
    request = urllib.request.Request(server.url, data=b"{not json", headers={"vernemq-hook": "auth_on_register"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=10)
    assert shed_some_calls(server) > 0
    # a broken save of a rule that serves: reloads result="error", the hook stale
    (server.rules / "authorize.star").write_text("allow(\n")


def scrape_when(server: ServerProcess, ready: Callable[[Scrape], bool]) -> tuple[str, Scrape]:
    """The /metrics text once `ready` holds of it (the reload of a save takes about a second)."""
    last: list[tuple[str, Scrape]] = []

    def probe() -> bool:
        text = server.metrics_text()
        last[:] = [(text, Scrape.parse(text))]
        return ready(last[0][1])

    wait_for(probe, timeout=30, interval=0.2)
    return last[0]


def _stale_counted(scrape: Scrape) -> bool:
    return "stale" in scrape.labels.get("hookrules_rule_broken", {}).get("state", set())


def _matches(matcher: Matcher, values: set[str]) -> bool:
    """Whether a matcher's value is one the scrape shows: `=` exactly; `=~` each alternative of a list of
    words (`a|b`), else some value; `!=` and `!~` need only the label."""
    if matcher.op == "=":
        return matcher.value in values
    if matcher.op == "=~":
        if re.fullmatch(r"\w+(?:\|\w+)*", matcher.value):
            return set(matcher.value.split("|")) <= values
        return any(re.fullmatch(matcher.value, v) for v in values)
    return True


@pytest.mark.parametrize("workers", [1, 2])
def test_every_metric_label_and_value_the_dashboard_and_alerts_name_is_in_a_real_scrape(
        workers: int, start_server: Any, tmp_path: Path, stubs: dict[str, Stubs],
        request: pytest.FixtureRequest) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for source in BUNDLED_RULES.glob("*.star"):
        (rules / source.name).write_text(source.read_text())
    for name, text in EXTRA_RULES.items():
        (rules / name).write_text(text)
    server: ServerProcess = start_server(rules, "--workers", str(workers), "--max-concurrent-calls", "1",
                                         "--decision-log", str(tmp_path / "decisions.jsonl"))
    drive_every_kind_of_call(server, stubs["v3"])
    text, scrape = scrape_when(server, _stale_counted)
    assert _stale_counted(scrape), "the broken save never showed as stale"

    problems = []
    for where, query in named_queries():
        refs = list(metric_refs(query))
        for ref in refs:
            if workers == 1 and ref.name.startswith("hookrules_worker_"):
                continue  # the supervisor's own: only with --workers
            seen = scrape.labels.get(ref.name)
            if seen is None:
                problems.append(f"{where}: no series {ref.name}")
                continue
            for matcher in ref.matchers:
                if matcher.label in TARGET_LABELS:
                    continue
                if matcher.label not in seen:
                    problems.append(f"{where}: {ref.name} has no label {matcher.label}")
                elif not _matches(matcher, seen[matcher.label]):
                    problems.append(f"{where}: {ref.name}{{{matcher.label}{matcher.op}\"{matcher.value}\"}} matches "
                                    f"no series (values seen: {sorted(seen[matcher.label])})")
        for label in grouping_labels(query) - TARGET_LABELS - ({"worker"} if workers == 1 else set()):
            if not any(label in scrape.labels.get(ref.name, {}) for ref in refs):
                problems.append(f"{where}: groups by {label}, which none of its metrics has")
    assert problems == []

    # the request histogram reaches past every latency threshold the alerts compare its quantiles with
    bounds = {float(le) for le in scrape.labels["hookrules_request_duration_seconds_bucket"]["le"] if le != "+Inf"}
    for rule in alert_rules():
        if "hookrules_request_duration_seconds_bucket" in rule["expr"]:
            for threshold in re.findall(r"\)\s*>\s*([\d.]+)", rule["expr"]):
                assert float(threshold) <= max(bounds), (rule["alert"], threshold, sorted(bounds))

    # and the exposition itself passes promtool's lint (asked for last: without promtool, outside CI, the
    # checks above still run)
    run_promtool(request.getfixturevalue("promtool"), "check", "metrics", stdin=text)
