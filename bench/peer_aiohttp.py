"""What a user writes instead of hookrules for VerneMQ webhooks, on aiohttp: a web.Application with a route.

The way aiohttp's documentation builds a server: `web.Application()`, `app.router.add_post("/", ...)`,
a handler that reads `await request.json()` and answers `web.json_response(...)`, run by an AppRunner
(what `web.run_app` runs) on a socket of its own, with the bundled rules coded in Python
(bench/peer_policy.py, shared with the FastAPI peer: `webhook_reply`); no vernemq-hook header: 400.

Its replies are those of `hookrules serve --rules rules` for the same requests: peers_bench.py checks
that at start, request by request, before it measures anything. The floor of what a user would write
(no metrics, no sandbox, no hot reload, no body limits beyond aiohttp's default): hookrules' goal is at
least 1.0x its throughput at one worker.

It prints where it listens (`aiohttp: VerneMQ webhooks (web.Application, hand-written rules) on
http://HOST:PORT/`), stops on SIGTERM/SIGINT, and in any case after --lifetime seconds (bench/serving.py).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

import serving
from peer_policy import webhook_reply


async def webhook(request: web.Request) -> web.Response:
    hook = request.headers.get("vernemq-hook")
    if hook is None:
        return web.json_response({"error": "the vernemq-hook header is missing"}, status=400)
    body = await request.json()
    return web.json_response(webhook_reply(hook, body))


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/", webhook)
    return app


async def serve(host: str, port: int, lifetime: float) -> None:
    runner = web.AppRunner(make_app(), handle_signals=False, access_log=None)
    await serving.serve_aiohttp(runner, host, port, lifetime,
                                "aiohttp: VerneMQ webhooks (web.Application, hand-written rules)")


def main() -> None:
    args = serving.server_args(__doc__).parse_args()
    asyncio.run(serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
