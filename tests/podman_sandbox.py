"""podman with all of its state in one temporary directory, for the tests that build and run the container image.

Why a module of its own: the image test must leave the machine as it found it (no image store in
/var/lib/containers, no container or helper process left running), and podman spreads state over many places.
Every command goes through `Podman`, which points each of them at the temporary directory:
- `--root`, `--runroot`, `--tmpdir`, `--network-config-dir`, runc's `--root` and TMPDIR;
- cgroupfs and no events log, since no systemd runs here.

Two paths podman 4.3 writes as root whatever those flags say:
- containers/image's blob-info cache, /var/lib/containers/cache;
- the bind-mounted /run/netns holding the containers' network namespaces.

`close()` removes each of them if this run created it.
`close()` also removes every container and image, waits for the helpers podman started (conmon, slirp4netns,
rootlessport) to exit, and unmounts what is left under the directory before deleting it. It kills a helper
that does not exit only by its PID, and reports it as a problem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from .system_packages import pids_named, require_tool

PACKAGES = ("podman", "runc", "slirp4netns", "mmdebstrap")
HINT = ("the container image tests need Debian's podman, runc, slirp4netns and mmdebstrap: "
        "apt-get install --no-install-recommends podman runc slirp4netns mmdebstrap")
#: processes podman leaves running beside a container; each must be gone once its container is removed
HELPERS = ("conmon", "slirp4netns", "rootlessport", "rootlessport-child")
#: what podman writes outside --root/--runroot/--tmpdir (see the module docstring)
HOST_PATHS = (Path("/var/lib/containers"), Path("/var/lib/containers/cache"), Path("/run/netns"))


def require_podman() -> float | None:
    """Every tool the image tests run, installed in CI (never skipped there); returns the install time, if any."""
    took = None
    for tool in PACKAGES:
        took = require_tool(tool, PACKAGES, HINT) or took
    return took


class PodmanError(AssertionError):
    pass


class Podman:
    def __init__(self, home: Path):
        self.home = home
        dirs = {name: home / name for name in ("root", "run", "tmp", "net", "runc")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.flags = ["--root", str(dirs["root"]), "--runroot", str(dirs["run"]), "--tmpdir", str(dirs["tmp"]),
                      "--network-config-dir", str(dirs["net"]), "--storage-driver", "overlay",
                      "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                      "--runtime", "runc", "--runtime-flag", f"root={dirs['runc']}"]
        self.env = dict(os.environ, TMPDIR=str(dirs["tmp"]))
        self.containers: list[str] = []
        self._host_paths_existed = {p: p.exists() for p in HOST_PATHS}
        self._helpers_before = set(pids_named(HELPERS))

    def __call__(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["podman", *self.flags, *args], capture_output=True, text=True, timeout=timeout,
                             env=self.env, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}"
                              f"{res.stderr[-3000:]}")
        return res

    def popen(self, *args: str, stdin: IO[bytes], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """`podman ARGS` in the background, reading `stdin`, its output into `log`: the caller waits for it."""
        return subprocess.Popen(["podman", *self.flags, *args], stdin=stdin, stdout=log, stderr=log, env=self.env)

    def run_detached(self, name: str, *args: str) -> None:
        """`podman run -d --name NAME ARGS`; the container is removed by close() whatever happens."""
        self.containers.append(name)
        self("run", "-d", "--name", name, *args)

    def inspect(self, what: str, name: str) -> dict[str, Any]:
        data = json.loads(self(what, "inspect", name).stdout)
        assert isinstance(data, list) and len(data) == 1
        return dict(data[0])

    def host_port(self, name: str, port: int) -> int:
        """The 127.0.0.1 port podman published for the container's `port`."""
        out = self("port", name, f"{port}/tcp").stdout.strip()
        host, _, number = out.rpartition(":")
        assert host == "127.0.0.1", f"port {port} is published on {out}, not only on 127.0.0.1"
        return int(number)

    def logs(self, name: str) -> str:
        res = self("logs", name, check=False)
        return res.stdout + res.stderr

    def close(self) -> list[str]:
        """Remove everything this podman made; returns what had to be forced (empty when all went well)."""
        problems: list[str] = []
        for name in self.containers:
            self("rm", "--force", "--time", "5", name, timeout=60, check=False)
        self("rmi", "--all", "--force", timeout=60, check=False)
        deadline = time.monotonic() + 15
        while (left := set(pids_named(HELPERS)) - self._helpers_before) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            problems.append(f"podman left process {pid} running after its container was removed; killed it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for mount in reversed(_mounts_under(self.home)):
            problems.append(f"podman left {mount} mounted; unmounted it")
            subprocess.run(["umount", "--lazy", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)
        for path, existed in self._host_paths_existed.items():
            if existed or not path.exists():
                continue
            if _is_mountpoint(path):
                subprocess.run(["umount", "--lazy", str(path)], capture_output=True, timeout=30)
            shutil.rmtree(path, ignore_errors=True)
        return problems


def _mounts_under(home: Path) -> list[str]:
    prefix = str(home) + "/"
    return [fields[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if (fields := line.split()) and fields[1].startswith(prefix)]


def _is_mountpoint(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())
