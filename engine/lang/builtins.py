"""What a rule may call: the decision functions, the helpers, and a small set of safe Python builtins.

Decisions raise `Decided`, a BaseException, so the first one ends the run wherever it was made
(asteval's handlers catch only Exception and would otherwise swallow it). Each decision function
also has a maker that returns the Decision instead (DECISION_MAKER): the interpreter calls that for
a decision made as a statement of its own, the usual `allow()` line, and stops the run without
unwinding an exception through every handler (measured: half the cost of a small rule).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from ..decisions import ALLOW, IGNORE, Allow, Decision, Deny, Drop, Rewrite
from ..emqxoptions import CHECKS as EMQX_OPTION_CHECKS
from ..emqxoptions import carriable
from ..hooks import HookInfo
from ..modifiers import SCHEMAS, check_cache, rabbitmq_tags
from ..modifiers import validate as validate_modifiers
from . import guards, helpers, textmethods

MAX_RANGE = 100_000  # a bigger range is a mistake in a rule that answers in microseconds
MAX_JSON_BYTES = 1 << 20
MAX_LOG_CHARS = 1000

RULE_LOGGER = "hookrules.rule"  # where log() in a rule writes
rule_log = logging.getLogger(RULE_LOGGER)


class Decided(BaseException):
    """Carries the run's decision out of however deep the rule made it."""

    def __init__(self, decision: Decision):
        super().__init__(decision.kind)
        self.decision = decision


#: the attribute a decision function keeps its maker in (rules cannot read `_` attributes)
DECISION_MAKER = "_hr_maker"


def _decision(name: str, maker: Callable[..., Decision]) -> Callable[..., None]:
    """The function a rule calls as `name`: it raises what `maker` returns, and keeps `maker` for the
    interpreter. Both carry the decision's name, so a wrong call reads `deny() takes ...` whichever
    way it ran."""

    def decide(*args: Any, **kwargs: Any) -> None:
        raise Decided(maker(*args, **kwargs))

    for fn in (decide, maker):
        fn.__name__ = fn.__qualname__ = name
    decide.__doc__ = maker.__doc__
    setattr(decide, DECISION_MAKER, maker)
    return decide


def decision_makers(names: Mapping[str, Any]) -> dict[Callable[..., None], Callable[..., Decision]]:
    """The makers of the decision functions among `names`, keyed by the function a rule calls."""
    return {fn: getattr(fn, DECISION_MAKER) for fn in names.values() if hasattr(fn, DECISION_MAKER)}


def _reason(reason: object) -> str:
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a string, not {type(reason).__name__}")
    return reason


def _allow() -> Decision:
    """Let it happen and stop here."""
    return ALLOW


def _deny(reason: str = "") -> Decision:
    """Refuse and stop here; the reason is logged (and sent to VerneMQ)."""
    return Deny(_reason(reason))


def _ignore() -> Decision:
    """Give no opinion and stop here: the broker asks its next authority."""
    return IGNORE


def _drop(reason: str = "") -> Decision:
    """Do not publish the message and stop here."""
    return Drop(_reason(reason))


def _check_topic(topic: Any, what: str) -> str:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"{what} needs a non-empty string")
    if "+" in topic or "#" in topic:
        raise ValueError(f"{what}: a published topic cannot hold the wildcards + or # ({topic!r})")
    return topic


def _rewrite(topic: Any = None, payload: Any = None, qos: Any = None, retain: Any = None, topics: Any = None) -> Decision:
    """Publish with these fields changed and stop here; a str payload is sent as UTF-8."""
    if topic is not None:
        _check_topic(topic, "rewrite(topic=...)")
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    elif payload is not None and not isinstance(payload, bytes):
        raise TypeError(f"rewrite(payload=...) needs str or bytes, not {type(payload).__name__}")
    if qos is not None and (type(qos) is not int or qos not in (0, 1, 2)):
        raise ValueError(f"rewrite(qos={qos!r}): qos is 0, 1 or 2")
    if retain is not None and type(retain) is not bool:
        raise ValueError(f"rewrite(retain={retain!r}): retain is True or False")
    if topics is not None:
        if not isinstance(topics, (list, tuple)) or not all(isinstance(t, str) and t for t in topics):
            raise ValueError("rewrite(topics=...) needs a list of topic filter strings")
        for t in topics:
            validate_filter(t)
        topics = tuple(topics)
    return Rewrite(topic, payload, qos, retain, topics)


