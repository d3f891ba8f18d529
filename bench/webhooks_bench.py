"""How much does hookrules cost over a bare HTTP auth endpoint? One command, one run, all measured.

    python bench/webhooks_bench.py            # about a minute and a half: 6 rounds of 5 s runs
    python bench/webhooks_bench.py --quick    # smoke test: 1 round of 2 s runs
    python bench/webhooks_bench.py --client python   # without wrk (the default takes wrk when installed)
    python bench/webhooks_bench.py --broker rabbitmq # RabbitMQ's auth checks instead of VerneMQ's webhooks

--broker vernemq (the default) measures VerneMQ's webhooks, --broker rabbitmq RabbitMQ's
rabbitmq_auth_backend_http checks (POSTed forms to /rabbitmq/{user,vhost,resource,topic}, answered
`allow`/`deny` as text/plain) on the same --http port. Everything below holds for both; the requests
and the check of each reply are the broker's Mix in bench/webhooks_loadgen.py.

Three servers, all for the whole benchmark in their own processes:
* bare: bench/bare_webhooks.py, an aiohttp endpoint on the same stack as hookrules (the low-level
  web.Server, ServerRunner, SockSite on its own socket) answering every POST with the same
  `{"result": "ok"}` (with --broker rabbitmq: bare_webhooks.py --rabbitmq, `allow` as text/plain to
  every request): the floor;
* parse: the same with --parse, which also parses every body with json.loads (rabbitmq: the form with
  urllib.parse.parse_qsl), the least any server that reads its requests does: the floor of a real
  endpoint;
* hookrules: `python -m hookrules serve --rules rules --grpc off --http 127.0.0.1:0 --metrics off`,
  as an operator runs it for VerneMQ or RabbitMQ (with no metrics endpoint, to leave only the HTTP
  front-ends running), with the bundled rules/ (authenticate.star, authorize.star, message.publish.star).

They are measured in alternation to spread machine noise evenly (bare, parse, hookrules, bare, parse,
hookrules, ... for --rounds rounds). Before the first round each server is sent one request of every kind and
its replies are shown, and hookrules is sent the Mix's probe, a connect as "baduser", which it must refuse
(so its rules really run: every request of the load is one the bundled rules allow, answered like the floors).
Each run loads one server with the broker's requests of bench/webhooks_loadgen.py (vernemq: auth_on_register,
auth_on_subscribe with 2 topics, auth_on_publish to t/demo and to sensors/1, base64 payloads; rabbitmq: the
8 checks RabbitMQ 3.10 makes for a client that connects, subscribes and publishes), cycled over keep-alive
connections (VerneMQ keeps up to 100 per endpoint), from a client process:
* wrk (--client wrk; `apt-get install wrk`): one thread (-t 1, so the client stays on one core),
  --connections connections, driven by a Lua script generated from the same request bytes, whose
  `response` hook checks every reply as the Mix says (vernemq: HTTP 200 and a result of "ok";
  rabbitmq: HTTP 200 and the body exactly `allow`) and whose `done` hook reports the
  counts and the p50/p99 latency. wrk has no warm-up of its own: a first wrk run of --warmup seconds
  is the warm-up (its failures count too), a second of --duration seconds is measured. wrk takes whole
  seconds, so both are rounded up for it;
* Python (--client python): bench/webhooks_loadgen.py, an aiohttp ClientSession whose TCPConnector
  keeps at most --connections connections, with --concurrency requests in flight, warm-up then
  measured window in one process; it checks every reply the same way.
--client auto (the default) takes wrk when it is installed, else Python.

Reported per run: req/s, p50/p99 latency, the server's CPU time per request (utime+stime of its
process from /proc/<pid>/stat, read at both ends of the window), and how busy the server, the client
and everything else on the machine ("other", from /proc/stat) were; then the medians and the ratios
hookrules/bare (goal: throughput ratio >= 0.8x) and hookrules/parse.

Why CPU per request: a Python HTTP client costs about as much CPU per request as a Python HTTP server,
so with --client python the load generator saturates its own core before the server does; then req/s
measures the client and both servers look alike. Server CPU time per request does not depend on who
the bottleneck is, so its ratio is the fair comparison (1 / that ratio is the throughput ratio to
expect when the server is the bottleneck, which wrk, in C, makes it). The "bound" column says which
side's core was saturated; a large "other" means another workload shared the CPUs and req/s of that
run is not to be trusted. With taskset available (and at least 2 CPUs) the servers are pinned to one
CPU and the load generator to another, so they do not steal each other's core (--no-pin to disable).

Everything listens on 127.0.0.1 only. Every child process is stopped in a `finally` (SIGTERM, then
SIGKILL), also on Ctrl+C; on Linux the children also get SIGTERM if this process dies (PR_SET_PDEATHSIG),
and the bare server exits by itself after a lifetime computed from the arguments.
Exit status: 0 when every run completed without failed or wrong replies, 1 otherwise (the goal is
reported, not enforced), 2 for bad arguments (or --client wrk without wrk), 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exhook_bench import (Child, Pinning, RunResult, choose_pinning, dist_version, interrupt, print_run, print_summary,
                          run_loadgen, stop_all)
from loadgen import cpu_seconds, machine_busy_seconds
from webhooks_loadgen import MIXES, REQUEST_TIMEOUT, Mix, Request

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RULES = ROOT / "rules"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # a cold start imports aiohttp (and hookrules its rules, grpc and protos)
#: `hookrules: VerneMQ webhooks and the HTTP auth of RabbitMQ and EMQX on http://...`, `bare: VerneMQ webhooks (constant
#: replies) on ...` and `bare: RabbitMQ HTTP auth (constant replies) on ...`
LISTEN = re.compile(r"(?:VerneMQ webhooks|RabbitMQ)\b.*\bon http://(?P<host>[\d.]+):(?P<port>\d+)/\s*$", re.MULTILINE)

THROUGHPUT_GOAL = 0.8
#: above this much CPU (% of one core) used by other processes during a window, req/s is called noisy
NOISY_OTHER_PCT = 25.0
SERVERS = ("bare", "parse", "hookrules")


# -- servers ------------------------------------------------------------------------------------


def wait_port(child: Child, timeout: float = START_TIMEOUT) -> int:
    """The port from the server's `... VerneMQ webhooks ... on http://127.0.0.1:PORT/` (or RabbitMQ) line."""
    return child.wait_listening(LISTEN, timeout)


