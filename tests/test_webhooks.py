"""The VerneMQ side, end to end: a real `hookrules serve`, real HTTP requests on loopback, the spec's payloads.

Requests go through http.client (aiohttp for the keep-alive test) to the server's webhook port, as
vmq_webhooks' hackney pool sends them: POST, a JSON body and the `vernemq-hook` header. The replies
are checked against the shapes VerneMQ reads (../shared/reference/vernemq-webhooks.md, section 1.4-1.5).
Waits are bounded polls (support.wait_for); nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookrules.hooks import HOOKS, VERNEMQ_HOOKS

from . import vernemq_examples as spec
from .emqx_session import client_info, message, meta
from .support import ServerProcess, Stubs, wait_for

TIMEOUT = 10.0
#: the spec's payloads are plain text: VerneMQ's base64encode = off, said by the endpoint URL
PLAIN = "?base64=off"
SUBSCRIBE = ("auth_on_subscribe", "auth_on_subscribe_m5")
RULE_ERROR = {"result": {"error": "rule error"}}
NEXT = {"result": "next"}
OK = {"result": "ok"}


# -- the client -----------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    @property
    def body(self) -> Any:
        """The JSON reply, or None when it is not JSON (the assertion then shows `raw`)."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            return json.loads(self.raw)
        except ValueError:
            return None

    @property
    def cache_control(self) -> str | None:
        return self.headers.get("cache-control")


def _read(resp: http.client.HTTPResponse) -> Reply:
    raw = resp.read()
    return Reply(resp.status, raw, {k.lower(): v for k, v in resp.getheaders()})


def _request(conn: http.client.HTTPConnection, hook: str | None, body: Any, query: str = "", *,
             method: str = "POST", path: str = "/") -> Reply:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if hook is not None:
        headers["vernemq-hook"] = hook
    conn.request(method, path + query, body=data, headers=headers)
    return _read(conn.getresponse())


def call(server: ServerProcess, hook: str | None, body: Any, query: str = "", *, method: str = "POST",
         path: str = "/") -> Reply:
    """One webhook call on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        return _request(conn, hook, body, query, method=method, path=path)
    finally:
        conn.close()


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def with_id(body: dict[str, Any], client_id: str) -> dict[str, Any]:
    return {**body, "client_id": client_id}


def refused_all(hook: str, body: dict[str, Any]) -> dict[str, Any]:
    """Our reply to a subscribe whose every topic the rule denied: the list with each one refused."""
    m5 = hook.endswith("_m5")
    topics = [{"topic": t["topic"], "qos": 135 if m5 else 128} for t in body["topics"]]
    return {"result": "ok", "modifiers": {"topics": topics}} if m5 else {"result": "ok", "topics": topics}


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One series of /metrics, parsed as Prometheus parses it; 0 when it is not there yet."""
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


# -- servers --------------------------------------------------------------------------------------

