"""A rule run's cost in process, compiled (lang/compiler) against the interpreter's walk, hot and cold.

    python bench/cold_runs.py             # the bundled authorize rule, and a rule calling a library

Hot: runs back to back, the caches warm, as a micro-benchmark sees them. Cold: the CPU's caches evicted
before each run (a walk over a few MB of objects and a 16 MiB write), as they are between a busy server's
calls, where a run costs 4-5x its hot time (bench/README.md, session 8). Each figure is the best of 3
repeats of the mean over N runs; the last column is walk / compiled. The rule sets are scanned twice from
the same files, once with the compiler off (MAX_NODES = -1), and both must decide alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook import EVENT_BUILDERS
from hookrules.lang import compiler
from hookrules.ruleset import CompiledRule, Limits, RuleSet, scan
from loadgen import session_calls

ROOT = Path(__file__).resolve().parent.parent

#: the bundled authorize policy as a library function, and a rule that calls it
LIBRARY = '''\
SHARED = ("devices", "sensors")

def owner_of(topic):
    words = topic_words(topic)
    if len(words) >= 2 and words[0] in SHARED:
        return words[1]
    return None

def may(client_id, action, topic):
    if action == "publish" and topic.startswith("$SYS/"):
        return False
    owner = owner_of(topic)
    if owner is not None and owner != client_id:
        return False
    return True
'''
LIBRARY_RULE = 'load("lib/acl.star", "may")\nif not may(client.id, action, topic):\n    deny("acl")\nallow()\n'

_BIG = [object() for _ in range(300_000)]
_BUFFER = bytearray(16 << 20)


def evict() -> None:
    """Push the run's code and data out of the CPU's caches, as other work does between a server's calls."""
    for _ in _BIG[::4]:
        pass
    _BUFFER[::64] = b"\1" * (len(_BUFFER) // 64)


def mean_us(run: Callable[[], Any], cold: bool, count: int) -> float:
    clock = time.perf_counter_ns
    total = 0
    for _ in range(count):
        if cold:
            evict()
        started = clock()
        run()
        total += clock() - started
    return total / count / 1000


def rules(directory: Path) -> dict[str, CompiledRule]:
    """The authorize rule of `directory`, walked and compiled."""
    out = {}
    saved = compiler.MAX_NODES
    for name, limit in (("walk", -1), ("compiled", saved)):
        compiler.MAX_NODES = limit
        try:
            ruleset, outcomes = scan(directory, RuleSet())
        finally:
            compiler.MAX_NODES = saved
        failed = [o for o in outcomes if o.errors]
        if failed:
            raise SystemExit(f"{directory}: {failed[0].errors[0].one_line()}")
        rule = ruleset.get("authorize")
        assert rule is not None and (rule.body is None) == (name == "walk")
        out[name] = rule
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hot", type=int, default=2000, help="runs per hot measurement (default 2000)")
    parser.add_argument("--cold", type=int, default=500, help="runs per cold measurement (default 500)")
    args = parser.parse_args(argv)
    pb = exhook_proto.load("v3")
    call = next(c for c in session_calls(pb, "bench-0001", "user1")
                if c.rpc == "OnClientAuthorize" and c.request.topic == "sensors/1")
    event = EVENT_BUILDERS["client.authorize"]("client.authorize", call.request)
    limits = Limits()
    with tempfile.TemporaryDirectory() as tmp:
        library_dir = Path(tmp)
        (library_dir / "lib").mkdir()
        (library_dir / "lib" / "acl.star").write_text(LIBRARY)
        (library_dir / "authorize.star").write_text(LIBRARY_RULE)
        cases = {"bundled authorize.star": rules(ROOT / "rules"), "a rule calling a library": rules(library_dir)}
        print(f"{'rule':28} {'way':9} {'hot µs':>8} {'cold µs':>8}")
        for title, pair in cases.items():
            decisions = {name: rule.run(event, limits) for name, rule in pair.items()}
            if decisions["walk"] != decisions["compiled"]:
                raise SystemExit(f"{title}: the two ways decided differently: {decisions}")
            figures = {}
            for name, rule in pair.items():
                def once(rule: CompiledRule = rule) -> Any:
                    return rule.run(event, limits)
                hot = min(mean_us(once, False, args.hot) for _ in range(3))
                cold = min(mean_us(once, True, args.cold) for _ in range(3))
                figures[name] = (hot, cold)
                print(f"{title:28} {name:9} {hot:8.2f} {cold:8.2f}")
            (wh, wc), (ch, cc) = figures["walk"], figures["compiled"]
            print(f"{title:28} {'walk/comp':9} {wh / ch:7.2f}x {wc / cc:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
