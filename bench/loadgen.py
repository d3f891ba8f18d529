"""The load generator of bench/exhook_bench.py: EMQX's ExHook traffic for MQTT sessions, over grpc.aio.

One process, `--channels` gRPC channels (EMQX's exhook pool_size, default 8: each channel its own
TCP connection) and `--concurrency` calls in flight, each worker replaying one client's session in the
order EMQX sends it:

    connect, authenticate, session.created, connected, connack, authorize(subscribe), subscribe,
    session.subscribed, then for t/demo and sensors/1 (topics the bundled message.publish rule
    declares in TOPICS, so the rule really runs): authorize(publish), publish, delivered, acked;
    then disconnected, terminated.

With `--calls advertised`, only the calls EMQX makes to a provider whose OnProviderLoaded advertised
just the bundled rules' hooks (client.authenticate, client.authorize, message.publish): 6 a session,
every one answered by a rule (EMQX sends no notification it was not asked for).

`--rate` paces the calls (in all, spread over the workers) for a steady load below saturation, where
the CPU per call of servers of different shapes compares; `--tree` reads the CPU time of --server-pid's
whole process tree (a parent with its workers and their watchdogs) instead of the one process.

Requests use the v3 message classes of `hookrules.adapters.exhook_proto` and the method paths
`/emqx.exhook.v3.HookProvider/<Rpc>`, with EMQX's 5 s deadline. After `--warmup` seconds the measured
window opens: the CPU time of the server (utime+stime of --server-pid from /proc), our own and the
whole machine's (/proc/stat) are read at both ends of it, and every call that completes inside it is
counted and its latency kept. Every reply is checked (authn/authz must allow, publish must answer with
the message), so a server that answers fast but wrongly shows up as errors rather than as a win.

Prints one JSON object on stdout. Every loop is bounded: the run ends after warm-up + duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc

from hookrules.adapters import exhook_proto

PATH = "/emqx.exhook.v3.HookProvider/"
NODE = "emqx@127.0.0.1"
#: EMQX's default exhook request_timeout; hookrules derives its rule deadline from it
CALL_TIMEOUT = 5.0
#: (topic, payload) each session publishes: both match the bundled rule's TOPICS
PUBLISHES: tuple[tuple[str, bytes], ...] = (("t/demo", b"21.5"), ("sensors/1", b"21.5"))
SUB_TOPIC = "t/1"
#: a hard bound on every worker loop, far above what the duration allows
MAX_CALLS_PER_WORKER = 10_000_000

CHECK_NONE, CHECK_ALLOW, CHECK_PUBLISH = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Call:
    rpc: str
    request: Any
    check: int


def summarize(window: float, latencies: list[float], server_cpu: float | None, client_cpu: float | None,
              busy: float | None, state: Any) -> dict[str, Any]:
    """One measured window as the benchmark reports it (shared with bench/webhooks_loadgen.py)."""
    lat = sorted(latencies)
    calls = len(lat)
    # what the rest of the machine used meanwhile: on a shared box, a sign of how noisy this run was
    other_cpu = None
    if busy is not None and server_cpu is not None and client_cpu is not None:
        other_cpu = max(busy - server_cpu - client_cpu, 0.0)
    return {
        "calls": calls,
        "window_s": window,
        "rps": calls / window,
        "p50_ms": _percentile(lat, 0.50) * 1e3,
        "p99_ms": _percentile(lat, 0.99) * 1e3,
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_req": None if server_cpu is None or not calls else server_cpu / calls * 1e6,
        "server_cpu_pct": None if server_cpu is None else server_cpu / window * 100,
        "client_cpu_pct": None if client_cpu is None else client_cpu / window * 100,
        "other_cpu_pct": None if other_cpu is None else other_cpu / window * 100,
        "errors": state.errors,
        "bad_replies": state.bad_replies,
        "first_error": state.first_error,
    }


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat; None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(b")", 1)[1].split()  # the command name may hold spaces and parentheses
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    """root and every process descended from it (a supervising parent, its workers, their watchdogs), from /proc."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo and len(out) < 10_000:  # bounded, whatever /proc says
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float | None:
    """cpu_seconds summed over a process tree: what a server of several processes costs. CPU time of a
    process that exits between two readings is lost (a restarted worker), so compare steady trees."""
    if cpu_seconds(root) is None:
        return None
    return sum(cpu_seconds(pid) or 0.0 for pid in tree_pids(root))


