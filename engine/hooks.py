"""The hook vocabulary of both brokers: which rule files are valid, what each rule reads and may decide.

Broker hook names appear here and in the adapters only; everything else looks hooks up in `HOOKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Broker = Literal["emqx", "vernemq"]
Policy = Literal["deny", "ignore", "allow"]

RULE_SUFFIX = ".star"

#: What every rule reads, whatever the hook.
COMMON_NAMES = ("hook", "broker", "client")

#: Decision helpers by what a hook can do with the answer.
AUTH = frozenset({"allow", "deny", "ignore"})
PUBLISH = frozenset({"allow", "deny", "ignore", "rewrite", "drop"})
NOTIFY = frozenset({"ignore"})


@dataclass(frozen=True, slots=True)
class HookInfo:
    """One broker hook as hookrules serves it."""

    name: str
    broker: Broker
    #: decision functions a rule file for this hook may call
    decisions: frozenset[str]
    #: names the rule reads besides COMMON_NAMES
    names: tuple[str, ...]
    #: what a rule error answers unless the config says otherwise
    failure_policy: Policy = "ignore"
    #: whether the rule may declare TOPICS (EMQX HookSpec.topics, message hooks only)
    topic_filtered: bool = False

    @property
    def can_decide(self) -> bool:
        return self.decisions != NOTIFY

    @property
    def all_names(self) -> tuple[str, ...]:
        return COMMON_NAMES + self.names


def _emqx(name: str, decisions: frozenset[str], *names: str, policy: Policy = "ignore") -> HookInfo:
    return HookInfo(name, "emqx", decisions, names, policy, name.startswith("message."))


def _vmq(name: str, decisions: frozenset[str], *names: str, policy: Policy = "ignore") -> HookInfo:
    return HookInfo(name, "vernemq", decisions, names + ("request",), policy)


_CONN_PROPS = ("conn", "properties", "user_properties")
_SUBSCRIBE = ("topic_filters", "properties", "user_properties")

EMQX_HOOKS: tuple[HookInfo, ...] = (
    _emqx("client.connect", NOTIFY, *_CONN_PROPS),
    _emqx("client.connack", NOTIFY, *_CONN_PROPS, "result_code"),
    _emqx("client.connected", NOTIFY),
    _emqx("client.disconnected", NOTIFY, "reason"),
    # EMQX's own failed_action defaults to deny for these two: a broken rule must not let clients in.
    _emqx("client.authenticate", AUTH, "result", policy="deny"),
    _emqx("client.authorize", AUTH, "action", "topic", "result", policy="deny"),
    _emqx("client.subscribe", NOTIFY, *_SUBSCRIBE),
    _emqx("client.unsubscribe", NOTIFY, *_SUBSCRIBE),
    _emqx("session.created", NOTIFY),
    _emqx("session.subscribed", NOTIFY, "topic", "subopts"),
    _emqx("session.unsubscribed", NOTIFY, "topic"),
    _emqx("session.resumed", NOTIFY),
    _emqx("session.discarded", NOTIFY),
    _emqx("session.takenover", NOTIFY),
    _emqx("session.terminated", NOTIFY, "reason"),
    _emqx("message.publish", PUBLISH, "message"),
    _emqx("message.delivered", NOTIFY, "message"),
    _emqx("message.acked", NOTIFY, "message"),
    _emqx("message.dropped", NOTIFY, "message", "reason"),
)

# VerneMQ hooks are listed now so one rules directory can hold both brokers' files; the
# webhooks adapter (issue 3) gives them their data.
_VMQ_MSG = ("message", "topic", "qos")
VERNEMQ_HOOKS: tuple[HookInfo, ...] = (
    _vmq("auth_on_register", AUTH, policy="deny"),
    _vmq("auth_on_register_m5", AUTH, "properties", "user_properties", policy="deny"),
    _vmq("auth_on_publish", PUBLISH, *_VMQ_MSG, policy="deny"),
    _vmq("auth_on_publish_m5", PUBLISH, *_VMQ_MSG, policy="deny"),
    _vmq("auth_on_subscribe", AUTH, "topic", "qos", policy="deny"),
    _vmq("auth_on_subscribe_m5", AUTH, "topic", "qos", "properties", "user_properties", policy="deny"),
    _vmq("on_auth_m5", AUTH, "properties", policy="deny"),
    _vmq("on_register", NOTIFY),
    _vmq("on_register_m5", NOTIFY, "properties", "user_properties"),
    _vmq("on_publish", NOTIFY, *_VMQ_MSG),
    _vmq("on_publish_m5", NOTIFY, *_VMQ_MSG),
    _vmq("on_subscribe", NOTIFY, "topics"),
    _vmq("on_subscribe_m5", NOTIFY, "topics", "properties", "user_properties"),
    _vmq("on_unsubscribe", frozenset({"allow", "ignore", "rewrite"}), "topics"),
    _vmq("on_unsubscribe_m5", frozenset({"allow", "ignore", "rewrite"}), "topics", "properties", "user_properties"),
    _vmq("on_deliver", frozenset({"allow", "ignore", "rewrite"}), *_VMQ_MSG),
    _vmq("on_deliver_m5", frozenset({"allow", "ignore", "rewrite"}), *_VMQ_MSG),
    _vmq("on_offline_message", NOTIFY, *_VMQ_MSG),
    _vmq("on_client_wakeup", NOTIFY),
    _vmq("on_client_offline", NOTIFY),
    _vmq("on_client_gone", NOTIFY),
    _vmq("on_session_expired", NOTIFY),
)

HOOKS: dict[str, HookInfo] = {h.name: h for h in EMQX_HOOKS + VERNEMQ_HOOKS}


def hook_for_file(filename: str) -> str | None:
    """The hook a rule file serves (`client.authenticate.star` -> `client.authenticate`), or None."""
    if not filename.endswith(RULE_SUFFIX):
        return None
    name = filename[: -len(RULE_SUFFIX)]
    return name if name in HOOKS else None


def valid_file_names(broker: Broker | None = None) -> list[str]:
    """Every valid rule file name, for error messages that say what to write instead."""
    return [h.name + RULE_SUFFIX for h in HOOKS.values() if broker is None or h.broker == broker]
