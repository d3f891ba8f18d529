"""Hot reload under fire: rule files saved a thousand times, the ways editors and Kubernetes save them,
while EMQX and VerneMQ clients keep calling.

Each test starts `hookrules serve`, starts four gRPC clients looping OnClientAuthenticate (a channel
each) and one VerneMQ client posting auth_on_register on one keep-alive connection, then saves both
rule files over and over, alternating between version A (allow) and version B (deny "B"). Every
reply a client sees must be version A's or version B's answer: never an error, never IGNORE or
{"result": "next"} (what an empty rule set or a truncated, half-written file answers), never a
failure-policy answer (a file that failed to load; over gRPC it looks like version B's deny, so
hookrules_rule_errors_total must stay at 0), never a non-200. After the last save the last version
must serve. Every save also carries its number in a comment, so each one is a new version
and the server's `hookrules_rule_info` says exactly which save it serves.

Waits are bounded polls (support.wait_for); client threads stop on an Event and are joined with a
timeout. The saves are written back to back with a short pause every few saves, until every client
has made another call, so the watcher, the server and the clients get CPU and the server rescans
many times while files are in flux. A polling server (--polling)
gets fewer saves, spaced out, since it looks at the directory only once a second.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from . import vernemq_examples as spec
from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs, wait_for

AUTHN = "client.authenticate.star"
REGISTER = "auth_on_register.star"
FILES = (AUTHN, REGISTER)

SAVES = 1000  # saves of each file per editor pattern
POLLING_SAVES = 100
#: saves between pauses, where the saver sleeps PAUSE and then waits until every client has made another
#: call; odd, so that the pauses, when most rescans happen, fall alternately on version A and version B
PAUSE_EVERY = 5
PAUSE = 0.002  # seconds
#: The server reads a file only once it has been unchanged for half a second (an in-place writer can
#: be caught between truncate and write, and the watcher's events can come late): every SETTLE_EVERY
#: saves the saver stops long enough for the current version to load, so the clients see versions change.
SETTLE_EVERY = 125
SETTLE_PAUSE = 1.5  # seconds: the server's 0.5 s settle, its debounce, late events and a margin
POLLING_SETTLE_EVERY = 25  # odd: the quiet moments fall on version B, then A, then B, then A
POLLING_SETTLE_PAUSE = 1.8  # the poller looks once a second
POLLING_PAUSE = 0.02  # seconds after every save: the poller snapshots once a second, let it see many states
GRPC_CLIENTS = 4
MIN_CALLS = 50  # calls each client must make while the files are being saved
MIN_RELOADS = 4  # new rule versions the server must load meanwhile (two files: at least two swaps each)
CALL_TIMEOUT = 10.0
TIMEOUT = 10.0

#: the version of an empty file: what a rescan that reads a file just truncated by its writer loads
EMPTY = hashlib.sha256(b"").hexdigest()[:12]
#: what each client must see from each version
GRPC_ANSWER = {"A": "allow", "B": "deny"}
HTTP_ANSWER = {"A": '200 {"result": "ok"}', "B": '200 {"result": {"error": "B"}}'}


def rule_texts(save: int) -> tuple[str, dict[str, str]]:
    """The version save number `save` writes, and both files' text: A (even saves) allows, B denies."""
    version = "A" if save % 2 == 0 else "B"
    body = "allow()\n" if version == "A" else 'deny("B")\n'
    return version, {name: f"# save {save}: version {version}\n{body}" for name in FILES}


