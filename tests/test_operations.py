"""Points 5, 8 and 10 of issue 9, on real servers: a subscription that spends its budget is answered by
the policy without running the rule; failing closed is visible (decision sources, the broken-rule gauge,
/readyz); and the smaller defects (error-log memory, a repeated EMQX warning)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from hookrules.adapters.exhook import ExhookAdapter
from hookrules.engine import MAX_ERROR_KEYS, Engine
from hookrules.events import Client, Event, frozen_map
from hookrules.ruleset import RuleSet, scan

from . import vernemq_examples as spec
from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs, wait_for
from .test_lifecycle import get
from .test_webhooks import call, metric, write_rules

# -- 5. one SUBSCRIBE must not stall everything ----------------------------------------------------

#: an ordinary ACL loop that costs about as much as the whole budget on each run
SLOW_ACL = """n = 0
for i in range(100000):
    n += i
allow()
"""


def test_a_huge_subscription_is_answered_by_the_policy_once_its_budget_is_spent(start_server: Any,
                                                                                tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_subscribe": SLOW_ACL, "auth_on_register": "allow()\n"})
    server: ServerProcess = start_server(rules, "--rule-timeout", "0.05", "--max-steps", "10000000")
    topics = [{"topic": f"fleet/{i}/#", "qos": 1} for i in range(20000)]
    reply = call(server, "auth_on_subscribe", {**spec.EXAMPLES["auth_on_subscribe"], "topics": topics})
    assert reply.status == 200
    assert reply.body == {"result": "ok", "topics": [{"topic": t["topic"], "qos": 128} for t in topics]}
    ran = metric(server, "hookrules_rule_duration_seconds_count", hook="auth_on_subscribe")
    policy = metric(server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_subscribe",
                    decision="deny", source="policy")
    assert 1 <= ran < 100, ran  # the rule ran until the budget was spent, not once per topic
    assert policy == len(topics)  # every topic: the one cut short and those never run
    assert metric(server, "hookrules_rule_errors_total", hook="auth_on_subscribe", kind="deadline") >= 1
    assert wait_for(lambda: "the other" in server.log() and "without running the rule" in server.log())
    # the loop is free again at once: the next call is answered
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "ok"}


def test_a_subscription_within_its_budget_runs_the_rule_on_every_topic(start_server: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_subscribe": 'if topic.startswith("deny/"):\n    deny()\nallow()\n'})
    server: ServerProcess = start_server(rules, "--rule-timeout", "5")
    topics = [{"topic": f"{'deny' if i % 2 else 'ok'}/{i}", "qos": 1} for i in range(200)]
    reply = call(server, "auth_on_subscribe", {**spec.EXAMPLES["auth_on_subscribe"], "topics": topics})
    assert reply.body == {"result": "ok", "topics": [{"topic": t["topic"], "qos": 128 if i % 2 else 1}
                                                     for i, t in enumerate(topics)]}
    assert metric(server, "hookrules_rule_duration_seconds_count", hook="auth_on_subscribe") == 200
    assert metric(server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_subscribe",
                  decision="deny", source="policy") == 0


# -- 8. failing closed is visible ----------------------------------------------------------------------

BROKEN = "allow(\n"  # a syntax error: the file never loads


def _samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(server.metrics_text()) for s in f.samples}


def _broken(server: ServerProcess) -> dict[str, str]:
    return {dict(k[1])["hook"]: dict(k[1])["state"] for k, v in _samples(server).items()
            if k[0] == "hookrules_rule_broken" and v == 1}


def _save(path: Path, text: str) -> None:
    """A save as editors do it: write aside, rename over (the watcher sees one complete file)."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_broken_authentication_rule_is_counted_gauged_and_makes_the_instance_not_ready(
        start_server: Any, tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    rules = write_rules(tmp_path / "rules", {"client.authenticate": BROKEN, "auth_on_publish": BROKEN,
                                             "auth_on_register": "allow()\n"})
    server: ServerProcess = start_server(rules)
    # the answers are the failure policy's, and counted as such
    s = stubs["v3"]
    pb = s.pb2
    with server.channel() as channel:
        reply = s.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "u"), meta=meta(pb)), timeout=10)
    assert (reply.type, reply.bool_result) == (pb.ValuedResponse.STOP_AND_RETURN, False)
    m = _samples(server)
    key = ("hookrules_decisions_total", tuple(sorted({"broker": "emqx", "hook": "client.authenticate",
                                                      "decision": "deny", "source": "policy"}.items())))
    assert m[key] == 1
    # the gauge names both, with a total to alert on
    assert _broken(server) == {"client.authenticate": "never_loaded", "auth_on_publish": "never_loaded"}
    assert m[("hookrules_rules_broken", (("state", "never_loaded"),))] == 2
    # an instance whose authentication refuses every client is not ready, and says why; both ports
    for port in (server.metrics_port, server.http_port):
        status, body = get(port, "/readyz")
        assert (status, body["status"]) == (503, "not ready"), body
        assert body["broken"] == {"auth_on_publish": "never_loaded", "client.authenticate": "never_loaded"}
        assert "client.authenticate never loaded" in body["detail"]
    # fixed: ready again, and the only broken hook left (not an authentication one) is named
    _save(rules / "client.authenticate.star", "allow()\n")
    assert wait_for(lambda: get(server.metrics_port, "/readyz")[0] == 200, 10)
    status, body = get(server.metrics_port, "/readyz")
    assert body["broken"] == {"auth_on_publish": "never_loaded"} and "auth_on_publish" in body["detail"]
    # a save that fails on a loaded rule: an older version serves (stale), the instance stays ready
    _save(rules / "auth_on_register.star", BROKEN)
    assert wait_for(lambda: _broken(server).get("auth_on_register") == "stale", 10)
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "ok"}
    status, body = get(server.metrics_port, "/readyz")
    assert status == 200 and body["broken"]["auth_on_register"] == "stale"
    assert _samples(server)[("hookrules_rules_broken", (("state", "stale"),))] == 1
    _save(rules / "auth_on_register.star", "allow()\n")
    assert wait_for(lambda: "auth_on_register" not in _broken(server), 10)


