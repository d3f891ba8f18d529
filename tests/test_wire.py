"""Point 9: every value a rule hands to a reply is checked when the decision is made, and every reply is
encoded inside the error handling. A bad value is a rule error answered by the failure policy: never an
HTTP 500 (VerneMQ reads it as a refusal of everything), never a gRPC error, never a traceback per call.

Enumerated, not sampled: every modifier of every VerneMQ hook's schema (nested ones too) and allow(cache=)
with every value of BAD below, on a live server; every field of rewrite() and deny()/drop() reasons on
both brokers; and, for the second line, decisions no rule can make (built past the checks) on every
hook of both adapters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from hookrules.adapters.exhook import RPC_HOOKS, ExhookAdapter
from hookrules.adapters.vernemq import _encode_modifiers, reply_for
from hookrules.adapters.webhooks import WebhookAdapter
from hookrules.decisions import POLICY_DECISIONS, Allow, Decision, Deny, Drop, Rewrite
from hookrules.engine import Engine, Outcome
from hookrules.events import Event
from hookrules.hooks import HOOKS, VERNEMQ_HOOKS
from hookrules.modifiers import MAX_CACHE, MAX_MQTT_STRING, SCHEMAS, UINT32_MAX, check_cache, validate
from hookrules.ruleset import RuleSet

from . import vernemq_examples as spec
from .emqx_session import client_info, message, meta
from .support import ServerProcess, Stubs
from .test_webhooks import PLAIN, call, metric, write_rules

#: name -> (the value as a rule writes it, the same value in Python)
BAD: dict[str, tuple[str, Any]] = {
    "huge": ("10**5000", 10**5000),  # the issue's: json refused it while the reply was written
    "uint32": ("2**32", 2**32),
    "int64": ("2**64", 2**64),
    "negative": ("-1", -1),
    "packet": ("268435456", 268_435_456),
    "true": ("True", True),
    "fraction": ("1.5", 1.5),
    "nan": ('float("nan")', math.nan),
    "inf": ('float("inf")', math.inf),
    "none": ("None", None),
    "text": ('"64k"', "64k"),
    "surrogate": ('"a\\ud800"', "a\ud800"),
    "nul": ('"a\\x00b"', "a\x00b"),
    "long": ('"x" * 70000', "x" * 70000),
    "bytes": ('b"\\xff"', b"\xff"),
    "list": ("[1]", [1]),
    "dict": ('{"k": 1}', {"k": 1}),
}

# -- unit: what validation lets through is what the wire carries --------------------------------------


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield k
            yield from _leaves(v)
    else:
        yield value


def _wire_ok(value: Any) -> bool:
    """A value VerneMQ reads: a bool, an int of at most 32 bits unsigned, an MQTT string or binary."""
    if type(value) is bool:
        return True
    if type(value) is int:
        return 0 <= value <= UINT32_MAX
    if isinstance(value, str):
        try:
            return len(value.encode("utf-8")) <= MAX_MQTT_STRING and "\x00" not in value
        except UnicodeEncodeError:
            return False
    return isinstance(value, bytes) and len(value) <= MAX_MQTT_STRING


def _schema_cases() -> Iterator[tuple[str, str, str | None, str]]:
    """(hook, key, nested key or None, BAD name) for every modifier of every schema."""
    for hook, schema in SCHEMAS.items():
        for key in schema:
            if key == "properties":
                inner = {"auth_on_register_m5": ("p_user_property", "p_session_expiry_interval"),
                         "on_auth_m5": ("p_authentication_method", "p_authentication_data")}[hook]
                for sub in inner:
                    for name in BAD:
                        yield hook, key, sub, name
            else:
                for name in BAD:
                    yield hook, key, None, name


def _modifiers(hook: str, key: str, inner: str | None, value: Any, wrap: bool) -> dict[str, Any]:
    """The modifiers the live rule builds (kept the same as MODIFIER_RULE)."""
    if wrap:
        value = {"k": value}
    mods: dict[str, Any] = {key: {inner: value}} if inner else {key: value}
    if key == "client_id":
        mods["mountpoint"] = ""
    if key == "mountpoint" and "client_id" in SCHEMAS[hook]:
        mods["client_id"] = "c"
    return mods


def _expected(hook: str, mods: dict[str, Any]) -> dict[str, Any] | None:
    """The modifiers VerneMQ gets, or None when the rule's decision must be refused."""
    try:
        checked = validate(mods, SCHEMAS[hook])
    except ValueError:
        return None
    assert all(_wire_ok(v) for v in _leaves(checked)), (hook, mods, checked)
    encoded = _encode_modifiers(checked)
    json.dumps(encoded, allow_nan=False)  # the reply's own encoder accepts it
    return encoded


