"""Every broker hook's event as its adapter builds it from a call it accepts: the ground truth that tests
of the hook tables (who reads what) compare against."""

from __future__ import annotations

from typing import Any

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook import EVENT_BUILDERS, RPC_HOOKS
from hookrules.adapters.rabbitmq import REQUIRED, event_for
from hookrules.adapters.vernemq import iter_events
from hookrules.events import Event
from hookrules.hooks import HOOKS

from .vernemq_examples import EXAMPLES


def _one_of_each(message: Any, depth: int = 0) -> None:
    """Every repeated message field of a protobuf request given one (filled) item, so the event's lists
    are not empty: a test of what a list holds needs something in it."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is None or depth > 3 or field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            _one_of_each(getattr(message, field.name).add(), depth + 1)
        else:
            _one_of_each(getattr(message, field.name), depth + 1)


def broker_events() -> dict[str, Event]:
    """hook -> its adapter's event (on_auth_m5 has no example body, so it is missing)."""
    found: dict[str, Event] = {}
    proto = exhook_proto.load("v3")
    for rpc, hook in RPC_HOOKS.items():
        request = proto.messages[proto.methods[rpc][0]]()
        _one_of_each(request)
        found[hook] = EVENT_BUILDERS[hook](hook, request)
    for hook, body in EXAMPLES.items():
        found[hook] = next(iter_events(hook, body, False))
        m5 = hook + "_m5"
        if m5 in HOOKS and m5 not in EXAMPLES:
            found[m5] = next(iter_events(m5, body, False))
    for hook, required in REQUIRED.items():
        fields = {name: "read" if name == "permission" else "x" for name in required}
        found[hook] = event_for(hook, {**fields, "tags": "management monitoring"})
    return found


#: what EMQX's HTTP authenticator and authorizer post with the README's body templates: every placeholder
EMQX_HTTP_BODIES: dict[str, dict[str, str]] = {
    "client.authenticate": {"clientid": "c1", "username": "u1", "password": "p1", "peerhost": "10.0.0.7",
                            "peerport": "50211", "cert_subject": "CN=c1,O=acme", "cert_common_name": "c1",
                            "cert_pem": "-----BEGIN CERTIFICATE-----", "zone": "default", "listener": "tcp:default",
                            "role": "admin"},
    "client.authorize": {"clientid": "c1", "username": "u1", "peerhost": "10.0.0.7", "peerport": "50211",
                         "proto_name": "MQTT", "mountpoint": "m/", "topic": "t/1", "action": "publish",
                         "cert_subject": "CN=c1,O=acme", "cert_common_name": "c1", "cert_pem": "-----BEGIN",
                         "access": "2", "zone": "default", "listener": "tcp:default", "qos": "1", "retain": "false",
                         "role": "admin"},
}


def channel_events() -> list[Event]:
    """Every event any adapter builds, one per hook and channel: broker_events() and EMQX's HTTP calls."""
    from hookrules.adapters.emqx_http import event_for as emqx_http_event

    return list(broker_events().values()) + [emqx_http_event(hook, body) for hook, body in EMQX_HTTP_BODIES.items()]
