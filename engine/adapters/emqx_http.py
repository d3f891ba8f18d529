"""EMQX's HTTP authenticator and authorizer as events and answers: plain values in, plain values out.

EMQX sends a request whose fields are a template the operator writes (`body = {username =
"${username}", ...}`): a JSON object (`method = post`, content-type application/json, the default),
a form (post, application/x-www-form-urlencoded) or a query string (`method = get`)
(apps/emqx_auth/src/emqx_auth_http_utils.erl, generate_request/2). Every placeholder is rendered as a
string, an undefined one as "". The fields are named after the placeholders (the README's body
templates); a field missing reads as "", and every field sent is in `request` as it came.

What EMQX makes of the answer (apps/emqx_auth_http/src/emqx_authn_http.erl and emqx_authz_http.erl,
apps/emqx_auth/src/emqx_authz/emqx_authz_utils.erl):
- authn: 204 allows; 200 is read by its Content-Type (application/json here), `result` allow (with
  is_superuser, client_attrs, expire_at, acl), deny, ignore (or missing); any other status, or a
  request that failed, is a backend failure (ignore, or deny under EMQX's security profile).
- authz: 204 allows; 200 `result` allow, deny or ignore; a 200 with anything else is a backend
  failure; any other status is nomatch (EMQX asks its next source).
So every answer here is a 200 with a JSON `result` (reply_body), and a call hookrules cannot read is
answered by refusal_body, which stands for the hook's failure policy.

The front-end glue (reading the request, writing the response) is emqx_http_route.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..decisions import Decision
from ..emqxoptions import reply_fields
from ..events import Client, Event, frozen_map, json_view
from .jsonwire import decode, encode
from .refusal import BadRequest as BadRequest  # its refusals, re-exported
from .refusal import unique_fields

BROKER = "emqx"
CHANNEL = "http"
PREFIX = "/emqx/"

#: request path -> hook (the same hooks, rule files and names as over ExHook)
PATHS: Mapping[str, str] = {"/emqx/authn": "client.authenticate", "/emqx/authz": "client.authorize"}

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

#: the placeholders EMQX fills in an authenticator's request (apps/emqx_auth/include/emqx_authn.hrl,
#: AUTHN_DEFAULT_ALLOWED_VARS; ${client_attrs.NAME} under any field name the operator gives it)
AUTHN_FIELDS = ("username", "clientid", "password", "peerhost", "peerport", "cert_subject", "cert_common_name",
                "cert_pem", "zone", "listener")
#: ... and in an authorizer's (apps/emqx_auth_http/src/emqx_authz_http.erl, ALLOWED_VARS)
AUTHZ_FIELDS = ("username", "clientid", "peerhost", "peerport", "proto_name", "mountpoint", "topic", "action",
                "cert_subject", "cert_common_name", "cert_pem", "access", "zone", "listener", "qos", "retain")
FIELDS: Mapping[str, tuple[str, ...]] = {"client.authenticate": AUTHN_FIELDS, "client.authorize": AUTHZ_FIELDS}

#: ${access}, EMQX's legacy action number: 1 subscribe, 2 publish (emqx_authz_http.erl)
ACCESS_ACTIONS: Mapping[str, str] = {"1": "subscribe", "2": "publish"}
ACTIONS = ("publish", "subscribe")
QOS: Mapping[str, int] = {"0": 0, "1": 1, "2": 2}
#: most fields a form or query string may carry: EMQX sends the few the operator's template names
MAX_FIELDS = 256
#: the fields a rule never reads from `request`: the password is client.password, and no more
SECRET_FIELDS = ("password",)
#: what a field's name (any case, at any depth of a JSON body) holds when a body template gives the
#: password by mistake under a name other than `password`: such a call is refused, since the value would
#: land in `request`, which rules read and the decision log records, where no password goes
PASSWORD_MARKS = ("pass", "pwd")
PASSWORD_NAMES = frozenset({"pw"})


def parse_form(raw: bytes | str) -> dict[str, str]:
    """The fields of a form body or a query string. A repeated field is refused: which one EMQX
    meant cannot be known, and a rule must never read one copy while a log shows the other."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")  # percent-encoded: anything else is not a form
        except UnicodeDecodeError:
            raise BadRequest(400, "bad_encoding", "the form is not percent-encoded ASCII") from None
    return unique_fields(raw, MAX_FIELDS)


