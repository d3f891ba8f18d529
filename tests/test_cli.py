"""The hookrules command as an operator meets it: check, bad flags, busy ports, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import BUNDLED_RULES, ServerProcess


def hookrules(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookrules", *args], capture_output=True, text=True, timeout=timeout)


def test_check_passes_on_the_bundled_rules() -> None:
    result = hookrules("check", str(BUNDLED_RULES))
    assert result.returncode == 0, result.stderr
    assert "3 rule file(s) OK, 0 with errors" in result.stdout


def test_check_reports_every_problem_with_file_line_col(tmp_path: Path) -> None:
    (tmp_path / "client.authenticate.star").write_text("x = 1\nwhile x:\n    pass\nimport os\n")
    (tmp_path / "client.authorize.star").write_text("allow()\n")
    (tmp_path / "client.auth.star").write_text("allow()\n")
    result = hookrules("check", str(tmp_path))
    assert result.returncode == 1
    err = result.stderr
    assert f"{tmp_path / 'client.authenticate.star'}:2:1: check_error: 'while' is not allowed in rules" in err
    assert f"{tmp_path / 'client.authenticate.star'}:4:1: check_error: 'import' is not allowed in rules" in err
    assert "hint: loop over a finite collection" in err
    assert "'client.auth.star' names no hook" in err and "client.authenticate.star" in err
    assert "1 rule file(s) OK, 2 with errors" in err


def test_check_reports_a_broken_library_once_even_unused_and_a_data_file_it_ignores(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "lib" / "shared.star").write_text("def f(:\n")
    (tmp_path / "lib" / "later.star").write_text("def g():\n    return h\n")  # no rule loads it yet
    (tmp_path / "data" / "users.txt").write_text("bob\n")
    for hook in ("client.authenticate", "client.authorize"):
        (tmp_path / f"{hook}.star").write_text('load("lib/shared.star", "f")\nallow()\n')
    result = hookrules("check", str(tmp_path))
    assert result.returncode == 1
    err = result.stderr
    assert err.count(f"{tmp_path / 'lib' / 'shared.star'}:1:7: parse_error") == 1
    assert f"{tmp_path / 'lib' / 'later.star'}:2:12: check_error: unknown name 'h'" in err
    assert f"{tmp_path / 'data' / 'users.txt'}:1:1: warning: not read: data files are .json, .yaml, .yml or .csv" in err
    assert "0 rule file(s) OK, 2 with errors; 1 library file(s) no rule loads" in err


def test_bad_address_is_refused_with_a_clear_message() -> None:
    result = hookrules("serve", "--rules", str(BUNDLED_RULES), "--grpc", "localhost")
    assert result.returncode == 2
    assert "--grpc 'localhost' is not HOST:PORT" in result.stderr


def test_bad_failure_policy_is_refused() -> None:
    result = hookrules("serve", "--failure-policy", "client.authenticate=maybe")
    assert result.returncode == 2
    assert "policy must be one of deny, ignore, allow" in result.stderr


def test_busy_port_is_refused_not_shared() -> None:
    """Told in our words, without grpc-core's raw add_port line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hookrules("serve", "--rules", str(BUNDLED_RULES), "--grpc", f"127.0.0.1:{port}", "--metrics", "off",
                           "--http", "off")
    assert result.returncode == 2
    assert f"cannot listen for gRPC on 127.0.0.1:{port} (--grpc): " in result.stderr
    assert "(is another server on that port?)" in result.stderr
    assert "add_port" not in result.stderr and "chttp2" not in result.stderr, result.stderr




def test_a_bind_error_says_why(tmp_path: Path) -> None:
    """'is the port in use?' was added to every bind error, whatever it was; now only to this one (tests
    use loopback only, so the other reasons are not exercised here)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        in_use = hookrules("serve", "--rules", str(BUNDLED_RULES), "--grpc", "off", "--metrics", "off",
                           "--http", f"127.0.0.1:{port}")
    assert in_use.returncode == 2 and "(is another server on that port?)" in in_use.stderr


@pytest.mark.parametrize("busy_flag", ["--http", "--metrics", "--grpc"])
def test_a_failed_bind_prints_no_serving_banner(busy_flag: str) -> None:
    """The banner of the front-ends that did bind used to be printed before the one that failed: a
    script reading "serving ... on" would think the server up, then see it exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {flag: "127.0.0.1:0" for flag in ("--http", "--metrics", "--grpc")}
        ports[busy_flag] = f"127.0.0.1:{port}"
        result = hookrules("serve", "--rules", str(BUNDLED_RULES), *(x for kv in ports.items() for x in kv))
    assert result.returncode == 2 and "cannot listen" in result.stderr
    assert "hookrules:" not in result.stdout, result.stdout


def test_port_zero_prints_the_bound_ports_and_sigterm_exits_zero(start_server: Any, rules_dir: Path) -> None:
    server: ServerProcess = start_server(rules_dir)
    assert server.grpc_port > 0 and server.metrics_port > 0
    assert "hookrules_rules_loaded 3.0" in server.metrics_text()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    assert "stopped" in server.log()
