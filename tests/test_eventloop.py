"""The server's event loop (eventloop.py): uvloop by default, asyncio's on request, and every front-end
working on each, grpc.aio's ExHook included, through a whole life: start, calls, SIGHUP, drain."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import pytest
import uvloop

from hookrules import eventloop
from hookrules.config import ConfigError

from . import broker_calls as call
from .support import BUNDLED_RULES, ServerProcess, Stubs, refused_start, wait_for


@pytest.mark.parametrize(("choice", "loop_class"), [
    ("", uvloop.Loop), ("uvloop", uvloop.Loop), (" UVLOOP ", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop),
])
def test_the_loop_chosen(choice: str, loop_class: type) -> None:
    name, factory = eventloop.loop_factory(choice)
    loop = factory()
    try:
        assert isinstance(loop, loop_class)
        assert name == (choice.strip().lower() or "uvloop")
    finally:
        loop.close()


def test_the_environment_chooses_when_no_choice_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.loop_factory()[0] == "asyncio"
    monkeypatch.delenv(eventloop.ENV)
    assert eventloop.loop_factory()[0] == "uvloop"


def test_without_uvloop_the_default_falls_back_and_an_explicit_choice_is_refused(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    monkeypatch.delenv(eventloop.ENV, raising=False)
    with caplog.at_level("WARNING", logger="hookrules.eventloop"):
        assert eventloop.loop_factory()[0] == "asyncio"
    assert "uvloop is not installed" in caplog.text
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["tokio", "uv loop", "asyncio2", "x" * 100])
def test_an_unknown_loop_is_refused_and_main_is_never_left_unawaited(choice: str) -> None:
    async def main() -> None:
        raise AssertionError("must not run")

    coro = main()
    with pytest.raises(ConfigError, match="the event loop is one of asyncio, uvloop"):
        eventloop.run(coro, choice)
    assert coro.cr_frame is None  # closed: no "never awaited" warning (filterwarnings=error would say)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_an_unknown_loop(workers: str) -> None:
    """With --workers, the supervisor refuses it once, before any worker starts."""
    said = refused_start("--workers", workers, **{eventloop.ENV: "tokio"})
    assert said.count("HOOKRULES_LOOP='tokio': the event loop is one of asyncio, uvloop") == 1, said


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_every_front_end_on_each_loop(loop: str, tmp_path: Path, stubs: dict[str, Stubs],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ExHook (grpc.aio, v2 and v3), VerneMQ, RabbitMQ and /metrics answer from the rules on this loop; a
    rule edited and SIGHUP reach the next call; SIGTERM drains and exits 0."""
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    monkeypatch.setenv(eventloop.ENV, loop)
    server = ServerProcess(rules, log_path=tmp_path / "server.log")
    try:
        assert f"event loop: {loop}" in server.log()
        for version in ("v2", "v3"):
            assert call.emqx_authenticate(server, stubs[version], "c1", "gooduser", "pw") is True
            assert call.emqx_authenticate(server, stubs[version], "c1", "baduser", "pw") is False
        assert call.vernemq_register(server, "c1", "gooduser", "pw") == {"result": "ok"}
        assert call.vernemq_register(server, "c1", "baduser", "pw") != {"result": "ok"}
        assert call.rabbitmq_user(server, "c1", "gooduser", "pw") == "allow"
        assert "hookrules_decisions_total" in server.metrics_text()
        (rules / "authenticate.star").write_text('deny("closed")\n')
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: call.vernemq_register(server, "c1", "gooduser", "pw")
                        == {"result": {"error": "closed"}})
        assert call.emqx_authenticate(server, stubs["v3"], "c1", "gooduser", "pw") is False
    finally:
        rc = server.stop()
    log = server.log_path.read_text(errors="replace")
    assert rc == 0, log
    assert "Traceback" not in log