def write_rules(directory: Path, rules: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for hook, text in rules.items():
        (directory / f"{hook}.star").write_text(text)
    return directory


def _module_server(factory: pytest.TempPathFactory, name: str, rules: dict[str, str], *flags: str
                   ) -> Iterator[ServerProcess]:
    tmp = factory.mktemp(name)
    server = ServerProcess(write_rules(tmp / "rules", rules), *flags, log_path=tmp / "server.log")
    try:
        yield server
    finally:
        server.stop()


# -- 1. every example of the spec -----------------------------------------------------------------

DECIDE = """# the client id's suffix picks the decision, so one example serves them all
if client.id.endswith("-deny"):
    deny("denied in " + hook)
if client.id.endswith("-ignore"):
    ignore()
allow()
"""
ALLOW_OR_IGNORE = """# on_deliver and on_unsubscribe cannot deny
if client.id.endswith("-ignore"):
    ignore()
allow()
"""
NOTIFY = 'if client.id.endswith("-ignore"):\n    ignore()\nignore()\n'


def _spec_rule(hook: str) -> str:
    info = HOOKS[hook]
    if not info.can_decide:
        return NOTIFY
    return DECIDE if "deny" in info.decisions else ALLOW_OR_IGNORE


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A rule for every VerneMQ hook."""
    yield from _module_server(tmp_path_factory, "spec", {hook: _spec_rule(hook) for hook in spec.EXAMPLES})


@pytest.fixture(scope="module")
def norule_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No VerneMQ rule at all: only an EMQX one."""
    yield from _module_server(tmp_path_factory, "norule", {"client.authenticate": "allow()\n"})


def test_the_examples_cover_every_vernemq_hook() -> None:
    assert set(spec.EXAMPLES) == {h.name for h in VERNEMQ_HOOKS}


@pytest.mark.parametrize("hook", list(spec.EXAMPLES))
def test_spec_example_gets_the_reply_shape_vernemq_reads(spec_server: ServerProcess, hook: str) -> None:
    """The spec's own payload (plain payloads, so ?base64=off) under a rule that allows, ignores or denies.

    Result: allow -> {"result":"ok"}, ignore -> {"result":"next"}, deny(reason) -> {"result":{"error":reason}}
    (subscribe hooks: every topic refused), notification hooks -> {} whatever the rule does; never a
    cache-control header unless the rule asks for one.
    """
    example = spec.EXAMPLES[hook]
    info = HOOKS[hook]
    allowed = call(spec_server, hook, example, PLAIN)
    assert (allowed.status, allowed.body) == (200, OK if info.can_decide else {}), allowed.raw
    ignored = call(spec_server, hook, with_id(example, example["client_id"] + "-ignore"), PLAIN)
    assert (ignored.status, ignored.body) == (200, NEXT if info.can_decide else {}), ignored.raw
    denied = call(spec_server, hook, with_id(example, example["client_id"] + "-deny"), PLAIN)
    if "deny" not in info.decisions:
        expected = OK if info.can_decide else {}
    elif hook in SUBSCRIBE:
        expected = refused_all(hook, example)
    else:
        expected = {"result": {"error": f"denied in {hook}"}}
    assert (denied.status, denied.body) == (200, expected), denied.raw
    for reply in (allowed, ignored, denied):
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.cache_control is None


@pytest.mark.parametrize("hook", list(spec.EXAMPLES))
def test_hook_without_a_rule_file_answers_as_ignore_would(norule_server: ServerProcess, hook: str) -> None:
    example = spec.EXAMPLES[hook]
    expected = NEXT if HOOKS[hook].can_decide else {}
    plain = call(norule_server, hook, example, PLAIN)
    assert (plain.status, plain.body, plain.cache_control) == (200, expected, None), plain.raw
    if "payload" in example:  # the same call as VerneMQ sends it by default
        encoded = call(norule_server, hook, {**example, "payload": b64(example["payload"])})
        assert (encoded.status, encoded.body) == (200, expected), encoded.raw


# -- 1 (base64) and 2: what a rule reads ----------------------------------------------------------

NAMES_RULES = {
    "auth_on_register": (
        'deny(f"id={client.id} user={repr(client.username)} password={repr(client.password)} '
        'host={client.peerhost} port={client.peerport} mountpoint={repr(client.mountpoint)} '
        'clean_session={request[\'clean_session\']} broker={broker} hook={hook}")\n'),
    "auth_on_register_m5": (
        'deny(f"clean_start={request[\'clean_start\']} props={sorted(properties.items())} '
        'user_props={sorted(user_properties.items())}")\n'),
    "auth_on_publish": (
        'deny(f"topic={topic} qos={qos} payload={repr(message.payload)} message={message.topic},{message.qos},'
        '{message.retain} client={client.id},{client.username},{repr(client.mountpoint)} broker={broker}")\n'),
    "auth_on_publish_m5": (
        'deny(f"user_props={sorted(message.user_properties.items())} '
        'props={sorted(message.properties.items())} payload={repr(message.payload)}")\n'),
    "on_deliver_m5": (
        'rewrite(payload=f"user_props={sorted(message.user_properties.items())} '
        'props={sorted(message.properties.items())} payload={repr(message.payload)}")\n'),
    "on_deliver": 'rewrite(payload=f"{message.topic} {repr(message.payload)} qos={qos} retain={message.retain}")\n',
    "auth_on_subscribe": (
        '# allowed only when the rule sees the expected topic and qos for this client\n'
        'if f"{client.id} {client.username} {repr(client.mountpoint)} {topic} {qos} {broker}" in [\n'
        '        "clientid username \'\' a/b 1 vernemq", "clientid username \'\' c/d 2 vernemq"]:\n'
        '    allow()\n'
        'deny("unexpected")\n'),
    "on_unsubscribe": 'rewrite(topics=["unsub/" + t for t in topics])\n',
    "on_auth_m5": (
        'if properties["p_authentication_method"] == "AUTH_METHOD" and properties["p_authentication_data"] == b"AUTH_DATA0":\n'
        '    allow(modifiers={"properties": {"p_authentication_data": b"AUTH_DATA1",\n'
        '                                    "p_authentication_method": "AUTH_METHOD"}, "reason_code": 0})\n'
        'deny(f"unexpected {sorted(properties.items())}")\n'),
}


@pytest.fixture(scope="module")
def names_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Rules that report what they read in their deny reason (or rewritten payload)."""
    yield from _module_server(tmp_path_factory, "names", NAMES_RULES)


def test_register_rule_reads_the_normalized_client_and_the_raw_request(names_server: ServerProcess) -> None:
    reply = call(names_server, "auth_on_register", spec.EXAMPLES["auth_on_register"])
    assert reply.body == {"result": {"error": (
        "id=clientid user='username' password='password' host=127.0.0.1 port=8888 mountpoint='' "
        "clean_session=False broker=vernemq hook=auth_on_register")}}, reply.raw
    # VerneMQ sends a missing username or password as null
    anonymous = call(names_server, "auth_on_register", {**spec.EXAMPLES["auth_on_register"], "username": None,
                                                         "password": None, "mountpoint": "mp1",
                                                         "clean_session": True})
    assert anonymous.body == {"result": {"error": (
        "id=clientid user='' password='' host=127.0.0.1 port=8888 mountpoint='mp1' "
        "clean_session=True broker=vernemq hook=auth_on_register")}}, anonymous.raw


def test_register_m5_rule_reads_properties_and_decoded_user_properties(names_server: ServerProcess) -> None:
    body = {**spec.EXAMPLES["auth_on_register_m5"], "properties": {
        "p_user_property": [{"key": b64("region"), "val": b64("eu")}, {"key": b64("tier"), "val": b64("gold")}],
        "p_session_expiry_interval": 60}}
    reply = call(names_server, "auth_on_register_m5", body)
    assert reply.body == {"result": {"error": (
        "clean_start=True props=[('p_session_expiry_interval', 60)] "
        "user_props=[('region', 'eu'), ('tier', 'gold')]")}}, reply.raw


def test_publish_rule_reads_message_topic_qos_and_decoded_payload(names_server: ServerProcess) -> None:
    body = {**spec.EXAMPLES["auth_on_publish"], "payload": b64(b"\x00\xffbin"), "qos": 2, "retain": True,
            "mountpoint": "mp"}
    reply = call(names_server, "auth_on_publish", body)
    assert reply.body == {"result": {"error": (
        "topic=a/b qos=2 payload=b'\\x00\\xffbin' message=a/b,2,True client=clientid,username,'mp' "
        "broker=vernemq")}}, reply.raw


@pytest.mark.parametrize("hook", ["auth_on_publish_m5", "on_deliver_m5"])
def test_m5_message_rule_reads_user_properties_and_properties(names_server: ServerProcess, hook: str) -> None:
    """message.user_properties come from properties.p_user_property (base64 key/val), message.properties
    holds the rest. (auth_on_publish_m5 denies with the text, on_deliver_m5 rewrites the payload to it.)"""
    body = {**spec.EXAMPLES[hook], "payload": b64("hello"), "properties": {
        "p_user_property": [{"key": b64("tenant"), "val": b64("acme")}], "p_content_type": "json"}}
    reply = call(names_server, hook, body)
    text = "user_props=[('tenant', 'acme')] props=[('p_content_type', 'json')] payload=b'hello'"
    expected = ({"result": {"error": text}} if hook == "auth_on_publish_m5"
                else {"result": "ok", "modifiers": {"payload": b64(text)}})
    assert (reply.status, reply.body) == (200, expected), reply.raw


def test_subscribe_rule_reads_each_topic_and_its_qos(names_server: ServerProcess) -> None:
    example = spec.EXAMPLES["auth_on_subscribe"]
    assert call(names_server, "auth_on_subscribe", example).body == OK
    swapped = {**example, "topics": [{"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 1}]}
    reply = call(names_server, "auth_on_subscribe", swapped)
    assert reply.body == {"result": "ok", "topics": [{"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 128}]}


def test_unsubscribe_rule_reads_the_topic_list(names_server: ServerProcess) -> None:
    reply = call(names_server, "on_unsubscribe", spec.EXAMPLES["on_unsubscribe"])
    assert reply.body == {"result": "ok", "topics": ["unsub/a/b", "unsub/c/d"]}, reply.raw


def test_on_auth_m5_spec_example_round_trip(names_server: ServerProcess) -> None:
    """Authentication data comes base64 and goes back base64: the spec's request gets the spec's reply."""
    reply = call(names_server, "on_auth_m5", spec.EXAMPLES["on_auth_m5"])
    assert (reply.status, reply.body) == (200, spec.ON_AUTH_M5_REPLY), reply.raw


def test_payload_is_base64_by_default_and_plain_when_the_url_says_so(names_server: ServerProcess) -> None:
    example = spec.EXAMPLES["auth_on_publish"]  # payload "hello"
    expected = {"result": {"error": ("topic=a/b qos=1 payload=b'hello' message=a/b,1,False "
                                     "client=clientid,username,'' broker=vernemq")}}
    encoded = call(names_server, "auth_on_publish", {**example, "payload": b64("hello")})
    assert encoded.body == expected, encoded.raw
    plain = call(names_server, "auth_on_publish", example, PLAIN)
    assert plain.body == expected, plain.raw
    # any path, query included, as a VerneMQ endpoint URL may have
    assert call(names_server, "auth_on_publish", example, "?x=1&base64=off", path="/vmq/hooks").body == expected
    # the spec's plain payload where base64 is expected: a clear 400, not a garbled payload
    wrong = call(names_server, "auth_on_publish", example)
    assert (wrong.status, wrong.body) == (400, {"error": "field 'payload' is not valid base64"}), wrong.raw
    # a rewritten payload goes back the way it came
    deliver = spec.EXAMPLES["on_deliver"]
    text = "a/b b'hello' qos=0 retain=False"
    assert call(names_server, "on_deliver", deliver, PLAIN).body == {"result": "ok", "modifiers": {"payload": text}}
    assert (call(names_server, "on_deliver", {**deliver, "payload": b64("hello")}).body
            == {"result": "ok", "modifiers": {"payload": b64(text)}})


def test_payload_is_plain_with_the_flag_off_unless_the_url_says_base64(start_server: Callable[..., ServerProcess],
                                                                       tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_publish": 'deny(repr(message.payload))\n'})
    server = start_server(rules, "--vernemq-base64", "off")
    example = spec.EXAMPLES["auth_on_publish"]
    assert call(server, "auth_on_publish", example).body == {"result": {"error": "b'hello'"}}
    assert call(server, "auth_on_publish", {**example, "payload": "aGVsbG8="}).body == {"result": {"error": "b'aGVsbG8='"}}
    assert (call(server, "auth_on_publish", {**example, "payload": "aGVsbG8="}, "?base64=on").body
            == {"result": {"error": "b'hello'"}})
    bad = call(server, "auth_on_publish", example, "?base64=maybe")
    assert (bad.status, bad.body) == (400, {"error": "query parameter base64 must be on or off, not 'maybe'"})


# -- 3. rewrites ----------------------------------------------------------------------------------

PUBLISH_REWRITE = """if client.id == "binary":
    rewrite(payload=b"\\xff\\xfe")
if client.id == "topic-only":
    rewrite(topic="rewritten/topic")
rewrite(topic="rewritten/topic", payload="rewritten payload", qos=2, retain=True)
"""
DELIVER_REWRITE = """if client.id == "binary":
    rewrite(payload=b"\\xff\\xfe")
rewrite(topic="rewritten/topic", payload="rewritten payload")
"""
UNSUBSCRIBE_REWRITE = 'rewrite(topics=["rewritten/topic"])\n'


@pytest.fixture(scope="module")
def rewrite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _module_server(tmp_path_factory, "rewrite", {
        "auth_on_publish": PUBLISH_REWRITE, "auth_on_publish_m5": PUBLISH_REWRITE,
        "on_deliver": DELIVER_REWRITE, "on_deliver_m5": DELIVER_REWRITE,
        "on_unsubscribe": UNSUBSCRIBE_REWRITE, "on_unsubscribe_m5": UNSUBSCRIBE_REWRITE})


@pytest.mark.parametrize("hook", ["auth_on_publish", "auth_on_publish_m5"])
def test_publish_rewrite_sends_exactly_the_rewritten_fields(rewrite_server: ServerProcess, hook: str) -> None:
    example = spec.EXAMPLES[hook]
    plain = call(rewrite_server, hook, example, PLAIN)
    assert (plain.status, plain.body) == (200, spec.AUTH_ON_PUBLISH_REWRITE), plain.raw
    assert list(plain.body["modifiers"]) == ["topic", "payload", "qos", "retain"]
    encoded = call(rewrite_server, hook, {**example, "payload": b64(example["payload"])})
    assert encoded.body == {"result": "ok", "modifiers": {**spec.AUTH_ON_PUBLISH_REWRITE["modifiers"],
                                                          "payload": b64("rewritten payload")}}, encoded.raw
    topic_only = call(rewrite_server, hook, with_id(example, "topic-only"), PLAIN)
    assert topic_only.body == spec.AUTH_ON_PUBLISH_M5_REWRITE
    binary = call(rewrite_server, hook, with_id({**example, "payload": b64("x")}, "binary"))
    assert binary.body == {"result": "ok", "modifiers": {"payload": b64(b"\xff\xfe")}}
    for reply in (plain, encoded, topic_only, binary):
        assert reply.cache_control is None


@pytest.mark.parametrize("hook", ["on_deliver", "on_deliver_m5"])
def test_deliver_rewrite_sends_topic_and_payload(rewrite_server: ServerProcess, hook: str) -> None:
    example = spec.EXAMPLES[hook]
    plain = call(rewrite_server, hook, example, PLAIN)
    assert (plain.status, plain.body) == (200, spec.ON_DELIVER_REWRITE), plain.raw
    encoded = call(rewrite_server, hook, {**example, "payload": b64(example["payload"])})
    assert encoded.body == {"result": "ok", "modifiers": {"topic": "rewritten/topic",
                                                          "payload": b64("rewritten payload")}}


def test_unsubscribe_rewrite_is_top_level_in_v3_and_a_modifier_in_m5(rewrite_server: ServerProcess) -> None:
    v3 = call(rewrite_server, "on_unsubscribe", spec.EXAMPLES["on_unsubscribe"])
    assert (v3.status, v3.body) == (200, spec.ON_UNSUBSCRIBE_REWRITE), v3.raw
    m5 = call(rewrite_server, "on_unsubscribe_m5", spec.EXAMPLES["on_unsubscribe_m5"])
    assert (m5.status, m5.body) == (200, spec.ON_UNSUBSCRIBE_M5_REWRITE), m5.raw


def test_binary_rewrite_without_base64_is_answered_by_the_failure_policy(rewrite_server: ServerProcess) -> None:
    """A payload that is not UTF-8 cannot go back as plain JSON text: a rule error, never a garbled reply."""
    before = metric(rewrite_server, "hookrules_rule_errors_total", hook="auth_on_publish", kind="runtime")
    publish = call(rewrite_server, "auth_on_publish", with_id(spec.EXAMPLES["auth_on_publish"], "binary"), PLAIN)
    assert (publish.status, publish.body) == (200, RULE_ERROR), publish.raw
    deliver = call(rewrite_server, "on_deliver", with_id(spec.EXAMPLES["on_deliver"], "binary"), PLAIN)
    assert (deliver.status, deliver.body) == (200, NEXT), deliver.raw
    assert metric(rewrite_server, "hookrules_rule_errors_total", hook="auth_on_publish", kind="runtime") == before + 1
    # refused when the rule decides (the endpoint's plain payloads are known then), a rule error like any other
    assert wait_for(lambda: "runtime_error: rewrite() cannot be sent to vernemq" in rewrite_server.log())
    assert metric(rewrite_server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_publish",
                  decision="deny", source="policy") >= 1
    assert "needs base64" in rewrite_server.log()


def test_rewrite_of_a_field_the_hook_cannot_change_is_refused_when_the_file_loads(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {
        "on_deliver": "rewrite(qos=1)\n",
        "on_deliver_m5": 'rewrite(topic="t", retain=True)\n',
        "auth_on_publish": 'rewrite(topics=["a/b"])\n',
    })
    server = start_server(rules)
    log = server.log()
    assert "on_deliver.star:1:13: check_error: rewrite() in on_deliver has no 'qos'" in log
    assert "on_deliver_m5.star:1:27: check_error: rewrite() in on_deliver_m5 has no 'retain'" in log
    assert "auth_on_publish.star:1:16: check_error: rewrite() in auth_on_publish has no 'topics'" in log
    assert "hook on_deliver answers by its failure policy (ignore) until this is fixed" in log
    # the hooks answer by their failure policy: ignore for on_deliver, deny for auth_on_publish
    assert call(server, "on_deliver", spec.EXAMPLES["on_deliver"], PLAIN).body == NEXT
    assert call(server, "on_deliver_m5", spec.EXAMPLES["on_deliver_m5"], PLAIN).body == NEXT
    assert call(server, "auth_on_publish", spec.EXAMPLES["auth_on_publish"], PLAIN).body == RULE_ERROR


# -- 4. subscribe: one run per topic --------------------------------------------------------------

SUBSCRIBE_RULE = """if topic.startswith("deny/"):
    deny("no")
if topic.startswith("ignore/"):
    ignore()
if qos == 2:
    deny("qos 2 is not for " + client.id)
allow()
"""


@pytest.fixture(scope="module")
def subscribe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _module_server(tmp_path_factory, "subscribe",
                              {"auth_on_subscribe": SUBSCRIBE_RULE, "auth_on_subscribe_m5": SUBSCRIBE_RULE})


def _subscribe(hook: str, *topics: dict[str, Any]) -> dict[str, Any]:
    return {"client_id": "c1", "mountpoint": "", "username": "u", "topics": list(topics),
            **({"properties": {}} if hook.endswith("_m5") else {})}


@pytest.mark.parametrize("hook", SUBSCRIBE)
def test_subscribe_all_allowed_is_plain_ok_and_runs_the_rule_once_per_topic(subscribe_server: ServerProcess,
                                                                            hook: str) -> None:
    before = metric(subscribe_server, "hookrules_decisions_total", broker="vernemq", hook=hook, decision="allow",
                    source="rule")
    reply = call(subscribe_server, hook, _subscribe(hook, {"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 0},
                                                    {"topic": "e/#", "qos": 1}))
    assert (reply.status, reply.body, reply.cache_control) == (200, OK, None), reply.raw
    after = metric(subscribe_server, "hookrules_decisions_total", broker="vernemq", hook=hook, decision="allow",
                   source="rule")
    assert after - before == 3


def test_subscribe_v3_one_denied_sends_the_whole_list_with_128(subscribe_server: ServerProcess) -> None:
    reply = call(subscribe_server, "auth_on_subscribe", _subscribe(
        "auth_on_subscribe", {"topic": "a/b", "qos": 1}, {"topic": "deny/x", "qos": 0}, {"topic": "c/d", "qos": 0},
        {"topic": "q/2", "qos": 2}))
    assert reply.body == {"result": "ok", "topics": [
        {"topic": "a/b", "qos": 1}, {"topic": "deny/x", "qos": 128}, {"topic": "c/d", "qos": 0},
        {"topic": "q/2", "qos": 128}]}, reply.raw


def test_subscribe_m5_one_denied_sends_modifiers_with_135_and_keeps_options(subscribe_server: ServerProcess) -> None:
    hook = "auth_on_subscribe_m5"
    reply = call(subscribe_server, hook, _subscribe(
        hook,
        {"topic": "a/b", "qos": 1, "no_local": True, "rap": False, "retain_handling": "dont_send"},
        {"topic": "deny/x", "qos": 0, "no_local": False, "rap": True, "retain_handling": "send_retain"},
        {"topic": "c/d", "qos": 0, "no_local": False, "rap": True, "retain_handling": "send_if_new_sub"}))
    assert reply.body == {"result": "ok", "modifiers": {"topics": [
        {"topic": "a/b", "qos": 1, "no_local": True, "rap": False, "retain_handling": "dont_send"},
        {"topic": "deny/x", "qos": 135},
        {"topic": "c/d", "qos": 0, "no_local": False, "rap": True, "retain_handling": "send_if_new_sub"}]}}, reply.raw
    assert "topics" not in reply.body


@pytest.mark.parametrize("hook", SUBSCRIBE)
def test_subscribe_all_ignored_is_next(subscribe_server: ServerProcess, hook: str) -> None:
    reply = call(subscribe_server, hook, _subscribe(hook, {"topic": "ignore/a", "qos": 1}, {"topic": "ignore/b", "qos": 0}))
    assert (reply.status, reply.body) == (200, NEXT), reply.raw


@pytest.mark.parametrize("hook", SUBSCRIBE)
def test_subscribe_topic_ignored_while_another_is_decided_is_refused(subscribe_server: ServerProcess,
                                                                    hook: str) -> None:
    reply = call(subscribe_server, hook, _subscribe(hook, {"topic": "ignore/a", "qos": 1}, {"topic": "a/b", "qos": 1}))
    if hook.endswith("_m5"):
        expected = {"result": "ok", "modifiers": {"topics": [{"topic": "ignore/a", "qos": 135},
                                                             {"topic": "a/b", "qos": 1}]}}
    else:
        expected = {"result": "ok", "topics": [{"topic": "ignore/a", "qos": 128}, {"topic": "a/b", "qos": 1}]}
    assert reply.body == expected, reply.raw


# -- 5. modifiers ---------------------------------------------------------------------------------

REGISTER_MODIFIERS = """if client.id == "spec":
    allow(modifiers={"max_message_size": 65535, "max_inflight_messages": 10000, "retry_interval": 20000})
if client.id == "unknown-key":
    allow(modifiers={"max_message_sizes": 65535})
if client.id == "wrong-type":
    allow(modifiers={"max_message_size": "64k"})
if client.id == "alone":
    allow(modifiers={"client_id": "other"})
allow(modifiers={})
"""
REGISTER_M5_MODIFIERS = """allow(modifiers={"properties": {"p_user_property": {"region": "eu", "tier": "gold"},
                                "p_session_expiry_interval": 3600},
                 "upgrade_qos": True})
"""


def test_register_modifiers_are_sent_exactly_and_bad_ones_are_rule_errors(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_register": REGISTER_MODIFIERS,
                                             "auth_on_register_m5": REGISTER_M5_MODIFIERS})
    server = start_server(rules)
    example = spec.EXAMPLES["auth_on_register"]
    ok = call(server, "auth_on_register", with_id(example, "spec"))
    assert (ok.status, ok.body) == (200, spec.AUTH_ON_REGISTER_MODIFIERS), ok.raw
    # no modifiers: no "modifiers" key at all (VerneMQ v3 hooks choke on an empty object)
    assert call(server, "auth_on_register", example).body == OK
    for client_id in ("unknown-key", "wrong-type", "alone"):
        reply = call(server, "auth_on_register", with_id(example, client_id))
        assert (reply.status, reply.body) == (200, RULE_ERROR), (client_id, reply.raw)
    assert metric(server, "hookrules_rule_errors_total", hook="auth_on_register", kind="runtime") == 3
    assert metric(server, "hookrules_decisions_total", broker="vernemq", hook="auth_on_register", decision="deny",
                  source="policy") == 3
    path = rules / "auth_on_register.star"
    assert wait_for(lambda: "must be set together" in server.log())
    log = server.log()
    assert (f"{path}:4:5: runtime_error: ValueError: VerneMQ does not know the modifier 'max_message_sizes'; "
            "it accepts: allow_register") in log
    assert f"{path}:6:5: runtime_error: ValueError: modifier 'max_message_size' must be a number, not '64k'" in log
    assert f"{path}:8:5: runtime_error: ValueError: modifiers 'mountpoint' and 'client_id' must be set together" in log
    assert "(hook auth_on_register, answered deny by failure policy)" in log

    m5 = call(server, "auth_on_register_m5", spec.EXAMPLES["auth_on_register_m5"])
    assert (m5.status, m5.body) == (200, {"result": "ok", "modifiers": {
        "properties": {"p_user_property": [{"key": b64("region"), "val": b64("eu")},
                                           {"key": b64("tier"), "val": b64("gold")}],
                       "p_session_expiry_interval": 3600},
        "upgrade_qos": True}}), m5.raw
    # VerneMQ reads a user property by position: key first
    assert all(list(p) == ["key", "val"] for p in m5.body["modifiers"]["properties"]["p_user_property"])


# -- 6. cache -------------------------------------------------------------------------------------

CACHE_RULES = {
    "auth_on_register": """if client.username == "baduser":
    deny("user is banned")
if client.username == "nobody":
    ignore()
allow(cache=30)
""",
    "auth_on_publish": """if topic == "denied":
    deny("no")
if topic == "ignored":
    ignore()
if topic == "dropped":
    drop("empty")
if topic == "uncached":
    allow()
allow(cache=30)
""",
    "auth_on_subscribe": """if topic == "denied":
    deny("no")
if topic == "short":
    allow(cache=10)
if topic == "uncached":
    allow()
allow(cache=30)
""",
    "on_deliver": "allow(cache=30)\n",
    "client.authenticate": "allow(cache=30)\n",
}


def test_allow_cache_sets_max_age_only_on_ok(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(write_rules(tmp_path / "rules", CACHE_RULES))
    register = spec.EXAMPLES["auth_on_register"]
    for hook, body in (("auth_on_register", register), ("auth_on_register_m5", spec.EXAMPLES["auth_on_register_m5"])):
        reply = call(server, hook, body)
        assert (reply.status, reply.body, reply.cache_control) == (200, OK, "max-age=30"), (hook, reply.raw)
    for username, expected in (("baduser", {"result": {"error": "user is banned"}}), ("nobody", NEXT)):
        reply = call(server, "auth_on_register", {**register, "username": username})
        assert (reply.body, reply.cache_control) == (expected, None), reply.raw

    publish = spec.EXAMPLES["auth_on_publish"]
    for hook in ("auth_on_publish", "auth_on_publish_m5"):
        reply = call(server, hook, {**publish, "properties": {}} if hook.endswith("_m5") else publish, PLAIN)
        assert (reply.body, reply.cache_control) == (OK, "max-age=30"), (hook, reply.raw)
    for topic, expected in (("denied", {"result": {"error": "no"}}), ("ignored", NEXT),
                            ("dropped", {"result": {"error": "empty"}}), ("uncached", OK)):
        reply = call(server, "auth_on_publish", {**publish, "topic": topic}, PLAIN)
        assert (reply.body, reply.cache_control) == (expected, None), (topic, reply.raw)

    def subscribe(*names: str) -> Reply:
        return call(server, "auth_on_subscribe", _subscribe("auth_on_subscribe", *({"topic": n, "qos": 1} for n in names)))

    assert (subscribe("a/b").body, subscribe("a/b").cache_control) == (OK, "max-age=30")
    assert (subscribe("a/b", "short").body, subscribe("a/b", "short").cache_control) == (OK, "max-age=10")
    assert (subscribe("a/b", "uncached").body, subscribe("a/b", "uncached").cache_control) == (OK, None)
    refused = subscribe("a/b", "denied")
    assert (refused.body["topics"][1], refused.cache_control) == ({"topic": "denied", "qos": 128}, None)


def test_allow_cache_in_a_hook_that_is_not_cached_is_refused_when_the_file_loads(
        start_server: Callable[..., ServerProcess], tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    rules = write_rules(tmp_path / "rules", CACHE_RULES)
    server = start_server(rules)
    log = server.log()
    assert f"{rules / 'on_deliver.star'}:1:13: check_error: allow() in on_deliver has no 'cache'" in log
    assert f"{rules / 'client.authenticate.star'}:1:13: check_error: allow() in client.authenticate has no 'cache'" in log
    deliver = call(server, "on_deliver", spec.EXAMPLES["on_deliver"], PLAIN)
    assert (deliver.status, deliver.body, deliver.cache_control) == (200, NEXT, None)
    s = stubs["v3"]
    pb = s.pb2
    with server.channel() as channel:
        reply = s.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "gooduser"), meta=meta(pb)), timeout=TIMEOUT)
    # a broken authentication rule fails closed: client.authenticate's failure policy is deny
    assert (reply.type, reply.bool_result) == (pb.ValuedResponse.STOP_AND_RETURN, False)


# -- 7. rule errors -------------------------------------------------------------------------------

RAISES = 'x = {}["x"]\n'
RAISING_HOOKS = ("auth_on_register", "auth_on_register_m5", "auth_on_publish", "auth_on_publish_m5", "on_auth_m5",
                 "auth_on_subscribe", "auth_on_subscribe_m5", "on_deliver", "on_deliver_m5", "on_unsubscribe",
                 "on_unsubscribe_m5", "on_publish", "on_register")


def _policy_reply(hook: str, policy: str) -> Any:
    if not HOOKS[hook].can_decide:
        return {}
    if policy == "deny":
        return refused_all(hook, spec.EXAMPLES[hook]) if hook in SUBSCRIBE else RULE_ERROR
    return OK if policy == "allow" else NEXT


def test_a_rule_that_raises_is_answered_by_the_failure_policy(start_server: Callable[..., ServerProcess],
                                                              tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {hook: RAISES for hook in RAISING_HOOKS})
    server = start_server(rules)
    for hook in RAISING_HOOKS:
        reply = call(server, hook, spec.EXAMPLES[hook], PLAIN)
        assert (reply.status, reply.body) == (200, _policy_reply(hook, HOOKS[hook].failure_policy)), (hook, reply.raw)
        assert metric(server, "hookrules_rule_errors_total", hook=hook, kind="runtime") >= 1, hook
    assert wait_for(lambda: f"{rules / 'auth_on_register.star'}:1:5: runtime_error: KeyError: 'x'" in server.log())
    assert "(hook auth_on_register, answered deny by failure policy)" in server.log()
    assert "(hook on_deliver, answered ignore by failure policy)" in server.log()


def test_failure_policy_flag_changes_the_answer(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {hook: RAISES for hook in RAISING_HOOKS})
    server = start_server(rules, "--failure-policy", "auth_on_register=allow",
                          "--failure-policy", "auth_on_publish=ignore", "--failure-policy", "on_deliver=allow")
    policies = {"auth_on_register": "allow", "auth_on_publish": "ignore", "on_deliver": "allow"}
    for hook in RAISING_HOOKS:
        policy = policies.get(hook, HOOKS[hook].failure_policy)
        reply = call(server, hook, spec.EXAMPLES[hook], PLAIN)
        assert (reply.status, reply.body) == (200, _policy_reply(hook, policy)), (hook, reply.raw)
        assert reply.cache_control is None
    assert wait_for(lambda: "(hook auth_on_register, answered allow by failure policy)" in server.log())


# -- 8. bad requests ------------------------------------------------------------------------------

MAX_BODY = 2048
VERNEMQ_HOOK_LIST = ", ".join(h.name for h in VERNEMQ_HOOKS)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _module_server(tmp_path_factory, "strict", {"auth_on_register": "allow()\n"},
                              "--http-max-body", str(MAX_BODY))


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_REQUESTS = [
    # hook header, body, query, method, status, metric reason, error message
    pytest.param("auth_on_register", b'{"client_id": "c",', "", "POST", 400, "malformed_json",
                 "the body is not valid JSON", id="malformed-json"),
    pytest.param("auth_on_register", b'[{"client_id": "c"}]', "", "POST", 400, "not_an_object",
                 "the body must be a JSON object", id="json-array"),
    pytest.param("auth_on_register", b'"just a string"', "", "POST", 400, "not_an_object",
                 "the body must be a JSON object", id="json-string"),
    pytest.param(None, _json(spec.EXAMPLES["auth_on_register"]), "", "POST", 400, "missing_hook",
                 "the vernemq-hook header is missing: it names the hook", id="missing-hook-header"),
    pytest.param("auth_on_connect", _json(spec.EXAMPLES["auth_on_register"]), "", "POST", 404, "unknown_hook",
                 f"unknown hook 'auth_on_connect'; VerneMQ hooks: {VERNEMQ_HOOK_LIST}", id="unknown-hook"),
    pytest.param("client.authenticate", _json(spec.EXAMPLES["auth_on_register"]), "", "POST", 404, "unknown_hook",
                 f"unknown hook 'client.authenticate'; VerneMQ hooks: {VERNEMQ_HOOK_LIST}", id="emqx-hook"),
    pytest.param("auth_on_register", _json({**spec.EXAMPLES["auth_on_register"], "password": "p" * MAX_BODY}), "",
                 "POST", 413, "too_large", f"the body is over {MAX_BODY} bytes", id="too-large"),
    pytest.param("auth_on_register", None, "", "GET", 405, "not_post",
                 "VerneMQ webhooks are POST requests, not GET", id="get"),
    pytest.param("auth_on_register", _json(spec.EXAMPLES["auth_on_register"]), "", "PUT", 405, "not_post",
                 "VerneMQ webhooks are POST requests, not PUT", id="put"),
    pytest.param("auth_on_publish", _json({**spec.EXAMPLES["auth_on_publish"], "qos": "x"}), PLAIN, "POST", 400,
                 "bad_field", "field 'qos' must be a QoS number, not 'x'", id="qos-string"),
    pytest.param("auth_on_publish", _json({**spec.EXAMPLES["auth_on_publish"], "qos": 256}), PLAIN, "POST", 400,
                 "bad_field", "field 'qos' must be a QoS number, not 256", id="qos-out-of-range"),
    pytest.param("auth_on_subscribe", _json({**spec.EXAMPLES["auth_on_subscribe"], "topics": 5}), "", "POST", 400,
                 "bad_field", "field 'topics' must be a list, not int", id="topics-number"),
    pytest.param("auth_on_subscribe", _json({**spec.EXAMPLES["auth_on_subscribe"], "topics": ["a/b"]}), "", "POST",
                 400, "bad_field", 'each entry of \'topics\' must be {"topic": ..., "qos": ...}', id="topics-strings"),
    pytest.param("on_unsubscribe", _json({**spec.EXAMPLES["on_unsubscribe"], "topics": [{"topic": "a/b"}]}), "",
                 "POST", 400, "bad_field", "'topics' must be a list of strings", id="unsubscribe-topics-objects"),
    pytest.param("auth_on_register", _json({**spec.EXAMPLES["auth_on_register"], "client_id": 5}), "", "POST", 400,
                 "bad_field", "field 'client_id' must be a string, not int", id="client-id-number"),
    pytest.param("auth_on_register", _json({**spec.EXAMPLES["auth_on_register"], "peer_port": "8888"}), "", "POST",
                 400, "bad_field", "field 'peer_port' must be a number, not str", id="port-string"),
    pytest.param("auth_on_publish", _json({**spec.EXAMPLES["auth_on_publish"], "retain": "yes"}), PLAIN, "POST",
                 400, "bad_field", "field 'retain' must be true or false, not str", id="retain-string"),
    pytest.param("auth_on_register_m5", _json({**spec.EXAMPLES["auth_on_register_m5"], "properties": []}), "",
                 "POST", 400, "bad_field", "field 'properties' must be an object, not list", id="properties-list"),
    pytest.param("auth_on_publish", _json({k: v for k, v in spec.EXAMPLES["auth_on_publish"].items() if k != "topic"}),
                 PLAIN, "POST", 400, "missing_field", "field 'topic' is missing", id="missing-topic"),
    pytest.param("auth_on_publish", _json({**spec.EXAMPLES["auth_on_publish"], "payload": "aGk=!"}), "", "POST",
                 400, "bad_base64", "field 'payload' is not valid base64", id="bad-base64-payload"),
    pytest.param("auth_on_register_m5", _json({**spec.EXAMPLES["auth_on_register_m5"], "properties": {
        "p_user_property": [{"key": "not base64", "val": b64("v")}]}}), "", "POST", 400, "bad_base64",
                 "a user property key is not valid base64", id="bad-base64-user-property"),
    pytest.param("auth_on_register", b'{"client_id": "\xff\xfe", "username": "u"}', "", "POST", 400,
                 "malformed_json", "the body is not valid JSON", id="not-utf8"),
    pytest.param("auth_on_register", _json(spec.EXAMPLES["auth_on_register"]).decode().encode("utf-16"), "", "POST",
                 400, "malformed_json", "the body is not valid JSON", id="utf16-not-utf8-as-json-on-the-wire-is"),
    pytest.param("auth_on_register", b"\xef\xbb\xbf" + _json(spec.EXAMPLES["auth_on_register"]), "", "POST", 400,
                 "malformed_json", "the body is not valid JSON", id="utf8-byte-order-mark"),
    pytest.param("auth_on_register", _json(spec.EXAMPLES["auth_on_register"]), "?base64=yes please", "POST", 400,
                 "bad_query", "query parameter base64 must be on or off, not 'yes please'", id="bad-query"),
]


@pytest.mark.parametrize(("hook", "body", "query", "method", "status", "reason", "error"), BAD_REQUESTS)
def test_bad_request_gets_a_json_error_is_counted_and_the_server_keeps_answering(
        strict_server: ServerProcess, hook: str | None, body: bytes | None, query: str, method: str, status: int,
        reason: str, error: str) -> None:
    counted = {"broker": "vernemq", "reason": reason}
    before = metric(strict_server, "hookrules_bad_requests_total", **counted)
    reply = call(strict_server, hook, body, query.replace(" ", "%20"), method=method)
    assert (reply.status, reply.body) == (status, {"error": error}), reply.raw
    assert metric(strict_server, "hookrules_bad_requests_total", **counted) == before + 1
    after = call(strict_server, "auth_on_register", spec.EXAMPLES["auth_on_register"])
    assert (after.status, after.body) == (200, OK), after.raw


def test_bad_requests_are_logged(strict_server: ServerProcess) -> None:
    call(strict_server, "auth_on_register", b"{")
    assert wait_for(lambda: "refused a webhook request: " in strict_server.log())


@pytest.mark.parametrize("depth", [600, 100_000])
@pytest.mark.parametrize("hook", ["on_client_gone", "auth_on_register"])  # with and without a rule
def test_deeply_nested_json_is_refused_never_a_crash(start_server: Callable[..., ServerProcess], tmp_path: Path,
                                                     hook: str, depth: int) -> None:
    """Nesting deeper than the parser goes is malformed (400); nesting it parses must not crash what reads
    the body next (the raw `request` every rule gets). Either way: a JSON reply, and the server answers on."""
    server = start_server(write_rules(tmp_path / "rules", {"auth_on_register": "allow()\n"}))
    nested = b"[" * depth + b"]" * depth
    too_deep = {"error": "the body is not valid JSON"}
    bare = call(server, hook, nested)  # a list either way, if the parser gets to its end
    assert bare.status == 400 and bare.body in (too_deep, {"error": "the body must be a JSON object"}), bare.raw[:300]
    inside = call(server, hook, b'{"client_id": "c", "mountpoint": "", "deep": ' + nested + b"}")
    assert inside.status in (200, 400), f"not an answer VerneMQ can read: {inside.status} {inside.raw[:300]!r}"
    if inside.status == 400:
        assert inside.body in (too_deep, {"error": "the body is nested too deeply"}), inside.raw[:300]
    else:  # parsed and answered
        assert (inside.status, inside.body) == (200, {} if hook == "on_client_gone" else OK), inside.raw[:300]
    after = call(server, hook, spec.EXAMPLES[hook])
    assert (after.status, after.body) == (200, {} if hook == "on_client_gone" else OK), after.raw
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("qos", ["²", "٣", "9" * 5000], ids=["superscript-two", "arabic-three", "5000-digits"])
def test_qos_string_that_is_not_a_plain_number_is_a_bad_request(norule_server: ServerProcess, qos: str) -> None:
    """on_offline_message sends its qos as a string ("1"); any other string is a bad field, never a crash."""
    body = {**spec.EXAMPLES["on_offline_message"], "qos": qos}
    reply = call(norule_server, "on_offline_message", body, PLAIN)
    if qos == "٣":  # int() reads other scripts' digits too; 3 is a valid QoS number
        assert (reply.status, reply.body) in ((200, {}), (400, {"error": f"field 'qos' must be a QoS number, not {qos!r}"}))
    else:
        assert reply.status == 400, f"not an answer VerneMQ can read: {reply.status} {reply.raw[:300]!r}"
        assert reply.body is not None and reply.body["error"].startswith("field 'qos' must be a QoS number"), reply.raw[:300]
    after = call(norule_server, "on_offline_message", spec.EXAMPLES["on_offline_message"], PLAIN)
    assert (after.status, after.body) == (200, {}), after.raw


# -- 9. _m5 fallback ------------------------------------------------------------------------------

FALLBACK_RULES = {
    "auth_on_register": 'deny("v3 rule in " + hook)\n',
    "auth_on_subscribe": 'if topic.startswith("deny/"):\n    deny("no")\nallow()\n',
    "on_unsubscribe": 'rewrite(topics=["rewritten/topic"])\n',
}


def test_m5_hook_without_its_own_file_is_answered_by_the_v3_rule(start_server: Callable[..., ServerProcess],
                                                                 tmp_path: Path) -> None:
    server = start_server(write_rules(tmp_path / "rules", FALLBACK_RULES))
    reply = call(server, "auth_on_register_m5", spec.EXAMPLES["auth_on_register_m5"])
    assert reply.body == {"result": {"error": "v3 rule in auth_on_register_m5"}}, reply.raw
    sub = call(server, "auth_on_subscribe_m5", _subscribe("auth_on_subscribe_m5", {"topic": "a/b", "qos": 1},
                                                          {"topic": "deny/x", "qos": 1}))
    # the v3 rule, the m5 reply shape
    assert sub.body == {"result": "ok", "modifiers": {"topics": [{"topic": "a/b", "qos": 1},
                                                                 {"topic": "deny/x", "qos": 135}]}}, sub.raw
    unsub = call(server, "on_unsubscribe_m5", spec.EXAMPLES["on_unsubscribe_m5"])
    assert unsub.body == spec.ON_UNSUBSCRIBE_M5_REWRITE, unsub.raw
    # an _m5 hook whose v3 twin has no file either answers as ignore() would
    assert call(server, "auth_on_publish_m5", spec.EXAMPLES["auth_on_publish_m5"], PLAIN).body == NEXT


def test_m5_file_wins_over_the_v3_rule(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server(write_rules(tmp_path / "rules", {**FALLBACK_RULES,
                                                           "auth_on_register_m5": 'deny("m5 rule")\n'}))
    assert call(server, "auth_on_register_m5", spec.EXAMPLES["auth_on_register_m5"]).body == {
        "result": {"error": "m5 rule"}}
    assert call(server, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == {
        "result": {"error": "v3 rule in auth_on_register"}}


# -- 10. keep-alive -------------------------------------------------------------------------------

def test_many_requests_share_one_keep_alive_connection_aiohttp(spec_server: ServerProcess) -> None:
    calls = [("auth_on_register", spec.EXAMPLES["auth_on_register"], OK),
             ("auth_on_publish", spec.EXAMPLES["auth_on_publish"], OK),
             ("on_publish", spec.EXAMPLES["on_publish"], {}),
             ("auth_on_subscribe", with_id(spec.EXAMPLES["auth_on_subscribe"], "x-ignore"), NEXT)]
    rounds = 25

    async def run() -> tuple[int, int, list[tuple[int, Any]]]:
        created = reused = 0

        async def on_create(*_: Any) -> None:
            nonlocal created
            created += 1

        async def on_reuse(*_: Any) -> None:
            nonlocal reused
            reused += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        trace.on_connection_reuseconn.append(on_reuse)
        replies = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace],
                                         timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            for _ in range(rounds):
                for hook, body, _expected in calls:
                    async with session.post(spec_server.url + PLAIN, json=body,
                                            headers={"vernemq-hook": hook}) as resp:
                        replies.append((resp.status, await resp.json()))
        return created, reused, replies

    created, reused, replies = asyncio.run(asyncio.wait_for(run(), timeout=60))
    assert replies == [(200, expected) for _ in range(rounds) for _h, _b, expected in calls]
    assert (created, reused) == (1, rounds * len(calls) - 1)


def test_errors_do_not_close_the_keep_alive_connection(spec_server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", spec_server.http_port, timeout=TIMEOUT)
    try:
        assert _request(conn, "auth_on_register", spec.EXAMPLES["auth_on_register"]).body == OK
        sock = conn.sock
        assert sock is not None
        steps = [("auth_on_register", b"{", "POST", 400), ("nope", b"{}", "POST", 404),
                 ("auth_on_register", None, "GET", 405), (None, b"{}", "POST", 400),
                 ("auth_on_register", _json(spec.EXAMPLES["auth_on_register"]), "POST", 200)] * 4
        for hook, body, method, status in steps:
            reply = _request(conn, hook, body, method=method)
            assert reply.status == status and reply.body is not None, reply.raw
            assert conn.sock is sock, "the server closed the connection"
    finally:
        conn.close()


def _raw_exchange(port: int, head: bytes) -> tuple[socket.socket, bytes]:
    """Send a request's head only, and read what the server says before any body is sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(head)
    return sock, sock.recv(4096)


def test_expect_100_continue_is_answered_before_the_body_is_sent(spec_server: ServerProcess) -> None:
    """curl asks `Expect: 100-continue` before sending a body over 1 KiB and waits for the interim reply."""
    body = _json(spec.EXAMPLES["auth_on_register"])
    head = (b"POST /hooks HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    sock, interim = _raw_exchange(spec_server.http_port, head)
    try:
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(body)
        reply = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1]) == OK
    finally:
        sock.close()


