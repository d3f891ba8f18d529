"""A throwaway RabbitMQ node for the end-to-end tests: Debian's rabbitmq-server, run from a temp directory.

Why this shape:
- Everything the node writes (config, enabled_plugins, mnesia, logs, HOME with the Erlang cookie) lives in one
  temp directory, so two nodes (or a system-wide RabbitMQ) never share state, and removing it cleans up.
- Every listener is on 127.0.0.1 on a port the OS picked free: MQTT, the Erlang distribution port, the CLI's
  distribution port, and epmd on a non-default port. The AMQP listener is disabled (`listeners.tcp = none`).
- The scripts in /usr/lib/rabbitmq/bin/ are run directly: the /usr/sbin wrappers switch user and log to /var/log.
- We start epmd ourselves, in the foreground, and tell Erlang not to start one (`-start_epmd false`): an epmd
  that Erlang starts daemonizes and survives `rabbitmqctl stop`; ours has a PID we know.
- Every process we start carries a marker in its environment (inherited by beam, erl_child_setup, inet_gethost,
  the CLI's VM). `stop()` ends, by PID, anything that still carries it: one sweep covers every kind of leftover,
  whatever started it.

The install helper (`require_rabbitmq`, on tests/system_packages.py) is what the session fixture calls: in CI (CI=true) as root it installs
the Debian package without starting a system-wide service; in CI otherwise it fails; outside CI it skips with a
reason that says how to install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest

from .system_packages import require_tool

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBIT_BIN / "rabbitmq-server"
RABBITMQCTL = RABBIT_BIN / "rabbitmqctl"
HOST = "127.0.0.1"
AUTH_PATHS = {"user": "/rabbitmq/user", "vhost": "/rabbitmq/vhost",
              "resource": "/rabbitmq/resource", "topic": "/rabbitmq/topic"}
BOOT_TIMEOUT = 60.0  # seconds; boot is 8.5-10 s on an idle 2-core machine, much more when it is loaded
STOP_TIMEOUT = 30.0  # seconds for `rabbitmqctl stop`; it takes 1.5-3 s
MARKER = "HOOKRULES_RABBIT_NODE"  # environment variable set on every process a RabbitNode starts
_LOOPBACK_ERL = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that are free now (another process could take one before use).

    All sockets stay bound until every port is picked: picking one at a time lets the OS hand out the same
    port twice, and then e.g. epmd answers the probe of the MQTT port.
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class RabbitNodeError(RuntimeError):
    """The node did not boot or stop as expected; the message carries the tail of its logs."""


class RabbitNode:
    """One throwaway RabbitMQ node, with rabbitmq_mqtt and rabbitmq_auth_backend_http pointed at `auth_base_url`.

    `with RabbitNode(url) as node:` starts it and waits until its MQTT port accepts connections; leaving the block
    (normally, or by an exception, or a failed boot) stops it and leaves no process and no file behind.
    """

    def __init__(self, auth_base_url: str, *, http_method: Literal["get", "post"] = "get",
                 extra_conf: Sequence[str] = (), boot_timeout: float = BOOT_TIMEOUT) -> None:
        if http_method not in ("get", "post"):
            raise ValueError(f"http_method must be 'get' or 'post', not {http_method!r}")
        self.auth_base_url = auth_base_url.rstrip("/")
        self.http_method = http_method
        self.extra_conf = tuple(extra_conf)
        self.boot_timeout = boot_timeout
        self.mqtt_host = HOST
        self.mqtt_port = 0
        self.epmd_port = 0
        self.dist_port = 0
        self.node_name = f"hookrules-{uuid.uuid4().hex[:10]}@localhost"
        self.workdir: Path | None = None
        self.node_proc: subprocess.Popen[bytes] | None = None
        self.epmd_proc: subprocess.Popen[bytes] | None = None
        self._marker = uuid.uuid4().hex
        self._stopped = False

    # -- configuration -------------------------------------------------------------------------------------

    def auth_url(self, check: str) -> str:
        """The URL RabbitMQ calls for `check` (user, vhost, resource or topic)."""
        return self.auth_base_url + AUTH_PATHS[check]

    def config_text(self) -> str:
        """rabbitmq.conf: MQTT on loopback, no AMQP listener, no anonymous MQTT, every check over HTTP."""
        lines = [
            "listeners.tcp = none",
            f"mqtt.listeners.tcp.1 = {HOST}:{self.mqtt_port}",
            "mqtt.allow_anonymous = false",
            "auth_backends.1 = http",
            f"auth_http.http_method = {self.http_method}",
            *(f"auth_http.{check}_path = {self.auth_url(check)}" for check in AUTH_PATHS),
            "log.file.level = info",
            "log.console = false",
            *self.extra_conf,
        ]
        return "\n".join(lines) + "\n"

    def _env(self) -> dict[str, str]:
        assert self.workdir is not None
        w = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(w / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "node.pid"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _LOOPBACK_ERL,
            "RABBITMQ_CTL_ERL_ARGS": _LOOPBACK_ERL,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            MARKER: self._marker,
        })
        return env

    def _prepare(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="hookrules-rabbit-"))
        self.mqtt_port, self.epmd_port, self.dist_port, ctl_port = free_ports(4)
        self._ctl_port = ctl_port
        w = self.workdir
        for sub in ("home", "mnesia", "log"):
            (w / sub).mkdir(mode=0o700)
        (w / "rabbitmq-env.conf").write_text("")
        (w / "rabbitmq.conf").write_text(self.config_text())
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_auth_backend_http].\n")
        cookie = w / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Write the node's files, start its epmd and the node. Returns at once; `wait_ready()` waits for MQTT."""
        if self.node_proc is not None:
            raise RabbitNodeError("a RabbitNode starts once; make a new one")
        if not RABBITMQ_SERVER.exists():
            raise RabbitNodeError(f"{RABBITMQ_SERVER} is missing: apt-get install rabbitmq-server")
        self._prepare()
        assert self.workdir is not None
        env = self._env()
        env["RABBITMQ_CTL_DIST_PORT_MIN"] = env["RABBITMQ_CTL_DIST_PORT_MAX"] = str(self._ctl_port)
        self._full_env = env
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        with open(self.workdir / "epmd.err", "wb") as epmd_err:
            self.epmd_proc = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port), "-address", HOST],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=epmd_err,
                start_new_session=True)
        deadline = time.monotonic() + 10.0
        while not port_open(self.epmd_port) and time.monotonic() < deadline:
            if self.epmd_proc.poll() is not None:
                raise RabbitNodeError(f"epmd exited (rc={self.epmd_proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.05)
        with open(self.workdir / "console.log", "wb") as console:
            self.node_proc = subprocess.Popen(
                [str(RABBITMQ_SERVER)], env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=console, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll the MQTT port until it accepts a connection; bounded. On failure raise with the logs' tail."""
        assert self.node_proc is not None, "start() first"
        deadline = time.monotonic() + (self.boot_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            if self.node_proc.poll() is not None:
                raise RabbitNodeError(f"RabbitMQ node exited during boot (rc={self.node_proc.returncode}):\n"
                                      f"{self.log_tail()}")
            if port_open(self.mqtt_port):
                return
            time.sleep(0.2)
        raise RabbitNodeError(f"RabbitMQ MQTT port {self.mqtt_port} not open after "
                              f"{self.boot_timeout if timeout is None else timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """`rabbitmqctl stop` (bounded), then kill what is left by PID, then remove the temp directory.

        Idempotent, and safe after a failed start: every step works on what exists.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.node_proc is not None and self.node_proc.poll() is None:
                self._ctl_stop()
                _wait(self.node_proc, 10.0)
            for proc in (self.node_proc, self.epmd_proc):
                if proc is not None:
                    _kill_group(proc)
            self._sweep()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _ctl_stop(self) -> None:
        """rabbitmqctl stop in its own process group, killed whole if it outlives its bound."""
        try:
            ctl = subprocess.Popen([str(RABBITMQCTL), "-n", self.node_name, "stop"], env=self._full_env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return
        _wait(ctl, STOP_TIMEOUT)
        _kill_group(ctl)

    def marked_pids(self) -> list[int]:
        """PIDs of every live process that carries this node's marker (beam, epmd, the CLI, their helpers)."""
        return list(_pids_with_env(f"{MARKER}={self._marker}"))

    def _sweep(self) -> None:
        """SIGKILL whatever still carries our marker; bounded wait until it is gone."""
        deadline = time.monotonic() + 10.0
        pids = self.marked_pids()
        while pids and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            pids = self.marked_pids()
        if pids:
            raise RabbitNodeError(f"processes of the RabbitMQ node survived SIGKILL: {pids}")

    # -- diagnostics ---------------------------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log files (its own log, the console, epmd), for error messages."""
        if self.workdir is None or not self.workdir.exists():
            return "(no log: the node's directory is gone)"
        parts = []
        for path in sorted([*self.workdir.glob("log/*.log"), self.workdir / "console.log",
                            self.workdir / "epmd.err"]):
            if path.exists() and path.stat().st_size:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts) or "(the node's logs are empty)"

    def __enter__(self) -> RabbitNode:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `proc` leads (it was started with start_new_session) and reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _wait(proc, 10.0)


def _pids_with_env(entry: str) -> Iterable[int]:
    needle = entry.encode() + b"\0"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            environ = (d / "environ").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (environ.startswith(needle) or b"\0" + needle in environ):
            yield int(d.name)


# -- installing the Debian package -------------------------------------------------------------------------

INSTALL_HINT = ("RabbitMQ is not installed, so the RabbitMQ end-to-end tests cannot run. Install it with "
                "`apt-get install rabbitmq-server` (Debian/Ubuntu), or run the tests with CI=true as root, "
                "which installs it.")


def require_rabbitmq() -> float | None:
    """Make sure rabbitmq-server is installed (tests/system_packages.py says when it installs, skips or fails)."""
    return require_tool(RABBITMQ_SERVER, ["rabbitmq-server"], INSTALL_HINT, kill_new=("beam.smp", "epmd"))
