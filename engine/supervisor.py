"""`hookrules serve --workers N`: one parent process, N worker processes serving the same ports.

Why processes: a rule runs on one event loop, under one GIL; a process uses one core. The parent
runs no rule and imports no grpc. It
- reserves the broker ports: a socket bound with SO_REUSEPORT (port 0 becomes a concrete port), kept
  open and never listening, so the port stays the group's while workers come and go; the workers bind
  the same port with SO_REUSEPORT and the kernel spreads new connections over them. A port already
  served by anything else is refused at start, as with one process;
- starts the workers (`python -m hookrules serve ...` with the same arguments, the concrete ports, a
  private metrics port and the hidden --supervised-worker flag), reads their start lines, and prints the one banner;
- starts again at once a worker that exits unasked (a crash, its watchdog's SIGKILL), with a growing
  pause when it dies while starting, and counts it;
- forwards SIGTERM/SIGINT (each worker drains as a single server does) and SIGHUP to every worker;
- serves the public --metrics address: /metrics merged from the workers' own (metricsmerge.py),
  /healthz, and /readyz (ready when every worker is);
- writes the decision log, whole lines from each worker's pipe (workerlink.py, with the ports' and the
  other links between the two sides).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import eventloop, metricsmerge, threadsched
from .config import Config, ConfigError, bind_problem, parse_address
from .lifecycle import serve_until_stopped
from .metricsmerge import Family, Totals
from .workerlink import FINAL_METRICS, LineRelay, hostport, reserve

log = logging.getLogger(__name__)

#: how often the parent keeps a copy of every worker's metrics (the counts a SIGKILL can lose)
SNAPSHOT_INTERVAL = 1.0
#: how long one fetch from a worker's private port may take before its last copy is used
FETCH_TIMEOUT = 2.0
#: how long a worker may take to report its ports
START_TIMEOUT = 120.0
#: a worker that dies within this long of reporting its ports (or before) died "at start"
STARTUP_WINDOW = 2.0
#: restarts after repeated deaths at start wait this long, doubling up to MAX_BACKOFF
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: after the grace period, how long the parent still waits for a draining worker before SIGKILL
#: (its own stop: the watchdog process, the decision log's last lines)
STOP_MARGIN = 5.0
#: the most of a worker's stdout kept (its last metrics are ~50 KB)
MAX_FINAL = 8 << 20
_LINE = re.compile(r"^hookrules: (?P<what>EMQX ExHook|VerneMQ webhooks|Prometheus metrics|serving)"
                   r"(?:.* on (?:https?://)?(?P<host>\[[^\]]*\]|[^\s/]+):(?P<port>\d+))?")


@dataclass
class Worker:
    """One worker slot: the process serving in it now, and what the parent knows of it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    generation: int = 0
    up: bool = False
    metrics_url: str = ""
    banner: dict[str, str] = field(default_factory=dict)
    snapshot: str | None = None  # the last /metrics text of the current process
    final: str | None = None  # what it wrote after its drain
    started: float = 0.0  # when it reported its ports
    restarts: int = 0
    failed_starts: int = 0  # deaths at start in a row


