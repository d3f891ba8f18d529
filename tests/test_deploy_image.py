"""The container image (issue 12): hadolint on the Dockerfile, then a real build and real containers, with podman.

No registry can be reached here, so the test makes what a registry would give:
- the base image, a stand-in for python:3.11-slim-bookworm: Debian bookworm with python3.11 and venv, made by
  mmdebstrap from Debian's packages and `podman import`ed;
- the wheels of hookrules' dependencies, downloaded on the host (`pip download`) into a temporary copy of the
  build context, from which the Dockerfile installs with --no-index.

The build runs with --network=none. The containers run as the image says (its user, its command) with a
read-only root and no tmpfs at all, every capability dropped, no-new-privileges, and ports published on 127.0.0.1
only. Everything is checked from outside: /readyz, webhook decisions, `podman healthcheck run`, and the
processes' uid, capabilities and root mount, read in the host's /proc.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .podman_sandbox import Podman, require_podman
from .support import BUNDLED_RULES, ROOT, wait_for

pytestmark = pytest.mark.image

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"localhost/hookrules:{VERSION}"
BASE = "localhost/hookrules-base:bookworm"
USER = "10001:10001"
RULES_PATH = "/etc/hookrules/rules"
PORTS = {"grpc": 9000, "http": 8080, "metrics": 9464}

#: what the official python:3.11-slim-bookworm has that matters here: python3 with venv (ensurepip), CA
#: certificates, /etc/services and time zones; documentation left out as in Debian's slim images
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "netbase", "tzdata")
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
#: as python:3.11-slim-bookworm sets them
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                'CMD ["python3"]')

#: how the tests run the image, as a careful operator would (and as deploy/kubernetes does):
#: --read-only-tmpfs=false because podman's --read-only otherwise still mounts tmpfs on /tmp, /var/tmp and /run,
#: which Docker's --read-only and Kubernetes' readOnlyRootFilesystem do not: the server must need no writable path.
#: The ulimits because podman would otherwise copy the host's, which runc cannot always set in a sandbox.
HARDENED = ("--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
PUBLISH = ("--network", "slirp4netns", *(a for port in PORTS.values() for a in ("-p", f"127.0.0.1::{port}")))


# ---- the Dockerfile, linted ------------------------------------------------------------------------------------

def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--config", str(HADOLINT_CONFIG), "--no-color", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_finds_nothing_and_ignores_no_rule() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert "ignored" not in config and "override" not in config
    assert config["failure-threshold"] == "style"
    assert "hadolint ignore" not in DOCKERFILE.read_text()
    res = _hadolint(DOCKERFILE)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


@pytest.mark.parametrize("label", sorted(yaml.safe_load(HADOLINT_CONFIG.read_text())["label-schema"]))
def test_hadolint_requires_every_oci_label(label: str, tmp_path: Path) -> None:
    """The lint can fail: a Dockerfile whose label is misspelt (so missing, and one too many) is refused."""
    text = DOCKERFILE.read_text()
    assert text.count(f"{label}=") == 1
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(f"{label}=", f"{label}-misspelt="))
    res = _hadolint(broken)
    assert res.returncode != 0 and "DL3049" in res.stdout and "DL3050" in res.stdout and label in res.stdout, \
        res.stdout


def test_hadolint_refuses_running_as_root(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace(f"USER {USER}", "USER root"))
    res = _hadolint(broken)
    assert res.returncode != 0 and "DL3002" in res.stdout, res.stdout


def test_dockerfile_defaults() -> None:
    """What `docker build .` gets without any --build-arg: the official slim base and pyproject's version."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(rf"^ARG VERSION={re.escape(VERSION)}$", text, re.M)


# ---- what lets the server run on a read-only root: its scratch files are memory -------------------------------

def test_scratch_path_is_memory_and_protoc_writes_there() -> None:
    from hookrules.adapters.exhook_proto import _descriptor_set
    from hookrules.scratch import scratch_path

    with scratch_path("probe") as path:
        assert str(path).startswith("/proc/self/fd/")
        path.write_bytes(b"abc")
        assert path.read_bytes() == b"abc"
    assert not path.exists()
    fds = _descriptor_set(ROOT / "protos", "exhook_v3.proto")
    assert [f.name for f in fds.file] == ["exhook_v3.proto"]


def test_scratch_falls_back_to_a_temporary_file_without_memfd(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from hookrules.scratch import memory_file, scratch_path

    def no_memfd(name: str) -> int:
        raise OSError("no memfd here")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_path("probe") as path:
        assert path.parent.parent == tmp_path
        path.write_bytes(b"abc")
        assert path.read_bytes() == b"abc"
    fd = memory_file("probe")
    try:
        os.write(fd, b"abc")
        assert os.pread(fd, 3, 0) == b"abc"
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


# ---- the image, built offline ----------------------------------------------------------------------------------

@dataclass
class Built:
    podman: Podman
    home: Path
    timings: dict[str, float] = field(default_factory=dict)


def _context(home: Path) -> Path:
    """A copy of the checkout as the build context (.dockerignore decides what the build sees), plus wheels/."""
    ctx = home / "context"
    shutil.copytree(ROOT, ctx, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".hypothesis"))
    return ctx


