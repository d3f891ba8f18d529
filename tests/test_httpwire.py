"""The --http port's own HTTP/1.1 protocol (adapters/httpwire.py): framing, order, limits, timers, drain.

Closure first: every request of the webhook and RabbitMQ corpora split at EVERY byte offset, and all of
them pipelined, must be answered byte for byte as when sent whole; seeded random bytes never crash the
protocol, never leave a connection without a deadline, never leak a place among the calls in
progress, and a good request is answered afterwards. Then each limit and timer, on real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hookrules.adapters.admission import Admission
from hookrules.adapters.httpreply import Reply
from hookrules.adapters.httpwire import MAX_HEAD, MAX_HEADERS, MAX_LINE, Request, Route, WireServer, listen_socket

from .wire_harness import (
    MAX_BODY,
    Transport,
    answers,
    closing_corpus,
    corpus,
    feed,
    http,
    run,
    status_of,
    turns,
    undated,
    wire_server,
)

REGISTER = json.dumps({"peer_addr": "127.0.0.1", "peer_port": 1, "username": "u", "password": "p", "mountpoint": "",
                       "client_id": "c", "clean_session": True}).encode()
HOOK = {"vernemq-hook": "auth_on_register"}
GOOD = http("POST", "/", HOOK, REGISTER)


# -- closure: every split, every pipeline ---------------------------------------------------------

def test_every_request_split_at_every_byte_offset_is_answered_as_sent_whole() -> None:
    async def check() -> int:
        server = wire_server()
        exchanges = 0
        for name, raw in {**corpus(), **closing_corpus()}.items():
            whole, transport, _ = await feed(server, [raw])
            expected = (undated(whole), transport.closed)
            assert whole, name
            for cut in range(1, len(raw)):
                split, transport, _ = await feed(server, [raw[:cut], raw[cut:]])
                assert (undated(split), transport.closed) == expected, (name, cut, split[:200])
                exchanges += 1
        assert server.admission.in_flight == 0
        return exchanges

    assert run(check()) > 10_000


def test_the_whole_corpus_pipelined_is_answered_in_order() -> None:
    """In one write, then cut into seeded random reads: the answers are each request's own, in order."""
    async def check() -> None:
        server = wire_server()
        requests = list(corpus().values()) + [closing_corpus()["connection close"]]
        alone = b""
        for raw in requests:
            answer, _, _ = await feed(server, [raw])
            alone += undated(answer)
        stream = b"".join(requests)
        together, transport, _ = await feed(server, [stream])
        assert undated(together) == alone
        assert transport.closed  # the last one said Connection: close
        rng = random.Random(11)
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
            parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
            pieces, _, _ = await feed(server, parts)
            assert undated(pieces) == alone
        assert server.admission.in_flight == 0

    run(check())


def _mutations(rng: random.Random, base: list[bytes], count: int) -> list[bytes]:
    junk = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b":", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 99\r\n",
            b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"0\r\n\r\n", b"ffffffff\r\n", b"HTTP/1.1",
            b"\xff", b"%", b"?", b"#", b"Upgrade: h2c\r\nConnection: upgrade\r\n", b"Content-Length: -1\r\n"]
    out = []
    for _ in range(count):
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(6)
            at = rng.randrange(len(raw) + 1)
            if kind == 0 and raw:
                raw[min(at, len(raw) - 1)] = rng.randrange(256)
            elif kind == 1:
                raw[at:at] = rng.choice(junk)
            elif kind == 2:
                del raw[at:at + rng.randint(1, 20)]
            elif kind == 3:
                raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
            elif kind == 4:
                raw = raw[:at]
            else:
                raw += rng.choice(base)
        out.append(bytes(raw))
    return out


