"""jsonwire: orjson's speed with json's meaning, on both sides of the webhook port.

The reference is json: decode(raw) must give json.loads(raw.decode("utf-8"))'s value or fail where it
fails; encode(value) must mean what json.dumps(value, allow_nan=False) means or fail where it fails.
Checked on every input where orjson and json are known to part ways (enumerated), on random JSON
values and on random byte strings from JSON's alphabet (hypothesis), and end to end on a real server,
where a body json reads and orjson would read otherwise gets the answer json's reading gives.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookrules.adapters.jsonwire import decode, encode

from .support import ServerProcess

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, with types kept apart (1 is not 1.0 nor True) and NaN equal to NaN; by an
    explicit stack, not recursion: the values nest as deep as the parsers go."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):
                return False
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            pending.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y))
        elif x != y:
            return False
    return True


def _reference_decode(raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return "refused", None


def _decoded(raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(raw)
    except (ValueError, RecursionError):
        return "refused", None


def assert_decodes_like_json(raw: bytes) -> None:
    want, got = _reference_decode(raw), _decoded(raw)
    assert want[0] == got[0] and _same(want[1], got[1]), f"{raw[:80]!r}: json {want[0]}, jsonwire {got[0]}"


#: every input where orjson.loads and json.loads part ways (found by comparing them), and their neighbours
PARTING = [
    b"NaN", b'{"a": NaN}', b"Infinity", b"-Infinity", b'{"a": [Infinity, -Infinity]}',
    b"1e999999", b"-1e999", b'{"a": 1.7976931348623157e309}', b'{"a": 1.7976931348623157e308}',
    b"1" + b"0" * 400, b"9" * 5000, b"-" + b"9" * 4300,
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b"123456789012345678", b"1234567890123456789",
    b'{"peer_port": 18446744073709551616}', b'{"a": 1.0000000000000000000001}', b'{"a": 12345678901234567890e-5}',
    b'{"a": "12345678901234567890"}', b'{"12345678901234567890": 1}',
    b'"\\ud800"', b'"a\\udfffb"', b'{"\\ud800": 1}', b'"\\ud83d\\ude00"', b'"\\udc00\\ud800"', b'"\\ud800\\u0041"',
    b'"\xed\xa0\x80"', b'"\xff"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"', b"\xef\xbb\xbf{}", b"\xef\xbb\xbf",
    b"[" * 400 + b"]" * 400, b"[" * 401 + b"]" * 401, b"[" * 990 + b"]" * 990, b"[" * 1023 + b"]" * 1023, b"[" * 1024 + b"]" * 1024, b"[" * 1025 + b"]" * 1025, b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 1100 + b"1" + b"}" * 1100, b'{"a":' * 995 + b"1" + b"}" * 995, b"[{}" * 500 + b"]" * 500,
    b'{"a": 1, "b": 2, "a": 3}', b'{"a": -0}', b'{"a": -0.0}', b'{"a": 1E2}', b'{"a": 4.9e-324}', b'{"a": 1e-400}',
    b"", b" ", b"{}", b"{} ", b"{}{}", b'{"a":1,}', b"[1,]", b"{'a': 1}", b'{"a": True}', b'{"a": 01}', b'{"a": .5}',
    b'{"a": +1}', b'{"a": 1.}', b'{"a": "\x01"}', b'{"a": "\\u0000"}', b'{"a":\x0c1}', b'{"a": 1}\x00', b"\x00",
]


@pytest.mark.parametrize("raw", PARTING, ids=lambda raw: repr(raw[:40]))
def test_decode_where_the_libraries_part_ways(raw: bytes) -> None:
    assert_decodes_like_json(raw)


def test_a_long_integer_keeps_its_exact_value() -> None:
    """orjson reads 2**64 as a float; a rule must see the integer a body holds."""
    assert decode(b'{"n": 18446744073709551616}') == {"n": 2**64}
    assert type(decode(b'{"n": -9223372036854775809}')["n"]) is int


_big_ints = st.integers(-(2**80), 2**80) | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64])
_text = st.text() | st.lists(st.characters(categories=["Cs"]) | st.characters(), max_size=6).map("".join)
_scalars = st.none() | st.booleans() | _big_ints | st.floats() | _text
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                       max_leaves=20)


@SETTINGS
@given(_values, st.booleans())
def test_decode_random_json_like_json(value: Any, ascii_only: bool) -> None:
    """Whatever json writes (NaN, infinities, long integers, lone surrogates included), read back alike."""
    try:
        raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw is no UTF-8: such bytes are the next test's
        raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert_decodes_like_json(raw)


_alphabet = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\\", b"u", b"d8", b"00", b"e", b"E",
                             b".", b"-", b"+", b"0", b"1", b"9" * 10, b"a", b"true", b"null", b"NaN", b"Infinity",
                             b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\x00", b"\n", b"\xef\xbb\xbf"])


@SETTINGS
@given(st.lists(_alphabet, max_size=40).map(b"".join))
def test_decode_random_bytes_like_json(raw: bytes) -> None:
    assert_decodes_like_json(raw)


def _reference_encode(value: Any) -> tuple[str, Any]:
    try:
        return "ok", json.loads(json.dumps(value, allow_nan=False))
    except (ValueError, TypeError):
        return "refused", None


def _encoded(value: Any) -> tuple[str, Any]:
    try:
        out = encode(value)
    except (ValueError, TypeError):
        return "refused", None
    assert isinstance(out, bytes)
    return "ok", json.loads(out)  # json reads it back: valid JSON, lone surrogates escaped, never raw


#: every value where orjson.dumps and json.dumps part ways, and their neighbours
ENCODE_PARTING: list[Any] = [
    {"a": math.nan}, {"a": math.inf}, [-math.inf], {"a": None}, None, {"a": "null"}, {"null": 1},
    {"a": "\ud800"}, {"topic": "a\udfffb"}, {"\ud800": 1}, {1: 2}, {True: 1}, {None: 1}, {1.5: 1}, {(1, 2): 1},
    {"a": 2**64}, {"a": -(2**63) - 1}, {"a": 2**63 - 1}, {"a": "é\u2028\U0001f600"}, {"a": (1, 2)}, {"a": b"x"},
    {"a": {1, 2}}, {"a": object()}, {"a": 1.5}, {"a": -0.0}, {"result": "ok"}, {}, {"result": {"error": "x"}},
]


@pytest.mark.parametrize("value", ENCODE_PARTING, ids=lambda v: repr(v)[:40])
def test_encode_where_the_libraries_part_ways(value: Any) -> None:
    want, got = _reference_encode(value), _encoded(value)
    assert want[0] == got[0] and _same(want[1], got[1]), f"{value!r}: json {want!r}, jsonwire {got!r}"


@SETTINGS
@given(_values)
def test_encode_random_values_like_json(value: Any) -> None:
    want, got = _reference_encode(value), _encoded(value)
    assert want[0] == got[0] and _same(want[1], got[1]), f"{value!r}: json {want!r}, jsonwire {got!r}"


# -- end to end: a real server reads such bodies as json does, and answers them ---------------------------


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Rules that say what they read: the port's type and value, and the topics of a subscription."""
    rules = tmp_path_factory.mktemp("jsonwire") / "rules"
    rules.mkdir()
    (rules / "auth_on_register.star").write_text(
        'deny(type(client.peerport) + " " + str(client.peerport) + " " + str(request["extra"]))\n')
    (rules / "auth_on_subscribe.star").write_text('allow() if topic == "ok" else deny()\n')
    server = ServerProcess(rules, log_path=rules.parent / "server.log")
    try:
        yield server
    finally:
        server.stop()