def machine_busy_seconds() -> float | None:
    """CPU time spent by everything on the machine, all CPUs (the `cpu` line of /proc/stat, less idle and iowait)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def session_calls(pb: Any, client_id: str, username: str) -> list[Call]:
    """What EMQX sends for one MQTT session, in its order."""
    meta = pb.RequestMeta(node=NODE, version="5.9.0", sysdescr="EMQX", cluster_name="bench")
    ci = pb.ClientInfo(node=NODE, clientid=client_id, username=username, password="secret",
                       peerhost="127.0.0.1", peerport=50000, sockport=1883, protocol="mqtt")
    conninfo = pb.ConnInfo(node=NODE, clientid=client_id, username=username, peerhost="127.0.0.1", peerport=50000,
                           sockport=1883, proto_name="MQTT", proto_ver="5", keepalive=60)
    props = [pb.Property(name="Session-Expiry-Interval", value="100")]
    authz = pb.ClientAuthorizeRequest
    subopts = pb.SubOpts(qos=1)
    calls = [
        Call("OnClientConnect", pb.ClientConnectRequest(conninfo=conninfo, props=props, meta=meta), CHECK_NONE),
        Call("OnClientAuthenticate", pb.ClientAuthenticateRequest(clientinfo=ci, result=False, meta=meta), CHECK_ALLOW),
        Call("OnSessionCreated", pb.SessionCreatedRequest(clientinfo=ci, meta=meta), CHECK_NONE),
        Call("OnClientConnected", pb.ClientConnectedRequest(clientinfo=ci, meta=meta), CHECK_NONE),
        Call("OnClientConnack", pb.ClientConnackRequest(conninfo=conninfo, result_code="success", meta=meta),
             CHECK_NONE),
        Call("OnClientAuthorize", authz(clientinfo=ci, type=authz.SUBSCRIBE, topic=SUB_TOPIC, result=False,
                                        meta=meta), CHECK_ALLOW),
        Call("OnClientSubscribe", pb.ClientSubscribeRequest(
            clientinfo=ci, topic_filters=[pb.TopicFilter(name=SUB_TOPIC, subopts=subopts)], meta=meta), CHECK_NONE),
        Call("OnSessionSubscribed", pb.SessionSubscribedRequest(clientinfo=ci, topic=SUB_TOPIC, subopts=subopts,
                                                                meta=meta), CHECK_NONE),
    ]
    for n, (topic, payload) in enumerate(PUBLISHES):
        msg = pb.Message(node=NODE, id=f"{n:04X}{client_id.encode().hex().upper()}"[:32].ljust(32, "0"), qos=1,
                         topic=topic, payload=payload, timestamp=1700000000000)
        setattr(msg, "from", client_id)
        msg.headers["username"] = username
        msg.headers["peerhost"] = "127.0.0.1"
        msg.headers["protocol"] = "mqtt"
        calls += [
            Call("OnClientAuthorize", authz(clientinfo=ci, type=authz.PUBLISH, topic=topic, result=False, meta=meta),
                 CHECK_ALLOW),
            Call("OnMessagePublish", pb.MessagePublishRequest(message=msg, props=[], meta=meta), CHECK_PUBLISH),
            Call("OnMessageDelivered", pb.MessageDeliveredRequest(clientinfo=ci, message=msg, meta=meta), CHECK_NONE),
            Call("OnMessageAcked", pb.MessageAckedRequest(clientinfo=ci, message=msg, meta=meta), CHECK_NONE),
        ]
    calls += [
        Call("OnClientDisconnected", pb.ClientDisconnectedRequest(clientinfo=ci, reason="normal", meta=meta),
             CHECK_NONE),
        Call("OnSessionTerminated", pb.SessionTerminatedRequest(clientinfo=ci, reason="normal", meta=meta),
             CHECK_NONE),
    ]
    return calls


class State:
    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.latencies: list[float] = []
        self.errors = 0
        self.bad_replies = 0
        self.first_error = ""


def _reply_ok(call: Call, reply: Any, stop_and_return: int) -> bool:
    if call.check == CHECK_ALLOW:
        return bool(reply.type == stop_and_return and reply.bool_result)
    if call.check == CHECK_PUBLISH:
        return bool(reply.type == stop_and_return and reply.message.topic == call.request.message.topic)
    return True


async def _worker(index: int, calls: list[Call], stubs: dict[str, Any], state: State, stop_and_return: int,
                  interval: float = 0.0) -> None:
    """Calls back to back, or with `interval` > 0 one call every `interval` seconds (an open schedule:
    a call that comes back late is followed at once; at most 0.1 s of lag is caught up, never a long burst)."""
    perf = time.perf_counter
    k = (index * 5) % len(calls)  # stagger the workers over the session
    due = perf() + interval * (index % 97) / 97  # spread the workers' first calls over one interval
    for _ in range(MAX_CALLS_PER_WORKER):
        if state.stop:
            return
        if interval:
            now = perf()
            if due > now:
                await asyncio.sleep(due - now)
            due = max(due + interval, perf() - 0.1)
        call = calls[k]
        k = k + 1 if k + 1 < len(calls) else 0
        started = perf()
        try:
            reply = await stubs[call.rpc](call.request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            state.errors += 1
            state.first_error = state.first_error or f"{call.rpc}: {exc.code().name} {exc.details()}"
            continue
        elapsed = perf() - started
        if call.check and not _reply_ok(call, reply, stop_and_return):
            state.bad_replies += 1
            state.first_error = state.first_error or f"{call.rpc}: unexpected reply {reply}"
        if state.measuring:
            state.latencies.append(elapsed)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(target: str, server_pid: int, channels: int, concurrency: int, warmup: float,
              duration: float, rate: float = 0.0, tree: bool = False, advertised: bool = False) -> dict[str, Any]:
    proto = exhook_proto.load("v3")
    stop_and_return = proto.ValuedResponse.STOP_AND_RETURN
    # A local subchannel pool per channel: without it grpc would share one TCP connection among all of them.
    chans = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in chans)), 15.0)
        stubs = [{rpc: c.unary_unary(PATH + rpc, request_serializer=proto.messages[req].SerializeToString,
                                     response_deserializer=proto.messages[resp].FromString)
                  for rpc, (req, resp) in proto.methods.items()} for c in chans]
        sessions = [session_calls(proto, f"bench-{i:04d}", f"user{i}") for i in range(concurrency)]
        if advertised:  # what EMQX sends when only the rules' hooks were advertised: the decisions
            sessions = [[c for c in calls if c.check != CHECK_NONE] for calls in sessions]
        state = State()
        interval = concurrency / rate if rate > 0 else 0.0
        tasks = [asyncio.create_task(_worker(i, sessions[i], stubs[i % channels], state, stop_and_return, interval))
                 for i in range(concurrency)]
        server_cpu = tree_cpu_seconds if tree else cpu_seconds
        await asyncio.sleep(warmup)
        # open the window: CPU readings and the `measuring` flag change in the same loop step
        busy0, server_cpu0, client_cpu0 = machine_busy_seconds(), server_cpu(server_pid), cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        state.measuring = True
        await asyncio.sleep(duration)
        state.measuring = False
        t1 = time.perf_counter()
        client_cpu1, server_cpu1, busy1 = cpu_seconds(os.getpid()), server_cpu(server_pid), machine_busy_seconds()
        state.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), CALL_TIMEOUT + 5.0 + interval)
    finally:
        await asyncio.gather(*(c.close() for c in chans), return_exceptions=True)
    report = summarize(t1 - t0, state.latencies, _delta(server_cpu0, server_cpu1), _delta(client_cpu0, client_cpu1),
                       _delta(busy0, busy1), state)
    return {
        **report,
        "calls_per_session": len(sessions[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="ExHook v3 session-mix load generator (used by exhook_bench.py)")
    parser.add_argument("--target", required=True, help="HOST:PORT of the HookProvider")
    parser.add_argument("--server-pid", type=int, required=True, help="whose CPU time to read from /proc")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="calls per second in all, paced (default 0: as fast as the server answers)")
    parser.add_argument("--tree", action="store_true",
                        help="read the CPU time of --server-pid and all its descendants (workers, watchdogs)")
    parser.add_argument("--calls", choices=("all", "advertised"), default="all",
                        help="every call of a session (default), or only the hooks the bundled rules advertise")
    args = parser.parse_args()
    result = asyncio.run(run(args.target, args.server_pid, args.channels, args.concurrency, args.warmup,
                             args.duration, args.rate, args.tree, args.calls == "advertised"))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
