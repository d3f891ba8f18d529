"""Compiling rule text in process, for the language tests (no server)."""

from __future__ import annotations

from hookrules.hooks import HOOKS
from hookrules.ruleset import CompiledRule, compile_rule

AUTHZ = "client.authorize"
AUTHN = "client.authenticate"
PUBLISH = "message.publish"


def rule_path(hook: str) -> str:
    return f"rules/{hook}.star"


def compile_src(src: str | bytes, hook: str = AUTHZ) -> CompiledRule:
    data = src if isinstance(src, bytes) else src.encode("utf-8")
    return compile_rule(rule_path(hook), data, HOOKS[hook])