def test_random_bytes_never_crash_hang_or_leak_and_a_good_request_follows() -> None:
    """Seeded mutations of the corpus (flipped, inserted, cut, joined), each in random reads. After each:
    no exception out of data_received, the connection is closed, idle, or has a deadline armed; closed
    connections hold no place among the calls in progress; a good request is answered 200 after."""
    async def check() -> None:
        rng = random.Random(20261205)
        server = wire_server(head_timeout=5.0, body_timeout=5.0, keepalive_timeout=20.0)
        base = list(corpus().values()) + list(closing_corpus().values())
        loop = asyncio.get_running_loop()
        for raw in _mutations(rng, base, 5000):
            cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(0, 3)))) if len(raw) > 1 else []
            parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
            out, transport, conn = await feed(server, parts)
            if not transport.closed:
                timer = conn._timer
                assert conn.state == 0 and not conn.pending or timer is not None, raw
                if timer is not None:
                    assert timer.when() <= loop.time() + 20.0 + 1, raw
                conn.connection_lost(None)  # the client goes away: nothing it began may hold a place
            assert server.admission.in_flight == 0, raw
            for status in re.findall(rb"HTTP/1\.[01] (\d\d\d) [A-Z]", out):  # never a 500
                assert int(status) < 500 or int(status) in (503, 505), (raw, out)
        good, transport, _ = await feed(server, [GOOD])
        assert status_of(good) == 200

    run(check())


def test_a_long_pipeline_in_large_reads_is_all_answered() -> None:
    """Reads of any size that begin and end inside different heads: no head is taken for one too large."""
    async def check() -> None:
        server = wire_server()
        stream = GOOD * 600
        for size in (len(GOOD) * 3 + 7, 40_000, 65_536, 262_144):
            out, transport, _ = await feed(server, [stream[i:i + size] for i in range(0, len(stream), size)])
            assert [s for s, _ in answers(out)] == [200] * 600 and not transport.closed, size

    run(check())


# -- admission ------------------------------------------------------------------------------------

def test_calls_received_together_are_counted_before_any_runs() -> None:
    """Pipelined on one connection, or one each on many connections in the same loop turn: with room
    for 2, the first 2 are answered and the rest refused 503 at once, each connection in its order."""
    async def check() -> None:
        server = wire_server(max_concurrent=2)
        conn_out, _, _ = await feed(server, [GOOD * 5])
        assert [s for s, _ in answers(conn_out)] == [200, 200, 503, 503, 503]
        transports = []
        for _ in range(5):
            transport = Transport()
            conn = server.protocol()
            conn.connection_made(transport)
            conn.data_received(GOOD)
            transports.append(transport)
        await turns()
        assert [status_of(bytes(t.out)) for t in transports] == [200, 200, 503, 503, 503]
        body = answers(bytes(transports[-1].out))[0][1]
        assert json.loads(body)["error"].startswith("overloaded")
        assert server.admission.in_flight == 0

    run(check())


def test_a_head_whose_body_is_still_coming_holds_its_place() -> None:
    async def check() -> None:
        server = wire_server(max_concurrent=1)
        slow = Transport()
        conn = server.protocol()
        conn.connection_made(slow)
        conn.data_received(GOOD[:-5])
        shed, _, _ = await feed(server, [GOOD])
        assert status_of(shed) == 503
        conn.data_received(GOOD[-5:])
        await turns()
        assert status_of(bytes(slow.out)) == 200
        passed, _, _ = await feed(server, [GOOD])
        assert status_of(passed) == 200 and server.admission.in_flight == 0

    run(check())


# -- limits: each one, at its edge ----------------------------------------------------------------

def _head_with(line_target: str = "/", headers: dict[str, str] | None = None) -> bytes:
    return http("POST", line_target, {**HOOK, **(headers or {})}, REGISTER)


