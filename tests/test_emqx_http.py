"""EMQX's HTTP authenticator and authorizer over real HTTP: what EMQX sends, what it reads back.

The requests are those of apps/emqx_auth/src/emqx_auth_http_utils.erl (generate_request/2): the
operator's body template with every placeholder rendered as a string, as JSON (post, the default),
a form (post, application/x-www-form-urlencoded) or a query string (get). The answers are read as
apps/emqx_auth_http/src/emqx_authn_http.erl and emqx_authz_http.erl read them, and the options as
emqx_authz_rule_raw.erl and emqx_authn_utils.erl check them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from hookrules.adapters.emqx_http import AUTHN_FIELDS, AUTHZ_FIELDS, BadRequest, event_for, parse_request
from hookrules.decisions import Allow
from hookrules.emqxoptions import CARRIERS, CHECKS, OPTIONS, carriable, reply_fields
from hookrules.errors import RuleLoadError
from hookrules.hooks import CHANNELS, HOOKS
from hookrules.lang.builtins import DECISION_MAKER, make_decisions
from hookrules.modifiers import decision_problem

from . import broker_calls as call
from .adapter_events import EMQX_HTTP_BODIES
from .rule_helpers import compile_src
from .support import ServerProcess, Stubs, wait_for

AUTHN_BODY = EMQX_HTTP_BODIES["client.authenticate"]
AUTHZ_BODY = EMQX_HTTP_BODIES["client.authorize"]
FAR = 4102444800  # 2100-01-01, in seconds

#: every form of every option EMQX accepts, as a rule writes it
VALID: dict[str, list[Any]] = {
    "superuser": [True, False],
    "attrs": [{"role": "admin", "sn": "10c61f1a1f47"}, {"a-b_c": "", "Z9": "x y/é"}, {}],
    "expire_at": [FAR, int(time.time()) + 3600],
    "acl": [
        # the documentation's example
        [{"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]},
         {"permission": "deny", "action": "all", "topic": "t/3"}],
        [{"permission": "allow", "action": a, "topic": "t/+/x"} for a in ("publish", "pub", "subscribe", "sub", "all")],
        [{"permission": "allow", "action": "publish", "topics": ["a/#", "eq b/+", "c/${username}/#"], "qos": q}
         for q in (0, 1, 2, [0, 1], "0,1", ["1", "2"], "2")],
        [{"permission": "deny", "action": a, "topic": "#", "retain": r}
         for a in ("publish", "all") for r in (True, False, 0, 1, "true", "false", "all", "0", "1")],
        [{"permission": "allow", "action": "all", "topic": "x", "username_re": "^u[0-9]+$", "clientid_re": "c.*",
          "zone_re": "z", "listener_re": "tcp:.*", "zone": "default", "listener": "tcp:default",
          "ipaddr": "10.0.0.0/8"},
         {"permission": "allow", "action": "all", "topic": "x", "ipaddr": "127.0.0.1"},
         {"permission": "allow", "action": "all", "topic": "x", "ipaddr": "fe80::/10"},
         {"permission": "allow", "action": "all", "topic": "x", "ipaddr": "10.0.0.1/8"}],
        [{"permission": "allow", "action": "all", "topic": t}
         for t in ("t/${cert_common_name}/#", "t/${client_attrs.role}/+", "${zone}/x", "${.username}/y",
                   "eq t/${peer}")],
        # regular expressions that PCRE (OTP 25's re:compile) and Python both read alike
        [{"permission": "allow", "action": "all", "topic": "x", "username_re": r}
         for r in ("(?i)^u\\d{0,3}$", "[{,3}]", "[]{,3}]", "\\\\u", "a{65535}", "(?P<n>a)(?P=n)", "(?-i:x)")],
        [],
    ],
}

#: every way each option can be wrong, as EMQX would drop it, deny the client for it, or misread it
INVALID: dict[str, list[Any]] = {
    "superuser": ["true", 1, 0, 1.0, "yes", [], {}],
    "attrs": ["role=admin", ["role"], {"": "x"}, {"-a": "x"}, {"_a": "x"}, {"a b": "x"}, {"a.b": "x"},
              {"a\n": "x"}, {"é": "x"}, {"a" * 256: "x"}, {"a": 1}, {"a": True}, {"a": None}, {"a": ["x"]},
              {"a": {"b": "c"}}, {"a": "\ud800"}, {1: "x"}, {f"k{i}": "v" for i in range(65)}],
    "expire_at": [str(FAR), float(FAR), True, 0, -1, 1, 1_600_000_000, FAR * 1000, 10**20, [FAR]],
    "acl": [
        "allow all", {"permission": "allow", "action": "all", "topic": "#"}, ["rule"], [{}],
        [{"action": "all", "topic": "#"}],
        [{"permission": "Allow", "action": "all", "topic": "#"}],
        [{"permission": "allow", "topic": "#"}],
        [{"permission": "allow", "action": "read", "topic": "#"}],
        [{"permission": "allow", "action": "all"}],
        [{"permission": "allow", "action": "all", "topic": "a", "topics": ["b"]}],
        [{"permission": "allow", "action": "all", "topic": ""}],
        [{"permission": "allow", "action": "all", "topic": 1}],
        [{"permission": "allow", "action": "all", "topic": "a/#/b"}],
        [{"permission": "allow", "action": "all", "topic": "a/b#"}],
        [{"permission": "allow", "action": "all", "topic": "a+/b"}],
        # placeholders EMQX leaves as text in an ACL topic
        *[[{"permission": "allow", "action": "all", "topic": t}]
          for t in ("t/${peerhost}", "t/${password}/#", "t/${clientID}", "${.proto_name}/x", "t/${}")],
        [{"permission": "allow", "action": "all", "topic": "eq "}],
        [{"permission": "allow", "action": "all", "topic": "a\u0000b"}],
        [{"permission": "allow", "action": "all", "topics": "a/b"}],
        [{"permission": "allow", "action": "all", "topics": []}],
        [{"permission": "allow", "action": "all", "topics": ["a", 1]}],
        *[[{"permission": "allow", "action": "all", "topic": "#", "qos": q}]
          for q in (3, -1, "0,3", "", [], [0, 5], 1.0, True, None, "1, 2")],
        *[[{"permission": "allow", "action": "publish", "topic": "#", "retain": r}] for r in ("yes", 2, None, 1.0)],
        [{"permission": "allow", "action": "subscribe", "topic": "#", "retain": True}],
        [{"permission": "allow", "action": "all", "topic": "#", "username_re": ""}],
        [{"permission": "allow", "action": "all", "topic": "#", "username_re": "("}],
        [{"permission": "allow", "action": "all", "topic": "#", "clientid_re": 1}],
        # Python's re takes these and EMQX's (PCRE, OTP 25) refuses them, or reads {,n} as text
        *[[{"permission": "allow", "action": "all", "topic": "#", "username_re": r}]
          for r in ("\\u0041", "\\U00000041", "\\N{DIGIT ONE}", "(?a)x", "(?u)x", "x{,3}", "x{65536}", "x{1,70000}",
                    "(" * 600 + ")" * 600, "x{99999999999999999999}")],
        [{"permission": "allow", "action": "all", "topic": "#", "zone": ""}],
        [{"permission": "allow", "action": "all", "topic": "#", "listener": 5}],
        [{"permission": "allow", "action": "all", "topic": "#", "ipaddr": "not-an-ip"}],
        [{"permission": "allow", "action": "all", "topic": "#", "ipaddr": "10.0.0.0/33"}],
        # Python's netmask and hostmask forms, which esockd_cidr:parse cannot read
        [{"permission": "allow", "action": "all", "topic": "#", "ipaddr": "10.0.0.0/255.0.0.0"}],
        [{"permission": "allow", "action": "all", "topic": "#", "ipaddr": "10.0.0.0/0.255.255.255"}],
        [{"permission": "allow", "action": "all", "topic": "#", "ipaddr": 167772160}],
        [{"permission": "allow", "action": "all", "topic": "#", "topci": "x"}],
        [{"permission": "allow", "action": "all", "topic": "#", "username": "u1"}],
        [{"permission": "allow", "action": "all", "topic": "#", "clientid": "c1"}],
        [{"permission": "allow", "action": "all", "topic": "#"}] * 1001,
    ],
}

AUTHN_RULE = """\
opt = request.get("opt", "")
if opt:
    case = request["set"] + "/" + opt + "/" + request["i"]
{cases}
    if opt == "superuser":
        allow(superuser=value)
    elif opt == "attrs":
        allow(attrs=value)
    elif opt == "expire_at":
        allow(expire_at=value)
    elif opt == "acl":
        allow(acl=value)
