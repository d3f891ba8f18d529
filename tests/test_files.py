"""Issue 9 point 6: what hookrules reads of the rules directory, and how a bad file fails.

Every kind in tests/bad_files.CATALOGUE is saved into a directory that also holds good rules and
data: the scan returns (a FIFO must not block it), every bad file is a load error of that file,
located at it, and everything else loads as before. The server-level counterpart, with clients
calling throughout, is tests/test_files_load.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

from collections.abc import Mapping

import pytest

from hookrules import datafiles, files
from hookrules.events import Client, Event, frozen_map
from hookrules.files import FileRefused, read_file
from hookrules.ruleset import FileOutcome, RuleSet, scan

from .bad_files import CATALOGUE, MiB, make_unreadable

ROOT = Path(__file__).resolve().parent.parent

GOOD = {"client.authenticate.star": 'if client.username in data.users:\n    allow()\nelse:\n    deny("who?")\n',
        "auth_on_register.star": 'load("lib/acl.star", "known")\nif known(client.username):\n    allow()\n',
        "lib/acl.star": 'def known(u):\n    return u in data.users\n',
        "data/users.json": '["alice"]'}
SCAN_TIMEOUT = 120.0  # seconds: a scan that does not return in this time is blocked


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def authn(username: str) -> Event:
    return Event("client.authenticate", "emqx", Client(id="c", username=username), frozen_map({"password": b"pw"}))


def bounded_scan(directory: Path, previous: RuleSet) -> tuple[RuleSet, list[FileOutcome]]:
    """scan() in a thread: a read that blocks (a FIFO) fails the test instead of hanging it."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(scan(directory, previous)), daemon=True)
    thread.start()
    thread.join(SCAN_TIMEOUT)
    assert result, f"scan did not return within {SCAN_TIMEOUT} s"
    return result[0]  # type: ignore[no-any-return]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    rules, outside = tmp_path / "rules", tmp_path / "outside"
    outside.mkdir()
    return write(rules, GOOD), outside


_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.bad_files import CATALOGUE
from tests.test_files import authn
from hookrules.engine import Engine
from hookrules.ruleset import RuleSet, scan
rules, outside, kind = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
first, _ = scan(rules, RuleSet())
reported = CATALOGUE[kind](rules, outside)
ruleset, outcomes = scan(rules, first)
again, outcomes2 = scan(rules, ruleset)
print(json.dumps({
    "reported": reported,
    "errors": {e.location.file: e.one_line() for o in outcomes for e in o.errors},
    "error_files": [[o.path, o.result, [e.location.file for e in o.errors]] for o in outcomes if o.errors],
    "error_hooks": sorted({o.hook for o in outcomes if o.result == "error"} - {"data"}),
    "broken_or_stale": sorted(set(ruleset.broken) | set(ruleset.stale)),
    "kept": all(ruleset.rules[h].file_version == first.rules[h].file_version
                for h in ("client.authenticate", "auth_on_register")),
    "decided_by": Engine(ruleset).decide(authn("alice")).source,
    "users": list(ruleset.data.files["users"].value),
    "same_again": sorted((o.path, o.result, [e.one_line() for e in o.errors]) for o in outcomes2 if o.errors)
                  == sorted((o.path, o.result, [e.one_line() for e in o.errors]) for o in outcomes if o.errors),
    "versions_again": again.versions() == ruleset.versions(),
}))
"""


@pytest.mark.parametrize("kind", list(CATALOGUE))
def test_every_bad_file_is_a_load_error_of_that_file_and_nothing_else_changes(kind: str, dirs: tuple[Path, Path]) -> None:
    """In a child process: the big files must not raise this process's memory high-water mark, which
    the sandbox tests' children inherit (ru_maxrss), and a blocked read must not hang the test run."""
    rules, outside = dirs
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(rules), str(outside), kind],
                              capture_output=True, text=True, timeout=SCAN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scans did not return within {SCAN_TIMEOUT} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = result["errors"]
    for rel in result["reported"]:
        assert str(rules / rel) in errors, (kind, rel, errors)
        assert any(res == "error" for path, res, files in result["error_files"]
                   if path == str(rules / rel) or str(rules / rel) in files)
    if not result["reported"]:  # a legitimate file: it loads
        assert errors == {}, errors
    assert result["kept"] and result["decided_by"] == "rule" and result["users"] == ["alice"]
    assert result["broken_or_stale"] == result["error_hooks"]
    assert result["same_again"] and result["versions_again"]  # unchanged: the same errors, nothing rebuilt


KINDS = ["fifo", "dev_zero", "directory", "socket", "outside_link", "outside_dir_link", "dangling_link", "too_big"]
PLACES = [(where, kind) for where in ("rule", "library", "data") for kind in KINDS
          if (where, kind) != ("rule", "outside_dir_link")]  # rules live at the top: no subdirectory to link


