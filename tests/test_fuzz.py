"""Fuzzing both front-ends of a real `hookrules serve` (bundled rules) with hypothesis.

One server for the module, on a copy of the bundled rules/ and a 64 KiB webhook body limit (so bodies at
and over the limit are cheap to send). Every case goes over loopback to the real process:

- VerneMQ webhooks: random `vernemq-hook` headers, JSON bodies built from each hook's real fields with
  wrong types, missing and extra fields, lone surrogates, huge strings (around the body limit), deep
  nesting, base64 and non-base64 payloads, random user properties; raw bodies (non-UTF-8 bytes in string
  fields, truncated JSON, garbage); other methods, paths, queries, Content-Encodings. Every reply is a
  200 VerneMQ reads for that hook or a 4xx `{"error": str}`; never a 5xx, never a body that is not JSON.
  Every such 4xx is counted once in hookrules_bad_requests_total (checked over all cases together).
- EMQX ExHook: random field values for every request message of v2 and v3 sent to every RPC through the
  protoc-generated stubs: OK with the reply shape EMQX reads. Garbage bytes through identity
  serializers: INVALID_ARGUMENT (counted) when the bytes are not the protobuf, OK when they happen to be.
- Both ports: raw TCP garbage and a few classic wrong protocols; the server answers normally afterwards.

Hypothesis runs derandomized and without an example database, so every run tries the same cases.
Every request has a timeout of a few seconds (a hang fails the case); nothing asserts on timing. The last
test checks that the server is still up and that its log holds no Traceback.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import re
import shutil
import socket
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from hookrules.hooks import CHAINS, HOOKS

from . import vernemq_examples as spec
from .support import BUNDLED_RULES, PROTOS, ServerProcess, Stubs

TIMEOUT = 5.0  # seconds any one request may take before the case fails as a hang
MAX_BODY = 64 * 1024
SLOW_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
               HealthCheck.filter_too_much, HealthCheck.large_base_example]


def fuzz(max_examples: int = 150) -> Callable[[Any], Any]:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=SLOW_HEALTH, print_blob=False)


VMQ_HOOKS = sorted(name for name, info in HOOKS.items() if info.broker == "vernemq")
EMQX_HOOK_NAMES = sorted(name for name, info in HOOKS.items() if info.broker == "emqx")
#: every reason the webhooks count (README "VerneMQ hooks", plus bad_query and too_deep from the adapter)
WEBHOOK_REASONS = {"malformed_json", "not_an_object", "missing_hook", "unknown_hook", "bad_field", "missing_field",
                   "bad_base64", "too_large", "not_post", "bad_query", "too_deep", "bad_encoding", "slow_body",
                   "bad_body", "overloaded"}
REASON_FOR_STATUS = {404: {"unknown_hook"}, 405: {"not_post"}, 413: {"too_large"}, 415: {"bad_encoding"},
                     408: {"slow_body"}}
HEALTH_PATHS = ("/healthz", "/readyz", "/metrics")


# -- the server -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    rules = tmp / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    server = ServerProcess(rules, "--http-max-body", str(MAX_BODY), log_path=tmp / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with fuzz_server.channel() as ch:
        yield ch


_BAD_REQUESTS = re.compile(r"^hookrules_bad_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)


def bad_requests(server: ServerProcess, broker: str) -> dict[str, float]:
    """hookrules_bad_requests_total of one broker, by reason (read with a regex: the full parser is slow)."""
    out: dict[str, float] = {}
    for labels, value in _BAD_REQUESTS.findall(server.metrics_text()):
        names = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if names.get("broker") == broker:
            out[names["reason"]] = float(value)
    return out


def increased(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


# -- webhooks: sending and judging ----------------------------------------------------------------

@dataclass
class Reply:
    status: int
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Webhook:
    """One HTTP request as sent: the hook header as bytes (None: no header), the body as bytes."""

    hook: bytes | None
    body: bytes
    query: str = ""
    method: str = "POST"
    path: str = "/"
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def hook_name(self) -> str | None:
        """The hook as the server reads the header (HTTP strips spaces and tabs around a value)."""
        if self.hook is None:
            return None
        return self.hook.decode("utf-8", "surrogateescape").strip(" \t")

    def __repr__(self) -> str:  # hypothesis prints this for a failing case: keep huge bodies short
        body = self.body if len(self.body) <= 600 else self.body[:300] + b"..." + self.body[-100:]
        return (f"Webhook(method={self.method!r}, path={self.path!r}, query={self.query!r}, hook={self.hook!r}, "
                f"headers={self.headers!r}, body[{len(self.body)}]={body!r})")


def send(server: ServerProcess, req: Webhook) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        conn.putrequest(req.method, req.path + req.query, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        if req.hook is not None:
            conn.putheader("vernemq-hook", req.hook)
        for name, value in req.headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(req.body)))
        conn.endheaders(req.body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def _client_parses(body: bytes) -> Any:
    """The body as json.loads reads it, or a marker when it cannot."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _UNPARSABLE


_UNPARSABLE = object()
_PLAIN_QUERIES = ("", "?base64=on", "?base64=off")


