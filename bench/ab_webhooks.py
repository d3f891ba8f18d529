"""A/B of hookrules builds on the webhook port: CPU per request of each variant, beside the floors.

    python bench/ab_webhooks.py --variant asyncio="env HOOKRULES_LOOP=asyncio" --variant uvloop=""
    python bench/ab_webhooks.py --variant old="env PYTHONPATH=/tmp/old" --variant new="" --rounds 6

webhooks_bench.py compares one hookrules with the floors; a change to hookrules (a library, the event
loop) is measured better by running the builds side by side in the same rounds, so the machine's
noise falls on all of them alike. Each --variant NAME=PREFIX starts `PREFIX python -m hookrules serve`
(PREFIX: words put before the interpreter, e.g. `env HOOKRULES_LOOP=asyncio`, or an `env PYTHONPATH=`
pointing at another checkout's package); bare and parse (bench/bare_webhooks.py, as in
webhooks_bench.py) run beside them. Every round loads each server in turn with wrk (required here)
and webhooks_bench.py's script for --broker; printed per run and as medians: req/s and the server's
CPU per request, and each variant's CPU per request against bare's and parse's of the same rounds.
Every child is stopped in a finally.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from exhook_bench import Child, choose_pinning, print_run, stop_all
from webhooks_bench import BENCH, HOST, RULES, run_wrk, wait_port, write_wrk_script
from webhooks_loadgen import MIXES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="hookrules builds side by side on the webhook port (wrk)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PREFIX", required=True)
    p.add_argument("--broker", choices=sorted(MIXES), default="vernemq")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--no-floors", dest="floors", action="store_false")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args(argv)
    args.threads = 1
    if shutil.which("wrk") is None:
        p.error("wrk is not installed")
    variants = {}
    for spec in args.variant:
        name, sep, prefix = spec.partition("=")
        if not sep or not name or name in variants or name in ("bare", "parse"):
            p.error(f"--variant {spec!r}: NAME=PREFIX, names unique and not bare or parse")
        variants[name] = shlex.split(prefix)
    args.variants = variants
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mix = MIXES[args.broker]
    pin = choose_pinning(args.pin)
    children: list[Child] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="hookrules-ab-") as tmp:
        workdir = Path(tmp)
        try:
            pre = pin.prefix(pin.server)
            cmds: dict[str, list[str]] = {}
            if args.floors:
                bare = [*pre, sys.executable, str(BENCH / "bare_webhooks.py"), "--host", HOST, "--port", "0",
                        "--lifetime", "3600", *(["--rabbitmq"] if args.broker == "rabbitmq" else [])]
                cmds.update(bare=bare, parse=[*bare, "--parse"])
            for name, prefix in args.variants.items():
                cmds[name] = [*pre, *prefix, sys.executable, "-m", "hookrules", "serve", "--rules", str(RULES),
                              "--grpc", "off", "--http", f"{HOST}:0", "--metrics", "off", "--log-level", "warning"]
            started = {name: Child(name, cmd, workdir) for name, cmd in cmds.items()}
            children.extend(started.values())
            servers = {name: (child, wait_port(child)) for name, child in started.items()}
            script = write_wrk_script(workdir / "load.lua", mix)
            for round_no in range(1, args.rounds + 1):
                for name, (child, port) in servers.items():
                    if child.proc.poll() is not None:
                        raise RuntimeError(f"{name} died:\n{child.stderr_tail()}")
                    result = run_wrk(name, round_no, port, child.pid, script, args, pin, workdir, children)
                    results.append(result)
                    print_run(len(results), result)
        finally:
            stop_all(children)
    print(f"\nmedians over {args.rounds} rounds ({args.broker}, wrk, {args.connections} connections):")
    by = {(r.server, r.round): r for r in results}
    for name in servers:
        cpu = [by[(name, i)].cpu_us_per_req for i in range(1, args.rounds + 1)]
        rps = statistics.median(by[(name, i)].rps for i in range(1, args.rounds + 1))
        line = f"  {name:<12} {rps:8.0f} req/s  {statistics.median(c for c in cpu if c):6.1f} us/request"
        if args.floors and name not in ("bare", "parse"):
            for floor in ("bare", "parse"):
                ratios = [by[(name, i)].cpu_us_per_req / by[(floor, i)].cpu_us_per_req  # type: ignore[operator]
                          for i in range(1, args.rounds + 1)]
                line += f"  {statistics.median(ratios):.2f}x {floor}"
        print(line)
    bad = sum(r.errors + r.bad_replies for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