def _post(server: ServerProcess, hook: str, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers={"Content-Type": "application/json", "vernemq-hook": hook})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(("port", "extra", "seen"), [
    (b"18446744073709551616", b"NaN", "int 18446744073709551616 nan"),
    (b"-9223372036854775809", b"-Infinity", "int -9223372036854775809 -inf"),
    (b"1883", b'"\\ud83d\\ude00"', "int 1883 \U0001f600"),
    (b"1883", b"1e999", "int 1883 inf"),
])
def test_the_rule_sees_what_json_reads(echo_server: ServerProcess, port: bytes, extra: bytes, seen: str) -> None:
    body = b'{"client_id": "c", "username": "u", "peer_port": ' + port + b', "extra": ' + extra + b"}"
    assert _post(echo_server, "auth_on_register", body) == (200, {"result": {"error": seen}})


def test_a_lone_surrogate_topic_is_echoed_in_a_partial_refusal(echo_server: ServerProcess) -> None:
    """A refused topic of a subscription is sent back: a lone surrogate json read must be written back
    escaped, as before (orjson refuses to write it), not turned into an internal error."""
    body = b'{"client_id": "c", "topics": [{"topic": "ok", "qos": 1}, {"topic": "\\ud800", "qos": 0}]}'
    status, reply = _post(echo_server, "auth_on_subscribe", body)
    assert status == 200
    assert reply == {"result": "ok", "topics": [{"topic": "ok", "qos": 1}, {"topic": "\ud800", "qos": 128}]}


def test_a_reply_is_compact_json_with_utf8_text(echo_server: ServerProcess) -> None:
    """The reply's JSON is orjson's form (VerneMQ's jsx reads it as it read json's)."""
    body = json.dumps({"client_id": "c", "topics": [{"topic": "ok", "qos": 1}, {"topic": "é", "qos": 0}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", echo_server.http_port, timeout=10)
    try:
        conn.request("POST", "/", body=body, headers={"vernemq-hook": "auth_on_subscribe"})
        raw = conn.getresponse().read()
    finally:
        conn.close()
    assert raw == '{"result":"ok","topics":[{"topic":"ok","qos":1},{"topic":"é","qos":128}]}'.encode()
