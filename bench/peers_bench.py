"""hookrules against what users would write instead, the bare floors, and itself at --workers 1, 2 and auto.

    python bench/peers_bench.py                      # 3 rounds of 5 s windows, every section (~8 min)
    python bench/peers_bench.py --quick              # smoke test: 1 round of 2 s windows (~2 min)
    python bench/peers_bench.py --sections workers   # one or more of exhook,webhooks,workers

Needs h2load (apt-get install nghttp2-client) and wrk (apt-get install wrk) for the C load, and the `bench`
extra (pip install -e '.[bench]': FastAPI and uvicorn) for the FastAPI peer; a section whose tool is missing
falls back (h2load: the Python gRPC load generator) or leaves that server out, and says so.

Sections (issue 11, "Benchmarks against the peers"):

exhook: three gRPC servers, each its own process, pinned to one CPU (the load to the other):
  bare       bench/bare_servicer.py, constant replies: the floor;
  peer       bench/peer_servicer.py, the seed's way: a grpc.aio servicer from generated stubs with the
             bundled rules coded in Python: what a user writes instead;
  hookrules  `python -m hookrules serve --rules rules --grpc ... --http off --metrics off`.
  Before any load, one request of every kind (the session's 18 calls, plus a banned user, another client's
  device topic, a $SYS publish, an empty sensor reading, a topic outside TOPICS, OnProviderLoaded) goes to
  peer and hookrules, and their replies must be equal (protobuf equality): the peer answers what the
  rules answer. Two loads, over EMQX's 8 connections (pool_size):
  * h2load, an authenticate storm (a reconnect storm after a broker restart): OnClientAuthenticate,
    pre-encoded and length-prefixed as gRPC frames it, POSTed over 8 HTTP/2 connections x --streams
    streams; then (--h2load) the same for OnClientAuthorize (publish sensors/1) and OnMessagePublish (t/demo,
    whose payload the rule rewrites). h2load cannot send a mix (one body per run) nor read gRPC trailers
    (grpc-status), so the replies are checked by their size: every reply must carry exactly the bytes of
    the rules' answer (h2load's "data" count = replies x its frame: 9 bytes for an allow), a gRPC error
    has none;
  * a session's calls from bench/loadgen.py, a Python client (every reply checked): by default (--calls
    advertised) the 6 calls EMQX makes per MQTT session to a provider that advertised only the bundled
    rules' hooks (authenticate, authorize x3, publish x2: every one a rule's decision); --calls all sends
    all 18 calls of a session, notifications too. On 2 CPUs this client saturates before the server, so
    its CPU per call is the figure, not its req/s.
webhooks: five HTTP servers, each its own process, pinned as above: bare and parse
  (bench/bare_webhooks.py, constant replies, without and with json.loads), aiohttp (bench/peer_aiohttp.py,
  web.Application with a route) and fastapi (bench/peer_fastapi.py, FastAPI on uvicorn), both with the rules
  in Python, and hookrules (--grpc off). Replies checked as above (the VerneMQ mix, the banned user, a
  subscription with another client's device topic, a $SYS publish: peers and hookrules equal in status and
  JSON). Load: wrk, one thread, --http-connections keep-alive connections, VerneMQ's 4 webhooks cycled
  (bench/webhooks_bench.py's Lua script, every reply checked).
workers: hookrules (gRPC) at `--workers 1`, `2` and `auto`, on a port picked here (all workers share it),
  not pinned (the workers spread over the CPUs; --workers-pin puts every worker count on one CPU and the
  load on the other, so 2 workers are compared with 1 on the same core: "loses nothing"). For each:
  (a) saturated throughput under the h2load authenticate storm; (b) the CPU per call of the whole process
  tree (parent, workers, their watchdogs: /proc/<pid>/stat summed over the tree) under a steady --rate
  calls/s (default 2,000) of the Python client's calls over 8 channels, below saturation. Goals: 2 workers
  within 1.15x of 1 worker's CPU per call, saturated throughput >= 0.95x. The floors beside them: 1 and 2
  bench/bare_servicer.py processes sharing one port (--processes 2, SO_REUSEPORT). A hookrules that refuses
  --workers (before the flag exists) is run without it as the 1-worker case, and 2 and auto are reported
  as skipped.

Each window reads the server's CPU time (its whole process tree) at both ends, and the machine's
(/proc/stat): "other" is what everything else used meanwhile; above 25% of a core the req/s of that window
is noise from other work, and CPU per call is the figure to trust. Runs alternate between the servers within
a round; the summary takes medians over rounds (ratios: the median of the per-round ratios). At the end one
comparison table is printed in Markdown (to paste into bench/README.md).

Everything listens on 127.0.0.1. Every child is stopped in a `finally` (SIGTERM, then SIGKILL; they also get
SIGTERM if this process dies). Exit status: 0 when every check and run had no failed or wrong reply, 1
otherwise (goals are reported, not enforced), 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from exhook_bench import Child, Pinning, choose_pinning, dist_version, interrupt, stop_all
from hookrules.adapters import exhook_proto
from loadgen import CALL_TIMEOUT, NODE, cpu_seconds, machine_busy_seconds, session_calls, tree_cpu_seconds, tree_pids
from webhooks_bench import _exited, _wrk, ask, wait_port, write_wrk_script
from webhooks_loadgen import CLIENT_ID, MIXES, USERNAME, Request, _webhook

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RULES = ROOT / "rules"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
PATH = "/emqx.exhook.v3.HookProvider/"
NOISY_OTHER_PCT = 25.0

EXHOOK_GOAL = 0.9  # hookrules at one worker / the hand-written servicer
WEBHOOK_GOAL = 1.0  # hookrules at one worker / the hand-written aiohttp endpoint
WORKERS_CPU_GOAL = 1.15  # CPU per call, 2 workers / 1 worker, at a steady rate
WORKERS_RPS_GOAL = 0.95  # saturated throughput, 2 workers / 1 worker
SECTIONS = ("exhook", "webhooks", "workers")


# -- measured windows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    section: str
    load: str
    server: str
    round: int
    rps: float
    lat_ms: float  # p50 (h2load: mean)
    cpu_us: float | None  # server process tree CPU per call
    srv_pct: float | None
    cli_pct: float | None
    other_pct: float | None
    failures: int
    first_error: str = ""


@dataclass
class Window:
    """CPU readings around one load: the server's process tree, the client's, the machine's."""
    server_pid: int
    t0: float = 0.0
    busy0: float | None = None
    srv0: float | None = None

    def open(self) -> None:
        self.busy0, self.srv0 = machine_busy_seconds(), tree_cpu_seconds(self.server_pid)
        self.t0 = time.perf_counter()

    def close(self, client_cpu: float | None, calls: int) -> tuple[float | None, ...]:
        """(CPU us per call, server %, client %, other %) of one core, over the window."""
        window = time.perf_counter() - self.t0
        srv1, busy1 = tree_cpu_seconds(self.server_pid), machine_busy_seconds()
        srv = None if srv1 is None or self.srv0 is None else srv1 - self.srv0
        busy = None if busy1 is None or self.busy0 is None else busy1 - self.busy0
        other = None if busy is None or srv is None or client_cpu is None else max(busy - srv - client_cpu, 0.0)

        def pct(v: float | None) -> float | None:
            return None if v is None else v / window * 100

        return (None if srv is None or not calls else srv / calls * 1e6, pct(srv), pct(client_cpu), pct(other))