def test_a_broken_authentication_rule_whose_policy_lets_clients_in_keeps_the_instance_ready(
        start_server: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_register": BROKEN})
    server: ServerProcess = start_server(rules, "--failure-policy", "auth_on_register=ignore")
    status, body = get(server.metrics_port, "/readyz")
    assert (status, body["broken"]) == (200, {"auth_on_register": "never_loaded"})
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "next"}
    assert metric(server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_register",
                  decision="ignore", source="policy") == 1


# -- 10. smaller defects ---------------------------------------------------------------------------------


def _failing_event() -> Event:
    return Event("client.authorize", "emqx", Client(id="c"), frozen_map({"action": "publish", "topic": "t",
                                                                         "result": False}))


def test_the_error_log_forgets_versions_no_longer_served_and_stays_bounded(tmp_path: Path) -> None:
    """Every save of a failing rule added a key to the rate limit's memory, for ever."""
    engine = Engine(RuleSet())
    path = tmp_path / "client.authorize.star"
    for version in range(20):
        path.write_text(f"# v{version}\nx = {{}}['k']\n")
        engine.ruleset, _ = scan(tmp_path, engine.ruleset)
        assert engine.decide(_failing_event()).source == "policy"
    current = engine.ruleset.versions()["client.authorize"]
    assert {k[1] for k in engine._error_log} == {current}
    # many locations in one version: bounded all the same
    lines = "".join(f"if client.id == 'c{i}':\n    x = {{}}['k']\n" for i in range(MAX_ERROR_KEYS + 50))
    path.write_text(lines + "allow()\n")
    engine.ruleset, _ = scan(tmp_path, engine.ruleset)
    for i in range(MAX_ERROR_KEYS + 50):
        event = Event("client.authorize", "emqx", Client(id=f"c{i}"), _failing_event().data)
        assert engine.decide(event).source == "policy"
    assert len(engine._error_log) <= MAX_ERROR_KEYS


