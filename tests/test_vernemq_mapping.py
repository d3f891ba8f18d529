"""The VerneMQ body -> Client mapping, in process: the quick reading of a usual body and the
field-by-field one must agree on every body, including the ones with a field of the wrong type."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hookrules.adapters.vernemq import BadRequest, events_for
from hookrules.events import Client

ABSENT = object()
TEXT_VALUES = st.sampled_from([ABSENT, None, "", "x", "10.0.0.1"])
NUMBER_VALUES = st.sampled_from([ABSENT, None, 0, 7, 1883])
WRONG_VALUES = st.sampled_from([True, False, [], {}, 1.5, 3, "3"])
TEXTS = ("client_id", "username", "password", "mountpoint", "peer_addr", "addr")
NUMBERS = ("peer_port", "port")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise BadRequest(400, "bad_field", key)
    return value


def _number(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if type(value) is not int:
        raise BadRequest(400, "bad_field", key)
    return value


def expected_client(body: dict[str, Any]) -> Client:
    """What the README promises: client.id from client_id, peerhost from peer_addr (else addr), ..."""
    host = _text(body, "peer_addr") or _text(body, "addr")
    port = _number(body, "peer_port") or _number(body, "port")
    return Client(id=_text(body, "client_id"), username=_text(body, "username"), password=_text(body, "password"),
                  peerhost=host, peerport=port, protocol="mqtt", mountpoint=_text(body, "mountpoint"))


@settings(max_examples=500, deadline=None)
@given(texts=st.fixed_dictionaries({k: TEXT_VALUES for k in TEXTS}),
       numbers=st.fixed_dictionaries({k: NUMBER_VALUES for k in NUMBERS}),
       wrong=st.one_of(st.none(), st.tuples(st.sampled_from(TEXTS + NUMBERS), WRONG_VALUES)))
def test_the_client_of_any_body_is_read_as_the_fields_say(texts: dict[str, Any], numbers: dict[str, Any],
                                                          wrong: tuple[str, Any] | None) -> None:
    """Mostly usual bodies, some with one field of a wrong type (a str where a number goes, ...)."""
    fields = {**texts, **numbers}
    if wrong is not None:
        fields[wrong[0]] = wrong[1]
    body = {k: v for k, v in fields.items() if v is not ABSENT}
    try:
        want: Client | str = expected_client(body)
    except BadRequest as bad:
        want = bad.reason
    try:
        got: Client | str = events_for("auth_on_register", body, True)[0].client
    except BadRequest as bad:
        got = bad.reason
    assert got == want
