"""How much does hookrules cost over a bare ExHook servicer? One command, one run, both measured.

    python bench/exhook_bench.py            # about two minutes: 6 rounds of 5 s runs
    python bench/exhook_bench.py --quick    # smoke test: 1 round of 2 s runs

What it measures, in this order:

1. Rule runs in process, no gRPC: the bundled rules/ loaded with `ruleset.scan`, fed Events shaped like
   the ones the ExHook adapter builds (client.authenticate, client.authorize for a client's own device
   topic, another client's device topic and a plain topic, message.publish to t/demo and sensors/1; the
   first four answered by the portable authenticate.star and authorize.star, found as the engine finds
   them, with RuleSet.source),
   timing `rule.run(event, Limits())` and `Engine.decide(event, timeout)` (which adds the TOPICS filter,
   the metrics and the decision counters) timeit-style, per call. The goal line takes each event's best
   repeat, as the timeit documentation advises ("higher values are typically not caused by variability in
   Python's speed, but by other processes interfering"), and the median of that over the events; the
   median repeats are printed beside it. Goal: median rule run <= 15 us.

2. gRPC throughput of two servers, alternated to spread machine noise evenly (bare, hookrules, bare,
   hookrules, ... for --rounds rounds):
   * bare: bench/bare_servicer.py, an emqx.exhook.v3 HookProvider on the same stack as hookrules
     (grpc.aio, generic handlers, the same dynamic message classes) with constant replies: the floor;
   * hookrules: `python -m hookrules serve --rules rules ...`, exactly as an operator runs it.
   Both run for the whole benchmark in their own processes. Each run starts bench/loadgen.py in another
   process: a grpc.aio client with --channels channels (EMQX's pool_size, default 8) and --concurrency
   calls in flight, replaying what EMQX sends for MQTT sessions (18 calls per session), with a warm-up
   before the measured window. Reported per run: req/s, p50/p99 latency, and the server's CPU time per
   request (utime+stime of its process from /proc/<pid>/stat, read at both ends of the window), plus
   how busy the server, the client and everything else on the machine ("other", from /proc/stat) were.
   Goal: throughput ratio hookrules/bare >= 0.85x.

Why CPU per request: a Python gRPC client costs about as much CPU per call as a Python gRPC server, so
on a small machine the load generator can saturate its own core before the server does; then req/s
measures the client and both servers look alike. Server CPU time per request does not depend on who
the bottleneck is, so its ratio is the fair comparison (1 / that ratio is the throughput ratio to
expect when the server is the bottleneck). The "bound" column says which side's core was saturated;
a large "other" means another workload shared the CPUs and req/s of that run is not to be trusted.
On a shared VM the same server's CPU per request varies by about +-10% from one run to the next (seen
here: a bare servicer at 459-569 us in six runs), so the default is many short alternating rounds and
their median rather than a few long ones.
With taskset available (and at least 2 CPUs) the servers are pinned to one CPU and the load generator
to another, so they do not steal each other's core (--no-pin to disable).

Everything listens on 127.0.0.1 only. Every child process is stopped in a `finally` (SIGTERM, then
SIGKILL), also on Ctrl+C; on Linux the children also get SIGTERM if this process dies (PR_SET_PDEATHSIG).
Exit status: 0 when every run completed without failed or wrong replies, 1 otherwise (the goals are
reported, not enforced), 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from hookrules.engine import Engine
from hookrules.events import EMPTY, Client, Event, Message, frozen_map
from hookrules.ruleset import Limits, RuleSet, scan
from serving import die_with_parent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RULES = ROOT / "rules"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # a cold hookrules start imports grpc and compiles two protos
STOP_TIMEOUT = 10.0
NODE = "emqx@127.0.0.1"
#: what the adapter hands Engine.decide: EMQX's 5 s deadline minus exhook.DEADLINE_MARGIN
DECIDE_TIMEOUT = 4.95
LISTEN = re.compile(r"EMQX ExHook .* on (?P<host>[\d.]+):(?P<port>\d+)\s*$", re.MULTILINE)

THROUGHPUT_GOAL = 0.85
RULE_RUN_GOAL_US = 15.0
#: above this much CPU (% of one core) used by other processes during a window, req/s is called noisy
NOISY_OTHER_PCT = 25.0


# -- child processes ----------------------------------------------------------------------------


class Child:
    """A subprocess with its stdout and stderr in files (no pipe can fill up and stall it)."""

    def __init__(self, name: str, cmd: Sequence[str], workdir: Path):
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # own session: Ctrl+C reaches only us, and we stop the children in order
            self.proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT,
                                         env=env, start_new_session=True, preexec_fn=die_with_parent(os.getpid()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.err_path.read_text(errors="replace").rstrip()
        return "\n".join(text.splitlines()[-lines:]) or "(no output on stderr)"

    def wait_listening(self, listen: re.Pattern[str] = LISTEN, timeout: float = START_TIMEOUT) -> int:
        """The port from the server's banner: `listen`'s `port` group (by default the `... EMQX ExHook ...
        on 127.0.0.1:PORT` line; webhooks_bench.LISTEN for the HTTP servers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = listen.search(self.stdout())
            if m:
                return int(m["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early (rc={self.proc.returncode}):\n{self.stderr_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not report its port within {timeout:.0f}s:\n{self.stderr_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)


def stop_all(children: Sequence[Child]) -> None:
    """Stop every child, newest first, all signalled at once; a second Ctrl+C cannot cut this short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in reversed(children):
            child.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class Pinning:
    server: str | None  # CPU list for taskset -c, or None
    loadgen: str | None

    def prefix(self, cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus] if cpus is not None else []

    def describe(self) -> str:
        if self.server is None:
            return "not pinned"
        return f"servers pinned to CPU {self.server}, load generator to CPU {self.loadgen}"


def choose_pinning(enabled: bool) -> Pinning:
    if not enabled or shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        return Pinning(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None)
    return Pinning(str(cpus[0]), str(cpus[1]))


# -- gRPC runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    server: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float | None
    server_cpu_pct: float | None
    client_cpu_pct: float | None
    other_cpu_pct: float | None
    errors: int
    bad_replies: int
    first_error: str

    @property
    def bound(self) -> str:
        if self.server_cpu_pct is not None and self.server_cpu_pct >= 90:
            return "server"
        if self.client_cpu_pct is not None and self.client_cpu_pct >= 90:
            return "client"
        return "-"


def run_load(server: str, round_no: int, port: int, server_pid: int, args: argparse.Namespace, pin: Pinning,
             workdir: Path, children: list[Child]) -> RunResult:
    cmd = [*pin.prefix(pin.loadgen), sys.executable, str(BENCH / "loadgen.py"), "--target", f"{HOST}:{port}",
           "--server-pid", str(server_pid), "--channels", str(args.channels), "--concurrency", str(args.concurrency),
           "--warmup", str(args.warmup), "--duration", str(args.duration)]
    return run_loadgen(cmd, server, round_no, args, workdir, children)


def run_loadgen(cmd: list[str], server: str, round_no: int, args: argparse.Namespace, workdir: Path,
                children: list[Child]) -> RunResult:
    """Run one load generator process to its end and read its JSON report (shared with webhooks_bench)."""
    child = Child(f"loadgen-{server}-{round_no}", cmd, workdir)
    children.append(child)
    limit = args.warmup + args.duration + START_TIMEOUT
    try:
        rc = child.proc.wait(limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"load generator against {server} still running after {limit:.0f}s:\n"
                           f"{child.stderr_tail()}") from None
    finally:
        child.stop()
    if rc != 0:
        raise RuntimeError(f"load generator failed (rc={rc}) against {server}:\n{child.stderr_tail()}")
    r = json.loads(child.stdout())
    return RunResult(server, round_no, r["rps"], r["p50_ms"], r["p99_ms"], r["server_cpu_us_per_req"],
                     r["server_cpu_pct"], r["client_cpu_pct"], r["other_cpu_pct"], r["errors"], r["bad_replies"],
                     r["first_error"])


def start_servers(pin: Pinning, workdir: Path, children: list[Child]) -> dict[str, tuple[Child, int]]:
    prefix = pin.prefix(pin.server)
    lifetime = 900  # the bare servicer exits by itself after this many seconds whatever happens
    cmds = {
        "bare": [*prefix, sys.executable, str(BENCH / "bare_servicer.py"), "--host", HOST, "--port", "0",
                 "--lifetime", str(lifetime)],
        "hookrules": [*prefix, sys.executable, "-m", "hookrules", "serve", "--rules", str(RULES),
                      "--grpc", f"{HOST}:0", "--metrics", f"{HOST}:0", "--log-level", "warning"],
    }
    started = {name: Child(name, cmd, workdir) for name, cmd in cmds.items()}
    children.extend(started.values())
    return {name: (child, child.wait_listening()) for name, child in started.items()}


# -- rule runs in process -----------------------------------------------------------------------


@dataclass(frozen=True)
class RuleCase:
    label: str
    event: Event


def _client(client_id: str, username: str) -> Client:
    return Client(client_id, username, "secret", "127.0.0.1", 50000, 1883, "mqtt", "", False, False, "", "", NODE)


def _publish_event(client_id: str, username: str, topic: str, payload: bytes) -> Event:
    """As the adapter builds it: the sender from the message headers, the message in data."""
    headers = frozen_map({"username": username, "peerhost": "127.0.0.1", "protocol": "mqtt"})
    msg = Message("0006" + "0" * 28, client_id, topic, payload, 1, False, 1700000000000, headers, EMPTY, EMPTY, NODE)
    sender = Client(id=client_id, username=username, peerhost="127.0.0.1", protocol="mqtt", node=NODE)
    return Event("message.publish", "emqx", sender, frozen_map({"message": msg}))


def rule_cases() -> list[RuleCase]:
    cid, user = "bench-0001", "user1"
    client = _client(cid, user)

    def authz(topic: str) -> Event:
        return Event("client.authorize", "emqx", client,
                     frozen_map({"action": "publish", "topic": topic, "result": False}))

    return [
        RuleCase("client.authenticate", Event("client.authenticate", "emqx", client, frozen_map({"result": False}))),
        RuleCase(f"client.authorize publish devices/{cid}/x", authz(f"devices/{cid}/x")),
        RuleCase("client.authorize publish devices/bench-0002/x", authz("devices/bench-0002/x")),
        RuleCase("client.authorize publish sensors/1", authz("sensors/1")),
        RuleCase("message.publish t/demo", _publish_event(cid, user, "t/demo", b"21.5")),
        RuleCase("message.publish sensors/1", _publish_event(cid, user, "sensors/1", b"21.5")),
    ]


@dataclass(frozen=True)
class Timing:
    median_us: float  # per call, median of the repeats
    best_us: float  # per call, fastest repeat: the least disturbed by anything else on the machine
    number: int  # calls per repeat


def per_call(fn: Callable[[], object], budget: float, max_number: int, repeat: int) -> Timing:
    """timeit-style: `repeat` repeats of as many calls as fit `budget` seconds (at most `max_number`).

    Timed in process CPU time, not wall time: on a shared machine the wall clock also counts the
    time this process waited for a core.
    """
    timer = timeit.Timer(fn, timer=time.process_time)
    probe = 200
    per = timer.timeit(probe) / probe
    number = max(500, min(max_number, int(budget / per) if per > 0 else max_number))
    times = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
    return Timing(statistics.median(times), min(times), number)


@dataclass(frozen=True)
class RuleTiming:
    label: str
    decision: str
    run: Timing
    decide: Timing


def bench_rules(budget: float, max_number: int, repeat: int) -> list[RuleTiming]:
    ruleset, outcomes = scan(RULES, RuleSet())
    failed = [o for o in outcomes if o.errors]
    if failed:
        raise RuntimeError("bundled rules do not load: " + "; ".join(e.one_line() for o in failed for e in o.errors))
    engine = Engine(ruleset)
    limits = Limits()
    timings: list[RuleTiming] = []
    for case in rule_cases():
        source = ruleset.source(case.event.hook)  # the portable file, where the hook has none of its own
        rule = ruleset.get(source) if source is not None else None
        if rule is None:
            raise RuntimeError(f"no bundled rule answers {case.event.hook}")
        event = case.event
        decision = engine.decide(event, DECIDE_TIMEOUT)
        if decision.source != "rule":
            raise RuntimeError(f"{case.label}: the rule did not run ({decision.source})")
        run = per_call(lambda: rule.run(event, limits), budget, max_number, repeat)
        decide = per_call(lambda: engine.decide(event, DECIDE_TIMEOUT), budget, max_number, repeat)
        timings.append(RuleTiming(case.label, decision.decision.kind, run, decide))
    return timings


# -- report -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_rules(timings: list[RuleTiming], repeat: int) -> None:
    number = min(min(t.run.number, t.decide.number) for t in timings)
    print(f"\nRule runs in process, no gRPC: us per call, median (and best) of {repeat} repeats of "
          f">= {number} calls")
    width = max(len(t.label) for t in timings)
    print(f"  {'event':<{width}}  {'decision':<8}  {'rule.run us':>15}  {'engine.decide us':>16}")
    for t in timings:
        print(f"  {t.label:<{width}}  {t.decision:<8}  {t.run.median_us:>6.1f} ({t.run.best_us:>5.1f})  "
              f"{t.decide.median_us:>7.1f} ({t.decide.best_us:>5.1f})")
    run_best = statistics.median(t.run.best_us for t in timings)
    run_med = statistics.median(t.run.median_us for t in timings)
    decide_best = statistics.median(t.decide.best_us for t in timings)
    met = _goal(run_best <= RULE_RUN_GOAL_US)
    print(f"median rule run = {run_best:.1f} us over the events, each its best repeat (goal <= "
          f"{RULE_RUN_GOAL_US:.0f} us)  [{met}]; with each event's median repeat: {run_med:.1f} us")
    print(f"median engine.decide = {decide_best:.1f} us, best repeats (rule run + TOPICS filter + metrics)")


def print_run_header(args: argparse.Namespace, pin: Pinning) -> None:
    print(f"\ngRPC load: {args.channels} channels, {args.concurrency} calls in flight, EMQX session mix, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s measured per run; {pin.describe()}")
    print("  (CPU columns: % of one core during the window; 'other' = everything else on the machine)")
    print(f"  {'run':<4} {'server':<10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv us/req':>10} "
          f"{'srv CPU':>7} {'cli CPU':>7} {'other':>6} {'bound':>6} {'errors':>6}")


def print_run(n: int, r: RunResult) -> None:
    def pct(v: float | None) -> str:
        return _fmt(v, ".0f") + ("%" if v is not None else "")

    print(f"  {n:<4} {r.server:<10} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
          f"{_fmt(r.cpu_us_per_req, '.0f'):>10} {pct(r.server_cpu_pct):>7} {pct(r.client_cpu_pct):>7} "
          f"{pct(r.other_cpu_pct):>6} {r.bound:>6} {r.errors + r.bad_replies:>6}", flush=True)
    if r.first_error:
        print(f"       first error: {r.first_error[:200]}")


def print_summary(results: list[RunResult], rounds: int, goal: float = THROUGHPUT_GOAL, client_hint: str = "") -> None:
    """Medians and ratios over the rounds; shared with bench/webhooks_bench.py."""
    by = {(r.server, r.round): r for r in results}
    bare = [by[("bare", i)] for i in range(1, rounds + 1)]
    hr = [by[("hookrules", i)] for i in range(1, rounds + 1)]
    rps_ratio = statistics.median(h.rps / b.rps for h, b in zip(hr, bare))
    have_cpu = all(r.cpu_us_per_req for r in bare + hr)
    cpu_ratio = (statistics.median(h.cpu_us_per_req / b.cpu_us_per_req  # type: ignore[operator]
                                   for h, b in zip(hr, bare)) if have_cpu else None)

    def med(rs: list[RunResult], key: Callable[[RunResult], float | None]) -> float | None:
        values = [key(r) for r in rs]
        return None if any(v is None for v in values) else statistics.median(v for v in values if v is not None)

    print(f"\nMedian over {rounds} round(s)        {'bare':>9} {'hookrules':>9} {'hookrules/bare':>15}")
    rows: list[tuple[str, float | None, float | None, float | None, str]] = [
        ("req/s", med(bare, lambda r: r.rps), med(hr, lambda r: r.rps), rps_ratio, ".0f"),
        ("p50 latency ms", med(bare, lambda r: r.p50_ms), med(hr, lambda r: r.p50_ms), None, ".2f"),
        ("p99 latency ms", med(bare, lambda r: r.p99_ms), med(hr, lambda r: r.p99_ms), None, ".2f"),
        ("server CPU us/request", med(bare, lambda r: r.cpu_us_per_req), med(hr, lambda r: r.cpu_us_per_req),
         cpu_ratio, ".0f"),
    ]
    for label, b, h, ratio, spec in rows:
        print(f"  {label:<28} {_fmt(b, spec):>9} {_fmt(h, spec):>9} {_fmt(ratio, '.2f') + ('x' if ratio else ''):>15}")
    print(f"throughput ratio hookrules/bare = {rps_ratio:.2f}x (goal >= {goal}x)  "
          f"[{_goal(rps_ratio >= goal)}]")
    if cpu_ratio is not None:
        print(f"server CPU per request ratio hookrules/bare = {cpu_ratio:.2f}x "
              f"(server-bound throughput ratio = {1 / cpu_ratio:.2f}x)")
    else:
        print("server CPU per request: not available (no /proc)")
    if client_hint and any(r.bound == "client" for r in results):
        print("note: the load generator's core was saturated in some runs, so their req/s measures the client: "
              f"trust CPU per request{client_hint}")
    busiest = max((r.other_cpu_pct for r in results if r.other_cpu_pct is not None), default=None)
    if busiest is not None and busiest > NOISY_OTHER_PCT:
        print(f"note: other processes used up to {busiest:.0f}% of a core during the measured windows, so req/s "
              f"(and the throughput ratio) is noisy: trust CPU per request, or rerun on a quiet machine "
              f"with more --rounds")


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="hookrules vs a bare ExHook servicer: throughput, latency, CPU per "
                                            "request over gRPC, and microseconds per rule run in process.")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 5, --quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each measured window (default 1, --quick 0.5)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    p.add_argument("--channels", type=int, default=8, help="gRPC channels, EMQX's pool_size (default 8)")
    p.add_argument("--rounds", type=int, help="bare+hookrules run pairs (default 6, --quick 1)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs with taskset")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 round, short rule timings")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 6)
    for name in ("duration", "concurrency", "channels", "rounds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    return args


def dist_version(dist: str) -> str:
    """An installed distribution's version, for the header of a benchmark's report."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _versions() -> str:
    v = dist_version
    return (f"python {platform.python_version()}, grpcio {v('grpcio')}, protobuf {v('protobuf')}, "
            f"asteval {v('asteval')}, {os.cpu_count()} CPUs")


def interrupt(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop as on Ctrl+C, so every child process is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop the children on SIGTERM too
    print(f"hookrules ExHook benchmark ({_versions()})")

    pin = choose_pinning(args.pin)
    children: list[Child] = []
    results: list[RunResult] = []
    try:
        repeat = 3 if args.quick else 9
        print_rules(bench_rules(budget=0.05 if args.quick else 0.3, max_number=20_000, repeat=repeat), repeat)
        with tempfile.TemporaryDirectory(prefix="hookrules-bench-") as tmp:
            try:
                servers = start_servers(pin, Path(tmp), children)
                print_run_header(args, pin)
                for round_no in range(1, args.rounds + 1):
                    for name in ("bare", "hookrules"):
                        child, port = servers[name]
                        if child.proc.poll() is not None:
                            raise RuntimeError(f"{name} server died (rc={child.proc.returncode}):\n"
                                               f"{child.stderr_tail()}")
                        result = run_load(name, round_no, port, child.pid, args, pin, Path(tmp), children)
                        results.append(result)
                        print_run(len(results), result)
            finally:
                stop_all(children)
    except KeyboardInterrupt:
        print("\ninterrupted: all child processes stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    print_summary(results, args.rounds)
    failures = sum(r.errors + r.bad_replies for r in results)
    if failures:
        print(f"\n{failures} failed or wrong replies: the figures above are not trustworthy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
