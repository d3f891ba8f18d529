"""The ExHook message classes, compiled from protos/ at start-up rather than committed as generated code.

grpcio-tools' bundled protoc turns each proto into a descriptor set; protobuf builds the classes from
it in a private pool, so v2 and v3 live side by side and always match the installed runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..scratch import scratch_path

SERVICE = "HookProvider"
#: proto version -> (file in protos/, gRPC package)
VERSIONS = {"v2": ("exhook_v2.proto", "emqx.exhook.v2"), "v3": ("exhook_v3.proto", "emqx.exhook.v3")}


@dataclass(frozen=True)
class ExhookProto:
    version: str
    package: str
    #: message classes by short name (ClientAuthenticateRequest, ValuedResponse, ...)
    messages: dict[str, Any]
    #: RPC name -> (request class name, response class name)
    methods: dict[str, tuple[str, str]]

    @property
    def service_name(self) -> str:
        return f"{self.package}.{SERVICE}"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.messages[name]
        except KeyError:
            raise AttributeError(name) from None


def _descriptor_set(proto_dir: Path, filename: str) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc  # imported here: only start-up needs the compiler

    # protoc only writes to a path: a memory one, so start-up works on a read-only root with no writable /tmp
    with scratch_path("hookrules-exhook-descriptors") as out:
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", filename])
        if rc != 0:
            raise RuntimeError(f"protoc could not compile {proto_dir / filename} (exit {rc})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@cache
def load(version: str) -> ExhookProto:
    filename, package = VERSIONS[version]
    with resources.as_file(resources.files("hookrules.protos")) as proto_dir:
        fds = _descriptor_set(Path(proto_dir), filename)
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    classes = message_factory.GetMessageClassesForFiles([filename], pool)
    prefix = package + "."
    messages = {name[len(prefix):]: cls for name, cls in classes.items() if name.startswith(prefix)}
    service = pool.FindServiceByName(f"{package}.{SERVICE}")
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    return ExhookProto(version, package, messages, methods)
