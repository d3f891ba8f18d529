"""`hookrules replay LOG --rules DIR`: the events of a decision log, decided again by other rules.

Each line of the log carries the event its rule read (eventcodec.py). Replay decodes it, runs DIR's
rule for its hook through the same Engine the server uses (failure policies and limits included),
and compares the new decision with the one logged. What it prints is for a person deciding whether
to deploy DIR, and its exit status for CI: 0 when every decision stays, 1 when any would change, 2
when the log or rules cannot be read.

What the log cannot tell is said, not guessed: lines written without --decision-log-secrets lack the
password or payload (the codec marks each as redacted), so replay runs them with those empty and
counts them; shadow lines (a disagreement the shadow rules logged) repeat an event already decided
live and are skipped; calls to hooks with no rule were never logged, so a rule for a new hook is not
exercised.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .engine import Engine
from .eventcodec import EventCodecError, decode_event
from .hooks import HOOKS, Policy
from .ruleset import Limits, RuleSet, scan
from .watchdog import RunClock

#: longest line read (a decision log line with a 1 MiB webhook body in its event stays well under it)
MAX_LINE = 16 * 1024 * 1024


class ReplayError(Exception):
    """The log cannot be replayed: the message names the file and line."""


@dataclass
class Difference:
    line: int
    entry: Mapping[str, Any]
    new: str
    new_reason: str
    new_source: str
    error: str
    redacted: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        entry = self.entry
        out = {"line": self.line, "time": entry.get("time", ""), "broker": entry.get("broker", ""),
               "hook": entry.get("hook", ""), "client_id": entry.get("client_id", ""),
               "username": entry.get("username", ""), "live": entry.get("decision", ""),
               "live_reason": entry.get("reason", ""), "new": self.new, "new_reason": self.new_reason,
               "new_source": self.new_source}
        if "topic" in entry:
            out["topic"] = entry["topic"]
        if self.error:
            out["error"] = self.error
        if self.redacted:
            out["redacted"] = list(self.redacted)
        return out


@dataclass
class Report:
    log: str
    rules: str
    replayed: int = 0
    differ: int = 0
    #: replayed events that lacked a secret (redacted in the log), and how many of them differ
    redacted: int = 0
    redacted_differ: int = 0
    #: replayed events whose webhook body was too big to be logged, and how many of them differ
    omitted: int = 0
    omitted_differ: int = 0
    rule_errors: int = 0
    per_hook: Counter[str] = field(default_factory=Counter)
    differ_per_hook: Counter[str] = field(default_factory=Counter)
    changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    first: list[Difference] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "log": self.log, "rules": self.rules, "replayed": self.replayed, "differ": self.differ,
            "redacted": self.redacted, "redacted_differ": self.redacted_differ, "omitted": self.omitted,
            "omitted_differ": self.omitted_differ, "rule_errors": self.rule_errors,
            "hooks": {hook: {"replayed": n, "differ": self.differ_per_hook[hook]}
                      for hook, n in sorted(self.per_hook.items())},
            "changes": [{"hook": h, "live": live, "new": new, "count": n}
                        for (h, live, new), n in sorted(self.changes.items())],
            "skipped": dict(sorted(self.skipped.items())),
            "first": [d.as_json() for d in self.first],
            "load_errors": self.load_errors,
        }


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(number, text, complete) of every line; the last one is incomplete when it has no newline (a log
    copied while it was being written)."""
    try:
        with open(path, encoding="utf-8", errors="strict", newline="\n") as f:
            number = 0
            while True:
                line = f.readline(MAX_LINE)
                if not line:
                    return
                number += 1
                if not line.endswith("\n") and len(line) >= MAX_LINE:
                    raise ReplayError(f"{path}:{number}: a line longer than {MAX_LINE} bytes is not a decision log line")
                yield number, line, line.endswith("\n")
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): is it a decision log?") from None
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def replay(log_path: Path, rules: Path, *, policies: Mapping[str, Policy] | None = None, limits: Limits | None = None,
           run_clock: RunClock | None = None, show: int = 10) -> Report:
    """Replay every event of the log against the rules; ReplayError when the log cannot be read."""
    ruleset, outcomes = scan(rules, RuleSet())
    report = Report(str(log_path), str(rules))
    report.load_errors = [err.one_line() for o in outcomes for err in o.errors]
    engine = Engine(ruleset, policies, limits)
    engine.run_clock = run_clock
    for number, text, complete in _lines(log_path):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except (ValueError, RecursionError):
            if not complete:  # the last line, cut short while it was being written
                report.skipped["incomplete_last_line"] += 1
                continue
            raise ReplayError(f"{log_path}:{number}: not a JSON line: is it a decision log?") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("decision"), str):
            raise ReplayError(f"{log_path}:{number}: not a decision log entry (no decision)")
        if entry.get("shadow"):
            report.skipped["shadow_lines"] += 1  # a disagreement of shadow rules: its event was decided live too
            continue
        form = entry.get("event")
        if form is None:
            report.skipped["no_event"] += 1  # written before the log carried events
            continue
        try:
            event, redacted, omitted = decode_event(form)
        except EventCodecError as exc:
            raise ReplayError(f"{log_path}:{number}: {exc}") from None
        if event.hook not in HOOKS:
            report.skipped["unknown_hook"] += 1
            continue
        outcome = engine.decide(event)
        live, new = entry["decision"], outcome.decision.kind
        report.replayed += 1
        report.per_hook[event.hook] += 1
        if outcome.error is not None and outcome.error.code != "load_error":
            report.rule_errors += 1
        if redacted:
            report.redacted += 1
        if omitted:
            report.omitted += 1
        if live == new:
            continue
        report.differ += 1
        report.differ_per_hook[event.hook] += 1
        report.changes[(event.hook, live, new)] += 1
        if redacted:
            report.redacted_differ += 1
        if omitted:
            report.omitted_differ += 1
        if len(report.first) < show:
            report.first.append(Difference(number, entry, new, getattr(outcome.decision, "reason", ""),
                                           outcome.source, outcome.error.one_line() if outcome.error else "",
                                           redacted))
    return report


