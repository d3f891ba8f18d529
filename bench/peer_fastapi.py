"""What a user writes instead of hookrules for VerneMQ webhooks, on FastAPI under uvicorn.

The way FastAPI's tutorial builds an endpoint: `app = FastAPI()`, `@app.post("/")` on an async function
taking the hook from its header (`Annotated[str, Header()]`) and the JSON body as a dict
(`Annotated[dict[str, Any], Body()]`), returning a dict that FastAPI turns into the JSON reply; served
by uvicorn as `fastapi run` / `uvicorn app:app` serve it (uvicorn picks uvloop and httptools when they are
installed, as `pip install "fastapi[standard]"` or `uvicorn[standard]` installs them: the banner says
which loop and HTTP parser run). The bundled rules are coded in Python, as in bench/peer_aiohttp.py
(its `answer` is the same function, repeated here so each peer stands alone):

* auth_on_register(_m5): rules/authenticate.star: refuse the user "baduser", let everyone else in;
* auth_on_subscribe(_m5), auth_on_publish(_m5): rules/authorize.star, once per topic for a
  subscription; a subscription with a refused topic is answered with the whole topic list, refused
  topics at QoS 128 (0x87, and under "modifiers", for MQTT 5);
* any other hook: {"result": "next"}.

Its replies are those of `hookrules serve --rules rules` for the same requests: peers_bench.py checks
that at start, before it measures anything. Needs the `bench` extra (`pip install -e '.[bench]'`).

It prints where it listens (`fastapi: VerneMQ webhooks (FastAPI on uvicorn, ...) on http://HOST:PORT/`),
stops on SIGTERM/SIGINT (uvicorn's own handlers), and in any case after --lifetime seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
from typing import Annotated, Any

import uvicorn
from uvicorn._compat import asyncio_run
from fastapi import Body, FastAPI, Header

OK = {"result": "ok"}
NEXT = {"result": "next"}

app = FastAPI()


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


@app.post("/")
async def webhook(vernemq_hook: Annotated[str, Header()], body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return answer(vernemq_hook, body)


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds (default 900)")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    try:
        # as uvicorn.run runs it: loop="auto" and http="auto" (uvloop and httptools when installed)
        asyncio_run(serve(server, sock, args.host, args.lifetime), loop_factory=config.get_loop_factory())
    finally:
        sock.close()


if __name__ == "__main__":
    main()
