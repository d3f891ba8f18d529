"""`hookrules eval`: one event through the rules, with --explain showing the lines that ran and the
values the conditions saw (OPA's `opa eval --explain`, for this language)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from .engine import Engine, Outcome
from .events import Event
from .eventspec import SpecError, build_event
from .hooks import HOOKS
from .lang.trace import TracingInterpreter
from .ruleset import CompiledRule, RuleSet, scan
from .watchdog import RunClock


def read_event(value: str) -> Any:
    """--event: inline JSON, or a JSON/YAML file."""
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise SpecError(f"--event {value!r} is neither JSON nor a file")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"--event is not valid JSON: {exc}") from None


def describe(outcome: Outcome) -> str:
    d = outcome.decision
    parts: list[str] = [d.kind]
    details = {k: v for k in ("reason", "topic", "payload", "qos", "retain", "topics", "modifiers", "cache", "tags",
                              "superuser", "attrs", "expire_at", "acl")
               if (v := getattr(d, k, None)) not in (None, "")}
    if details:
        parts.append("(" + ", ".join(f"{k}={_plain(v)!r}" for k, v in details.items()) + ")")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: list(v) if isinstance(v, tuple) else _plain(v) for k, v in value.items()}
    if isinstance(value, tuple) and value and isinstance(value[0], Mapping):  # allow(acl=...)
        return [_plain(v) for v in value]
    return value


def evaluate(rules: Path, hook: str, event_spec: Any, out: TextIO, *, broker: str | None = None,
             explain: bool = False, run_clock: RunClock | None = None,
             events: Sequence[Event] | None = None) -> int:
    """`event_spec` written by hand (eventspec), or `events` already built (eval --raw: one per topic of
    a VerneMQ subscription)."""
    info = HOOKS.get(hook)
    if info is None:
        out.write(f"error: unknown hook '{hook}'\n")
        return 2
    if broker is not None and broker != info.broker:
        out.write(f"error: {hook} is a {info.broker} hook, not {broker}\n")
        return 2
    ruleset, outcomes = scan(rules, RuleSet(), interpreter=TracingInterpreter)
    for bad in (o for o in outcomes if o.errors):
        for err in bad.errors:
            out.write(err.format() + "\n")
    if events is None:
        try:
            events = [build_event(hook, event_spec)]
        except SpecError as exc:
            out.write(f"error: {exc}\n")
            return 2
    engine = Engine(ruleset)
    engine.run_clock = run_clock
    # A subscription's topics share one budget, as in a live call (Engine.decide_each): once it is
    # spent, the remaining topics are answered by the failure policy without running the rule.
    deadline = time.monotonic() + engine.limits.timeout
    failed = False
    for event in events:
        budget = None if len(events) == 1 else deadline - time.monotonic()
        if len(events) > 1:
            out.write(f"-- topic {event.data.get('topic')!r}\n")
        if budget is not None and budget <= 0:
            policy = engine.policy(hook)
            out.write(f"decision: {policy} (the call's budget, --rule-timeout {engine.limits.timeout:g} s, was "
                      "spent: answered by the failure policy without running the rule, as a live call is)\n")
            failed = True
            continue
        failed = _explain_one(engine, rules, hook, event, out, explain, budget) or failed
    return 1 if failed else 0


def _explain_one(engine: Engine, rules: Path, hook: str, event: Event, out: TextIO, explain: bool,
                 budget: float | None) -> bool:
    """Prints one event's answer; True when the failure policy gave it (the rule raised an error, ran out
    of time or steps, or did not load): `eval` then exits 1, so a script or CI sees it."""
    ruleset = engine.ruleset
    outcome = engine.decide(event, budget)
    source = ruleset.source(hook)  # a VerneMQ _m5 hook may be answered by its twin's file
    rule = ruleset.get(source) if source is not None else None
    said = describe(outcome)
    if outcome.decision.kind == "ignore" and HOOKS[hook].broker == "rabbitmq":
        said += " (RabbitMQ is answered deny: it asks its next auth backend, if any)"
    out.write(f"decision: {said}\n")
    if source is None:
        out.write(f"rule: none ({hook} has no rule file in {rules}, so it answers its default, "
                  f"{outcome.decision.kind})\n")
    elif rule is None:
        out.write(f"rule: {ruleset.broken[source]} did not load, so the failure policy answers\n")
    else:
        out.write(f"rule: {rule.path} (version {rule.version})\n")
    if outcome.error is not None:
        out.write(f"error: {outcome.error.one_line()} (answered by the failure policy)\n")
    if explain and rule is not None and isinstance(rule.interp, TracingInterpreter):
        out.write("explain:\n")
        sources: dict[str, list[str]] = {}
        for step in rule.interp.steps:
            if step.kind == "stmt":
                lines = sources.setdefault(step.file, _lines(rule, step.file))
                text = lines[step.line - 1].rstrip() if 0 < step.line <= len(lines) else ""
                out.write(f"  {step.file}:{step.line}  {text}\n")
            else:
                out.write(f"      | {step.kind}: {step.text}\n")
    return outcome.error is not None or (source is not None and rule is None)


def _lines(rule: CompiledRule, path: str) -> list[str]:
    """The lines the rule was compiled from (its own or a library's): never the file read again, which
    may have changed since, or be no file hookrules reads (files.read_file)."""
    return list(rule.lines if path == rule.path else rule.library_lines.get(path, ()))
