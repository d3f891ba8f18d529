"""The decision log's event form (engine/eventcodec.py): every adapter's real event for every hook goes
to JSON text and back unchanged, with secrets; without them, only the secrets are missing, and each one
missing is named."""

from __future__ import annotations

import base64
import dataclasses
import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook import EVENT_BUILDERS, RPC_HOOKS
from hookrules.adapters.rabbitmq import REQUIRED, event_for
from hookrules.adapters.vernemq import iter_events
from hookrules.eventcodec import SECRET_NAMES, EventCodecError, decode_event, encode_event
from hookrules.events import Client, Event, JSONArray, JSONObject, Message, frozen_map
from hookrules.hooks import HOOKS

from .adapter_events import broker_events
from .vernemq_examples import EXAMPLES


def _fill(message: Any, depth: int = 0) -> None:
    """Every field of a protobuf request given a value that is not its default (the secrets too), and
    every repeated field one item, so that no part of the event is left out by being empty."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None:
            if depth > 3:
                continue
            if field.message_type.GetOptions().map_entry:
                getattr(message, field.name)["k-" + field.name] = "v-" + field.name
            elif field.is_repeated:
                _fill(getattr(message, field.name).add(), depth + 1)
            else:
                _fill(getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            continue
        elif field.type == field.TYPE_STRING:
            setattr(message, field.name, f"s-{field.name}-\u00e9\ud7ff")
        elif field.type == field.TYPE_BYTES:
            setattr(message, field.name, b"\x00\xff" + field.name.encode())
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, True)
        elif field.enum_type is not None:
            setattr(message, field.name, field.enum_type.values[-1].number)
        else:
            setattr(message, field.name, 7)


def filled_events() -> dict[str, Event]:
    """Every hook's event as its adapter builds it from a call with every field set, secrets included."""
    found: dict[str, Event] = {}
    proto = exhook_proto.load("v3")
    for rpc, hook in RPC_HOOKS.items():
        request = proto.messages[proto.methods[rpc][0]]()
        _fill(request)
        found[hook] = EVENT_BUILDERS[hook](hook, request)
    props = {"p_user_property": [{"key": "a2V5", "val": "dmFs"}], "p_authentication_data": "QVVUSA==",
             "p_content_type": "text/x", "p_payload_format_indicator": "utf8", "p_session_expiry_interval": 7}
    for hook, example in EXAMPLES.items():
        body = {**example, "password": "pw-\u00e9", "payload": "pay\u00e9load"}
        if hook.endswith("_m5"):
            body["properties"] = props
        found[hook] = next(iter_events(hook, body, False))
        m5 = hook + "_m5"
        if m5 in HOOKS and m5 not in EXAMPLES:
            found[m5] = next(iter_events(m5, {**body, "properties": props}, False))
    for hook, required in REQUIRED.items():
        fields = {name: "read" if name == "permission" else "x" for name in required}
        found[hook] = event_for(hook, {**fields, "password": "pw", "ip": "10.0.0.1", "client_id": "c",
                                       "tags": "management monitoring"})
    return found