def test_every_modifier_refuses_what_its_broker_cannot_take() -> None:
    """What passes is what the wire carries (_expected asserts it); what must not pass does not."""
    refused = set()
    for hook, key, inner, name in _schema_cases():
        mods = _modifiers(hook, key, inner, BAD[name][1], inner == "p_user_property")
        if _expected(hook, mods) is None:  # any exception but ValueError fails the test here
            refused.add((hook, key, inner, name))
    # whatever the type of the field, these never pass
    for hook, key, inner, name in _schema_cases():
        if name in ("huge", "uint32", "int64", "negative", "nan", "inf", "none", "surrogate", "long", "list"):
            assert (hook, key, inner, name) in refused, (hook, key, inner, name)
    for bad in (10**5000, -1, MAX_CACHE + 1, True, 1.5, None, "30"):
        with pytest.raises(ValueError):
            check_cache(bad)


# -- live: every modifier and cache value through a real server ----------------------------------------

VALUES = "VALUES = {" + ", ".join(f"{name!r}: {text}" for name, (text, _) in BAD.items()) + "}\n"
MODIFIER_RULE = VALUES + """value = VALUES[request["value"]]
key = request["key"]
if key == "cache":
    allow(cache=value)
if "wrap" in request:
    value = {"k": value}
if "inner" in request:
    mods = {key: {request["inner"]: value}}
else:
    mods = {key: value}
if key == "client_id":
    mods["mountpoint"] = ""
if key == "mountpoint" and hook.startswith("auth_on_register"):
    mods["client_id"] = "c"
allow(modifiers=mods)
"""
CACHEABLE = [h.name for h in VERNEMQ_HOOKS if h.cacheable]


def _body(hook: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**spec.EXAMPLES[hook], **extra}


def _policy_body(hook: str) -> Any:
    assert HOOKS[hook].failure_policy == "deny"
    if hook.startswith("auth_on_subscribe"):
        m5 = hook.endswith("_m5")
        topics = [{"topic": t["topic"], "qos": 135 if m5 else 128} for t in spec.EXAMPLES[hook]["topics"]]
        return {"result": "ok", "modifiers": {"topics": topics}} if m5 else {"result": "ok", "topics": topics}
    return {"result": {"error": "rule error"}}


