"""What a rule answers. Adapters turn these into broker replies; the engine never sees a wire format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union

from .records import frozen_record

Kind = Literal["allow", "deny", "ignore", "rewrite", "drop"]


@frozen_record
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


@frozen_record
class Deny:
    reason: str = ""
    kind: ClassVar[Kind] = "deny"


@frozen_record
class Ignore:
    kind: ClassVar[Kind] = "ignore"


@frozen_record
class Rewrite:
    """Publish the message with these fields changed; None keeps the original value."""

    topic: str | None = None
    payload: bytes | None = None
    qos: int | None = None
    retain: bool | None = None
    #: VerneMQ on_unsubscribe: the topic filters to unsubscribe instead
    topics: tuple[str, ...] | None = None
    kind: ClassVar[Kind] = "rewrite"


@frozen_record
class Drop:
    """Do not publish the message (EMQX: header allow_publish=false)."""

    reason: str = ""
    kind: ClassVar[Kind] = "drop"


Decision = Union[Allow, Deny, Ignore, Rewrite, Drop]

ALLOW = Allow()
IGNORE = Ignore()

#: The answer each failure policy stands for.
POLICY_DECISIONS: dict[str, Decision] = {"allow": ALLOW, "deny": Deny("rule error"), "ignore": IGNORE}
