"""Rules from a Kubernetes ConfigMap volume, laid out and updated exactly as kubelet does (tests/atomic_writer.py,
a port of kubernetes/kubernetes pkg/volume/util/atomic_writer.go), served by the real server and asked by real
broker clients (EMQX over gRPC, VerneMQ over its webhook).

What deploy/kubernetes/ relies on: the ConfigMap is mounted as a directory (never subPath, which kubelet never
updates), every rule, library and data file reaches hookrules through kubelet's links (`authenticate.star ->
..data/authenticate.star`, `lib -> ..data/lib`, `..data -> ..2026_...`), and an update is one rename of
`..data`. So: an update is served within the reload deadline; a broken one keeps the last good rules; the
hidden entries are neither loaded a second time nor reported; and the sandbox (every file read resolves inside
the rules directory) lets kubelet's links through while any link that leads outside is still refused, whatever
its name and wherever it sits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hookrules.ruleset import RuleSet, scan

from .atomic_writer import DATA_DIR, AtomicWriter
from .broker_calls import emqx_authenticate, vernemq_register
from .support import BUNDLED_RULES, ServerProcess, Stubs, wait_for
from .test_reload import metric

#: how long an update may take to be served: hot reload takes about 0.6 s (0.5 s settle); generous for a
#: busy machine, and still far below kubelet's own sync delay (up to a minute) that precedes it
RELOAD_DEADLINE = 15.0

RULE = ('load("lib/who.star", "who")\n'
        'if client.username == who() or client.username in data.users["names"]:\n'
        '    allow()\n'
        'deny("not listed")\n')


def library(user: str) -> str:
    return f'def who():\n    return "{user}"\n'


def users(*names: str) -> str:
    return json.dumps({"names": list(names)})


def payload(lib_user: str = "alice", data_users: tuple[str, ...] = ("bob",), rule: str = RULE) -> dict[str, str]:
    """A ConfigMap's projection: flat keys for rules, `items` paths for the library, data and test table."""
    return {"authenticate.star": rule, "lib/who.star": library(lib_user), "data/users.json": users(*data_users),
            "tests/emqx.yaml": "[]\n"}


class Brokers:
    """Both brokers' view of who may connect, asked the way each asks."""

    def __init__(self, server: ServerProcess, stubs: Stubs):
        self.server = server
        self.stubs = stubs

    def answers(self, user: str) -> tuple[bool, bool]:
        emqx = emqx_authenticate(self.server, self.stubs, f"c-{user}", user, "pw")
        vernemq = vernemq_register(self.server, f"c-{user}", user, "pw").get("result") == "ok"
        return emqx, vernemq

    def admits(self, user: str) -> bool:
        emqx, vernemq = self.answers(user)
        assert emqx == vernemq, f"EMQX and VerneMQ disagree about {user}"
        return emqx

    def until(self, user: str, admitted: bool) -> bool:
        """Whether `user`'s answer became `admitted` on both brokers within the reload deadline (a bounded
        poll; a reload that lands between the two calls of one poll is only a poll that is not settled yet)."""
        return bool(wait_for(lambda: self.answers(user) == (admitted, admitted), timeout=RELOAD_DEADLINE,
                             interval=0.1))


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, AtomicWriter]:
    target = tmp_path / "rules"
    target.mkdir()
    return target, AtomicWriter(target)


def hidden_dirs(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.startswith("..") and p.name != DATA_DIR)


def test_atomic_writer_lays_out_what_kubelet_does(volume: tuple[Path, AtomicWriter]) -> None:
    """The port itself: a visible link per top-level name, `..data` on one timestamped directory, the old
    one removed on update, a key gone from the payload gone from view, no write when nothing changed."""
    target, writer = volume
    assert writer.write(payload())
    first = hidden_dirs(target)
    assert len(first) == 1 and first[0].startswith("..20"), first
    assert os.readlink(target / DATA_DIR) == first[0]
    assert {p.name: os.readlink(p) for p in target.iterdir() if not p.name.startswith("..")} == {
        "authenticate.star": "..data/authenticate.star", "lib": "..data/lib", "data": "..data/data",
        "tests": "..data/tests"}
    assert not writer.write(payload())  # unchanged: kubelet writes nothing
    assert hidden_dirs(target) == first
    smaller = payload()
    del smaller["tests/emqx.yaml"]
    assert writer.write(smaller)
    second = hidden_dirs(target)
    assert len(second) == 1 and second != first and not os.path.lexists(target / "tests")
    for bad in ("..x/a.star", "a/../b", "/abs.star", "..data"):
        with pytest.raises(ValueError):
            writer.write({bad: "x"})


