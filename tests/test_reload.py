"""Hot reload, end to end: a real server, real rule files changed the ways editors and Kubernetes change them.

Every test starts `hookrules serve` on its own rules directory and watches the answers of the real
protoc-generated client change. Waits are bounded polls (support.wait_for); nothing asserts on timing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hookrules.engine import Engine
from hookrules.reload import Reloader
from hookrules.ruleset import RuleSet, scan
from prometheus_client.parser import text_string_to_metric_families

from .emqx_session import client_info, meta
from .support import ServerProcess, Stubs, wait_for

AUTHN = "client.authenticate.star"
AUTHZ = "client.authorize.star"
V1 = "# first version\nallow()\n"
V2 = '# second version\ndeny("v2")\n'
V3 = '# third version\nif client.username == "user1":\n    allow()\ndeny("v3")\n'
TIMEOUT = 10.0


def version_of(text: str) -> str:
    """What the server calls a rule's version: the first 12 hex digits of sha256 of the file's bytes."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Client:
    """The EMQX side of one server: a channel and a v3 stub, with the calls these tests make."""

    def __init__(self, server: ServerProcess, stubs: Stubs):
        self.server = server
        self.pb = stubs.pb2
        self.channel = server.channel()
        self.stub = stubs.stub(self.channel)

    def authenticate(self) -> str:
        """'allow', 'deny' or 'ignore', as EMQX reads the reply (anything else is returned as 'bad: ...')."""
        pb = self.pb
        reply = self.stub.OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "dev-1", "user1"), result=False, meta=meta(pb)), timeout=TIMEOUT)
        return self._boolean(reply)

    def authorize(self, topic: str) -> str:
        pb = self.pb
        reply = self.stub.OnClientAuthorize(pb.ClientAuthorizeRequest(
            clientinfo=client_info(pb, "dev-1", "user1"), type=pb.ClientAuthorizeRequest.PUBLISH, topic=topic,
            result=False, meta=meta(pb)), timeout=TIMEOUT)
        return self._boolean(reply)

    def _boolean(self, reply: Any) -> str:
        vr = self.pb.ValuedResponse
        if reply.type == vr.IGNORE and reply.WhichOneof("value") is None:
            return "ignore"
        if reply.type == vr.STOP_AND_RETURN and reply.WhichOneof("value") == "bool_result":
            return "allow" if reply.bool_result else "deny"
        return f"bad: {reply}"

    def provider_loaded(self) -> dict[str, list[str]]:
        pb = self.pb
        reply = self.stub.OnProviderLoaded(pb.ProviderLoadedRequest(
            broker=pb.BrokerInfo(version="5.9.0", sysdescr="EMQX"), meta=meta(pb)), timeout=TIMEOUT)
        return {h.name: list(h.topics) for h in reply.hooks}

    def until(self, expected: str, call: Callable[[], str] | None = None) -> str:
        """Poll until the answer is `expected` (bounded); returns the last answer for the assertion."""
        call = call or self.authenticate
        last = [""]

        def check() -> bool:
            last[0] = call()
            return last[0] == expected

        wait_for(check, timeout=TIMEOUT)
        return last[0]


class Poller:
    """Calls OnClientAuthenticate in a loop on a thread and records every answer, until stopped."""

    def __init__(self, client: Client):
        self.client = client
        self.answers: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.answers) < 100_000:
            try:
                self.answers.append(self.client.authenticate())
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.errors.append(exc)
                return

    def __enter__(self) -> Poller:
        self._thread.start()
        wait_for(lambda: self.answers or self.errors, timeout=TIMEOUT)  # it is really calling
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "poller did not stop"


@pytest.fixture
def serve(start_server: Callable[..., ServerProcess], stubs: dict[str, Stubs]) -> Iterator[Callable[..., Client]]:
    """serve(rules, *extra) -> a Client connected to a new server on that rules directory."""
    clients: list[Client] = []

    def start(rules: Path, *extra: str) -> Client:
        client = Client(start_server(rules, *extra), stubs["v3"])
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.channel.close()


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A rules directory holding only client.authenticate.star, first version (allow)."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / AUTHN).write_text(V1)
    return d


def save_in_place(path: Path, text: str) -> None:
    """What most editors without 'atomic save' do: truncate, write, close."""
    with open(path, "w") as f:
        f.write(text)