def test_an_unknown_expectation_is_refused_with_417(spec_server: ServerProcess) -> None:
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\nExpect: teapot\r\n"
            b"Content-Length: 2\r\n\r\n")
    sock, reply = _raw_exchange(spec_server.http_port, head)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 417 "), reply
    assert b"only 100-continue" in reply


# -- 11. metrics ----------------------------------------------------------------------------------

def test_requests_and_decisions_are_counted_per_hook(start_server: Callable[..., ServerProcess],
                                                     rules_dir: Path) -> None:
    # a VerneMQ file of its own beside the portable ones: drop and rewrite, which authorize.star cannot
    (rules_dir / "auth_on_publish.star").write_text(
        'if topic_match("sensors/#", topic) and message.payload == b"":\n    drop("empty sensor reading")\n'
        'if topic == "t/demo":\n    rewrite(payload="hardcode payload by hookrules :)")\nallow()\n')
    server = start_server(rules_dir)
    register = spec.EXAMPLES["auth_on_register"]
    publish = spec.EXAMPLES["auth_on_publish"]
    for username in ("gooduser", "other", "baduser"):
        call(server, "auth_on_register", {**register, "username": username})
    for topic, payload in (("t/demo", "x"), ("sensors/1", ""), ("a/b", "y")):
        call(server, "auth_on_publish", {**publish, "topic": topic, "payload": payload}, PLAIN)
    call(server, "on_publish", spec.EXAMPLES["on_publish"], PLAIN)
    call(server, "on_publish", spec.EXAMPLES["on_publish"], PLAIN)
    call(server, "auth_on_subscribe", spec.EXAMPLES["auth_on_subscribe"])  # two topics, one request
    text = server.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "hookrules_request_duration_seconds" in families and "hookrules_decisions" in families

    def count(name: str, **labels: str) -> float:
        return metric(server, name, **labels)

    for hook, n in (("auth_on_register", 3), ("auth_on_publish", 3), ("on_publish", 2), ("auth_on_subscribe", 1)):
        assert count("hookrules_request_duration_seconds_count", broker="vernemq", hook=hook) == n, hook
    assert count("hookrules_request_duration_seconds_bucket", broker="vernemq", hook="auth_on_register", le="+Inf") == 3
    expected = {("auth_on_register", "allow"): 2, ("auth_on_register", "deny"): 1,
                ("auth_on_publish", "rewrite"): 1, ("auth_on_publish", "drop"): 1, ("auth_on_publish", "allow"): 1,
                ("on_publish", "ignore"): 2, ("auth_on_subscribe", "allow"): 2}
    for (hook, decision), n in expected.items():
        source = "default" if hook == "on_publish" else "rule"  # on_publish has no rule here
        assert count("hookrules_decisions_total", broker="vernemq", hook=hook, decision=decision, source=source) == n, \
            (hook, decision)
    # the same counters for EMQX stay untouched
    assert not any(s.labels.get("broker") == "emqx" for s in families["hookrules_decisions"].samples)