HEAD_LIMITS = [
    # (name, request at the limit (served), request past it, status past it)
    ("request line", _head_with("/?" + "a" * (MAX_LINE - 2)), _head_with("/?" + "a" * (MAX_LINE - 1)), 400),
    ("header field", _head_with(headers={"X-A": "v" * (MAX_LINE - 3)}),
     _head_with(headers={"X-A": "v" * (MAX_LINE - 2)}), 431),
    ("header count", _head_with(headers={f"X-{i}": "v" for i in range(MAX_HEADERS - 3)}),  # + Host, hook, length
     _head_with(headers={f"X-{i}": "v" for i in range(MAX_HEADERS - 2)}), 431),
    ("head size", _head_with(headers={f"X-{i}": "v" * 8000 for i in range(3)}),
     _head_with(headers={f"X-{i}": "v" * 8000 for i in range(MAX_HEAD // 8000 + 1)}), 431),
]


@pytest.mark.parametrize("name,at_limit,past_limit,status", HEAD_LIMITS, ids=[h[0] for h in HEAD_LIMITS])
def test_each_head_limit_serves_at_its_edge_and_refuses_past_it_whatever_the_reads(
        name: str, at_limit: bytes, past_limit: bytes, status: int) -> None:
    async def check() -> None:
        faults: list[str] = []
        server = wire_server(faults=faults)
        for size in (len(past_limit), 1000, 1):  # one read, reads of 1000 bytes, and byte by byte
            parts = [past_limit[i:i + size] for i in range(0, len(past_limit), size)]
            out, transport, _ = await feed(server, parts)
            assert status_of(out) == status and transport.closed, (name, size, out[:100])
            served, transport, _ = await feed(server, [at_limit[i:i + size] for i in range(0, len(at_limit), size)])
            assert status_of(served) == 200 and not transport.closed, (name, size, served[:300])
        assert len(faults) == 3 and all("v" * 20 not in f and "a" * 20 not in f for f in faults)

    run(check())


def test_a_head_without_end_is_cut_at_the_size_limit_not_buffered() -> None:
    """A header value that never ends, read after read: refused once past MAX_HEAD (plus one read)."""
    async def check() -> None:
        server = wire_server()
        transport = Transport()
        conn = server.protocol()
        conn.connection_made(transport)
        conn.data_received(b"POST / HTTP/1.1\r\nX-A: ")
        sent = 0
        while not transport.closed and sent < 10 * MAX_HEAD:
            conn.data_received(b"v" * 1000)
            sent += 1000
            await turns(1)
        await turns()
        assert transport.closed and status_of(bytes(transport.out)) == 431
        assert sent <= MAX_HEAD + 2000

    run(check())


def test_a_body_over_the_limit_is_refused_on_its_length_before_it_is_sent() -> None:
    async def check() -> None:
        server = wire_server()
        head = http("POST", "/", HOOK).replace(b"Content-Length: 0", f"Content-Length: {MAX_BODY + 1}".encode())
        out, transport, _ = await feed(server, [head])
        assert status_of(out) == 413 and transport.closed
        assert json.loads(answers(out)[0][1]) == {"error": f"the body is over {MAX_BODY} bytes"}
        at_limit = http("POST", "/", HOOK, b" " * (MAX_BODY - len(REGISTER)) + REGISTER)
        served, _, _ = await feed(server, [at_limit])
        assert status_of(served) == 200

    run(check())


# -- the live port: timers, flow control, draining, on each event loop --------------------------

LOOPS = ["asyncio", "uvloop"]


def _on_loop(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    if loop == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


async def _live(**kwargs: Any) -> tuple[WireServer, int]:
    server = wire_server(**kwargs)
    sock = listen_socket("127.0.0.1", 0, reuse_port=False)
    await server.start(sock)
    return server, int(sock.getsockname()[1])


async def _read_all(reader: asyncio.StreamReader, limit: float = 10.0) -> bytes:
    out = b""
    async with asyncio.timeout(limit):
        while chunk := await reader.read(65536):
            out += chunk
    return out


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _exchange(port: int, data: bytes) -> bytes:
    """Send, then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await _read_all(reader)
    finally:
        await _close(writer)


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_heads_slow_bodies_and_idle_connections_are_closed_by_their_timers(loop: str) -> None:
    async def main() -> None:
        server, port = await _live(head_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)
        try:
            out = await _exchange(port, GOOD[:20])  # slowloris: a head that never ends
            assert status_of(out) == 408 and b"head did not arrive" in out
            out = await _exchange(port, GOOD[:-3])  # a body that never ends
            assert status_of(out) == 408 and json.loads(answers(out)[0][1])["error"].startswith("the body did not")
            out = await _exchange(port, GOOD)  # answered, then idle
            assert [s for s, _ in answers(out)] == [200]
            assert server.admission.in_flight == 0 and not server.connections
        finally:
            await server.stop(1.0)

    _on_loop(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_does_not_read_is_not_read_until_it_does(loop: str) -> None:
    """Pipelined requests from a client that reads no answer: once the answers fill the socket and the
    transport's buffer, the server stops reading; when the client reads, every request is answered."""
    async def main() -> None:
        server, port = await _live(max_concurrent=1_000_000)  # (one read may hold over 1000 requests)
        sock = socket.socket()
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, 4096)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            while not server.connections:
                await asyncio.sleep(0.01)
            conn = next(iter(server.connections))
            assert conn.transport is not None
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            conn.transport.set_write_buffer_limits(high=16384)
            stream = memoryview(GOOD * (65536 // len(GOOD) + 2))
            sent = stalled = 0
            while stalled < 30 and sent < 50_000_000:
                try:
                    sent += sock.send(stream[sent % len(GOOD):][:65536])
                    stalled = 0
                except BlockingIOError:
                    stalled += 1
                    await asyncio.sleep(0.01)
            assert sent < 50_000_000 and not conn.transport.is_reading()
            complete = sent // len(GOOD)
            received = b""
            async with asyncio.timeout(30):
                while received.count(b"HTTP/1.1 200 OK") < complete:
                    try:
                        chunk = sock.recv(1 << 20)
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                        continue
                    assert chunk, (complete, [m for m in re.findall(rb"HTTP/1.1 \d+ [^\r]*", received)
                                              if not m.startswith(b"HTTP/1.1 200")][:3])
                    received += chunk
            assert received.count(b"HTTP/1.1 ") == complete
            assert conn.transport.is_reading()
        finally:
            sock.close()
            await server.stop(1.0)

    _on_loop(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_stop_answers_what_was_received_then_closes(loop: str) -> None:
    """Draining: an idle connection closes at once; a request whose body is still coming is answered
    when it has come, with Connection: close; no new connection is taken."""
    async def main() -> None:
        server, port = await _live()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(GOOD)
        assert b"200 OK" in await idle_reader.readuntil(b'"ok"}')
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(GOOD[:-4])
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(server.stop(10.0))
        await asyncio.sleep(0.1)
        assert await _read_all(idle_reader) == b""
        busy_writer.write(GOOD[-4:])
        out = await _read_all(busy_reader)
        assert [s for s, _ in answers(out)] == [200] and b"Connection: close" in out
        await asyncio.wait_for(stopping, 10)
        await _close(idle_writer)
        await _close(busy_writer)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    _on_loop(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_burst_of_new_connections_past_the_limit_is_refused_at_once(loop: str) -> None:
    """30 clients connect at once to a port with room for 2 calls whose answers take 0.1 s each: the
    port accepts every waiting connection together (uvloop's own server took one per loop turn, so each
    late call was admitted alone and answered late), so most are refused 503 at once."""
    def slow(request: Request) -> Reply:
        time.sleep(0.1)
        return 200, "application/json", b"{}", None

    route = Route(slow, lambda request, bad: (bad.status, "application/json", b"{}", None), True)

    async def main() -> list[int]:
        server = WireServer(lambda request: route, Admission(2), max_body=MAX_BODY)
        sock = listen_socket("127.0.0.1", 0, reuse_port=False)
        await server.start(sock)
        port = int(sock.getsockname()[1])

        def call(_: int) -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
                client.sendall(GOOD)
                return status_of(client.recv(4096))

        try:
            with ThreadPoolExecutor(max_workers=30) as pool:
                return list(await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, call, i)
                                                  for i in range(30))))
        finally:
            await server.stop(1.0)

    statuses = _on_loop(loop, main)
    assert set(statuses) == {200, 503} and statuses.count(503) >= 10, statuses
