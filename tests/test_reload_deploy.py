"""Issue 9 live audit, F3: every way of deploying a file is seen at once, not at the periodic rescan.

A rule moved into the directory from outside (`mv /tmp/x/auth_on_register.star rules/`) was served only
30 s later: inotify gives just IN_MOVED_TO, which watchdog reported as `created`, taken for the start of
a write that no close would end; nothing asked for a rescan. Here the periodic rescan is off: each
deploy pattern, for a rule, a library and a data file, must deploy through the watcher's events alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from hookrules.engine import Engine
from hookrules.reload import Reloader

from .test_reload_deps import answer, poll, write

AUTHN = "client.authenticate.star"
LIB_RULE = 'load("lib/who.star", "who")\nif client.username == who():\n    allow()\nelse:\n    deny("no")\n'
DATA_RULE = 'if client.username == data.who["name"]:\n    allow()\nelse:\n    deny("no")\n'

# kind -> (the rule, the file deployed, its old contents, its new contents)
KINDS = {
    "rule": (None, AUTHN, 'deny("old")\n', "allow()\n"),
    "library": (LIB_RULE, "lib/who.star", 'def who():\n    return "bob"\n', 'def who():\n    return "alice"\n'),
    "data": (DATA_RULE, "data/who.json", '{"name": "bob"}', '{"name": "alice"}'),
}


def _mv_from_outside(root: Path, outside: Path, rel: str, text: str) -> None:
    src = outside / Path(rel).name
    src.write_text(text)
    os.rename(src, root / rel)  # the same file system: inotify sees IN_MOVED_TO alone


def _mv_old_file_from_outside(root: Path, outside: Path, rel: str, text: str) -> None:
    src = outside / Path(rel).name
    src.write_text(text)
    os.utime(src, (time.time() - 60, time.time() - 60))  # written long ago: mv keeps its mtime
    os.rename(src, root / rel)


def _cp(root: Path, outside: Path, rel: str, text: str) -> None:
    src = outside / Path(rel).name
    src.write_text(text)
    subprocess.run(["cp", str(src), str(root / rel)], check=True)


def _install(root: Path, outside: Path, rel: str, text: str) -> None:
    src = outside / Path(rel).name
    src.write_text(text)
    subprocess.run(["install", "-m", "644", str(src), str(root / rel)], check=True)


def _rsync_style(root: Path, outside: Path, rel: str, text: str) -> None:
    target = root / rel
    temp = target.parent / f".{target.name}.XXXXXX"
    temp.write_text(text)
    os.rename(temp, target)


def _ln_sf_swap(root: Path, outside: Path, rel: str, text: str) -> None:
    version = root / "versions" / f"v2-{Path(rel).name}"
    version.parent.mkdir(exist_ok=True)
    version.write_text(text)
    subprocess.run(["ln", "-sfn", os.path.relpath(version, (root / rel).parent), str(root / rel)], check=True)


def _hard_link(root: Path, outside: Path, rel: str, text: str) -> None:
    version = root / "versions" / f"v2-{Path(rel).name}"
    version.parent.mkdir(exist_ok=True)
    version.write_text(text)
    os.unlink(root / rel)
    os.link(version, root / rel)  # IN_CREATE and no close: the contents were complete before


PATTERNS: dict[str, Callable[[Path, Path, str, str], None]] = {
    "mv_from_outside": _mv_from_outside, "mv_old_file_from_outside": _mv_old_file_from_outside, "cp": _cp,
    "install": _install, "rsync_temp_rename": _rsync_style, "ln_sf_swap": _ln_sf_swap, "hard_link": _hard_link,
}


def _deploy(root: Path, kind: str, deploy: Callable[[Reloader], None]) -> list[str]:
    async def main() -> list[str]:
        reloader = Reloader(root, Engine(), settle=0.2, rescan_interval=0)  # no periodic rescan to fall back on
        reloader.load()
        seen = [answer(reloader)]
        reloader.start(asyncio.get_running_loop())
        try:
            await asyncio.sleep(0.2)  # the watch is in place
            deploy(reloader)
            await poll(lambda: answer(reloader) == "allow", tries=1000)
            seen.append(answer(reloader))
            return seen
        finally:
            reloader.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_deploy_pattern_is_served_without_the_periodic_rescan(tmp_path: Path, kind: str, pattern: str) -> None:
    root, outside = tmp_path / "rules", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    rule, rel, old, new = KINDS[kind]
    if rule is not None:
        write(root, AUTHN, rule)
    write(root, rel, old)
    assert _deploy(root, kind, lambda _: PATTERNS[pattern](root, outside, rel, new)) == ["rule", "allow"]


@pytest.mark.parametrize("kind", ["library", "data"])
def test_a_directory_moved_in_whole_is_served(tmp_path: Path, kind: str) -> None:
    """`mv /tmp/build/lib rules/`: the files inside come with no event of their own."""
    root, outside = tmp_path / "rules", tmp_path / "outside"
    root.mkdir()
    rule, rel, _, new = KINDS[kind]
    write(root, AUTHN, rule or "")
    write(outside, rel, new)

    def move(_: Reloader) -> None:
        shutil.move(str(outside / Path(rel).parts[0]), str(root / Path(rel).parts[0]))

    assert _deploy(root, kind, move)[1] == "allow"
