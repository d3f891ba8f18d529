"""What a rule answers. Adapters turn these into broker replies; the engine never sees a wire format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from .records import quick_init

Kind = Literal["allow", "deny", "ignore", "rewrite", "drop"]


@quick_init
@dataclass(frozen=True, slots=True)
class Allow:
    """Let it happen. VerneMQ only: `modifiers` (checked against what the hook accepts) and `cache`
    (seconds VerneMQ may reuse the answer). RabbitMQ's user check only: `tags`, the user's tags.
    EMQX's HTTP authenticator only (emqxoptions.py): `superuser`, `attrs` (client attributes),
    `expire_at` (Unix seconds) and `acl` (the client's own authorization rules)."""

    modifiers: Mapping[str, Any] | None = None
    cache: int | None = None
    tags: tuple[str, ...] | None = None
    superuser: bool | None = None
    attrs: Mapping[str, str] | None = None
    expire_at: int | None = None
    acl: tuple[Mapping[str, Any], ...] | None = None
    kind: ClassVar[Kind] = "allow"


@quick_init
@dataclass(frozen=True, slots=True)
class Deny:
    reason: str = ""
    kind: ClassVar[Kind] = "deny"


@quick_init
@dataclass(frozen=True, slots=True)
class Ignore:
    kind: ClassVar[Kind] = "ignore"


@quick_init
@dataclass(frozen=True, slots=True)
class Rewrite:
    """Publish the message with these fields changed; None keeps the original value."""

    topic: str | None = None
    payload: bytes | None = None
    qos: int | None = None
    retain: bool | None = None
    #: VerneMQ on_unsubscribe: the topic filters to unsubscribe instead
    topics: tuple[str, ...] | None = None
    kind: ClassVar[Kind] = "rewrite"


@quick_init
@dataclass(frozen=True, slots=True)
class Drop:
    """Do not publish the message (EMQX: header allow_publish=false)."""

    reason: str = ""
    kind: ClassVar[Kind] = "drop"


Decision = Union[Allow, Deny, Ignore, Rewrite, Drop]

ALLOW = Allow()
IGNORE = Ignore()

#: The answer each failure policy stands for.
POLICY_DECISIONS: dict[str, Decision] = {"allow": ALLOW, "deny": Deny("rule error"), "ignore": IGNORE}
