"""What a user writes instead of hookrules for VerneMQ webhooks, on FastAPI under uvicorn.

The way FastAPI's tutorial builds an endpoint: `app = FastAPI()`, `@app.post("/")` on an async function
taking the hook from its header (`Annotated[str, Header()]`) and the JSON body as a dict
(`Annotated[dict[str, Any], Body()]`), returning a dict that FastAPI turns into the JSON reply; served
by uvicorn as `fastapi run` / `uvicorn app:app` serve it (uvicorn picks uvloop and httptools when they are
installed, as `pip install "fastapi[standard]"` or `uvicorn[standard]` installs them: the banner says
which loop and HTTP parser run). The bundled rules are coded in Python, in bench/peer_policy.py
(`webhook_reply`, shared with bench/peer_aiohttp.py).

Its replies are those of `hookrules serve --rules rules` for the same requests: peers_bench.py checks
that at start, before it measures anything. Needs the `bench` extra (`pip install -e '.[bench]'`).

It prints where it listens (`fastapi: VerneMQ webhooks (FastAPI on uvicorn, ...) on http://HOST:PORT/`),
stops on SIGTERM/SIGINT (uvicorn's own handlers), and in any case after --lifetime seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from typing import Annotated, Any

import uvicorn
from uvicorn._compat import asyncio_run
from fastapi import Body, FastAPI, Header

import serving
from peer_policy import webhook_reply

app = FastAPI()


@app.post("/")
async def webhook(vernemq_hook: Annotated[str, Header()], body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return webhook_reply(vernemq_hook, body)


def http_parser() -> str:
    """What uvicorn's http="auto" picks: httptools when installed, else h11."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


async def serve(server: uvicorn.Server, sock: socket.socket, host: str, lifetime: float) -> None:
    async def banner_then_lifetime() -> None:
        for _ in range(600):  # bounded: up to 60 s for uvicorn to start
            if server.started:
                break
            await asyncio.sleep(0.1)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print(f"fastapi: VerneMQ webhooks (FastAPI on uvicorn, {loop} loop, {http_parser()}, hand-written rules) "
              f"on http://{host}:{sock.getsockname()[1]}/", flush=True)
        await asyncio.sleep(lifetime)
        server.should_exit = True

    timer = asyncio.create_task(banner_then_lifetime())
    try:
        await server.serve(sockets=[sock])
    finally:
        timer.cancel()


def main() -> None:
    args = serving.server_args(__doc__).parse_args()
    sock = serving.listening_socket(args.host, args.port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    try:
        # as uvicorn.run runs it: loop="auto" and http="auto" (uvloop and httptools when installed)
        asyncio_run(serve(server, sock, args.host, args.lifetime), loop_factory=config.get_loop_factory())
    finally:
        sock.close()


if __name__ == "__main__":
    main()