def _start_base(home: Path, podman: Podman) -> list[subprocess.Popen[bytes]]:
    """mmdebstrap's Debian bookworm with python3.11, its tarball streamed into `podman import` (no file between)."""
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           *(f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES),
           "--dpkgopt=path-include=/usr/share/doc/*/copyright", "bookworm", "-"]
    with open(home / "base.log", "wb") as log:
        debootstrap = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        assert debootstrap.stdout is not None
        try:
            importer = podman.popen("import", *(a for change in BASE_CHANGES for a in ("--change", change)), "-",
                                    BASE, stdin=debootstrap.stdout, log=log)
        except BaseException:
            debootstrap.kill()
            debootstrap.wait(10)
            raise
        finally:
            debootstrap.stdout.close()
    return [debootstrap, importer]


def _download_wheels(ctx: Path) -> None:
    """Every runtime dependency's wheel and what building hookrules needs (pyproject's build-system)."""
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                          "--only-binary=:all:", "--dest", str(ctx / "wheels"), str(ctx),
                          *PYPROJECT["build-system"]["requires"]],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"pip download failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    require_podman()
    home = Path(tempfile.mkdtemp(prefix="hookrules-image-"))
    podman = Podman(home / "podman")
    image = Built(podman, home)
    t = image.timings
    try:
        started = time.monotonic()
        base = _start_base(home, podman)
        try:
            ctx = _context(home)
            _download_wheels(ctx)
            t["wheels"] = time.monotonic() - started
            codes = [proc.wait(timeout=300) for proc in base]
        finally:
            for proc in base:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        assert codes == [0, 0], f"mmdebstrap | podman import exited {codes}:\n{(home / 'base.log').read_text()[-3000:]}"
        t["base (mmdebstrap | podman import, beside the wheels)"] = time.monotonic() - started
        mark = time.monotonic()
        # --format docker: the OCI image format has no HEALTHCHECK, podman would drop it
        podman("build", "--network=none", "--pull=never", "--format", "docker", "--build-arg", f"BASE={BASE}",
               "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--tag", IMAGE, str(ctx),
               timeout=600)
        t["build"] = time.monotonic() - mark
        yield image
    finally:
        problems = podman.close()
        shutil.rmtree(home, ignore_errors=True)
        t["total"] = time.monotonic() - started
        print("image test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    assert not problems, problems


def test_image_metadata(built: Built) -> None:
    image = built.podman.inspect("image", IMAGE)
    config = image["Config"]
    assert config["User"] == USER
    assert config["Entrypoint"] == ["hookrules"]
    assert config["Cmd"] == ["serve", "--rules", RULES_PATH]
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in PORTS.values()}
    labels = {k: v for k, v in config["Labels"].items() if k.startswith("org.opencontainers.image.")}
    assert set(labels) == set(yaml.safe_load(HADOLINT_CONFIG.read_text())["label-schema"])
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.base.name"] == BASE
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    health = image["Healthcheck"]
    assert health["Test"][0] == "CMD" and "HOOKRULES_HEALTHZ" in health["Test"][-1]
    assert "HOOKRULES_HEALTHZ=http://127.0.0.1:9464/healthz" in config["Env"]


# ---- the image, run --------------------------------------------------------------------------------------------