def check_vernemq_reply(hook: str, reply: Reply, body: Any) -> None:
    """A 200 VerneMQ reads for `hook`: {} for a notification, a valid `result` (and modifiers) otherwise."""
    info = HOOKS[hook]
    if not info.can_decide:
        assert body == {}, f"{hook} is a notification: VerneMQ expects {{}}, got {body!r}"
        return
    assert isinstance(body, dict) and "result" in body, f"{hook}: no result in {body!r}"
    result = body["result"]
    valid = result in ("ok", "next") or (isinstance(result, dict) and set(result) == {"error"}
                                         and isinstance(result["error"], str))
    assert valid, f"{hook}: VerneMQ cannot read result {result!r}"
    extra = set(body) - {"result"}
    if result != "ok":
        assert not extra, f"{hook}: {result!r} with {extra}"
        assert "cache-control" not in reply.headers, f"{hook}: only ok answers are cached: {reply.headers}"
    assert extra <= {"modifiers", "topics"}, f"{hook}: unknown top-level keys {extra}"
    if "modifiers" in body:
        assert isinstance(body["modifiers"], dict), body
    topics = body.get("topics", body.get("modifiers", {}).get("topics"))
    if topics is not None and hook.startswith("auth_on_subscribe"):
        assert isinstance(topics, list), body
        for t in topics:
            assert isinstance(t, dict) and isinstance(t.get("topic"), str), body
            assert type(t.get("qos")) is int and (0 <= t["qos"] <= 2 or t["qos"] in (128, 135)), body
    if "cache-control" in reply.headers:
        assert re.fullmatch(r"max-age=\d+", reply.headers["cache-control"]), reply.headers


#: the webhook requests this module's server refused with its own JSON error, by HTTP status; compared with
#: hookrules_bad_requests_total once all webhook tests ran (reading /metrics per case would be slow)
REFUSED: Counter[int] = Counter()


def judge(req: Webhook, reply: Reply) -> str:
    """The properties every webhook reply has; returns the outcome ("400 the body is not valid JSON")."""
    assert reply.status < 500, f"HTTP {reply.status}: {reply.raw[:500]!r}"
    assert reply.status == 200 or 400 <= reply.status < 500, f"HTTP {reply.status}: {reply.raw[:500]!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), \
        f"HTTP {reply.status} with a body that is not JSON: {reply.headers.get('content-type')} {reply.raw[:500]!r}"
    try:
        body = json.loads(reply.raw)
    except ValueError:
        raise AssertionError(f"HTTP {reply.status}: reply is not JSON: {reply.raw[:500]!r}") from None
    hook = req.hook_name
    # what the request itself says the answer must be, as far as it can be told from outside
    if req.method != "POST":
        assert reply.status == 405, (reply.status, body)
    elif not hook:
        assert reply.status == 400, (reply.status, body)
    elif hook not in VMQ_HOOKS:
        assert reply.status == 404, (reply.status, body)
    elif req.query in _PLAIN_QUERIES and not any(name.lower() == "content-encoding" for name, _ in req.headers):
        if len(req.body) > MAX_BODY:
            assert reply.status == 413, (reply.status, body)
        else:
            assert reply.status != 413, (reply.status, body)
            if not isinstance(_client_parses(req.body), dict):
                assert reply.status == 400, (reply.status, body)
    if reply.status == 200:
        assert hook is not None and hook in VMQ_HOOKS and req.method == "POST", (hook, body)
        check_vernemq_reply(hook, reply, body)
    else:
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) \
            and body["error"], f"HTTP {reply.status}: not a clear error: {body!r}"
    if reply.status == 200:
        result = body.get("result") if isinstance(body, dict) else None
        return f"{hook}: 200 {result if isinstance(result, str) else 'error' if result else '{}'}"
    error = re.sub(r"'.*'", "'...'", body["error"])  # one event per kind of error, not per value
    return f"{reply.status} {error[:60]}"


def exchange(server: ServerProcess, req: Webhook) -> Reply:
    reply = send(server, req)
    if 400 <= reply.status < 500 and reply.headers.get("content-type", "").startswith("application/json"):
        REFUSED[reply.status] += 1
    outcome = judge(req, reply)
    if currently_in_test_context():  # --hypothesis-show-statistics tallies the outcomes
        event(outcome)
    return reply


def still_serving(server: ServerProcess, stubs: dict[str, Stubs]) -> None:
    """A normal webhook and a normal gRPC call get their usual answers."""
    assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}"
    reply = send(server, Webhook(b"auth_on_register", json.dumps({**spec.EXAMPLES["auth_on_register"],
                                                                   "username": "gooduser"}).encode()))
    assert (reply.status, json.loads(reply.raw)) == (200, {"result": "ok"}), reply
    pb = stubs["v3"].pb2
    with server.channel() as ch:
        answer = stubs["v3"].stub(ch).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=pb.ClientInfo(clientid="c", username="gooduser")), timeout=TIMEOUT)
    assert (answer.type, answer.bool_result) == (pb.ValuedResponse.STOP_AND_RETURN, True), answer


# -- webhooks: strategies -------------------------------------------------------------------------

#: text with lone surrogates now and then: JSON's "\ud800" escapes parse into such Python strings
#  (st.text() drops surrogates from its alphabet, hence lists of characters)
any_text = st.lists(st.one_of(st.characters(), st.characters(), st.characters(categories=["Cs"])),
                    max_size=30).map("".join)
INTERESTING = ["", "baduser", "gooduser", "t/demo", "t/1", "sensors/1", "sensors/#", "$SYS/brokers",
               "devices/dev-1/temp", "devices/other/cmd/x", "devices/+/#", "+", "#", "$share/g/t", "a//b", "/",
               "é/ü/😀", "\x00"]
