"""What every bench server does around its handler: listen, print the banner, stop on SIGTERM/SIGINT or
after --lifetime, and never outlive the benchmark that started it.

The banner (`<name>: <what> on HOST:PORT`, or `on http://HOST:PORT/` for HTTP) is the line the benchmarks
read the port from (exhook_bench.LISTEN, webhooks_bench.LISTEN), so it is written here once. --lifetime
bounds a server a crashed benchmark failed to stop; die_with_parent does the same for the processes a
benchmark (or bare_servicer.py --processes) starts.

Only the standard library at import: the gRPC servers do not pay for importing aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web



def server_args(doc: str | None) -> argparse.ArgumentParser:
    """--host, --port and --lifetime, described by the first line of the server's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds (default 900)")
    return parser


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound and listening, opened by the very function hookrules' server.py opens its HTTP
    one with (imported here, not at the top: the gRPC servers load nothing of hookrules' HTTP side)."""
    from hookrules.adapters.httpwire import listen_socket

    return listen_socket(host, port, reuse_port=False)


async def announce_until_stopped(banner: str, lifetime: float) -> None:
    """Print the banner, then return on SIGTERM/SIGINT or after `lifetime` seconds, whichever comes first."""
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except TimeoutError:
        pass


async def serve_grpc(server: Any, host: str, port: int, lifetime: float, what: str,
                     started: Callable[[], None] | None = None) -> None:
    """Start a grpc.aio server (its handlers added) on host:port, call `started`, announce `what on
    HOST:PORT`, stop it."""
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    if started is not None:
        started()
    try:
        await announce_until_stopped(f"{what} on {host}:{bound}", lifetime)
    finally:
        await server.stop(1.0)


async def serve_aiohttp(runner: web.BaseRunner, host: str, port: int, lifetime: float, what: str) -> None:
    """Serve an aiohttp runner on a socket of its own, announce `what on http://HOST:PORT/`, clean it up."""
    from aiohttp import web

    sock = listening_socket(host, port)
    try:
        await runner.setup()
        try:
            await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
            await announce_until_stopped(f"{what} on http://{host}:{sock.getsockname()[1]}/", lifetime)
        finally:
            await runner.cleanup()
    finally:
        sock.close()


def die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGTERM the child when `parent` dies, however it dies (Linux only)."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            try:
                ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                pass
            if os.getppid() != parent:  # the parent died before prctl
                os.kill(os.getpid(), signal.SIGTERM)

    return setup
