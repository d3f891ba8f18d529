"""What do shadow rules (`serve --shadow DIR`) cost? One command: the same hookrules with and without a shadow.

    python bench/shadow_bench.py            # about three minutes: 3 rounds of 5 s runs per server and front-end
    python bench/shadow_bench.py --quick    # smoke test: 1 round of 2 s runs

1. In process, no network: for each event of exhook_bench.rule_cases() (the bundled rules' EMQX calls),
   the CPU time of the live Engine.decide, and of one Shadow.run on the same event (the shadow engine's
   decide on a copy of the bundled rules, plus the comparison's counter: what each sampled call adds).
   Best of the repeats, as exhook_bench takes it.
2. Over the wire, three hookrules servers, each for the whole benchmark in its own process, measured in
   alternation (live, shadow at 100%, shadow at the default share, live, ...):
   * live: `hookrules serve --rules rules`, as exhook_bench and webhooks_bench run it;
   * shadow-1 / shadow-<default>: the same with `--shadow COPY --shadow-sample RATE`, COPY a copy of
     rules/ (so the two always agree: no decision log line is written, only the runs and their counts).
   Each server is loaded by webhooks_bench's wrk load (VerneMQ webhooks, 32 keep-alive connections)
   and exhook_bench's gRPC load generator (EMQX sessions, 8 channels); the figure is the server's CPU
   time per request, whoever the bottleneck was (see those benchmarks' docstrings for why), and its
   ratio to the live server's in the same round.

Everything listens on 127.0.0.1; every child process is stopped in a `finally`. Exit status 0 when every
run completed without failed or wrong replies, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import exhook_bench as eb
import webhooks_bench as wb

from hookrules.engine import Engine
from hookrules.ruleset import Limits, RuleSet, scan
from hookrules.shadow import DEFAULT_SAMPLE, Shadow


def in_process(budget: float, repeat: int) -> list[tuple[str, float, float]]:
    """(event, live decide µs, shadow run µs) per bundled-rules event, best of `repeat`. A run preempted
    past its deadline on a busy machine is answered by its policy: counted here, not logged."""
    logging.getLogger("hookrules").setLevel(logging.CRITICAL)
    ruleset, _ = scan(eb.RULES, RuleSet())
    engine = Engine(ruleset)
    with tempfile.TemporaryDirectory(prefix="hookrules-shadow-bench-") as tmp:
        copy = Path(tmp) / "shadow"
        shutil.copytree(eb.RULES, copy)
        shadow = Shadow(copy, limits=Limits(), policies={}, sample=1.0)
        shadow.load()
        out = []
        for case in eb.rule_cases():
            live = engine.decide(case.event, eb.DECIDE_TIMEOUT)
            decide = eb.per_call(lambda e=case.event: engine.decide(e, eb.DECIDE_TIMEOUT), budget, 200_000, repeat)
            run = eb.per_call(lambda e=case.event: shadow.run(e, live), budget, 200_000, repeat)
            out.append((case.label, decide.best_us, run.best_us))
    return out


def start(name: str, extra: list[str], pin: eb.Pinning, workdir: Path, children: list[eb.Child]) -> tuple[eb.Child, int, int]:
    """A hookrules server with both front-ends; (child, http port, grpc port)."""
    cmd = [*pin.prefix(pin.server), sys.executable, "-m", "hookrules", "serve", "--rules", str(eb.RULES),
           "--grpc", f"{eb.HOST}:0", "--http", f"{eb.HOST}:0", "--metrics", "off", "--log-level", "warning", *extra]
    child = eb.Child(name, cmd, workdir)
    children.append(child)
    grpc_port = child.wait_listening()
    return child, wb.wait_port(child), grpc_port


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hookrules with and without shadow rules: CPU per call.")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 5, --quick 2)")
    p.add_argument("--rounds", type=int, help="rounds of every server and load (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)
    # the two benchmarks' own settings, with this run's window
    wargs = wb.parse_args(["--duration", str(duration), "--rounds", str(rounds), "--client", "wrk"])
    gargs = eb.parse_args(["--duration", str(duration), "--rounds", str(rounds)])

    print("in process: CPU µs per call (best of 5 repeats)")
    print(f"  {'event':<48} {'live decide':>12} {'shadow run':>11} {'ratio':>6}")
    rows = in_process(0.05 if args.quick else 0.2, 5)
    for label, live, run in rows:
        print(f"  {label:<48} {live:>12.1f} {run:>11.1f} {run / live:>5.2f}x")
    print(f"  median shadow run / live decide: {statistics.median(r / l for _, l, r in rows):.2f}x")

    pin = eb.choose_pinning(args.pin)
    servers = {"live": [], "shadow-1": ["--shadow-sample", "1"],
               f"shadow-{DEFAULT_SAMPLE:g}": ["--shadow-sample", str(DEFAULT_SAMPLE)]}
    children: list[eb.Child] = []
    results: dict[tuple[str, str, int], eb.RunResult] = {}
    with tempfile.TemporaryDirectory(prefix="hookrules-shadow-bench-") as tmp:
        workdir = Path(tmp)
        copy = workdir / "shadow"
        shutil.copytree(eb.RULES, copy)
        script = wb.write_wrk_script(workdir / "vernemq.lua", wb.MIXES["vernemq"])
        try:
            started = {name: start(name, extra if name == "live" else ["--shadow", str(copy), *extra], pin, workdir,
                                   children) for name, extra in servers.items()}
            print(f"\nover the wire ({rounds} round(s) of {duration:g} s per server and load; server CPU µs per call)")
            for round_no in range(1, rounds + 1):
                for name, (child, http_port, grpc_port) in started.items():
                    if child.proc.poll() is not None:
                        raise RuntimeError(f"{name} died:\n{child.stderr_tail()}")
                    results[(name, "webhooks", round_no)] = r1 = wb.run_wrk(
                        name, round_no, http_port, child.pid, script, wargs, pin, workdir, children)
                    results[(name, "exhook", round_no)] = r2 = eb.run_load(
                        name, round_no, grpc_port, child.pid, gargs, pin, workdir, children)
                    for load, r in (("webhooks", r1), ("exhook", r2)):
                        print(f"  round {round_no} {name:<12} {load:<9} {r.rps:>8.0f} req/s  "
                              f"{r.cpu_us_per_req or 0:>6.1f} µs/call  other {r.other_cpu_pct or 0:>4.0f}%  "
                              f"errors {r.errors + r.bad_replies}" + (f" ({r.first_error[:120]})" if r.first_error else ""))
        finally:
            eb.stop_all(children)
    print("\nmedian server CPU per call, and its ratio to the live server's in the same round:")
    for load in ("webhooks", "exhook"):
        for name in servers:
            cpu = statistics.median(results[(name, load, i)].cpu_us_per_req or 0 for i in range(1, rounds + 1))
            ratio = statistics.median((results[(name, load, i)].cpu_us_per_req or 0)
                                      / (results[("live", load, i)].cpu_us_per_req or 1) for i in range(1, rounds + 1))
            print(f"  {load:<9} {name:<12} {cpu:>6.1f} µs/call  {ratio:.2f}x")
    failures = sum(r.errors + r.bad_replies for r in results.values())
    if failures:
        print(f"{failures} failed or wrong replies", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