allow = _decision("allow", _allow)
deny = _decision("deny", _deny)
ignore = _decision("ignore", _ignore)
drop = _decision("drop", _drop)
rewrite = _decision("rewrite", _rewrite)


DECISIONS: dict[str, Callable[..., None]] = {
    "allow": allow,
    "deny": deny,
    "ignore": ignore,
    "rewrite": rewrite,
    "drop": drop,
}


def make_decisions(hook: HookInfo) -> dict[str, Callable[..., None]]:
    """The decision functions one hook's rules get: only the ones it can make, checking what only it
    accepts (its rewrite fields, VerneMQ modifiers, cache) where the rule calls them, so a mistake is
    a rule error with file:line:col rather than a reply the broker chokes on."""
    schema = SCHEMAS.get(hook.name)
    emqx_options = carriable(hook.name)

    def hook_allow(modifiers: Mapping[str, Any] | None = None, cache: int | None = None,
                   tags: Sequence[str] | None = None, superuser: bool | None = None,
                   attrs: Mapping[str, str] | None = None, expire_at: int | None = None,
                   acl: Sequence[Mapping[str, Any]] | None = None) -> Decision:
        """Let it happen and stop here (VerneMQ: with modifiers, and an answer cached for `cache` s;
        RabbitMQ's user check: with the user's tags; EMQX's HTTP authenticator: superuser, client
        attributes, an expiry and an ACL)."""
        if modifiers is None and cache is None and tags is None and superuser is None and attrs is None \
                and expire_at is None and acl is None:
            return ALLOW
        options: dict[str, Any] = {}
        for name, value in (("superuser", superuser), ("attrs", attrs), ("expire_at", expire_at), ("acl", acl)):
            if value is not None:
                if not emqx_options:
                    raise ValueError(f"allow({name}=...) means nothing in {hook.name}: only EMQX's HTTP "
                                     "authenticator reads it (client.authenticate.star or authenticate.star, "
                                     "answering /emqx/authn)")
                options[name] = EMQX_OPTION_CHECKS[name](value)
        checked_tags = None
        if tags is not None:
            if not hook.tagged:
                raise ValueError(f"allow(tags=...) means nothing in {hook.name}: only RabbitMQ's user check "
                                 "(rabbitmq.user) answers tags")
            checked_tags = rabbitmq_tags(tags)
        checked = None
        if modifiers is not None:
            if schema is None:
                raise ValueError(f"{hook.name} takes no modifiers")
            if not isinstance(modifiers, Mapping):
                raise TypeError(f"allow(modifiers=...) needs a dict, not {type(modifiers).__name__}")
            checked = MappingProxyType(validate_modifiers(modifiers, schema))
        if cache is not None:
            if not hook.cacheable:
                raise ValueError(f"allow(cache=...) means nothing in {hook.name}: only VerneMQ auth_on_register, "
                                 "auth_on_publish and auth_on_subscribe answers are cached")
            check_cache(cache)  # a range too: f"max-age={10**5000}" failed in every reply
        return Allow(checked, cache, checked_tags, **options)

    def hook_rewrite(topic: str | None = None, payload: str | bytes | None = None, qos: int | None = None,
                     retain: bool | None = None, topics: list[str] | None = None) -> Decision:
        """Change the listed fields and stop here."""
        given = {k for k, v in (("topic", topic), ("payload", payload), ("qos", qos), ("retain", retain),
                                ("topics", topics)) if v is not None}
        if given - hook.rewrites:
            raise ValueError(f"{hook.name} cannot rewrite {', '.join(sorted(given - hook.rewrites))}; "
                             f"it can rewrite {', '.join(sorted(hook.rewrites))}")
        return _rewrite(topic, payload, qos, retain, topics)

    table = {**DECISIONS, "allow": _decision("allow", hook_allow), "rewrite": _decision("rewrite", hook_rewrite)}
    return {name: fn for name, fn in table.items() if name in hook.decisions}


