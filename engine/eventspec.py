"""Events written by hand (in `hookrules test` tables and `hookrules eval --event`), as plain data.

The keys are the names a rule reads: `client`, `message`, `conn`, `topic_filters`, `subopts`,
`topics`, `action`, `topic`, `qos`, `result`, `reason`, `result_code`, `properties`,
`user_properties`, `request`, and `channel` (which of the broker's front-ends sent it, hooks.CHANNELS;
its first by default). Objects are mappings of their fields; a message payload is text
(`payload`) or base64 (`payload_base64`). A key the hook does not provide is an error, so a typo
does not silently test nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .events import Client, Conn, Event, Message, SubOpts, TopicFilter, freeze, frozen_map
from .hooks import CHANNELS, HOOKS, answered_hooks


class SpecError(ValueError):
    """An event description that cannot be built; the message names the key."""


def _object(cls: type, spec: Any, what: str, renames: Mapping[str, str] | None = None) -> Any:
    if not isinstance(spec, Mapping):
        raise SpecError(f"'{what}' must be a mapping of its fields, not {type(spec).__name__}")
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in spec.items():
        field_name = (renames or {}).get(key, key)
        if field_name not in names:
            raise SpecError(f"'{what}' has no field '{key}'; fields: {', '.join(sorted(names))}")
        values[field_name] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise SpecError(f"'{what}': {exc}") from None


def _message(spec: Any) -> Message:
    if not isinstance(spec, Mapping):
        raise SpecError(f"'message' must be a mapping of its fields, not {type(spec).__name__}")
    spec = dict(spec)
    if "payload_base64" in spec:
        try:
            spec["payload"] = base64.b64decode(spec.pop("payload_base64"), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise SpecError("'message.payload_base64' is not valid base64") from None
    elif isinstance(spec.get("payload"), str):
        spec["payload"] = spec["payload"].encode("utf-8")
    for key in ("headers", "properties", "user_properties"):
        if key in spec:
            spec[key] = frozen_map(spec[key])
    return _object(Message, spec, "message", {"from": "from_"})  # type: ignore[no-any-return]


def build_event(hook: str, spec: Mapping[str, Any]) -> Event:
    """The Event a broker would send for `hook`, from a hand-written description."""
    info = HOOKS.get(hook)
    if info is None:
        raise SpecError(f"unknown hook '{hook}'")
    if info.broker == "portable":
        raise SpecError(f"no broker calls '{hook}': name the broker hook its file answers, one of "
                        f"{', '.join(answered_hooks(hook))}")
    if not isinstance(spec, Mapping):
        raise SpecError(f"an event is a mapping of names to values, not {type(spec).__name__}")
    channels = CHANNELS[info.broker]
    channel = spec.get("channel", channels[0])
    if channel not in channels:
        raise SpecError(f"'channel' of a {info.broker} event is one of {', '.join(channels)}, not {channel!r}")
    if info.broker == "emqx" and channel == "exhook" and spec.get("request"):
        raise SpecError("EMQX sends 'request' fields only over HTTP: give channel: http")
    spec = {k: v for k, v in spec.items() if k != "channel"}
    allowed = set(info.names) | {"client"}
    data: dict[str, Any] = {}
    client = Client()
    if info.broker == "rabbitmq":  # made by the adapter's own mapping, as from RabbitMQ's fields
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise SpecError(f"{hook} does not provide '{unknown[0]}'; it provides: {', '.join(sorted(allowed))}")
        if "qos" in spec and spec["qos"] is not None:
            raise SpecError("RabbitMQ sends no qos: leave 'qos' out")
        from .adapters.rabbitmq import event_from_spec  # the broker's mapping: hand events are wire events
        try:
            return event_from_spec(hook, spec, _object(Client, spec.get("client", {}), "client"))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    for key, value in spec.items():
        if key not in allowed:
            raise SpecError(f"{hook} does not provide '{key}'; it provides: {', '.join(sorted(allowed | {'channel'}))}")
        if key == "client":
            client = _object(Client, value, "client")
        elif key == "conn":
            data[key] = _object(Conn, value, "conn")
        elif key == "message":
            data[key] = _message(value)
        elif key == "subopts":
            data[key] = _object(SubOpts, value, "subopts")
        elif key == "topic_filters" or key == "topics" and not hook.startswith("on_unsubscribe"):
            if not isinstance(value, list):
                raise SpecError(f"'{key}' must be a list")
            data[key] = tuple(_object(TopicFilter, v, key) if isinstance(v, Mapping) else TopicFilter(str(v))
                              for v in value)
        elif key in ("properties", "user_properties"):
            data[key] = frozen_map(value)
        else:
            data[key] = freeze(value)
    message = data.get("message")
    if isinstance(message, Message):  # VerneMQ rules read topic and qos beside the message
        if "topic" in allowed and "topic" not in data:
            data["topic"] = message.topic
        if "qos" in allowed and "qos" not in data:
            data["qos"] = message.qos
    if info.action is not None and "action" not in data:  # as the adapter sets it
        data["action"] = info.action
    if "qos" in allowed and "qos" not in data:  # a topic check whose broker sends no qos
        data["qos"] = None
    if "request" in allowed and "request" not in data:
        data["request"] = frozen_map({})
    return Event(hook, info.broker, client, frozen_map(data), channel=channel)
