"""The helpers a rule calls: topic_match, json_decode, log, range, type and the decision functions.

Called directly and, where it matters, from a compiled rule.
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hookrules.decisions import ALLOW, IGNORE, Deny, Drop, Rewrite
from hookrules.events import Client, Event, Message, frozen_map
from hookrules.hooks import HOOKS
from hookrules.lang import builtins
from hookrules.lang.builtins import (
    DECISIONS, MAX_JSON_BYTES, MAX_LOG_CHARS, MAX_RANGE, SAFE_BUILTINS, Decided, json_decode, make_log, provided_names,
    safe_range, topic_filter_test, topic_match, type_name, validate_filter,
)
from hookrules.ruleset import Limits, RuleRuntimeError, compile_rule

RULE_LOGGER = "hookrules.rule"


def run_publish(src: str, topic: str = "t/a", payload: bytes = b"") -> object:
    rule = compile_rule("rules/message.publish.star", src.encode(), HOOKS["message.publish"])
    event = Event("message.publish", "emqx", Client(id="pub"),
                  frozen_map({"message": Message(topic=topic, payload=payload)}))
    return rule.run(event, Limits())


# -- topic_match --------------------------------------------------------------------------------


@pytest.mark.parametrize(("filter", "topic", "expected"), [
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/", False),
    ("/a", "/a", True),
    ("a", "A", False),
    # '+' is exactly one level, which may be empty
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("+/+", "/", True),
    ("a/+/c", "a//c", True),
    ("+/b", "/b", True),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "/a", False),
    ("+/+/+", "a/b/c", True),
    # '#' is the rest, the parent level included
    ("a/#", "a", True),
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "a/", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("a/b/#", "a/b", True),
    ("a/b/#", "a", False),
    ("a/+/#", "a/x", True),
    ("a/+/#", "a/x/y/z", True),
    ("a/+/#", "a", False),  # '#' includes its parent level "a/+", but '+' still needs a level
    ("+/#", "a", True),
    ("/#", "/a", True),
    ("/#", "a", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    # '$' topics are matched only by a filter whose first level is literal
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("+/#", "$share/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/x", "$SYS/x", True),
    ("a/#", "a/$SYS", True),  # '$' only matters on the first level
])
def test_topic_match(filter: str, topic: str, expected: bool) -> None:
    assert topic_match(filter, topic) is expected


@pytest.mark.parametrize("bad", ["a/#/b", "#/a", "a/b#", "a/#b", "a+", "+a", "a/+b/c", "a/b+", ""])
def test_invalid_filters_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="topic filter"):
        topic_match(bad, "a/b")
    with pytest.raises(ValueError, match="topic filter"):
        validate_filter(bad)


@pytest.mark.parametrize("good", ["#", "+", "a/#", "a/+/#", "+/+", "/", "$SYS/#", "a//b", "sport/tennis/+"])
def test_valid_filters(good: str) -> None:
    validate_filter(good)  # no exception
    assert isinstance(topic_match(good, "a/b"), bool)


@pytest.mark.parametrize(("filter", "topic", "message"), [
    (5, "a", "filter must be a string"),
    ("a", None, "topic must be a string"),
    (b"a", "a", "filter must be a string"),
])
def test_topic_match_needs_strings(filter: object, topic: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        topic_match(filter, topic)  # type: ignore[arg-type]


def test_validate_filter_needs_a_string() -> None:
    with pytest.raises(TypeError):
        validate_filter(None)  # type: ignore[arg-type]


def test_topic_match_in_a_rule_reports_a_bad_filter_as_a_runtime_error() -> None:
    with pytest.raises(RuleRuntimeError) as info:
        run_publish("x = 1\nif topic_match('a/#/b', message.topic):\n    allow()\n")
    err = info.value.error
    assert err.code == "runtime_error"
    assert (err.location.line, err.location.col) == (2, 4)
    assert "ValueError" in err.message and "'a/#/b'" in err.message


def test_topic_match_in_a_rule() -> None:
    src = "if topic_match('sensors/+/temp', message.topic):\n    drop('temp')\nallow()\n"
    assert run_publish(src, "sensors/1/temp") == Drop("temp")
    assert run_publish(src, "sensors/1/hum") == ALLOW


# -- json_decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (b'{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
    ('{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
    ('"x"', "x"),
    ("3", 3),
    ('{"t": "\\u00e9"}', {"t": "é"}),
    ('{"t": "é"}'.encode(), {"t": "é"}),
    (bytearray(b"[1]"), [1]),
    (b" [] ", []),
])
def test_json_decode(data: str | bytes, expected: object) -> None:
    assert json_decode(data) == expected


@pytest.mark.parametrize("data", [b"{", "{", b"", "", "{'a': 1}", "[1,]", "nan?", b"\xef\xbb\xbf{}"])
def test_json_decode_invalid_json_raises_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        json_decode(data)


@pytest.mark.parametrize("data", [b'"\xff"', b'{"a": "\xc3"}', b"\x80"])
def test_json_decode_non_utf8_bytes_raise(data: bytes) -> None:
    with pytest.raises(UnicodeDecodeError):
        json_decode(data)


@pytest.mark.parametrize("data", [5, None, ["a"], {"a": 1}])
def test_json_decode_needs_str_or_bytes(data: object) -> None:
    with pytest.raises(TypeError, match="needs str or bytes"):
        json_decode(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [bytes, str])
def test_json_decode_refuses_input_over_1_mib(kind: type) -> None:
    text = '"' + "x" * (MAX_JSON_BYTES - 1) + '"'  # one over
    data = text.encode() if kind is bytes else text
    with pytest.raises(ValueError, match="over"):
        json_decode(data)
    at_limit = text[:-2] + '"'
    assert len(json_decode(at_limit.encode() if kind is bytes else at_limit)) == MAX_JSON_BYTES - 2


def test_json_decode_of_a_payload_in_a_rule() -> None:
    src = "d = json_decode(message.payload)\nif d['temp'] > 30:\n    deny('hot')\nallow()\n"
    assert run_publish(src, payload=json.dumps({"temp": 40}).encode()) == Deny("hot")
    assert run_publish(src, payload=b'{"temp": 20}') == ALLOW
    with pytest.raises(RuleRuntimeError) as info:
        run_publish(src, payload=b"\xff")
    assert info.value.error.code == "runtime_error"
    assert (info.value.error.location.line, info.value.error.location.col) == (1, 5)
    assert "UnicodeDecodeError" in info.value.error.message


# -- log ----------------------------------------------------------------------------------------


def rule_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == RULE_LOGGER]


def test_log_writes_one_info_line_prefixed_with_the_rule_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RULE_LOGGER)
    make_log("rules/x.star")("hello")
    (record,) = rule_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == "rules/x.star: hello"


@pytest.mark.parametrize(("value", "shown"), [
    (5, "5"),
    (b"\x00a", "b'\\x00a'"),
    (["a", 1], "['a', 1]"),
    (None, "None"),
    ("", ""),
])
def test_log_shows_non_strings_by_repr(caplog: pytest.LogCaptureFixture, value: object, shown: str) -> None:
    caplog.set_level(logging.INFO, logger=RULE_LOGGER)
    make_log("r.star")(value)
    assert [r.getMessage() for r in rule_records(caplog)] == [f"r.star: {shown}"]


def test_log_truncates_long_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RULE_LOGGER)
    log = make_log("r.star")
    log("x" * MAX_LOG_CHARS)
    log("y" * (MAX_LOG_CHARS + 1))
    log(list(range(5000)))
    messages = [r.getMessage() for r in rule_records(caplog)]
    assert messages[0] == "r.star: " + "x" * MAX_LOG_CHARS
    assert messages[1] == "r.star: " + "y" * MAX_LOG_CHARS + "..."
    assert len(messages[2]) == len("r.star: ") + MAX_LOG_CHARS + 3 and messages[2].endswith("...")


def test_log_from_a_rule_names_the_rule_file(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=RULE_LOGGER)
    assert run_publish("log('topic ' + message.topic)\nallow()\n", "t/x") == ALLOW
    (record,) = rule_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == "rules/message.publish.star: topic t/x"


def test_log_below_info_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=RULE_LOGGER)
    make_log("r.star")("quiet")
    assert rule_records(caplog) == []


def test_log_writes_one_line_even_when_the_text_has_line_breaks(caplog: pytest.LogCaptureFixture) -> None:
    """A rule logs payload text; a newline in it must not forge a second log line."""
    caplog.set_level(logging.INFO, logger=RULE_LOGGER)
    make_log("r.star")("user a\nERROR hookrules: forged line")
    (record,) = rule_records(caplog)
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


# -- range, type and the rest of the builtins ----------------------------------------------------------------


def test_safe_range_limit() -> None:
    assert len(safe_range(MAX_RANGE)) == MAX_RANGE
    assert list(safe_range(3)) == [0, 1, 2]
    assert list(safe_range(5, 0, -2)) == [5, 3, 1]
    assert len(safe_range(0, 10**12, 10**7)) == MAX_RANGE
    assert len(safe_range(10, 0)) == 0


@pytest.mark.parametrize("args", [(MAX_RANGE + 1,), (10**9,), (0, 10**12, 10**6), (10**9, 0, -1)])
def test_safe_range_over_the_limit_raises(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=f"over the limit of {MAX_RANGE}"):
        safe_range(*args)


def test_range_limit_in_a_rule() -> None:
    assert run_publish(f"x = range({MAX_RANGE})\ndeny(str(len(x)))\n") == Deny(str(MAX_RANGE))
    with pytest.raises(RuleRuntimeError) as info:
        run_publish(f"x = 1\ny = range({MAX_RANGE + 1})\n")
    err = info.value.error
    assert (err.code, err.location.line, err.location.col) == ("runtime_error", 2, 5)
    assert "over the limit" in err.message


@pytest.mark.parametrize(("value", "name"), [
    (1, "int"), ("a", "str"), (b"a", "bytes"), ([], "list"), ((), "tuple"), ({}, "dict"), (None, "NoneType"),
    (True, "bool"), (1.5, "float"), (MappingProxyType({}), "mappingproxy"), (Client(), "Client"),
])
def test_type_returns_the_name_only(value: object, name: str) -> None:
    assert type_name(value) == name
    assert SAFE_BUILTINS["type"] is type_name


def test_no_dangerous_builtins_are_provided() -> None:
    names = provided_names()
    for dangerous in ["open", "eval", "exec", "compile", "getattr", "setattr", "delattr", "hasattr", "globals",
                      "locals", "vars", "dir", "__import__", "input", "print", "format", "id", "object", "super",
                      "breakpoint", "exit", "quit", "memoryview", "bytearray", "classmethod", "staticmethod",
                      "property", "iter", "next", "map", "filter"]:
        assert dangerous not in names, dangerous
    assert SAFE_BUILTINS["range"] is safe_range
    assert {"topic_match", "json_decode", "log", "allow", "deny", "ignore", "rewrite", "drop"} <= names


# -- the decision functions ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args", "kwargs", "decision"), [
    ("allow", (), {}, ALLOW),
    ("ignore", (), {}, IGNORE),
    ("deny", (), {}, Deny("")),
    ("deny", ("why",), {}, Deny("why")),
    ("drop", ("empty",), {}, Drop("empty")),
    ("rewrite", (), {"topic": "x", "payload": "é", "qos": 2}, Rewrite("x", "é".encode(), 2)),
])
def test_decision_functions_raise_decided(name: str, args: tuple[object, ...], kwargs: dict[str, object],
                                          decision: object) -> None:
    with pytest.raises(Decided) as info:
        DECISIONS[name](*args, **kwargs)
    assert info.value.decision == decision
    # a BaseException, so no `except Exception` in asteval's handlers swallows it
    assert not isinstance(info.value, Exception)


def test_decided_is_not_an_exception_class() -> None:
    assert issubclass(builtins.Decided, BaseException)
    assert not issubclass(builtins.Decided, Exception)


@pytest.mark.parametrize(("acl", "requested", "covered"), [
    ("a/+", "a/#", False),  # "a/#" also stands for a/b/c, which "a/+" does not allow
    ("a/#", "a/#", True),
    ("a/#", "a/+/c", True),
    ("a/+", "a/+", True),
    ("a/b", "a/+", False),
    ("+/b", "+/b", True),
    ("#", "a/#", True),
    ("a/+/c", "a/+/c", True),
    ("a/+/c", "a/#", False),
])
def test_topic_match_with_a_filter_as_topic_means_covers(acl: str, requested: str, covered: bool) -> None:
    """client.authorize passes a SUBSCRIBE's filter as `topic`: an ACL must cover all it stands for."""
    assert topic_match(acl, requested) is covered