def test_every_bad_modifier_and_cache_is_answered_by_the_policy_on_a_live_server(
        start_server: Any, tmp_path: Path) -> None:
    hooks = sorted(set(SCHEMAS) | set(CACHEABLE))
    # allow(cache=) in a hook VerneMQ does not cache is refused when the file loads: not there
    # (and modifiers in one that takes none)
    cache_only = VALUES + 'allow(cache=VALUES[request["value"]])\n'
    rules = {h: (MODIFIER_RULE if HOOKS[h].cacheable else MODIFIER_RULE.replace("allow(cache=value)", "ignore()"))
             if h in SCHEMAS else cache_only for h in hooks}
    server: ServerProcess = start_server(write_rules(tmp_path / "rules", rules))
    assert "check_error" not in server.log()
    calls = refused = 0
    for hook, key, inner, name in _schema_cases():
        wrap = inner == "p_user_property"
        extra = {"key": key, "value": name, **({"inner": inner} if inner else {}), **({"wrap": 1} if wrap else {})}
        reply = call(server, hook, _body(hook, extra), PLAIN)
        expected = _expected(hook, _modifiers(hook, key, inner, BAD[name][1], wrap))
        want = _policy_body(hook) if expected is None else {"result": "ok", "modifiers": expected}
        assert (reply.status, reply.body) == (200, want), (hook, key, inner, name, reply.raw[:300])
        calls += 1
        refused += expected is None
    for hook in CACHEABLE:
        for name, (_, value) in BAD.items():
            reply = call(server, hook, _body(hook, {"key": "cache", "value": name}), PLAIN)
            if value is None:  # allow(cache=None) is allow(): no header
                assert (reply.status, reply.body, reply.cache_control) == (200, {"result": "ok"}, None)
                continue
            try:
                check_cache(value)
            except ValueError:
                assert (reply.status, reply.body, reply.cache_control) == (200, _policy_body(hook), None), \
                    (hook, name, reply.raw[:300])
                calls += 1
                refused += 1
                continue
            assert (reply.status, reply.cache_control) == (200, f"max-age={value}"), (hook, name, reply.raw[:300])
            calls += 1
    # each refusal is a rule error (once per topic in a subscription), and a policy answer in the decision
    # counts; no internal error
    single = [h for h in hooks if not h.startswith("auth_on_subscribe")]
    refused_single = refused - sum(1 for h in CACHEABLE if h.startswith("auth_on_subscribe")
                                   for _, v in BAD.values() if v is not None and not _cache_ok(v))
    errors = sum(metric(server, "hookrules_rule_errors_total", hook=h, kind="runtime") for h in single)
    policy = sum(metric(server, "hookrules_decisions_total", broker="vernemq", hook=h, decision="deny",
                        source="policy") for h in single)
    assert errors == policy == refused_single and refused_single > 100, (errors, policy, refused_single, calls)
    assert metric(server, "hookrules_bad_requests_total", broker="vernemq", reason="internal_error") == 0
    # logged rate-limited: one line per rule location per 10 s, not one per call
    lines = [line for line in server.log().splitlines() if "answered deny by failure policy" in line]
    assert 0 < len(lines) <= 2 * len(hooks), len(lines)
    assert "Traceback" not in server.log()


def _cache_ok(value: Any) -> bool:
    try:
        check_cache(value)
    except ValueError:
        return False
    return True


# -- rewrite() and reasons, on both brokers -------------------------------------------------------------

REWRITE_FIELDS = {"topic": ("huge", "surrogate", "nul", "long", "list", "bytes", "text"),
                  "payload": ("huge", "surrogate", "long", "bytes", "list", "text"),
                  "qos": ("huge", "uint32", "negative", "true", "fraction", "nan", "text", "none")}
#: (field, BAD name) a broker must never be sent
MUST_REFUSE = {("topic", n) for n in ("huge", "surrogate", "nul", "long", "list", "bytes")} | \
    {("payload", n) for n in ("huge", "surrogate", "list")} | \
    {("qos", n) for n in ("huge", "uint32", "negative", "true", "fraction", "nan", "text")}
REWRITE_RULE = VALUES + """value = VALUES[REQUEST_VALUE]
field = REQUEST_FIELD
if field == "reason":
    deny(value)
if field == "drop":
    drop(value)
if field == "topic":
    rewrite(topic=value)
if field == "payload":
    rewrite(payload=value)
rewrite(qos=value)
"""


def _vmq_rewrite_rule() -> str:
    return REWRITE_RULE.replace("REQUEST_VALUE", 'request["value"]').replace("REQUEST_FIELD", 'request["field"]')


def _emqx_rewrite_rule() -> str:
    # EMQX sends no request body: the message's own topic names the case, "field/value"
    return REWRITE_RULE.replace("REQUEST_VALUE", 'message.topic.split("/")[1]').replace(
        "REQUEST_FIELD", 'message.topic.split("/")[0]')


REASON_VALUES = ("surrogate", "long", "huge", "none", "list", "nul", "text")