def parse_json(raw: bytes) -> dict[str, Any]:
    """The fields of a JSON body: an object (its values may nest: EMQX renders nested templates)."""
    try:
        body = decode(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        raise BadRequest(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "not_an_object", "the body must be a JSON object")
    return body


def parse_request(method: str, query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of one call: the query string of a GET, the body of a POST by its content type.
    A POST's query string is the endpoint URL's own (EMQX may template it too): its fields are read
    as well, the body's winning."""
    if method == "GET":
        return parse_form(query)
    if method != "POST":
        raise BadRequest(405, "bad_method", f"EMQX sends GET or POST, not {method[:20]}")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON:
        fields = parse_json(body)
    elif media == FORM:
        fields = parse_form(body)
    else:
        raise BadRequest(415, "bad_content_type", f"a POST carries {JSON} or {FORM}, not {media[:60]!r}")
    if query:
        fields = {**parse_form(query), **fields}
    return fields


def _text(hook: str, fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(400, "bad_field", f"{hook}: field '{name}' must be a string (EMQX renders every "
                         f"placeholder as one), not {type(value).__name__}")
    return value


def _port(hook: str, text: str) -> int:
    if text == "":
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise BadRequest(400, "bad_field", f"{hook}: peerport must be a port number, not {text[:20]!r}")
    return int(text)


def _password_lookalike(fields: Mapping[str, Any]) -> str | None:
    """The first field named like a password but not `password` itself (Password, pwd, user_pass, ...),
    in the body or in an object nested in it (walked without recursion), or None."""
    stack: list[Any] = [fields]
    top = True
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            for name, inner in value.items():
                lowered = name.lower() if isinstance(name, str) else ""
                if (not top or name != "password") and (lowered in PASSWORD_NAMES or any(
                        mark in lowered for mark in PASSWORD_MARKS)):
                    return str(name)
                stack.append(inner)
        elif isinstance(value, list):
            stack.extend(value)
        top = False
    return None


def event_for(hook: str, fields: Mapping[str, Any]) -> Event:
    """The Event of one call, with the names a rule reads over ExHook: `client` from the client's
    fields (cert_common_name is client.cn, cert_subject client.dn, proto_name client.protocol),
    `result` False (EMQX asks this authenticator or source only when those before it had no answer),
    and `request`, every field sent but the password. BadRequest when a field cannot be what EMQX sends."""
    lookalike = _password_lookalike(fields)
    if lookalike is not None:
        raise BadRequest(400, "bad_field", f"{hook}: field {lookalike[:30]!r} looks like a password: EMQX's body "
                         "template must send it as \"password\": \"${password}\" (README, EMQX HTTP), which keeps it "
                         "out of `request` and of every log")
    text = {name: _text(hook, fields, name) for name in FIELDS[hook]}
    client = Client(id=text["clientid"], username=text["username"], password=text.get("password", ""),
                    peerhost=text["peerhost"], peerport=_port(hook, text["peerport"]),
                    protocol=text.get("proto_name", ""), mountpoint=text.get("mountpoint", ""),
                    cn=text["cert_common_name"], dn=text["cert_subject"])
    request = json_view({k: v for k, v in fields.items() if k not in SECRET_FIELDS})
    if hook == "client.authenticate":
        data: dict[str, Any] = {"result": False, "request": request}
        return Event(hook, BROKER, client, frozen_map(data), channel=CHANNEL)
    action = text["action"] or ACCESS_ACTIONS.get(text["access"], text["access"])
    # What is asked about, unlike the client's fields, cannot read as "": EMQX always has ${action} and
    # ${topic}, so a call without them comes from a template that lacks them, and a rule would decide
    # every such call blind (`if action == "publish": deny(...)` then allowed every publish)
    missing = [name for name, value in (("action (or access)", action), ("topic", text["topic"])) if not value]
    if missing:
        raise BadRequest(400, "missing_field", f"{hook}: the call has no {' and no '.join(missing)}: add "
                         f"{' and '.join(missing)} to the authorizer's body template (README, EMQX HTTP)")
    if action not in ACTIONS:
        raise BadRequest(400, "bad_field", f"{hook}: action must be publish or subscribe (access 2 or 1), not "
                         f"{action[:20]!r}")
    qos = text["qos"]
    if qos != "" and qos not in QOS:
        raise BadRequest(400, "bad_field", f"{hook}: qos must be 0, 1 or 2, not {qos[:20]!r}")
    data = {"action": action, "topic": text["topic"], "qos": QOS.get(qos), "result": False, "request": request}
    return Event(hook, BROKER, client, frozen_map(data), channel=CHANNEL)


def reply_value(hook: str, decision: Decision) -> dict[str, Any]:
    """EMQX's reading of a decision: `result`, and for an authn allow the options the rule set."""
    kind = decision.kind
    result = kind if kind in ("allow", "deny", "ignore") else "deny"
    if kind == "allow" and hook == "client.authenticate":
        return {"result": result, **reply_fields(decision)}
    return {"result": result}


_CONSTANT = {kind: encode({"result": kind}) for kind in ("allow", "deny", "ignore")}


def reply_body(hook: str, decision: Decision) -> bytes:
    """The JSON body of the 200 that answers a call (constant for every answer but an allow with
    options). Raises when a value cannot be encoded: the caller answers that by the failure policy."""
    if decision.kind != "allow" or hook != "client.authenticate" or not reply_fields(decision):
        return _CONSTANT[decision.kind if decision.kind in _CONSTANT else "deny"]
    return encode(reply_value(hook, decision))


def refusal_body(policy: str) -> bytes:
    """The answer to a call hookrules could not read (bad body, overload, a bug of its own): the
    hook's failure policy, but never allow. A body that cannot be read names no client to let in;
    deny, or ignore (EMQX's next authenticator or source decides), are the answers it can mean."""
    return _CONSTANT["deny" if policy == "deny" else "ignore"]