def start_servers(args: argparse.Namespace, pin: Pinning, workdir: Path,
                  children: list[Child]) -> dict[str, tuple[Child, int]]:
    prefix = pin.prefix(pin.server)
    # the bare server exits by itself after this many seconds whatever happens: the whole run, with room
    per_run = args.warmup + args.duration + 2 + START_TIMEOUT
    lifetime = max(900, math.ceil(START_TIMEOUT + 2 * args.rounds * per_run))
    bare = [*prefix, sys.executable, str(BENCH / "bare_webhooks.py"), "--host", HOST, "--port", "0",
            "--lifetime", str(lifetime), *(["--rabbitmq"] if args.broker == "rabbitmq" else [])]
    cmds = {
        "bare": bare,
        "parse": [*bare, "--parse"],
        "hookrules": [*prefix, sys.executable, "-m", "hookrules", "serve", "--rules", str(RULES),
                      "--grpc", "off", "--http", f"{HOST}:0", "--metrics", "off", "--log-level", "warning"],
    }
    started = {name: Child(name, cmd, workdir) for name, cmd in cmds.items()}
    children.extend(started.values())
    return {name: (child, wait_port(child)) for name, child in started.items()}


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    cache: str

    def describe(self) -> str:
        return f"{self.status} {self.body}" + (f" (cache-control: {self.cache})" if self.cache else "")


def ask(port: int, request: Request) -> Reply:
    """One request, as the load sends it, from this process."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("POST", request.path, body=request.body, headers=request.headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read().decode(errors="replace"), resp.getheader("cache-control", ""))
    finally:
        conn.close()


def print_replies(servers: dict[str, tuple[Child, int]], mix: Mix) -> int:
    """One request of every kind to each server, and the probe to hookrules; returns how many replies
    were wrong (a request of the load not answered as mix.reply_ok wants, or the probe not refused)."""
    print(f"\nReplies to one request of each kind (the load sends these, cycled; good: {mix.good_reply}):")
    width = max(len(r.label) for r in (*mix.requests, mix.probe))
    wrong = 0
    for request in mix.requests:
        for name in SERVERS:
            reply = ask(servers[name][1], request)
            ok = mix.reply_ok(reply.status, reply.body.encode())
            wrong += not ok
            label = request.label if name == SERVERS[0] else ""
            print(f"  {label:<{width}}  {name:<9}  {reply.describe()[:150]}" + ("" if ok else "   <- WRONG"))
    # the load is all allowed, as the floors answer: this shows hookrules' answers come from its rules
    reply = ask(servers["hookrules"][1], mix.probe)
    refused = reply.status == 200 and not mix.reply_ok(reply.status, reply.body.encode())
    wrong += not refused
    print(f"  {mix.probe.label:<{width}}  {'hookrules':<9}  {reply.describe()[:150]}"
          + ("   (refused by the rules, as it must be; not in the load)" if refused else "   <- WRONG: not refused"))
    return wrong


# -- load: wrk ----------------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    """A Lua (LuaJIT) string literal for ASCII text: JSON's escapes for it are \\" and \\\\, which Lua shares."""
    literal = json.dumps(text, ensure_ascii=True)
    if "\\u" in literal or "\\n" in literal:  # never for the bodies (JSON, forms) of webhooks_loadgen
        raise ValueError(f"cannot put {text[:40]!r} in the wrk script")
    return literal