def run_child_to_end(name: str, cmd: list[str], limit: float, workdir: Path,
                     children: list[Child]) -> tuple[Child, float | None]:
    """Run a load generator to its end; its CPU time is read once it has exited, before it is reaped."""
    child = Child(name, cmd, workdir)
    children.append(child)
    try:
        if not _exited(child, limit):
            raise RuntimeError(f"{name} still running after {limit:.0f}s:\n{child.stderr_tail()}")
        client_cpu = cpu_seconds(child.pid)
        rc = child.proc.wait(5.0)
    finally:
        child.stop()
    if rc != 0:
        raise RuntimeError(f"{name} failed (rc={rc}):\n{child.stdout()[-1500:]}\n{child.stderr_tail()}")
    return child, client_cpu


# -- h2load: gRPC frames from C -----------------------------------------------------------------


@dataclass(frozen=True)
class H2Body:
    load: str  # the Run's load name
    title: str
    rpc: str
    path: Path  # the request, as one gRPC frame (flag, length, protobuf)
    reply_bytes: int  # bytes of DATA per good reply (its frame)
    floor_bytes: int  # the same from the bare servicer, which echoes a message unchanged


#: kind -> (load name, title, RPC, topic of the session call to send)
H2_KINDS = {
    "authenticate": ("h2 authn", "h2load authenticate storm", "OnClientAuthenticate", ""),
    "authorize": ("h2 authz", "h2load authorize publish sensors/1", "OnClientAuthorize", "sensors/1"),
    "publish": ("h2 pub", "h2load message.publish t/demo (rewritten)", "OnMessagePublish", "t/demo"),
}


def _topic(request: Any) -> str:
    """The topic a request is about: its own (authorize), or its message's (publish)."""
    return str(request.message.topic if hasattr(request, "message") else getattr(request, "topic", ""))


def h2load_bodies(workdir: Path, pb: Any) -> dict[str, H2Body]:
    """Each kind's request as a length-prefixed gRPC message, and the size of the reply the rules give it:
    an allow, or for t/demo the message with the payload message.publish.star writes."""
    calls = session_calls(pb, "bench-0001", "user1")
    vr = pb.ValuedResponse
    allow = vr(type=vr.STOP_AND_RETURN, bool_result=True)
    out = {}
    for kind, (load, title, rpc, topic) in H2_KINDS.items():
        call = next(c for c in calls if c.rpc == rpc and (not topic or _topic(c.request) == topic))
        reply = floor = allow
        if rpc == "OnMessagePublish":
            floor = vr(type=vr.STOP_AND_RETURN, message=call.request.message)
            msg = pb.Message()
            msg.CopyFrom(call.request.message)
            msg.payload = b"hardcode payload by hookrules :)"
            reply = vr(type=vr.STOP_AND_RETURN, message=msg)
        data = call.request.SerializeToString()
        path = workdir / f"{kind}.grpc"
        path.write_bytes(b"\x00" + struct.pack(">I", len(data)) + data)
        out[kind] = H2Body(load, title, rpc, path, 5 + reply.ByteSize(), 5 + floor.ByteSize())
    return out


