"""RabbitMQ's HTTP auth backend (rabbitmq_auth_backend_http) as events and answers.

RabbitMQ asks four questions, each at its own path: may this user log in (`user`), reach this
virtual host (`vhost`), use this queue or exchange (`resource`), publish or subscribe to this routing
key (`topic`). The fields come as a query string (`auth_http.http_method = get`) or a form body
(`post`). It reads the answer's body: `allow`, `allow TAG ...` (user check only) or `deny`, with a 200
or 201; anything else is an error to it. Only spaces are stripped: `req/2` has no case for `allow\n`
and the client's connection process crashes, and the user check reads the newline as a tag
(deps/rabbitmq_auth_backend_http/src/rabbit_auth_backend_http.erl, `req/2` and
`user_login_authentication/2`; measured with 3.10.8), so every answer here is one of a few constant
strings, or `allow` and checked tags.

Without a rule file, a check answers what a RabbitMQ user would expect (nodefaults.NO_RULE_DEFAULTS).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..decisions import Decision
from ..events import Client, Event, frozen_map
from ..nodefaults import RABBITMQ_MQTT_EXCHANGE
from .refusal import BadRequest as BadRequest  # its refusals, re-exported
from .refusal import unique_fields

BROKER = "rabbitmq"
CHANNEL = "http"

#: request path -> hook
PATHS: Mapping[str, str] = {
    "/rabbitmq/user": "rabbitmq.user",
    "/rabbitmq/vhost": "rabbitmq.vhost",
    "/rabbitmq/resource": "rabbitmq.resource",
    "/rabbitmq/topic": "rabbitmq.topic",
}
PREFIX = "/rabbitmq/"

#: the fields each check must carry (rabbit_auth_backend_http.erl builds them all, every time)
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "rabbitmq.user": ("username",),
    "rabbitmq.vhost": ("username", "vhost"),
    "rabbitmq.resource": ("username", "vhost", "resource", "name", "permission"),
    "rabbitmq.topic": ("username", "vhost", "resource", "name", "permission", "routing_key"),
}

#: a topic check's permission -> the action authorize.star reads (check_topic_access asks write for a
#: publish, read for a subscription's binding; RabbitMQ has no other permission for topics)
TOPIC_ACTIONS: Mapping[str, str] = {"write": "publish", "read": "subscribe"}
#: most fields one call may carry: RabbitMQ sends at most a dozen
MAX_FIELDS = 64

ANSWER_ALLOW = "allow"
ANSWER_DENY = "deny"


def parse_fields(raw: str) -> dict[str, str]:
    """The fields of a query string or form body. A repeated field is refused: which one RabbitMQ
    meant cannot be known, and a rule must never read one copy while a log shows the other."""
    return unique_fields(raw, MAX_FIELDS)


def routing_key_to_topic(routing_key: str, action: str) -> str:
    """The MQTT topic a routing key was made from (rabbitmq_mqtt: `/` -> `.`, `+` -> `*`, `#` kept).

    A `.` inside an MQTT topic level cannot be told from a level separator: both come back as `/`.
    A `*` level comes back as `+` in a subscription (a filter), and stays `*` in a publish (a topic
    name cannot hold `+`)."""
    levels = routing_key.split(".")
    if action == "subscribe":
        levels = ["+" if level == "*" else level for level in levels]
    return "/".join(levels)


def _tags(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def event_for(hook: str, fields: Mapping[str, str]) -> Event:
    """The Event of one check, from its fields; BadRequest when a field RabbitMQ always sends is missing."""
    missing = [name for name in REQUIRED[hook] if name not in fields]
    if missing:
        raise BadRequest(400, "missing_field", f"{hook}: field{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} {'are' if len(missing) > 1 else 'is'} missing")
    get = fields.get
    username = fields["username"]
    if hook == "rabbitmq.user":
        client = Client(id=get("client_id", ""), username=username, password=get("password", ""))
        return Event(hook, BROKER, client, frozen_map({"vhost": get("vhost", "")}), channel=CHANNEL)
    tags = _tags(get("tags", ""))
    if hook == "rabbitmq.vhost":
        ip = get("ip", "")
        client = Client(id=get("client_id", ""), username=username, peerhost=ip)
        return Event(hook, BROKER, client, frozen_map({"vhost": fields["vhost"], "ip": ip, "tags": tags}),
                     channel=CHANNEL)
    data: dict[str, object] = {"vhost": fields["vhost"], "resource": fields["resource"], "name": fields["name"],
                               "permission": fields["permission"], "tags": tags}
    if hook == "rabbitmq.resource":  # rabbitmq_mqtt sends the client id here too
        return Event(hook, BROKER, Client(id=get("client_id", ""), username=username), frozen_map(data),
                     channel=CHANNEL)
    # topic: rabbitmq_mqtt puts the client id and username in the authorization context's variable_map
    action = TOPIC_ACTIONS.get(fields["permission"])
    if action is None:  # what authorize.star reads is one of two actions, never a third it did not foresee
        raise BadRequest(400, "bad_field", f"{hook}: permission must be write or read, not "
                         f"{fields['permission'][:20]!r}")
    routing_key = fields["routing_key"]
    client = Client(id=get("variable_map.client_id", ""), username=get("variable_map.username", username))
    data.update(routing_key=routing_key, action=action, topic=routing_key_to_topic(routing_key, action), qos=None)
    return Event(hook, BROKER, client, frozen_map(data), channel=CHANNEL)


#: what a hand-written event (a test table, `hookrules eval`) leaves out, as RabbitMQ's MQTT plugin sends it
_SPEC_DEFAULTS: Mapping[str, Mapping[str, str]] = {
    "rabbitmq.user": {"vhost": "/"},
    "rabbitmq.vhost": {"vhost": "/", "tags": ""},
    "rabbitmq.resource": {"vhost": "/", "tags": ""},
    "rabbitmq.topic": {"vhost": "/", "resource": "topic", "name": RABBITMQ_MQTT_EXCHANGE, "tags": ""},
}
_SPEC_NAMES = ("vhost", "ip", "resource", "name", "permission", "routing_key")


def event_from_spec(hook: str, spec: Mapping[str, object], client: Client) -> Event:
    """A hand-written event of a RabbitMQ check, made the way the wire's is (event_for), so a table tests
    only events RabbitMQ can send: `tags` a list of names, `ip` the peer's address; in a topic check the
    routing key and permission from `topic` and `action` when not given, and the two must agree.
    ValueError says what is wrong."""
    fields: dict[str, str] = dict(_SPEC_DEFAULTS[hook])
    fields["username"] = client.username
    if hook == "rabbitmq.user":
        fields["password"] = client.password
    if client.id:
        fields["variable_map.client_id" if hook == "rabbitmq.topic" else "client_id"] = client.id
    if client.peerhost:
        fields["ip"] = client.peerhost
    for name in _SPEC_NAMES:
        if name in spec:
            if not isinstance(spec[name], str):
                raise ValueError(f"'{name}' is a string, as RabbitMQ sends it")
            fields[name] = spec[name]  # type: ignore[assignment]
    tags = spec.get("tags", ())
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise ValueError("'tags' is a list of tag names, e.g. [management]")
    if tags:
        fields["tags"] = " ".join(tags)
    if hook == "rabbitmq.topic":
        action, topic = spec.get("action"), spec.get("topic")
        if "permission" not in fields and isinstance(action, str):
            fields["permission"] = {v: k for k, v in TOPIC_ACTIONS.items()}.get(action, action)
        if "routing_key" not in fields and isinstance(topic, str):
            fields["routing_key"] = topic.replace("/", ".").replace("+", "*")
    try:
        event = event_for(hook, fields)
    except BadRequest as exc:
        raise ValueError(str(exc)) from None
    for name in ("action", "topic"):
        if name in spec and spec[name] != event.data.get(name):
            raise ValueError(f"'{name}' {spec[name]!r} is not what RabbitMQ's fields make of it: "
                             f"{event.data.get(name)!r} (from permission {fields.get('permission')!r} and routing "
                             f"key {fields.get('routing_key')!r}); give one or the other, or both agreeing")
    return event


def answer_text(decision: Decision) -> str:
    """The body RabbitMQ reads: allow (with the user's tags) or deny; ignore() is deny, which sends
    RabbitMQ on to its next backend."""
    if decision.kind == "allow":
        tags = getattr(decision, "tags", None)
        return ANSWER_ALLOW + "".join(" " + tag for tag in tags) if tags else ANSWER_ALLOW
    return ANSWER_DENY
