"""What a rule may hand to a broker's reply, checked when the rule decides: VerneMQ modifiers (keys,
types and ranges), allow(cache=...), and every string, number and payload a Decision carries.

A Decision that reaches an adapter must already be valid for the wire: a value the encoder cannot
write (an int JSON refuses, a lone surrogate protobuf refuses, a uint32 field given 2**40) used to
fail while the reply was built, after the decision was made, and became an HTTP 500 or an internal
error. Checked here, a bad value is a rule error, answered by the failure policy like any other.

VerneMQ turns modifier names into atoms with binary_to_existing_atom and crashes the client's
connection on a name it does not know (../shared/reference/vernemq-webhooks.md 1.4-1.5), so every
key is checked too, by the rule call that sets it, and an unknown one is a rule error, never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from types import MappingProxyType
from typing import Any

from .decisions import Decision
from .emqxoptions import LONE_SURROGATE, options_problem, utf8_size
from .hooks import HOOKS

Check = Callable[[str, Any], Any]

#: MQTT's Four Byte Integer, and the longest Erlang timer (ms): the widest count, size or interval
#: VerneMQ takes (session expiry, inflight and queue sizes, rates, lifetimes)
UINT32_MAX = 2**32 - 1
#: MQTT's largest packet (the Variable Byte Integer's maximum): no message or payload is bigger
MAX_PACKET = 268_435_455
#: an MQTT UTF-8 string or binary field holds at most this many bytes (a two-byte length)
MAX_MQTT_STRING = 65_535
#: allow(cache=SECONDS): an HTTP max-age past 2**31 - 1 is to be read as that (RFC 9111 1.2.2)
MAX_CACHE = 2**31 - 1


def mqtt_string_problem(value: Any) -> str | None:
    """Why `value` is not an MQTT UTF-8 string (str, UTF-8 encodable, no U+0000, at most 65,535
    bytes), or None. JSON and protobuf encoders refuse a lone surrogate; MQTT refuses the rest."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    size = utf8_size(value)
    if size is None:
        return LONE_SURROGATE
    if size > MAX_MQTT_STRING:
        return f"is {size} bytes long; MQTT strings hold at most {MAX_MQTT_STRING}"
    if "\x00" in value:
        return "holds the character U+0000, which MQTT strings may not"
    return None


def _number_text(value: Any) -> str:
    """A value for an error message: a 5000-digit int is named by its size, not printed."""
    if type(value) is int and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bool(key: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"modifier '{key}' must be True or False, not {_number_text(value)}")
    return value


def _int_in_range(low: int, high: int) -> Check:
    """A whole number in [low, high]; a finite float is rounded first, as VerneMQ rounds it."""

    def check(key: str, value: Any) -> int:
        if type(value) is float and value == value and value not in (float("inf"), float("-inf")):
            number = int(round(value))
        elif type(value) is int:
            number = value
        else:
            raise ValueError(f"modifier '{key}' must be a number, not {_number_text(value)}")
        if not low <= number <= high:
            raise ValueError(f"modifier '{key}' must be from {low} to {high}, not {_number_text(value)}")
        return number

    return check


_count = _int_in_range(0, UINT32_MAX)


def _str(key: str, value: Any) -> str:
    problem = mqtt_string_problem(value)
    if problem is not None:
        raise ValueError(f"modifier '{key}' {problem}")
    return str(value)


def _one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if type(value) is not str or value not in choices:
            raise ValueError(f"modifier '{key}' must be one of {', '.join(choices)}, not {_number_text(value)}")
        return value

    return check


def _int_in(*choices: int) -> Check:
    def check(key: str, value: Any) -> int:
        if type(value) is not int or value not in choices:
            raise ValueError(f"modifier '{key}' must be one of {', '.join(map(str, choices))}, "
                             f"not {_number_text(value)}")
        return value

    return check


def _bytes(key: str, value: Any) -> bytes:
    if isinstance(value, str):
        problem = mqtt_string_problem(value)
        if problem is not None and "U+0000" not in problem:  # binary data may hold a zero byte
            raise ValueError(f"modifier '{key}' {problem}")
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ValueError(f"modifier '{key}' must be bytes or a string, not {type(value).__name__}")
    if len(value) > MAX_MQTT_STRING:
        raise ValueError(f"modifier '{key}' is {len(value)} bytes long; MQTT binary data holds at most "
                         f"{MAX_MQTT_STRING}")
    return bytes(value)