def validate_filter(filter: str) -> None:
    """Raise ValueError unless `filter` is a valid MQTT topic filter."""
    if not isinstance(filter, str):
        raise TypeError(f"a topic filter is a string, not {type(filter).__name__}")
    _filter_levels(filter)


#: filters longer than this are split on every call instead of cached: a cache of 4096 filters of
#: 256 KiB each (a rule matching against the client's own topic) would hold a gigabyte
MAX_CACHED_FILTER = 256


def _filter_levels(filter: str) -> tuple[str, ...]:
    if len(filter) <= MAX_CACHED_FILTER:
        return _cached_filter_levels(filter)
    return _split_filter(filter)


def _split_filter(filter: str) -> tuple[str, ...]:
    """The filter's levels, validated: rules match against the same few filters all day, so the
    short ones are cached."""
    if not filter:
        raise ValueError("a topic filter is a non-empty string")
    levels = tuple(filter.split("/"))
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid topic filter {filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {filter!r}: '+' must be a whole level")
    return levels


_cached_filter_levels = lru_cache(maxsize=4096)(_split_filter)


def topic_match(filter: str, topic: str) -> bool:
    """MQTT matching: '+' is one level, '#' the rest (parent included); '$' topics need a literal first level.

    `topic` may itself be a filter (client.authorize for a SUBSCRIBE passes the requested filter): then
    it matches only if every topic it stands for does, so an ACL of "a/+" does not let a client
    subscribe to "a/#".
    """
    if not isinstance(filter, str):
        raise TypeError(f"topic_match: filter must be a string, not {type(filter).__name__}")
    if not isinstance(topic, str):
        raise TypeError(f"topic_match: topic must be a string, not {type(topic).__name__}")
    flevels = _filter_levels(filter)
    if not topic:
        return False  # an empty topic name is not valid MQTT, so no filter matches it
    if topic[:1] == "$" and filter[0] in "+#":
        return False
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        t = tlevels[i]
        if t == "#" or t == "+" and f != "+":  # a wildcard in the topic is covered only by as wide a one
            return False
        if f != "+" and f != t:
            return False
    return len(flevels) == len(tlevels)


def topic_filter_test(filters: Sequence[str]) -> Callable[[str], bool]:
    """One test equal to `any(topic_match(f, topic) for f in filters)`, for a rule's TOPICS.

    Asked before every message.* call: filters without wildcards become one set lookup and
    `prefix/#` filters one startswith; only the others loop through topic_match.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    others: list[str] = []
    for f in filters:
        levels = _filter_levels(f)  # validates
        if "+" not in levels and "#" not in levels:
            exact.add(f)
        elif len(levels) > 1 and levels[-1] == "#" and "+" not in levels and levels.count("#") == 1:
            prefixes.append(f[:-2])  # "a/b/#" covers "a/b" and everything under "a/b/"
        else:
            others.append(f)
    below = tuple(p + "/" for p in prefixes)
    parents = frozenset(prefixes)

    def test(topic: str) -> bool:
        if not topic or "+" in topic or "#" in topic:  # not a topic name: the full rules
            return any(topic_match(f, topic) for f in filters)
        return topic in exact or topic in parents or topic.startswith(below) or any(topic_match(f, topic) for f in others)

    return test


_RAISE = object()


def json_decode(data: str | bytes, default: Any = _RAISE) -> Any:
    """Parse JSON text (a payload is bytes, decoded as UTF-8). With `default`, text that is not JSON
    (or not UTF-8) gives `default` instead of a rule error: rules have no try."""
    if default is not _RAISE:
        try:
            return json_decode(data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors; size limits too
            return default
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_JSON_BYTES:
            raise ValueError(f"json_decode: input over {MAX_JSON_BYTES} bytes")
        data = bytes(data).decode("utf-8")
    elif not isinstance(data, str):
        raise TypeError(f"json_decode needs str or bytes, not {type(data).__name__}")
    elif len(data) > MAX_JSON_BYTES:
        raise ValueError(f"json_decode: input over {MAX_JSON_BYTES} characters")
    return json.loads(data, parse_int=_json_int)


#: digits of a JSON integer: a payload of 10,000 integers that are equal modulo 2**61 - 1 (Python's
#: int hash) makes set() or dict keys of them quadratic, and a client writes the payload
MAX_JSON_INT_DIGITS = 19


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"json_decode: an integer of {len(text)} digits is over the limit of "
                         f"{MAX_JSON_INT_DIGITS} (write big numbers as strings)")
    return int(text)


#: lines one rule file may log per second; past it they are counted, and the count logged
MAX_LOG_LINES_PER_SECOND = 50
_log_rate = [MAX_LOG_LINES_PER_SECOND]


@contextlib.contextmanager
def unlimited_log() -> Iterator[None]:
    """No log() rate limit meanwhile: `hookrules test` shows each case what its rule logged, however
    fast the cases run."""
    _log_rate[0] = sys.maxsize
    try:
        yield
    finally:
        _log_rate[0] = MAX_LOG_LINES_PER_SECOND


def make_log(where: str) -> Callable[[object], None]:
    """`log(text)` for one rule file: one INFO line naming the file, cut to MAX_LOG_CHARS, at most
    MAX_LOG_LINES_PER_SECOND a second (a log() in a loop must not flood the operator's log)."""
    window = [0.0, 0, 0]  # second it began, lines logged in it, lines dropped in it

    def log(text: object) -> None:
        now = time.monotonic()
        if now - window[0] >= 1.0:
            if window[2]:
                rule_log.warning("%s: %d log() lines dropped (over %d a second)", where, window[2],
                                 MAX_LOG_LINES_PER_SECOND)
            window[:] = [now, 0, 0]
        if window[1] >= _log_rate[0]:
            window[2] += 1
            return
        window[1] += 1
        msg = text if isinstance(text, str) else guards.safe_repr(text)
        if len(msg) > MAX_LOG_CHARS:
            msg = msg[:MAX_LOG_CHARS] + "..."
        if not msg.isprintable():  # a newline in rule text must not forge a second log line
            msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
        rule_log.info("%s: %s", where, msg)

    return log


def safe_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise ValueError(f"range of {len(r)} items is over the limit of {MAX_RANGE}")
    return r


def type_name(value: object) -> str:
    """Starlark's type(): the name of a value's type, never the type itself."""
    return type(value).__name__


#: Plain Python functions with no way out of the sandbox. Types are exposed only as constructors;
#: their dangerous attributes (format, underscore names) are refused by the checker and at run time.
SAFE_BUILTINS: dict[str, Any] = {
    "True": True,
    "False": False,
    "None": None,
    "abs": abs,
    "all": all,
    "any": any,
    "bool": bool,
    "dict": dict,
    "enumerate": guards.safe_enumerate,
    "float": float,
    "int": int,
    "len": len,
    "list": list,
    "max": max,
    "min": min,
    "range": safe_range,
    "repr": guards.safe_repr,
    "reversed": guards.safe_reversed,
    "sorted": sorted,
    "str": textmethods.safe_str,
    "tuple": tuple,
    "type": type_name,
    "zip": guards.safe_zip,
}

HELPERS: dict[str, Any] = {
    "topic_match": topic_match,
    "json_decode": json_decode,
    **helpers.HELPERS,  # password checks, JWT, topic templates, regex, base64, JSON text, HMAC
}

#: Names bound per rule file rather than globally (`data` holds the data files).
PER_RULE = ("log", "data")


def provided_names() -> frozenset[str]:
    """Every name hookrules binds for rules, whatever the hook (decisions included)."""
    return frozenset(SAFE_BUILTINS) | frozenset(HELPERS) | frozenset(DECISIONS) | frozenset(PER_RULE)