def metric(server: ServerProcess, sample_name: str, **labels: str) -> float | None:
    """The value of one series on /metrics, or None when the series is not there."""
    for family in text_string_to_metric_families(server.metrics_text()):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return float(sample.value)
    return None


def quiet(log: str) -> str:
    """The server log without its DEBUG lines (watchdog's events), for assertion messages."""
    return "\n".join(line for line in log.splitlines() if " DEBUG " not in line)


def series(server: ServerProcess, sample_name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for f in text_string_to_metric_families(server.metrics_text())
            for s in f.samples if s.name == sample_name]


# -- 1, 2: the two ordinary ways to save ---------------------------------------------------------


def test_in_place_save_serves_the_new_version(rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules)
    assert client.authenticate() == "allow"
    save_in_place(rules / AUTHN, V2)
    assert client.until("deny") == "deny"
    assert f"loaded {rules / AUTHN} (version {version_of(V2)}, was {version_of(V1)})" in client.server.log()


def test_temp_file_renamed_over_the_target_serves_the_new_version(rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules)
    assert client.authenticate() == "allow"
    tmp = rules / (AUTHN + "___jb_tmp___")  # JetBrains' name; Sublime and agents use similar ones
    tmp.write_text(V2)
    os.replace(tmp, rules / AUTHN)
    assert client.until("deny") == "deny"
    assert sorted(p.name for p in rules.iterdir()) == [AUTHN]
    assert "names no hook" not in client.server.log()


# -- 3: vim --------------------------------------------------------------------------------------


def test_vim_backup_rename_save_serves_the_new_version_and_never_answers_ignore(
        rules: Path, serve: Callable[..., Client]) -> None:
    """vim (writebackup, backupcopy=auto): probe file 4913, rename the file to file~, write a new one, drop file~."""
    client = serve(rules)
    assert client.authenticate() == "allow"
    target = rules / AUTHN
    backup = rules / (AUTHN + "~")
    with Poller(client) as poller:
        probe = rules / "4913"
        probe.write_text("")
        probe.unlink()
        os.rename(target, backup)
        # vim is still writing: give the watcher time to see the rule file gone (debounce is 0.05 s)
        threading.Event().wait(0.1)
        with open(target, "w") as f:
            f.write(V2)
        backup.unlink()
        assert client.until("deny") == "deny"
        # keep calling a little longer: the rule must not be dropped once the grace period is over
        count = len(poller.answers)
        wait_for(lambda: len(poller.answers) > count + 50 or poller.errors, timeout=TIMEOUT)
    assert not poller.errors, poller.errors
    assert poller.answers, "the poller made no calls"
    assert set(poller.answers) <= {"allow", "deny"}, sorted(set(poller.answers))
    assert "ignore" not in poller.answers
    assert poller.answers[-1] == "deny"
    log = client.server.log()
    assert "was removed" not in log
    assert f"loaded {target} (version {version_of(V2)}, was {version_of(V1)})" in log


# -- 4: Kubernetes ConfigMap volume ----------------------------------------------------------------


def test_kubernetes_configmap_symlink_swap_serves_the_new_version(tmp_path: Path,
                                                                  serve: Callable[..., Client]) -> None:
    """kubelet's atomic writer: a timestamped dir, `..data` -> it, and file -> ..data/file; updates swap ..data."""
    rules = tmp_path / "configmap"
    rules.mkdir()
    first = rules / "..2026_01_01"
    first.mkdir()
    (first / AUTHN).write_text(V1)
    os.symlink("..2026_01_01", rules / "..data")
    os.symlink(f"..data/{AUTHN}", rules / AUTHN)
    client = serve(rules)
    assert client.authenticate() == "allow"

    with Poller(client) as poller:
        second = rules / "..2026_01_02"
        second.mkdir()
        (second / AUTHN).write_text(V2)
        os.symlink("..2026_01_02", rules / "..data_tmp")
        os.replace(rules / "..data_tmp", rules / "..data")
        shutil.rmtree(first)
        assert client.until("deny") == "deny"
    assert not poller.errors, poller.errors
    assert "ignore" not in poller.answers, sorted(set(poller.answers))
    assert os.readlink(rules / "..data") == "..2026_01_02"
    assert f"loaded {rules / AUTHN} (version {version_of(V2)}, was {version_of(V1)})" in client.server.log()
    assert metric(client.server, "hookrules_rule_info", hook="client.authenticate", version=version_of(V2)) == 1