@pytest.mark.parametrize(("where", "kind"), PLACES)
def test_each_place_refuses_each_kind_of_file(where: str, kind: str, dirs: tuple[Path, Path]) -> None:
    """Every file hookrules reads goes through one reader: the same refusals wherever it is."""
    rules, outside = dirs
    rel = {"rule": "client.authorize.star", "library": "lib/x.star", "data": "data/x.json"}[where]
    if where == "library":
        (rules / "auth_on_publish.star").write_text('load("lib/x.star", "X")\nallow()\n')
    target = rules / rel
    (outside / "real").mkdir()
    (outside / "real" / target.name).write_text("X = 1\n" if where != "data" else "[1]")
    limit = datafiles.MAX_DATA_BYTES if where == "data" else files.MAX_RULE_BYTES
    make_unreadable(kind, target, outside / "real" / target.name, limit + 1)  # the kinds every reader refuses
    if kind == "outside_dir_link":  # the file is a plain name in a directory that links out
        (rules / "sub").symlink_to(outside / "real", target_is_directory=True)
        rel = f"sub/{target.name}"
        if where == "library":
            (rules / "auth_on_publish.star").write_text(f'load("{rel}", "X")\nallow()\n')
        else:  # data/ itself links out
            os.unlink(rules / "data" / "users.json")
            os.rmdir(rules / "data")
            (outside / "real" / "users.json").write_text('["alice"]')
            (rules / "data").symlink_to(outside / "real", target_is_directory=True)
            rel = "data/x.json"
    elif kind == "dangling_link":
        os.symlink("nothing.json", target)
    _, outcomes = bounded_scan(rules, RuleSet())
    errors = [e for o in outcomes for e in o.errors if e.location.file == str(rules / rel)]
    assert errors, (where, kind, [e.one_line() for o in outcomes for e in o.errors])
    assert all(e.code in ("load_error", "parse_error") for e in errors)
    said = {"fifo": "named pipe", "socket": "a socket", "directory": "a directory", "too_big": "over"}.get(kind)
    if said:  # says what the file is (a socket said "No such device or address, check the permissions")
        assert any(said in e.message for e in errors), [e.one_line() for e in errors]


YAML_DOCS = ["a: 1\nb: 2.5\nc: true\nd: null\ne: ~\nf: 0x1F\ng: 0o17\nh: 1_000\ni: .inf\n",
             "- a\n- 'b'\n- \"c\\n\"\n- |\n  multi\n  line\n- >\n  folded\n  text\n",
             "when: 2024-01-01\nts: 2001-12-14t21:59:43.10-05:00\nexplicit: !!timestamp 2024-01-01\n",
             "s: !!str 123\ni: !!int '7'\nf: !!float '1.5'\nb: !!binary aGVsbG8=\nn: !!null ''\nbo: !!bool 'yes'\n",
             "{a: [1, 2, {b: c}], d: {}, e: []}\n", "", "# only a comment\n", "42\n", "x: yes\ny: no\nz: on\n",
             "3: int key\n2.5: float key\ntrue: bool key\n~: null key\n", "a:\nb:\n  - \n",
             "---\na: 1\n...\n", "[a, b, [c, [d]]]\n", "k: v # comment\n'quoted key': 1\n", "!!map {a: 1}\n",
             "!!seq [1]\n"]


@pytest.mark.parametrize("doc", YAML_DOCS)
def test_yaml_built_from_events_is_what_pyyaml_builds(doc: str) -> None:
    """YAML data is built straight from libyaml's events (no node tree: a tenth of the memory); for
    every kind of scalar, tag and collection it is what PyYAML's own loader makes, frozen."""
    import yaml

    from hookrules.events import freeze
    expected = freeze(yaml.load(doc, Loader=datafiles._Loader))  # noqa: S506 - a SafeLoader subclass
    assert datafiles.parse("x.yaml", doc.encode()) == expected


@pytest.mark.parametrize("doc", ["a: &x 1\nb: *x\n", "a: !!set {x, y}\n", "a: !!omap [x: 1]\n", "<<: {a: 1}\n",
                                 "a: 1\n---\nb: 2\n", "? [a]\n: 1\n", "a: !!python/object:os.system x\n",
                                 "a: [1,\n", "a: b: c\n", "a: 1\na: 2\n"])
def test_yaml_refusals_are_load_errors_with_a_line(doc: str) -> None:
    with pytest.raises(datafiles.DataError) as info:
        datafiles.parse("x.yaml", doc.encode())
    assert info.value.error.location.line >= 1, info.value.error.one_line()