WRK_SCRIPT = """\
-- Generated by bench/webhooks_bench.py: %(broker)s requests cycled over every connection of the
-- thread, every reply checked (%(good)s), counts and latency printed at the end.
local cycle = {
%(requests)s
}
local threads = {}
local reqs = {}
local n = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for i, r in ipairs(cycle) do
    reqs[i] = wrk.format("POST", r[1], r[2], r[3])
  end
  bad = 0
  first_error = ""
end

function request()
  n = n %% #reqs + 1
  return reqs[n]
end

function response(status, headers, body)
  if not (%(reply_ok)s) then
    bad = bad + 1
    if first_error == "" then
      first_error = "HTTP " .. status .. " " .. string.sub(body, 1, 200)
    end
  end
end

function done(summary, latency, requests)
  local total_bad, first = 0, ""
  for _, t in ipairs(threads) do
    total_bad = total_bad + t:get("bad")
    if first == "" then first = t:get("first_error") end
  end
  local e = summary.errors
  io.write(string.format('WRK-RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%.1f, "p99_us": %%.1f, '
    .. '"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, "status": %%d, "bad_replies": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, e.status, total_bad))
  io.write("WRK-FIRST-ERROR " .. (string.gsub(first, "%%c", " ")) .. "\\n")
end
"""


def _lua_request(r: Request) -> str:
    """{path, {header = value, ...}, body} for the script's cycle."""
    headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in r.headers.items())
    return f"  {{{_lua_string(r.path)}, {{{headers}}}, {_lua_string(r.body.decode('ascii'))}}},  -- {r.label}"


def write_wrk_script(path: Path, mix: Mix) -> Path:
    # %-formatting inserts the values as they are: the check's Lua pattern escapes (%s) stay single
    path.write_text(WRK_SCRIPT % {"broker": mix.broker, "good": mix.good_reply, "reply_ok": mix.lua_reply_ok,
                                  "requests": "\n".join(_lua_request(r) for r in mix.requests)})
    return path


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "wrk ?"
    return out.split("Copyright")[0].strip() or "wrk ?"


def whole_seconds(value: float) -> int:
    return math.ceil(value)


@dataclass(frozen=True)
class WrkOutput:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    bad_replies: int
    first_error: str


def _exited(child: Child, timeout: float) -> bool:
    """Wait for the child to exit without reaping it, so its /proc/<pid>/stat can still be read."""
    if not hasattr(os, "waitid"):
        try:
            child.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(0.02)
    return False


def _wrk(name: str, seconds: int, url: str, script: Path, args: argparse.Namespace, pin: Pinning, workdir: Path,
         children: list[Child], on_exit: Callable[[Child], None] = lambda child: None) -> WrkOutput:
    cmd = [*pin.prefix(pin.loadgen), "wrk", "-t", str(args.threads), "-c", str(args.connections),
           "-d", f"{seconds}s", "--timeout", f"{REQUEST_TIMEOUT:g}s", "--latency", "-s", str(script), url]
    child = Child(name, cmd, workdir)
    children.append(child)
    limit = seconds + START_TIMEOUT
    try:
        if not _exited(child, limit):
            raise RuntimeError(f"wrk still running after {limit:.0f}s:\n{child.stderr_tail()}")
        on_exit(child)  # the exited (not yet reaped) process: its CPU time is still in /proc
        rc = child.proc.wait(5.0)
    finally:
        child.stop()
    out = child.stdout()
    result = re.search(r"^WRK-RESULT (.*)$", out, re.MULTILINE)
    if rc != 0 or result is None:
        raise RuntimeError(f"wrk failed (rc={rc}):\n{out[-1500:]}\n{child.stderr_tail()}")
    r = json.loads(result[1])
    first = re.search(r"^WRK-FIRST-ERROR ?(.*)$", out, re.MULTILINE)
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    first_error = first[1].strip() if first else ""
    if errors and not first_error:
        first_error = (f"socket errors: connect {r['connect']}, read {r['read']}, write {r['write']}, "
                       f"timeout {r['timeout']}")
    return WrkOutput(r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3, errors,
                     r["bad_replies"], first_error)


