"""A bare emqx.exhook.v3 HookProvider with constant replies: the floor hookrules is measured against.

It is built on hookrules' own stack (grpc.aio, `grpc.method_handlers_generic_handler`, the message
classes of `hookrules.adapters.exhook_proto.load("v3")`, async handlers, the same server options), so
the difference between it and `hookrules serve` is the price of the request -> Event -> rule -> reply
path and nothing else:

* OnClientAuthenticate / OnClientAuthorize -> ValuedResponse(STOP_AND_RETURN, bool_result=True)
* OnMessagePublish -> ValuedResponse(STOP_AND_RETURN, message=<the request's message>)
* every other RPC -> its (empty) response: EmptySuccess, and LoadedResponse() for OnProviderLoaded

Run by bench/exhook_bench.py; it prints where it listens the way hookrules does
(`bare: EMQX ExHook (emqx.exhook.v3, constant replies) on 127.0.0.1:PORT`), stops on SIGTERM/SIGINT,
and in any case after --lifetime seconds, so it can never outlive a benchmark for long.

With --processes N (bench/peers_bench.py's workers section) it is the floor of `hookrules serve --workers N`:
this process starts N copies of itself serving one port with SO_REUSEPORT (the kernel spreads the
connections over them, as with hookrules' workers), prints the banner once all listen, and stops them on
SIGTERM/SIGINT or at the end of its lifetime.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook_proto import ExhookProto

import serving

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


def _constant(reply: Any) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return reply

    return handle


def _echo_publish(proto: ExhookProto) -> Handler:
    vr = proto.ValuedResponse
    stop = vr.STOP_AND_RETURN

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return vr(type=stop, message=request.message)

    return handle


def generic_handler(proto: ExhookProto) -> grpc.GenericRpcHandler:
    vr = proto.ValuedResponse
    allow = vr(type=vr.STOP_AND_RETURN, bool_result=True)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for rpc, (req_name, resp_name) in proto.methods.items():
        if rpc in ("OnClientAuthenticate", "OnClientAuthorize"):
            fn = _constant(allow)
        elif rpc == "OnMessagePublish":
            fn = _echo_publish(proto)
        else:
            fn = _constant(proto.messages[resp_name]())
        handlers[rpc] = grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=proto.messages[req_name].FromString,
            response_serializer=proto.messages[resp_name].SerializeToString)
    return grpc.method_handlers_generic_handler(proto.service_name, handlers)


async def serve(host: str, port: int, lifetime: float, reuseport: bool = False) -> None:
    proto = exhook_proto.load("v3")
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuseport))])  # 0: as hookrules' server.py
    server.add_generic_rpc_handlers([generic_handler(proto)])
    await serving.serve_grpc(server, host, port, lifetime, f"bare: EMQX ExHook ({proto.package}, constant replies)")


def supervise(host: str, port: int, lifetime: float, processes: int) -> None:
    """N copies of this server on one port (SO_REUSEPORT), stopped together."""
    if port == 0:  # every copy binding port 0 would get a port of its own
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--host", host, "--port", str(port), "--lifetime", str(lifetime), "--reuseport"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=serving.die_with_parent(os.getpid()))
             for _ in range(processes)]
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    try:
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not re.search(r" on [\d.]+:\d+", line):
                raise SystemExit(f"a copy did not start: {line!r}")
        print(f"bare: EMQX ExHook (emqx.exhook.v3, constant replies, {processes} processes) on {host}:{port}",
              flush=True)
        deadline = time.monotonic() + lifetime
        while not stop["now"] and time.monotonic() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)


def main() -> None:
    parser = serving.server_args(__doc__)
    parser.add_argument("--processes", type=int, default=1, help="copies of the server sharing the port (default 1)")
    parser.add_argument("--reuseport", action="store_true", help="set SO_REUSEPORT (a copy under --processes)")
    args = parser.parse_args()
    if args.processes > 1:
        supervise(args.host, args.port, args.lifetime, args.processes)
    else:
        asyncio.run(serve(args.host, args.port, args.lifetime, args.reuseport))


if __name__ == "__main__":
    main()
