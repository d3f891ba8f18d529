"""Server(config): puts the parts together and owns their lifecycle (uvicorn's Server, in small).

Start: load the rules, start watching them, open the metrics/health endpoint, then the broker ports
(EMQX ExHook over gRPC, VerneMQ webhooks over HTTP), all on one asyncio loop; then report ready
(grpc.health.v1 SERVING, /readyz 200).
SIGTERM/SIGINT: report not ready, stop accepting, give calls in flight the grace period, exit 0.
SIGHUP: re-read the config file's rule settings and recompile every rule, library and data file.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .adapters.emqx_http import PREFIX as EMQX_HTTP_PREFIX
from .adapters.emqx_http_route import EmqxHttpRoute
from .adapters.emqx_http_service import EmqxHttpService
from .adapters.exhook import ExhookAdapter
from .adapters.rabbitmq import PREFIX as RABBITMQ_PREFIX
from .adapters.httpwire import WireServer, listen_socket
from .adapters.rabbitmq_http import RabbitMQAdapter
from .adapters.webhooks import WebhookAdapter
from .config import Config, ConfigError, bind_problem, build_config, parse_address, read_config_file
from .decisionlog import DecisionLog
from .engine import Engine
from . import eventloop, metrics
from .health import QuietProtocolErrors, metrics_app, sync_health_handlers
from .hooks import AUTHENTICATION_HOOKS, RULE_SUFFIX
from .lifecycle import serve_until_stopped
from .reload import Reloader
from .ruleset import DATA_DEP, RuleSet
from .shadow import DEFAULT_SAMPLE, Shadow
from .threadsched import HelperThreads
from .watchdog import Watchdog

log = logging.getLogger(__name__)

#: a draining gRPC server stops once no call has come or been answered for this long (or at the grace)
DRAIN_QUIET = 0.2
DRAIN_POLL = 0.02
#: what grpc.aio's own stop() then gives the calls it still holds (health Watch streams never end)
DRAIN_STOP_GRACE = 0.5


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bindable(host: str, port: int, address: str, flag: str) -> None:
    """Bind (and release) every address `host` stands for, as grpc-core will: its own failure is a raw
    `E1204 ... add_port.cc` line on stderr and a bare RuntimeError, so a port in use is told here first.
    Port 0 always binds."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen for gRPC on {address} ({flag}): {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc-core sets it (and [::] dual-stack)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise ConfigError(f"cannot listen for gRPC on {address} ({flag}): {bind_problem(exc)}") from None


def _data_state(ruleset: RuleSet) -> str | None:
    """What the failed data files mean for the rules that read `data`: data_missing when one has no
    earlier version (what reads it fails), stale when each kept its older contents, None when none
    failed. Any rule that reads `data` may read any file, so each failure counts for all of them."""
    data = ruleset.data
    if not data.failed:
        return None
    kept = {f.path for f in data.files.values()}
    return "stale" if all(path in kept for path in data.failed) else "data_missing"


def refusing_authentication(engine: Engine) -> list[str]:
    """The authentication hooks that refuse every client: answered by a rule file that never loaded,
    under a failure policy of deny. Every one is asked, under its own policy (Engine.policy): one
    answered by a broken file it falls back to (auth_on_register_m5 by auth_on_register.star) refuses
    its clients as surely as the file's own hook, whatever that hook's policy is."""
    closed = []
    for hook in sorted(AUTHENTICATION_HOOKS):
        source = engine.never_loaded(hook)
        if source is not None and engine.policy(hook) == "deny":
            closed.append(hook if source == hook else f"{hook} (answered by {source}{RULE_SUFFIX})")
    return closed


def announce(text: str, to_stderr: bool = False) -> None:
    """Where the server listens goes to stdout, so scripts (and tests) can read the ports; to stderr
    when the decision log has stdout, which must stay pure JSON lines."""
    print(f"hookrules: {text}", file=sys.stderr if to_stderr else sys.stdout, flush=True)