def run_wrk(server: str, round_no: int, port: int, server_pid: int, script: Path, args: argparse.Namespace,
            pin: Pinning, workdir: Path, children: list[Child]) -> RunResult:
    url = f"http://{HOST}:{port}/"
    warm_errors, warm_first = 0, ""
    if args.warmup > 0:
        warm = _wrk(f"wrk-warmup-{server}-{round_no}", whole_seconds(args.warmup), url, script, args, pin, workdir,
                    children)
        warm_errors, warm_first = warm.errors + warm.bad_replies, warm.first_error
    client_cpu: list[float | None] = [None]

    def read_client(child: Child) -> None:
        client_cpu[0] = cpu_seconds(child.pid)

    # the window: from just before wrk starts to just after it exits (wrk's own start and stop are ms)
    busy0, server_cpu0 = machine_busy_seconds(), cpu_seconds(server_pid)
    t0 = time.perf_counter()
    out = _wrk(f"wrk-{server}-{round_no}", whole_seconds(args.duration), url, script, args, pin, workdir, children,
               on_exit=lambda child: read_client(child))
    # read_client ran at wrk's exit; the server and the machine are read once it is reaped
    t1 = time.perf_counter()
    server_cpu1, busy1 = cpu_seconds(server_pid), machine_busy_seconds()
    window = t1 - t0
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    busy = None if busy0 is None or busy1 is None else busy1 - busy0
    other = None
    if busy is not None and server_cpu is not None and client_cpu[0] is not None:
        other = max(busy - server_cpu - client_cpu[0], 0.0)

    def pct(v: float | None) -> float | None:
        return None if v is None else v / window * 100

    return RunResult(server, round_no, out.requests / out.duration_s, out.p50_ms, out.p99_ms,
                     None if server_cpu is None or not out.requests else server_cpu / out.requests * 1e6,
                     pct(server_cpu), pct(client_cpu[0]), pct(other), out.errors + warm_errors, out.bad_replies,
                     out.first_error or (f"(warm-up) {warm_first}" if warm_first else ""))


# -- load: Python -------------------------------------------------------------------------------


def run_python(server: str, round_no: int, port: int, server_pid: int, args: argparse.Namespace, pin: Pinning,
               workdir: Path, children: list[Child]) -> RunResult:
    cmd = [*pin.prefix(pin.loadgen), sys.executable, str(BENCH / "webhooks_loadgen.py"), "--url",
           f"http://{HOST}:{port}/", "--broker", args.broker, "--server-pid", str(server_pid),
           "--connections", str(args.connections),
           "--concurrency", str(args.concurrency), "--warmup", str(args.warmup), "--duration", str(args.duration)]
    return run_loadgen(cmd, server, round_no, args, workdir, children)


# -- report -------------------------------------------------------------------------------------