def version_of(text: str) -> str:
    """What the server calls a rule's version: the first 12 hex digits of sha256 of the file's bytes."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- the ways a rules directory is saved ------------------------------------------------------------


def save_in_place(rules: Path, files: dict[str, str]) -> None:
    """Editors without 'atomic save': open with truncate, write, close."""
    for name, text in files.items():
        with open(rules / name, "w") as f:
            f.write(text)


def save_via_temp_file(rules: Path, files: dict[str, str]) -> None:
    """JetBrains, Sublime, agents: write a temp file beside the target, rename it over the target."""
    for name, text in files.items():
        tmp = rules / (name + "___jb_tmp___")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, rules / name)


def save_like_vim(rules: Path, files: dict[str, str]) -> None:
    """vim (writebackup, backupcopy=auto): probe file 4913, rename the file to file~, write a new one, drop file~."""
    for name, text in files.items():
        probe = rules / "4913"
        with open(probe, "w"):
            pass
        probe.unlink()
        target = rules / name
        backup = rules / (name + "~")
        os.rename(target, backup)
        with open(target, "w") as f:
            f.write(text)
        backup.unlink()


class ConfigMap:
    """kubelet's atomic writer: a timestamped dir, `..data` -> it, and file -> ..data/file; updates swap ..data."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        self.current: Path | None = None

    def save(self, rules: Path, files: dict[str, str]) -> None:
        assert rules == self.root
        self.count += 1
        new = self.root / f"..2026_01_01_00_00_00.{self.count:06d}"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(new.name, tmp)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():  # the first save: the files are links into ..data
                os.symlink(f"..data/{name}", link)
        if self.current is not None:
            shutil.rmtree(self.current)
        self.current = new


Saver = Callable[[Path, dict[str, str]], None]


def make_rules(tmp_path: Path, pattern: str) -> tuple[Path, Saver]:
    """A rules directory holding save 0 (version A), and the function that saves it the pattern's way."""
    rules = tmp_path / "rules"
    rules.mkdir()
    first = rule_texts(0)[1]
    if pattern == "configmap":
        saver: Saver = ConfigMap(rules).save
        saver(rules, first)  # kubelet lays the volume out the way it updates it
    else:
        saver = {"in_place": save_in_place, "temp_file": save_via_temp_file, "vim": save_like_vim}[pattern]
        save_in_place(rules, first)
    return rules, saver


# -- the clients ----------------------------------------------------------------------------------


@dataclass
class Progress:
    """Which save the saver is at, for reporting when a wrong answer was seen."""

    save: int = 0
    started: float = 0.0


class Caller(threading.Thread):
    """Calls one hook in a loop until stopped; counts every answer, keeps the first wrong ones."""

    def __init__(self, name: str, call: Callable[[], str], allowed: set[str], stop: threading.Event,
                 progress: Progress, close: Callable[[], None]):
        super().__init__(name=name, daemon=True)
        self.call = call
        self.allowed = allowed
        self.stop_event = stop
        self.progress = progress
        self.close = close
        self.answers: Counter[str] = Counter()
        self.calls = 0
        self.last = ""
        self.wrong: list[str] = []  # the first few, with when they were seen

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    answer = self.call()
                except Exception as exc:  # noqa: BLE001 -- reported by the test, not lost in the thread
                    answer = f"error: {type(exc).__name__}: {exc}"
                self.answers[answer] += 1
                self.calls += 1
                self.last = answer
                if answer not in self.allowed:
                    if len(self.wrong) < 5:
                        self.wrong.append(f"{answer!r} during save {self.progress.save} "
                                          f"(+{time.monotonic() - self.progress.started:.3f}s)")
                    if answer.startswith("error"):
                        self.stop_event.wait(0.01)  # a dead server must not make this spin
        finally:
            self.close()


def grpc_caller(index: int, server: ServerProcess, stubs: Stubs, stop: threading.Event,
                progress: Progress) -> Caller:
    pb = stubs.pb2
    channel = server.channel()
    stub = stubs.stub(channel)
    request = pb.ClientAuthenticateRequest(clientinfo=client_info(pb, f"dev-{index}", "user1"), result=False,
                                           meta=meta(pb))
    vr = pb.ValuedResponse

    def authenticate() -> str:
        reply = stub.OnClientAuthenticate(request, timeout=CALL_TIMEOUT)
        if reply.type == vr.IGNORE and reply.WhichOneof("value") is None:
            return "ignore"
        if reply.type == vr.STOP_AND_RETURN and reply.WhichOneof("value") == "bool_result":
            return "allow" if reply.bool_result else "deny"
        return f"bad: {reply}"

    return Caller(f"grpc-{index}", authenticate, set(GRPC_ANSWER.values()), stop, progress, channel.close)


