"""What a user writes instead of hookrules for EMQX ExHook: a hand-written grpc.aio servicer, rules in Python.

The seed's way, as EMQX's ExHook documentation and its Python example show it: compile the proto with
grpcio-tools into `exhook_v3_pb2` / `exhook_v3_pb2_grpc` (done here at start-up, in a temporary
directory, so no generated code is committed), subclass the generated `HookProviderServicer`, register
it with `add_HookProviderServicer_to_server` on a `grpc.aio.server`, and code the policy in the methods:

* OnProviderLoaded: the hooks (and message.publish's topics) hookrules advertises for rules/;
* OnClientAuthenticate: rules/authenticate.star, OnClientAuthorize: rules/authorize.star, both as
  bench/peer_policy.py codes them for the webhook peers too (`authenticate`, `authorize`);
* OnMessagePublish: rules/message.publish.star: only t/# and sensors/# (other topics: IGNORE, as
  hookrules answers a message its rule's TOPICS filter out), an empty sensors/# reading is dropped
  (allow_publish=false), t/demo's payload is replaced; every other message passes unchanged;
* every other RPC: EmptySuccess.

Its replies are those of `hookrules serve --rules rules` for the same requests: peers_bench.py checks
that at start, request by request, before it measures anything. No metrics, no deadline handling, no
sandbox, no hot reload, no failure policy: the least a user would write for the job, and what
hookrules' goal (at one worker, at least 0.9x its throughput) is measured against.

`--tuned` runs it as hookrules runs grpc.aio (uvloop, and every thread but the loop's at SCHED_BATCH):
not what a user writes, and not what peers_bench.py measures, but what shows the engine's own price.

It prints where it listens (`peer: EMQX ExHook (emqx.exhook.v3, hand-written servicer) on HOST:PORT`),
stops on SIGTERM/SIGINT, and in any case after --lifetime seconds (bench/serving.py).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

import serving
from peer_policy import authenticate, authorize

PROTO = "exhook_v3.proto"


def generate_stubs(out: Path) -> tuple[ModuleType, ModuleType]:
    """`python -m grpc_tools.protoc --python_out --grpc_python_out`, as a user runs it once, then the imports."""
    from grpc_tools import protoc

    with resources.as_file(resources.files("hookrules.protos")) as proto_dir:
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO])
    if rc != 0:
        raise RuntimeError(f"protoc could not compile {PROTO} (exit {rc})")
    sys.path.insert(0, str(out))
    return importlib.import_module("exhook_v3_pb2"), importlib.import_module("exhook_v3_pb2_grpc")


def make_servicer(pb2: ModuleType, pb2_grpc: ModuleType) -> Any:
    VR = pb2.ValuedResponse
    ALLOW = VR(type=VR.STOP_AND_RETURN, bool_result=True)
    DENY = VR(type=VR.STOP_AND_RETURN, bool_result=False)
    IGNORE = VR(type=VR.IGNORE)
    EMPTY = pb2.EmptySuccess()
    PUBLISH = pb2.ClientAuthorizeRequest.PUBLISH

    class HookProvider(pb2_grpc.HookProviderServicer):  # type: ignore[misc,name-defined]
        async def OnProviderLoaded(self, request: Any, context: Any) -> Any:
            return pb2.LoadedResponse(hooks=[
                pb2.HookSpec(name="client.authenticate"),
                pb2.HookSpec(name="client.authorize"),
                pb2.HookSpec(name="message.publish", topics=["t/#", "sensors/#"]),
            ])

        async def OnProviderUnloaded(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientAuthenticate(self, request: Any, context: Any) -> Any:
            return ALLOW if authenticate(request.clientinfo.username) is None else DENY

        async def OnClientAuthorize(self, request: Any, context: Any) -> Any:
            reason = authorize(request.clientinfo.clientid, request.type == PUBLISH, request.topic)
            return ALLOW if reason is None else DENY

        async def OnMessagePublish(self, request: Any, context: Any) -> Any:
            msg = request.message
            topic = msg.topic
            if not (topic.startswith("t/") or topic.startswith("sensors/") or topic in ("t", "sensors")):
                return IGNORE  # not in TOPICS: EMQX would not have sent it
            if (topic == "sensors" or topic.startswith("sensors/")) and msg.payload == b"":
                msg.headers["allow_publish"] = "false"
            elif topic == "t/demo":
                msg.payload = b"hardcode payload by hookrules :)"
            return VR(type=VR.STOP_AND_RETURN, message=msg)

        async def OnClientConnect(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientConnack(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientConnected(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientDisconnected(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientSubscribe(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnClientUnsubscribe(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionCreated(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionSubscribed(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionUnsubscribed(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionResumed(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionDiscarded(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionTakenover(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnSessionTerminated(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnMessageDelivered(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnMessageDropped(self, request: Any, context: Any) -> Any:
            return EMPTY

        async def OnMessageAcked(self, request: Any, context: Any) -> Any:
            return EMPTY

    return HookProvider()


async def serve(host: str, port: int, lifetime: float, tuned: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="hookrules-peer-stubs-") as tmp:
        pb2, pb2_grpc = generate_stubs(Path(tmp))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # as hookrules' server.py (one process)
    pb2_grpc.add_HookProviderServicer_to_server(make_servicer(pb2, pb2_grpc), server)
    if not tuned:
        await serving.serve_grpc(server, host, port, lifetime,
                                 "peer: EMQX ExHook (emqx.exhook.v3, hand-written servicer)")
        return
    from hookrules.threadsched import HelperThreads  # grpc-core's threads at SCHED_BATCH, as hookrules does

    threads = HelperThreads("batch")
    try:
        await serving.serve_grpc(server, host, port, lifetime, "peer: EMQX ExHook (emqx.exhook.v3, hand-written "
                                 "servicer, uvloop, helper threads at SCHED_BATCH)",
                                 started=lambda: threads.start(asyncio.get_running_loop()))
    finally:
        threads.stop()


def main() -> None:
    parser = serving.server_args(__doc__)
    parser.add_argument("--tuned", action="store_true", help="run as hookrules runs grpc.aio: uvloop, and every "
                        "thread but the loop's at SCHED_BATCH (not what a user writes; for comparison)")
    args = parser.parse_args()
    if args.tuned:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.lifetime, tuned=True))
    else:
        asyncio.run(serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