# -- 5: a broken save keeps the previous version -------------------------------------------------

BROKEN = {
    # name: (text, line, col, code)
    "syntax_error": ('allow()\nif client.username == "x"\n    deny("x")\n', 2, 26, "parse_error"),
    "while_loop": ("x = 1\nwhile True:\n    pass\nallow()\n", 2, 1, "check_error"),
    "import": ("# imports are refused\n\nimport os\nallow()\n", 3, 1, "check_error"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_save_keeps_the_previous_version_and_says_where(rules: Path, serve: Callable[..., Client],
                                                               case: str) -> None:
    text, line, col, code = BROKEN[case]
    client = serve(rules)
    server = client.server
    assert client.authenticate() == "allow"
    errors_name = "hookrules_rule_errors_total"
    before = metric(server, errors_name, hook="client.authenticate", kind="load") or 0.0

    save_in_place(rules / AUTHN, text)
    assert wait_for(lambda: "kept previous version" in server.log(), timeout=TIMEOUT), quiet(server.log())
    assert client.authenticate() == "allow"  # the previous version still serves
    log = server.log()
    report = re.search(re.escape(str(rules / AUTHN)) + r":(\d+):(\d+): (\w+): .*? => kept previous version (\w+)",
                       log, re.DOTALL)
    assert report, quiet(log)
    assert (int(report[1]), int(report[2]), report[3]) == (line, col, code)
    assert report[4] == version_of(V1)
    assert metric(server, errors_name, hook="client.authenticate", kind="load") == before + 1
    assert metric(server, "hookrules_reloads_total", hook="client.authenticate", result="error") == 1
    assert metric(server, "hookrules_rule_info", hook="client.authenticate", version=version_of(V1)) == 1

    save_in_place(rules / AUTHN, V2)  # fixed: the next good save serves
    assert client.until("deny") == "deny"
    assert f"loaded {rules / AUTHN} (version {version_of(V2)}, was {version_of(V1)})" in server.log()


def test_breaking_a_file_again_after_a_revert_is_reported_again(rules: Path, serve: Callable[..., Client]) -> None:
    """Break, undo (the file is back to the version serving), break the same way: both breaks are errors.

    An operator who saves a broken file must be told every time, whatever happened in between.
    """
    text, line, col, _ = BROKEN["syntax_error"]
    client = serve(rules)
    server = client.server
    target = rules / AUTHN
    marker = f"{target}:{line}:{col}: "

    save_in_place(target, text)
    assert wait_for(lambda: server.log().count(marker) == 1, timeout=TIMEOUT), quiet(server.log())

    # undo: back to exactly the text that serves; then a different good version proves the rescans ran
    save_in_place(target, V1)
    save_in_place(rules / AUTHZ, 'deny("authz")\n')
    assert client.until("deny", lambda: client.authorize("a/b")) == "deny"

    save_in_place(target, text)  # the same mistake again
    assert wait_for(lambda: server.log().count(marker) == 2, timeout=TIMEOUT), quiet(server.log())
    assert client.authenticate() == "allow"
    assert server.log().count("kept previous version") == 2
    assert metric(server, "hookrules_rule_errors_total", hook="client.authenticate", kind="load") == 2


def test_a_file_still_being_written_is_not_served_when_another_save_triggers_a_rescan(
        rules: Path, serve: Callable[..., Client]) -> None:
    """The watcher reads a file only once it is closed or moved into place, so an editor that has truncated
    the file and not finished writing it must not have its half-written text served, even when some other
    file's save makes the server rescan the directory meanwhile.
    """
    client = serve(rules)
    assert client.authenticate() == "allow"
    with open(rules / AUTHN, "w") as writing:  # truncated; the editor writes the new text in parts
        writing.write("# second version\n")
        writing.flush()
        (rules / AUTHZ).write_text('deny("authz")\n')  # another file is saved and closed meanwhile
        assert client.until("deny", lambda: client.authorize("a/b")) == "deny"  # that save was rescanned
        while_writing = client.authenticate()
        writing.write('deny("v2")\n')
    assert client.until("deny") == "deny"  # closed: now the new version serves
    assert while_writing == "allow", f"answered {while_writing!r} from a file still being written"


# -- 6: deleting a file --------------------------------------------------------------------------


def test_deleting_the_file_removes_the_rule(rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules)
    server = client.server
    assert client.authenticate() == "allow"
    (rules / AUTHN).unlink()
    assert client.until("ignore") == "ignore"
    assert f"{rules / AUTHN} was removed: hook client.authenticate now answers ignore()" in server.log()
    assert metric(server, "hookrules_reloads_total", hook="client.authenticate", result="removed") == 1
    assert metric(server, "hookrules_rules_loaded") == 0
    assert [s for s in series(server, "hookrules_rule_info") if s["hook"] == "client.authenticate"] == []


def test_a_rule_file_missing_from_the_listing_keeps_its_rule_until_gone_for_the_grace(tmp_path: Path) -> None:
    """Only the scan's own listing counts: a file missing there is kept (vim's rename-away) and
    removed by a later rescan once it has been gone for the whole grace period."""
    (tmp_path / AUTHN).write_text(V1)
    reloader = Reloader(tmp_path, Engine(), grace=0.2)
    reloader.load()
    (tmp_path / AUTHN).unlink()
    assert [o.result for o in reloader.rescan(settle=0.0)] == ["missing"]
    assert "client.authenticate" in reloader.engine.ruleset.rules
    time.sleep(0.25)
    assert [o.result for o in reloader.rescan(settle=0.0)] == ["removed"]
    assert "client.authenticate" not in reloader.engine.ruleset.rules


def test_absences_in_two_saves_do_not_add_up_to_a_removal(tmp_path: Path) -> None:
    """vim renames the file away on every save: a rescan may catch it gone in one save and the next
    rescan, past the grace, in another. The file seen back in between restarts its grace."""
    (tmp_path / AUTHN).write_text(V1)
    reloader = Reloader(tmp_path, Engine(), grace=0.2)
    reloader.load()
    (tmp_path / AUTHN).unlink()  # save 1, caught while renamed away
    assert [o.result for o in reloader.rescan(settle=0.0)] == ["missing"]
    (tmp_path / AUTHN).write_text(V2)
    reloader.on_file_event("created", AUTHN)  # as the watcher reports it (no loop: nothing is scheduled)
    time.sleep(0.25)
    (tmp_path / AUTHN).unlink()  # save 2, caught while renamed away
    assert [o.result for o in reloader.rescan(settle=0.0)] == ["missing"]
    assert reloader.engine.ruleset.rules["client.authenticate"].version == version_of(V1)


def test_scan_removes_only_the_removable_hooks(tmp_path: Path) -> None:
    (tmp_path / AUTHN).write_text(V1)
    (tmp_path / AUTHZ).write_text(V1)
    previous, _ = scan(tmp_path, RuleSet())
    (tmp_path / AUTHN).unlink()
    (tmp_path / AUTHZ).unlink()
    ruleset, outcomes = scan(tmp_path, previous, removable=frozenset({"client.authorize"}))
    assert sorted((o.hook, o.result) for o in outcomes) == [("client.authenticate", "missing"),
                                                            ("client.authorize", "removed")]
    assert list(ruleset.rules) == ["client.authenticate"]
    assert scan(tmp_path, previous)[0].rules == {}  # no removable set: the listing alone decides


# -- 7: a new rule file while running --------------------------------------------------------------


def test_new_rule_file_is_served_and_operator_is_told_to_reload_the_provider(
        rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules)
    server = client.server
    assert client.provider_loaded() == {"client.authenticate": []}
    assert client.authorize("a/b") == "ignore"  # no rule for it yet

    tmp = rules / ".client.authorize.star.tmp"
    tmp.write_text('if topic.startswith("secret/"):\n    deny("secret")\nallow()\n')
    os.replace(tmp, rules / AUTHZ)
    assert client.until("deny", lambda: client.authorize("secret/x")) == "deny"
    assert client.authorize("a/b") == "allow"

    assert wait_for(lambda: "EMQX hook list changed" in server.log(), timeout=TIMEOUT), quiet(server.log())
    advice = next(line for line in server.log().splitlines() if "EMQX hook list changed" in line)
    assert "added: client.authorize" in advice
    assert "only when it loads the provider" in advice
    assert client.provider_loaded() == {"client.authenticate": [], "client.authorize": []}


# -- 8: a file that names no hook ----------------------------------------------------------------


def test_file_with_an_invalid_name_is_reported_with_the_valid_names(rules: Path,
                                                                    serve: Callable[..., Client]) -> None:
    client = serve(rules)
    server = client.server
    (rules / "client.auth.star").write_text('deny("wrong file")\n')
    assert wait_for(lambda: "names no hook" in server.log(), timeout=TIMEOUT), quiet(server.log())
    log = server.log()
    report = re.search(re.escape(str(rules / "client.auth.star")) + r":1:1: \w+: 'client\.auth\.star' names no hook"
                       r".*valid names: (.*)\) => file ignored", log)
    assert report, quiet(log)
    names = report[1].split(", ")
    assert "client.authenticate.star" in names and "client.authorize.star" in names
    assert "client.auth.star" not in names
    assert client.authenticate() == "allow"  # the valid file still serves
    assert metric(server, "hookrules_rule_errors_total", hook="invalid", kind="load") == 1


# -- 9: metrics after a reload -------------------------------------------------------------------


def test_metrics_follow_the_served_version(rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules)
    server = client.server
    reloads = "hookrules_reloads_total"
    assert metric(server, reloads, hook="client.authenticate", result="loaded") == 1  # the first load
    assert series(server, "hookrules_rule_info") == [{"hook": "client.authenticate", "version": version_of(V1)}]

    save_in_place(rules / AUTHN, V2)
    assert client.until("deny") == "deny"
    assert wait_for(lambda: metric(server, reloads, hook="client.authenticate", result="loaded") == 2,
                    timeout=TIMEOUT)
    info = [s for s in series(server, "hookrules_rule_info") if s["hook"] == "client.authenticate"]
    assert info == [{"hook": "client.authenticate", "version": version_of(V2)}]
    assert metric(server, "hookrules_rule_info", hook="client.authenticate", version=version_of(V2)) == 1
    assert metric(server, "hookrules_rules_loaded") == 1
    assert (metric(server, "hookrules_last_reload_timestamp_seconds") or 0) > 0

    save_in_place(rules / AUTHN, V3)
    assert client.until("allow") == "allow"
    assert wait_for(lambda: metric(server, reloads, hook="client.authenticate", result="loaded") == 3,
                    timeout=TIMEOUT)
    info = [s for s in series(server, "hookrules_rule_info") if s["hook"] == "client.authenticate"]
    assert info == [{"hook": "client.authenticate", "version": version_of(V3)}]


# -- 10: polling -----------------------------------------------------------------------------------


def test_polling_mode_picks_up_an_in_place_save(rules: Path, serve: Callable[..., Client]) -> None:
    client = serve(rules, "--polling")
    assert "(polling)" in client.server.log()
    assert client.authenticate() == "allow"
    save_in_place(rules / AUTHN, V2)
    assert client.until("deny") == "deny"
    assert f"loaded {rules / AUTHN} (version {version_of(V2)}, was {version_of(V1)})" in client.server.log()


def test_an_empty_rule_file_loads_only_once_it_has_stayed_empty(tmp_path: Path) -> None:
    """An in-place save truncates first: on a loaded machine its writer can stall past the settle time,
    and the empty file would load (deciding nothing: every call ignored). An empty or blank file loads
    only once it is EMPTY_SETTLE old; a file with contents, at the settle time as before."""
    import time

    from hookrules.ruleset import EMPTY_SETTLE, _read_settled

    for text in ("", "  \n\n"):
        path = tmp_path / "client.authenticate.star"
        path.write_text(text)
        old = time.time() - 1.0  # past the settle time, not past EMPTY_SETTLE
        os.utime(path, (old, old))
        assert _read_settled(tmp_path, path, 0.5) is None
        older = time.time() - EMPTY_SETTLE - 1.0
        os.utime(path, (older, older))
        assert _read_settled(tmp_path, path, 0.5) == text.encode()
        assert _read_settled(tmp_path, path, 0.0) == text.encode()  # no settle (start-up, `check`): read as it is
    path.write_text("allow()\n")
    os.utime(path, (time.time() - 1.0,) * 2)
    assert _read_settled(tmp_path, path, 0.5) == b"allow()\n"
