"""The normalized event a rule reads: the same names whichever broker sent it, and all of it read-only.

Every class is frozen and holds only immutable values (str, bytes, int, tuples, MappingProxyType),
so a rule cannot change what the broker sent nor what the next run will see.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .records import quick_init

EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_map(pairs: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> Mapping[str, Any]:
    """A read-only mapping; for MQTT user properties a repeated key keeps its last value."""
    if not pairs:
        return EMPTY
    return MappingProxyType(dict(pairs))


#: levels a frozen value may nest (lang/nesting.MAX_DEPTH: what a rule may build)
MAX_FROZEN_DEPTH = 100
_VIEWS = (KeysView, ValuesView, ItemsView)


def freeze(value: Any, depth: int = 0) -> Any:
    """Deep read-only copy of plain data (dicts, lists, sets; keys too) for handing to rules: dicts
    become read-only mappings, lists and views tuples, sets frozensets. Nesting past
    MAX_FROZEN_DEPTH raises RecursionError (a data file's parse error says "nested too deeply")."""
    if depth > MAX_FROZEN_DEPTH:
        raise RecursionError(f"nested more than {MAX_FROZEN_DEPTH} levels deep")
    if isinstance(value, Mapping):
        return MappingProxyType({freeze(k, depth + 1): freeze(v, depth + 1) for k, v in value.items()})
    if isinstance(value, (list, tuple, *_VIEWS)):
        return tuple(freeze(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v, depth + 1) for v in value)
    return value


class JSONObject(Mapping[str, Any]):
    """A read-only view of a JSON object: children are wrapped as they are read, not copied up front.

    For webhook bodies, which rules seldom read whole: freezing every request eagerly cost more than
    most rules do.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return json_view(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __eq__(self, other: object) -> bool:
        return _json_equal(self._data, other)

    def __ne__(self, other: object) -> bool:
        return not _json_equal(self._data, other)

    __hash__ = None  # type: ignore[assignment]


class JSONArray(Sequence[Any]):
    """A read-only view of a JSON array (see JSONObject)."""

    __slots__ = ("_data",)

    def __init__(self, data: Sequence[Any]):
        self._data = data

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(json_view(v) for v in self._data[index])
        return json_view(self._data[index])

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __eq__(self, other: object) -> bool:
        return _json_equal(self._data, other)

    def __ne__(self, other: object) -> bool:
        return not _json_equal(self._data, other)

    __hash__ = None  # type: ignore[assignment]


def _json_equal(raw: Any, other: Any) -> bool:
    """A JSON value compared as the JSON it is: an array equals a list or tuple (or array) of equal
    items, an object a mapping of equal keys and values. The C comparison first (plain lists and
    dicts on both sides), then item by item, so tuples and read-only dicts on the other side match
    too. Callers bound how much is walked (lang/guards.check_walk) and how deep (json_view's data
    is nested at most as deep as a rule's values may be)."""
    if other.__class__ is raw.__class__ and raw == other:
        return True
    return _json_items_equal(raw, other)


def _json_items_equal(raw: Any, other: Any) -> bool:
    if other.__class__ is JSONArray or other.__class__ is JSONObject:
        other = other._data
    if raw.__class__ is list:
        if not isinstance(other, (list, tuple)) or len(raw) != len(other):
            return False
        return all(_json_items_equal(a, b) for a, b in zip(raw, other))
    if raw.__class__ is dict:
        if not isinstance(other, Mapping) or len(raw) != len(other):
            return False
        return all(k in other and _json_items_equal(v, other[k]) for k, v in raw.items())
    if isinstance(other, (list, tuple, Mapping)):
        return False
    return bool(raw == other)


def json_view(value: Any) -> Any:
    """Parsed JSON as a rule may see it: objects and arrays read-only, wrapped lazily."""
    if isinstance(value, dict):
        return JSONObject(value)
    if isinstance(value, list):
        return JSONArray(value)
    return value


@quick_init
@dataclass(frozen=True, slots=True)
class Client:
    id: str = ""
    username: str = ""
    # repr=False: a client object that reaches a log line must not carry the password with it
    password: str = field(default="", repr=False)
    peerhost: str = ""
    peerport: int = 0
    sockport: int = 0
    protocol: str = ""
    mountpoint: str = ""
    is_superuser: bool = False
    anonymous: bool = False
    cn: str = ""
    dn: str = ""
    node: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class Conn:
    """EMQX ConnInfo, seen in client.connect and client.connack."""

    id: str = ""
    username: str = ""
    peerhost: str = ""
    peerport: int = 0
    sockport: int = 0
    proto_name: str = ""
    proto_ver: str = ""
    keepalive: int = 0
    node: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    id: str = ""
    # `from` is a Python keyword, so the publisher's client id is `from_`.
    from_: str = ""
    topic: str = ""
    payload: bytes = field(default=b"", repr=False)
    qos: int = 0
    retain: bool = False
    timestamp: int = 0
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    properties: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    user_properties: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    node: str = ""


@quick_init
@dataclass(frozen=True, slots=True)
class SubOpts:
    qos: int = 0
    rh: int = 0
    rap: int = 0
    nl: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class TopicFilter:
    topic: str = ""
    qos: int = 0
    rh: int = 0
    rap: int = 0
    nl: int = 0


@quick_init
@dataclass(frozen=True, slots=True)
class Event:
    """One hook call. `data` holds the hook-specific names (see hooks.HookInfo.names)."""

    hook: str
    broker: str
    client: Client = Client()
    data: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    #: the front-end the call came through (hooks.CHANNELS): every adapter sets it; "" only in an event
    #: built by hand in code, which no broker sent
    channel: str = ""

    def names(self) -> dict[str, Any]:
        """Everything the rule reads, by name."""
        out = dict(self.data)
        out["hook"] = self.hook
        out["broker"] = self.broker
        out["client"] = self.client
        out["channel"] = self.channel
        return out

    def secrets(self) -> tuple[str | bytes, ...]:
        """What no log may show by default: the password and the payload."""
        msg = self.message
        return (self.client.password, msg.payload) if msg is not None else (self.client.password,)

    @property
    def message(self) -> Message | None:
        msg = self.data.get("message")
        return msg if isinstance(msg, Message) else None