class Server:
    def __init__(self, config: Config):
        self.config = config
        self.helper_threads = HelperThreads()  # HOOKRULES_THREADS, checked before anything opens
        self.decision_log = None
        if config.decision_log is not None:
            try:
                self.decision_log = DecisionLog.open(config.decision_log, sample=config.decision_log_sample,
                                                     secrets=config.decision_log_secrets)
            except OSError as exc:
                raise ConfigError(f"cannot open the decision log {config.decision_log}: {exc.strerror}") from None
        self.engine = Engine(policies=config.failure_policy, limits=config.limits, decision_log=self.decision_log)
        self.reloader = Reloader(config.rules, self.engine, polling=config.polling)
        self.exhook = ExhookAdapter(self.engine, max_concurrent=config.max_concurrent_calls)
        self.webhooks = WebhookAdapter(self.engine, base64=config.vernemq_base64, max_body=config.http_max_body,
                                       max_concurrent=config.max_concurrent_calls)
        # RabbitMQ's checks share the --http port, and its limit on calls in progress, with VerneMQ's
        self.rabbitmq = RabbitMQAdapter(self.engine, admission=self.webhooks.admission)
        # so do EMQX's HTTP authenticator and authorizer (/emqx/authn, /emqx/authz)
        self.emqx_http = EmqxHttpService(self.engine)
        self.reloader.listeners.append(self.exhook.rules_changed)
        self.shadow: Shadow | None = None
        if config.shadow is not None:  # run beside the live rules, after each answer (shadow.py)
            self.shadow = Shadow(config.shadow, limits=config.shadow_limits, policies=config.failure_policy,
                                 sample=config.shadow_sample if config.shadow_sample is not None else DEFAULT_SAMPLE,
                                 decision_log=self.decision_log, polling=config.polling)
            self.engine.shadow = self.shadow
        metrics.RULE_BROKEN.watch(self.broken_rules)
        metrics.HOOK_RULE.watch(self.answered_hooks)
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_health = grpc_health.aio.HealthServicer()
        self.runners: list[web.BaseRunner] = []
        self.wire: WireServer | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self.state = "starting"  # -> "ready" -> "draining"
        #: banner lines held until every port is bound: a failed start must not say "serving ... on"
        self._banner: list[str] | None = []
        self.watchdog: Watchdog | None = None
        self._stop = asyncio.Event()

    def answered_hooks(self) -> list[tuple[str, str]]:
        """(broker hook, rule file name) for every broker hook a rule file answers, from the rule set
        serving now."""
        return [(hook, source + RULE_SUFFIX) for hook, source in self.engine.ruleset.answered().items()]

    def broken_rules(self) -> list[tuple[str, str]]:
        """(hook, state) for every hook whose rule is broken, from the rule set serving now: never_loaded
        (its file has errors and no version loaded: it answers by its failure policy), stale (its file's
        current contents failed, an older version serves; or, for a rule that reads `data`, a data file's
        did and its older contents serve) or data_missing (the rule reads `data` and a data file failed
        with no earlier version: whatever reads it fails, by policy)."""
        ruleset = self.engine.ruleset
        pairs = ([(hook, "never_loaded") for hook in ruleset.broken]
                 + [(hook, "stale") for hook in ruleset.stale if hook not in ruleset.broken])
        data_state = _data_state(ruleset)
        if data_state is not None:
            pairs += [(hook, data_state) for hook, rule in ruleset.rules.items()
                      if any(dep == DATA_DEP for dep, _ in rule.deps) and (hook, data_state) not in pairs]
        return pairs

    def readiness(self) -> tuple[bool, str, dict[str, Any]]:
        """Ready once started and until draining, unless an authentication hook's rule never loaded and
        its failure policy is deny: that instance refuses every client, so it must not take traffic from
        instances that serve (a rollout of a broken rule stops at its first instance). Any other broken
        hook is named but keeps the instance ready: it fails only its own calls, while not ready would
        fail them all (every instance of a shared rules directory breaks at once)."""
        if self.state != "ready":
            return False, self.state, {}
        broken = self.broken_rules()
        detail = f"{len(self.engine.ruleset)} rule file(s) loaded"
        never = sorted(h for h, state in broken if state == "never_loaded")
        stale = sorted(h for h, state in broken if state == "stale")
        missing = sorted(h for h, state in broken if state == "data_missing")
        if never:
            detail += f"; never loaded, answered by the failure policy: {', '.join(never)}"
        if stale:
            detail += f"; current file (or a data file it reads) failed, an older version serves: {', '.join(stale)}"
        if missing:
            detail += (f"; read data while a data file never loaded ({', '.join(sorted(self.engine.ruleset.data.failed))}"
                       f"): {', '.join(missing)}")
        closed = refusing_authentication(self.engine)
        rank = {state: i for i, state in enumerate(metrics.BROKEN_STATES)}  # one state a hook in the JSON: the worst
        worst: dict[str, str] = {}
        for hook, state in broken:
            if hook not in worst or rank[state] < rank[worst[hook]]:
                worst[hook] = state
        extra = {"broken": dict(sorted(worst.items()))}
        if closed:
            return False, (f"authentication refuses every client: {', '.join(closed)} never loaded, failure "
                           f"policy deny; {detail}"), extra
        return True, detail, extra

    def _announce(self, text: str) -> None:
        if self._banner is not None:  # still starting
            self._banner.append(text)
            return
        announce(text, to_stderr=self.config.decision_log == "stdout")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self._tls()
        if not self.config.rules.is_dir():  # a mistyped path must not serve "no rules" (ignore everything)
            raise ConfigError(f"the rules directory {self.config.rules} does not exist or is not a directory (--rules)")
        self._start_watchdog(self.config.watchdog_limit)  # before the first load: libraries run too
        self.reloader.load()
        self.reloader.start(loop)
        self._announce(f"serving {len(self.engine.ruleset)} rule file(s) from {self.config.rules}")
        if self.shadow is not None:
            self.shadow.load()
            self.shadow.start(loop)
            self._announce(f"shadow rules: {len(self.shadow.engine.ruleset)} rule file(s) from {self.shadow.directory}, "
                           f"run on {self.shadow.sample:.0%} of calls after their answers")
        if self.config.metrics is not None:
            logging.getLogger("aiohttp.server").addFilter(QuietProtocolErrors())
            # access_log=None: one line per request is noise
            metrics = web.AppRunner(metrics_app(self.readiness), access_log=None, handle_signals=False)
            self.metrics_port = await self._start_http(self.config.metrics, "--metrics", metrics, None,
                                                       "Prometheus metrics on {url}metrics (and /healthz, /readyz)")
        if self.config.grpc is not None:
            await self._start_grpc(self.config.grpc, tls)
        if self.config.http is not None:
            self.http_port = await self._start_wire(self.config.http, tls[2] if tls else None)
        # Everything loaded so far (libraries, protos, the first rules) lives as long as the process:
        # keep it out of the garbage collector's full passes, which otherwise rescan it every few
        # hundred calls (measured: 17 ms a pass over ~50,000 objects).
        gc.collect()
        gc.freeze()
        self.helper_threads.start(loop)  # every thread started by now (grpc-core's, the watcher's) yields to the loop
        banner, self._banner = self._banner or [], None
        for line in banner:  # every port is bound: now say so
            self._announce(line)
        self.state = "ready"
        for service in ("", *(p.service_name for p in self.exhook.protos)):
            await self.grpc_health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _start_watchdog(self, limit: float) -> None:
        """(Re)start the watchdog process with this limit; 0 stops it. Without a temporary file to share
        (a read-only file system) the server serves on without one, and says so."""
        if self.watchdog is not None:
            self.engine.run_clock = None
            if self.shadow is not None:
                self.shadow.engine.run_clock = None
            self.watchdog.stop()
            self.watchdog = None
        if not limit:
            return
        try:
            self.watchdog = Watchdog(limit)
        except OSError as exc:
            log.error("watchdog: cannot start (%s); serving without it: a rule step stuck in C would hang the "
                      "server", exc)
            return
        self.engine.run_clock = self.watchdog.clock
        if self.shadow is not None:  # its runs hold the server as the live ones do: watched the same
            self.shadow.engine.run_clock = self.watchdog.clock.shadow()

    def _tls(self) -> tuple[bytes, bytes, ssl.SSLContext] | None:
        """Certificate, key and an HTTPS context, or None without TLS."""
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return None
        try:
            cert, key = cfg.tls_cert.read_bytes(), cfg.tls_key.read_bytes()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            if cfg.tls_client_ca is not None:
                context.load_verify_locations(cfg.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS files: {exc}") from None
        return cert, key, context

    async def _start_grpc(self, address: str, tls: tuple[bytes, bytes, ssl.SSLContext] | None) -> None:
        host, port = parse_address(address, "--grpc")
        # so_reuseport=0: a second server on a busy port must fail loudly, not share it silently (only
        # the workers of one supervisor share it: it reserved the port and checked it was free);
        # maximum_concurrent_rpcs: past it, calls get RESOURCE_EXHAUSTED at once (EMQX's failed_action)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if self.config.worker else 0)],
                                 maximum_concurrent_rpcs=self.config.max_concurrent_calls)
        server.add_generic_rpc_handlers(self.exhook.generic_handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.grpc_health, server)
        server.add_generic_rpc_handlers([self.exhook.unknown_methods_handler()])  # last: what no one else serves
        for service in ("", *(p.service_name for p in self.exhook.protos)):
            await self.grpc_health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        target = _hostport(host, port)
        if not self.config.worker:  # a worker's port is its supervisor's, checked and held by it
            _check_bindable(host, port, address, "--grpc")
        try:
            if tls is None:
                self.grpc_port = server.add_insecure_port(target)
            else:
                ca = self.config.tls_client_ca.read_bytes() if self.config.tls_client_ca else None
                creds = grpc.ssl_server_credentials([(tls[1], tls[0])], root_certificates=ca,
                                                    require_client_auth=ca is not None)
                self.grpc_port = server.add_secure_port(target, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc} (is the port in use, or the address "
                              "not one of this machine's?)") from None
        await server.start()
        self.grpc_server = server
        mode = "" if tls is None else (", TLS with client certificates" if self.config.tls_client_ca else ", TLS")
        self._announce(f"EMQX ExHook (emqx.exhook.v2 and v3{mode}) on {_hostport(host, self.grpc_port)}")

    def _listen(self, address: str, flag: str) -> tuple[str, socket.socket]:
        host, port = parse_address(address, flag)
        try:  # SO_REUSEPORT only on a worker's --http port: the one its supervisor reserved for the group
            return host, listen_socket(host, port, reuse_port=bool(self.config.worker) and flag == "--http")
        except OSError as exc:
            raise ConfigError(f"cannot listen for HTTP on {address} ({flag}): {bind_problem(exc)}") from None

    def _announce_http(self, host: str, sock: socket.socket, tls: bool, message: str) -> int:
        bound = int(sock.getsockname()[1])
        self._announce(message.format(url=f"{'https' if tls else 'http'}://{_hostport(host, bound)}/"))
        return bound

    async def _start_http(self, address: str, flag: str, runner: web.BaseRunner, context: ssl.SSLContext | None,
                          message: str) -> int:
        host, sock = self._listen(address, flag)
        await runner.setup()
        await web.SockSite(runner, sock, shutdown_timeout=self.config.grace_period, ssl_context=context).start()
        self.runners.append(runner)
        return self._announce_http(host, sock, context is not None, message)

    async def _start_wire(self, address: str, context: ssl.SSLContext | None) -> int:
        """The --http port: VerneMQ's webhooks, RabbitMQ's checks, EMQX's HTTP authenticator and
        authorizer and the probes on one synchronous
        HTTP/1.1 protocol (adapters/httpwire.py), not aiohttp (measured: half the CPU per webhook)."""
        host, sock = self._listen(address, "--http")
        router = self.webhooks.router(sync_health_handlers(self.readiness),
                                     {RABBITMQ_PREFIX: self.rabbitmq.route,
                                      EMQX_HTTP_PREFIX: EmqxHttpRoute(self.emqx_http).route})
        wire = WireServer(router, self.webhooks.admission, max_body=self.config.http_max_body,
                          on_fault=self.webhooks.malformed)
        try:
            await wire.start(sock, context)
        except BaseException:
            sock.close()
            raise
        self.wire = wire
        return self._announce_http(host, sock, context is not None,
                                   "VerneMQ webhooks and the HTTP auth of RabbitMQ and EMQX on {url}")

    async def stop(self) -> None:
        self.state = "draining"
        try:
            await self.grpc_health.enter_graceful_shutdown()
            await asyncio.gather(self._stop_grpc(), self._stop_http())
        finally:  # whatever failed above, the watchdog, the watcher and the decision log are closed
            self._close()

    def _close(self) -> None:
        self.helper_threads.stop()
        self.reloader.stop()
        if self.shadow is not None:
            self.shadow.stop()
        self._start_watchdog(0)
        if self.decision_log is not None:
            self.decision_log.close()
            self.decision_log = None
        log.info("stopped")

    async def _stop_grpc(self) -> None:
        """grpc.aio's stop(grace) cancels every call it has received but not yet handed to a handler,
        which under load is most of those EMQX sent before the signal. So first keep serving until the
        calls have been answered and none came for DRAIN_QUIET (EMQX does not read health, so under
        steady traffic that is the whole grace period), then stop: what is left is only what arrived
        in the last moment, and open health Watch streams no longer hold the exit for the grace."""
        server = self.grpc_server
        if server is None:
            return
        deadline = time.monotonic() + self.config.grace_period
        admission = self.exhook.admission
        while time.monotonic() < deadline and not admission.quiet_for(DRAIN_QUIET):
            await asyncio.sleep(DRAIN_POLL)
        await server.stop(min(DRAIN_STOP_GRACE, self.config.grace_period))
        self.grpc_server = None

    async def _stop_http(self) -> None:
        if self.wire is not None:  # every call received is answered, then its connections close
            await self.wire.stop(self.config.grace_period)
            self.wire = None
        for runner in reversed(self.runners):  # each drains its connections for up to grace_period
            await runner.cleanup()
        self.runners = []

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: the config file's rule settings again, and every rule, library and data file rebuilt."""
        config = self.config
        if config.config_file is not None:
            try:  # the whole new setting is built and checked before any of it is applied
                fresh = build_config(read_config_file(Path(config.config_file)), dict(config.overrides))
                updated = replace(config, failure_policy=fresh.failure_policy, limits=fresh.limits,
                                  log_level=fresh.log_level, hard_timeout=fresh.hard_timeout,
                                  shadow_rule_timeout=fresh.shadow_rule_timeout, shadow_max_steps=fresh.shadow_max_steps,
                                  shadow_sample=fresh.shadow_sample)
            except ConfigError as exc:
                log.error("SIGHUP: %s; kept the running settings", exc)
            else:
                self.engine.policies = dict(updated.failure_policy)
                self.engine.limits = updated.limits
                if self.shadow is not None:
                    self.shadow.engine.policies = dict(updated.failure_policy)
                    self.shadow.engine.limits = updated.shadow_limits
                    if updated.shadow_sample is not None:
                        self.shadow.sample = updated.shadow_sample
                logging.getLogger().setLevel(updated.log_level.upper())
                running = self.watchdog.limit if self.watchdog is not None else 0.0
                if updated.watchdog_limit != running and self.state != "draining":
                    log.info("SIGHUP: watchdog limit %g s (was %g s)", updated.watchdog_limit, running)
                    self._start_watchdog(updated.watchdog_limit)
                self.config = updated
        self.reloader.request(force=True, done=lambda outcomes: log.info(  # off the loop: calls keep being answered
            "SIGHUP: reloaded %d file(s), %d with errors", len(outcomes), sum(1 for o in outcomes if o.errors)))
        if self.shadow is not None:
            self.shadow.reloader.request(force=True, done=lambda outcomes: log.info(
                "SIGHUP: reloaded %d shadow file(s), %d with errors", len(outcomes),
                sum(1 for o in outcomes if o.errors)))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        # before start(): a SIGTERM while starting must still mean a clean stop, not a kill
        for sig in (signal.SIGTERM, signal.SIGINT):  # either one: stop accepting, drain, exit 0
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.config.worker:  # a worker whose supervisor is gone stops (drains) too
            from .workerlink import stop_with_parent
            stop_with_parent(loop, self.request_stop)
        await serve_until_stopped(self.start, self.stop, self._stop,
                                  lambda: log.info("stopping: draining calls in flight for up to %.0fs", self.config.grace_period))


def run(config: Config) -> int:
    try:
        server = Server(config)
        eventloop.run(server.serve())  # uvloop, or asyncio's loop on request (eventloop.py)
    except ConfigError as exc:
        print(f"hookrules: error: {exc}", file=sys.stderr)
        return 2
    if config.worker:  # every call answered: the supervisor folds these last counts into its totals
        from .workerlink import report_final_metrics
        report_final_metrics()
    return 0