@pytest.mark.parametrize("watch", ["inotify", "polling"])
def test_configmap_updates_of_rules_libraries_and_data_are_served(
        watch: str, volume: tuple[Path, AtomicWriter], start_server: Callable[..., ServerProcess],
        stubs: dict[str, Stubs]) -> None:
    """Whichever way the directory is watched (--polling: for mounts inotify does not see)."""
    target, writer = volume
    writer.write(payload(lib_user="alice", data_users=("bob",)))
    brokers = Brokers(start_server(target, *(["--polling"] if watch == "polling" else [])), stubs["v3"])
    assert brokers.admits("alice") and brokers.admits("bob") and not brokers.admits("carol")

    writer.write(payload(lib_user="carol", data_users=("bob",)))  # the library, through `lib -> ..data/lib`
    assert brokers.until("carol", True), brokers.server.log()
    assert not brokers.admits("alice")

    writer.write(payload(lib_user="carol", data_users=("dave",)))  # a data file, through `data -> ..data/data`
    assert brokers.until("dave", True), brokers.server.log()
    assert not brokers.admits("bob")

    writer.write(payload(lib_user="carol", data_users=("dave",), rule='deny("closed")\n'))  # the rule itself
    assert brokers.until("carol", False), brokers.server.log()
    assert not brokers.admits("dave")
    assert len(hidden_dirs(target)) == 1  # kubelet removed every older version as it went


