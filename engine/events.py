"""The normalized event a rule reads: the same names whichever broker sent it, and all of it read-only.

Every class is frozen and holds only immutable values (str, bytes, int, tuples, MappingProxyType),
so a rule cannot change what the broker sent nor what the next run will see.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_map(pairs: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> Mapping[str, Any]:
    """A read-only mapping; for MQTT user properties a repeated key keeps its last value."""
    if not pairs:
        return EMPTY
    return MappingProxyType(dict(pairs))


def freeze(value: Any) -> Any:
    """Deep read-only copy of plain data (dicts, lists) for handing to rules."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    return value


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


@dataclass(frozen=True, slots=True)
class SubOpts:
    qos: int = 0
    rh: int = 0
    rap: int = 0
    nl: int = 0


@dataclass(frozen=True, slots=True)
class TopicFilter:
    topic: str = ""
    qos: int = 0
    rh: int = 0
    rap: int = 0
    nl: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One hook call. `data` holds the hook-specific names (see hooks.HookInfo.names)."""

    hook: str
    broker: str
    client: Client = Client()
    data: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    def names(self) -> dict[str, Any]:
        """Everything the rule reads, by name."""
        out = dict(self.data)
        out["hook"] = self.hook
        out["broker"] = self.broker
        out["client"] = self.client
        return out

    @property
    def message(self) -> Message | None:
        msg = self.data.get("message")
        return msg if isinstance(msg, Message) else None