def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _webhook(port: int, hook: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(), method="POST",
                                 headers={"vernemq-hook": hook, "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _register(username: str) -> dict[str, Any]:
    return {"peer_addr": "127.0.0.1", "peer_port": 8888, "username": username, "password": "secret",
            "mountpoint": "", "client_id": f"{username}-1", "clean_session": True}


def _wait_ready(podman: Podman, name: str, port: int) -> dict[str, Any]:
    """/readyz from outside, polled (bounded) while the container runs; its JSON once it says 200."""
    deadline = time.monotonic() + 60
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        state = podman.inspect("container", name)["State"]
        assert state["Running"], f"container {name} stopped ({state.get('ExitCode')}):\n{podman.logs(name)}"
        try:
            last = _get(f"http://127.0.0.1:{port}/readyz")
        except (OSError, urllib.error.URLError) as exc:  # published, but not listening inside yet
            last = (0, str(exc))
        if last[0] == 200:
            return dict(json.loads(last[1]))
        time.sleep(0.2)
    raise AssertionError(f"{name} never became ready: {last}\n{podman.logs(name)}")


def _container_processes(podman: Podman, name: str) -> dict[int, dict[str, str]]:
    """Every process in the container (its PID namespace), as the host's /proc/PID/status shows it."""
    leader = podman.inspect("container", name)["State"]["Pid"]
    namespace = Path(f"/proc/{leader}/ns/pid").readlink()
    found: dict[int, dict[str, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns/pid").readlink() != namespace:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        found[int(proc.name)] = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return found


def _mount_points(pid: int) -> dict[str, str]:
    """mount point -> its options, as the process sees them (/proc/PID/mountinfo)."""
    return {fields[4]: fields[5] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if (fields := line.split())}


def _healthcheck(podman: Podman, name: str) -> tuple[int, str]:
    res = podman("healthcheck", "run", name, check=False)
    state = podman.inspect("container", name)["State"]
    health = state.get("Health") or state.get("Healthcheck") or {}
    return res.returncode, str(health.get("Status"))


def test_serves_read_only_unprivileged_on_loopback(built: Built) -> None:
    podman, name = built.podman, "hookrules-image-test"
    started = time.monotonic()
    podman.run_detached(name, *HARDENED, *PUBLISH, IMAGE)
    ports = {what: podman.host_port(name, port) for what, port in PORTS.items()}
    ready = _wait_ready(podman, name, ports["metrics"])
    built.timings["run until ready"] = time.monotonic() - started
    assert ready["broken"] == {} and ready["status"] == "ready"

    # one webhook decision each way, per the bundled rules/authenticate.star
    assert _webhook(ports["http"], "auth_on_register", _register("alice")) == {"result": "ok"}
    assert _webhook(ports["http"], "auth_on_register", _register("baduser")) == {
        "result": {"error": "user is banned"}}

    assert _healthcheck(podman, name) == (0, "healthy")

    processes = _container_processes(podman, name)
    assert len(processes) >= 2, processes  # the server and its watchdog
    for pid, status in processes.items():
        assert status["Uid"].split() == ["10001"] * 4, (pid, status["Name"], status["Uid"])
        assert status["Gid"].split() == ["10001"] * 4, (pid, status["Name"], status["Gid"])
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, (pid, status["Name"], caps, status[caps])
        assert status["NoNewPrivs"] == "1", (pid, status["Name"])
    leader = next(iter(processes))
    # modules come compiled in the image (pip compiles them as it installs): nothing to write at start-up
    [site] = Path(f"/proc/{leader}/root/opt/hookrules/lib").glob("python3.*/site-packages")
    tag = "cpython-" + site.parent.name.removeprefix("python").replace(".", "")
    sources = [p for package in ("hookrules", "grpc", "aiohttp") for p in (site / package).rglob("*.py")]
    assert len(sources) > 50
    assert [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists()] == []
    mounts = _mount_points(leader)
    assert "ro" in mounts["/"].split(","), mounts["/"]
    assert "/tmp" not in mounts and "/var/tmp" not in mounts and "/run" not in mounts, sorted(mounts)
    log = podman.logs(name)
    assert "Read-only file system" not in log and "Traceback" not in log, log


def test_own_rules_mounted_read_only_reload(built: Built, tmp_path: Path) -> None:
    """A rules directory mounted read-only over the bundled one: served, and reloaded when edited on the host.
    With --metrics off the default healthcheck fails; HOOKRULES_HEALTHZ points it at the --http port instead."""
    podman, name = built.podman, "hookrules-image-own-rules"
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    authenticate = rules / "authenticate.star"
    authenticate.write_text('if client.username == "mallory":\n    deny("not mallory")\nallow()\n')
    for path in (rules, *rules.rglob("*")):  # readable by uid 10001, as any mounted rules must be
        path.chmod(0o755 if path.is_dir() else 0o644)
    podman.run_detached(name, *HARDENED, "--network", "slirp4netns", "-p", "127.0.0.1::8080",
                        "--volume", f"{rules}:{RULES_PATH}:ro", IMAGE,
                        "serve", "--rules", RULES_PATH, "--metrics", "off")
    port = podman.host_port(name, 8080)
    _wait_ready(podman, name, port)
    assert _webhook(port, "auth_on_register", _register("mallory")) == {"result": {"error": "not mallory"}}
    assert _webhook(port, "auth_on_register", _register("baduser")) == {"result": "ok"}

    staged = tmp_path / "authenticate.star.new"
    staged.write_text('if client.username == "baduser":\n    deny("banned again")\nallow()\n')
    staged.chmod(0o644)
    staged.rename(authenticate)  # an atomic save, as editors and ConfigMap updates do
    reloaded = wait_for(lambda: _webhook(port, "auth_on_register", _register("mallory")) == {"result": "ok"},
                        timeout=30, interval=0.2)
    assert reloaded, podman.logs(name)
    assert _webhook(port, "auth_on_register", _register("baduser")) == {"result": {"error": "banned again"}}

    # (still "starting" as a status: failures within the start period do not count yet)
    assert _healthcheck(podman, name)[0] == 1
    test = podman.inspect("image", IMAGE)["Healthcheck"]["Test"]
    res = podman("exec", "--env", "HOOKRULES_HEALTHZ=http://127.0.0.1:8080/healthz", name, *test[1:],
                 check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_tables_pass_inside_the_image(built: Built) -> None:
    """`hookrules test` on the baked-in rules, in a container as locked down as the server's: the rule tables
    (rules/tests/) pass, and nothing it does needs a writable file system."""
    podman, name = built.podman, "hookrules-image-tables"
    podman.containers.append(name)
    res = podman("run", "--name", name, *HARDENED, "--network", "none", IMAGE, "test", RULES_PATH,
                 check=False, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed" in res.stdout + res.stderr