def test_the_emqx_hook_list_warning_is_not_repeated_for_a_list_that_did_not_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "client.authenticate.star").write_text("allow()\n")
    loaded, _ = scan(tmp_path, RuleSet())
    adapter = ExhookAdapter(Engine(loaded), versions=("v3",))
    adapter.advertised = adapter.hook_specs(loaded)  # what EMQX loaded
    (tmp_path / "client.authorize.star").write_text("allow()\n")
    added, _ = scan(tmp_path, loaded)
    (tmp_path / "client.authorize.star").write_text("deny()\n")  # another version, the same hook list
    changed_again, _ = scan(tmp_path, added)
    with caplog.at_level(logging.INFO, logger="hookrules.adapters.exhook"):
        adapter.rules_changed(added)
        adapter.rules_changed(changed_again)
        adapter.rules_changed(added)
        adapter.rules_changed(loaded)  # back to what EMQX has
        adapter.rules_changed(loaded)
        adapter.rules_changed(added)  # and away again: worth saying again
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "EMQX hook list changed" in m]
    assert len(warnings) == 2 and all("added: client.authorize" in w for w in warnings), messages
    assert sum("matches again" in m for m in messages) == 1


def test_readiness_asks_every_authentication_hook_under_its_own_policy(tmp_path: Path) -> None:
    """Only auth_on_register.star, broken, with auth_on_register=ignore and auth_on_register_m5=deny: the
    m5 connects were refused while /readyz said ready. Enumerated: every authentication hook, every file
    that can answer it (its own, its twin's, the portable one), every policy pair."""
    from hookrules.hooks import AUTHENTICATION_HOOKS, CHAINS, HOOKS
    from hookrules.server import refusing_authentication

    checked = 0
    for hook in sorted(AUTHENTICATION_HOOKS):
        for file in CHAINS[hook]:  # its own, its twin's, the portable authenticate.star
            directory = tmp_path / f"{hook}-{file}"
            directory.mkdir()
            (directory / f"{file}.star").write_text(BROKEN)
            ruleset, _ = scan(directory, RuleSet())
            for file_policy in ("deny", "ignore", "allow"):
                for hook_policy in (None, "deny", "ignore"):
                    policies = {file: file_policy}
                    if hook_policy is not None and hook != file:
                        policies[hook] = hook_policy  # type: ignore[assignment]
                    engine = Engine(ruleset, policies=policies)  # type: ignore[arg-type]
                    answered = {h for h in AUTHENTICATION_HOOKS if engine.never_loaded(h) is not None}
                    assert answered == {h for h in AUTHENTICATION_HOOKS if file in CHAINS[h]}, (hook, file)
                    refusing = {h for h in answered if engine.policy(h) == "deny"}
                    named = {entry.split(" ")[0] for entry in refusing_authentication(engine)}
                    assert named == refusing, (hook, file, policies, named)
                    # and it is what a call gets
                    for h in answered:
                        decision = engine.decide(Event(h, HOOKS[h].broker, Client(id="c"))).decision
                        assert (decision.kind == "deny") == (h in refusing), (h, policies, decision)
                    checked += 1
    assert checked >= 30


def test_a_broken_file_that_refuses_its_twin_makes_the_instance_not_ready(start_server: Any, tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_register": BROKEN})
    server: ServerProcess = start_server(rules, "--failure-policy", "auth_on_register=ignore",
                                         "--failure-policy", "auth_on_register_m5=deny")
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "next"}
    assert call(server, "auth_on_register_m5", spec.EXAMPLES["auth_on_register_m5"]).body == \
        {"result": {"error": "rule error"}}
    status, body = get(server.metrics_port, "/readyz")
    assert (status, body["status"]) == (503, "not ready"), body
    assert "auth_on_register_m5 (answered by auth_on_register.star) never loaded" in body["detail"], body
    assert body["broken"] == {"auth_on_register": "never_loaded"}


