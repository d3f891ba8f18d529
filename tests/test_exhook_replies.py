"""The ExHook publish reply: hookrules writes it by hand from the request's own message (exhook.py,
_Replies.publish), so its bytes are checked against protobuf's own for every decision kind, both proto
versions and lengths past one varint byte; and the change made to the request must reach nothing but the
reply (the event, which the decision log and shadow rules read, holds copies)."""

from __future__ import annotations

from typing import Any

import pytest

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook import EVENT_BUILDERS, _Replies
from hookrules.decisions import ALLOW, IGNORE, Decision, Deny, Drop, Rewrite

DECISIONS: list[Decision] = [ALLOW, Deny("no"), Drop("empty"), Rewrite(payload=b"new"), Rewrite(topic="t/other"),
                             Rewrite(qos=2), Rewrite(topic="a/b", payload=b"z" * 300, qos=0)]
PAYLOADS = [0, 1, 127, 128, 300, 16383, 16384, 2**21 + 5]


def _request(proto: Any, size: int, headers: bool = True) -> Any:
    msg = proto.Message(id="m1", topic="t/demo", payload=b"x" * size, qos=1, node="emqx@127.0.0.1", timestamp=17,
                        headers={"username": "u1", "peerhost": "127.0.0.1", "protocol": "mqtt"} if headers else {})
    setattr(msg, "from", "c1")
    return proto.MessagePublishRequest(message=msg)


def _expected(proto: Any, request: Any, decision: Decision) -> bytes:
    """What protobuf itself writes for the reply the way exhook.py wrote it before: a copy, changed."""
    vr = proto.ValuedResponse
    if decision.kind == "ignore":
        return bytes(vr(type=vr.IGNORE).SerializeToString())
    msg = proto.Message()
    msg.CopyFrom(request.message)
    if isinstance(decision, Rewrite):
        for name in ("topic", "payload", "qos"):
            if getattr(decision, name) is not None:
                setattr(msg, name, getattr(decision, name))
    elif decision.kind in ("deny", "drop"):
        msg.headers["allow_publish"] = "false"
    return bytes(vr(type=vr.STOP_AND_RETURN, message=msg).SerializeToString())


@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("size", PAYLOADS)
def test_the_hand_written_reply_is_protobufs_own(version: str, size: int) -> None:
    proto = exhook_proto.load(version)
    replies = _Replies(proto)
    for decision in [*DECISIONS, IGNORE]:
        expected = _expected(proto, _request(proto, size), decision)
        got = replies.publish(_request(proto, size), decision)
        assert proto.ValuedResponse.FromString(got) == proto.ValuedResponse.FromString(expected)
        # byte for byte where protobuf's map order cannot differ: at most one header
        assert replies.publish(_request(proto, size, False), decision) == _expected(
            proto, _request(proto, size, False), decision)


@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("decision", DECISIONS, ids=lambda d: repr(d)[:40])
def test_the_reply_changes_nothing_the_event_holds(version: str, decision: Decision) -> None:
    """The event is built before the reply changes the request in place; what the rule saw, the decision
    log records and the shadow rules read afterwards is the message as it came."""
    proto = exhook_proto.load(version)
    request = _request(proto, 300)
    event = EVENT_BUILDERS["message.publish"]("message.publish", request)
    before = (event.message.topic, event.message.payload, event.message.qos, dict(event.message.headers),
              event.client)
    _Replies(proto).publish(request, decision)
    if decision is not ALLOW:
        assert request.message != _request(proto, 300).message  # it did change
    assert (event.message.topic, event.message.payload, event.message.qos, dict(event.message.headers),
            event.client) == before


def test_a_repeated_v3_property_keeps_its_last_value() -> None:
    proto = exhook_proto.load("v3")
    request = _request(proto, 1)
    request.user_props.add(name="k", value="first")
    request.user_props.add(name="k", value="last")
    request.props.add(name="content-type", value="a")
    request.props.add(name="content-type", value="b")
    message = EVENT_BUILDERS["message.publish"]("message.publish", request).message
    assert dict(message.user_properties) == {"k": "last"}
    assert dict(message.properties) == {"content-type": "b"}
