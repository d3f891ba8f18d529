"""VerneMQ webhook bodies <-> Events and Decisions: the mapping alone, with no HTTP in it.

Facts from ../shared/reference/vernemq-webhooks.md: payloads are base64 unless the endpoint says
otherwise; user properties and authentication data are always base64; VerneMQ crashes the client's
connection on a reply without a valid `result` or with a modifier it does not know, so every reply
built here is one of the shapes it accepts.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..decisions import ALLOW, IGNORE, Decision
from ..events import EMPTY, Client, Event, Message, TopicFilter, freeze, frozen_map, json_view
from ..hooks import HOOKS
from ..modifiers import decision_problem
from .refusal import BadRequest as BadRequest  # its refusals, re-exported

BROKER = "vernemq"
CHANNEL = "webhook"
#: SUBACK codes for a refused topic: "not authorized" in MQTT 3 (0x80) and 5 (0x87)
REFUSED_QOS = {False: 128, True: 135}
SUBSCRIBE_HOOKS = ("auth_on_subscribe", "auth_on_subscribe_m5")
_RETAIN_HANDLING = ("send_retain", "send_if_new_sub", "dont_send")


class Unrepresentable(Exception):
    """A decision that cannot be put into a reply VerneMQ reads (e.g. a binary payload without base64)."""


# -- reading fields -------------------------------------------------------------------------------

def _field(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None,
           required: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(400, "missing_field", f"field '{key}' is missing")
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(400, "bad_field", f"field '{key}' must be {_kind_name(kind)}, not {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a number", bool: "true or false", list: "a list", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _qos(body: Mapping[str, Any], key: str = "qos") -> int:
    value = body.get(key, 0)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:  # on_offline_message sends "1"
        value = int(value)
    if type(value) is not int or not 0 <= value <= 255:
        raise BadRequest(400, "bad_field", f"field '{key}' must be a QoS number, not {value!r}")
    return value


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, "bad_base64", f"{what} is not valid base64") from None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _payload(body: Mapping[str, Any], b64: bool) -> bytes:
    value = _field(body, "payload", str, "")  # absent with vmq_webhooks' no_payload
    if b64:
        return _b64(value, "field 'payload'")
    try:
        return bytes(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (\ud800) is valid JSON but no text
        raise BadRequest(400, "bad_field", "field 'payload' is not valid UTF-8 text") from None


def _properties(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, str]]:
    """MQTT 5 properties: user properties decoded apart (always base64), auth data as bytes."""
    props = _field(body, "properties", dict, {})
    user: dict[str, str] = {}
    rest: dict[str, Any] = {}
    for key, value in props.items():
        if key == "p_user_property":
            if not isinstance(value, list):
                raise BadRequest(400, "bad_field", "properties.p_user_property must be a list")
            for item in value:
                if not (isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("val"), str)):
                    raise BadRequest(400, "bad_field", "each user property must be {\"key\": ..., \"val\": ...}")
                user[_text(_b64(item["key"], "a user property key"))] = _text(_b64(item["val"], "a user property value"))
        elif key == "p_authentication_data" and isinstance(value, str):
            rest[key] = _b64(value, "properties.p_authentication_data")
        else:
            rest[key] = freeze(value)
    return frozen_map(rest), frozen_map(user)


#: a text field's classes, a number field's and a flag's, as the usual body has them (null: absent)
_TEXT = frozenset({str, type(None)})
_NUMBER = frozenset({int, type(None)})
_FLAG = frozenset({bool, type(None)})


def _client(body: Mapping[str, Any]) -> Client:
    get = body.get
    # auth_on_subscribe and on_subscribe keep VerneMQ's own names addr/port
    cid, user, password, mount, peer_addr, addr = (get("client_id"), get("username"), get("password"),
                                                   get("mountpoint"), get("peer_addr"), get("addr"))
    peer_port, port = get("peer_port"), get("port")
    number = peer_port or port or 0  # used only once both are checked below
    # The usual body: every field of its type or absent, checked by class (no call per field; a bool is
    # no number here: its class is bool)
    if (cid.__class__ in _TEXT and user.__class__ in _TEXT and password.__class__ in _TEXT
            and mount.__class__ in _TEXT and peer_addr.__class__ in _TEXT and addr.__class__ in _TEXT
            and peer_port.__class__ in _NUMBER and port.__class__ in _NUMBER):
        return Client(cid or "", user or "", password or "", peer_addr or addr or "", number, 0, "mqtt", mount or "")
    # a field of another type: the same reading, field by field, to say which one is wrong
    host = _field(body, "peer_addr", str) or _field(body, "addr", str, "")
    checked = _field(body, "peer_port", int) or _field(body, "port", int, 0)
    return Client(id=_field(body, "client_id", str, ""), username=_field(body, "username", str, ""),
                  password=_field(body, "password", str, ""), peerhost=host, peerport=checked,
                  protocol="mqtt", mountpoint=_field(body, "mountpoint", str, ""))


def _message(body: Mapping[str, Any], b64: bool, props: Mapping[str, Any], user: Mapping[str, str]) -> Message:
    get = body.get
    cid, topic, retain = get("client_id"), get("topic"), get("retain")
    if cid.__class__ in _TEXT and topic.__class__ is str and retain.__class__ in _FLAG:  # the usual body
        return Message("", cid or "", topic, _payload(body, b64), _qos(body), retain or False, 0, EMPTY, props, user)
    return Message(from_=_field(body, "client_id", str, ""), topic=_field(body, "topic", str, required=True),
                   payload=_payload(body, b64), qos=_qos(body), retain=_field(body, "retain", bool, False),
                   properties=props, user_properties=user)


def _subscriptions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    topics: list[Mapping[str, Any]] = _field(body, "topics", list, required=True)
    for item in topics:
        if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
            raise BadRequest(400, "bad_field", "each entry of 'topics' must be {\"topic\": ..., \"qos\": ...}")
        _qos(item)
    return topics


# -- body -> events -------------------------------------------------------------------------------

def events_for(hook: str, body: Mapping[str, Any], b64: bool) -> list[Event]:
    """The events a body stands for: one, or one per requested topic for the subscribe hooks."""
    return list(iter_events(hook, body, b64))


def count_events(hook: str, body: Mapping[str, Any]) -> int:
    """How many events iter_events yields for a body it accepts."""
    return len(body["topics"]) if hook in SUBSCRIBE_HOOKS else 1


def iter_events(hook: str, body: Mapping[str, Any], b64: bool) -> Iterator[Event]:
    """events_for, lazily: the whole body is checked before the first event, but a subscription's
    per-topic events are built only as they are read (once a call's budget is spent, the rest are not)."""
    info = HOOKS[hook]
    names = info.names
    client = _client(body)
    # MQTT 5 properties reach the rule as `properties` where the hook has them, and always in `message`
    props, user = _properties(body) if "properties" in body else (frozen_map({}), frozen_map({}))
    data: dict[str, Any] = {"request": json_view(body)}
    if info.action is not None:  # "publish" or "subscribe", as authorize.star reads it
        data["action"] = info.action
    if "properties" in names:
        data["properties"] = props
    if "user_properties" in names:
        data["user_properties"] = user
    if "message" in names:
        msg = data["message"] = _message(body, b64, props, user)
        data["topic"] = msg.topic
        data["qos"] = msg.qos
    if "topics" in names:
        raw = _field(body, "topics", list, required=True)
        if hook.startswith("on_unsubscribe"):
            if not all(isinstance(t, str) for t in raw):
                raise BadRequest(400, "bad_field", "'topics' must be a list of strings")
            data["topics"] = tuple(raw)
        else:
            data["topics"] = tuple(TopicFilter(t["topic"], _qos(t)) for t in _subscriptions(body))
    if hook in SUBSCRIBE_HOOKS:
        topics = _subscriptions(body)  # all checked now: a bad entry refuses the call before any rule runs
        return (Event(hook, BROKER, client, MappingProxyType({**data, "topic": t["topic"], "qos": _qos(t)}), CHANNEL)
                for t in topics)
    return iter((Event(hook, BROKER, client, MappingProxyType(data), CHANNEL),))


# -- decisions -> reply ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reply:
    body: dict[str, Any]
    headers: Mapping[str, str]


NO_HEADERS: Mapping[str, str] = frozen_map({})
NOTIFIED = Reply({}, NO_HEADERS)
NEXT = Reply({"result": "next"}, NO_HEADERS)
OK = Reply({"result": "ok"}, NO_HEADERS)


def _error(reason: str) -> Reply:
    return Reply({"result": {"error": reason or "not_allowed"}}, NO_HEADERS)


def plain_payload_problem(decision: Decision) -> str | None:
    """Why a decision cannot be sent to an endpoint with plain (not base64) payloads, or None: a
    Engine.decide check, so the rewrite is a rule error when it is made, not a failed reply."""
    if decision.kind == "rewrite" and decision.payload is not None:  # type: ignore[union-attr]
        try:
            decision.payload.decode("utf-8")  # type: ignore[union-attr]
        except UnicodeDecodeError:
            return "a rewritten payload that is not UTF-8 needs base64 (vmq_webhooks base64encode = on)"
    return None


def _encode_payload(payload: bytes, b64: bool) -> str:
    if b64:
        return base64.b64encode(payload).decode("ascii")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Unrepresentable("a rewritten payload that is not UTF-8 needs base64 (vmq_webhooks base64encode = on)") from None


def _encode_modifiers(modifiers: Mapping[str, Any]) -> dict[str, Any]:
    """Back into VerneMQ's encodings: user properties and auth data as base64. A map or list left
    empty is left out (see _without_empty)."""
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        if key == "properties":
            props: dict[str, Any] = {}
            for pkey, pvalue in value.items():
                if pkey == "p_user_property":
                    props[pkey] = [{"key": base64.b64encode(k.encode()).decode(), "val": base64.b64encode(v.encode()).decode()}
                                   for k, v in pvalue.items()]
                elif pkey == "p_authentication_data":
                    props[pkey] = base64.b64encode(pvalue).decode()
                else:
                    props[pkey] = pvalue
            out[key] = props
        else:
            out[key] = value
    return _without_empty(out)


def _without_empty(modifiers: dict[str, Any]) -> dict[str, Any]:
    """The modifiers with every empty map or list left out, at any depth (a map emptied so is left
    out too). VerneMQ decodes JSON in jsx's proplist mode, where {} becomes [{}]: its
    normalize_properties has no clause for that and crashes the client's connection (a rule's
    `properties: {}`). None of the modifiers it takes gives an empty map or list a meaning of its
    own (properties replace nothing on these hooks), so empty is sent as absent."""
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        if isinstance(value, dict):
            value = _without_empty(value)
        if (isinstance(value, (dict, list)) and not value):
            continue
        out[key] = value
    return out


def _allow(hook: str, decision: Any) -> Reply:
    body: dict[str, Any] = {"result": "ok"}
    if decision.modifiers:
        modifiers = _encode_modifiers(decision.modifiers)
        if modifiers:
            body["modifiers"] = modifiers
    headers = NO_HEADERS
    if decision.cache is not None and HOOKS[hook].cacheable:
        headers = frozen_map({"cache-control": f"max-age={decision.cache}"})
    return Reply(body, headers) if len(body) > 1 or headers else OK


def _rewrite(hook: str, decision: Any, b64: bool) -> Reply:
    if decision.topics is not None:  # on_unsubscribe: v3 top-level, m5 under modifiers
        topics = list(decision.topics)
        return Reply({"result": "ok", "modifiers": {"topics": topics}} if hook.endswith("_m5")
                     else {"result": "ok", "topics": topics}, NO_HEADERS)
    modifiers: dict[str, Any] = {}
    if decision.topic is not None:
        modifiers["topic"] = decision.topic
    if decision.payload is not None:
        modifiers["payload"] = _encode_payload(decision.payload, b64)
    if decision.qos is not None:
        modifiers["qos"] = decision.qos
    if decision.retain is not None:
        modifiers["retain"] = decision.retain
    return Reply({"result": "ok", "modifiers": modifiers}, NO_HEADERS) if modifiers else OK


def reply_for(hook: str, decision: Decision, b64: bool) -> Reply:
    """The reply to a hook with one decision (every hook but the subscribe ones)."""
    if not HOOKS[hook].can_decide:
        return NOTIFIED
    if decision is not ALLOW and decision is not IGNORE:  # checked when made; again here, where it is sent
        problem = decision_problem(hook, decision)
        if problem is not None:
            raise Unrepresentable(problem)
    kind = decision.kind
    if kind == "allow":
        return _allow(hook, decision)
    if kind == "rewrite":
        return _rewrite(hook, decision, b64)
    if kind in ("deny", "drop"):
        return _error(decision.reason)  # type: ignore[union-attr]
    return NEXT


def subscribe_reply(hook: str, body: Mapping[str, Any], decisions: Sequence[Decision]) -> Reply:
    """One answer for a subscribe with a decision per topic.

    All allowed: ok (cached if every allow asked for it). All ignored: next. Otherwise the whole topic
    list, which replaces the request's: allowed topics keep their qos and options, the rest are refused
    (a topic the rule ignored cannot be handed to the next plugin alone).
    """
    kinds = {d.kind for d in decisions}
    if kinds <= {"ignore"}:
        return NEXT
    if kinds == {"allow"}:
        caches = [d.cache for d in decisions]  # type: ignore[union-attr]
        if all(c is not None for c in caches):
            return Reply({"result": "ok"}, frozen_map({"cache-control": f"max-age={min(caches)}"}))  # type: ignore[type-var]
        return OK
    m5 = hook.endswith("_m5")
    topics = []
    for entry, decision in zip(_subscriptions(body), decisions):
        granted = decision.kind == "allow"
        item: dict[str, Any] = {"topic": entry["topic"], "qos": _qos(entry) if granted else REFUSED_QOS[m5]}
        if m5 and granted:
            item.update(_m5_options(entry))
        topics.append(item)
    return Reply({"result": "ok", "modifiers": {"topics": topics}} if m5 else {"result": "ok", "topics": topics},
                 NO_HEADERS)


def _m5_options(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The subscription options of an MQTT 5 topic, echoed so an allowed topic keeps them."""
    out: dict[str, Any] = {}
    for key in ("no_local", "rap"):
        if isinstance(entry.get(key), bool):
            out[key] = entry[key]
    if entry.get("retain_handling") in _RETAIN_HANDLING:
        out["retain_handling"] = entry["retain_handling"]
    return out