if request.get("case", "") == "echo":
    allow(attrs={{"clientid": client.id, "username": client.username, "password": client.password,
                 "peerhost": client.peerhost, "peerport": str(client.peerport), "cn": client.cn, "dn": client.dn,
                 "zone": request["zone"], "listener": request["listener"], "cert_pem": request["cert_pem"],
                 "role": request["role"], "channel": channel, "result": str(result),
                 "password_in_request": str("password" in request)}})
if client.username == "u1" and client.password == "p1":
    allow()
elif client.username == "ignored":
    ignore()
deny("unknown user")
"""

AUTHZ_RULE = """\
EXPECTED = {expected}
if request.get("case", "") == "echo":
    got = {{"clientid": client.id, "username": client.username, "peerhost": client.peerhost,
           "peerport": client.peerport, "protocol": client.protocol, "mountpoint": client.mountpoint,
           "cn": client.cn, "dn": client.dn, "action": action, "topic": topic, "qos": qos, "result": result,
           "channel": channel, "zone": request["zone"], "listener": request["listener"],
           "retain": request["retain"], "access": request["access"], "cert_pem": request["cert_pem"]}}
    if got == EXPECTED:
        allow()
    log("got " + str(got))
    deny()
if action == "publish" and topic.startswith(client.id + "/"):
    allow()