def http_caller(server: ServerProcess, stop: threading.Event, progress: Progress) -> Caller:
    body = json.dumps(spec.EXAMPLES["auth_on_register"]).encode()
    headers = {"Content-Type": "application/json", "vernemq-hook": "auth_on_register"}
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=CALL_TIMEOUT)

    def register() -> str:
        try:
            conn.request("POST", "/", body=body, headers=headers)  # one keep-alive connection, like hackney's pool
            resp = conn.getresponse()
            raw = resp.read()
        except Exception:
            conn.close()  # the next call connects again
            raise
        try:
            shown = json.dumps(json.loads(raw), sort_keys=True)
        except ValueError:
            shown = repr(raw)
        return f"{resp.status} {shown}"

    return Caller("webhook", register, set(HTTP_ANSWER.values()), stop, progress, conn.close)


# -- what the server says ---------------------------------------------------------------------------


def samples(server: ServerProcess, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), float(s.value)) for f in text_string_to_metric_families(server.metrics_text())
            for s in f.samples if s.name == name]


def served_versions(server: ServerProcess) -> dict[str, list[str]]:
    """hook -> the versions hookrules_rule_info shows for it (exactly one when all is well)."""
    out: dict[str, list[str]] = {}
    for labels, value in samples(server, "hookrules_rule_info"):
        if value:
            out.setdefault(labels["hook"], []).append(labels["version"])
    return out


def notable(log: str, limit: int = 40) -> str:
    """The server log's warnings, errors and loads of an empty file, for assertion messages."""
    lines = [line for line in log.splitlines()
             if " WARNING " in line or " ERROR " in line or "Traceback" in line or f"version {EMPTY}" in line]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


# -- the torture ----------------------------------------------------------------------------------


def called_again(callers: list[Caller]) -> Callable[[], bool]:
    """A predicate: has every caller made another call since now?"""
    marks = [c.calls for c in callers]
    return lambda: all(c.calls > m for c, m in zip(callers, marks))


def loads(server: ServerProcess) -> float:
    """How many times the server has loaded a new version of a rule file."""
    return sum(v for labels, v in samples(server, "hookrules_reloads_total") if labels.get("result") == "loaded")