json_text = st.one_of(st.sampled_from(INTERESTING), any_text)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), json_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(json_text, inner, max_size=4)),
                           max_leaves=10)


@dataclass(frozen=True)
class Raw:
    """JSON text spliced in as is: deep nesting, non-UTF-8 bytes in a string, absurd numbers."""

    data: bytes


def encode(body: dict[str, Any]) -> bytes:
    """json.dumps, with each top-level Raw value replaced by its bytes."""
    raws: dict[bytes, bytes] = {}
    plain: dict[str, Any] = {}
    for i, (key, value) in enumerate(body.items()):
        if isinstance(value, Raw):
            token = f"\x00\x01hookrules-fuzz-raw-{i}\x01\x00"
            raws[json.dumps(token).encode()] = value.data
            value = token
        plain[key] = value
    data = json.dumps(plain).encode()
    for placeholder, raw in raws.items():
        data = data.replace(placeholder, raw)
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


base64_text = st.one_of(
    st.binary(max_size=64).map(b64),                                   # valid
    st.binary(min_size=1, max_size=64).map(lambda b: b64(b).rstrip("=")),  # padding missing
    st.binary(min_size=3, max_size=64).map(lambda b: b64(b)[:2] + "\n" + b64(b)[2:]),  # whitespace inside
    json_text,                                                          # mostly not base64
    any_text,
)
deep = st.one_of(
    st.sampled_from([500, 990, 1000, 1100, 5000, 20_000]), st.integers(1, 3000)
).flatmap(lambda depth: st.sampled_from([
    Raw(b"[" * depth + b"]" * depth),
    Raw(b'{"a":' * depth + b"1" + b"}" * depth),
    Raw(b'[{"x":' * (depth // 2) + b"0" + b"}]" * (depth // 2)),
]))
non_utf8_string = st.binary(min_size=1, max_size=40).map(
    lambda b: Raw(b'"' + b.replace(b'"', b"").replace(b"\\", b"") + b'\xff"'))
absurd_number = st.sampled_from([Raw(b"9" * 5000), Raw(b"1e999999"), Raw(b"-0"), Raw(b"NaN"), Raw(b"Infinity"),
                                 Raw(b"1" + b"0" * 400)])
user_property = st.one_of(
    st.fixed_dictionaries({"key": base64_text, "val": base64_text}),
    st.fixed_dictionaries({}, optional={"key": json_values, "val": json_values}),
    json_values,
)
properties = st.one_of(
    st.fixed_dictionaries({}, optional={
        "p_user_property": st.one_of(st.lists(user_property, max_size=4), json_values),
        "p_authentication_data": st.one_of(base64_text, json_values),
        "p_authentication_method": json_values,
        "p_session_expiry_interval": json_values,
        "p_content_type": json_values,
        "p_correlation_data": json_values,
    }).flatmap(lambda props: st.dictionaries(json_text, json_values, max_size=2).map(lambda extra: {**extra, **props})),
    json_values,
)
qos = st.one_of(st.integers(0, 2), st.integers(-5, 300), st.sampled_from(["0", "1", "2", "3", "²", "٣", "x", ""]),
                json_values)
topic_entry = st.fixed_dictionaries({"topic": st.one_of(json_text, json_values)}, optional={
    "qos": qos, "no_local": st.one_of(st.booleans(), json_values), "rap": st.one_of(st.booleans(), json_values),
    "retain_handling": st.one_of(st.sampled_from(["send_retain", "send_if_new_sub", "dont_send"]), json_values),
})
topics = st.one_of(st.lists(st.one_of(topic_entry, topic_entry, json_text, json_values), max_size=5), json_values)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload": base64_text,
    "properties": properties,
    "topics": topics,
    "qos": qos,
    "retain": st.one_of(st.booleans(), json_values),
    "peer_port": st.one_of(st.integers(-1, 70000), json_values),
    "port": st.one_of(st.integers(-1, 70000), json_values),
    "clean_session": st.one_of(st.booleans(), json_values),
    "clean_start": st.one_of(st.booleans(), json_values),
}
FIELD_NAMES = sorted({k for example in spec.EXAMPLES.values() for k in example} | set(FIELD_VALUES)
                     | {"addr", "peer_addr", "client_id", "username", "password", "mountpoint", "topic"})


def field_value(name: str) -> st.SearchStrategy[Any]:
    specific = FIELD_VALUES.get(name, json_text)
    return st.one_of(specific, specific, specific, json_values, st.one_of(deep, non_utf8_string, absurd_number))


@st.composite
def fuzzed_body(draw: st.DrawFn, hook: str) -> dict[str, Any]:
    """The spec's body for the hook with up to four fields (its own or other hooks') replaced, dropped or
    nulled, plus random extra keys."""
    body: dict[str, Any] = dict(spec.EXAMPLES[hook])
    for key in draw(st.lists(st.sampled_from(sorted(set(body) | set(FIELD_NAMES))), max_size=4, unique=True)):
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop", "null"]))
        if action == "replace":
            body[key] = draw(field_value(key))
        elif action == "drop":
            body.pop(key, None)
        else:
            body[key] = None
    body.update(draw(st.dictionaries(json_text, json_values, max_size=2)))
    if draw(st.integers(0, 7)) == 7:  # one string near the body limit, just under or just over
        key = draw(st.sampled_from(sorted(body) or ["client_id"]))
        size = draw(st.integers(MAX_BODY - 2048, MAX_BODY + 64))
        body[key] = "x" * max(0, size - len(encode({k: v for k, v in body.items() if k != key})) - len(key) - 8)
    return body


url_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20).map(
    lambda s: urllib.parse.quote(s, safe="=&/"))