#: (what breaks, the broken payload): each must leave the last good rules serving
BROKEN = {
    "rule": payload(rule='allow()\nif client.username == "x"\n    deny("x")\n'),
    "library": payload() | {"lib/who.star": "def who(:\n"},
    "data": payload() | {"data/users.json": '{"names": ["bob"'},
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_broken_configmap_update_keeps_the_last_good_rules(
        broken: str, volume: tuple[Path, AtomicWriter], start_server: Callable[..., ServerProcess],
        stubs: dict[str, Stubs]) -> None:
    target, writer = volume
    writer.write(payload())
    server = start_server(target)
    brokers = Brokers(server, stubs["v3"])
    assert brokers.admits("alice") and brokers.admits("bob")
    errors = metric(server, "hookrules_rule_errors_total", hook="client.authenticate", kind="load") or 0.0

    writer.write(BROKEN[broken])
    reported = wait_for(lambda: "kept previous version" in server.log() or (
        metric(server, "hookrules_rule_errors_total", hook="client.authenticate", kind="load") or 0.0) > errors,
        timeout=RELOAD_DEADLINE, interval=0.1)
    assert reported, server.log()
    assert brokers.admits("alice") and brokers.admits("bob") and not brokers.admits("carol")

    writer.write(payload(lib_user="carol"))  # fixed: served again
    assert brokers.until("carol", True), server.log()


def test_hidden_entries_are_neither_loaded_again_nor_reported(
        volume: tuple[Path, AtomicWriter], start_server: Callable[..., ServerProcess], stubs: dict[str, Stubs]) -> None:
    """`..data` and `..2026_...` hold the same files again: one rule loaded, one version, no warning, and
    `hookrules check` and `hookrules test` see the volume as they see the plain directory it came from."""
    target, writer = volume
    files = {str(p.relative_to(BUNDLED_RULES)): p.read_text() for p in BUNDLED_RULES.rglob("*") if p.is_file()}
    writer.write(files)
    server = start_server(target)
    writer.write(files | {"authorize.star": files["authorize.star"] + "# edited\n"})  # one update: two hidden dirs met
    assert wait_for(lambda: "# edited" in (target / "authorize.star").read_text() and "loaded" in server.log()
                    and metric(server, "hookrules_reloads_total", hook="authorize", result="loaded") == 2,
                    timeout=RELOAD_DEADLINE, interval=0.1), server.log()
    rule_files = sorted(name for name in files if "/" not in name)
    assert metric(server, "hookrules_rules_loaded") == len(rule_files)
    text = server.metrics_text()
    info = [line for line in text.splitlines() if line.startswith("hookrules_rule_info{")]
    assert len(info) == len(rule_files), info  # one version of each rule file, none from a hidden directory
    assert "..data" not in text and "..20" not in text
    log = server.log()
    assert "names no hook" not in log and "ERROR" not in log and "WARNING" not in log, log

    for command in (["check"], ["test"]):
        on_volume = subprocess.run([sys.executable, "-m", "hookrules", *command, str(target)],
                                   capture_output=True, text=True, timeout=120)
        plain = subprocess.run([sys.executable, "-m", "hookrules", *command, str(BUNDLED_RULES)],
                               capture_output=True, text=True, timeout=120)
        assert on_volume.returncode == plain.returncode == 0, on_volume.stdout + on_volume.stderr
        assert ".." not in on_volume.stdout + on_volume.stderr.replace(str(target), ""), on_volume.stdout
        assert on_volume.stdout.replace(str(target), "DIR") == plain.stdout.replace(str(BUNDLED_RULES), "DIR")


def test_check_sees_the_libraries_of_a_configmap_volume(volume: tuple[Path, AtomicWriter], tmp_path: Path) -> None:
    """`hookrules check` reports a library no rule loads, and its errors, on the volume as on the plain
    directory: libraries are found by the names an author uses (through `lib -> ..data/lib`), not by
    walking real directories, where kubelet's files sit under a hidden name."""
    target, writer = volume
    files = payload() | {"lib/unused.star": "def unused(:\n"}
    writer.write(files)
    plain = tmp_path / "plain"
    for rel, text in files.items():
        (plain / rel).parent.mkdir(parents=True, exist_ok=True)
        (plain / rel).write_text(text)
    results = [subprocess.run([sys.executable, "-m", "hookrules", "check", str(d)], capture_output=True, text=True,
                              timeout=120) for d in (target, plain)]
    for result, root in zip(results, (target, plain)):
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{root}/lib/unused.star:1:12: parse_error" in result.stderr, result.stderr
        assert "1 library file(s) no rule loads" in result.stderr, result.stderr
    assert results[0].stderr.replace(str(target), "DIR") == results[1].stderr.replace(str(plain), "DIR")


# -- the sandbox: kubelet's links lead inside and are followed; any link that leads outside is refused ------

#: kind -> (the rule that uses it, the path of the file that is linked, its contents)
KINDS = {
    "rule": (None, "authenticate.star", "allow()\n"),
    "library": ('load("lib/who.star", "who")\nif client.username == who():\n    allow()\n', "lib/who.star",
                library("alice")),
    "data": ('if client.username in data.users["names"]:\n    allow()\n', "data/users.json", users("alice")),
}


def _link_file(target: Path, outside: Path, rel: str) -> None:
    if os.path.islink(target / rel):
        os.remove(target / rel)
    (target / rel).parent.mkdir(exist_ok=True)
    os.symlink(outside / rel, target / rel)


def _link_directory(target: Path, outside: Path, rel: str) -> None:
    top = rel.split("/", 1)[0]
    os.remove(target / top)
    os.symlink(outside / top, target / top)


def _redirect_data(target: Path, outside: Path, rel: str) -> None:
    """`..data` itself swapped for a link out: every kubelet link now resolves outside."""
    os.symlink(outside, target / "..data_tmp")
    os.rename(target / "..data_tmp", target / DATA_DIR)


#: how the outside file is reached: by a link at the file, at its directory, or at `..data` itself
LINKS = {"file": _link_file, "directory": _link_directory, "data_link": _redirect_data}


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_link_out_of_the_volume_is_refused(kind: str, link: str, volume: tuple[Path, AtomicWriter],
                                             tmp_path: Path) -> None:
    """Every kind of file, reached through a link at every level, is read only when it resolves inside:
    the check is on the resolved path, so no name (`..data` included) lets a file from outside in."""
    rule, rel, text = KINDS[kind]
    files = {"authenticate.star": rule or "allow()\n", rel: text}
    target, writer = volume
    writer.write(files)
    served, first = scan(target, RuleSet())
    assert not [o for o in first if o.errors], [e.format() for o in first for e in o.errors]
    assert "authenticate" in served.rules
    if kind == "data":
        assert "users" in served.data.files

    outside = tmp_path / "outside"
    for name, content in files.items():
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_text(content)
    if kind != "rule" and link == "file":
        os.remove(target / rel.split("/", 1)[0])  # kubelet's `lib` link: the file link goes in a real lib/
    LINKS[link](target, outside, rel)
    assert (target / rel).read_text() == text  # the link works: only hookrules refuses it

    ruleset, outcomes = scan(target, RuleSet())
    messages = [e.format() for o in outcomes for e in o.errors]
    assert any("resolves outside the rules directory" in m for m in messages), (messages, outcomes)
    if kind == "data" and link != "data_link":
        assert "users" not in ruleset.data.files
    else:  # the rule, or what it loads, is refused: the hook has no rule
        assert "authenticate" not in ruleset.rules


def test_check_follows_links_once_and_only_inside(tmp_path: Path) -> None:
    """Following links to find libraries must not loop (a link back up), list a directory twice, or wander out
    of the rules directory (a link to /usr would list the whole system as libraries)."""
    rules, outside = tmp_path / "rules", tmp_path / "outside"
    (rules / "lib" / "deep").mkdir(parents=True)
    outside.mkdir()
    (rules / "authenticate.star").write_text("allow()\n")
    (rules / "lib" / "deep" / "a.star").write_text("def a(:\n")
    (outside / "b.star").write_text("def b(:\n")
    os.symlink("..", rules / "lib" / "deep" / "up")  # a loop: lib/deep/up/deep/up/...
    os.symlink(rules / "lib", rules / "again")  # the same directory under a second name
    os.symlink(outside, rules / "elsewhere")  # out of the rules directory
    result = subprocess.run([sys.executable, "-m", "hookrules", "check", str(rules)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 library file(s) no rule loads" in result.stderr, result.stderr
    assert f"{rules}/lib/deep/a.star:1:7: parse_error" in result.stderr, result.stderr  # by its real name, once
    assert result.stderr.count("parse_error") == 1 and "b.star" not in result.stdout + result.stderr