def torture(server: ServerProcess, stubs: Stubs, rules: Path, saver: Saver, saves: int,
            pause_every: int, pause: float, *, both_seen: bool = True, settle_every: int = SETTLE_EVERY,
            settle_pause: float = SETTLE_PAUSE) -> None:
    """Save `saves` times while the clients call; then check every answer, the log and the metrics.

    both_seen: require the clients to have seen both versions serve. Under inotify the server
    reloads dozens of times during the saves; a poller rescans about once a second, so it is the
    quiet moments (every settle_every saves, odd for it) that make it load both versions.
    """
    stop = threading.Event()
    progress = Progress()
    callers = [grpc_caller(i, server, stubs, stop, progress) for i in range(GRPC_CLIENTS)]
    callers.append(http_caller(server, stop, progress))
    final, texts = rule_texts(saves)
    want = {"client.authenticate": [version_of(texts[AUTHN])], "auth_on_register": [version_of(texts[REGISTER])]}
    served: list[Any] = [None]

    def final_serves() -> bool:
        served[0] = served_versions(server)
        return served[0] == want

    for caller in callers:
        caller.start()
    try:
        # every client is really calling before the first save
        assert wait_for(lambda: all(c.calls for c in callers), timeout=TIMEOUT), "a client made no call"
        before = [c.calls for c in callers]
        loads_before = loads(server)
        progress.started = time.monotonic()
        for save in range(1, saves + 1):
            progress.save = save
            saver(rules, rule_texts(save)[1])
            if save % settle_every == 0:
                time.sleep(settle_pause)  # a quiet moment: the version just saved gets loaded
            if save % pause_every == 0:
                # let the watcher, the server and every client have some CPU: however busy the
                # machine, the clients keep calling all through the saves
                time.sleep(pause)
                assert wait_for(called_again(callers), timeout=TIMEOUT, interval=0.001), \
                    f"a client stopped answering at save {save}"
        saving = time.monotonic() - progress.started
        during = [c.calls - b for c, b in zip(callers, before)]
        # after the last save, the last save serves (the exact bytes: every save is a new version) ...
        final_served = wait_for(final_serves, timeout=TIMEOUT)
        # ... and every client gets its answer: a few more calls each, all made after it served
        after = [c.calls for c in callers]
        wait_for(lambda: all(c.calls > n + 2 for c, n in zip(callers, after)), timeout=TIMEOUT)
    finally:
        stop.set()
        for caller in callers:
            caller.join(CALL_TIMEOUT + 5)
    assert not [c.name for c in callers if c.is_alive()], "a client did not stop"
    log = server.log()
    errors = [(labels, value) for labels, value in samples(server, "hookrules_rule_errors_total") if value]
    reloads = loads(server) - loads_before

    report = "\n".join(f"{c.name}: {c.calls} calls ({d} while saving), answers {dict(c.answers)}"
                       for c, d in zip(callers, during))
    report += f"\n{saves} saves in {saving:.2f}s, {reloads:.0f} rule loads meanwhile"
    print(report)

    problems = []
    # never a reply other than version A's or version B's answer
    problems += [f"{c.name} answered {wrong}" for c in callers for wrong in c.wrong]
    if not final_served:
        problems.append(f"save {saves} never served: hookrules_rule_info shows {served[0]}, not {want}")
    lasts = {c.name: c.last for c in callers}
    final_answers = {**{c.name: GRPC_ANSWER[final] for c in callers[:-1]}, callers[-1].name: HTTP_ANSWER[final]}
    if lasts != final_answers:
        problems.append(f"last answers {lasts}, not version {final}'s {final_answers}")
    if "Traceback" in log:
        problems.append("the server log has a Traceback")
    if "was removed" in log:  # a hook that lost its rule answers IGNORE meanwhile
        problems.append("a rule was dropped as removed")
    # kind="load": a file was read while in flux (half written, or renamed away) and failed to compile;
    # kind="runtime": a rule failed and its hook answered by failure policy
    problems += [f"hookrules_rule_errors_total{labels} = {value:.0f}" for labels, value in errors]
    # not vacuous: every client called all through the saves, while the server swapped rule sets
    problems += [f"vacuous: {c.name} made only {d} calls while the files were saved"
                 for c, d in zip(callers, during) if d <= MIN_CALLS]
    if reloads < MIN_RELOADS:
        problems.append(f"vacuous: only {reloads:.0f} new versions loaded while the files were saved")
    seen = set().union(*(c.answers for c in callers))
    if both_seen and not ({GRPC_ANSWER["A"], HTTP_ANSWER["A"]} & seen and {GRPC_ANSWER["B"], HTTP_ANSWER["B"]} & seen):
        problems.append("vacuous: the clients did not see both versions serve")
    assert not problems, ("\n".join(problems) + f"\n\n{report}\n\nserver log (warnings, errors, "
                          f"loads of an empty file = version {EMPTY}):\n{notable(log)}")


@pytest.mark.parametrize("pattern", ["in_place", "temp_file", "vim", "configmap"])
def test_thousand_saves_while_clients_call_never_give_a_wrong_answer(
        tmp_path: Path, start_server: Callable[..., ServerProcess], stubs: dict[str, Stubs], pattern: str) -> None:
    rules, saver = make_rules(tmp_path, pattern)
    server = start_server(rules)
    torture(server, stubs["v3"], rules, saver, SAVES, PAUSE_EVERY, PAUSE)


@pytest.mark.parametrize("pattern", ["in_place", "temp_file", "vim", "configmap"])
def test_polling_hundred_saves_while_clients_call_never_give_a_wrong_answer(
        tmp_path: Path, start_server: Callable[..., ServerProcess], stubs: dict[str, Stubs], pattern: str) -> None:
    rules, saver = make_rules(tmp_path, pattern)
    server = start_server(rules, "--polling")
    assert "(polling)" in server.log()
    # the quiet moments fall on both versions, so the clients must see both serve
    torture(server, stubs["v3"], rules, saver, POLLING_SAVES, 1, POLLING_PAUSE, both_seen=True,
            settle_every=POLLING_SETTLE_EVERY, settle_pause=POLLING_SETTLE_PAUSE)