queries = st.one_of(st.sampled_from(_PLAIN_QUERIES), st.sampled_from(["?base64=", "?base64=yes", "?base64=OFF",
                                                                      "?base64=on&base64=off", "?x=base64"]),
                    url_text.map(lambda q: "?" + q), url_text.map(lambda q: "?base64=" + q))
paths = st.one_of(st.just("/"), url_text.map(lambda p: "/" + p.lstrip("/")))
#: header values as HTTP carries them: any bytes but control characters (those are not HTTP; see the port tests)
header_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=60)
hook_headers = st.one_of(
    st.sampled_from(VMQ_HOOKS),
    st.sampled_from(VMQ_HOOKS),
    st.sampled_from(EMQX_HOOK_NAMES),
    st.sampled_from(VMQ_HOOKS).flatmap(lambda h: st.sampled_from([h.upper(), f" {h}\t", h + "_", h[:-1], h + "\u00e9",
                                                                  h.replace("_", "-"), "x" * 5000])),
    header_text,
    st.just(""),
).map(lambda s: s.encode("utf-8"))


@st.composite
def field_webhooks(draw: st.DrawFn) -> Webhook:
    hook = draw(st.sampled_from(VMQ_HOOKS))
    query = draw(st.sampled_from(_PLAIN_QUERIES))  # other queries: test_webhook_hook_headers_and_queries
    return Webhook(hook.encode(), encode(draw(fuzzed_body(hook))), query=query)


def _example_bytes(hook: str) -> bytes:
    return json.dumps(spec.EXAMPLES[hook]).encode()


raw_bodies = st.one_of(
    st.binary(max_size=2048),
    st.tuples(st.sampled_from(VMQ_HOOKS), st.integers(0, 400)).map(lambda t: _example_bytes(t[0])[:t[1]]),  # truncated
    st.tuples(st.sampled_from(VMQ_HOOKS), st.binary(min_size=1, max_size=8), st.integers(0, 400)).map(
        lambda t: _example_bytes(t[0])[:t[2]] + t[1] + _example_bytes(t[0])[t[2]:]),  # bytes inserted anywhere
    st.sampled_from(VMQ_HOOKS).map(lambda h: json.dumps(spec.EXAMPLES[h]).encode("utf-16")),
    st.sampled_from(VMQ_HOOKS).map(lambda h: b"\xef\xbb\xbf" + _example_bytes(h)),
    st.sampled_from(VMQ_HOOKS).map(lambda h: _example_bytes(h).replace(b'"', b"'")),
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON that is not an object, mostly
    st.sampled_from([b"", b"{", b"}", b"null", b"[]", b"{}", b"\x00", b"{\"a\": 1}\x00", b"{}{}",
                     b" " * 70000, b"[" * 100_000, b"{\"a\":" * 3000]),
)


# -- webhooks: the properties ---------------------------------------------------------------------

@fuzz()
@given(req=field_webhooks())
def test_webhook_bodies_built_from_the_hooks_fields(fuzz_server: ServerProcess, req: Webhook) -> None:
    """Wrong types, missing fields, surrogates, near-limit strings, deep nesting, payloads, user properties."""
    exchange(fuzz_server, req)


PAYLOAD_HOOKS = sorted(h for h in VMQ_HOOKS if "payload" in spec.EXAMPLES[h])
M5_HOOKS = sorted(h for h in VMQ_HOOKS if "properties" in spec.EXAMPLES[h])


@fuzz(100)
@given(hook=st.sampled_from(PAYLOAD_HOOKS), payload=st.one_of(base64_text, base64_text, json_values),
       topic=st.one_of(st.just("t/1"), json_text), query=st.sampled_from(_PLAIN_QUERIES))
def test_webhook_payloads_base64_or_plain(fuzz_server: ServerProcess, hook: str, payload: Any, topic: Any,
                                          query: str) -> None:
    """Message hooks with any payload string, under base64 on and off (the URL's ?base64=)."""
    body = {**spec.EXAMPLES[hook], "payload": payload, "topic": topic}
    exchange(fuzz_server, Webhook(hook.encode(), encode(body), query=query))


@fuzz(100)
@given(hook=st.sampled_from(M5_HOOKS), props=properties,
       user=st.one_of(st.lists(user_property, max_size=5), json_values))
def test_webhook_mqtt5_properties_and_user_properties(fuzz_server: ServerProcess, hook: str, props: Any,
                                                      user: Any) -> None:
    if isinstance(props, dict) and "p_user_property" not in props:
        props = {**props, "p_user_property": user}
    body = {**spec.EXAMPLES[hook], "properties": props}
    exchange(fuzz_server, Webhook(hook.encode(), encode(body), query="?base64=off"))


@fuzz()
@given(hook=st.sampled_from(VMQ_HOOKS), body=raw_bodies, query=st.sampled_from(_PLAIN_QUERIES))
def test_webhook_raw_bodies(fuzz_server: ServerProcess, hook: str, body: bytes, query: str) -> None:
    """Non-UTF-8 bytes, truncated and spliced JSON, other encodings, garbage."""
    exchange(fuzz_server, Webhook(hook.encode(), body, query=query))


