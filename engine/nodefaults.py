"""What a call answers when no rule file answers its hook: ignore() for every hook but RabbitMQ's
checks, whose every answer is allow or deny (ignore is deny there).

Here, not in the RabbitMQ adapter: the server, `hookrules eval` and `hookrules test` must all answer a
call no file answers the same way (Engine.decide asks no_rule_decision).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .decisions import ALLOW, IGNORE, Decision, Deny
from .events import Event

#: the exchange MQTT publishes to and binds its queues to (rabbitmq_mqtt's `mqtt.exchange` default)
RABBITMQ_MQTT_EXCHANGE = "amq.topic"
#: the queue rabbitmq_mqtt declares for a client's subscriptions: mqtt-subscription-<client id>qos<N>
RABBITMQ_MQTT_QUEUE_PREFIX = "mqtt-subscription-"
_DENY = Deny()


def rabbitmq_mqtt_queues(client_id: str) -> frozenset[str]:
    """The queues rabbitmq_mqtt declares for this client's subscriptions, one per QoS it grants."""
    return frozenset(f"{RABBITMQ_MQTT_QUEUE_PREFIX}{client_id}qos{qos}" for qos in (0, 1, 2))


def _rabbitmq_resource(event: Event) -> Decision:
    """What an MQTT client uses: its own subscription queues, reading from and writing to amq.topic.
    rabbitmq_mqtt sends the client id with each of its resource checks; an AMQP 0-9-1 client's checks
    carry none (rabbit_channel passes it no variable map). So a queue is allowed only when its name is
    the asking client's own, and nothing at all without a client id: an AMQP client let in with the same
    credentials can neither consume, purge nor delete another client's subscription queue (reading its
    messages past every topic check), nor publish. With another `mqtt.exchange`, write
    rabbitmq.resource.star."""
    data, client_id = event.data, event.client.id
    if not client_id:
        return _DENY
    kind, name, permission = data.get("resource"), data.get("name"), data.get("permission")
    if kind == "queue" and name in rabbitmq_mqtt_queues(client_id):
        return ALLOW
    if kind == "exchange" and name == RABBITMQ_MQTT_EXCHANGE and permission in ("read", "write"):
        return ALLOW
    return _DENY


#: the virtual host RabbitMQ creates, and rabbitmq_mqtt's `mqtt.vhost` default
RABBITMQ_DEFAULT_VHOST = "/"


def _rabbitmq_vhost(event: Event) -> Decision:
    """The default vhost only. authenticate.star and authorize.star do not see the vhost, and an MQTT
    client picks one with a `vhost:username` username: allowing every vhost would let a client of one
    tenant into another's. With other vhosts, write rabbitmq.vhost.star."""
    return ALLOW if event.data.get("vhost") == RABBITMQ_DEFAULT_VHOST else _DENY


#: hook -> its answer without a rule file, chosen as a RabbitMQ user would expect: the user check deny
#: (nobody gets in; RabbitMQ asks its next backend, if any), the vhost check allow for the default vhost
#: (_rabbitmq_vhost), the topic check allow (as RabbitMQ's own backend allows every routing key to a
#: user with no topic permissions), the resource check what MQTT uses (_rabbitmq_resource)
NO_RULE_DEFAULTS: Mapping[str, Callable[[Event], Decision]] = {
    "rabbitmq.user": lambda event: _DENY,
    "rabbitmq.vhost": _rabbitmq_vhost,
    "rabbitmq.resource": _rabbitmq_resource,
    "rabbitmq.topic": lambda event: ALLOW,
}

#: the same defaults in words, for `hookrules hooks` (a test keeps the two tables' keys equal)
NO_RULE_SUMMARY: Mapping[str, str] = {
    "rabbitmq.user": "deny",
    "rabbitmq.vhost": f"allow for the vhost {RABBITMQ_DEFAULT_VHOST!r} only, else deny",
    "rabbitmq.resource": (f"allow the asking MQTT client's own {RABBITMQ_MQTT_QUEUE_PREFIX}* queues and "
                          f"{RABBITMQ_MQTT_EXCHANGE} read/write, else deny (and deny without a client id)"),
    "rabbitmq.topic": "allow",
}


def no_rule_decision(event: Event) -> Decision:
    """The answer to a call no rule file answers: the hook's default, else ignore()."""
    default = NO_RULE_DEFAULTS.get(event.hook)
    return IGNORE if default is None else default(event)