def _user_properties(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"modifier '{key}' must be a dict of strings to strings, not {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        for what, text in (("key", k), ("value", v)):
            problem = mqtt_string_problem(text)
            if problem is not None:
                raise ValueError(f"modifier '{key}': a user property {what} {problem}")
        out[str(k)] = str(v)
    return out


def _nested(schema: Mapping[str, Check]) -> Check:
    def check(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"modifier '{key}' must be a dict, not {type(value).__name__}")
        return validate(value, schema, f"{key}.")

    return check


_REGISTER: dict[str, Check] = {
    **{k: _bool for k in ("allow_register", "allow_publish", "allow_subscribe", "allow_unsubscribe",
                          "clean_session", "upgrade_qos")},
    **{k: _count for k in ("max_connection_lifetime", "max_message_rate", "max_inflight_messages",
                           "retry_interval", "max_online_messages", "max_offline_messages", "max_drain_time",
                           "max_msgs_per_drain_step")},
    "max_message_size": _int_in_range(0, MAX_PACKET),
    "username": _str,
    "mountpoint": _str,
    "client_id": _str,
    "shared_subscription_policy": _one_of("prefer_local", "local_only", "random"),
    "queue_type": _one_of("fifo", "lifo"),
}
_PUBLISH: dict[str, Check] = {"throttle": _int_in_range(1, UINT32_MAX), "mountpoint": _str}

#: allow(modifiers=...) keys per VerneMQ hook; a hook not listed takes none.
SCHEMAS: Mapping[str, Mapping[str, Check]] = MappingProxyType({
    "auth_on_register": _REGISTER,
    "auth_on_register_m5": {**_REGISTER, "properties": _nested({"p_user_property": _user_properties,
                                                                "p_session_expiry_interval": _count})},
    "auth_on_publish": _PUBLISH,
    "auth_on_publish_m5": _PUBLISH,
    "on_auth_m5": {"reason_code": _int_in(0, 24),
                   "properties": _nested({"p_authentication_method": _str, "p_authentication_data": _bytes})},
})


#: hooks whose broker reads rewrite(topics=[]) as something else than "none of these topics": VerneMQ's
#: MQTT 3 on_unsubscribe treats an empty list as a plain ok (all_till_ok, vmq_mqtt_fsm.erl), so the
#: client's own topics are unsubscribed, while on_unsubscribe_m5 unsubscribes none
EMPTY_TOPICS_MISREAD = frozenset({"on_unsubscribe"})


def validate(modifiers: Mapping[str, Any], schema: Mapping[str, Check], prefix: str = "") -> dict[str, Any]:
    """The modifiers, checked and normalized; ValueError names the first bad key and what is accepted."""
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        check = schema.get(key) if isinstance(key, str) else None
        if check is None:
            raise ValueError(f"VerneMQ does not know the modifier '{prefix}{key}'; it accepts: {', '.join(schema)}")
        out[key] = check(prefix + key, value)
    if ("mountpoint" in out) != ("client_id" in out) and "client_id" in schema:
        raise ValueError("modifiers 'mountpoint' and 'client_id' must be set together (VerneMQ ignores one alone)")
    return out


def check_cache(cache: Any) -> int:
    """allow(cache=SECONDS): a whole number VerneMQ reads from `cache-control: max-age=N`."""
    if type(cache) is not int or not 0 <= cache <= MAX_CACHE:
        raise ValueError(f"allow(cache={_number_text(cache)}): cache is a whole number of seconds "
                         f"from 0 to {MAX_CACHE}")
    return cache


#: allow(tags=[...]) in RabbitMQ's user check: RabbitMQ splits `allow TAG ...` on spaces and makes an
#: Erlang atom of each tag (atoms are never freed), so tags are short names, and few
MAX_TAGS = 16
MAX_TAG = 64
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def rabbitmq_tags(tags: Any) -> tuple[str, ...]:
    """allow(tags=[...]): a list of RabbitMQ user tags (`administrator`, `monitoring`, ...)."""
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise ValueError(f"allow(tags=...) takes a list of tag names, not {type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"allow(tags=...) takes at most {MAX_TAGS} tags, not {len(tags)}")
    for tag in tags:
        if type(tag) is not str or not 0 < len(tag) <= MAX_TAG or not _TAG_CHARS.issuperset(tag):
            raise ValueError(f"allow(tags=...): {_number_text(tag)} is not a tag name (1 to {MAX_TAG} letters, "
                             "digits, '_', '-' or '.')")
    return tuple(tags)


def _topic_problem(topic: Any, what: str) -> str | None:
    problem = mqtt_string_problem(topic)
    if problem is not None:
        return f"{what} {problem}"
    if not topic:
        return f"{what} is empty"
    return None


#: characters the containers of one decision may fill in its reply (VerneMQ modifiers, rewritten topic
#: lists, RabbitMQ tags, allow()'s EMQX options), every string counted where it appears, plus 4 for
#: its quotes and comma. Each field's own bound does not compose with aliasing: a user property dict
#: of 1000 keys all holding one 60 KB string made an 80 MB webhook reply, built on the event loop.
MAX_CARRIED_TEXT = 1024 * 1024
#: the Decision fields that hold containers (each one's size is the sum of its parts)
CONTAINER_FIELDS = ("modifiers", "tags", "topics", "attrs", "acl")
_END = object()
#: decision class -> which of CONTAINER_FIELDS it has
_CARRIED_BY: dict[type, tuple[str, ...]] = {}


def carried_problem(decision: Decision) -> str | None:
    """Why the decision's containers would fill more than MAX_CARRIED_TEXT of a reply, or None.
    Walked without recursion and stopped at the budget, so it costs at most the budget, however many
    references (or a cycle) a value holds."""
    names = _CARRIED_BY.get(decision.__class__)
    if names is None:  # a class it has not seen: the fields of CONTAINER_FIELDS it has (absent ones cost a raise)
        names = _CARRIED_BY[decision.__class__] = tuple(n for n in CONTAINER_FIELDS if hasattr(decision, n))
    carried = [value for value in [getattr(decision, name) for name in names] if value is not None]
    if not carried:  # the usual decision carries none: no walk (an ABC's isinstance costs 300 ns)
        return None
    left = MAX_CARRIED_TEXT
    stack: list[Iterator[Any]] = [iter(carried)]
    while stack:
        value = next(stack[-1], _END)
        if value is _END:
            stack.pop()
            continue
        if isinstance(value, (str, bytes)):
            left -= len(value) + 4
        elif isinstance(value, Mapping):
            left -= 4
            stack.append(chain.from_iterable(value.items()))
        elif isinstance(value, (list, tuple, set, frozenset)):
            left -= 4
            stack.append(iter(value))
        else:
            left -= 8
        if left < 0:
            return (f"the decision would fill over {MAX_CARRIED_TEXT} characters of the broker's reply (its "
                    "modifiers, topics, tags or options together, each string counted where it appears)")
    return None


def decision_problem(hook: str, decision: Decision, channel: str = "") -> str | None:
    """Why a broker could not be sent this decision of `hook`'s rule, on a call that came over
    `channel` (hooks.CHANNELS), or None when every value it carries is one the broker's reply
    accepts. The rule calls check most of this where they are made (with file:line:col); this is the
    one check at the boundary, so no value that passed them, or came another way, can fail in an
    encoder, and no option reaches a reply that has no place for it. Per call, not per hook: EMQX's
    client.authenticate carries allow(superuser=...) over HTTP and not over ExHook."""
    kind = decision.kind
    if kind == "ignore":
        return None
    if kind == "allow" or kind == "rewrite":
        problem = carried_problem(decision)
        if problem is not None:
            return problem
    if kind == "deny" or kind == "drop":
        reason = decision.reason  # type: ignore[union-attr]
        problem = mqtt_string_problem(reason)
        return None if problem is None or "U+0000" in problem else f"the {kind}() reason {problem}"
    if kind == "allow":
        modifiers, cache, tags = decision.modifiers, decision.cache, decision.tags  # type: ignore[union-attr]
        info = HOOKS.get(hook)
        problem = options_problem(hook, channel, decision)
        if problem is not None:
            return problem
        try:
            if modifiers is not None:
                schema = SCHEMAS.get(hook)
                if schema is None:
                    return f"{hook} takes no modifiers"
                validate(modifiers, schema)
            if cache is not None:
                if info is None or not info.cacheable:
                    return f"{hook} answers are not cached: allow(cache=...) cannot be sent"
                check_cache(cache)
            if tags is not None:
                if info is None or not info.tagged:
                    return f"{hook} carries no user tags: allow(tags=...) cannot be sent"
                rabbitmq_tags(tags)
        except ValueError as exc:
            return str(exc)
        return None
    # rewrite
    if decision.topic is not None:  # type: ignore[union-attr]
        problem = _topic_problem(decision.topic, "the rewritten topic")  # type: ignore[union-attr]
        if problem is not None:
            return problem
    payload = decision.payload  # type: ignore[union-attr]
    if payload is not None and (not isinstance(payload, bytes) or len(payload) > MAX_PACKET):
        return f"the rewritten payload must be bytes of at most {MAX_PACKET}"
    qos = decision.qos  # type: ignore[union-attr]
    if qos is not None and (type(qos) is not int or qos not in (0, 1, 2)):
        return f"the rewritten qos must be 0, 1 or 2, not {_number_text(qos)}"
    retain = decision.retain  # type: ignore[union-attr]
    if retain is not None and type(retain) is not bool:
        return "the rewritten retain must be True or False"
    topics = decision.topics  # type: ignore[union-attr]
    if topics is not None and not topics and hook in EMPTY_TOPICS_MISREAD:
        return ("rewrite(topics=[]) is read by VerneMQ's MQTT 3 path as a plain ok, which unsubscribes every topic "
                "the client asked for (on_unsubscribe_m5 reads it as 'unsubscribe none'); to unsubscribe them "
                "all use allow() or ignore(), else keep at least one topic in the list")
    for topic in topics or ():
        problem = _topic_problem(topic, "a rewritten topic filter")
        if problem is not None:
            return problem
    return None