@fuzz()
@given(hook=st.one_of(hook_headers, st.none()), query=queries, data=st.data())
def test_webhook_hook_headers_and_queries(fuzz_server: ServerProcess, hook: bytes | None, query: str,
                                          data: st.DataObject) -> None:
    name = hook.decode("utf-8", "surrogateescape").strip(" \t") if hook is not None else ""
    body = _example_bytes(name if name in VMQ_HOOKS else data.draw(st.sampled_from(VMQ_HOOKS)))
    exchange(fuzz_server, Webhook(hook, body, query=query))


@fuzz(60)
@given(hook=st.sampled_from(VMQ_HOOKS), path=paths)
def test_webhook_any_path(fuzz_server: ServerProcess, hook: str, path: str) -> None:
    """VerneMQ's endpoint URL is free: any path is the webhook."""
    exchange(fuzz_server, Webhook(hook.encode(), _example_bytes(hook), path=path, query="?base64=off"))


@fuzz(60)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
       hook=st.one_of(hook_headers, st.none()),
       path=paths.filter(lambda p: not p.startswith(HEALTH_PATHS) and "%0A" not in p),  # newline: its own test
       body=st.one_of(st.just(b""), raw_bodies))
def test_webhook_other_methods(fuzz_server: ServerProcess, method: str, hook: bytes | None, path: str,
                               body: bytes) -> None:
    exchange(fuzz_server, Webhook(hook, body, method=method, path=path))


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


@fuzz(40)
@given(encoding=st.sampled_from(["gzip", "deflate", "br", "identity", "x-unknown"]),
       compressed=st.booleans(), body=st.one_of(st.sampled_from(VMQ_HOOKS).map(_example_bytes), st.binary(max_size=64)))
def test_webhook_content_encoding(fuzz_server: ServerProcess, encoding: str, compressed: bool, body: bytes) -> None:
    """A Content-Encoding header, true or not (VerneMQ sends none): a reply VerneMQ reads or a clear 4xx."""
    data = _compress(encoding, body) if compressed else body
    exchange(fuzz_server, Webhook(b"auth_on_register", data, headers=(("Content-Encoding", encoding.encode()),)))


# Minimal reproductions of what the fuzzing above found, as plain cases.

@pytest.mark.parametrize("path", ["/%0A", "/a%0Ab", "/%0D%0A"])
def test_webhook_path_with_an_encoded_newline(fuzz_server: ServerProcess, path: str) -> None:
    """Any endpoint path is the webhook, a percent-encoded newline in it too."""
    exchange(fuzz_server, Webhook(b"auth_on_register", _example_bytes("auth_on_register"), path=path))


@pytest.mark.parametrize(("query", "hook", "body"), [
    pytest.param("?base64=off", "auth_on_publish", b'{"topic": "t", "payload": "\\ud800"}', id="surrogate-payload"),
    pytest.param("?base64=off", "on_deliver", b'{"topic": "t", "payload": "a\\udfffb"}', id="surrogate-deliver"),
])
def test_webhook_lone_surrogate_in_a_plain_payload(fuzz_server: ServerProcess, query: str, hook: str,
                                                   body: bytes) -> None:
    """JSON lets a string hold a lone surrogate escape; with base64 off the payload is such a string."""
    exchange(fuzz_server, Webhook(hook.encode(), body, query=query))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_webhook_body_that_is_not_in_its_content_encoding(fuzz_server: ServerProcess, encoding: str) -> None:
    """A body that is not in the Content-Encoding its header names."""
    exchange(fuzz_server, Webhook(b"auth_on_register", b"{}", headers=(("Content-Encoding", encoding.encode()),)))


@pytest.mark.parametrize(("encoding", "body"), [(b"deflate", b"{}"), (b"gzip", b"{}")])
def test_webhook_body_that_is_not_in_its_content_encoding_sent_after_its_headers(
        fuzz_server: ServerProcess, encoding: bytes, body: bytes) -> None:
    """As above, with the body in a second TCP segment (as a busy client or network may send it): an answer."""
    with socket.create_connection(("127.0.0.1", fuzz_server.http_port), timeout=3.0) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\nContent-Type: application/json"
                     b"\r\nContent-Encoding: " + encoding + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.05)  # not a timing assertion: only makes the body a segment of its own
        sock.sendall(body)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
        except TimeoutError:
            raise AssertionError(f"no answer in 3 s to Content-Encoding {encoding!r} with body {body!r}") from None
        reply = Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    if 400 <= reply.status < 500 and reply.headers.get("content-type", "").startswith("application/json"):
        REFUSED[reply.status] += 1
    judge(Webhook(b"auth_on_register", body, headers=(("Content-Encoding", encoding),)), reply)


def test_every_refused_webhook_was_counted_once(fuzz_server: ServerProcess, stubs: dict[str, Stubs]) -> None:
    """Each JSON 4xx above is one hookrules_bad_requests_total{broker="vernemq"}, under a documented reason;
    and after all of it the server answers normal calls."""
    still_serving(fuzz_server, stubs)
    counted = bad_requests(fuzz_server, "vernemq")
    assert set(counted) <= WEBHOOK_REASONS, f"undocumented reasons: {set(counted) - WEBHOOK_REASONS}"
    assert sum(counted.values()) == sum(REFUSED.values()), (counted, REFUSED)
    for status, reasons in REASON_FOR_STATUS.items():
        assert sum(counted.get(r, 0) for r in reasons) == REFUSED[status], (status, counted, REFUSED)