def print_run_header(args: argparse.Namespace, pin: Pinning) -> None:
    mix = ", ".join(r.label for r in MIXES[args.broker].requests)
    if args.client == "wrk":
        client = f"wrk, {args.threads} thread(s), {args.connections} keep-alive connections"
        warmup, duration = whole_seconds(args.warmup), whole_seconds(args.duration)
        if (warmup, duration) != (args.warmup, args.duration):
            client += " (wrk takes whole seconds: times rounded up)"
    else:
        client = (f"Python aiohttp client, {args.connections} keep-alive connections, "
                  f"{args.concurrency} requests in flight")
        warmup, duration = args.warmup, args.duration
    what = "RabbitMQ HTTP auth" if args.broker == "rabbitmq" else "Webhook"
    print(f"\n{what} load: {client}; cycling {mix}; {warmup:g} s warm-up + {duration:g} s measured per run; "
          f"{pin.describe()}")
    print("  (CPU columns: % of one core during the window; 'other' = everything else on the machine)")
    print(f"  {'run':<4} {'server':<10} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'srv us/req':>10} "
          f"{'srv CPU':>7} {'cli CPU':>7} {'other':>6} {'bound':>6} {'errors':>6}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="hookrules vs a bare aiohttp endpoint answering VerneMQ webhooks or "
                                            "RabbitMQ's HTTP auth checks: throughput, latency and CPU per request.")
    p.add_argument("--broker", choices=sorted(MIXES), default="vernemq",
                   help="whose requests: VerneMQ's webhooks or RabbitMQ's auth checks (default vernemq)")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="load generator: wrk, the Python one, or wrk when installed (default auto)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 5, --quick 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each measured window (default 1)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the client on one core)")
    p.add_argument("--concurrency", type=int, help="Python client: requests in flight (default: --connections)")
    p.add_argument("--rounds", type=int, help="bare, parse, hookrules run triples (default 6, --quick 1)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs with taskset")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 round")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 6)
    args.concurrency = args.concurrency if args.concurrency is not None else args.connections
    for name in ("duration", "connections", "threads", "concurrency", "rounds"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if args.threads > args.connections:
        p.error("--threads must not be more than --connections (each wrk thread needs a connection)")
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    elif args.client == "wrk" and shutil.which("wrk") is None:
        p.error("--client wrk: wrk is not installed (apt-get install wrk), or use --client python")
    return args


def print_parse_floor(results: list[RunResult], rounds: int, broker: str) -> None:
    """hookrules against the endpoint that also parses its requests: the price of event, rule and reply."""
    by = {(r.server, r.round): r for r in results}
    floor = statistics.median(by[("parse", i)].rps / by[("bare", i)].rps for i in range(1, rounds + 1))
    print(f"the parsing endpoint alone: throughput parse/bare = {floor:.2f}x")
    pairs = [(by[("parse", i)], by[("hookrules", i)]) for i in range(1, rounds + 1)]
    rps = statistics.median(h.rps / p.rps for p, h in pairs)
    parser = "parse_qsl" if broker == "rabbitmq" else "json.loads"
    line = f"against the parsing endpoint (bare + {parser}): throughput hookrules/parse = {rps:.2f}x"
    cpus = [(p.cpu_us_per_req, h.cpu_us_per_req) for p, h in pairs]
    if all(p and h for p, h in cpus):
        cpu = statistics.median(h / p for p, h in cpus if p and h)
        parse_cpu = statistics.median(p for p, _ in cpus if p)
        line += f", server CPU per request {cpu:.2f}x (parse: {parse_cpu:.0f} us/request)"
    print(line)


def _versions(client: str) -> str:
    v = dist_version
    load = wrk_version() if client == "wrk" else "Python load generator"
    return f"python {platform.python_version()}, aiohttp {v('aiohttp')}, {load}, {os.cpu_count()} CPUs"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop the children on SIGTERM too
    mix = MIXES[args.broker]
    what = "RabbitMQ HTTP auth" if args.broker == "rabbitmq" else "VerneMQ webhooks"
    print(f"hookrules {what} benchmark ({_versions(args.client)})")

    pin = choose_pinning(args.pin)
    children: list[Child] = []
    results: list[RunResult] = []
    wrong = 0
    try:
        with tempfile.TemporaryDirectory(prefix="hookrules-webhooks-bench-") as tmp:
            workdir = Path(tmp)
            script = write_wrk_script(workdir / f"{args.broker}.lua", mix) if args.client == "wrk" else None
            try:
                servers = start_servers(args, pin, workdir, children)
                wrong = print_replies(servers, mix)
                print_run_header(args, pin)
                for round_no in range(1, args.rounds + 1):
                    for name in SERVERS:
                        child, port = servers[name]
                        if child.proc.poll() is not None:
                            raise RuntimeError(f"{name} server died (rc={child.proc.returncode}):\n"
                                               f"{child.stderr_tail()}")
                        if script is not None:
                            result = run_wrk(name, round_no, port, child.pid, script, args, pin, workdir, children)
                        else:
                            result = run_python(name, round_no, port, child.pid, args, pin, workdir, children)
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
    print_summary(results, args.rounds, THROUGHPUT_GOAL, " (or use --client wrk)")
    print_parse_floor(results, args.rounds, args.broker)
    failures = wrong + sum(r.errors + r.bad_replies for r in results)
    if failures:
        print(f"\n{failures} failed or wrong replies: the figures above are not trustworthy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