elif action == "subscribe" and topic == "ignored":
    ignore()
deny()
"""

AUTHZ_EXPECTED = {"clientid": "c1", "username": "u1", "peerhost": "10.0.0.7", "peerport": 50211, "protocol": "MQTT",
                  "mountpoint": "m/", "cn": "c1", "dn": "CN=c1,O=acme", "action": "publish", "topic": "t/1", "qos": 1,
                  "result": False, "channel": "http", "zone": "default", "listener": "tcp:default", "retain": "false",
                  "access": "2", "cert_pem": "-----BEGIN"}

METHODS = ("json", "form", "get")


def emqx(server: ServerProcess, path: str, fields: Mapping[str, Any], how: str = "json", *,
         raw: bytes | None = None, content_type: str | None = None, method: str | None = None,
         query: str = "") -> tuple[int, str, Any]:
    """One call as EMQX's HTTP connector makes it: (status, content type, decoded JSON body)."""
    url = f"http://127.0.0.1:{server.http_port}/emqx/{path}"
    if how == "get":
        request = urllib.request.Request(url + "?" + (query or urllib.parse.urlencode(fields)), method=method or "GET")
    else:
        if raw is None:
            raw = (json.dumps(fields) if how == "json" else urllib.parse.urlencode(fields)).encode()
        kind = content_type or ("application/json" if how == "json" else "application/x-www-form-urlencoded")
        request = urllib.request.Request(url + (f"?{query}" if query else ""), data=raw, method=method or "POST",
                                         headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            body = resp.read()
            return resp.status, resp.headers.get_content_type(), json.loads(body)
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get_content_type(), json.loads(err.read())


def rules_with(tmp_path: Path, files: Mapping[str, str]) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in files.items():
        (rules / name).write_text(text, encoding="utf-8")
    return rules


def _literal(value: Any) -> str:
    """A value as rule source: repr, but a long list of one item as a product (built only when its case runs)."""
    if isinstance(value, list) and len(value) > 100 and all(v == value[0] for v in value):
        return f"[{value[0]!r}] * {len(value)}"
    return repr(value)


def _cases() -> str:
    """One `if` per case (an elif chain nests past the checker's depth limit), so a run builds only the
    value it sends."""
    lines = []
    for which, table in (("valid", VALID), ("invalid", INVALID)):
        for opt, values in table.items():
            for i, value in enumerate(values):
                lines.append(f"    if case == {which + '/' + opt + '/' + str(i)!r}:\n"
                             f"        value = {_literal(value)}")
    return "\n".join(lines)


def _rules(tmp_path: Path) -> Path:
    cases = _cases()
    return rules_with(tmp_path, {"client.authenticate.star": AUTHN_RULE.format(cases=cases),
                                 "client.authorize.star": AUTHZ_RULE.format(expected=repr(AUTHZ_EXPECTED))})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("emqx_http")
    proc = ServerProcess(_rules(tmp), log_path=tmp / "server.log")
    yield proc
    proc.stop()


# -- what EMQX sends ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", METHODS)
def test_every_authn_placeholder_reaches_the_rule_by_every_method(server: ServerProcess, how: str) -> None:
    status, kind, body = emqx(server, "authn", {**AUTHN_BODY, "case": "echo"}, how)
    assert (status, kind) == (200, "application/json")
    assert body == {"result": "allow", "client_attrs": {
        "clientid": "c1", "username": "u1", "password": "p1", "peerhost": "10.0.0.7", "peerport": "50211",
        "cn": "c1", "dn": "CN=c1,O=acme", "zone": "default", "listener": "tcp:default",
        "cert_pem": "-----BEGIN CERTIFICATE-----", "role": "admin", "channel": "http", "result": "False",
        "password_in_request": "False"}}
    assert emqx(server, "authn", AUTHN_BODY, how)[2] == {"result": "allow"}
    assert emqx(server, "authn", {**AUTHN_BODY, "password": "wrong"}, how)[2] == {"result": "deny"}
    assert emqx(server, "authn", {**AUTHN_BODY, "username": "ignored"}, how)[2] == {"result": "ignore"}


@pytest.mark.parametrize("how", METHODS)
def test_every_authz_placeholder_reaches_the_rule_by_every_method(server: ServerProcess, how: str) -> None:
    assert emqx(server, "authz", {**AUTHZ_BODY, "case": "echo"}, how) == (200, "application/json", {"result": "allow"})
    for name, other in (("qos", "2"), ("peerport", "1"), ("proto_name", "MQTT-SN"), ("cert_pem", "x"),
                        ("retain", "true"), ("clientid", "c2")):  # the echo compares: a change is seen
        assert emqx(server, "authz", {**AUTHZ_BODY, "case": "echo", name: other}, how)[2] == {"result": "deny"}, name
    assert emqx(server, "authz", {**AUTHZ_BODY, "topic": "c1/x"}, how)[2] == {"result": "allow"}
    assert emqx(server, "authz", {**AUTHZ_BODY, "topic": "c2/x"}, how)[2] == {"result": "deny"}
    assert emqx(server, "authz", {"clientid": "c1", "action": "subscribe", "topic": "ignored"}, how)[2] == \
        {"result": "ignore"}


def test_a_field_missing_reads_as_empty_and_access_names_the_action() -> None:
    """A client's field missing reads as "" (an older EMQX lacks some placeholders). What the authorizer
    is asked about cannot: this test used to expect action "" and topic "" for `{}`, and the bundled
    authorize.star (`if action == "publish" and topic.startswith("$SYS/")`) then allowed every publish
    to $SYS from a template that forgot ${action}; such a call is now refused (failure policy)."""
    asked = {"action": "publish", "topic": "t"}
    for hook, names in (("client.authenticate", AUTHN_FIELDS), ("client.authorize", AUTHZ_FIELDS)):
        event = event_for(hook, {} if hook == "client.authenticate" else asked)
        client = event.client
        assert (client.id, client.username, client.password, client.peerhost, client.peerport, client.cn,
                client.dn) == ("", "", "", "", 0, "", "")
        request = {} if hook == "client.authenticate" else asked
        assert event.channel == "http" and dict(event.data["request"]) == request and event.data["result"] is False
    authz = event_for("client.authorize", asked)
    assert (authz.data["action"], authz.data["topic"], authz.data["qos"]) == ("publish", "t", None)
    for access, action in (("1", "subscribe"), ("2", "publish")):
        assert event_for("client.authorize", {"access": access, "topic": "t"}).data["action"] == action
    # a template that names both: ${action} wins (they cannot disagree in what EMQX sends)
    assert event_for("client.authorize", {"action": "subscribe", "access": "2", "topic": "t"}).data["action"] == \
        "subscribe"
    for qos in ("0", "1", "2"):
        assert event_for("client.authorize", {**asked, "qos": qos}).data["qos"] == int(qos)


@pytest.mark.parametrize("fields", [{}, {"topic": "t"}, {"action": "publish"}, {"access": "", "topic": "t"},
                                    {"action": "", "topic": "t"}, {"action": "subscribe", "topic": ""}])
def test_an_authz_call_that_does_not_say_what_is_asked_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(BadRequest) as refused:
        event_for("client.authorize", fields)
    assert refused.value.reason == "missing_field"


BAD_FIELDS = [("client.authenticate", {"peerport": "x"}), ("client.authenticate", {"peerport": "70000"}),
              ("client.authenticate", {"peerport": "-1"}), ("client.authenticate", {"username": 5}),
              ("client.authenticate", {"password": None}), ("client.authenticate", {"clientid": ["c"]}),
              ("client.authorize", {"action": "read", "topic": "t"}),
              ("client.authorize", {"access": "3", "topic": "t"}),
              ("client.authorize", {"qos": "3", "action": "publish", "topic": "t"}),
              ("client.authorize", {"qos": "01", "action": "publish", "topic": "t"}),
              ("client.authorize", {"topic": {"t": 1}}), ("client.authorize", {"qos": 1})]


@pytest.mark.parametrize(("hook", "fields"), BAD_FIELDS)
def test_a_field_emqx_cannot_send_is_refused(hook: str, fields: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        event_for(hook, fields)


@pytest.mark.parametrize("hook", ["client.authenticate", "client.authorize"])
@pytest.mark.parametrize("name", ["pass", "PWD", "Passwd", "user_password", "Password", "PASSWORD", "user_pass",
                                  "mqtt_pass", "passcode", "pw", "nested"])
def test_a_password_sent_under_another_name_is_refused_and_never_shown(hook: str, name: str) -> None:
    """A body template that names the password otherwise would put it in `request`, which rules read and
    the decision log records: the call is refused, and the refusal names the field, not its value."""
    fields: dict[str, Any] = {"username": "u", "clientid": "c", "action": "publish", "topic": "t"}
    if name == "nested":  # EMQX renders nested JSON templates too
        fields["auth"] = [{"password": "hunter2-secret"}]
        name = "password"
    else:
        fields[name] = "hunter2-secret"
    with pytest.raises(BadRequest) as refused:
        event_for(hook, fields)
    assert name in str(refused.value) and "hunter2" not in str(refused.value)
    assert "password" in str(refused.value)
    ok = {"username": "u", "clientid": "c", "password": "hunter2-secret", "action": "publish", "topic": "t"}
    event = event_for(hook, ok)  # the password under its own name: the client's, never in `request`
    assert "password" not in event.data["request"] and "hunter2-secret" not in repr(event.data["request"])


def test_a_post_reads_the_url_query_too_and_the_body_wins() -> None:
    fields = parse_request("POST", "username=q&zone=z", "application/json; charset=utf-8", b'{"username": "b"}')
    assert fields == {"username": "b", "zone": "z"}
    assert parse_request("GET", "a=1&b=%C3%A9", "", b"ignored") == {"a": "1", "b": "é"}


# -- what EMQX reads back --------------------------------------------------------------------------


def _option(server: ServerProcess, which: str, opt: str, i: int, how: str = "json") -> Any:
    status, kind, body = emqx(server, "authn", {**AUTHN_BODY, "set": which, "opt": opt, "i": str(i)}, how)
    assert (status, kind) == (200, "application/json")
    return body


@pytest.mark.parametrize("opt", list(OPTIONS))
def test_every_valid_form_of_every_option_reaches_emqx_as_it_reads_it(server: ServerProcess, opt: str) -> None:
    field = OPTIONS[opt]
    for i, value in enumerate(VALID[opt]):
        body = _option(server, "valid", opt, i)
        expected = json.loads(json.dumps(value))  # tuples and all as EMQX's JSON decoder sees them
        assert body == {"result": "allow", field: expected}, (opt, value)
        assert reply_fields(Allow(**{opt: CHECKS[opt](value)})) == {field: expected}


@pytest.mark.parametrize("opt", list(OPTIONS))
def test_every_invalid_form_of_every_option_is_a_rule_error_never_an_allow(server: ServerProcess, opt: str) -> None:
    """Each is what EMQX would drop silently, turn into a denial of the client, or misread: refused when
    the rule makes it, answered by the failure policy (deny for client.authenticate)."""
    for i, value in enumerate(INVALID[opt]):
        with pytest.raises(ValueError):
            CHECKS[opt](value)
        assert _option(server, "invalid", opt, i) == {"result": "deny"}, (opt, value)
    assert wait_for(lambda: f"allow({opt}" in server.log()), server.log()[-2000:]


def test_expire_at_is_checked_again_when_sent() -> None:
    """A time in the future when the rule ran may be past when the reply is built: the boundary checks again."""
    soon = int(time.time()) + 2
    decision = Allow(expire_at=CHECKS["expire_at"](soon))
    assert decision_problem("client.authenticate", decision, "http") is None
    later = Allow(expire_at=int(time.time()) - 1)
    assert "not in the future" in (decision_problem("client.authenticate", later, "http") or "")


def _amplified(field: str) -> list[dict[str, Any]]:
    """1000 ACL rules, each with `field` a few hundred characters long: one string, aliased."""
    long = {"topic": "t/" + "a" * 300, "topics": ["t/" + "a" * 300] * 1000, "qos": ["1"] * 1000,
            "ipaddr": "10.0.0.0/8", "retain": "false"}.get(field, "a" * 300)
    rule = {"permission": "allow", "action": "all", "topic": "t", field: long}
    if field == "topics":
        del rule["topic"]
    return [rule] * 1000


#: each option, every field of it that holds text, made too big for a reply by aliasing
TOO_BIG: dict[str, Any] = {
    "attrs": {f"k{i}": "v" * 5000 for i in range(60)},
    **{f"acl {field}": _amplified(field) for field in ("topic", "topics", "qos", "username_re", "clientid_re",
                                                       "zone_re", "listener_re", "zone", "listener")},
}


@pytest.mark.parametrize("case", sorted(TOO_BIG))
def test_no_option_fills_more_than_its_share_of_the_reply(case: str) -> None:
    """The per-field bounds do not compose (1000 rules x 1000 topics x 64 KiB): each option's strings
    together, counted where they appear, are held to MAX_OPTION_TEXT when the rule makes it and at the
    boundary. Enumerated: every field of an ACL rule that holds text."""
    opt = case.split()[0]
    with pytest.raises(ValueError, match="would fill over"):
        CHECKS[opt](TOO_BIG[case])
    assert "would fill over" in (decision_problem("client.authenticate", Allow(**{opt: TOO_BIG[case]}), "http")
                                 or "")


def test_every_text_field_of_an_acl_rule_is_counted() -> None:
    from hookrules.emqxoptions import ACL_FIELDS
    short_only = {"permission", "action", "ipaddr", "retain"}  # a few characters whatever the rule says
    assert {c.split()[1] for c in TOO_BIG if c.startswith("acl ")} == set(ACL_FIELDS) - short_only


def test_an_aliased_acl_is_refused_not_sent_as_600_mb(tmp_path: Path) -> None:
    """The 4-line rule that made each reply 600 MB of JSON: now a rule error, answered deny."""
    rules = rules_with(tmp_path, {"client.authenticate.star": (
        't = "a" * 60000\nrule = {"permission": "allow", "action": "all", "topics": [t] * 100}\n'
        'allow(acl=[rule] * 100)\n')})
    server = ServerProcess(rules, log_path=tmp_path / "server.log")
    try:
        assert emqx(server, "authn", AUTHN_BODY) == (200, "application/json", {"result": "deny"})
        assert wait_for(lambda: "would fill over" in server.log()), server.log()[-2000:]
    finally:
        server.stop()


# -- where each option can be carried --------------------------------------------------------------


def test_every_option_is_carried_exactly_where_emqx_reads_it() -> None:
    """Enumerated: every broker hook on every channel it comes over, every option. Only client.authenticate
    over HTTP carries them; everywhere else the decision is a rule error (failure policy), never sent."""
    assert CARRIERS == {("client.authenticate", "http")}
    checked = 0
    for hook, info in HOOKS.items():
        if info.broker == "portable":
            continue
        for channel in CHANNELS[info.broker]:
            for opt in OPTIONS:
                problem = decision_problem(hook, Allow(**{opt: CHECKS[opt](VALID[opt][0])}), channel)
                assert (problem is None) == ((hook, channel) in CARRIERS), (hook, channel, opt, problem)
                checked += 1
    assert checked == 4 * sum(len(CHANNELS[i.broker]) for i in HOOKS.values() if i.broker != "portable")


def test_a_rule_file_may_set_an_option_only_where_some_call_can_carry_it() -> None:
    """Enumerated over every hook's file: the rule call (at run time) and `hookrules check` (a literal
    keyword) accept the options in client.authenticate.star and authenticate.star only."""
    assert {h for h in HOOKS if carriable(h)} == {"client.authenticate", "authenticate"}
    for hook, info in HOOKS.items():
        if "allow" not in info.decisions:
            continue
        maker = getattr(make_decisions(info)["allow"], DECISION_MAKER)
        for opt in OPTIONS:
            value = VALID[opt][0]
            if carriable(hook):
                assert getattr(maker(**{opt: value}), opt) is not None
                compile_src(f"allow({opt}={value!r})\n", hook)
            else:
                with pytest.raises(ValueError, match=f"allow\\({opt}=...\\) means nothing in {hook}"):
                    maker(**{opt: value})
                with pytest.raises(RuleLoadError, match=f"has no '{opt}'"):
                    compile_src(f"allow({opt}={value!r})\n", hook)


def test_over_exhook_the_same_rule_cannot_make_a_superuser(tmp_path: Path, stubs: dict[str, Stubs],
                                                          start_server: Callable[..., ServerProcess]) -> None:
    """One client.authenticate.star for both channels: over HTTP allow(superuser=True) is sent; over ExHook
    (a bare boolean) it is a rule error answered by the failure policy, unless the rule asks `channel`."""
    rule = ('if client.username == "admin":\n    allow(superuser=True)\n'
            'if client.username == "both":\n'
            '    if channel == "http":\n        allow(superuser=True)\n    allow()\n'
            'deny()\n')
    srv = start_server(rules_with(tmp_path, {"client.authenticate.star": rule}))
    assert emqx(srv, "authn", {"username": "admin"})[2] == {"result": "allow", "is_superuser": True}
    assert emqx(srv, "authn", {"username": "both"})[2] == {"result": "allow", "is_superuser": True}
    assert call.emqx_authenticate(srv, stubs["v3"], "c", "both", "") is True
    assert call.emqx_authenticate(srv, stubs["v3"], "c", "admin", "") is False
    assert wait_for(lambda: "cannot be carried by client.authenticate over exhook" in srv.log()), srv.log()[-2000:]


# -- calls that cannot be read ----------------------------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("malformed_json", {"raw": b'{"username": "u1"'}),
    ("not_an_object", {"raw": b'["u1"]'}),
    ("malformed_json", {"raw": b'{"username": "\xff\xfe"}'}),  # not UTF-8
    ("bad_content_type", {"raw": b"username=u1", "content_type": "text/plain"}),
    ("bad_content_type", {"raw": b"<xml/>", "content_type": "application/xml"}),
    ("bad_encoding", {"raw": "username=é".encode(), "how": "form"}),  # a form is percent-encoded ASCII
    ("bad_encoding", {"how": "get", "query": "username=%FF"}),  # percent-encoded, not UTF-8
    ("repeated_field", {"how": "get", "query": "username=u1&username=admin"}),
    ("repeated_field", {"raw": b"username=u1&username=admin", "how": "form"}),
    ("too_many_fields", {"how": "get", "query": "&".join(f"f{i}=x" for i in range(300))}),
    ("bad_field", {"raw": b'{"username": 1}'}),
    ("bad_field", {"raw": b'{"peerport": "http"}'}),
    ("too_large", {"raw": b'{"username": "' + b"u" * (2 << 20) + b'"}'}),
    ("malformed_json", {"raw": b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"}),
]


@pytest.mark.parametrize(("reason", "how"), [pytest.param(r, h, id=f"{r}-{i}") for i, (r, h) in enumerate(BAD_CALLS)])
@pytest.mark.parametrize("path", ["authn", "authz"])
def test_a_call_that_cannot_be_read_is_refused_by_the_failure_policy(server: ServerProcess, path: str, reason: str,
                                                                     how: dict[str, Any]) -> None:
    """Answered 200 with deny (both hooks' failure policy): never a status EMQX reads as something the
    rule did not decide (another status is a backend failure or nomatch), never allow; counted by reason,
    logged without the request's text."""
    before = _bad_count(server, reason)
    fields = {"username": "u1", "password": "secret-pw-1", "topic": "c1/x", "action": "publish", "clientid": "c1"}
    options = {k: v for k, v in how.items() if k != "how"}
    assert emqx(server, path, fields, how.get("how", "json"), **options) == (200, "application/json",
                                                                             {"result": "deny"})
    assert wait_for(lambda: _bad_count(server, reason) == before + 1), reason
    assert "secret-pw-1" not in server.log()


def test_with_failure_policy_ignore_a_bad_call_is_ignored_and_allow_never_lets_it_in(
        tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    rules = rules_with(tmp_path, {"client.authenticate.star": "allow()\n", "client.authorize.star": "allow()\n"})
    srv = start_server(rules, "--failure-policy", "client.authenticate=ignore",
                       "--failure-policy", "client.authorize=allow")
    assert emqx(srv, "authn", {}, raw=b"{")[2] == {"result": "ignore"}
    assert emqx(srv, "authz", {}, raw=b"{")[2] == {"result": "ignore"}  # allow: a body hookrules could not read
    assert emqx(srv, "authn", {"username": "u"})[2] == {"result": "allow"}


def test_no_rule_file_answers_ignore_so_emqx_asks_its_next_source(tmp_path: Path,
                                                                  start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server(rules_with(tmp_path, {}))
    for path in ("authn", "authz"):
        for how in METHODS:
            assert emqx(srv, path, AUTHN_BODY if path == "authn" else AUTHZ_BODY, how) == \
                (200, "application/json", {"result": "ignore"})
    text = srv.metrics_text()
    assert 'hookrules_decisions_total{broker="emqx",decision="ignore",hook="client.authorize",source="default"} 3.0' \
        in text


def test_no_emqx_call_gets_its_status(server: ServerProcess) -> None:
    """An unknown path under /emqx/ or a method EMQX never sends is no call: 404 and 405, counted."""
    assert emqx(server, "nope", {})[0] == 404
    assert emqx(server, "authn", {}, "get", method="PUT")[0] == 405
    assert emqx(server, "authz", {}, "get", method="DELETE")[0] == 405
    assert _bad_count(server, "unknown_path") >= 1 and _bad_count(server, "bad_method") >= 2


def test_metrics_and_decision_log_name_the_channel(tmp_path: Path,
                                                   start_server: Callable[..., ServerProcess]) -> None:
    log_path = tmp_path / "decisions.jsonl"
    srv = start_server(_rules(tmp_path), "--decision-log", str(log_path))
    assert emqx(srv, "authn", AUTHN_BODY)[2] == {"result": "allow"}
    assert emqx(srv, "authz", {**AUTHZ_BODY, "topic": "c1/x"}, "get")[2] == {"result": "allow"}
    entries = wait_for(lambda: [json.loads(line) for line in log_path.read_text().splitlines()]
                       if log_path.exists() and len(log_path.read_text().splitlines()) >= 2 else [])
    assert [(e["hook"], e["channel"], e["decision"]) for e in entries] == \
        [("client.authenticate", "http", "allow"), ("client.authorize", "http", "allow")]
    assert "p1" not in log_path.read_text()
    text = srv.metrics_text()
    for hook in ("client.authenticate", "client.authorize"):
        assert f'hookrules_decisions_total{{broker="emqx",decision="allow",hook="{hook}",source="rule"}} 1.0' in text
        assert f'hookrules_request_duration_seconds_count{{broker="emqx",hook="{hook}"}} 1.0' in text


def _bad_count(server: ServerProcess, reason: str) -> float:
    prefix = f'hookrules_bad_requests_total{{broker="emqx",reason="{reason}"}} '
    for line in server.metrics_text().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


# -- the command line: test tables and eval name the channel ------------------------------------------

CLI_RULE = """\
if channel == "http" and client.username == "admin":
    allow(superuser=True, attrs={"zone": request.get("zone", "")}, acl=[{"permission": "allow", "action": "all",
          "topic": "eq t/#", "qos": "0,1"}])
if client.username == "admin":
    allow()
deny()
"""


def _hookrules(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookrules", *args], capture_output=True, text=True, timeout=120)


def test_test_tables_and_eval_name_the_channel_and_compare_the_options(tmp_path: Path) -> None:
    rules = rules_with(tmp_path, {"client.authenticate.star": CLI_RULE})
    (rules / "tests").mkdir()
    (rules / "tests" / "t.yaml").write_text(
        "- {name: http, hook: client.authenticate,\n"
        "   event: {channel: http, client: {username: admin}, request: {zone: z1}},\n"
        "   expect: {decision: allow, superuser: true, attrs: {zone: z1},\n"
        "            acl: [{permission: allow, action: all, topic: 'eq t/#', qos: '0,1'}]}}\n"
        "- {name: exhook, hook: client.authenticate, event: {client: {username: admin}},\n"
        "   expect: {decision: allow, superuser: null}}\n"
        "- {name: wrong on purpose, hook: client.authenticate, event: {channel: http, client: {username: admin}},\n"
        "   expect: {decision: allow, superuser: false}}\n")
    result = _hookrules("test", "--rules", str(rules))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "t.yaml::http PASSED" in result.stdout and "t.yaml::exhook PASSED" in result.stdout
    assert "t.yaml::wrong on purpose FAILED" in result.stdout
    bad = _hookrules("eval", "client.authenticate", "--rules", str(rules), "--event",
                     '{"channel": "webhook", "client": {"username": "admin"}}')
    assert bad.returncode == 2 and "'channel' of a emqx event is one of exhook, http" in bad.stdout + bad.stderr
    raw = _hookrules("eval", "client.authenticate", "--rules", str(rules), "--raw", "--channel", "http",
                     "--event", json.dumps({**AUTHN_BODY, "username": "admin", "zone": "z9"}))
    assert raw.returncode == 0, raw.stdout + raw.stderr
    assert raw.stdout.startswith("decision: allow (superuser=True, attrs={'zone': 'z9'}, acl=[{'permission': 'allow'")
    over_exhook = _hookrules("eval", "client.authenticate", "--rules", str(rules), "--raw", "--event",
                             '{"clientinfo": {"username": "admin"}}')
    assert over_exhook.returncode == 0 and over_exhook.stdout.startswith("decision: allow\n"), over_exhook.stdout
    refused = _hookrules("eval", "client.authenticate", "--rules", str(rules), "--raw", "--channel", "http",
                         "--event", '{"peerport": "x"}')
    assert refused.returncode == 2 and "peerport must be a port number" in refused.stderr


def test_the_readme_body_templates_send_every_field_by_the_name_hookrules_reads() -> None:
    """The emqx.conf blocks the README gives: each endpoint's body names every placeholder EMQX has for it
    (authn: AUTHN_DEFAULT_ALLOWED_VARS; authz: emqx_authz_http.erl ALLOWED_VARS, ${access} as a comment)
    under the field name the mapping reads, so pasting it gives the rule everything."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for path, names in (("/emqx/authn", AUTHN_FIELDS), ("/emqx/authz", AUTHZ_FIELDS)):
        start = text.index(f'url = "http://<hookrules host>:8080{path}"')
        match = re.compile(r"body \{\n(.*?)\n\s*\}\n", re.S).search(text, start)
        assert match is not None, path
        body = match.group(1)
        sent = dict(re.findall(r'^\s*(#?\s*\w+) = "\$\{([\w.]+)\}"', body, re.M))
        plain = {k: v for k, v in sent.items() if not k.startswith("#")}
        assert all(k == v for k, v in plain.items()), plain
        commented = {k.lstrip("# ") for k in sent if k.startswith("#")}
        assert set(plain) | (commented & {"access"}) == set(names), (path, set(names) ^ set(plain))
        assert "role" in commented  # a client attribute, by a name of the operator's choice


@pytest.mark.parametrize("opt", list(OPTIONS))
def test_check_refuses_every_invalid_literal_option_and_takes_every_valid_one(opt: str) -> None:
    """`hookrules check` sees a literal: each invalid form is a load error at its line and column, each
    valid form loads (a computed value is checked when the rule runs, above)."""
    for value in VALID[opt]:
        compile_src(f"allow({opt}={value!r})\n", "client.authenticate")
    for value in INVALID[opt]:
        with pytest.raises(RuleLoadError, match=f"1:{len(opt) + 8}: check_error: allow\\({opt}="):
            compile_src(f"allow({opt}={value!r})\n", "client.authenticate")