def test_rewrite_and_reasons_a_broker_cannot_take_are_answered_by_the_policy_on_both_brokers(
        start_server: Any, tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    server: ServerProcess = start_server(write_rules(tmp_path / "rules", {
        "auth_on_publish": _vmq_rewrite_rule(), "message.publish": _emqx_rewrite_rule()}))
    cases = [(f, n) for f, names in REWRITE_FIELDS.items() for n in names] + \
        [(f, n) for f in ("reason", "drop") for n in REASON_VALUES]
    publish = spec.EXAMPLES["auth_on_publish"]
    s = stubs["v3"]
    pb = s.pb2
    refused_vmq, refused_emqx = set(), set()
    with server.channel() as channel:
        stub = s.stub(channel)
        for field, name in cases:
            reply = call(server, "auth_on_publish", {**publish, "field": field, "value": name}, PLAIN)
            assert reply.status == 200 and reply.body is not None, (field, name, reply.raw[:300])
            if reply.body == {"result": {"error": "rule error"}}:
                refused_vmq.add((field, name))
            else:  # what was sent is what VerneMQ reads
                json.dumps(reply.body, allow_nan=False)
                for value in _leaves(reply.body):
                    assert not isinstance(value, int) or type(value) is bool or 0 <= value <= 2, (field, name)
            msg = message(pb, "c", "u", f"{field}/{name}", b"x")
            got = stub.OnMessagePublish(pb.MessagePublishRequest(message=msg, meta=meta(pb)), timeout=10)
            if got.type == pb.ValuedResponse.IGNORE:  # message.publish's failure policy
                refused_emqx.add((field, name))
    must = MUST_REFUSE | {(f, n) for f in ("reason", "drop") for n in ("surrogate", "long", "huge", "none", "list")}
    assert must <= refused_vmq, sorted(must - refused_vmq)
    assert must <= refused_emqx, sorted(must - refused_emqx)
    assert metric(server, "hookrules_bad_requests_total", broker="vernemq", reason="internal_error") == 0
    assert metric(server, "hookrules_bad_requests_total", broker="emqx", reason="internal_error") == 0
    assert "Traceback" not in server.log()


# -- the second line: decisions no rule can make, on every hook of both adapters -----------------------

#: decisions past every check, each one some encoder refuses
POISONED: dict[str, Decision] = {
    "huge_max_message_size": Allow(modifiers={"max_message_size": 10**5000}),
    "huge_cache": Allow(cache=10**5000),
    "nan_modifier": Allow(modifiers={"max_message_size": math.nan}),
    "text_auth_data": Allow(modifiers={"properties": {"p_authentication_data": "not bytes"}}),
    "header_newline": Allow(cache="1\r\nx-injected: 1"),  # type: ignore[arg-type]
    "surrogate_topic": Rewrite(topic="a\ud800"),
    "huge_qos": Rewrite(qos=2**40),
    "text_payload": Rewrite(payload="not bytes"),  # type: ignore[arg-type]
    "binary_plain_payload": Rewrite(payload=b"\xff\xfe"),
    "object_reason": Deny(reason=object()),  # type: ignore[arg-type]
    "object_drop": Drop(reason=object()),  # type: ignore[arg-type]
}


class PoisonedEngine(Engine):
    """The real engine, answering every call with one decision made past every check (a bug of ours)."""

    poison: Decision

    def needs_event(self, hook: str) -> bool:
        return True

    def decide(self, event: Event, timeout: float | None = None, check: Any = None) -> Outcome:
        return Outcome(self.poison, "rule")

    def decide_each(self, events: Iterator[Event], count: int, check: Any = None) -> list[Decision]:
        return [self.poison for _ in events]


def _internal(broker: str) -> float:
    return REGISTRY.get_sample_value("hookrules_bad_requests_total", {"broker": broker, "reason": "internal_error"}) or 0.0


async def _post_all(adapter: WebhookAdapter, calls: list[tuple[str, str]]) -> list[tuple[int, Any, Any]]:
    import aiohttp

    from .wire_harness import start_wire

    server, port = await start_wire(adapter)
    out = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for hook, query in calls:
                async with session.post(f"http://127.0.0.1:{port}/{query}", json=spec.EXAMPLES[hook],
                                        headers={"vernemq-hook": hook}) as resp:
                    out.append((resp.status, json.loads(await resp.read()), dict(resp.headers)))
    finally:
        await server.stop(1.0)
    return out


def _engine_tracebacks(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.exc_info and r.name == "hookrules.engine")


def test_no_decision_can_make_a_webhook_reply_fail(caplog: pytest.LogCaptureFixture) -> None:
    engine = PoisonedEngine(RuleSet())
    adapter = WebhookAdapter(engine)
    deciding = [h.name for h in VERNEMQ_HOOKS if h.can_decide]
    calls = [(hook, PLAIN) for hook in deciding]  # the examples carry plain payloads
    before = _internal("vernemq")
    for name, poison in POISONED.items():
        engine.poison = poison
        for (hook, query), (status, body, headers) in zip(calls, asyncio.run(_post_all(adapter, calls))):
            # a reply VerneMQ reads: the policy's, or the poisoned decision where the hook does not send
            # the poisoned field; never a 500, never a value its JSON reader or the HTTP headers refuse
            assert status == 200 and isinstance(body, dict) and "result" in body, (name, hook, query, body)
            json.dumps(body, allow_nan=False)
            assert all(type(v) is bool or not isinstance(v, int) or 0 <= v <= UINT32_MAX for v in _leaves(body))
            assert "x-injected" not in {k.lower() for k in headers}, (name, hook)
            sent = not hook.startswith("auth_on_subscribe")  # a subscribe reply carries no modifiers or reason
            if sent and name in ("huge_max_message_size", "nan_modifier", "object_reason", "text_auth_data"):
                assert body == reply_for(hook, POLICY_DECISIONS[engine.policy(hook)], True).body, (name, hook, body)
    assert _internal("vernemq") > before
    assert _engine_tracebacks(caplog) <= 1  # at most once per 10 s, not once per call


def test_no_decision_can_make_an_exhook_reply_a_grpc_error(stubs: dict[str, Stubs], caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    engine = PoisonedEngine(RuleSet())
    adapter = ExhookAdapter(engine)
    s = stubs["v3"]
    pb = s.pb2
    requests = {
        "OnClientAuthenticate": pb.ClientAuthenticateRequest(clientinfo=client_info(pb, "c", "u"), meta=meta(pb)),
        "OnClientAuthorize": pb.ClientAuthorizeRequest(clientinfo=client_info(pb, "c", "u"), topic="t", meta=meta(pb)),
        "OnMessagePublish": pb.MessagePublishRequest(message=message(pb, "c", "u", "t", b"x"), meta=meta(pb)),
        "OnClientConnected": pb.ClientConnectedRequest(clientinfo=client_info(pb, "c", "u"), meta=meta(pb)),
    }
    assert set(RPC_HOOKS) >= set(requests)

    async def run() -> list[tuple[str, str, Any]]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(adapter.generic_handlers())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = s.stub(channel)
                for name, poison in POISONED.items():
                    engine.poison = poison
                    for rpc, request in requests.items():
                        out.append((name, rpc, await getattr(stub, rpc)(request, timeout=10)))
        finally:
            await server.stop(None)
        return out

    before = _internal("emqx")
    replies = asyncio.run(run())  # a gRPC error would raise here
    vr = pb.ValuedResponse
    for name, rpc, reply in replies:
        if rpc == "OnClientAuthenticate" and isinstance(POISONED[name], Rewrite):
            assert (reply.type, reply.bool_result) == (vr.STOP_AND_RETURN, False) or reply.type == vr.IGNORE
        if rpc == "OnMessagePublish" and name in ("surrogate_topic", "huge_qos", "text_payload"):
            assert reply.type == vr.IGNORE, (name, reply)  # message.publish's policy: published unchanged
    assert _internal("emqx") >= before + 3
    assert _engine_tracebacks(caplog) <= 1


def test_internal_errors_log_one_traceback_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(RuleSet())
    with caplog.at_level(logging.ERROR, logger="hookrules.engine"):
        for _ in range(50):
            try:
                raise RuntimeError("a bug of ours")
            except RuntimeError:
                assert engine.internal_error("vernemq", "auth_on_register") == Deny("rule error")
    records = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None


def test_topics_protobuf_cannot_carry_do_not_fail_the_provider_load(stubs: dict[str, Stubs], tmp_path: Path) -> None:
    """TOPICS = ["a/\\ud800"] loads (it is a valid filter to Python) but protobuf refuses it: the hook list
    EMQX asks for on load used to fail with a gRPC error, so EMQX loaded no hook at all."""
    from hookrules.ruleset import scan

    (tmp_path / "message.publish.star").write_text('TOPICS = ["a/\\ud800", "b/#"]\nallow()\n')
    (tmp_path / "client.authenticate.star").write_text("allow()\n")
    ruleset, _ = scan(tmp_path, RuleSet())
    assert ruleset.get("message.publish") is not None
    adapter = ExhookAdapter(Engine(ruleset))
    s = stubs["v3"]
    pb = s.pb2

    async def run() -> Any:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(adapter.generic_handlers())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await s.stub(channel).OnProviderLoaded(pb.ProviderLoadedRequest(
                    broker=pb.BrokerInfo(version="5.9.0"), meta=meta(pb)), timeout=10)
        finally:
            await server.stop(None)

    reply = asyncio.run(run())
    assert {h.name: list(h.topics) for h in reply.hooks} == {"client.authenticate": [], "message.publish": []}


def _decisions_with(value: Any) -> Iterator[tuple[str, Decision]]:
    """Every field of every decision kind holding `value` (built directly, past the rule-call checks)."""
    yield "allow.cache", Allow(cache=value)
    yield "deny.reason", Deny(reason=value)
    yield "drop.reason", Drop(reason=value)
    for field in ("topic", "payload", "qos", "retain"):
        yield f"rewrite.{field}", Rewrite(**{field: value})
    yield "rewrite.topics", Rewrite(topics=(value,))


def test_every_decision_that_passes_the_check_encodes_for_every_hook_of_both_brokers() -> None:
    """decision_problem is the boundary: whatever it lets through, every reply builder of both adapters
    encodes (JSON without NaN, protobuf), and what it must stop, it stops."""
    from hookrules.adapters import exhook_proto
    from hookrules.adapters.exhook import _Replies
    from hookrules.modifiers import decision_problem

    replies = _Replies(exhook_proto.load("v3"))
    pb = exhook_proto.load("v3")
    request = pb.MessagePublishRequest(message=pb.Message(topic="t", payload=b"x", qos=1))
    must_stop = {"huge", "uint32", "int64", "negative", "nan", "inf", "surrogate", "long", "list", "dict"}
    for name, (_, value) in BAD.items():
        for field, decision in _decisions_with(value):
            vmq = [h.name for h in VERNEMQ_HOOKS if h.can_decide and decision.kind in h.decisions]
            problems = {hook: decision_problem(hook, decision) for hook in vmq + ["message.publish"]}
            for hook, problem in problems.items():
                if problem is not None:
                    continue
                if hook == "message.publish":
                    replies.publish(request, decision)  # raises on what protobuf refuses
                else:
                    json.dumps(reply_for(hook, decision, True).body, allow_nan=False)
            passed = [h for h, p in problems.items() if p is None]
            if name in must_stop and value is not None:
                assert not passed, (field, name, passed)


# -- shapes VerneMQ's decoder cannot take: empty maps, and an empty unsubscribe list ---------------------

#: the maps a schema nests, by hook and key (the same as _schema_cases's)
NESTED = {("auth_on_register_m5", "properties"): ("p_user_property", "p_session_expiry_interval"),
          ("on_auth_m5", "properties"): ("p_authentication_method", "p_authentication_data")}


def _empty_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every modifier of every schema that takes a map, given an empty one, and every key of that map
    that takes a map given an empty one; each alone and beside another modifier."""
    for hook, schema in SCHEMAS.items():
        for key in schema:
            try:
                validate({key: {}}, schema)
            except ValueError:
                continue  # not a map
            cases = [{key: {}}]
            for inner in NESTED.get((hook, key), ()):
                try:
                    validate({key: {inner: {}}}, schema)
                except ValueError:
                    continue
                cases.append({key: {inner: {}}})
            other = {"reason_code": 0} if hook == "on_auth_m5" else {"allow_publish": True}
            for mods in cases:
                yield hook, mods
                yield hook, {**mods, **other}


def _empty_containers(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, (dict, list)):
        if not value:
            yield path or "(the body)"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            yield from _empty_containers(v, f"{path}.{k}")


def test_no_reply_carries_an_empty_map_or_list_in_its_modifiers() -> None:
    """VerneMQ decodes {} as [{}] (jsx proplist mode) and normalize_properties then crashes the client's
    connection: `properties: {}` used to be sent as it was. Empty is sent as absent."""
    cases = list(_empty_cases())
    assert {h for h, _ in cases} == {"auth_on_register_m5", "on_auth_m5"} and len(cases) >= 6, cases
    for hook, mods in cases:
        body = reply_for(hook, Allow(modifiers=mods), True).body
        assert not list(_empty_containers(body)), (hook, mods, body)
        sent = {k: v for k, v in mods.items() if k != "properties"}
        assert body == ({"result": "ok", "modifiers": sent} if sent else {"result": "ok"}), (hook, mods, body)


def test_empty_properties_are_sent_as_absent_on_a_live_server(start_server: Any, tmp_path: Path) -> None:
    rule = 'allow(modifiers=request["mods"])\n'
    server: ServerProcess = start_server(write_rules(tmp_path / "rules", {h: rule for h in NESTED_HOOKS}))
    for hook, mods in _empty_cases():
        reply = call(server, hook, _body(hook, {"mods": mods}), PLAIN)
        assert reply.status == 200 and not list(_empty_containers(reply.body)), (hook, mods, reply.raw)
        assert reply.body["result"] == "ok", (hook, mods, reply.raw)


NESTED_HOOKS = sorted({h for h, _ in NESTED})


def test_an_empty_unsubscribe_list_is_refused_only_where_vernemq_misreads_it(start_server: Any,
                                                                           tmp_path: Path) -> None:
    """rewrite(topics=[]): VerneMQ's MQTT 3 path reads {"topics": []} as a plain ok (every topic asked
    for is unsubscribed), its MQTT 5 path as "none". Refused on the first (a rule error, answered by the
    policy, with a hint), sent on the second."""
    from hookrules.modifiers import EMPTY_TOPICS_MISREAD, decision_problem

    rewriters = [h.name for h in VERNEMQ_HOOKS if "topics" in h.rewrites]
    assert sorted(rewriters) == ["on_unsubscribe", "on_unsubscribe_m5"]
    for hook in rewriters:
        problem = decision_problem(hook, Rewrite(topics=()))
        assert (problem is not None) == (hook in EMPTY_TOPICS_MISREAD), hook
        assert decision_problem(hook, Rewrite(topics=("a/b",))) is None
    server: ServerProcess = start_server(write_rules(tmp_path / "rules", {"on_unsubscribe": "rewrite(topics=[])\n"}))
    v3 = call(server, "on_unsubscribe", spec.EXAMPLES["on_unsubscribe"])
    assert (v3.status, v3.body) == (200, {"result": "next"}), v3.raw  # on_unsubscribe's policy: ignore
    assert "rewrite(topics=[]) is read by VerneMQ's MQTT 3 path" in server.log()
    m5 = call(server, "on_unsubscribe_m5", spec.EXAMPLES["on_unsubscribe_m5"])  # served by the same file
    assert (m5.status, m5.body) == (200, {"result": "ok", "modifiers": {"topics": []}}), m5.raw
