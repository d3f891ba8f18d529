"""VerneMQ webhook traffic for bench/webhooks_bench.py: the requests, and the Python load generator.

REQUESTS is what VerneMQ's vmq_webhooks POSTs for a client that connects, subscribes and publishes
(bodies as in ../shared/reference/vernemq-webhooks.md, section 1.3, payloads base64 as by default),
each with `Content-Type: application/json` and `vernemq-hook: <hook>`:

    auth_on_register   username "gooduser" (the bundled rule allows it, with cache=30)
    auth_on_subscribe  two topics: t/1 and the client's own devices/<id>/cmd/# (both allowed)
    auth_on_publish    t/demo, payload "MjEuNQ==" (21.5; the bundled rule rewrites the payload)
    auth_on_publish    sensors/1, payload "MjEuNQ==" (allowed)

webhooks_bench.py hands the same bytes to wrk (in a generated Lua script) or to this module run as a
script: one process, an aiohttp ClientSession whose TCPConnector keeps at most --connections
keep-alive connections (VerneMQ's pool keeps up to 100 per endpoint) and --concurrency requests in
flight, each worker cycling through REQUESTS (staggered). After --warmup seconds the measured window
opens: the CPU time of the server (utime+stime of --server-pid from /proc), our own and the whole
machine's (/proc/stat) are read at both ends of it, and every request that completes inside it is
counted and its latency kept. Every reply is checked (HTTP 200 and a JSON object whose result is
"ok"), so a server that answers fast but wrongly shows up as bad replies rather than as a win.

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

import aiohttp

from loadgen import _delta, cpu_seconds, machine_busy_seconds, summarize

CLIENT_ID = "bench-0001"
USERNAME = "gooduser"
#: "21.5", base64-encoded as vmq_webhooks sends payloads by default (base64encode = on)
PAYLOAD_B64 = "MjEuNQ=="
#: VerneMQ's webhook response_timeout (5 s by the schema)
REQUEST_TIMEOUT = 5.0
#: a hard bound on every worker loop, far above what the duration allows
MAX_REQUESTS_PER_WORKER = 10_000_000


@dataclass(frozen=True, slots=True)
class Request:
    label: str
    hook: str
    body: bytes  # JSON, ASCII only

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "vernemq-hook": self.hook}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def _publish(topic: str) -> Request:
    return Request(f"auth_on_publish {topic}", "auth_on_publish", _json({
        "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID, "qos": 1, "topic": topic,
        "payload": PAYLOAD_B64, "retain": False}))


REQUESTS: tuple[Request, ...] = (
    Request("auth_on_register", "auth_on_register", _json({
        "peer_addr": "127.0.0.1", "peer_port": 50000, "mountpoint": "", "client_id": CLIENT_ID,
        "username": USERNAME, "password": "secret", "clean_session": True, "listener_addr": "127.0.0.1",
        "listener_port": 1883, "listener_type": "mqtt"})),
    Request("auth_on_subscribe (2 topics)", "auth_on_subscribe", _json({
        "username": USERNAME, "mountpoint": "", "client_id": CLIENT_ID,
        "topics": [{"topic": "t/1", "qos": 1}, {"topic": f"devices/{CLIENT_ID}/cmd/#", "qos": 1}]})),
    _publish("t/demo"),
    _publish("sensors/1"),
)


class State:
    def __init__(self) -> None:
        self.measuring = False
        self.stop = False
        self.latencies: list[float] = []
        self.errors = 0
        self.bad_replies = 0
        self.first_error = ""


def _reply_ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        reply = json.loads(body)
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("result") == "ok"


async def _worker(index: int, session: aiohttp.ClientSession, url: str, state: State) -> None:
    perf = time.perf_counter
    requests = [(r.label, r.body, r.headers) for r in REQUESTS]
    k = index % len(requests)  # stagger the workers over the cycle
    for _ in range(MAX_REQUESTS_PER_WORKER):
        if state.stop:
            return
        label, body, headers = requests[k]
        k = k + 1 if k + 1 < len(requests) else 0
        started = perf()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                status, reply = resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            state.errors += 1
            state.first_error = state.first_error or f"{label}: {type(exc).__name__} {exc}"
            continue
        elapsed = perf() - started
        if not _reply_ok(status, reply):
            state.bad_replies += 1
            state.first_error = state.first_error or f"{label}: HTTP {status} {reply[:200]!r}"
        if state.measuring:
            state.latencies.append(elapsed)


async def run(url: str, server_pid: int, connections: int, concurrency: int, warmup: float,
              duration: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        state = State()
        tasks = [asyncio.create_task(_worker(i, session, url, state)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        # open the window: CPU readings and the `measuring` flag change in the same loop step
        busy0, server_cpu0, client_cpu0 = machine_busy_seconds(), cpu_seconds(server_pid), cpu_seconds(os.getpid())
        t0 = time.perf_counter()
        state.measuring = True
        await asyncio.sleep(duration)
        state.measuring = False
        t1 = time.perf_counter()
        client_cpu1, server_cpu1, busy1 = cpu_seconds(os.getpid()), cpu_seconds(server_pid), machine_busy_seconds()
        state.stop = True
        await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT + 5.0)
    report = summarize(t1 - t0, state.latencies, _delta(server_cpu0, server_cpu1), _delta(client_cpu0, client_cpu1),
                       _delta(busy0, busy1), state)
    report["requests"] = report.pop("calls")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description="VerneMQ webhook load generator (used by webhooks_bench.py)")
    parser.add_argument("--url", required=True, help="the endpoint, http://HOST:PORT/")
    parser.add_argument("--server-pid", type=int, required=True, help="whose CPU time to read from /proc")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections at most (default 32)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.server_pid, args.connections, args.concurrency, args.warmup,
                             args.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