class Supervisor:
    def __init__(self, config: Config, argv: list[str]):
        self.config = config
        self.argv = _worker_argv(argv)
        self.workers = [Worker(i + 1) for i in range(config.workers)]
        self.retired: Totals = {}
        self.state = "starting"  # -> "ready" -> "draining"
        self.addresses: dict[str, str | None] = {"--grpc": config.grpc, "--http": config.http}
        self.reserved: list[socket.socket] = []
        self.relay: LineRelay | None = None
        self.session: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.metrics_port = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- start -------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        if not self.config.rules.is_dir():
            raise ConfigError(f"the rules directory {self.config.rules} does not exist or is not a directory (--rules)")
        for flag, address in list(self.addresses.items()):
            if address is not None:
                self.addresses[flag], held = reserve(address, flag)
                self.reserved += held
        target = self.config.decision_log
        if target is not None:
            try:
                fd = (sys.stdout.fileno() if target == "stdout"
                      else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
            except OSError as exc:
                raise ConfigError(f"cannot open the decision log {target}: {exc.strerror}") from None
            self.relay = LineRelay(fd)

    async def _spawn(self, worker: Worker) -> None:
        """Start a process in this slot; returns once it has reported its ports (or raises)."""
        extra = ["--supervised-worker", str(worker.index), "--metrics", "127.0.0.1:0"]
        for flag, address in self.addresses.items():
            extra += [flag, address or "off"]
        pass_fds: tuple[int, ...] = ()
        read_fd = None
        if self.relay is not None:
            read_fd, write_fd = os.pipe()
            pass_fds = (write_fd,)
            extra += ["--decision-log", f"/dev/fd/{write_fd}"]
        worker.generation += 1
        worker.up, worker.snapshot, worker.final, worker.banner = False, None, None, {}
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hookrules", *self.argv, *extra, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, pass_fds=pass_fds)
        finally:
            for fd in pass_fds:
                os.close(fd)
        if self.relay is not None and read_fd is not None:
            self.relay.follow(read_fd, str(worker.index))
        try:
            await asyncio.wait_for(self._read_banner(worker), START_TIMEOUT)
        except asyncio.TimeoutError:
            worker.process.kill()
            raise _WorkerFailed(worker, await worker.process.wait(),
                                f"did not report its ports within {START_TIMEOUT:g} s") from None
        worker.started = time.monotonic()

    async def _read_banner(self, worker: Worker) -> None:
        process = worker.process
        assert process is not None and process.stdout is not None
        wanted = {"Prometheus metrics"} | {what for what, flag in (("EMQX ExHook", "--grpc"),
                                                                    ("VerneMQ webhooks", "--http"))
                                           if self.addresses[flag] is not None}
        while not wanted <= worker.banner.keys():
            line = (await process.stdout.readline()).decode(errors="replace")
            if not line:
                code = await process.wait()
                raise _WorkerFailed(worker, code, f"{_exit_text(code)} while starting")
            match = _LINE.match(line)
            if match:
                worker.banner[match["what"]] = line.rstrip("\n")
                if match["what"] == "Prometheus metrics":
                    worker.metrics_url = f"http://127.0.0.1:{match['port']}"
        worker.up = True

    async def start(self) -> None:
        self._prepare()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        if self.config.metrics is not None:  # before any worker: a busy port is refused at once
            await self._start_metrics(self.config.metrics)
        # the first worker alone: a problem only a worker finds (a TLS file, a bad rule setting) is told once
        await self._spawn(self.workers[0])
        await asyncio.gather(*(self._spawn(w) for w in self.workers[1:]))
        first = self.workers[0].banner
        announce = _announcer(self.config)
        announce(f"{first['serving'].removeprefix('hookrules: ')} in {len(self.workers)} worker processes")
        if self.config.metrics is not None:
            host, _ = parse_address(self.config.metrics, "--metrics")
            announce(f"Prometheus metrics on http://{hostport(host, self.metrics_port)}/metrics "
                     "(and /healthz, /readyz)")
        for what in ("EMQX ExHook", "VerneMQ webhooks"):
            if what in first:
                announce(first[what].removeprefix("hookrules: "))
        self.state = "ready"
        self._tasks = [asyncio.create_task(self._supervise(w)) for w in self.workers]
        if self.config.metrics is not None:  # without a /metrics the copies serve nothing
            self._tasks.append(asyncio.create_task(self._snapshots()))

    async def _start_metrics(self, address: str) -> None:
        host, port = parse_address(address, "--metrics")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen for HTTP on {address} (--metrics): {bind_problem(exc)}") from None
        await web.SockSite(self.runner, sock).start()
        self.metrics_port = int(sock.getsockname()[1])

    # -- supervise ---------------------------------------------------------------------------------

    async def _supervise(self, worker: Worker) -> None:
        """Wait for the slot's process to exit; unless stopping, fold its counts and start another."""
        while True:
            process = worker.process
            assert process is not None
            code = await self._wait_exit(worker, process)
            lived = time.monotonic() - worker.started
            self._retire(worker)
            if self.state == "draining":
                return
            worker.restarts += 1
            # one that served a while is started again at once; one that keeps dying as it starts, after a pause
            worker.failed_starts = worker.failed_starts + 1 if lived < STARTUP_WINDOW else 0
            pause = 0.0 if worker.failed_starts <= 1 else min(FIRST_BACKOFF * 2 ** (worker.failed_starts - 2),
                                                              MAX_BACKOFF)
            log.error("worker %d (pid %d) %s after %.1f s; starting it again%s", worker.index, process.pid,
                      _exit_text(code), lived, f" in {pause:.1f} s" if pause else "")
            await asyncio.sleep(pause)
            while self.state != "draining":
                try:
                    await self._spawn(worker)
                    break
                except (_WorkerFailed, OSError) as exc:  # OSError: no process could be made (out of memory, fds)
                    self._retire(worker)
                    worker.failed_starts += 1
                    pause = min(FIRST_BACKOFF * 2 ** (worker.failed_starts - 1), MAX_BACKOFF)
                    log.error("worker %d failed to start (%s); trying again in %.1f s", worker.index, exc, pause)
                    await asyncio.sleep(pause)
            if self.state == "draining":
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGTERM)
                    continue  # let it drain and fold its counts
                return

    async def _wait_exit(self, worker: Worker, process: asyncio.subprocess.Process) -> int:
        """Read what the process writes after its banner (its last metrics, after its drain) until it
        exits; returns its exit status."""
        assert process.stdout is not None
        stdout = process.stdout
        chunks: list[bytes] = []

        async def read() -> None:
            held = 0
            while chunk := await stdout.read(1 << 16):
                chunks.append(chunk)
                held += len(chunk)
                while held > MAX_FINAL and len(chunks) > 1:  # a worker writes nothing else there; if it did
                    held -= len(chunks.pop(0))

        reader = asyncio.create_task(read())
        code = await process.wait()
        # its watchdog process shares its stdout for up to half a second more: end of file then
        await asyncio.wait([reader], timeout=1.0)
        reader.cancel()
        text = b"".join(chunks).decode(errors="replace")
        marker = FINAL_METRICS + "\n"
        if marker in text and code == 0:  # written whole: a worker killed while writing it has its snapshot
            worker.final = text.split(marker, 1)[1]
        return code

    def _retire(self, worker: Worker) -> None:
        """The slot's process has exited: its last counts join the retired totals, once."""
        text = worker.final if worker.final is not None else worker.snapshot
        if text is not None:
            log.debug("worker %d: its counts join the retired totals, from %s", worker.index,
                      "what it wrote after its drain" if worker.final is not None else "the last copy taken")
            try:
                self.retired = metricsmerge.fold(self.retired, metricsmerge.parse(text))
            except ValueError:
                log.exception("worker %d: its last metrics could not be read", worker.index)
        worker.up, worker.snapshot, worker.final = False, None, None
        worker.generation += 1  # a fetch still on its way belongs to the process that is gone

    async def _snapshots(self) -> None:
        """Every SNAPSHOT_INTERVAL, each worker's /metrics text: what a SIGKILL leaves to fold."""
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            await self._refresh()

    async def _refresh(self) -> None:
        await asyncio.gather(*(self._fetch_metrics(w) for w in self.workers if w.up))

    async def _fetch_metrics(self, worker: Worker) -> None:
        generation = worker.generation
        try:
            assert self.session is not None
            async with self.session.get(worker.metrics_url + "/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return  # its last copy stands
        if generation == worker.generation and worker.up:
            worker.snapshot = text

    # -- endpoints ---------------------------------------------------------------------------------

    def merged(self) -> list[Family]:
        """The group's families: the workers' merged, and the supervisor's own about its workers."""
        live = {str(w.index): metricsmerge.parse(w.snapshot) for w in self.workers if w.snapshot is not None}
        restarts = _family("hookrules_worker_restarts_total", "counter", "Worker processes started again after "
                           "they exited unasked (a crash, the watchdog's SIGKILL), by worker")
        calls = _family("hookrules_worker_calls_total", "counter", "Broker calls answered by each worker's "
                        "current process (starts again from 0 when the worker is restarted)")
        up = _family("hookrules_worker_up", "gauge", "1 for each worker process serving, 0 while it is restarted")
        for worker in self.workers:
            label = f'{{{metricsmerge.WORKER_LABEL}="{worker.index}"}}'
            restarts.samples[restarts.name + label] = float(worker.restarts)
            if str(worker.index) in live:
                calls.samples[calls.name + label] = metricsmerge.sample_total(
                    live[str(worker.index)], "hookrules_request_duration_seconds_count")
            up.samples[up.name + label] = 1.0 if worker.up else 0.0
        return [*metricsmerge.merge(self.retired, live), restarts, calls, up]

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._refresh()
        body = metricsmerge.render(self.merged())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _worker_ready(self, worker: Worker) -> dict[str, Any]:
        if not worker.up:
            return {"status": "not ready", "detail": "starting"}
        try:
            assert self.session is not None
            async with self.session.get(worker.metrics_url + "/readyz") as resp:
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            return {"status": "not ready", "detail": f"no answer ({type(exc).__name__})"}

    async def _readyz(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
        per_worker = {str(w.index): {**answer, "pid": w.process.pid if w.process is not None else None}
                      for w, answer in zip(self.workers, answers)}
        ready, detail, broken = readiness(self.state, per_worker)
        return web.json_response({"broken": broken, "workers": per_worker,
                                  "status": "ready" if ready else "not ready", "detail": detail},
                                 status=200 if ready else 503)

    # -- stop --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def forward(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)

    async def stop(self) -> None:
        self.state = "draining"
        self.forward(signal.SIGTERM)
        for task in self._tasks[len(self.workers):]:
            task.cancel()
        waits: list[asyncio.Future[Any]] = list(self._tasks[:len(self.workers)])
        if not waits:  # a failed start: whatever did start drains (it may have taken calls), and goes
            waits = [asyncio.ensure_future(self._wait_exit(w, w.process)) for w in self.workers
                     if w.process is not None and w.process.returncode is None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.config.grace_period + STOP_MARGIN)
            if pending:
                log.error("%d worker(s) still draining after the grace period; killing them", len(pending))
                self.forward(signal.SIGKILL)
                await asyncio.wait(pending, timeout=STOP_MARGIN)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()
        for sock in self.reserved:
            sock.close()
        if self.relay is not None:
            self.relay.close()
        log.info("stopped")

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.forward, signal.SIGHUP)
        await serve_until_stopped(self.start, self.stop, self._stop,
                                  lambda: log.info("stopping: every worker drains its calls in flight for up to %.0fs", self.config.grace_period))


class _WorkerFailed(Exception):
    def __init__(self, worker: Worker, code: int, what: str):
        super().__init__(f"worker {worker.index} {what}")
        self.code = code


def _family(name: str, kind: str, documentation: str) -> Family:
    """A family of the supervisor's own, `name` as written (a counter's with _total)."""
    return Family(name, kind, [f"# HELP {name} {documentation}", f"# TYPE {name} {kind}"])


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def readiness(state: str, workers: dict[str, dict[str, Any]]) -> tuple[bool, str, dict[str, str]]:
    """Ready when serving and every worker says ready; the detail names those that are not, and the
    broken hooks are every worker's (the worst state of each hook: the workers read one directory, so
    they differ only while a save is reaching them)."""
    from .metrics import BROKEN_STATES

    rank = {s: i for i, s in enumerate(BROKEN_STATES)}
    broken: dict[str, str] = {}
    for answer in workers.values():
        for hook, s in (answer.get("broken") or {}).items():
            if hook not in broken or rank.get(s, 99) < rank.get(broken[hook], 99):
                broken[hook] = s
    if state != "ready":
        return False, state, dict(sorted(broken.items()))
    waiting = [f"worker {i}: {a.get('detail', '')}" for i, a in workers.items() if a.get("status") != "ready"]
    if waiting:
        return False, "not every worker is ready: " + "; ".join(waiting), dict(sorted(broken.items()))
    details = {a.get("detail", "") for a in workers.values()}
    detail = f"{len(workers)} workers ready; " + " / ".join(sorted(details))
    return True, detail, dict(sorted(broken.items()))


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line a worker gets: the parent's, whose later flags override (the ports, --workers 1)."""
    return [*argv, "--workers", "1"]


def _announcer(config: Config) -> Callable[[str], None]:
    to_stderr = config.decision_log == "stdout"

    def announce(text: str) -> None:
        print(f"hookrules: {text}", file=sys.stderr if to_stderr else sys.stdout, flush=True)

    return announce


def supervise(config: Config, argv: list[str]) -> int:
    try:
        # what every worker would refuse, refused once here, before any starts
        eventloop.wanted()
        threadsched.wanted()
        asyncio.run(Supervisor(config, argv).serve())
    except ConfigError as exc:
        print(f"hookrules: error: {exc}", file=sys.stderr)
        return 2
    except _WorkerFailed as exc:
        print(f"hookrules: error: {exc} (its own message is above)", file=sys.stderr)
        return exc.code if exc.code > 0 else 1
    except OSError as exc:  # e.g. no process could be made for a worker
        print(f"hookrules: error: cannot start the workers: {exc}", file=sys.stderr)
        return 1
    return 0