def test_json_decode_with_a_default_never_fails_on_bad_text() -> None:
    from hookrules.lang.builtins import json_decode

    assert json_decode(b"{not json", default=None) is None
    assert json_decode(b"\xff\xfe", default="x") == "x"
    assert json_decode('{"a": 1}', default=None) == {"a": 1}
    with pytest.raises(ValueError):
        json_decode(b"{not json")


# -- TOPICS: one precompiled test, equal to topic_match over every filter ------------------------------

_LEVELS = st.sampled_from(["a", "b", "$SYS", "", "+", "#", "sensors", "t"])


@settings(max_examples=400, deadline=None)
@given(filters=st.lists(st.lists(_LEVELS, min_size=1, max_size=4).map("/".join), min_size=1, max_size=4),
       topic=st.lists(_LEVELS, min_size=0, max_size=5).map("/".join))
def test_topic_filter_test_equals_topic_match_over_the_filters(filters: list[str], topic: str) -> None:
    valid = []
    for f in filters:
        try:
            validate_filter(f)
            valid.append(f)
        except ValueError:
            pass
    assume(valid)
    assert topic_filter_test(valid)(topic) == any(topic_match(f, topic) for f in valid)


@pytest.mark.parametrize(("filters", "topic", "expected"), [
    (["t/#"], "t", True), (["t/#"], "t/a/b", True), (["t/#"], "tt/a", False), (["t/#"], "$SYS/t", False),
    (["/#"], "", False), (["/#"], "/", True), (["a/b"], "a/b", True), (["a/b"], "a/b/c", False),
    (["+/x", "a/#"], "q/x", True), (["#"], "$SYS/x", False), (["$SYS/#"], "$SYS", True),
])
def test_topic_filter_test_cases(filters: list[str], topic: str, expected: bool) -> None:
    assert topic_filter_test(filters)(topic) is expected


def test_log_is_limited_to_fifty_lines_a_second_per_file(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A log() in a loop wrote thousands of lines per event (found by audit): past 50 a second they
    are dropped, and the next line after the second says how many."""
    from types import SimpleNamespace

    from hookrules.lang import builtins as rule_builtins

    now = [1000.0]
    monkeypatch.setattr(rule_builtins, "time", SimpleNamespace(monotonic=lambda: now[0]))
    log = rule_builtins.make_log("rules/x.star")
    with caplog.at_level(logging.INFO, logger="hookrules.rule"):
        for i in range(60):
            log(f"line {i}")
        assert [r.getMessage() for r in caplog.records][-1] == "rules/x.star: line 49"
        assert len(caplog.records) == 50
        now[0] += 1.5
        log("later")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-2:] == ["rules/x.star: 10 log() lines dropped (over 50 a second)", "rules/x.star: later"]
    with rule_builtins.unlimited_log(), caplog.at_level(logging.INFO, logger="hookrules.rule"):
        caplog.clear()  # hookrules test: every case shows what it logged
        for i in range(60):
            log(f"again {i}")
    assert len(caplog.records) == 60