# -- gRPC: requests built from the protos ---------------------------------------------------------

def _rpcs() -> list[tuple[str, str, str, str]]:
    """(version, rpc, request message, response message) from the .proto files themselves."""
    out = []
    for version in ("v2", "v3"):
        text = (PROTOS / f"exhook_{version}.proto").read_text()
        for rpc, req, resp in re.findall(r"rpc\s+(\w+)\s*\(\s*(\w+)\s*\)\s*returns\s*\(\s*(\w+)\s*\)", text):
            out.append((version, rpc, req, resp))
    return out


RPCS = _rpcs()
PROTO_TEXT = st.one_of(st.sampled_from(INTERESTING + ["allow_publish", "false", "username", "peerhost"]),
                       st.text(max_size=40), st.integers(0, 20_000).map(lambda n: "é" * n))
PROTO_BYTES = st.one_of(st.binary(max_size=256), st.sampled_from([b"", b"\x00", b"\xff\xfe"]),
                        st.integers(0, 100_000).map(lambda n: b"\x00" * n))
_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}


#: strings the bundled rules look at, so that random requests reach every branch of them
TOPIC_TEXT = st.one_of(st.sampled_from(INTERESTING), st.tuples(
    st.sampled_from(["t/", "t/demo", "sensors/", "devices/dev-1/", "devices/x/", "$SYS/", ""]), st.text(max_size=12),
).map("".join))
CLIENT_ID_TEXT = st.sampled_from(["dev-1", "x", "+", "#", ""])
NAMED_TEXT = {"topic": TOPIC_TEXT, "name": TOPIC_TEXT, "username": st.sampled_from(["baduser", "gooduser", ""]),
              "clientid": CLIENT_ID_TEXT, "from": CLIENT_ID_TEXT}


def _scalar(fd: Any) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return st.one_of(NAMED_TEXT[fd.name], NAMED_TEXT[fd.name], PROTO_TEXT) if fd.name in NAMED_TEXT else PROTO_TEXT
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return PROTO_BYTES
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: numbers it does not name arrive too
        return st.one_of(st.sampled_from([v.number for v in fd.enum_type.values]), st.integers(-(2**31), 2**31 - 1))
    lo, hi = _INT_RANGES[fd.type]
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, 2, 3]))


