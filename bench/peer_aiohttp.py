"""What a user writes instead of hookrules for VerneMQ webhooks, on aiohttp: a web.Application with a route.

The way aiohttp's documentation builds a server: `web.Application()`, `app.router.add_post("/", ...)`,
a handler that reads `await request.json()` and answers `web.json_response(...)`, run by an AppRunner
(what `web.run_app` runs) on a socket of its own, with the bundled rules coded in Python:

* auth_on_register(_m5): rules/authenticate.star: refuse the user "baduser", let everyone else in;
* auth_on_subscribe(_m5), auth_on_publish(_m5): rules/authorize.star, once per topic for a
  subscription: devices/<id>/... belongs to client <id> (by name or by wildcard; a client named "+"
  or "#" owns nothing), nobody publishes to $SYS/...; a subscription with a refused topic is answered
  with the whole topic list, refused topics at QoS 128 (0x87, and under "modifiers", for MQTT 5);
* any other hook: {"result": "next"} (no opinion), and no vernemq-hook header: 400.

Its replies are those of `hookrules serve --rules rules` for the same requests: peers_bench.py checks
that at start, request by request, before it measures anything. The floor of what a user would write
(no metrics, no sandbox, no hot reload, no body limits beyond aiohttp's default): hookrules' goal is at
least 1.0x its throughput at one worker.

It prints where it listens (`aiohttp: VerneMQ webhooks (web.Application, hand-written rules) on
http://HOST:PORT/`), stops on SIGTERM/SIGINT, and in any case after --lifetime seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import Any

from aiohttp import web

OK = {"result": "ok"}
NEXT = {"result": "next"}


def authorize(client_id: str, publish: bool, topic: str) -> str | None:
    """rules/authorize.star: None to allow, else the reason to refuse."""
    words = topic.split("/")
    if words[0] == "devices" and (len(words) < 2 or words[1] != client_id or client_id in ("+", "#")):
        return "devices/<id>/ belongs to client <id>"
    if publish and topic.startswith("$SYS/"):
        return "$SYS topics are read-only"
    return None


def answer(hook: str, body: dict[str, Any]) -> dict[str, Any]:
    if hook in ("auth_on_register", "auth_on_register_m5"):
        return {"result": {"error": "user is banned"}} if body.get("username") == "baduser" else OK
    if hook in ("auth_on_publish", "auth_on_publish_m5"):
        reason = authorize(body.get("client_id") or "", True, body["topic"])
        return OK if reason is None else {"result": {"error": reason}}
    if hook in ("auth_on_subscribe", "auth_on_subscribe_m5"):
        client_id = body.get("client_id") or ""
        topics = body["topics"]
        refused = [authorize(client_id, False, t["topic"]) is not None for t in topics]
        if not any(refused):
            return OK
        m5 = hook.endswith("_m5")
        granted = [{"topic": t["topic"], "qos": (135 if m5 else 128) if no else t.get("qos", 0)}
                   for t, no in zip(topics, refused)]
        return {"result": "ok", "modifiers": {"topics": granted}} if m5 else {"result": "ok", "topics": granted}
    return NEXT


async def webhook(request: web.Request) -> web.Response:
    hook = request.headers.get("vernemq-hook")
    if hook is None:
        return web.json_response({"error": "the vernemq-hook header is missing"}, status=400)
    body = await request.json()
    return web.json_response(answer(hook, body))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/", webhook)
    return app


async def serve(host: str, port: int, lifetime: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    runner = web.AppRunner(make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        print(f"aiohttp: VerneMQ webhooks (web.Application, hand-written rules) on "
              f"http://{host}:{sock.getsockname()[1]}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await asyncio.wait_for(stop.wait(), lifetime)
        except TimeoutError:
            pass
    finally:
        await runner.cleanup()
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds (default 900)")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
