"""Events from what a broker really sends, for `hookrules eval --raw`: a body captured from VerneMQ,
an EMQX request written as protobuf JSON (ExHook) or the fields EMQX's HTTP authenticator or
authorizer sends as a JSON object (channel http), or the fields of a RabbitMQ check as a JSON object
(the query string's names and values), read by the same code that reads live calls."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from ..events import Event
from ..hooks import CHANNELS, HOOKS
from . import emqx_http, exhook_proto
from . import rabbitmq
from .exhook import EVENT_BUILDERS, RPC_HOOKS
from .vernemq import BadRequest, events_for


class RawEventError(ValueError):
    """A raw body that cannot be read; the message says why, as the server's refusal would."""


def raw_events(hook: str, text: str, *, vernemq_base64: bool = True, channel: str | None = None) -> list[Event]:
    """The events the broker's call stands for: one, or one per topic of a VerneMQ subscription.
    `channel` says which of the broker's front-ends sent it (hooks.CHANNELS; its first by default)."""
    info = HOOKS.get(hook)
    if info is None:
        raise RawEventError(f"unknown hook '{hook}'")
    if info.broker == "portable":
        raise RawEventError(f"no broker calls '{hook}': name the broker hook its file answers")
    if channel is not None and channel not in CHANNELS[info.broker]:
        raise RawEventError(f"{info.broker} calls come over {', '.join(CHANNELS[info.broker])}, not {channel}")
    if info.broker == "emqx" and channel == "http":
        if hook not in emqx_http.PATHS.values():
            raise RawEventError(f"EMQX calls only {', '.join(emqx_http.PATHS.values())} over HTTP, not {hook}")
        try:
            return [emqx_http.event_for(hook, emqx_http.parse_json(text.encode("utf-8")))]
        except emqx_http.BadRequest as exc:
            raise RawEventError(str(exc)) from None
    if info.broker == "rabbitmq":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RawEventError(f"the fields are not JSON: {exc}") from None
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise RawEventError("a RabbitMQ check is a JSON object of its fields, each a string")
        try:
            return [rabbitmq.event_for(hook, fields)]
        except rabbitmq.BadRequest as exc:
            raise RawEventError(str(exc)) from None
    if info.broker == "vernemq":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RawEventError(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RawEventError("a webhook body is a JSON object")
        try:
            return events_for(hook, body, vernemq_base64)
        except BadRequest as exc:
            raise RawEventError(str(exc)) from None
    rpc = next(r for r, h in RPC_HOOKS.items() if h == hook)
    proto = exhook_proto.load("v3")
    request: Any = proto.messages[proto.methods[rpc][0]]()
    try:
        json_format.Parse(text, request)
    except json_format.ParseError as exc:
        raise RawEventError(f"not a {proto.methods[rpc][0]} in protobuf JSON: {exc}") from None
    return [EVENT_BUILDERS[hook](hook, request)]
