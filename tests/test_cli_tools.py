"""Issue 13's tooling for CI and editors: `hooks`, `check --format json`, `test --format json|junit`,
`test --config`, and one way (`--rules DIR`) to name the rules directory for every command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hookrules.events import Event
from hookrules.hooklist import NAME_SHAPES, name_shape
from hookrules.hooks import HOOKS
from hookrules.nodefaults import NO_RULE_DEFAULTS, NO_RULE_SUMMARY

from .adapter_events import channel_events
from .support import BUNDLED_RULES


def hookrules(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookrules", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


# -- hooks ---------------------------------------------------------------------------------------------

def _conforms(value: Any, shape: Any) -> bool:
    if isinstance(shape, type):
        return isinstance(value, shape)
    if isinstance(shape, list):
        return isinstance(value, tuple) and all(_conforms(v, shape[0]) for v in value)
    word = shape.split()[0].rstrip(",")
    if word == "map":
        return isinstance(value, Mapping)
    if word == "int":
        return value is None and "None" in shape or isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool}[word])


def test_what_hooks_says_a_rule_reads_is_what_every_adapter_builds() -> None:
    """Enumerated over every adapter's real event for every hook: each name the hook's table lists is in the
    event, and holds what `hookrules hooks` says it holds; and no name is left undescribed."""
    assert set(NAME_SHAPES) >= {n for info in HOOKS.values() for n in info.all_names}
    checked = 0
    for event in channel_events():  # each hook's event from each channel it comes over (EMQX: ExHook and HTTP)
        hook, names = event.hook, event.names()
        for name in HOOKS[hook].all_names:
            assert name in names, (hook, name)
            shape = name_shape(hook, name)
            value = names[name]
            assert _conforms(value, shape), (hook, name, value, shape)
            if isinstance(shape, list) and not value:  # an empty list proves nothing about its items
                pytest.fail(f"{hook}: the example event's {name} is empty")
            checked += 1
    assert checked > 100
    assert set(NO_RULE_SUMMARY) == set(NO_RULE_DEFAULTS)


def test_hooks_lists_every_hook_and_describes_each_as_its_table_says() -> None:
    listing = hookrules("hooks")
    assert listing.returncode == 0, listing.stderr
    listed = [line.split()[0] for line in listing.stdout.splitlines()[:len(HOOKS)]]
    assert listed == list(HOOKS)
    every = json.loads(hookrules("hooks", "--format", "json").stdout)
    assert [d["hook"] for d in every] == list(HOOKS)
    for d in every:
        info = HOOKS[d["hook"]]
        assert d["broker"] == info.broker
        assert set(d["decisions"]) == info.decisions
        assert list(d["reads"]) == list(info.all_names)
        assert set(d["rewrites"]) == info.rewrites
        assert d["files"][0] == d["hook"] + ".star"
        assert ("cache" in d["options"]) == info.cacheable and ("tags" in d["options"]) == info.tagged
    one = hookrules("hooks", "auth_on_publish_m5")
    assert one.returncode == 0
    assert "auth_on_publish_m5.star, else auth_on_publish.star, else authorize.star" in one.stdout
    assert "rewrite() sets:   payload, qos, retain, topic" in one.stdout
    assert "message.from_" not in one.stdout and "from_" in one.stdout  # the field as a rule writes it
    rabbit = hookrules("hooks", "--broker", "rabbitmq")
    assert [line.split()[0] for line in rabbit.stdout.splitlines() if line.startswith("rabbitmq.")] == \
        [h for h, i in HOOKS.items() if i.broker == "rabbitmq"]
    for bad in (["hooks", "client.nope"], ["hooks", "--broker", "mosquitto"]):
        refused = hookrules(*bad)
        assert refused.returncode == 2 and "error: unknown" in refused.stdout


def test_hooks_says_which_options_only_emqx_http_carries() -> None:
    """`also: superuser, attrs, expire_at, acl (the last four ...)` named four of four: every hook with
    EMQX's HTTP options says which of its options they are, in words that fit its list."""
    from hookrules.emqxoptions import OPTIONS
    every = json.loads(hookrules("hooks", "--format", "json").stdout)
    carrying = [d for d in every if set(OPTIONS) <= set(d["options"])]
    assert carrying
    for d in carrying:
        also = next(line for line in hookrules("hooks", d["hook"]).stdout.splitlines() if "also:" in line)
        assert also.split("also:", 1)[1].split("(")[0].strip() == ", ".join(d["options"])
        others = len(d["options"]) - len(OPTIONS)
        assert also.endswith(f"(the last {len(OPTIONS)} over EMQX's HTTP authenticator only)" if others
                             else "(over EMQX's HTTP authenticator only)"), also


# -- check --format json -------------------------------------------------------------------------------

