"""Where a webhook's server CPU goes: hookrules under load, sampled by py-spy, stacks sorted into parts.

    python bench/profile_webhooks.py                       # every VerneMQ request of the bench's mix
    python bench/profile_webhooks.py --only auth_on_register --only "topic write"   # some of them
    python bench/profile_webhooks.py --broker rabbitmq --duration 10 --raw /tmp/stacks.txt

Starts `python -m hookrules serve` as webhooks_bench.py does (bundled rules/, --grpc off, --metrics
off), loads it with wrk (the requests of webhooks_loadgen's Mix for --broker, or those whose label
starts with an --only; without wrk, the Python load generator and the whole Mix), and while the load
runs attaches py-spy (`pip install py-spy`; it needs ptrace: root, or CAP_SYS_PTRACE) to the server
for --duration seconds. Its sampled stacks (py-spy's raw, "collapsed" format: one stack per line,
root first, and how many samples saw it) are sorted into the parts of a webhook, each stack to the
first part of PARTS any of its frames belongs to, searched leaf first: so json.loads called by our
_body() is "body JSON decoding", aiohttp's Response built by our _respond() is "reply encoding and
response object", and what is left in our own functions is "our dispatch". Printed: the share of
the server's sampled CPU per part, and the functions that cost most (their own time, leaf frames).

py-spy samples Python frames only (no --native): time in C (the HTTP parser, json's scanner, socket
calls) is counted in the Python function that called it, which is what the parts want. It pauses
nothing (--nonblocking), so sampling costs the server little; the load is wrk, in C, pinned to
another CPU where taskset is available. Every child is stopped in a finally.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from exhook_bench import Child, choose_pinning, stop_all
from webhooks_bench import RULES, START_TIMEOUT, wait_port, write_wrk_script
from webhooks_loadgen import MIXES, REQUEST_TIMEOUT

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"

#: a stack with a frame of the rule's run in it is the rule's, whatever it calls (the sandbox's helpers)
RULE_RUN = ("rule run (sandbox)", re.compile(r"^CompiledRule\.run \(|\(engine/lang/|\(asteval/"))
#: (part, pattern on a frame "function (file:line)"): a stack is the part of its leaf frame, or of the
#: nearest caller that matches one (a dataclass's generated __init__ counts for whoever built it)
PARTS: tuple[tuple[str, re.Pattern[str]], ...] = (RULE_RUN, *((name, re.compile(pattern)) for name, pattern in (
    ("metrics (prometheus)", r"\(prometheus_client/|\(engine/metrics\.py"),
    ("engine (decide: lookup, outcome, counters, decision log)",
     r"\(engine/(engine|nodefaults|ruleset|decisions|decisionlog|watchdog)\.py"),
    ("body decoding (JSON, form)", r"^(loads|JSONDecoder\.\w+) \(json/|\(engine/(adapters/)?jsonwire\.py|orjson|"
                                   r"^WebhookAdapter\._body \(|^parse_fields \(|^parse_qsl \(|urllib/parse"),
    ("reply building and encoding", r"^(dumps|JSONEncoder\.\w+) \(json/|"
                                    r"^(reply_for|subscribe_reply|_allow|_rewrite|_error|_encode_\w+|_without_empty|"
                                    r"_m5_options|answer_text) \(engine/adapters/|^WebhookAdapter\._respond \(|"
                                    r"^_text \(engine/adapters/rabbitmq_http"),
    ("event building", r"\(engine/(events|hooks)\.py|\(engine/adapters/(vernemq|rabbitmq)\.py|\(base64\.py"),
    ("aiohttp request object (made by our factory)", r"^body_limited_requests\.<locals>\.make \("),
    ("our dispatch (adapter, admission)", r"\(engine/adapters/|\(engine/ratelimit\.py"),
    ("aiohttp: parsing and reading the request", r"^RequestHandler\.data_received \(|\(aiohttp/(web_request|"
                                                 r"http_parser|streams|helpers)\.py|multidict|\(yarl/"),
    ("aiohttp: response object, headers, writer", r"\(aiohttp/(web_response|http_writer)\.py"),
    ("aiohttp: request handler (keep-alive loop, tasks)", r"\(aiohttp/"),
    ("asyncio: event loop, tasks, socket I/O", r"\(asyncio/|\(selectors\.py|uvloop"),
)))
OTHER = "other"


def part_of(frames: Sequence[str]) -> str:
    if any(RULE_RUN[1].search(f) for f in frames):
        return RULE_RUN[0]
    for frame in reversed(frames):  # the leaf first, then its callers
        for name, pattern in PARTS:
            if pattern.search(frame):
                return name
    return OTHER


def analyse(raw: str, top: int) -> str:
    """The table of parts and the costliest leaf functions, from py-spy's raw output."""
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        total += n
        parts[part_of(frames)] += n
        leaves[re.sub(r":\d+\)$", ")", frames[-1])] += n
    if not total:
        return "no samples (is the server busy? is py-spy allowed to attach?)"
    lines = [f"{total} samples of the server's busy threads", "", f"  {'part':<46} {'share':>6}"]
    for name, _ in (*PARTS, (OTHER, None)):
        if parts[name]:
            lines.append(f"  {name:<46} {parts[name] / total:6.1%}")
    lines += ["", f"costliest functions (own time, the leaf frame; C code counts in its caller), top {top}:"]
    for frame, n in leaves.most_common(top):
        lines.append(f"  {n / total:6.1%}  {frame[:130]}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="profile hookrules' HTTP front-ends under load with py-spy")
    p.add_argument("--broker", choices=sorted(MIXES), default="vernemq")
    p.add_argument("--only", action="append", default=[],
                   help="only the requests whose label starts with this (repeatable; default: the whole mix)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds sampled (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before sampling (default 2)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--top", type=int, default=25, help="how many functions to list (default 25)")
    p.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks in this file")
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more argument for `hookrules serve` (repeatable)")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args(argv)
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        p.error("py-spy is not installed: pip install py-spy")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mix = MIXES[args.broker]
    requests = tuple(r for r in mix.requests if not args.only or r.label.startswith(tuple(args.only)))
    if not requests:
        print(f"no request of the {args.broker} mix starts with {args.only}: "
              + ", ".join(r.label for r in mix.requests), file=sys.stderr)
        return 2
    mix = dataclasses.replace(mix, requests=requests)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pin = choose_pinning(args.pin)
    wrk = shutil.which("wrk")
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="hookrules-profile-") as tmp:
        workdir = Path(tmp)
        try:
            server = Child("hookrules", [*pin.prefix(pin.server), sys.executable, "-m", "hookrules", "serve",
                                         "--rules", str(RULES), "--grpc", "off", "--http", f"{HOST}:0",
                                         "--metrics", "off", "--log-level", "warning", *args.server_arg], workdir)
            children.append(server)
            port = wait_port(server)
            load_seconds = args.warmup + args.duration + 2
            if wrk is not None:
                script = write_wrk_script(workdir / "load.lua", mix)
                load = [*pin.prefix(pin.loadgen), wrk, "-t", "1", "-c", str(args.connections),
                        "-d", f"{int(load_seconds + 0.999)}s", "--timeout", f"{REQUEST_TIMEOUT:g}s", "-s",
                        str(script), f"http://{HOST}:{port}/"]
            else:
                print("wrk is not installed: the Python load generator sends the whole mix", file=sys.stderr)
                load = [*pin.prefix(pin.loadgen), sys.executable, str(BENCH / "webhooks_loadgen.py"), "--url",
                        f"http://{HOST}:{port}/", "--broker", args.broker, "--server-pid", str(server.pid),
                        "--warmup", "0", "--duration", str(load_seconds)]
            children.append(Child("load", load, workdir))
            time.sleep(args.warmup)
            out = workdir / "stacks.txt"
            spy = subprocess.run([pyspy, "record", "--format", "raw", "--nonblocking", "-r", str(args.rate),
                                  "-d", str(int(args.duration + 0.999)), "-p", str(server.pid), "-o", str(out)],
                                 capture_output=True, text=True, timeout=args.duration + 60, check=False)
            if spy.returncode != 0 or not out.exists():
                print(f"py-spy failed (rc={spy.returncode}): {spy.stderr[-800:]}", file=sys.stderr)
                return 1
            raw = out.read_text()
            if args.raw is not None:
                args.raw.write_text(raw)
        finally:
            stop_all(children)
    print(f"hookrules {args.broker}: {', '.join(r.label for r in requests)}; {args.duration:g} s sampled "
          f"at {args.rate}/s under {'wrk' if wrk else 'the Python load generator'} load")
    print(analyse(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