def _repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def message_strategy(cls: Any) -> st.SearchStrategy[Any]:
    """Any value of a message class: each field set three times in four, to any value its type allows."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in cls.DESCRIPTOR.fields:
        one: st.SearchStrategy[Any]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            one = st.dictionaries(_scalar(key), _scalar(value), max_size=4)
        else:
            one = (message_strategy(message_factory.GetMessageClass(fd.message_type))
                   if fd.type == FieldDescriptor.TYPE_MESSAGE else _scalar(fd))
            if _repeated(fd):
                one = st.lists(one, max_size=4)
        fields[fd.name] = st.one_of(one, one, one, st.none())  # (optional= keys would be left out too often)
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**{k: v for k, v in kw.items() if v is not None}))


def emqx_hooks_with_rules(server: ServerProcess) -> set[str]:
    """The EMQX hooks some file answers: its own, or a portable one (hooks.CHAINS)."""
    files = {p.name[: -len(".star")] for p in server.rules.glob("*.star")}
    return {hook for hook in EMQX_HOOK_NAMES if files & set(CHAINS[hook])}


def check_exhook_reply(stubs: Stubs, server: ServerProcess, rpc: str, resp_name: str, request: Any,
                       reply: Any) -> None:
    pb = stubs.pb2
    assert type(reply).__name__ == resp_name
    if resp_name == "EmptySuccess":
        assert reply.SerializeToString() == b"", reply
    elif resp_name == "LoadedResponse":
        names = [h.name for h in reply.hooks]
        assert len(names) == len(set(names)) and set(names) == emqx_hooks_with_rules(server), names
    else:
        vr = pb.ValuedResponse
        assert reply.type in (vr.CONTINUE, vr.IGNORE, vr.STOP_AND_RETURN), reply
        which = reply.WhichOneof("value")
        want = "message" if rpc == "OnMessagePublish" else "bool_result"
        if reply.type == vr.IGNORE:
            assert which is None, reply
        elif reply.type == vr.STOP_AND_RETURN:
            assert which == want, f"{rpc}: STOP_AND_RETURN needs {want}, got {which}"
        else:
            assert which in (None, want), reply
        if which == "message":  # the request's message comes back; only topic, payload, qos may change
            sent, got = request.message, reply.message
            assert (got.id, getattr(got, "from"), got.node, got.timestamp) == \
                   (sent.id, getattr(sent, "from"), sent.node, sent.timestamp)
            assert set(got.headers) - set(sent.headers) <= {"allow_publish"}, got.headers
            for key, value in sent.headers.items():
                if key != "allow_publish":
                    assert got.headers[key] == value, key
            if got.headers.get("allow_publish") != sent.headers.get("allow_publish"):
                assert got.headers["allow_publish"] == "false", got.headers


@pytest.mark.parametrize(("version", "rpc", "req_name", "resp_name"), RPCS, ids=[f"{v}-{r}" for v, r, _, _ in RPCS])
def test_exhook_random_requests_get_ok_replies_of_the_right_shape(
        fuzz_server: ServerProcess, stubs: dict[str, Stubs], channel: grpc.Channel, version: str, rpc: str,
        req_name: str, resp_name: str) -> None:
    s = stubs[version]
    call = getattr(s.stub(channel), rpc)
    before = bad_requests(fuzz_server, "emqx")

    @fuzz(40 if resp_name == "ValuedResponse" else 12)
    @given(request=message_strategy(getattr(s.pb2, req_name)))
    def run(request: Any) -> None:
        try:
            reply = call(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            raise AssertionError(f"{version} {rpc}: {exc.code()} {exc.details()!r}") from None
        check_exhook_reply(s, fuzz_server, rpc, resp_name, request, reply)
        if resp_name == "ValuedResponse":
            which = reply.WhichOneof("value")
            event(f"{s.pb2.ValuedResponse.ResponsedType.Name(reply.type)} {which or ''}"
                  f"{'=' + str(reply.bool_result) if which == 'bool_result' else ''}"
                  f"{' allow_publish=false' if reply.message.headers.get('allow_publish') == 'false' else ''}")

    run()
    assert increased(before, bad_requests(fuzz_server, "emqx")) == {}, "valid requests counted as bad (internal_error?)"


# -- gRPC: bytes that may not be the protobuf at all ----------------------------------------------

_DEEP_GROUPS = b"\x0b" * 200 + b"\x0c" * 200  # nested unknown groups, past the parser's depth limit
GARBAGE = [
    b"\xff\xff\xff\xff not a protobuf",
    b"\x0a\x03\x12\x01\xff",          # field 1 (a message) holding field 2, a string of bad UTF-8
    b"\x12\x02\xc3\x28",              # field 2 as a string of bad UTF-8 (a string in some requests)
    b"\x08\x80",                      # truncated varint
    b"\x0a\x7f\x00",                  # length past the end
    b"\x0a\xff\xff\xff\xff\x0f",      # absurd length
    _DEEP_GROUPS,
    b"\x0f",                          # field 1, wire type 7 (none)
    b"\x0c",                          # end group without a start
    b"",                              # the empty message: valid
    b"\x08\x01",                      # a varint where a message is declared: valid (an unknown field)
]
garbage_bytes = st.one_of(st.binary(max_size=512), st.sampled_from(GARBAGE),
                          st.lists(st.sampled_from(GARBAGE), min_size=2, max_size=4).map(b"".join))


def _raw_method(channel: grpc.Channel, version: str, rpc: str) -> Any:
    return channel.unary_unary(f"/emqx.exhook.{version}.HookProvider/{rpc}",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)


def test_exhook_garbage_bytes_are_invalid_argument_never_unknown(fuzz_server: ServerProcess, stubs: dict[str, Stubs],
                                                                 channel: grpc.Channel) -> None:
    before = bad_requests(fuzz_server, "emqx")
    refused = [0]

    @fuzz()
    @given(which=st.sampled_from(RPCS), data=garbage_bytes)
    def run(which: tuple[str, str, str, str], data: bytes) -> None:
        version, rpc, req_name, resp_name = which
        pb = stubs[version].pb2
        try:
            getattr(pb, req_name).FromString(data)
            decodes = True
        except DecodeError:
            decodes = False
        try:
            raw = _raw_method(channel, version, rpc)(data, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{version} {rpc}: {exc.code()} {exc.details()!r}"
            assert not decodes, f"{version} {rpc}: refused bytes that are a valid {req_name}: {exc.details()!r}"
            assert "cannot decode the" in (exc.details() or ""), exc.details()
            refused[0] += 1
            return
        assert decodes, f"{version} {rpc}: answered OK to bytes that are not a {req_name}"
        getattr(pb, resp_name).FromString(raw)  # the reply is the declared message

    run()
    assert refused[0] > 0
    assert increased(before, bad_requests(fuzz_server, "emqx")) == {"undecodable": float(refused[0])}
    still_serving(fuzz_server, stubs)


# -- garbage on the ports -------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x04\x13\x01\x13\x02\x01\x00" + bytes(64)


def poke(port: int, data: bytes, half_close: bool, read_for: float = 2.0) -> bytes:
    """Send bytes on a fresh connection, read what comes back until EOF or `read_for` seconds, close."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + read_for
            while len(received) < 1 << 20:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return received


def check_http_answer(received: bytes) -> None:
    """Whatever the HTTP port answers to garbage (if anything), it is no 5xx."""
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", received)
    assert status is None or int(status[1]) < 500, received[:500]


port_garbage = st.one_of(
    st.binary(min_size=1, max_size=2048),
    st.binary(max_size=512).map(lambda b: H2_PREFACE + b),
    st.binary(max_size=512).map(lambda b: b"POST / HTTP/1.1\r\nvernemq-hook: auth_on_register\r\n" + b),
    st.binary(max_size=512).map(lambda b: b"POST / HTTP/1.1\r\nHost: x\r\n" + b + b"\r\n\r\n"),
)


