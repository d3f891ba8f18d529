from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .rabbitmq_node import RabbitNode, require_rabbitmq
from .support import BUNDLED_RULES, ServerProcess, Stubs, generate_stubs


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stubs]:
    """Client code generated from protos/ by protoc, as any ExHook client would have it."""
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A copy of the bundled rules/ that a test may edit."""
    target = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, target)
    return target


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(rules: Path, *extra: str) -> ServerProcess:
        server = ServerProcess(rules, *extra, log_path=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on the bundled rules, shared by a module's read-only tests."""
    tmp = tmp_path_factory.mktemp("bundled")
    rules = tmp / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    server = ServerProcess(rules, log_path=tmp / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq() -> float | None:
    """Debian's rabbitmq-server is installed: in CI as root it is installed now (never skipped in CI);
    outside CI a missing package skips with how to install it. Returns the install time, or None."""
    return require_rabbitmq()


@pytest.fixture
def start_rabbit(rabbitmq: float | None) -> Iterator[Callable[..., RabbitNode]]:
    """start_rabbit(auth_base_url, http_method="get", extra_conf=()) -> a booted throwaway node; every node
    started is stopped (no process, no file left) when the test ends, pass or fail."""
    nodes: list[RabbitNode] = []

    def start(auth_base_url: str, **kwargs: object) -> RabbitNode:
        node = RabbitNode(auth_base_url, **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        return node.__enter__()

    yield start
    for node in nodes:
        node.stop()
