"""Portable rules: authenticate.star and authorize.star answer every broker's connect and topic checks
that have no file of their own, and a broker's own file wins (hooks.CHAINS)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hookrules.adapters.rabbitmq import event_for
from hookrules.decisions import Allow
from hookrules.eventspec import SpecError, build_event
from hookrules.hooks import CHAINS, CHANNELS, COMMON_NAMES, HOOKS, PORTABLE_HOOKS
from hookrules.modifiers import decision_problem

from . import broker_calls as call
from .adapter_events import broker_events, channel_events
from .support import ROOT, ServerProcess, Stubs, wait_for

AUTHENTICATE = """\
# one policy for every broker: who may connect
USERS = {"alice": "wonderland", "bob": "builder"}
if USERS.get(client.username) == client.password and client.id.startswith(client.username + "-"):
    allow()
else:
    deny("bad credentials")
"""

AUTHORIZE = """\
# a client publishes under its own tree and subscribes to its own commands
mine = "devices/" + client.id + "/"
if action == "publish" and topic.startswith(mine) and "+" not in topic and "#" not in topic:
    allow()
elif action == "subscribe" and topic_match(mine + "#", topic):
    allow()
else:
    deny()
"""


def test_every_broker_hook_event_carries_what_every_file_that_may_answer_it_reads() -> None:
    """Enumerated: each adapter's event for each hook, on each channel it comes over, against the names of
    every file in its chain, so a portable rule never meets a NameError on one broker (or one of EMQX's two
    channels) that it does not meet on another."""
    events = channel_events()
    broker_hooks = [h for h, info in HOOKS.items() if info.broker != "portable"]
    assert set(broker_hooks) <= {e.hook for e in events}
    # every channel of every broker is among the events (EMQX's http: client.authenticate and client.authorize)
    assert {(e.broker, e.channel) for e in events} == {(b, c) for b, chans in CHANNELS.items() for c in chans}
    checked = 0
    for event in events:
        assert event.channel in CHANNELS[event.broker], event
        names = set(event.names())
        for source in CHAINS[event.hook]:
            wanted = set(HOOKS[source].all_names)
            assert wanted <= names, (event.hook, event.channel, source, wanted - names)
            checked += 1
    assert checked > len(broker_hooks)  # the chains were walked, not only the hooks' own files


def test_every_file_in_a_chain_decides_only_what_the_hook_it_answers_can_carry() -> None:
    """Enumerated: decisions, rewrites, cache and tags. What a file's rule may call is set by the file's
    hook; what reaches the broker is checked against the event's hook (modifiers.decision_problem)."""
    for hook, chain in CHAINS.items():
        info = HOOKS[hook]
        for source in chain[1:]:
            fallback = HOOKS[source]
            assert fallback.decisions <= info.decisions, (hook, source)
            assert fallback.rewrites <= info.rewrites, (hook, source)
            assert not fallback.tagged or info.tagged, (hook, source)
            assert not fallback.cacheable or info.cacheable, (hook, source)
        assert (decision_problem(hook, Allow(cache=5)) is None) == info.cacheable, hook
        assert (decision_problem(hook, Allow(tags=("monitoring",))) is None) == info.tagged, hook
    assert {h.name for h in PORTABLE_HOOKS} == {"authenticate", "authorize"}
    assert all(CHAINS[h.name] == (h.name,) for h in PORTABLE_HOOKS)


def test_a_portable_hook_is_no_event_of_its_own() -> None:
    with pytest.raises(SpecError, match="name the broker hook its file answers, one of client.authenticate"):
        build_event("authenticate", {"client": {"username": "u"}})
    event = build_event("auth_on_publish", {"client": {"id": "c"}, "message": {"topic": "a/b", "qos": 1}})
    assert (event.data["action"], event.data["topic"], event.data["qos"]) == ("publish", "a/b", 1)
    assert build_event("client.authorize", {"action": "subscribe", "topic": "t"}).data["qos"] is None
    assert set(COMMON_NAMES) == {"hook", "broker", "client", "channel"}


