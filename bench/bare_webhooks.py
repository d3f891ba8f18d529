"""A bare VerneMQ webhook (or RabbitMQ HTTP auth) endpoint with a constant reply: the floor hookrules is
measured against.

It is built on the HTTP stack hookrules used until 2026-12-05 (aiohttp's low-level `web.Server` with a
request factory setting client_max_size, auto_decompress=False, a `ServerRunner`, a `SockSite` on a
socket of its own with the same backlog). hookrules' --http port now runs on its own protocol over
httptools (engine/adapters/httpwire.py), cheaper than this floor's HTTP, so hookrules/bare no longer
isolates the price of the header -> JSON -> Event -> rule -> reply path: it is the aiohttp floor the
peers (bench/peer_aiohttp.py) stand on:

* every POST: the body is read (aiohttp reads or drains it on a keep-alive connection anyway), then
  the same reply for all, `{"result": "ok"}`, built by `web.json_response` as hookrules builds its own;
* anything else: 405, as hookrules.

With --parse it is the floor of any webhook server that reads its requests: it also parses the
body with json.loads and refuses one that is not a JSON object (400), and still answers the same
constant reply. hookrules/parse is the price of the event, the rule and the reply alone.

With --rabbitmq it stands in for hookrules' /rabbitmq/{user,vhost,resource,topic} checks instead: every
request, whatever its method and path, has its body read and is answered `allow` as text/plain (built
as adapters/rabbitmq_http.py builds its answers). With --parse as well, the form body is also decoded and
parsed with urllib.parse.parse_qsl (the parser hookrules' adapter uses); one that cannot be is answered
`deny` with a 400.

Run by bench/webhooks_bench.py; it prints where it listens the way hookrules does
(`bare: VerneMQ webhooks (constant replies) on http://127.0.0.1:PORT/`, or `RabbitMQ HTTP auth` with
--rabbitmq), stops on SIGTERM/SIGINT, and in any case after --lifetime seconds, so it can never outlive a
benchmark for long.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qsl

from collections.abc import Callable
from typing import Any

from aiohttp import web
from hookrules.adapters.webhooks import DEFAULT_MAX_BODY

import serving

#: the one reply, to every POST whatever its hook: what an allow-all endpoint answers
REPLY = {"result": "ok"}
#: the one RabbitMQ answer: what an allow-all rabbitmq_auth_backend_http endpoint answers
RABBITMQ_ALLOW = b"allow"


def body_limited_requests(max_body: int) -> Callable[..., web.BaseRequest]:
    """The request factory web.Server documents: where a low-level request learns its body limit."""

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=max_body)

    return make


def _text(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="text/plain", charset="utf-8")


def rabbitmq_server(parse: bool = False) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.Response:
        raw = await request.read()
        if parse:
            try:
                parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
            except (UnicodeDecodeError, ValueError):
                return _text(b"deny", 400)
        return _text(RABBITMQ_ALLOW)

    return web.Server(handle, request_factory=body_limited_requests(DEFAULT_MAX_BODY), access_log=None,
                      auto_decompress=False)


def server(parse: bool = False) -> web.Server:
    async def handle(request: web.BaseRequest) -> web.Response:
        if request.method != "POST":
            return web.json_response({"error": f"VerneMQ webhooks are POST requests, not {request.method}"}, status=405)
        raw = await request.read()
        if parse:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return web.json_response({"error": "the body must be a JSON object"}, status=400)
        return web.json_response(REPLY)

    return web.Server(handle, request_factory=body_limited_requests(DEFAULT_MAX_BODY), access_log=None,
                      auto_decompress=False)


async def serve(host: str, port: int, lifetime: float, parse: bool, rabbitmq: bool = False) -> None:
    runner = web.ServerRunner(rabbitmq_server(parse) if rabbitmq else server(parse), handle_signals=False)
    name, what = ("parse", "parsed, constant replies") if parse else ("bare", "constant replies")
    kind = "RabbitMQ HTTP auth" if rabbitmq else "VerneMQ webhooks"
    await serving.serve_aiohttp(runner, host, port, lifetime, f"{name}: {kind} ({what})")


def main() -> None:
    parser = serving.server_args(__doc__)
    parser.add_argument("--parse", action="store_true", help="also parse each body (a JSON object, or with "
                                                               "--rabbitmq a form)")
    parser.add_argument("--rabbitmq", action="store_true", help="answer `allow` as text/plain to every request, as "
                                                                "an allow-all RabbitMQ HTTP auth backend")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.lifetime, args.parse, args.rabbitmq))


if __name__ == "__main__":
    main()
