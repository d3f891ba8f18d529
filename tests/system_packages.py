"""Debian packages the tests need (rabbitmq-server, podman, promtool's package...), installed the same way.

Why one module: CI runs `bash .ci/run` as root on a fresh machine where none of these exist, and no test may
skip there; outside CI a developer should get a skip that says how to install the thing, never a surprise apt
run. Every test that needs a system tool asks `require_tool` and gets exactly that policy:
- the tool exists: nothing happens;
- CI=true and root: `apt-get install` the packages, with a policy-rc.d that forbids their postinst to start a
  system-wide service (put back byte for byte afterwards); a process named in `kill_new` that appears during
  the install is ended by PID;
- CI=true and not root, or the install fails: the test FAILS (CI never skips);
- outside CI: the test skips with the hint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
#: where require_extracted_tool unpacks packages: outside the repository, kept between runs
EXTRACTED = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hookrules-tests" / "extracted"
_APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")


class InstallError(RuntimeError):
    """apt-get could not install what a test needs."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(tool: Path | str, packages: Sequence[str], hint: str, *,
                 kill_new: tuple[str, ...] = (), apt_timeout: float = 600.0) -> float | None:
    """Make sure `tool` (a path, or a name looked up on PATH) exists; returns the install time in s, or None."""
    if _present(tool):
        return None
    names = " ".join(packages)
    took = _obtain(f"{names} cannot be installed", f"installing {names}", hint,
                   lambda: apt_install(packages, kill_new=kill_new, apt_timeout=apt_timeout))
    if not _present(tool):
        pytest.fail(f"apt-get installed {' '.join(packages)} but {tool} is still missing")
    print(f"installed {' '.join(packages)} in {took:.1f} s")
    return took


def _obtain(cannot: str, doing: str, hint: str, install: Callable[[], None]) -> float:
    """The policy every missing system tool meets: outside CI, skip with the hint; in CI but not as root,
    fail (`cannot` says what); else run `install`, failing with `doing` if it fails. Its time, in s."""
    if not in_ci():
        print(hint)
        pytest.skip(hint)
    if os.geteuid() != 0:
        pytest.fail(f"CI is set but we are not root, so {cannot}. {hint}")
    started = time.monotonic()
    try:
        install()
    except (OSError, subprocess.SubprocessError, InstallError) as exc:
        pytest.fail(f"{doing} failed: {exc}")
    return time.monotonic() - started


def _present(tool: Path | str) -> bool:
    if isinstance(tool, Path) or "/" in str(tool):
        return Path(tool).exists()
    return shutil.which(str(tool)) is not None


def apt_install(packages: Sequence[str], *, kill_new: tuple[str, ...] = (), apt_timeout: float = 600.0) -> None:
    """apt-get install `packages` without letting any postinst start a system-wide service."""
    before = set(pids_named(kill_new)) if kill_new else set()
    saved = POLICY_RC_D.read_bytes() if POLICY_RC_D.exists() else None
    saved_mode = POLICY_RC_D.stat().st_mode if saved is not None else 0
    POLICY_RC_D.write_text("#!/bin/sh\n# hookrules tests: no service starts while test packages install\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        if not all(apt_knows(p) for p in packages):
            apt(["apt-get", "update"], apt_timeout)
        apt(["apt-get", "install", "-y", "--no-install-recommends", *packages], apt_timeout)
    finally:
        if saved is None:
            POLICY_RC_D.unlink(missing_ok=True)
        else:
            POLICY_RC_D.write_bytes(saved)
            POLICY_RC_D.chmod(saved_mode)
        if kill_new:
            leaked = set(pids_named(kill_new)) - before
            for pid in leaked:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if leaked:
                print(f"installing {' '.join(packages)} left processes {sorted(leaked)} running; killed them")


def apt_knows(package: str) -> bool:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60,
                         env=_APT_ENV).stdout
    return "Candidate:" in out and "Candidate: (none)" not in out


def apt(cmd: list[str], timeout: float) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_APT_ENV)
    if res.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def pids_named(names: tuple[str, ...]) -> Iterable[int]:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in names:
                    yield int(d.name)
            except OSError:
                continue


def require_extracted_tool(tool: str, package: str, member: str, hint: str, *, apt_timeout: float = 600.0) -> Path:
    """A tool that lives in a Debian package with a service (promtool in `prometheus`), taken from the
    package's files instead of installing it: nothing runs a postinst, no user or unit is created.
    `member` is the tool's path inside the package (usr/bin/promtool). Found on PATH, or in EXTRACTED from an
    earlier run: used as is. Otherwise the same policy as require_tool: CI=true as root `apt-get download`s the
    package and `dpkg -x`es it into EXTRACTED; CI not as root, or a failed download, fails; outside CI, skips."""
    found = shutil.which(tool)
    if found is not None:
        return Path(found)
    root = EXTRACTED / package
    if (root / member).is_file():
        return root / member
    took = _obtain(f"{package} cannot be downloaded", f"downloading and extracting {package}", hint,
                   lambda: extract_package(package, root, apt_timeout=apt_timeout))
    if not (root / member).is_file():
        pytest.fail(f"{package} was extracted to {root} but has no {member}")
    print(f"extracted {package} in {took:.1f} s")
    return root / member


def extract_package(package: str, root: Path, *, apt_timeout: float = 600.0) -> None:
    """`apt-get download` + `dpkg -x` of `package` into `root` (replaced whole, so a run cut short leaves
    either no tree or a complete one)."""
    if not apt_knows(package):
        apt(["apt-get", "update"], apt_timeout)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        # as root, apt's download sandbox user (_apt) cannot write to a private temp dir: download as root
        res = subprocess.run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=tmp,
                             capture_output=True, text=True, timeout=apt_timeout, env=_APT_ENV)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if res.returncode != 0 or len(debs) != 1:
            raise InstallError(f"apt-get download {package} exited {res.returncode}:\n{res.stdout[-2000:]}"
                               f"{res.stderr[-2000:]}")
        staging = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True, capture_output=True,
                       timeout=apt_timeout)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
