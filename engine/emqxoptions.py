"""allow(superuser=..., attrs=..., expire_at=..., acl=...): what EMQX's HTTP authenticator reads back
from an `allow`, checked the way EMQX checks it, and where it can be carried at all.

EMQX reads these fields of a 200 `{"result": "allow", ...}` (apps/emqx_auth_http/src/emqx_authn_http.erl,
extract_auth_data/2): `is_superuser` (emqx_authn_utils:to_bool/1), `client_attrs`
(emqx_authn_utils:drop_invalid_attr/1: a key not matching emqx_utils:is_restricted_str/1,
`^[A-Za-z0-9]+[A-Za-z0-9-_]*$`, is dropped without a word), `expire_at` (Unix seconds: in the past,
or so large it looks like milliseconds, and the client is DENIED as bad_username_or_password) and
`acl` (apps/emqx_auth/src/emqx_authz/emqx_authz_rule_raw.erl, parse_and_compile_rules/1: one bad rule
and the client is DENIED). So a value EMQX would drop or turn into a denial is refused here, where
the rule makes it: a rule error answered by the failure policy, never an `allow` that EMQX reads as
something else. Where we are stricter than EMQX (an unknown ACL field, which EMQX drops; a `retain`
on a subscribe rule, which it ignores) the value is a mistake EMQX would hide.

Only EMQX's HTTP authenticator carries them (CARRIERS): over ExHook client.authenticate answers a
bare boolean, and no other broker or hook has a place for them.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .hooks import CHAINS, HOOKS

#: (hook, channel) pairs whose reply carries the options: EMQX's HTTP authenticator only
CARRIERS = frozenset({("client.authenticate", "http")})
#: allow()'s keywords, in the order the reply carries them, and the field of EMQX's reply each fills
OPTIONS: Mapping[str, str] = MappingProxyType({"superuser": "is_superuser", "attrs": "client_attrs",
                                               "expire_at": "expire_at", "acl": "acl"})

#: emqx_utils:is_restricted_str/1 (PCRE's `$` also matches before a final newline: refused here)
ATTR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MAX_ATTRS = 64
MAX_ATTR_NAME = 255
#: a client attribute's value: EMQX keeps it for the session and puts it in placeholders
MAX_ATTR_VALUE = 65_535
MAX_ACL_RULES = 1000
MAX_TOPICS = 1000
MAX_TEXT = 65_535
#: characters one option may fill in EMQX's reply, all its strings together (each counted where it
#: appears, plus 4 for its quotes and comma). The per-field bounds above do not compose: 1000 rules
#: of 1000 topics of 64 KiB, all one string aliased by `[t] * 1000`, made a 4-line rule answer each
#: call with 600 MB of JSON, encoded on the event loop. As much as the longest text a rule may make.
MAX_OPTION_TEXT = 256 * 1024

PERMISSIONS = ("allow", "deny")
#: emqx_authz_rule_raw:validate_rule_action_type/1
ACTIONS = ("publish", "pub", "subscribe", "sub", "all")
#: the fields naming who a rule applies to (validate_rule_who/2): regexes, names, an address
WHO_REGEXES = ("username_re", "clientid_re", "zone_re", "listener_re")
WHO_NAMES = ("zone", "listener")
ACL_FIELDS = ("permission", "action", "topic", "topics", "qos", "retain", *WHO_REGEXES, *WHO_NAMES, "ipaddr")
#: retain values validate_rule_retain/1 accepts (True/False are Python's; 0/1 ints)
RETAIN_TEXT = ("true", "false", "all", "0", "1")


def carriable(file_hook: str) -> bool:
    """Whether a rule file for `file_hook` answers some hook whose reply can carry the options (so
    allow(superuser=...) in it may reach EMQX's HTTP authenticator): client.authenticate.star and
    the portable authenticate.star; no VerneMQ or RabbitMQ file, no authorization file."""
    carriers = {hook for hook, _channel in CARRIERS}
    return any(file_hook in CHAINS[hook] for hook in carriers) if file_hook in HOOKS else False


def _text(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Budget:
    """What is left of MAX_OPTION_TEXT while one option is checked: spent before a string is looked at,
    so a check stops as soon as the option is too big, however many references it holds."""

    __slots__ = ("left", "option")

    def __init__(self, option: str):
        self.left = MAX_OPTION_TEXT
        self.option = option

    def spend(self, value: Any) -> None:
        if isinstance(value, str):
            self.left -= len(value) + 4
        elif isinstance(value, (list, tuple)):  # a qos list: its items, up to the first past the budget
            for item in value:
                self.spend(item if isinstance(item, str) else "")
        elif value is not None:
            self.left -= 8
        if self.left < 0:
            raise ValueError(f"allow({self.option}=...) would fill over {MAX_OPTION_TEXT} characters of EMQX's "
                             "reply (its strings together, each counted where it appears)")


#: what a string that UTF-8 cannot encode is told (JSON and protobuf encoders refuse a lone surrogate)
LONE_SURROGATE = "is not valid text (it holds a lone surrogate such as \\ud800)"


def utf8_size(value: str) -> int | None:
    """The UTF-8 length of `value` in bytes, or None when it holds a lone surrogate (no encoding)."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _string_problem(value: Any, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    size = utf8_size(value)
    if size is None:
        return LONE_SURROGATE
    if size > limit:
        return f"is {size} bytes long; at most {limit}"
    return None


def check_superuser(value: Any) -> bool:
    """allow(superuser=True): EMQX's to_bool reads many things as false (any other string, a float):
    only True or False is taken, so no typo silently makes a client an ordinary user or a superuser."""
    if type(value) is not bool:
        raise ValueError(f"allow(superuser={_text(value)}): superuser is True or False")
    return value


def check_attrs(value: Any) -> Mapping[str, str]:
    """allow(attrs={"role": "admin"}): client attributes, names as EMQX keeps them (others it drops)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"allow(attrs=...) takes a dict of names to strings, not {type(value).__name__}")
    if len(value) > MAX_ATTRS:
        raise ValueError(f"allow(attrs=...) takes at most {MAX_ATTRS} attributes, not {len(value)}")
    out: dict[str, str] = {}
    budget = _Budget("attrs")
    for name, text in value.items():
        budget.spend(name)
        budget.spend(text)
        if not isinstance(name, str) or len(name) > MAX_ATTR_NAME or not ATTR_NAME.fullmatch(name):
            raise ValueError(f"allow(attrs=...): {_text(name)} is not a name EMQX keeps (it drops any but a letter "
                             "or digit followed by letters, digits, '-' or '_'; at most "
                             f"{MAX_ATTR_NAME} characters)")
        problem = _string_problem(text, MAX_ATTR_VALUE)
        if problem is not None:
            raise ValueError(f"allow(attrs=...): the value of {name!r} {problem}")
        out[name] = text
    return MappingProxyType(out)


def check_expire_at(value: Any, now: float | None = None) -> int:
    """allow(expire_at=SECONDS): when EMQX disconnects the client, a Unix time in whole seconds, in
    the future. EMQX denies the client for a past time, or one above half of now in milliseconds
    (a time given in milliseconds by mistake)."""
    seconds = int(time.time() if now is None else now)
    if type(value) is not int:
        raise ValueError(f"allow(expire_at={_text(value)}): expire_at is a whole number of seconds since 1970 "
                         "(e.g. now() + 3600)")
    if value <= seconds:
        raise ValueError(f"allow(expire_at={value}): that is not in the future (now is {seconds}); EMQX would "
                         "deny the client")
    if value > seconds * 1000 // 2:
        raise ValueError(f"allow(expire_at={_text(value)}): that looks like milliseconds; expire_at is in seconds "
                         "(EMQX would deny the client)")
    return value


#: emqx_template's placeholder, and what an ACL topic fills (emqx_authz_rule.erl, ALLOWED_VARS; any other
#: is rendered as its own text, with a warning in EMQX's log only)
_PLACEHOLDER = re.compile(r"\$\{\.?([a-zA-Z0-9._]*)\}")
TOPIC_VARS = ("username", "clientid", "cert_common_name", "zone")


def _topic_problem(topic: Any) -> str | None:
    """An ACL topic: `eq TOPIC` (taken literally) or an MQTT topic filter, which may hold EMQX's
    placeholders (${username}, ${clientid}, ...)."""
    problem = _string_problem(topic)
    if problem is not None:
        return problem
    exact = topic.startswith("eq ")
    name = topic[3:] if exact else topic
    if not name:
        return "is empty"
    if "\x00" in name:
        return "holds the character U+0000"
    if exact:
        return None
    for var in _PLACEHOLDER.findall(name):
        if var not in TOPIC_VARS and not var.startswith("client_attrs."):
            return (f"holds ${{{var}}}, which EMQX does not fill in an ACL topic (it would match the text itself); "
                    "it fills ${username}, ${clientid}, ${cert_common_name}, ${zone} and ${client_attrs.NAME}")
    levels = name.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "is not a topic filter: '#' must be a whole level, and the last"
        if "+" in level and level != "+":
            return "is not a topic filter: '+' must be a whole level"
    return None


def _qos(value: Any) -> tuple[int, ...]:
    """validate_rule_qos/1: 0, 1 or 2, a list of them, or a string like "0,1"."""
    if type(value) is int and value in (0, 1, 2):
        return (value,)
    if isinstance(value, str):
        parts = value.split(",")
        if parts and all(p in ("0", "1", "2") for p in parts):
            return tuple(int(p) for p in parts)
    if isinstance(value, (list, tuple)) and value and all(
            (type(q) is int and q in (0, 1, 2)) or (isinstance(q, str) and q in ("0", "1", "2")) for q in value):
        return tuple(int(q) for q in value)
    raise ValueError(f"qos {_text(value)} is not 0, 1, 2, a list of them, or a string like \"0,1\"")


def _retain(value: Any) -> Any:
    if type(value) is bool or (type(value) is int and value in (0, 1)) or (
            isinstance(value, str) and value in RETAIN_TEXT):
        return value
    raise ValueError(f"retain {_text(value)} is not True, False, 0, 1, or one of " + ", ".join(RETAIN_TEXT))


_QUANTIFIER = re.compile(r"\{(\d*)(,(\d*))?\}")
#: inline flags Python takes and PCRE (EMQX's `re`) refuses: ASCII, Unicode, locale
_PYTHON_FLAGS = frozenset("auL")


def pcre_problem(pattern: str) -> str | None:
    """Why EMQX could not compile `pattern` (PCRE, Erlang's `re`) or would read it otherwise than
    Python, or None. Python's `re` is the only engine here, so it checks the syntax, and this refuses
    what its grammar has beyond PCRE's: \\u, \\U and \\N escapes, the (?a) (?u) (?L) flags (PCRE
    cannot compile them: EMQX then denies the client), a repeat past 65535, and `{,n}`, which Python
    reads as a repeat and PCRE as the literal text "{,n}"."""
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:  # nesting too deep, a repeat too large
        return f"is not a regular expression ({str(exc)[:80] or type(exc).__name__})"
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1:i + 2] in ("u", "U", "N"):
                return (f"uses \\{pattern[i + 1]}, which EMQX's regular expressions (PCRE) do not have: write "
                        "the character itself or \\x{...}")
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":  # a set: "{" and "(" are plain characters in it; a "]" first (after "^") too
            in_class = True
            i += 1
            i += pattern.startswith("^", i)
            i += pattern.startswith("]", i)
            continue
        elif c == "(" and pattern[i + 1:i + 2] == "?":
            j = i + 2
            while j < len(pattern) and (pattern[j].isalpha() or pattern[j] == "-"):
                j += 1
            if pattern[j:j + 1] in (")", ":") and _PYTHON_FLAGS & set(pattern[i + 2:j]):
                return "uses the flag (?a), (?u) or (?L), which EMQX's regular expressions (PCRE) do not have"
        elif c == "{":
            m = _QUANTIFIER.match(pattern, i)
            if m is not None:
                low, comma, high = m.group(1), m.group(2), m.group(3)
                if not low and comma:
                    return "uses {,n}, which EMQX reads as the text itself: write {0,n}"
                if any(n and int(n) > 65535 for n in (low, high)):
                    return "repeats more than 65535 times, which EMQX's regular expressions (PCRE) cannot"
        i += 1
    return None


def _acl_rule(index: int, rule: Any, budget: _Budget) -> Mapping[str, Any]:
    where = f"allow(acl=...): rule {index}"
    if not isinstance(rule, Mapping):
        raise ValueError(f"{where} is a dict (permission, action, topic ...), not {type(rule).__name__}")
    unknown = [k for k in rule if k not in ACL_FIELDS]
    if unknown:
        hint = (" (EMQX drops exact username/clientid matches: the rule is for the client being authenticated "
                "already; use username_re or clientid_re)" if unknown[0] in ("username", "clientid") else "")
        raise ValueError(f"{where} has no field {_text(unknown[0])}; its fields: {', '.join(ACL_FIELDS)}{hint}")
    out: dict[str, Any] = {}
    permission, action = rule.get("permission"), rule.get("action")
    if permission not in PERMISSIONS:
        raise ValueError(f"{where}: permission is allow or deny, not {_text(permission)}")
    if action not in ACTIONS:
        raise ValueError(f"{where}: action is one of {', '.join(ACTIONS)}, not {_text(action)}")
    out["permission"], out["action"] = permission, action
    if ("topic" in rule) == ("topics" in rule):
        raise ValueError(f"{where} needs a topic, or a list of topics, and not both")
    if "topic" in rule:
        topics: Any = [rule["topic"]]
    else:
        topics = rule["topics"]
        if isinstance(topics, str) or not isinstance(topics, (list, tuple)) or not 0 < len(topics) <= MAX_TOPICS:
            raise ValueError(f"{where}: topics is a list of 1 to {MAX_TOPICS} topic filters")
    for topic in topics:
        budget.spend(topic)
        problem = _topic_problem(topic)
        if problem is not None:
            raise ValueError(f"{where}: the topic {_text(topic)} {problem}")
    if "topic" in rule:
        out["topic"] = rule["topic"]
    else:
        out["topics"] = tuple(topics)
    for key in ("qos", "retain", *WHO_REGEXES, *WHO_NAMES, "ipaddr"):
        budget.spend(rule.get(key))
    try:
        if "qos" in rule:
            _qos(rule["qos"])
            out["qos"] = tuple(rule["qos"]) if isinstance(rule["qos"], (list, tuple)) else rule["qos"]
        if "retain" in rule:
            if action in ("subscribe", "sub"):
                raise ValueError("retain means something only in a publish or all rule (EMQX ignores it here)")
            out["retain"] = _retain(rule["retain"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for key in WHO_REGEXES:
        if key in rule:
            value = rule[key]
            problem = _string_problem(value)
            if problem is None and not value:
                problem = "is empty"
            if problem is None:
                problem = pcre_problem(value)
            if problem is not None:
                raise ValueError(f"{where}: {key} {problem}")
            out[key] = value
    for key in WHO_NAMES:
        if key in rule:
            problem = _string_problem(rule[key])
            if problem is not None or not rule[key]:
                raise ValueError(f"{where}: {key} is a non-empty name, not {_text(rule[key])}")
            out[key] = rule[key]
    if "ipaddr" in rule:
        try:
            # esockd_cidr:parse/2 reads a prefix length only (list_to_integer): Python's netmask and
            # hostmask forms (10.0.0.0/255.0.0.0) fail there, and EMQX denies the client
            length = rule["ipaddr"].partition("/")[2]
            if "/" in rule["ipaddr"] and not (length.isascii() and length.isdigit()):
                raise ValueError(length)
            ipaddress.ip_network(rule["ipaddr"], strict=False)
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"{where}: ipaddr {_text(rule['ipaddr'])} is not an address or a CIDR range "
                             "(192.168.1.0/24)") from None
        out["ipaddr"] = rule["ipaddr"]
    return MappingProxyType(out)


def check_acl(value: Any) -> tuple[Mapping[str, Any], ...]:
    """allow(acl=[{"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]}]): the
    client's own authorization rules, checked as emqx_authz_rule_raw parses them (one EMQX cannot
    parse and it denies the client)."""
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"allow(acl=...) takes a list of rules (dicts), not {type(value).__name__}")
    if len(value) > MAX_ACL_RULES:
        raise ValueError(f"allow(acl=...) takes at most {MAX_ACL_RULES} rules, not {len(value)}")
    budget = _Budget("acl")
    return tuple(_acl_rule(i, rule, budget) for i, rule in enumerate(value, 1))


CHECKS = {"superuser": check_superuser, "attrs": check_attrs, "expire_at": check_expire_at, "acl": check_acl}


def given(decision: Any) -> list[str]:
    """The options an Allow carries (their allow() keywords)."""
    return [name for name in OPTIONS if getattr(decision, name, None) is not None]


def options_problem(hook: str, channel: str, decision: Any) -> str | None:
    """Why an Allow's options cannot be sent on this call (`hook` over `channel`), or None."""
    names = given(decision)
    if not names:
        return None
    if (hook, channel) not in CARRIERS:
        return (f"allow({names[0]}=...) cannot be carried by {hook} over {channel or 'this channel'}: only EMQX's "
                "HTTP authenticator (client.authenticate, channel http) reads it")
    try:
        for name in names:
            CHECKS[name](getattr(decision, name))
    except ValueError as exc:
        return str(exc)
    return None


def reply_fields(decision: Any) -> dict[str, Any]:
    """The fields of EMQX's authn reply an Allow's options fill, as plain JSON values."""
    out: dict[str, Any] = {}
    for name, field in OPTIONS.items():
        value = getattr(decision, name, None)
        if value is None:
            continue
        if name == "attrs":
            value = dict(value)
        elif name == "acl":
            value = [{k: list(v) if isinstance(v, tuple) else v for k, v in rule.items()} for rule in value]
        out[field] = value
    return out
