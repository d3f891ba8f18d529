"""`hookrules hooks [HOOK]`: every hook, what its rule reads and may decide, read from the code itself.

Why from the code: the hook tables (hooks.HOOKS), the event classes (events.py) and the defaults (engine,
nodefaults) are what the server uses; a hand-written list in the README or an error hint drifts from them.
The one table kept here, NAME_SHAPES (what each name holds), is checked by a test against the event every
adapter builds for every hook.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TextIO

from .emqxoptions import OPTIONS as EMQX_OPTIONS
from .emqxoptions import carriable
from .engine import Engine
from .events import Client, Conn, Message, SubOpts, TopicFilter
from .hooks import CHAINS, HOOKS, RULE_SUFFIX, HookInfo, answered_hooks
from .nodefaults import NO_RULE_SUMMARY

#: the order of decisions in every listing
_DECISION_ORDER = ("allow", "deny", "ignore", "rewrite", "drop")


#: What each name a rule reads holds: an event class (its fields are listed), [X] for a list of X, or a type
#: in words. tests/test_cli_tools.py checks it against every adapter's real event for every hook.
NAME_SHAPES: dict[str, Any] = {
    "hook": "str", "broker": "str", "channel": "str (exhook or http on EMQX, webhook on VerneMQ, http on RabbitMQ)",
    "client": Client, "conn": Conn, "message": Message, "subopts": SubOpts,
    "topic_filters": [TopicFilter], "topics": [TopicFilter], "properties": "map", "user_properties": "map",
    "request": "map (VerneMQ: the webhook's JSON body; EMQX: the HTTP call's fields, empty over ExHook)", "topic": "str", "qos": "int, or None where the broker sends none",
    "action": "str (publish or subscribe)", "result": "bool", "reason": "str", "result_code": "str",
    "vhost": "str", "ip": "str", "tags": ["str"], "resource": "str (queue, exchange or topic)", "name": "str",
    "permission": "str (configure, write or read)", "routing_key": "str",
}
#: VerneMQ's unsubscribe hooks carry the topics as plain strings
UNSUBSCRIBE_TOPICS: list[Any] = ["str"]


def name_shape(hook: str, name: str) -> Any:
    if name == "topics" and hook.startswith("on_unsubscribe"):
        return UNSUBSCRIBE_TOPICS
    return NAME_SHAPES[name]


def _render(shape: Any) -> Any:
    """JSON for a shape: an event class as {field: type}, a list as [item]."""
    if isinstance(shape, type) and dataclasses.is_dataclass(shape):
        return {f.name: (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)))
                for f in dataclasses.fields(shape)}
    if isinstance(shape, list):
        return [_render(shape[0])]
    return shape


def _reads(info: HookInfo) -> dict[str, Any]:
    return {name: _render(name_shape(info.name, name)) for name in info.all_names}


def describe(info: HookInfo) -> dict[str, Any]:
    chain = CHAINS[info.name]
    options = [opt for opt, on in (("cache", info.cacheable), ("tags", info.tagged), ("TOPICS", info.topic_filtered))
               if on] + (list(EMQX_OPTIONS) if carriable(info.name) else [])
    return {
        "hook": info.name,
        "broker": info.broker,
        "files": [h + RULE_SUFFIX for h in chain],
        "answers": list(answered_hooks(info.name)) if info.broker == "portable" else [info.name],
        "reads": _reads(info),
        "decisions": [d for d in _DECISION_ORDER if d in info.decisions],
        "rewrites": sorted(info.rewrites),
        "options": options,
        "failure_policy": Engine().policy(info.name),
        "without_rule": NO_RULE_SUMMARY.get(info.name, "ignore"),
    }


def _flat(shape: Any) -> str:
    if isinstance(shape, dict):
        return "{" + ", ".join(shape) + "}"
    if isinstance(shape, list):
        return "[" + _flat(shape[0]) + ", ...]"
    return str(shape)


def print_hooks(out: TextIO, hook: str | None = None, broker: str | None = None, fmt: str = "text") -> int:
    """0, or 2 for an unknown hook or broker (with the list to choose from)."""
    if hook is not None and hook not in HOOKS:
        out.write(f"error: unknown hook '{hook}'; hooks: {', '.join(HOOKS)}\n")
        return 2
    brokers = sorted({h.broker for h in HOOKS.values()})
    if broker is not None and broker not in brokers:
        out.write(f"error: unknown broker '{broker}'; brokers: {', '.join(brokers)}\n")
        return 2
    chosen = [HOOKS[hook]] if hook is not None else [h for h in HOOKS.values() if broker in (None, h.broker)]
    described = [describe(info) for info in chosen]
    if fmt == "json":
        json.dump(described if hook is None else described[0], out, indent=2)
        out.write("\n")
        return 0
    if hook is None:
        width = max(len(d["hook"]) for d in described)
        for d in described:
            out.write(f"{d['hook']:<{width}}  {d['broker']:<8}  {' '.join(d['decisions']):<30}  "
                      f"{' -> '.join(d['files'])}\n")
        out.write("\n`hookrules hooks HOOK` says what one hook's rule reads and may decide.\n")
        return 0
    d = described[0]
    out.write(f"{d['hook']} ({d['broker']})\n")
    if d["broker"] == "portable":
        out.write(f"  answers:          {', '.join(d['answers'])}, where no more specific file exists\n")
    else:
        out.write(f"  answered by:      {', else '.join(d['files'])} (the first that exists)\n")
    out.write("  reads:\n")
    for name, shape in d["reads"].items():
        out.write(f"    {name:<16}{_flat(shape)}\n")
    out.write(f"  may decide:       {', '.join(d['decisions'])}\n")
    if d["rewrites"]:
        out.write(f"  rewrite() sets:   {', '.join(d['rewrites'])}\n")
    if d["options"]:
        emqx_http = ""
        if set(EMQX_OPTIONS) <= set(d["options"]):
            emqx_http = (" (over EMQX's HTTP authenticator only)" if len(d["options"]) == len(EMQX_OPTIONS)
                         else f" (the last {len(EMQX_OPTIONS)} over EMQX's HTTP authenticator only)")
        out.write(f"  also:             {', '.join(d['options'])}{emqx_http}\n")
    out.write(f"  on a rule error:  {d['failure_policy']} (--failure-policy {d['hook']}=deny|ignore|allow)\n")
    out.write(f"  without a rule:   {d['without_rule']}\n")
    return 0