# -- 12. EMQX and VerneMQ from one rules directory ------------------------------------------------

def test_one_rules_directory_serves_emqx_and_vernemq_side_by_side(start_server: Callable[..., ServerProcess],
                                                                   rules_dir: Path, stubs: dict[str, Stubs]) -> None:
    server = start_server(rules_dir)
    s = stubs["v3"]
    pb = s.pb2
    vr = pb.ValuedResponse
    with server.channel() as channel:
        stub = s.stub(channel)
        authn = {user: stub.OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "dev-1", user), result=False, meta=meta(pb)), timeout=TIMEOUT)
            for user in ("baduser", "gooduser")}
        webhook = {user: call(server, "auth_on_register", {**spec.EXAMPLES["auth_on_register"], "username": user})
                   for user in ("baduser", "gooduser")}
        published = stub.OnMessagePublish(pb.MessagePublishRequest(
            message=message(pb, "dev-1", "gooduser", "t/demo", b"original"), meta=meta(pb)), timeout=TIMEOUT)
        vmq_published = call(server, "auth_on_publish", {**spec.EXAMPLES["auth_on_publish"], "topic": "t/demo",
                                                         "payload": b64("original")})
    assert (authn["baduser"].type, authn["baduser"].bool_result) == (vr.STOP_AND_RETURN, False)
    assert (authn["gooduser"].type, authn["gooduser"].bool_result) == (vr.STOP_AND_RETURN, True)
    assert (webhook["baduser"].body, webhook["baduser"].cache_control) == (
        {"result": {"error": "user is banned"}}, None)
    assert (webhook["gooduser"].body, webhook["gooduser"].cache_control) == (OK, None)
    assert published.message.payload == b"hardcode payload by hookrules :)"
    # VerneMQ's publish is answered by the portable authorize.star: allow or deny, no rewrite
    assert vmq_published.body == OK