def test_the_reader_reads_no_more_than_the_limit(tmp_path: Path) -> None:
    """fstat first, then at most limit + 1 bytes: a 2 GB sparse file costs nothing to refuse."""
    (tmp_path / "big.json").write_bytes(b"[" + b"1," * 600 + b"1]")
    tracemalloc.start()
    try:
        with pytest.raises(FileRefused):
            read_file(tmp_path, tmp_path / "big.json", 1000)
        big = tmp_path / "sparse.json"
        with open(big, "wb") as f:
            f.truncate(4096 * MiB)
        with pytest.raises(FileRefused, match="over 16 MiB"):
            read_file(tmp_path, big, 16 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB
    assert read_file(tmp_path, tmp_path / "big.json", 2000)[0].startswith(b"[1,")


# Issue 9 audit F8: the same contents in every format, with a byte order mark, and with a duplicate.
SAME = {".json": '{"users": [{"user": "alice", "role": "admin"}]}',
        ".yaml": "users:\n  - user: alice\n    role: admin\n",
        ".csv": "user,role\nalice,admin\n"}
DUPLICATED = {".json": '{"users": [{"user": "alice",\n "user": "mallory", "role": "admin"}]}',
              ".yaml": "users:\n  - user: alice\n    user: mallory\n    role: admin\n",
              ".csv": "user,user,role\nalice,mallory,admin\n"}
DUPLICATE_AT = {".json": (1, 12), ".yaml": (3, 5), ".csv": (1, 6)}


def _users(value: object) -> object:
    return value["users"] if isinstance(value, Mapping) else value  # a CSV file is the rows alone


@pytest.mark.parametrize("suffix", list(SAME))
def test_every_format_strips_a_byte_order_mark_the_same_way(suffix: str) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: it became part of the first header ('\\ufeffuser'),
    while YAML stripped it and JSON refused the file."""
    plain = datafiles.parse(f"x{suffix}", SAME[suffix].encode())
    assert datafiles.parse(f"x{suffix}", b"\xef\xbb\xbf" + SAME[suffix].encode()) == plain
    assert _users(plain)[0]["user"] == "alice"  # type: ignore[index]


@pytest.mark.parametrize("suffix", list(DUPLICATED))
def test_a_duplicate_key_or_header_is_a_load_error_with_its_place(suffix: str) -> None:
    """They silently kept the last (a second entry for a user replaced the first)."""
    with pytest.raises(datafiles.DataError) as info:
        datafiles.parse(f"x{suffix}", DUPLICATED[suffix].encode())
    err = info.value.error
    assert "twice" in err.message and "user" in err.message, err.one_line()
    assert (err.location.line, err.location.col) == DUPLICATE_AT[suffix], err.one_line()


def test_a_big_json_file_refuses_duplicates_too() -> None:
    """Over JSON_C_MAX_BYTES the pure-Python scanner parses: the same refusal."""
    filler = ", ".join(f'"k{i}": {i}' for i in range(datafiles.JSON_C_MAX_BYTES // 8))
    with pytest.raises(datafiles.DataError) as info:
        datafiles.parse("x.json", ("{" + filler + ', "k1": 0}').encode())
    assert "'k1' appears twice" in info.value.error.message and info.value.error.location.line == 1


def test_the_data_files_together_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9 audit F7: twelve 16 MiB YAML files took 667 MB; a hundred would run out of memory. The
    files past the total (in name order) are load errors of those files; the others load; once the
    total fits again they load too (the refusal is not cached as a fault of their contents)."""
    monkeypatch.setattr(datafiles, "MAX_DATA_TOTAL_BYTES", 100)
    for name in "abcde":
        write(tmp_path, {f"data/{name}.json": '["' + name * 30 + '"]'})  # 34 bytes each: two fit
    data, found = datafiles.scan_data(tmp_path, datafiles.DataSet())
    assert sorted(data.files) == ["a", "b"] and sum(f.size for f in data.files.values()) <= 100
    errors = {Path(o.path).name: o.errors[0].message for o in found if o.result == "error"}
    assert sorted(errors) == ["c.json", "d.json", "e.json"] and all("together are over" in m for m in errors.values())
    for name in "ab":
        (tmp_path / "data" / f"{name}.json").unlink()
    data, found = datafiles.scan_data(tmp_path, data)
    assert sorted(data.files) == ["c", "d"] and {o.result for o in found if o.path.endswith("c.json")} == {"loaded"}


def test_a_data_file_written_while_it_is_read_keeps_its_last_good_version(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9 audit F9: data files had no before/after look (rules had): an in-place write overlapping
    a read could be served half-written until the next change. Now such a read is "pending": the last
    good version serves, and the reloader rescans (it does for every pending outcome)."""
    write(tmp_path, {"data/users.json": '["alice"]'})
    data, _ = datafiles.scan_data(tmp_path, datafiles.DataSet())
    write(tmp_path, {"data/users.json": '["alice", "bob"]'})
    real = datafiles.read_file

    def overlapped(root: Any, path: Any, limit: int, *args: Any) -> Any:
        raw, st = real(root, path, limit, *args)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a writer touched it meanwhile
        return raw[: len(raw) // 2], st  # and what was read is half of it

    monkeypatch.setattr(datafiles, "read_file", overlapped)
    again, found = datafiles.scan_data(tmp_path, data)
    assert [o.result for o in found] == ["pending"] and again.files["users"].value == ("alice",)
    new, found = datafiles.scan_data(tmp_path, datafiles.DataSet())  # never loaded: absent until read whole
    assert [o.result for o in found] == ["pending"] and "users" not in new.files
    monkeypatch.undo()
    done, found = datafiles.scan_data(tmp_path, again)
    assert [o.result for o in found] == ["loaded"] and done.files["users"].value == ("alice", "bob")