def test_check_json_carries_every_problem_the_text_shows(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authenticate.star").write_text("allow()\nx = nope\n")
    (rules / "data").mkdir()
    (rules / "data" / "notes.txt").write_text("x")
    (rules / "tests" / "t.yaml").write_text("- {name: a, hook: client.nope, expect: {decision: allow}}\n")
    text = hookrules("check", "--rules", str(rules))
    js = hookrules("check", "--rules", str(rules), "--format", "json")
    assert text.returncode == js.returncode == 1
    report = json.loads(js.stdout)
    assert report["ok"] is False
    by_code = {p["code"]: p for p in report["problems"]}
    assert set(by_code) >= {"test_table", "load_error"} and len(report["problems"]) == 3
    for p in report["problems"]:  # each is the text's file:line:col line, as data
        assert f"{p['file']}:{p['line']}:{p['col']}:" in text.stderr
        assert p["severity"] in ("error", "warning")
    unknown = [p for p in report["problems"] if "nope" in p["message"] and p["code"] != "test_table"]
    assert unknown and unknown[0]["line"] == 2 and unknown[0]["col"] == 5
    assert [p["severity"] for p in report["problems"] if p["file"].endswith("notes.txt")] == ["warning"]
    clean = hookrules("check", "--rules", str(BUNDLED_RULES), "--format", "json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["ok"] is True
    assert "authenticate.star answers" in " ".join(json.loads(clean.stdout)["answering"])


# -- test --format json|junit, --config ---------------------------------------------------------------

CASES = """\
- name: admin gets in
  hook: client.authenticate
  event: {client: {username: admin}}
  expect: {decision: allow}
- name: "odd <name> & \\u0001 control"
  hook: client.authenticate
  event: {client: {username: x}}
  expect: {decision: allow}
"""


@pytest.fixture
def two_cases(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authenticate.star").write_text('if client.username == "admin":\n    allow()\ndeny("no")\n')
    (rules / "tests" / "cases.yaml").write_text(CASES)
    return rules


def test_test_json_and_junit_say_what_the_text_says(two_cases: Path) -> None:
    text = hookrules("test", "--rules", str(two_cases))
    assert text.returncode == 1 and "1 passed, 1 failed" in text.stdout
    js = hookrules("test", "--rules", str(two_cases), "--format", "json")
    assert js.returncode == 1
    report = json.loads(js.stdout)
    assert (report["ok"], report["passed"], report["failed"]) == (False, 1, 1)
    failed = [c for c in report["cases"] if not c["passed"]]
    assert failed[0]["name"] == "odd <name> & \x01 control" and failed[0]["line"] == 5 and failed[0]["problems"]
    junit = hookrules("test", "--rules", str(two_cases), "--format", "junit", "--coverage")
    assert junit.returncode == 1
    root = ET.fromstring(junit.stdout)  # parses: the control character was escaped, <, & too
    suites = root.findall("testsuite")
    assert len(suites) == 1 and suites[0].get("tests") == "2" and suites[0].get("failures") == "1"
    cases = suites[0].findall("testcase")
    assert [c.find("failure") is None for c in cases] == [True, False]
    assert cases[1].get("name") == "odd <name> & \\x01 control"
    assert "coverage" in junit.stderr and "coverage" not in junit.stdout


def test_junit_reports_a_rule_file_that_does_not_load_as_an_error(two_cases: Path) -> None:
    (two_cases / "client.authorize.star").write_text("allow(\n")
    junit = hookrules("test", "--rules", str(two_cases), "--format", "junit")
    assert junit.returncode == 1
    errors = ET.fromstring(junit.stdout).findall("testsuite/testcase/error")
    assert len(errors) == 1 and "client.authorize.star" in (errors[0].text or "")


def test_test_config_tests_with_the_deployed_failure_policy_and_limits(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "client.authorize.star").write_text("n = 0\nfor i in range(1000):\n    n += i\nallow()\n")
    (rules / "tests" / "t.yaml").write_text(
        "- {name: a, hook: client.authorize, event: {topic: t, action: publish}, expect: {decision: allow}}\n")
    assert hookrules("test", "--rules", str(rules)).returncode == 0
    config = tmp_path / "hookrules.toml"
    config.write_text('rules = "rules"\n[limits]\nmax_steps = 50\n[failure_policy]\n"client.authorize" = "deny"\n')
    deployed = hookrules("test", "--config", str(config))  # its rules directory, relative to the file
    assert deployed.returncode == 1 and "deny" in deployed.stdout, deployed.stdout + deployed.stderr
    flagged = hookrules("test", "--config", str(config), "--max-steps", "100000")  # a flag wins over the file
    assert flagged.returncode == 0, flagged.stdout
    config.write_text("[limits]\nmax_steps = 'many'\n")
    bad = hookrules("test", "--config", str(config), "--rules", str(rules))
    assert bad.returncode == 2 and "max_steps" in bad.stderr


def test_every_command_takes_the_rules_directory_as_rules_flag(tmp_path: Path) -> None:
    """serve, check, test and eval all take --rules DIR (check and test still take it positionally)."""
    for args in (["check", "--rules", str(BUNDLED_RULES)], ["check", str(BUNDLED_RULES)],
                 ["test", "--rules", str(BUNDLED_RULES), "-q"], ["test", str(BUNDLED_RULES), "-q"],
                 ["eval", "client.authenticate", "--event", "{}", "--rules", str(BUNDLED_RULES)]):
        assert hookrules(*args).returncode == 0, args
    from hookrules.cli import _parser

    for command in ("serve", "check", "test", "eval"):
        assert _parser().parse_args([command, "--rules", "x", *(["h", "--event", "{}"] if command == "eval" else [])])
    two = hookrules("check", str(BUNDLED_RULES), "--rules", str(tmp_path))
    assert two.returncode == 2 and "two rules directories" in two.stderr
    missing = hookrules("test", "--rules", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_event_shapes_are_frozen_dataclasses() -> None:
    """NAME_SHAPES lists an event class's fields as the rule reads them: only frozen dataclasses qualify."""
    for shape in NAME_SHAPES.values():
        if isinstance(shape, type):
            assert dataclasses.is_dataclass(shape) and shape.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert Event.__dataclass_params__.frozen  # type: ignore[attr-defined]