def same(a: Any, b: Any, path: str = "event") -> None:
    """Equal and of the same types all the way down (a dict where a read-only mapping was would be
    equal, and writable)."""
    if isinstance(a, (JSONObject, JSONArray)):
        assert type(b) is type(a), path
        assert json.dumps(a._data) == json.dumps(b._data), path
        return
    if isinstance(a, MappingProxyType):
        assert isinstance(b, MappingProxyType), path
        assert list(a) == list(b), path
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
        return
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, (tuple, frozenset)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(sorted(a, key=repr) if isinstance(a, frozenset) else a,
                                       sorted(b, key=repr) if isinstance(b, frozenset) else b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _strings(value: Any, out: list[str]) -> None:
    """Every string value (not key) of parsed JSON."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)


def through_text(event: Event, secrets: bool) -> tuple[Event, tuple[str, ...], str]:
    text = json.dumps(encode_event(event, secrets), ensure_ascii=True)
    decoded, redacted, omitted = decode_event(json.loads(text))
    assert omitted == ()
    return decoded, redacted, text


EVENTS = {**{f"bare-{h}": e for h, e in broker_events().items()}, **{f"filled-{h}": e for h, e in filled_events().items()}}


def test_every_hook_of_every_broker_is_enumerated() -> None:
    hooks = {name.split("-", 1)[1] for name in EVENTS}
    assert hooks == {h for h, info in HOOKS.items() if info.broker != "portable"}


def test_the_filled_events_carry_every_kind_of_secret() -> None:
    """Else the redaction tests below would pass by having nothing to redact."""
    for hook, kinds in {"client.authenticate": "client.password", "message.publish": "data.message.payload",
                        "auth_on_register": "data.request.password", "auth_on_publish_m5": "data.request.payload",
                        "on_auth_m5": "data.properties.p_authentication_data", "rabbitmq.user": "client.password"}.items():
        assert kinds in encode_event(EVENTS[f"filled-{hook}"])["redacted"], hook
    proto = exhook_proto.load("v3")
    request = proto.messages[proto.methods["OnClientConnect"][0]]()
    _fill(request)
    request.props.add(name="Authentication-Data", value="scram-first-message")
    form = encode_event(EVENT_BUILDERS["client.connect"]("client.connect", request))
    assert "data.properties.Authentication-Data" in form["redacted"]
    assert "scram-first-message" not in json.dumps(form)


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_with_secrets_every_event_comes_back_unchanged(name: str) -> None:
    event = EVENTS[name]
    decoded, redacted, _ = through_text(event, secrets=True)
    assert redacted == ()
    same(event, decoded)
    assert decoded == event and decoded.names() == event.names()


def _secret_values(value: Any, found: list[Any], under_secret: bool = False) -> None:
    """Every non-empty value held under a secret's name, anywhere in a value."""
    if isinstance(value, (JSONObject, JSONArray)):
        value = value._data
    if under_secret and value not in (None, "", b""):
        found.append(value)
        return
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _secret_values(getattr(value, f.name), found, f.name in SECRET_NAMES)
    elif isinstance(value, (dict, MappingProxyType)):
        for key, item in value.items():
            _secret_values(item, found, key in SECRET_NAMES)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _secret_values(item, found)


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_without_secrets_only_the_secrets_are_missing_and_each_is_named(name: str) -> None:
    event = EVENTS[name]
    secrets: list[Any] = []
    _secret_values(event.client, secrets)
    _secret_values(event.data, secrets)
    decoded, redacted, text = through_text(event, secrets=False)
    assert len(redacted) == len(secrets)
    values: list[str] = []
    form = json.loads(text)
    form.pop("redacted", None)  # the paths, which name the secrets (client.password), not their values
    _strings(form, values)
    for secret in secrets:  # in no value of the text, in any form
        forms = [secret] if isinstance(secret, str) else [base64.b64encode(secret).decode()] if isinstance(
            secret, bytes) else [json.dumps(secret)]
        assert not [v for v in values for f in forms if f and f in v], secret
    # the decoded event is the event with each secret as a call without it would have it
    left: list[Any] = []
    _secret_values(decoded.client, left)
    _secret_values(decoded.data, left)
    assert left == []
    # and nothing else changed: the event with every secret as a call without it has it
    same(blank(event), decoded)
    for path in redacted:
        assert path.split(".")[-1] in SECRET_NAMES, path


def blank(value: Any, secret: bool = False) -> Any:
    """The value with every non-empty secret removed: a field's default, a key's value None."""
    if secret and value not in (None, "", b""):
        return None
    if isinstance(value, (JSONObject, JSONArray)):
        return type(value)(blank(value._data))
    if dataclasses.is_dataclass(value):
        changes = {}
        for f in dataclasses.fields(value):
            if f.name in SECRET_NAMES and getattr(value, f.name) not in (None, "", b""):
                changes[f.name] = f.default
            else:
                changes[f.name] = blank(getattr(value, f.name))
        return type(value)(**changes)
    if isinstance(value, MappingProxyType):
        return MappingProxyType({k: blank(v, k in SECRET_NAMES) for k, v in value.items()})
    if isinstance(value, dict):
        return {k: blank(v, k in SECRET_NAMES) for k, v in value.items()}
    if isinstance(value, list):
        return [blank(v) for v in value]
    if isinstance(value, tuple):
        return tuple(blank(v) for v in value)
    return value


@settings(max_examples=60, deadline=None)
@given(st.text(), st.binary(), st.dictionaries(st.text(), st.text(), max_size=4))
def test_any_strings_and_bytes_come_back(text: str, data: bytes, props: dict[str, str]) -> None:
    """Lone surrogates, NULs, keys that look like the codec's own type names: written as ASCII JSON,
    read back the same."""
    event = Event("message.publish", "emqx", Client(id=text, username=text, password=text),
                  frozen_map({"message": Message(topic=text, payload=data, user_properties=frozen_map(props),
                                                 properties=frozen_map({"map": text, "bytes": text})),
                              text or "x": (text, data)}))
    decoded, _, encoded = through_text(event, secrets=True)
    assert encoded.isascii()
    same(event, decoded)


@pytest.mark.parametrize("form", [
    [], {"hook": 1, "broker": "emqx"}, {"hook": "h", "broker": "b", "client": {"nope": 1}},
    {"hook": "h", "broker": "b", "data": {"a": {"map": {"b": {"two": 1, "keys": 2}}}}},
    {"hook": "h", "broker": "b", "data": {"a": {"Nope": {}}}},
    {"hook": "h", "broker": "b", "data": {"a": {"bytes": "not base64!"}}},
    {"hook": "h", "broker": "b", "data": {"a": {"float": "1.5"}}},
    {"hook": "h", "broker": "b", "data": {"a": {"Message": {"nope": 1}}}},
    {"hook": "h", "broker": "b", "data": {"a": {"Message": {}, "x": 1}}},
    {"hook": "h", "broker": "b", "redacted": "client.password"},
])
def test_a_form_the_codec_did_not_write_is_refused_with_where(form: Any) -> None:
    with pytest.raises(EventCodecError):
        decode_event(form)
