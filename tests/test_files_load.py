"""Issue 9 point 6, end to end: a real server keeps answering correctly while every bad kind of file
is saved into its rules directory, each is reported as a load error of that file, and a good edit
made afterwards still deploys. (The figures, worst extra wait and peak memory, come from
bench/load_stall.py, which runs the same clients and files: timings are not asserted here.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Callable

from .bad_files import CATALOGUE
from .stall_harness import grpc_caller, http_caller, outside_dir, save_each, write_rules
from .support import ServerProcess, Stubs, wait_for


def test_the_server_keeps_answering_while_every_bad_file_is_saved(start_server: Callable[..., ServerProcess],
                                                                  tmp_path: Path, stubs: dict[str, Stubs]) -> None:
    rules = write_rules(tmp_path / "rules")
    server = start_server(rules, "--log-level", "info")
    callers = [grpc_caller(server, stubs["v3"]), http_caller(server)]
    for caller in callers:
        caller.start()
    try:
        results = save_each(server, rules, outside_dir(tmp_path), settle=0.2)
        # a good edit still deploys afterwards: bob is added to the data file both rules read
        (rules / "data" / ".users.json.tmp").write_text(json.dumps(["alice", "bob"]))
        os.replace(rules / "data" / ".users.json.tmp", rules / "data" / "users.json")
        bob = [grpc_caller(server, stubs["v3"]), http_caller(server)]
        try:
            assert wait_for(lambda: all(c.call("bob") == "allow" for c in bob), timeout=30), server.log()[-3000:]
        finally:
            for caller in bob:
                caller.stop()
    finally:
        for caller in callers:
            caller.stop()
    assert server.proc.poll() is None, server.log()[-3000:]
    not_handled = [r.kind for r in results if not r.logged]
    assert not_handled == [], (not_handled, server.log()[-5000:])
    assert len(results) == len(CATALOGUE)
    for caller in callers:
        assert caller.errors == [], caller.errors[:3]
        assert len(caller.calls) > 100  # it kept calling throughout
        wrong = {c.answer for c in caller.calls} - {"allow"}
        assert wrong == set(), (wrong, server.log()[-5000:])
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    assert "internal error rescanning" not in log