def test_the_emqx_hook_list_is_compared_as_emqx_reads_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """TOPICS = ["a/#"] then ["a/#", "a/#"] logged the same warning again. EMQX reads a HookSpec's topics
    as a set: every reordering and repetition is no change; another filter is."""
    rule = tmp_path / "message.publish.star"
    rule.write_text("allow()\n")
    base, _ = scan(tmp_path, RuleSet())
    adapter = ExhookAdapter(Engine(base), versions=("v3",))
    adapter.advertised = adapter.hook_specs(base)  # EMQX loaded: no message.publish filters
    same = (["a/#", "b/+"], ["b/+", "a/#"], ["a/#", "a/#", "b/+"], ["b/+", "b/+", "a/#", "a/#"])
    ruleset = base
    with caplog.at_level(logging.INFO, logger="hookrules.adapters.exhook"):
        for topics in same:
            rule.write_text(f"TOPICS = {topics!r}\nallow()\n")
            ruleset, _ = scan(tmp_path, ruleset)
            adapter.rules_changed(ruleset)
        warned = [r.getMessage() for r in caplog.records if "EMQX hook list changed" in r.getMessage()]
        assert len(warned) == 1 and "topics changed: message.publish" in warned[0], warned
        rule.write_text('TOPICS = ["a/#", "b/+", "c"]\nallow()\n')  # a filter more: worth saying
        ruleset, _ = scan(tmp_path, ruleset)
        adapter.rules_changed(ruleset)
    warned = [r.getMessage() for r in caplog.records if "EMQX hook list changed" in r.getMessage()]
    assert len(warned) == 2, warned
    assert adapter.hook_specs(ruleset)["message.publish"] == ("a/#", "b/+", "c")  # in the rule's order, once each


def test_a_broken_data_file_shows_on_every_rule_that_reads_data(start_server: Any, tmp_path: Path) -> None:
    """data/users.json = '{"bob": ' at start: every call of a rule reading data failed by policy, yet no gauge
    showed it and /readyz named nothing. A rule that reads `data` is data_missing while a data file never
    loaded, stale while one kept its older contents after a failed save; a rule that reads none is neither."""
    rules = write_rules(tmp_path / "rules", {
        "auth_on_register": "if data.users.get(client.username):\n    allow()\ndeny()\n",
        "auth_on_publish": "allow()\n"})
    (rules / "data").mkdir()
    users = rules / "data" / "users.json"
    users.write_text('{"bob": ')
    server: ServerProcess = start_server(rules)
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": {"error": "rule error"}}
    assert _broken(server) == {"auth_on_register": "data_missing"}
    status, body = get(server.metrics_port, "/readyz")
    assert (status, body["broken"]) == (200, {"auth_on_register": "data_missing"}), body
    assert "users.json" in body["detail"] and "auth_on_register" in body["detail"]
    assert _samples(server)[("hookrules_rules_broken", (("state", "data_missing"),))] == 1
    # fixed: nothing broken
    _save(users, '{"username": 1}')
    assert wait_for(lambda: _broken(server) == {}, 10), _broken(server)
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "ok"}
    # a failed save: the older contents serve, and the rule that reads them is stale
    _save(users, '{"username": ')
    assert wait_for(lambda: _broken(server) == {"auth_on_register": "stale"}, 10), _broken(server)
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": "ok"}
    status, body = get(server.metrics_port, "/readyz")
    assert (status, body["broken"]) == (200, {"auth_on_register": "stale"}), body


@pytest.mark.parametrize("kind", ["dangling-link", "link-outside", "fifo", "directory"])
def test_a_data_file_that_cannot_be_read_shows_like_one_that_does_not_parse(start_server: Any, tmp_path: Path,
                                                                            kind: str) -> None:
    """A data file that cannot be read at all (a link to nothing or outside the rules directory, a FIFO, a
    directory named like one) is as missing to the rules that read `data` as one that does not parse.
    Result: the rule that reads data shows data_missing; the one that reads none shows nothing."""
    rules = write_rules(tmp_path / "rules", {
        "auth_on_register": "if data.users.get(client.username):\n    allow()\ndeny()\n",
        "auth_on_publish": "allow()\n"})
    (rules / "data").mkdir()
    users = rules / "data" / "users.json"
    if kind == "dangling-link":
        users.symlink_to(tmp_path / "nowhere.json")
    elif kind == "link-outside":
        outside = tmp_path / "outside.json"
        outside.write_text('{"u": 1}')
        users.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(users)
    else:
        users.mkdir()
    server: ServerProcess = start_server(rules)
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {"result": {"error": "rule error"}}
    assert _broken(server) == {"auth_on_register": "data_missing"}
