"""One JSON form of an Event, and back: what the decision log writes and `hookrules replay` reads.

The log must carry everything a rule reads (Event.names(): the client, and every hook-specific name
the adapters put in `data`, VerneMQ's whole `request` body included), so that replaying a line runs
a rule on the event it saw then. One codec for both sides, so the two cannot drift apart.

The form, chosen so that no value a client sends can be mistaken for another:
- the event is {"hook", "broker", "channel", "client": {field: value}, "data": {name: value}} (and "redacted");
- a value is a JSON scalar (str, int, float, bool, null), a JSON array (a tuple), or an object with
  exactly one key that names its type: {"bytes": base64}, {"map": {key: value}} (a read-only
  mapping), {"json": raw} (a webhook body's JSON, as parsed), {"frozenset": [...]}, or one of the
  event classes, {"Message": {field: value}} (Client, Conn, Message, SubOpts, TopicFilter).

Secrets: a value under a field or key named in SECRET_NAMES (the password, the payload, MQTT 5
authentication data), anywhere in the event, is written as null unless secrets are asked for, and its
path is listed in "redacted", so a reader tells a redacted value from an empty one (an empty value is
no secret and is written as it is).

Size: a webhook body (VerneMQ's `request`) whose JSON is over MAX_BODY_CHARS is written as {"json": null}
and its path listed in "omitted". A subscription's topics are one event each, all holding the same body:
N topics would write the body N times (N^2 bytes, and as much encoding on the event loop, inside the
call's budget). With a BodyCache the body is encoded once per call, and a big one not at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, fields
from types import MappingProxyType
from typing import Any

from .events import EMPTY, Client, Conn, Event, JSONArray, JSONObject, Message, SubOpts, TopicFilter

#: field and key names whose values no log shows unless asked (--decision-log-secrets): the password,
#: the payload, and MQTT 5 authentication data as VerneMQ (p_authentication_data) and EMQX (its property
#: name) send it
SECRET_NAMES = frozenset({"password", "payload", "p_authentication_data", "Authentication-Data"})

#: the classes an event holds, by the tag they are written under
CLASSES: Mapping[str, type] = {cls.__name__: cls for cls in (Client, Conn, Message, SubOpts, TopicFilter)}
_FIELDS: Mapping[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in CLASSES.values()}
#: per class: (field, its default, whether it is a secret)
def _default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


_SPECS: Mapping[type, tuple[tuple[str, Any, bool], ...]] = {
    cls: tuple((f.name, _default(f), f.name in SECRET_NAMES) for f in fields(cls)) for cls in CLASSES.values()}
#: nesting a decoded value may have (events.MAX_FROZEN_DEPTH, plus the wrappers)
MAX_DEPTH = 210


class EventCodecError(ValueError):
    """A JSON form that is not an event this codec wrote; the message says where."""


# -- Event -> JSON ------------------------------------------------------------------------------


def _join(parent: str, name: str | int) -> str:
    return f"{parent}[{name}]" if isinstance(name, int) else f"{parent}.{name}"


#: longest webhook body (its JSON text) written into an event; past it, omitted
MAX_BODY_CHARS = 16 * 1024
class BodyCache:
    """The last webhook body encoded, for the next event of the same call (one per subscribed topic)."""

    __slots__ = ("data", "secrets", "path", "result", "redacted", "omitted")

    def __init__(self) -> None:
        self.data: Any = None
        self.secrets = False
        self.path = ""
        self.result: Any = None
        self.redacted: list[str] = []
        self.omitted = False


class _Encoder:
    """Paths are joined only where one is needed (a redaction, an error, a container's children): most
    values are scalars, written as they are. Fields at their defaults are left out (the reader puts the
    defaults back), which halves a typical line."""

    __slots__ = ("secrets", "redacted", "omitted", "cache")

    def __init__(self, secrets: bool, cache: BodyCache | None = None):
        self.secrets = secrets
        self.redacted: list[str] = []
        self.omitted: list[str] = []
        self.cache = cache

    def secret(self, value: Any, parent: str, name: str) -> Any:
        """A secret's JSON: itself with secrets on or when empty (no secret), else null, and noted."""
        if self.secrets or value is None or value == "" or value == b"":
            return self.value(value, parent, name)
        self.redacted.append(_join(parent, name))
        return None

    def value(self, value: Any, parent: str, name: str | int) -> Any:
        cls = value.__class__
        if value is None or cls is str or cls is bool or cls is int:
            return value
        if cls is float:
            return value if math.isfinite(value) else {"float": repr(value)}
        if cls is bytes:
            return {"bytes": base64.b64encode(value).decode("ascii")}
        path = _join(parent, name)
        if cls is tuple:
            return [self.value(v, path, i) for i, v in enumerate(value)]
        if cls is JSONObject or cls is JSONArray:
            return {"json": self.body(value._data, path)}
        if cls is frozenset:
            return {"frozenset": [self.value(v, path, i) for i, v in enumerate(value)]}
        if cls in _SPECS:
            return {cls.__name__: self.fields(value, path)}
        if isinstance(value, Mapping):
            return {"map": self.mapping(value, path)}
        # a subclass (an IntEnum, a str subclass): its plain value
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self.value(int(value), parent, name)
        if isinstance(value, float):
            return self.value(float(value), parent, name)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.value(bytes(value), parent, name)
        raise TypeError(f"{path}: a {cls.__name__} cannot be written to the decision log")

    def fields(self, obj: Any, path: str) -> dict[str, Any]:
        out = {}
        for name, default, secret in _SPECS[obj.__class__]:
            value = getattr(obj, name)
            cls = value.__class__
            if cls is default.__class__ and value == default:
                continue  # the reader's default
            if secret:
                out[name] = self.secret(value, path, name)
            elif cls is str or cls is int or cls is bool:
                out[name] = value
            else:
                out[name] = self.value(value, path, name)
        return out

    def mapping(self, mapping: Mapping[Any, Any], path: str) -> dict[str, Any]:
        out = {}
        for key, value in mapping.items():
            if key.__class__ is not str and not isinstance(key, str):
                raise TypeError(f"{path}: a key of type {key.__class__.__name__} cannot be written to the decision log")
            out[key] = self.secret(value, path, key) if key in SECRET_NAMES else self.value(value, path, key)
        return out

    def body(self, data: Any, path: str) -> Any:
        """A webhook body: from the cache when it is the last one, omitted when too big."""
        cache = self.cache
        if cache is not None and cache.data is data and cache.secrets == self.secrets and cache.path == path:
            self.redacted.extend(cache.redacted)
            if cache.omitted:
                self.omitted.append(path)
            return cache.result
        start = len(self.redacted)
        result = self.raw(data, path)
        omitted = len(json.dumps(result, ensure_ascii=True)) > MAX_BODY_CHARS  # once per call (the cache)
        if omitted:
            result = None
            del self.redacted[start:]
            self.omitted.append(path)
        if cache is not None:
            cache.data, cache.secrets, cache.path, cache.result = data, self.secrets, path, result
            cache.redacted, cache.omitted = self.redacted[start:], omitted
        return result

    def raw(self, data: Any, path: str) -> Any:
        """A webhook body as parsed (dicts, lists, scalars), its secrets redacted."""
        if self.secrets:
            return data
        if isinstance(data, dict):
            out = {}
            for k, v in data.items():
                if k in SECRET_NAMES:
                    out[k] = self.secret(v, path, k)
                elif isinstance(v, (dict, list)):
                    out[k] = self.raw(v, _join(path, k))
                else:
                    out[k] = v
            return out
        if isinstance(data, list):
            return [self.raw(v, _join(path, i)) if isinstance(v, (dict, list)) else v for i, v in enumerate(data)]
        return data


def encode_event(event: Event, secrets: bool = False, cache: BodyCache | None = None) -> dict[str, Any]:
    """The event's JSON form (a dict for json.dumps); TypeError for a value no broker sends. `cache`:
    the writer's BodyCache, for the events of one call that share a body."""
    encoder = _Encoder(secrets, cache)
    out: dict[str, Any] = {
        "hook": event.hook,
        "broker": event.broker,
        "channel": event.channel,
        "client": encoder.fields(event.client, "client"),
        "data": encoder.mapping(event.data, "data"),
    }
    if encoder.redacted:
        out["redacted"] = encoder.redacted
    if encoder.omitted:
        out["omitted"] = encoder.omitted
    return out


# -- JSON -> Event ------------------------------------------------------------------------------


def _tag(value: dict[str, Any], path: str) -> tuple[str, Any]:
    if len(value) != 1:
        raise EventCodecError(f"{path}: an object must have exactly one key naming its type, not {sorted(value)[:5]}")
    return next(iter(value.items()))


def _decode(value: Any, path: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise EventCodecError(f"{path}: nested too deeply")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list):
        return tuple(_decode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
    if not isinstance(value, dict):
        raise EventCodecError(f"{path}: not a JSON value")
    tag, inner = _tag(value, path)
    if tag == "bytes":
        if not isinstance(inner, str):
            raise EventCodecError(f"{path}: bytes are written as a base64 string")
        try:
            return base64.b64decode(inner, validate=True)
        except (binascii.Error, ValueError):
            raise EventCodecError(f"{path}: not valid base64") from None
    if tag == "float":
        if inner not in ("nan", "inf", "-inf"):
            raise EventCodecError(f"{path}: a float tag holds nan, inf or -inf")
        return float(inner)
    if tag == "map":
        return _decode_map(inner, path, depth)
    if tag == "json":
        return JSONObject(inner) if isinstance(inner, dict) else JSONArray(inner) if isinstance(inner, list) else inner
    if tag == "frozenset":
        if not isinstance(inner, list):
            raise EventCodecError(f"{path}: a frozenset is written as an array")
        try:
            return frozenset(_decode(v, path, depth + 1) for v in inner)
        except TypeError:
            raise EventCodecError(f"{path}: a frozenset of values that cannot be in one") from None
    cls = CLASSES.get(tag)
    if cls is None:
        raise EventCodecError(f"{path}: unknown type {tag[:40]!r}; known: bytes, map, json, frozenset, "
                              + ", ".join(CLASSES))
    return _decode_fields(cls, inner, path, depth)


def _decode_map(inner: Any, path: str, depth: int) -> Mapping[str, Any]:
    if not isinstance(inner, dict):
        raise EventCodecError(f"{path}: a map is written as an object")
    if not inner:
        return EMPTY
    return MappingProxyType({k: _decode(v, f"{path}.{k}", depth + 1) for k, v in inner.items()})


def _decode_fields(cls: type, inner: Any, path: str, depth: int) -> Any:
    if not isinstance(inner, dict):
        raise EventCodecError(f"{path}: a {cls.__name__} is written as an object of its fields")
    known = _FIELDS[cls]
    unknown = [k for k in inner if k not in known]
    if unknown:
        raise EventCodecError(f"{path}: {cls.__name__} has no field {unknown[0][:40]!r}")
    values = {}
    for name, value in inner.items():
        if value is None and name in SECRET_NAMES:
            continue  # redacted (or never set): the field's default, as a call that sent none has
        values[name] = _decode(value, f"{path}.{name}", depth + 1)
    try:
        return cls(**values)
    except TypeError as exc:
        raise EventCodecError(f"{path}: {exc}") from None


def decode_event(form: Any) -> tuple[Event, tuple[str, ...], tuple[str, ...]]:
    """The event of a JSON form encode_event wrote, the paths of the secrets it lacks (redacted: they
    read as empty, so a rule that reads them may decide otherwise than it did), and of the bodies it
    lacks (omitted for their size: they read as None).
    EventCodecError says what is wrong with a form this codec did not write."""
    if not isinstance(form, dict):
        raise EventCodecError("event: not an object")
    hook, broker, channel = form.get("hook"), form.get("broker"), form.get("channel", "")
    if not isinstance(hook, str) or not isinstance(broker, str) or not isinstance(channel, str):
        raise EventCodecError("event: hook, broker and channel must be strings")
    client = _decode_fields(Client, form.get("client", {}), "client", 0)
    data = _decode_map(form.get("data", {}), "data", 0)
    missing = []
    for key in ("redacted", "omitted"):
        paths = form.get(key, [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise EventCodecError(f"event: {key} must be a list of paths")
        missing.append(tuple(paths))
    return Event(hook, broker, client, data, channel), missing[0], missing[1]