WIRE = {
    "rabbitmq.user": {"username": "u", "password": "p", "vhost": "/", "client_id": "c"},
    "rabbitmq.vhost": {"username": "u", "vhost": "/", "ip": "10.0.0.7", "tags": "management ops", "client_id": "c"},
    "rabbitmq.resource": {"username": "u", "vhost": "/", "resource": "queue", "name": "q", "permission": "read",
                          "tags": "", "client_id": "c"},
    "rabbitmq.topic": {"username": "u", "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "read",
                       "tags": "", "routing_key": "a.*.#", "variable_map.client_id": "c"},
}
HAND = {
    "rabbitmq.user": {"client": {"id": "c", "username": "u", "password": "p"}},
    "rabbitmq.vhost": {"client": {"id": "c", "username": "u"}, "ip": "10.0.0.7", "tags": ["management", "ops"]},
    "rabbitmq.resource": {"client": {"id": "c", "username": "u"}, "resource": "queue", "name": "q",
                          "permission": "read"},
    "rabbitmq.topic": {"client": {"id": "c", "username": "u"}, "action": "subscribe", "topic": "a/+/#"},
}


@pytest.mark.parametrize("hook", sorted(WIRE))
def test_a_hand_written_rabbitmq_event_is_the_event_rabbitmq_sends(hook: str) -> None:
    """Test tables and eval build RabbitMQ events with the adapter's own mapping: the same event as the
    wire's, whatever subset of what the rule reads the author wrote (topic and action, or routing key and
    permission), and a contradiction between the two is an error, never a case that cannot happen."""
    wire = event_for(hook, WIRE[hook])
    assert build_event(hook, HAND[hook]) == wire
    if hook == "rabbitmq.topic":
        assert build_event(hook, {"client": {"id": "c", "username": "u"}, "permission": "read",
                                  "routing_key": "a.*.#"}) == wire
        with pytest.raises(SpecError, match="'topic' 'a/b' is not what RabbitMQ's fields make of it"):
            build_event(hook, {"permission": "read", "routing_key": "a.*.#", "topic": "a/b"})
        with pytest.raises(SpecError, match="permission must be write or read"):
            build_event(hook, {"action": "configure", "topic": "a"})
    if hook != "rabbitmq.user":  # the user check sends no tags: it answers them
        with pytest.raises(SpecError, match="'tags' is a list"):
            build_event(hook, {**HAND[hook], "tags": "management"})


@pytest.fixture
def portable_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "authenticate.star").write_text(AUTHENTICATE)
    (rules / "authorize.star").write_text(AUTHORIZE)
    return rules


