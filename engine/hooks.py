"""The hook vocabulary of every broker: which rule files are valid, what each rule reads and may decide.

Broker hook names appear here and in the adapters only; everything else looks hooks up in `HOOKS`.
Two portable hooks, `authenticate` and `authorize`, are no broker's: their files answer every
broker's connect and topic checks that have no file of their own (`chain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


Broker = Literal["emqx", "vernemq", "rabbitmq", "portable"]
Policy = Literal["deny", "ignore", "allow"]

RULE_SUFFIX = ".star"

#: What every rule reads, whatever the hook. `channel` says which of a broker's front-ends made the
#: call (CHANNELS): EMQX calls client.authenticate and client.authorize over ExHook and over its HTTP
#: authenticator and authorizer, and a rule may answer the two differently.
COMMON_NAMES = ("hook", "broker", "client", "channel")

#: broker -> the channels its calls arrive on, the first the one a hand-written event (eventspec) means
#: when it names none. EMQX: "exhook" (gRPC) or "http" (/emqx/authn, /emqx/authz); VerneMQ: "webhook";
#: RabbitMQ: "http" (rabbitmq_auth_backend_http).
CHANNELS: dict[str, tuple[str, ...]] = {"emqx": ("exhook", "http"), "vernemq": ("webhook",), "rabbitmq": ("http",)}

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
    #: the fields rewrite() may set in this hook
    rewrites: frozenset[str] = frozenset()
    #: whether allow(cache=SECONDS) means something (VerneMQ caches ok answers of these hooks)
    cacheable: bool = False
    #: the hook whose rule serves this one when it has no file of its own (VerneMQ's _m5 hooks
    #: fall back to their MQTT 3 twin, so one rule serves clients of both protocol versions)
    fallback: str | None = None
    #: the `action` a rule reads in this hook when it is always the same (VerneMQ's publish and
    #: subscribe hooks); None where the call carries it, or where there is none
    action: str | None = None
    #: whether allow(tags=[...]) means something (RabbitMQ's user check answers `allow TAG ...`)
    tagged: bool = False

    @property
    def can_decide(self) -> bool:
        return self.decisions != NOTIFY

    @property
    def all_names(self) -> tuple[str, ...]:
        return COMMON_NAMES + self.names


#: The portable hooks: no broker calls them; their files answer the broker hooks that fall back to them.
#: authorize's `qos` is None where the broker does not send one (EMQX's and RabbitMQ's topic checks).
AUTHORIZE_NAMES = ("action", "topic", "qos")
PORTABLE_HOOKS: tuple[HookInfo, ...] = (
    HookInfo("authenticate", "portable", AUTH, (), "deny"),
    HookInfo("authorize", "portable", AUTH, AUTHORIZE_NAMES, "deny"),
)
#: broker hook (an _m5 hook through its MQTT 3 twin) -> the portable hook that answers it without a file
PORTABLE_FALLBACKS = {
    "client.authenticate": "authenticate", "auth_on_register": "authenticate", "rabbitmq.user": "authenticate",
    "client.authorize": "authorize", "auth_on_subscribe": "authorize", "auth_on_publish": "authorize",
    "rabbitmq.topic": "authorize",
}


def _emqx(name: str, decisions: frozenset[str], *names: str, policy: Policy = "ignore") -> HookInfo:
    # EMQX reads back only topic, payload and qos of a returned message
    rewrites = frozenset({"topic", "payload", "qos"}) if "rewrite" in decisions else frozenset()
    return HookInfo(name, "emqx", decisions, names, policy, name.startswith("message."), rewrites,
                    fallback=PORTABLE_FALLBACKS.get(name))


def _vmq(name: str, decisions: frozenset[str], *names: str, policy: Policy = "ignore",
         rewrites: frozenset[str] = frozenset()) -> HookInfo:
    cacheable = name.startswith(("auth_on_register", "auth_on_publish", "auth_on_subscribe"))
    twin = name.removesuffix("_m5") if name.endswith("_m5") and name != "on_auth_m5" else None
    portable = PORTABLE_FALLBACKS.get(name.removesuffix("_m5"))
    action = ("publish" if name.startswith("auth_on_publish") else
              "subscribe" if name.startswith("auth_on_subscribe") else None)
    return HookInfo(name, "vernemq", decisions, names + ("request",), policy, False, rewrites, cacheable,
                    twin or portable, action)


_CONN_PROPS = ("conn", "properties", "user_properties")
_SUBSCRIBE = ("topic_filters", "properties", "user_properties")

EMQX_HOOKS: tuple[HookInfo, ...] = (
    _emqx("client.connect", NOTIFY, *_CONN_PROPS),
    _emqx("client.connack", NOTIFY, *_CONN_PROPS, "result_code"),
    _emqx("client.connected", NOTIFY),
    _emqx("client.disconnected", NOTIFY, "reason"),
    # EMQX's own failed_action defaults to deny for these two: a broken rule must not let clients in.
    # `request`: the fields EMQX's HTTP authenticator/authorizer sent as they came (zone, listener,
    # cert_pem, client_attrs.*, retain ...: what has no place in `client`); empty over ExHook
    _emqx("client.authenticate", AUTH, "result", "request", policy="deny"),
    _emqx("client.authorize", AUTH, *AUTHORIZE_NAMES, "result", "request", policy="deny"),
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

# VerneMQ: `request` is the raw JSON body, for fields only VerneMQ has (clean_session, listener_*, ...).
_VMQ_MSG = ("message", "topic", "qos")
_M5 = ("properties", "user_properties")
_PUBLISH_REWRITES = frozenset({"topic", "payload", "qos", "retain"})
_DELIVER = frozenset({"allow", "ignore", "rewrite"})
_UNSUBSCRIBE = frozenset({"allow", "ignore", "rewrite"})
VERNEMQ_HOOKS: tuple[HookInfo, ...] = (
    _vmq("auth_on_register", AUTH, policy="deny"),
    _vmq("auth_on_register_m5", AUTH, *_M5, policy="deny"),
    _vmq("auth_on_publish", PUBLISH, *_VMQ_MSG, "action", policy="deny", rewrites=_PUBLISH_REWRITES),
    _vmq("auth_on_publish_m5", PUBLISH, *_VMQ_MSG, "action", policy="deny", rewrites=_PUBLISH_REWRITES),
    # subscribe hooks run the rule once per requested topic
    _vmq("auth_on_subscribe", AUTH, *AUTHORIZE_NAMES, policy="deny"),
    _vmq("auth_on_subscribe_m5", AUTH, *AUTHORIZE_NAMES, *_M5, policy="deny"),
    _vmq("on_auth_m5", AUTH, "properties", policy="deny"),
    _vmq("on_register", NOTIFY),
    _vmq("on_register_m5", NOTIFY, *_M5),
    _vmq("on_publish", NOTIFY, *_VMQ_MSG),
    _vmq("on_publish_m5", NOTIFY, *_VMQ_MSG),
    _vmq("on_subscribe", NOTIFY, "topics"),
    _vmq("on_subscribe_m5", NOTIFY, "topics", *_M5),
    _vmq("on_unsubscribe", _UNSUBSCRIBE, "topics", rewrites=frozenset({"topics"})),
    _vmq("on_unsubscribe_m5", _UNSUBSCRIBE, "topics", *_M5, rewrites=frozenset({"topics"})),
    _vmq("on_deliver", _DELIVER, *_VMQ_MSG, rewrites=frozenset({"topic", "payload"})),
    _vmq("on_deliver_m5", _DELIVER, *_VMQ_MSG, rewrites=frozenset({"topic", "payload"})),
    _vmq("on_offline_message", NOTIFY, *_VMQ_MSG),
    _vmq("on_client_wakeup", NOTIFY),
    _vmq("on_client_offline", NOTIFY),
    _vmq("on_client_gone", NOTIFY),
    _vmq("on_session_expired", NOTIFY),
)

# RabbitMQ (rabbitmq_auth_backend_http): one hook per check, named after its path. Every answer is
# allow or deny: ignore() answers deny, which sends RabbitMQ on to its next auth backend.
_RMQ_RESOURCE = ("vhost", "resource", "name", "permission", "tags")
RABBITMQ_HOOKS: tuple[HookInfo, ...] = (
    HookInfo("rabbitmq.user", "rabbitmq", AUTH, ("vhost",), "deny", fallback="authenticate", tagged=True),
    HookInfo("rabbitmq.vhost", "rabbitmq", AUTH, ("vhost", "ip", "tags"), "deny"),
    HookInfo("rabbitmq.resource", "rabbitmq", AUTH, _RMQ_RESOURCE, "deny"),
    HookInfo("rabbitmq.topic", "rabbitmq", AUTH, _RMQ_RESOURCE + ("routing_key",) + AUTHORIZE_NAMES, "deny",
             fallback="authorize"),
)

HOOKS: dict[str, HookInfo] = {h.name: h for h in EMQX_HOOKS + VERNEMQ_HOOKS + RABBITMQ_HOOKS + PORTABLE_HOOKS}

#: the hooks that let a client in: one that refuses everything takes the whole instance out of service
AUTHENTICATION_HOOKS = frozenset({"client.authenticate", "auth_on_register", "auth_on_register_m5", "on_auth_m5",
                                  "rabbitmq.user"})

#: the longest chain of files a hook may be answered by (auth_on_register_m5 -> auth_on_register -> authenticate)
MAX_CHAIN = 3


def _chain(hook: str) -> tuple[str, ...]:
    out = [hook]
    while (following := HOOKS[out[-1]].fallback) is not None and len(out) < MAX_CHAIN:
        out.append(following)
    return tuple(out)


#: hook -> the hooks whose rule files may answer it, most specific first: its own file, then (VerneMQ's
#: _m5 hooks) its MQTT 3 twin's, then the portable file's. The first that exists answers.
CHAINS: dict[str, tuple[str, ...]] = {name: _chain(name) for name in HOOKS}


def answered_hooks(source: str) -> tuple[str, ...]:
    """The broker hooks whose chain reaches `source` (a file's hook), itself first where a broker calls it."""
    return tuple(h for h in HOOKS if source in CHAINS[h] and HOOKS[h].broker != "portable")


def hook_for_file(filename: str) -> str | None:
    """The hook a rule file serves (`client.authenticate.star` -> `client.authenticate`), or None."""
    if not filename.endswith(RULE_SUFFIX):
        return None
    name = filename[: -len(RULE_SUFFIX)]
    return name if name in HOOKS else None


def valid_file_names(broker: Broker | None = None) -> list[str]:
    """Every valid rule file name, for error messages that say what to write instead."""
    return [h.name + RULE_SUFFIX for h in HOOKS.values() if broker is None or h.broker in (broker, "portable")]