# -- 13. hot reload -------------------------------------------------------------------------------

def _save(path: Path, text: str) -> None:
    """An editor's atomic save: write a temp file, rename it over the rule."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_hot_reload_serves_the_new_vernemq_rule(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", {"auth_on_register": 'deny("v1")\n'})
    server = start_server(rules)
    register, register_m5 = spec.EXAMPLES["auth_on_register"], spec.EXAMPLES["auth_on_register_m5"]

    def answer(hook: str, body: dict[str, Any]) -> Any:
        return call(server, hook, body).body

    assert answer("auth_on_register", register) == {"result": {"error": "v1"}}
    _save(rules / "auth_on_register.star", 'deny("v2")\n')
    assert wait_for(lambda: answer("auth_on_register", register) == {"result": {"error": "v2"}}, TIMEOUT)
    assert answer("auth_on_register_m5", register_m5) == {"result": {"error": "v2"}}  # the fallback follows
    # in-place save of a new version
    (rules / "auth_on_register.star").write_text("allow(cache=5)\n")
    assert wait_for(lambda: answer("auth_on_register", register) == OK, TIMEOUT)
    assert call(server, "auth_on_register", register).cache_control == "max-age=5"
    # an _m5 file appears: it takes over the m5 hook; removed: the v3 rule answers again
    _save(rules / "auth_on_register_m5.star", 'deny("m5")\n')
    assert wait_for(lambda: answer("auth_on_register_m5", register_m5) == {"result": {"error": "m5"}}, TIMEOUT)
    assert answer("auth_on_register", register) == OK
    (rules / "auth_on_register_m5.star").unlink()
    assert wait_for(lambda: answer("auth_on_register_m5", register_m5) == OK, TIMEOUT)


def test_malformed_http_is_refused_counted_and_logged_on_one_line(start_server: Any, tmp_path: Path) -> None:
    """aiohttp refuses a request it cannot parse (400) and logs its message over several lines, with a
    caret under the fault. Result: one log line an operator can grep, and a count."""
    norule_server: ServerProcess = start_server(tmp_path)  # its own: the log line comes once per 10 s

    def malformed() -> float:
        text = norule_server.metrics_text()
        family = next(f for f in text_string_to_metric_families(text) if f.name == "hookrules_bad_requests")
        return sum(s.value for s in family.samples
                   if s.name.endswith("_total") and s.labels == {"broker": "vernemq", "reason": "malformed_http"})

    before = malformed()
    with socket.create_connection(("127.0.0.1", norule_server.http_port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 400 ")
    assert wait_for(lambda: malformed() == before + 1)
    lines = norule_server.log().splitlines()
    reports = [i for i, line in enumerate(lines) if "malformed HTTP request refused" in line]
    assert reports, norule_server.log()[-2000:]
    following = lines[reports[-1] + 1: reports[-1] + 2]
    assert not [line for line in following if line.startswith(" ")], lines[reports[-1]:reports[-1] + 4]


#: malformed requests carrying a secret wherever aiohttp's parser may quote it back: the request line
#: (a RabbitMQ GET holds the password there), a header line, a header value, the method
_SECRET = b"hunter2SECRET"
_MALFORMED_WITH_SECRET = (
    b"GET /rabbitmq/user?username=u&password=" + _SECRET + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /rabbitmq/user?username=u&password=" + _SECRET + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /rabbitmq/user?username=u&password=" + _SECRET + b" tail HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /rabbitmq/user?password=" + _SECRET + b" HTTP/1.1\r\nHost: x\r\nX-A: " + _SECRET + b"\x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + _SECRET + b"y" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + _SECRET + b"\r\n\r\n",
    _SECRET + b" /rabbitmq/user HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + _SECRET + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + _SECRET + b"\r\n",
)


def test_no_malformed_request_puts_its_bytes_in_a_log_line() -> None:
    """A parser may quote the line it refuses in its message (aiohttp's did); a RabbitMQ GET holds the
    password in the request line (an MQTT password over ~8 KB makes it too long). What is logged (the
    fault's description) and what is answered name the fault only."""
    from .wire_harness import feed, run, status_of, wire_server

    faults: list[str] = []
    server = wire_server(faults=faults)
    for raw in _MALFORMED_WITH_SECRET:
        before = len(faults)
        answer, transport, _ = run(feed(server, [raw]))
        assert len(faults) == before + 1, (raw[:60], answer)
        assert status_of(answer) in (400, 431) and transport.closed, (raw[:60], answer)
        for text in (faults[-1], answer.decode("latin-1")):
            assert _SECRET.decode() not in text and "hunter2" not in text, (text, raw[:60])
        assert faults[-1] and "\n" not in faults[-1]


def test_an_overlong_rabbitmq_get_logs_no_password(start_server: Any, tmp_path: Path) -> None:
    """Live: RabbitMQ asking by GET for a client with a long password gets aiohttp's 400; the server's
    one log line about it holds no part of the password."""
    server: ServerProcess = start_server(tmp_path)  # its own: the log line comes once per 10 s
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(_MALFORMED_WITH_SECRET[0])
        assert sock.recv(4096).startswith(b"HTTP/1.0 400 ")
    assert wait_for(lambda: "malformed HTTP request refused" in server.log())
    assert "hunter2" not in server.log()
    assert "LineTooLong: Got more than 8190 bytes when reading" in server.log()