def _clip(value: Any, width: int = 60) -> str:
    text = str(value).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= width else text[: width - 3] + "..."


def write_text(report: Report, out: TextIO, show: int) -> None:
    w = out.write
    skipped = sum(report.skipped.values())
    w(f"replayed {report.replayed} event(s) of {report.log} against {report.rules}"
      + (f" ({skipped} line(s) skipped: " + ", ".join(f"{n} {why.replace('_', ' ')}"
                                                      for why, n in sorted(report.skipped.items())) + ")"
         if skipped else "") + "\n")
    for problem in report.load_errors:
        w(f"load error (its hooks answer by their failure policy): {problem}\n")
    if report.per_hook:
        width = max(len(h) for h in report.per_hook)
        w(f"\n{'hook':<{width}}  replayed  differ\n")
        for hook, n in sorted(report.per_hook.items()):
            w(f"{hook:<{width}}  {n:>8}  {report.differ_per_hook[hook]:>6}\n")
    if report.changes:
        width = max(len(h) for h, _, _ in report.changes)
        w(f"\nwould be decided differently: {report.differ} of {report.replayed}\n")
        w(f"{'hook':<{width}}  {'live':<7} -> {'new':<7}  count\n")
        for (hook, live, new), n in sorted(report.changes.items(), key=lambda kv: (-kv[1], kv[0])):
            w(f"{hook:<{width}}  {live:<7} -> {new:<7}  {n:>5}\n")
        if report.first:
            w(f"\nfirst {len(report.first)} that differ{'' if show > len(report.first) else f' (--show {show})'}:\n")
        for d in report.first:
            e = d.entry
            who = f"client_id={_clip(e.get('client_id', ''), 40)} username={_clip(e.get('username', ''), 40)}"
            topic = f" topic={_clip(e['topic'], 60)}" if "topic" in e else ""
            reason = f" ({_clip(d.new_reason)})" if d.new_reason else ""
            w(f"  {report.log}:{d.line}  {e.get('time', '')}  {e.get('broker', '')} {e.get('hook', '')}  {who}{topic}: "
              f"{e.get('decision')} -> {d.new}{reason}"
              + (f" [{d.new_source}: {_clip(d.error, 120)}]" if d.error else "")
              + (" [secrets redacted]" if d.redacted else "") + "\n")
    else:
        w(f"\nno decision would change ({report.replayed} replayed)\n")
    if report.rule_errors:
        w(f"\n{report.rule_errors} run(s) failed and were answered by the failure policy\n")
    if report.redacted:
        w(f"\n{report.redacted} of {report.replayed} event(s) could not be replayed faithfully: the log was written "
          "without --decision-log-secrets, so their password or payload reads as empty here; "
          f"{report.redacted_differ} of them differ\n")

    if report.omitted:
        w(f"\n{report.omitted} of {report.replayed} event(s) could not be replayed faithfully: their webhook body was "
          "too big to be logged (`request` reads as None here); "
          f"{report.omitted_differ} of them differ\n")


def write_json(report: Report, out: TextIO) -> None:
    out.write(json.dumps(report.as_json(), ensure_ascii=True, indent=2) + "\n")
