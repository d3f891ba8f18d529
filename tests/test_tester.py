"""`hookrules test`, `eval` and `check` as a rule author runs them, on real rule directories."""

from __future__ import annotations

import io
import os
import json
import signal
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .bad_files import make_unreadable
from .support import BUNDLED_RULES
from .test_lifecycle import ENDLESS_STEP, with_blocking_helper

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def hookrules(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookrules", *args], capture_output=True, text=True, timeout=120)


def test_the_bundled_rules_pass_their_own_tests_with_full_coverage() -> None:
    result = hookrules("test", str(BUNDLED_RULES), "--coverage")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("passed, 0 failed")
    coverage = [line for line in result.stdout.splitlines() if line.strip().endswith("%") and ".star" in line]
    assert len(coverage) == 3 and all("100.0%" in line for line in coverage), coverage


@pytest.mark.parametrize("pack", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else [])
def test_every_example_pack_passes_its_tests(pack: str) -> None:
    result = hookrules("test", str(EXAMPLES / pack), "--coverage")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed, 0 failed" in result.stdout


def test_a_failing_case_shows_a_diff_and_fails(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    (rules / "tests" / "extra.yaml").write_text(
        "- name: wrong on purpose\n  hook: client.authenticate\n  event: {client: {username: baduser}}\n"
        "  expect: {decision: allow}\n"
        "- name: typo in the event\n  hook: client.authenticate\n  event: {clinet: {}}\n  expect: {decision: allow}\n")
    result = hookrules("test", str(rules), "-q")
    assert result.returncode == 1
    out = result.stdout
    assert f"FAILED {rules / 'tests' / 'extra.yaml'}::wrong on purpose" in out
    assert "decision: expected 'allow', got 'deny'" in out
    assert "event: client.authenticate does not provide 'clinet'" in out
    assert "PASSED" not in out  # -q lists failures only
    assert out.rstrip().endswith("passed, 2 failed")


def test_coverage_names_the_lines_no_case_ran(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authenticate.star").write_text(
        'if client.username == "a":\n    deny("a")\nif client.username == "b":\n    deny("b")\nallow()\n')
    (rules / "tests" / "t.yaml").write_text(
        "- {name: a, hook: client.authenticate, event: {client: {username: a}}, expect: {decision: deny}}\n")
    result = hookrules("test", str(rules), "--coverage")
    assert result.returncode == 0, result.stdout
    assert "2/5    40.0%  missing: 3-5" in result.stdout


def test_a_rule_that_does_not_load_fails_the_run(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authenticate.star").write_text("while True:\n    pass\n")
    (rules / "tests" / "t.yaml").write_text(
        "- {name: a, hook: client.authenticate, event: {}, expect: {decision: deny, error: load_error}}\n")
    result = hookrules("test", str(rules))
    assert result.returncode == 1
    assert "'while' is not allowed in rules" in result.stdout
    assert "1 file(s) failed to load" in result.stdout
    # the case itself holds: the hook answers by its failure policy, as the server would
    assert "t.yaml::a PASSED" in result.stdout
    assert "1 passed, 0 failed" in result.stdout


def test_eval_prints_the_decision_and_explains_it() -> None:
    event = json.dumps({"client": {"username": "gooduser", "id": "c1"}})
    result = hookrules("eval", "client.authenticate", "--event", event, "--rules", str(BUNDLED_RULES), "--explain")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("decision: allow\n")
    assert "authenticate.star:7  if client.username == \"baduser\":" in out
    assert "compare: client.username == 'baduser'  ->  'gooduser' == 'baduser'  ->  False" in out
    assert "authenticate.star:15  allow()" in out


def test_eval_reads_an_event_file_and_knows_the_broker(tmp_path: Path) -> None:
    event = tmp_path / "event.yaml"
    event.write_text("client: {id: dev-1}\nmessage: {topic: devices/dev-2/x, payload: x}\n")
    result = hookrules("eval", "auth_on_publish", "--event", str(event), "--rules", str(BUNDLED_RULES),
                       "--broker", "vernemq")
    assert result.returncode == 0, result.stderr
    assert "decision: deny (reason='devices/<id>/ belongs to client <id>')" in result.stdout
    assert "authorize.star" in result.stdout  # the portable file answered
    wrong = hookrules("eval", "auth_on_publish", "--event", str(event), "--rules", str(BUNDLED_RULES), "--broker", "emqx")
    assert wrong.returncode == 2 and "auth_on_publish is a vernemq hook, not emqx" in wrong.stdout


def test_check_also_reads_the_test_tables(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    (rules / "tests" / "bad.yaml").write_text(
        "- {name: typo, hook: client.authenticate, event: {clinet: {}}, expect: {decison: allow}}\n- 5\n"
        "- name: wrong broker\n  hook: client.authenticate\n  broker: vernemq\n  expect: {decision: allow}\n"
        "- name: misspelt\n  hook: client.authenticate\n  evnet: {client: {username: baduser}}\n"
        "  expect: {decision: refuse}\n")
    result = hookrules("check", str(rules))
    assert result.returncode == 1
    err = result.stderr
    bad = rules / "tests" / "bad.yaml"
    assert f"{bad}:1:1: typo: event: client.authenticate does not provide 'clinet'" in err
    assert f"{bad}:1:1: typo: unknown expectation 'decison'; did you mean 'decision'?" in err
    assert f"{bad}:2:1: case 2: a case is a mapping" in err
    assert f"{bad}:3:1: wrong broker: broker: client.authenticate is emqx's hook, not vernemq's" in err
    assert f"{bad}:7:1: misspelt: unknown case key 'evnet'; did you mean 'event'?" in err
    assert f"{bad}:7:1: misspelt: unknown decision 'refuse'" in err
    assert "3 rule file(s) OK, 0 with errors; 4 test file(s), 7 problem(s)" in err


def test_a_misspelt_case_fails_instead_of_testing_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    # with the key ignored, the empty event would be allowed and the case would pass
    (rules / "tests" / "typo.yaml").write_text(
        "- name: misspelt\n  hook: client.authenticate\n  evnet: {client: {username: baduser}}\n"
        "  expect: {decision: allow}\n")
    result = hookrules("test", str(rules))
    assert result.returncode == 1
    assert "typo.yaml::misspelt FAILED" in result.stdout
    assert "unknown case key 'evnet'" in result.stdout


def test_a_rule_step_stuck_in_c_ends_the_test_run_instead_of_hanging_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One C call that never returns (test_lifecycle.ENDLESS_STEP: the sandbox has no known one left, so a
    helper that blocks is installed). A CI job running `hookrules test` must end, with the rule named."""
    with_blocking_helper(tmp_path, monkeypatch)
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authenticate.star").write_text(ENDLESS_STEP)
    (rules / "tests" / "t.yaml").write_text("- {name: a, hook: client.authenticate, expect: {decision: allow}}\n")
    result = hookrules("test", str(rules), "--hard-timeout", "1", "--rule-timeout", "0.5")
    assert result.returncode == -signal.SIGKILL
    assert "watchdog: a run of the client.authenticate rule has held this test run for over 1 s" in result.stderr


def test_explain_shows_each_operand_of_and_and_or_that_ran(tmp_path: Path) -> None:
    (tmp_path / "client.authorize.star").write_text(
        'admin = client.username in ["root"]\nif admin or topic_match("users/" + client.username + "/#", topic):\n'
        '    allow()\ndeny("not yours")\n')
    event = json.dumps({"client": {"username": "bob"}, "topic": "users/bob/x", "action": "publish"})
    result = hookrules("eval", "client.authorize", "--event", event, "--rules", str(tmp_path), "--explain")
    assert result.returncode == 0, result.stderr
    assert "| or: admin  ->  False;  topic_match('users/' + client.username + '/#', topic)  ->  True" in result.stdout
    assert "decision: allow" in result.stdout


def test_eval_raw_reads_what_the_broker_sends() -> None:
    """A body captured from VerneMQ (here a subscription of two topics) and an EMQX request in protobuf
    JSON go through the same code as live calls."""
    body = json.dumps({"client_id": "dev-1", "mountpoint": "", "username": "u",
                       "topics": [{"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 0}]})
    result = hookrules("eval", "auth_on_subscribe", "--raw", "--event", body, "--rules", str(BUNDLED_RULES))
    assert result.returncode == 0, result.stderr
    assert "-- topic 'a/b'\ndecision: allow" in result.stdout and "-- topic 'c/d'\ndecision: allow" in result.stdout
    request = json.dumps({"clientinfo": {"clientid": "c1", "username": "baduser"}, "meta": {"node": "n"}})
    result = hookrules("eval", "client.authenticate", "--raw", "--event", request, "--rules", str(BUNDLED_RULES))
    assert result.returncode == 0, result.stderr
    assert "decision: deny (reason='user is banned')" in result.stdout
    bad = hookrules("eval", "auth_on_register", "--raw", "--event", '{"client_id": 5}', "--rules", str(BUNDLED_RULES))
    assert bad.returncode == 2 and "--raw: field 'client_id'" in bad.stderr
    bad = hookrules("eval", "client.authenticate", "--raw", "--event", '{"clientinfo": {"nope": 1}}',
                    "--rules", str(BUNDLED_RULES))
    assert bad.returncode == 2 and "not a ClientAuthenticateRequest in protobuf JSON" in bad.stderr


def test_eval_raw_answers_topics_past_the_spent_budget_by_policy_as_live(tmp_path: Path) -> None:
    """Once a subscription's shared budget is spent, eval answers the remaining topics by the failure
    policy without running the rule, as a live call does (Engine.decide_each).

    Each run takes its whole step budget (100,000 steps: tens of ms at least), so fifty of them cannot
    fit in the 0.1 s a call has. Result: the first topic runs; some later ones say the budget was spent."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "auth_on_subscribe.star").write_text("n = 0\nfor i in range(100000):\n    n += i\nallow()\n")
    body = json.dumps({"client_id": "c", "mountpoint": "", "username": "u",
                       "topics": [{"topic": f"t/{i}", "qos": 0} for i in range(50)]})
    result = hookrules("eval", "auth_on_subscribe", "--raw", "--event", body, "--rules", str(rules))
    assert result.returncode == 1, result.stderr  # the failure policy answered: eval says so in its status
    blocks = result.stdout.split("-- topic ")[1:]
    assert len(blocks) == 50
    assert "runtime_error" in blocks[0] or "deadline_error" in blocks[0]  # it ran, out of steps or time
    spent = [b for b in blocks if "answered by the failure policy without running the rule" in b]
    assert spent and all("decision: deny" in b for b in spent)
    assert blocks[-1] in spent  # once spent, every later topic too


@pytest.mark.parametrize(("source", "status", "said"), [
    ('allow()\n', 0, "decision: allow"),
    ('deny("no")\n', 0, "decision: deny (reason='no')"),
    ('x = 1 // 0\nallow()\n', 1, "answered by the failure policy"),  # the rule raised an error
    ('while True:\n    pass\n', 1, "answered by the failure policy"),  # out of steps or time
    ('allow(\n', 1, "did not load, so the failure policy answers"),  # a file that does not load
])
def test_eval_exits_1_when_the_failure_policy_answered(tmp_path: Path, source: str, status: int, said: str) -> None:
    """Issue 13: a script or CI running eval must see a rule error in the exit status, not only in the text:
    0 = the rule (or the hook's default) decided, 1 = the failure policy did, 2 = eval could not run."""
    (tmp_path / "client.authenticate.star").write_text(source)
    result = hookrules("eval", "client.authenticate", "--event", "{}", "--rules", str(tmp_path))
    assert result.returncode == status, result.stdout + result.stderr
    assert said in result.stdout
    assert hookrules("eval", "client.authenticate", "--event", "{}", "--rules", str(tmp_path / "nope")).returncode == 2


TEST_FILE_KINDS = ["fifo", "dev_zero", "directory", "socket", "outside_link", "outside_dir_link", "too_big",
                   "billion_laughs", "huge_int"]


@pytest.mark.parametrize("kind", TEST_FILE_KINDS)
def test_every_kind_of_bad_test_file_is_a_problem_of_that_file(tmp_path: Path, kind: str) -> None:
    """Issue 9 audit F6: `hookrules test` read its tables with read_text and yaml.safe_load (a FIFO hung
    it, /dev/zero ran it out of memory, a link to /etc/hostname was read, aliases expanded). Test tables
    go through the one safe reader and the data files' YAML builder, like every file of the directory."""
    import threading

    from hookrules import datafiles
    from hookrules.tester import check_test_files, run_tests

    rules, outside = tmp_path / "rules", tmp_path / "outside"
    (rules / "tests").mkdir(parents=True)
    outside.mkdir()
    (rules / "client.authenticate.star").write_text("allow()\n")
    good = '- {name: ok, hook: client.authenticate, event: {client: {username: a}}, expect: {decision: allow}}\n'
    (outside / "t.yaml").write_text(good)
    (rules / "tests" / "good.yaml").write_text(good)
    target = rules / "tests" / "t.yaml"
    make_unreadable(kind, target, outside / "t.yaml", datafiles.MAX_DATA_BYTES + 1)  # the kinds every reader refuses
    if kind == "outside_dir_link":
        os.unlink(rules / "tests" / "good.yaml")
        os.rmdir(rules / "tests")
        (rules / "tests").symlink_to(outside, target_is_directory=True)
    elif kind == "billion_laughs":
        target.write_text('- &a {name: x, hook: client.authenticate, event: {}, expect: {decision: allow}}\n- *a\n')
    elif kind == "huge_int":
        target.write_text("- " + "7" * 5000 + "\n")
    result: list[Any] = []

    def both() -> None:
        out = io.StringIO()
        result.append((check_test_files(rules), run_tests(rules, out), out.getvalue()))

    thread = threading.Thread(target=both, daemon=True)
    thread.start()
    thread.join(60)
    assert result, "hookrules test did not return: it blocked reading a file"
    problems, status, output = result[0]
    assert status == 1
    assert "good.yaml::ok PASSED" in output or kind == "outside_dir_link", output  # the good table still runs
    assert [p for p in problems if "t.yaml" in p and "cannot read the test file" in p], problems
    assert "t.yaml::(file) FAILED" in output, output