def test_two_portable_files_serve_all_three_brokers(portable_dir: Path, stubs: dict[str, Stubs],
                                                    start_server: Callable[..., ServerProcess],
                                                    tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    server = start_server(portable_dir, "--decision-log", str(log_path))
    for version in ("v2", "v3"):
        s = stubs[version]
        assert call.emqx_authenticate(server, s, "alice-1", "alice", "wonderland") is True
        assert call.emqx_authenticate(server, s, "alice-1", "alice", "wrong") is False
        assert call.emqx_authorize(server, s, "alice-1", "publish", "devices/alice-1/temp") is True
        assert call.emqx_authorize(server, s, "alice-1", "publish", "devices/bob-1/temp") is False
        assert call.emqx_authorize(server, s, "alice-1", "subscribe", "devices/alice-1/#") is True
        with server.channel() as channel:
            pb = s.pb2
            reply = s.stub(channel).OnProviderLoaded(pb.ProviderLoadedRequest(
                broker=pb.BrokerInfo(version="5.9.0", sysdescr="EMQX"), meta=call.meta(pb)), timeout=10)
        assert [h.name for h in reply.hooks] == ["client.authenticate", "client.authorize"]
    assert call.vernemq_register(server, "bob-7", "bob", "builder") == {"result": "ok"}
    assert call.vernemq_register(server, "bob-7", "bob", "nope") == {"result": {"error": "bad credentials"}}
    assert call.vernemq_publish(server, "bob-7", "devices/bob-7/x") == {"result": "ok"}
    assert call.vernemq_publish(server, "bob-7", "devices/alice-1/x") == {"result": {"error": "not_allowed"}}
    assert call.vernemq(server, "auth_on_publish_m5", {"client_id": "bob-7", "mountpoint": "", "username": "u",
                                                       "topic": "devices/bob-7/x", "qos": 1, "payload": "p",
                                                       "retain": False})["result"] == "ok"
    assert call.vernemq_subscribe(server, "bob-7", "devices/bob-7/cmd")["result"] == "ok"
    assert call.vernemq_subscribe(server, "bob-7", "devices/alice-1/cmd")["topics"][0]["qos"] == 128
    assert call.rabbitmq_user(server, "alice-2", "alice", "wonderland") == "allow"
    assert call.rabbitmq_user(server, "alice-2", "alice", "builder") == "deny"
    assert call.rabbitmq_topic(server, "alice-2", "publish", "devices.alice-2.temp") == "allow"
    assert call.rabbitmq_topic(server, "alice-2", "publish", "devices.bob-7.temp") == "deny"
    assert call.rabbitmq_topic(server, "alice-2", "subscribe", "devices.alice-2.#") == "allow"
    # which file answered: metrics and the decision log say so
    text = server.metrics_text()
    for hook, rule in (("client.authenticate", "authenticate"), ("auth_on_register_m5", "authenticate"),
                       ("rabbitmq.user", "authenticate"), ("auth_on_publish", "authorize"),
                       ("rabbitmq.topic", "authorize"), ("client.authorize", "authorize")):
        assert f'hookrules_hook_rule{{hook="{hook}",rule="{rule}.star"}} 1.0' in text, hook
    assert 'hookrules_hook_rule{hook="rabbitmq.vhost"' not in text
    assert 'hookrules_decisions_total{broker="rabbitmq",decision="allow",hook="rabbitmq.user",source="rule"} 1.0' in text
    entries = wait_for(lambda: [json.loads(line) for line in log_path.read_text().splitlines()]
                       if log_path.exists() and log_path.read_text().count("\n") >= 22 else None)
    assert entries, "the decision log has every call"
    assert {(e["broker"], e["hook"], e["rule"]) for e in entries} >= {
        ("emqx", "client.authenticate", "authenticate.star"), ("vernemq", "auth_on_register", "authenticate.star"),
        ("rabbitmq", "rabbitmq.user", "authenticate.star"), ("rabbitmq", "rabbitmq.topic", "authorize.star"),
        ("vernemq", "auth_on_subscribe", "authorize.star")}


def test_a_brokers_own_file_wins_and_its_removal_hands_back(portable_dir: Path, stubs: dict[str, Stubs],
                                                           start_server: Callable[..., ServerProcess]) -> None:
    (portable_dir / "auth_on_register.star").write_text('deny("vernemq has its own rule")\n')
    server = start_server(portable_dir)
    assert call.vernemq_register(server, "bob-7", "bob", "builder") == {"result": {"error": "vernemq has its own rule"}}
    # the _m5 hook walks the whole chain: its twin's file comes before the portable one
    assert call.vernemq(server, "auth_on_register_m5", {"client_id": "bob-7", "username": "bob", "password": "builder",
                                                        "mountpoint": "", "peer_addr": "127.0.0.1", "peer_port": 1,
                                                        "clean_start": True})["result"] != "ok"
    assert call.emqx_authenticate(server, stubs["v3"], "bob-7", "bob", "builder") is True
    (portable_dir / "auth_on_register.star").unlink()
    assert wait_for(lambda: call.vernemq_register(server, "bob-7", "bob", "builder") == {"result": "ok"})
    assert wait_for(lambda: "hook auth_on_register is now answered by authenticate.star" in server.log())


def test_portable_auth_on_publish_cannot_rewrite(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "authorize.star").write_text('rewrite(topic="x")\n')
    done = subprocess.run([sys.executable, "-m", "hookrules", "check", str(rules)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 1
    assert "rewrite() is not available in authorize" in done.stderr


def test_check_test_and_eval_know_which_file_answers(portable_dir: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hookrules", *args], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)

    (portable_dir / "auth_on_subscribe.star").write_text("allow()\n")
    checked = run("check", str(portable_dir))
    assert checked.returncode == 0, checked.stderr
    assert ("authenticate.star answers client.authenticate, auth_on_register, auth_on_register_m5, rabbitmq.user"
            in checked.stdout)
    assert "authorize.star answers client.authorize, auth_on_publish, auth_on_publish_m5, rabbitmq.topic" in checked.stdout
    assert "auth_on_subscribe.star answers auth_on_subscribe, auth_on_subscribe_m5" in checked.stdout
    evaluated = run("eval", "--rules", str(portable_dir), "rabbitmq.user", "--event",
                    '{"client": {"id": "alice-1", "username": "alice", "password": "wonderland"}}')
    assert evaluated.returncode == 0, evaluated.stderr
    assert "decision: allow" in evaluated.stdout
    assert f"rule: {portable_dir / 'authenticate.star'}" in evaluated.stdout
    raw = run("eval", "--rules", str(portable_dir), "rabbitmq.topic", "--raw", "--explain", "--event",
              json.dumps({"username": "u", "vhost": "/", "resource": "topic", "name": "amq.topic",
                          "permission": "read", "routing_key": "devices.c-1.*", "variable_map.client_id": "c-1"}))
    assert "decision: allow" in raw.stdout, raw.stdout + raw.stderr
    assert "authorize.star:" in raw.stdout  # --explain shows the portable file's lines
    refused = run("eval", "--rules", str(portable_dir), "authorize", "--event", "{}")
    assert refused.returncode == 2 and "name the broker hook its file answers" in refused.stdout
    tests = portable_dir / "tests"
    tests.mkdir()
    (tests / "all.yaml").write_text("""\
- name: EMQX lets alice in
  hook: client.authenticate
  event: {client: {id: alice-1, username: alice, password: wonderland}}
  expect: {decision: allow}
- name: RabbitMQ refuses a wrong password
  hook: rabbitmq.user
  event: {client: {id: alice-1, username: alice, password: nope}}
  expect: {decision: deny, reason: bad credentials}
- name: VerneMQ publishes under the client's own tree
  hook: auth_on_publish_m5
  event: {client: {id: c-1}, message: {topic: devices/c-1/t}}
  expect: {decision: allow}
- name: RabbitMQ subscribes with a wildcard
  hook: rabbitmq.topic
  event: {client: {id: c-1}, action: subscribe, topic: devices/c-1/+, permission: read, routing_key: devices.c-1.*}
  expect: {decision: allow}
""")
    tested = run("test", str(portable_dir), "--coverage")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "4 passed" in tested.stdout
    assert "authenticate.star" in tested.stdout and "authorize.star" in tested.stdout  # coverage of both files
    (tests / "wrong.yaml").write_text("""\
- name: a failing case says which file answered
  hook: auth_on_register_m5
  event: {client: {id: alice-1, username: alice, password: nope}}
  expect: {decision: allow}
""")
    failed = run("test", str(portable_dir))
    assert failed.returncode == 1
    assert "answered by authenticate.star" in failed.stdout, failed.stdout


def test_portable_failure_policy_applies_to_the_hooks_it_answers(tmp_path: Path,
                                                                 start_server: Callable[..., ServerProcess]) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "authorize.star").write_text("x = 1 / 0\n")
    server = start_server(rules, "--failure-policy", "authorize=allow", "--failure-policy", "rabbitmq.topic=deny")
    assert call.vernemq_publish(server, "c", "a/b") == {"result": "ok"}  # the portable file's policy
    assert call.rabbitmq_topic(server, "c", "publish", "a.b") == "deny"  # the hook's own, nearer, wins
    assert "ZeroDivisionError" in wait_for(lambda: server.log())