def ms(seconds: float) -> str:
    """A duration for h2load's -D, which takes whole seconds or a unit ("1.5" is refused)."""
    return f"{seconds * 1000:.0f}ms"


def run_h2load(section: str, server: str, round_no: int, port: int, pid: int, body: H2Body, args: argparse.Namespace,
               pin: Pinning, workdir: Path, children: list[Child]) -> Run:
    url = f"http://{HOST}:{port}{PATH}{body.rpc}"
    base = [*pin.prefix(pin.loadgen), "h2load", "-c", str(args.channels), "-m", str(args.streams), "-t", "1",
            "-d", str(body.path), "-H", "content-type: application/grpc", "-H", "te: trailers",
            "-H", f"grpc-timeout: {int(CALL_TIMEOUT)}S"]
    if args.warmup > 0:  # a run of its own: the window below is the measured run alone
        run_child_to_end(f"h2load-warmup-{server}-{round_no}", [*base, "-D", ms(args.warmup), url],
                         args.warmup + START_TIMEOUT, workdir, children)
    window = Window(pid)
    window.open()
    child, client_cpu = run_child_to_end(f"h2load-{server}-{round_no}", [*base, "-D", ms(args.duration), url],
                                         args.duration + START_TIMEOUT, workdir, children)
    out = child.stdout()
    finished = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", out)
    data = re.search(r"\((\d+)\) data", out)
    lat = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (finished and reqs and data and lat):
        raise RuntimeError(f"cannot read h2load's output:\n{out[-1500:]}")
    done, succeeded = int(reqs[3]), int(reqs[4])
    failures = done - succeeded + int(reqs[5]) + int(reqs[6]) + int(reqs[7])
    size = body.floor_bytes if server.startswith("bare") else body.reply_bytes
    expected = succeeded * size
    first = ""
    if int(data[1]) != expected:  # a gRPC error (status 200, grpc-status in the trailers) has no data
        failures += max(1, abs(expected - int(data[1])) // size)
        first = f"h2load: {data[1]} bytes of replies, {expected} expected ({size} per reply)"
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[lat[2]]
    cpu, srv, cli, other = window.close(client_cpu, succeeded)
    return Run(section, body.load, server, round_no, float(finished[1]), float(lat[1]) * scale, cpu, srv, cli, other,
               failures, first)


# -- the Python gRPC load generator -------------------------------------------------------------


def run_loadgen(section: str, load: str, server: str, round_no: int, port: int, pid: int, args: argparse.Namespace,
                pin: Pinning, workdir: Path, children: list[Child], rate: float = 0.0) -> Run:
    cmd = [*pin.prefix(pin.loadgen), sys.executable, str(BENCH / "loadgen.py"), "--target", f"{HOST}:{port}",
           "--server-pid", str(pid), "--tree", "--channels", str(args.channels),
           "--concurrency", str(args.concurrency), "--warmup", str(args.warmup), "--duration", str(args.duration),
           "--rate", str(rate), "--calls", args.calls]
    child, _ = run_child_to_end(f"loadgen-{server}-{load}-{round_no}", cmd,
                                args.warmup + args.duration + START_TIMEOUT, workdir, children)
    r = json.loads(child.stdout())
    return Run(section, load, server, round_no, r["rps"], r["p50_ms"], r["server_cpu_us_per_req"], r["server_cpu_pct"],
               r["client_cpu_pct"], r["other_cpu_pct"], r["errors"] + r["bad_replies"], r["first_error"])


def run_wrk(server: str, round_no: int, port: int, pid: int, script: Path, args: argparse.Namespace, pin: Pinning,
            workdir: Path, children: list[Child]) -> Run:
    wargs = argparse.Namespace(threads=1, connections=args.http_connections)
    url = f"http://{HOST}:{port}/"
    warm_failures = 0
    if args.warmup > 0:
        warm = _wrk(f"wrk-warmup-{server}-{round_no}", max(1, round(args.warmup)), url, script, wargs, pin, workdir,
                    children)
        warm_failures = warm.errors + warm.bad_replies
    client_cpu: list[float | None] = [None]
    window = Window(pid)
    window.open()
    out = _wrk(f"wrk-{server}-{round_no}", max(1, round(args.duration)), url, script, wargs, pin, workdir, children,
               on_exit=lambda child: client_cpu.__setitem__(0, cpu_seconds(child.pid)))
    cpu, srv, cli, other = window.close(client_cpu[0], out.requests)
    return Run("webhooks", "wrk", server, round_no, out.requests / out.duration_s, out.p50_ms, cpu, srv, cli, other,
               out.errors + out.bad_replies + warm_failures, out.first_error)


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    child: Child
    port: int
    note: str = ""


def grpc_port(child: Child, timeout: float = START_TIMEOUT) -> int:
    """The port from the server's `... EMQX ExHook ... on 127.0.0.1:PORT` line."""
    return child.wait_listening(timeout=timeout)


def start(name: str, cmd: list[str], workdir: Path, children: list[Child]) -> Child:
    child = Child(name, cmd, workdir)
    children.append(child)
    return child


def hookrules_cmd(prefix: list[str], grpc_addr: str, http_addr: str, workers: str | None = None) -> list[str]:
    return [*prefix, sys.executable, "-m", "hookrules", "serve", "--rules", str(RULES), "--grpc", grpc_addr,
            "--http", http_addr, "--metrics", "off", "--log-level", "warning",
            *(["--workers", workers] if workers is not None else [])]


def free_port() -> int:
    """A port for a server of several processes to share (each worker binding port 0 would get its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def refused_workers(child: Child) -> bool:
    """True when hookrules exited at start because it does not know --workers (before the flag exists)."""
    if child.proc.poll() is None:
        return False
    err = child.err_path.read_text(errors="replace")
    return child.proc.returncode == 2 and "--workers" in err


# -- reply checks -------------------------------------------------------------------------------


def exhook_check_calls(pb: Any) -> list[tuple[str, str, Any]]:
    """(label, rpc, request): every call of a session, and the cases the rules refuse or filter."""
    out: list[tuple[str, str, Any]] = []
    seen: set[tuple[str, bytes]] = set()
    for call in session_calls(pb, "bench-0001", "user1"):
        key = (call.rpc, call.request.SerializeToString())
        if key not in seen:
            seen.add(key)
            what = getattr(call.request, "topic", "") or (call.request.message.topic
                                                          if call.rpc.startswith("OnMessage") else "")
            out.append((f"{call.rpc} {what}".strip(), call.rpc, call.request))
    meta = pb.RequestMeta(node=NODE, version="5.9.0", sysdescr="EMQX", cluster_name="bench")
    bad = pb.ClientInfo(node=NODE, clientid="bench-0002", username="baduser", peerhost="127.0.0.1", protocol="mqtt")
    ci = pb.ClientInfo(node=NODE, clientid="bench-0001", username="user1", peerhost="127.0.0.1", protocol="mqtt")
    plus = pb.ClientInfo(node=NODE, clientid="+", username="user1", peerhost="127.0.0.1", protocol="mqtt")
    authz = pb.ClientAuthorizeRequest
    out.append(("OnClientAuthenticate baduser", "OnClientAuthenticate",
                pb.ClientAuthenticateRequest(clientinfo=bad, result=False, meta=meta)))
    for who, client, action, topic in (("", ci, authz.PUBLISH, "devices/bench-0002/x"),
                                       ("", ci, authz.SUBSCRIBE, "devices/+/cmd"),
                                       ("", ci, authz.SUBSCRIBE, "devices/#"),
                                       ("", ci, authz.PUBLISH, "$SYS/x"),
                                       ("", ci, authz.SUBSCRIBE, "$SYS/#"),
                                       (" (client +)", plus, authz.SUBSCRIBE, "devices/+/cmd")):
        name = "publish" if action == authz.PUBLISH else "subscribe"
        out.append((f"OnClientAuthorize {name} {topic}{who}", "OnClientAuthorize",
                    authz(clientinfo=client, type=action, topic=topic, result=False, meta=meta)))
    for topic, payload in (("sensors/1", b""), ("other/1", b"x"), ("t", b"x")):
        msg = pb.Message(node=NODE, id="0" * 32, qos=1, topic=topic, payload=payload, timestamp=1700000000000)
        setattr(msg, "from", "bench-0001")
        msg.headers["username"] = "user1"
        out.append((f"OnMessagePublish {topic} {payload!r}", "OnMessagePublish",
                    pb.MessagePublishRequest(message=msg, meta=meta)))
    out.append(("OnProviderLoaded", "OnProviderLoaded", pb.ProviderLoadedRequest(
        broker=pb.BrokerInfo(version="5.9.0", sysdescr="EMQX"), meta=meta)))
    return out


def check_exhook(servers: dict[str, Server], pb: Any) -> int:
    """One request of each kind to every server; peer and hookrules must answer alike. Returns mismatches."""
    print("\nExHook replies to one request of each kind (peer and hookrules must be equal; bare answers "
          "constants):")
    channels = {name: grpc.insecure_channel(f"{HOST}:{s.port}") for name, s in servers.items()}
    wrong = 0
    try:
        for label, rpc, request in exhook_check_calls(pb):
            req_name, resp_name = pb.methods[rpc]
            replies = {}
            for name, chan in channels.items():
                call = chan.unary_unary(PATH + rpc, request_serializer=pb.messages[req_name].SerializeToString,
                                        response_deserializer=pb.messages[resp_name].FromString)
                replies[name] = call(request, timeout=CALL_TIMEOUT)
            if rpc == "OnProviderLoaded":  # a set of hooks: compare in one order
                for r in replies.values():
                    r.hooks.sort(key=lambda h: h.name)
            same = replies["peer"] == replies["hookrules"]
            wrong += not same
            text = str(replies["hookrules"]).replace("\n", " ")[:110] or "(empty)"
            print(f"  {label:<46} {'same' if same else 'DIFFERENT':<9} {text}")
            if not same:
                print(f"  {'':<46} peer:     {str(replies['peer']).replace(chr(10), ' ')[:110]}")
    finally:
        for chan in channels.values():
            chan.close()
    return wrong


def webhook_check_requests() -> list[Request]:
    mix = MIXES["vernemq"]
    extra = [
        _webhook("auth_on_subscribe another's devices/", "auth_on_subscribe", {
            "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID,
            "topics": [{"topic": "t/1", "qos": 1}, {"topic": "devices/bench-0002/cmd/#", "qos": 1}]}),
        _webhook("auth_on_subscribe_m5 devices/#", "auth_on_subscribe_m5", {
            "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID,
            "topics": [{"topic": "devices/#", "qos": 2}]}),
        _webhook("auth_on_publish $SYS/x", "auth_on_publish", {
            "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID, "qos": 0, "topic": "$SYS/x",
            "payload": "", "retain": False}),
    ]
    return [*mix.requests, mix.probe, *extra]


def check_webhooks(servers: dict[str, Server]) -> int:
    print("\nWebhook replies to one request of each kind (aiohttp, fastapi and hookrules must be equal: status "
          "and JSON):")
    wrong = 0
    for request in webhook_check_requests():
        replies = {name: ask(s.port, request) for name, s in servers.items()}
        ref = replies["hookrules"]
        verdicts = []
        for name in ("aiohttp", "fastapi"):
            if name not in replies:
                continue
            r = replies[name]
            try:
                same = r.status == ref.status and json.loads(r.body) == json.loads(ref.body)
            except ValueError:
                same = False
            wrong += not same
            verdicts.append(f"{name} {'same' if same else 'DIFFERENT'}")
            if not same:
                print(f"  {request.label:<38} {name}: {r.status} {r.body[:100]}")
        print(f"  {request.label:<38} {', '.join(verdicts):<29} hookrules: {ref.status} {ref.body[:80]}")
    return wrong


# -- report -------------------------------------------------------------------------------------


def _f(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_header() -> None:
    print(f"  {'section':<8} {'load':<8} {'server':<10} {'rnd':>3} {'req/s':>7} {'lat ms':>7} {'us/call':>8} "
          f"{'srv CPU':>7} {'cli CPU':>7} {'other':>6} {'fail':>5}")


def print_run(r: Run) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}%"

    print(f"  {r.section:<8} {r.load:<8} {r.server:<10} {r.round:>3} {r.rps:>7.0f} {r.lat_ms:>7.2f} "
          f"{_f(r.cpu_us, '.0f'):>8} {pct(r.srv_pct):>7} {pct(r.cli_pct):>7} {pct(r.other_pct):>6} {r.failures:>5}",
          flush=True)
    if r.first_error:
        print(f"      first error: {r.first_error[:200]}")


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, run: Run) -> None:
        self.runs.append(run)
        print_run(run)

    def of(self, section: str, load: str, server: str) -> list[Run]:
        return [r for r in self.runs if (r.section, r.load, r.server) == (section, load, server)]

    def median(self, section: str, load: str, server: str, key: Callable[[Run], float | None]) -> float | None:
        values = [key(r) for r in self.of(section, load, server)]
        good = [v for v in values if v is not None]
        return statistics.median(good) if good and len(good) == len(values) else None

    def ratio(self, section: str, load: str, num: str, den: str, key: Callable[[Run], float | None]) -> float | None:
        """The median over rounds of num/den, each round's pair."""
        a = {r.round: key(r) for r in self.of(section, load, num)}
        b = {r.round: key(r) for r in self.of(section, load, den)}
        pairs = [(a[k], b[k]) for k in a if k in b and a[k] is not None and b[k]]
        return statistics.median(x / y for x, y in pairs) if pairs else None  # type: ignore[operator]

    def busiest_other(self) -> float | None:
        return max((r.other_pct for r in self.runs if r.other_pct is not None), default=None)


def rps(r: Run) -> float:
    return r.rps


def cpu(r: Run) -> float | None:
    return r.cpu_us


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def mix_title(args: argparse.Namespace) -> str:
    return "session's rule calls" if args.calls == "advertised" else "whole session mix"


def comparison_table(res: Results, args: argparse.Namespace) -> list[str]:
    lines = ["| front-end, load | server | req/s | CPU µs/call | hookrules ÷ server: req/s | CPU per call |",
             "|---|---|---|---|---|---|"]
    mix = mix_title(args)
    groups: list[tuple[str, str, str, tuple[str, ...]]]
    groups = [("exhook", load, f"ExHook, {title}", ("bare", "peer", "hookrules"))
              for load, title, _, _ in H2_KINDS.values()]
    groups += [("exhook", "mix", f"ExHook, {mix} (Python client)", ("bare", "peer", "hookrules")),
              ("webhooks", "wrk", "VerneMQ webhooks, wrk", ("bare", "parse", "aiohttp", "fastapi", "hookrules"))]
    for section, load, title, names in groups:
        for name in names:
            if not res.of(section, load, name):
                continue
            rr = "" if name == "hookrules" else _x(res.ratio(section, load, "hookrules", name, rps))
            cr = "" if name == "hookrules" else _x(res.ratio(section, load, "hookrules", name, cpu))
            lines.append(f"| {title} | {name} | {_f(res.median(section, load, name, rps), ',.0f')} | "
                         f"{_f(res.median(section, load, name, cpu), '.0f')} | {rr} | {cr} |")
    for load, title in (("h2 authn", "saturated, h2load authenticate storm"),
                        ("mix", f"saturated, {mix} (Python client)"),
                        ("rate", f"steady {args.rate:,.0f} calls/s, {mix}")):
        for name in ("1", "2", "auto", "bare 1", "bare 2"):
            if not res.of("workers", load, name):
                continue
            one = "bare 1" if name.startswith("bare") else "1"
            rr = "" if name == one else f"{_x(res.ratio('workers', load, name, one, rps))} of 1"
            cr = "" if name == one else f"{_x(res.ratio('workers', load, name, one, cpu))} of 1"
            who = "bare servicers sharing the port" if name.startswith("bare") else "hookrules --workers"
            lines.append(f"| {who}, {title} | {name.removeprefix('bare ')} | "
                         f"{_f(res.median('workers', load, name, rps), ',.0f')} | "
                         f"{_f(res.median('workers', load, name, cpu), '.0f')} | {rr} | {cr} |")
    return lines


def goal_lines(res: Results) -> list[str]:
    out = []
    for load, title, _, _ in [*H2_KINDS.values(), ("mix", "the Python client's calls", "", "")]:
        ex_rps = res.ratio("exhook", load, "hookrules", "peer", rps)
        ex_cpu = res.ratio("exhook", load, "hookrules", "peer", cpu)
        if ex_rps is None:
            continue
        bound = None if not ex_cpu else 1 / ex_cpu
        out.append(f"ExHook, one process, {title}: hookrules/peer throughput {_x(ex_rps)} (goal >= {EXHOOK_GOAL}x) "
                   f"[{_met(ex_rps >= EXHOOK_GOAL)}]; server-bound, from CPU per call: "
                   f"{_x(bound)} [{_met(None if bound is None else bound >= EXHOOK_GOAL)}]")
    wh_rps = res.ratio("webhooks", "wrk", "hookrules", "aiohttp", rps)
    wh_cpu = res.ratio("webhooks", "wrk", "hookrules", "aiohttp", cpu)
    if wh_rps is not None:
        out.append(f"Webhooks, one process: hookrules/aiohttp throughput {_x(wh_rps)} (wrk; goal >= {WEBHOOK_GOAL}x) "
                   f"[{_met(wh_rps >= WEBHOOK_GOAL)}]; from CPU per request {_x(None if not wh_cpu else 1 / wh_cpu)} "
                   f"[{_met(None if not wh_cpu else 1 / wh_cpu >= WEBHOOK_GOAL)}]")
    sat = "h2 authn" if res.of("workers", "h2 authn", "1") else "mix"
    w_cpu = res.ratio("workers", "rate", "2", "1", cpu)
    w_rps = res.ratio("workers", sat, "2", "1", rps)
    b_cpu = res.ratio("workers", "rate", "bare 2", "bare 1", cpu)
    b_rps = res.ratio("workers", sat, "bare 2", "bare 1", rps)
    if w_cpu is not None or w_rps is not None:
        out.append(f"Workers: CPU per call 2/1 = {_x(w_cpu)} (goal <= {WORKERS_CPU_GOAL}x; bare servicers "
                   f"{_x(b_cpu)}) [{_met(None if w_cpu is None else w_cpu <= WORKERS_CPU_GOAL)}]; saturated "
                   f"throughput 2/1 = {_x(w_rps)} (goal >= {WORKERS_RPS_GOAL}x; bare servicers {_x(b_rps)}) "
                   f"[{_met(None if w_rps is None else w_rps >= WORKERS_RPS_GOAL)}]")
    elif b_cpu is not None:
        out.append(f"Workers: not measured (no --workers); bare servicers 2/1: CPU per call {_x(b_cpu)}, "
                   f"saturated throughput {_x(b_rps)}")
    return out


# -- sections -----------------------------------------------------------------------------------


def section_exhook(res: Results, args: argparse.Namespace, pin: Pinning, workdir: Path, children: list[Child],
                   pb: Any, bodies: list[H2Body]) -> int:
    prefix = pin.prefix(pin.server)
    life = ["--lifetime", str(args.lifetime)]
    cmds = {
        "bare": [*prefix, sys.executable, str(BENCH / "bare_servicer.py"), "--host", HOST, "--port", "0", *life],
        "peer": [*prefix, sys.executable, str(BENCH / "peer_servicer.py"), "--host", HOST, "--port", "0", *life],
        "hookrules": hookrules_cmd(prefix, f"{HOST}:0", "off"),
    }
    started = {name: start(f"exhook-{name}", cmd, workdir, children) for name, cmd in cmds.items()}
    servers = {name: Server(name, c, grpc_port(c)) for name, c in started.items()}
    wrong = check_exhook(servers, pb)
    h2 = f"h2load {args.streams} streams each, " if bodies else ""
    print(f"\nExHook load: {args.channels} connections; {h2}Python client {args.concurrency} calls in flight "
          f"({mix_title(args)}); {args.warmup:g} s warm-up + {args.duration:g} s; {pin.describe()}")
    print_header()
    try:
        for round_no in range(1, args.rounds + 1):
            for name, s in servers.items():
                for body in bodies:
                    res.add(run_h2load("exhook", name, round_no, s.port, s.child.pid, body, args, pin, workdir,
                                       children))
                res.add(run_loadgen("exhook", "mix", name, round_no, s.port, s.child.pid, args, pin, workdir,
                                    children))
    finally:
        stop_all([s.child for s in servers.values()])
    return wrong


def section_webhooks(res: Results, args: argparse.Namespace, pin: Pinning, workdir: Path,
                     children: list[Child]) -> int:
    if shutil.which("wrk") is None:
        res.notes.append("webhooks: skipped, wrk is not installed (apt-get install wrk)")
        print(f"\n{res.notes[-1]}")
        return 0
    prefix = pin.prefix(pin.server)
    life = ["--lifetime", str(args.lifetime)]
    bare = [*prefix, sys.executable, str(BENCH / "bare_webhooks.py"), "--host", HOST, "--port", "0", *life]
    cmds = {
        "bare": bare,
        "parse": [*bare, "--parse"],
        "aiohttp": [*prefix, sys.executable, str(BENCH / "peer_aiohttp.py"), "--host", HOST, "--port", "0", *life],
        "fastapi": [*prefix, sys.executable, str(BENCH / "peer_fastapi.py"), "--host", HOST, "--port", "0", *life],
        "hookrules": hookrules_cmd(prefix, "off", f"{HOST}:0"),
    }
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        del cmds["fastapi"]
        res.notes.append("webhooks: fastapi peer left out: FastAPI or uvicorn is not installed "
                         "(pip install -e '.[bench]')")
        print(f"\n{res.notes[-1]}")
    started = {name: start(f"webhooks-{name}", cmd, workdir, children) for name, cmd in cmds.items()}
    servers = {name: Server(name, c, wait_port(c)) for name, c in started.items()}
    banner = re.search(r"^fastapi: .*$", started["fastapi"].stdout(), re.MULTILINE) if "fastapi" in started else None
    wrong = check_webhooks(servers)
    script = write_wrk_script(workdir / "vernemq.lua", MIXES["vernemq"])
    print(f"\nWebhook load: wrk, 1 thread, {args.http_connections} keep-alive connections, VerneMQ's 4 webhooks "
          f"cycled; {max(1, round(args.warmup))} s warm-up + {max(1, round(args.duration))} s; {pin.describe()}")
    if banner:
        print(f"  ({banner[0]})")
    print_header()
    try:
        for round_no in range(1, args.rounds + 1):
            for name, s in servers.items():
                res.add(run_wrk(name, round_no, s.port, s.child.pid, script, args, pin, workdir, children))
    finally:
        stop_all([s.child for s in servers.values()])
    return 0 if wrong == 0 else wrong


def section_workers(res: Results, args: argparse.Namespace, pin: Pinning, workdir: Path, children: list[Child],
                    body: H2Body | None) -> None:
    # --workers-pin: every worker count on the same one CPU, the load on the other: 2 workers must lose
    # nothing against 1 on the same core. Else not pinned: the workers spread over the CPUs.
    nopin = pin if args.workers_pin else Pinning(None, None)
    prefix = nopin.prefix(nopin.server)
    servers: dict[str, Server] = {}
    for workers in ("1", "2", "auto"):
        port = free_port()
        child = start(f"workers-{workers}", hookrules_cmd(prefix, f"{HOST}:{port}", "off", workers), workdir,
                      children)
        try:
            servers[workers] = Server(workers, child, grpc_port(child))
        except RuntimeError:
            if not refused_workers(child):
                raise
            if workers != "1":
                res.notes.append(f"workers: --workers {workers} skipped: this hookrules refuses --workers")
                print(f"\n{res.notes[-1]}")
                continue
            res.notes.append("workers: this hookrules refuses --workers: '1' is today's server, run without it")
            print(f"\n{res.notes[-1]}")
            child = start("workers-1-noflag", hookrules_cmd(prefix, f"{HOST}:{port}", "off"), workdir, children)
            servers["1"] = Server("1", child, grpc_port(child), "no --workers flag")
    for n in (1, 2):  # the floors: bare servicers sharing the port, as the workers do
        cmd = [*prefix, sys.executable, str(BENCH / "bare_servicer.py"), "--host", HOST, "--port", "0",
               "--lifetime", str(args.lifetime), "--processes", str(n)]
        child = start(f"workers-bare-{n}", cmd, workdir, children)
        servers[f"bare {n}"] = Server(f"bare {n}", child, grpc_port(child))
    procs = {name: len(tree_pids(s.child.pid)) for name, s in servers.items()}
    print(f"\nWorkers: hookrules --workers 1 / 2 / auto (processes in each tree: "
          f"{', '.join(f'{k}: {v}' for k, v in procs.items())}); {nopin.describe()}; "
          f"{'saturated: h2load authenticate storm, ' if body else 'saturated: the Python session mix, '}"
          f"{args.channels} connections; steady: {mix_title(args)} at {args.rate:,.0f} calls/s over {args.channels} "
          f"channels; CPU = the whole process tree")
    print_header()
    try:
        for round_no in range(1, args.rounds + 1):
            for name, s in servers.items():
                if body is not None:
                    res.add(run_h2load("workers", name, round_no, s.port, s.child.pid, body, args, nopin, workdir,
                                       children))
                else:
                    res.add(run_loadgen("workers", "mix", name, round_no, s.port, s.child.pid, args, nopin, workdir,
                                        children))
                steady = run_loadgen("workers", "rate", name, round_no, s.port, s.child.pid, args, nopin, workdir,
                                     children, rate=args.rate)
                res.add(steady)
                if steady.rps < 0.95 * args.rate:
                    res.notes.append(f"workers: --workers {name}, round {round_no}: the steady load reached only "
                                     f"{steady.rps:,.0f} of {args.rate:,.0f} calls/s (the server or the machine was "
                                     "saturated): its CPU per call is not at the intended rate")
    finally:
        stop_all([s.child for s in servers.values()])


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s windows, 1 s warm-up")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)} "
                                                                   "(default all)")
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--duration", type=float, help="measured seconds per window (default 5, --quick 2)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each window (default 1)")
    p.add_argument("--channels", type=int, default=8, help="gRPC connections, EMQX's pool_size (default 8)")
    p.add_argument("--streams", type=int, default=8, help="h2load: streams in flight per connection (default 8)")
    p.add_argument("--concurrency", type=int, default=64, help="Python gRPC client: calls in flight (default 64)")
    p.add_argument("--http-connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    p.add_argument("--h2load", default=",".join(H2_KINDS),
                   help=f"exhook section: the h2load runs, comma-separated, of {','.join(H2_KINDS)} (default all; "
                        "the workers section runs authenticate)")
    p.add_argument("--calls", choices=("advertised", "all"), default="advertised",
                   help="Python gRPC client: the calls EMQX makes for the bundled rules' advertised hooks, 6 a "
                        "session, every one a rule's (default), or all 18 of a session (notifications too)")
    p.add_argument("--rate", type=float, default=2000.0, help="workers: the steady calls/s (default 2000)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs with taskset")
    p.add_argument("--workers-pin", action="store_true",
                   help="workers section: pin every hookrules (all its workers) to one CPU and the load to another, "
                        "so 2 workers are compared with 1 on the same core (default: not pinned)")
    args = p.parse_args(argv)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.h2load = [k.strip() for k in args.h2load.split(",") if k.strip()]
    for k in args.h2load:
        if k not in H2_KINDS:
            p.error(f"--h2load: unknown kind {k!r} (of {', '.join(H2_KINDS)})")
    for s in args.sections:
        if s not in SECTIONS:
            p.error(f"--sections: unknown section {s!r} (of {', '.join(SECTIONS)})")
    for name in ("rounds", "duration", "channels", "streams", "concurrency", "http_connections", "rate"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    per_round = 12 * (args.warmup + args.duration + 5)
    args.lifetime = int(max(900, START_TIMEOUT + args.rounds * per_round * 2))
    return args


def machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    v = dist_version
    return (f"{os.cpu_count()} CPUs{' (' + model + ')' if model else ''}; python {platform.python_version()}, "
            f"grpcio {v('grpcio')}, aiohttp {v('aiohttp')}, fastapi {v('fastapi')}, uvicorn {v('uvicorn')}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"hookrules against its peers, {started_at}: {machine()}")
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    pin = choose_pinning(args.pin)
    pb = exhook_proto.load("v3")
    res = Results()
    children: list[Child] = []
    wrong = 0
    h2 = shutil.which("h2load") is not None
    if not h2:
        res.notes.append("h2load is not installed (apt-get install nghttp2-client): gRPC load from the Python "
                         "client only")
        print(res.notes[-1])
    try:
        with tempfile.TemporaryDirectory(prefix="hookrules-peers-bench-") as tmp:
            workdir = Path(tmp)
            bodies = h2load_bodies(workdir, pb) if h2 else {}
            body = bodies.get("authenticate")
            try:
                if "exhook" in args.sections:
                    wrong += section_exhook(res, args, pin, workdir, children, pb,
                                            [bodies[k] for k in args.h2load if k in bodies])
                if "webhooks" in args.sections:
                    wrong += section_webhooks(res, args, pin, workdir, children)
                if "workers" in args.sections:
                    section_workers(res, args, pin, workdir, children, body)
            finally:
                stop_all(children)
    except KeyboardInterrupt:
        print("\ninterrupted: all child processes stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError, grpc.RpcError) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        return 1
    busiest = res.busiest_other()
    print(f"\n## Comparison ({started_at}; {machine()}; medians of {args.rounds} round(s) of {args.duration:g} s; "
          f"load average at start {load1:.2f}, other processes up to {_f(busiest, '.0f')}% of a core "
          f"during the windows)\n")
    for line in comparison_table(res, args):
        print(line)
    print()
    for line in goal_lines(res):
        print(line)
    for note in res.notes:
        print(f"note: {note}")
    if busiest is not None and busiest > NOISY_OTHER_PCT:
        print(f"note: other processes used up to {busiest:.0f}% of a core during the windows: req/s is noisy, "
              "trust CPU per call")
    failures = wrong + sum(r.failures for r in res.runs)
    if failures:
        print(f"\n{failures} failed, wrong or differing replies: the figures above are not trustworthy",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