def test_garbage_on_the_ports(fuzz_server: ServerProcess, stubs: dict[str, Stubs]) -> None:
    """Random bytes on fresh connections to both ports, half-closed (EOF) or left open while reading."""

    @fuzz(60)
    @given(port=st.sampled_from(["grpc", "http"]), data=port_garbage, half_close=st.integers(0, 3))
    def run(port: str, data: bytes, half_close: int) -> None:
        number = fuzz_server.grpc_port if port == "grpc" else fuzz_server.http_port
        received = poke(number, data, half_close=half_close != 0, read_for=2.0 if half_close else 0.3)
        if port == "http":
            check_http_answer(received)

    run()
    still_serving(fuzz_server, stubs)


CLASSIC = [
    pytest.param("grpc", b"GET / HTTP/1.0\r\n\r\n", id="http1.0-to-grpc"),
    pytest.param("grpc", b"POST /emqx.exhook.v3.HookProvider/OnClientAuthenticate HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
                 id="http1.1-grpc-call-to-grpc"),
    pytest.param("grpc", H2_PREFACE[:10], id="truncated-preface-to-grpc"),
    pytest.param("grpc", H2_PREFACE + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04", id="truncated-settings-frame"),
    pytest.param("grpc", H2_PREFACE + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff" * 4, id="preface-then-garbage-frames"),
    pytest.param("grpc", H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, then HEADERS with junk HPACK
                 + b"\x00\x00\x05\x01\x05\x00\x00\x00\x01\xff\xff\xff\xff\xff", id="bad-hpack"),
    pytest.param("grpc", TLS_HELLO, id="tls-hello-to-grpc"),
    pytest.param("http", H2_PREFACE, id="h2-preface-to-http"),
    pytest.param("http", TLS_HELLO, id="tls-hello-to-http"),
    pytest.param("http", b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\nContent-Length: 100\r\n\r\n"
                         b'{"client_id"', id="truncated-body-to-http"),
    pytest.param("http", b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_reg", id="truncated-headers-to-http"),
    pytest.param("http", b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", id="bad-chunk-size"),
    pytest.param("http", b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth\x01\r\nContent-Length: 2\r\n\r\n{}",
                 id="control-char-in-hook-header"),
    pytest.param("http", b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\nContent-Length: 2\r\n\r\n{}"
                         b"\x00\x01garbage after a good request\r\n\r\n", id="good-request-then-garbage"),
]


@pytest.mark.parametrize(("port", "data"), CLASSIC)
@pytest.mark.parametrize("half_close", [True, False], ids=["half-close", "wait"])
def test_classic_wrong_protocols_on_the_ports(fuzz_server: ServerProcess, stubs: dict[str, Stubs], port: str,
                                              data: bytes, half_close: bool) -> None:
    number = fuzz_server.grpc_port if port == "grpc" else fuzz_server.http_port
    received = poke(number, data, half_close=half_close, read_for=2.0 if half_close else 0.3)
    if port == "http":
        check_http_answer(received)
    still_serving(fuzz_server, stubs)


def test_half_sent_requests_do_not_hold_up_others(fuzz_server: ServerProcess, stubs: dict[str, Stubs]) -> None:
    """Connections left hanging mid-request on both ports; normal calls are answered meanwhile."""
    partial = [(fuzz_server.http_port, (b"POST / HTTP/1.1\r\nHost: x\r\nvernemq-hook: auth_on_register\r\n"
                                        b"Content-Length: 1000\r\n\r\n{\"client_id\"")),
               (fuzz_server.http_port, b"POST / HTTP/1.1\r\nHost: x\r\n"),
               (fuzz_server.grpc_port, H2_PREFACE[:12]),
               (fuzz_server.grpc_port, H2_PREFACE)]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for port, _ in partial]
    try:
        for sock, (_, data) in zip(socks, partial, strict=True):
            sock.sendall(data)
        still_serving(fuzz_server, stubs)
    finally:
        for sock in socks:
            sock.close()
    still_serving(fuzz_server, stubs)


# -- after all of it ------------------------------------------------------------------------------

_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def traceback_summary(log: str) -> Counter[str]:
    """Each logged traceback as 'LEVEL logger: message -> the exception it ends with', numbers elided."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not _LOG_RECORD.match(line) or i + 1 >= len(lines) or not lines[i + 1].startswith("Traceback"):
            continue
        block = []
        for following in lines[i + 1:]:
            if _LOG_RECORD.match(following):
                break
            block.append(following)
        raised = [j for j, ln in enumerate(block)
                  if ln and not ln.startswith((" ", "Traceback", "During handling", "The above"))]
        last = block[raised[-1]] if raised else "?"
        if last.endswith("message:") and raised[-1] + 1 < len(block):  # aiohttp's errors say what on the next line
            last += " " + block[raised[-1] + 1].strip()
        head = _LOG_RECORD.sub("", line)[:90]
        tail = re.sub(r"\\u[0-9a-f]{4}|\\x[0-9a-f]{2}|\d+", "N", last)[:130]
        found[f"{head} -> {tail}"] += 1
    return found


def test_server_is_still_up_and_logged_no_traceback(fuzz_server: ServerProcess, stubs: dict[str, Stubs]) -> None:
    still_serving(fuzz_server, stubs)
    log = fuzz_server.log()
    if "Traceback" in log:
        found = traceback_summary(log)
        pytest.fail(f"{log.count('Traceback')} traceback(s) in the server log ({fuzz_server.log_path}):\n"
                    + "\n".join(f"{n:4d} x {what}" for what, n in found.most_common()), pytrace=False)
