"""deploy/systemd/ and deploy/compose.yaml, checked by the real tools (systemd-analyze verify and security,
check-jsonschema with the compose spec, yamllint) and by hookrules itself: every flag, path, port and hook the
two files hand to hookrules or to a broker is run through the real CLI and a real server, so a renamed flag,
a moved port or a rule file for a new hook breaks a test here rather than a deployment."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookrules.cli import _parser, serve_config
from hookrules.config import Config, parse_address
from hookrules.hooks import HOOKS, answered_hooks, hook_for_file
from hookrules.supervisor import STOP_MARGIN

from . import vernemq_examples
from .emqx_session import meta
from .support import BUNDLED_RULES, ROOT, ServerProcess, Stubs, alive, wait_for
from .system_packages import require_tool

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "hookrules.service"
UNIT_TOML = DEPLOY / "systemd" / "hookrules.toml"
COMPOSE = DEPLOY / "compose.yaml"
#: where the unit expects hookrules (a venv, as the container image has it) and its config
INSTALLED = "/opt/hookrules/bin/hookrules"
ETC = "/etc/hookrules"
#: `systemd-analyze security` counts exposure in tenths: the unit scores 1.2 ("OK") on systemd 252, of which
#: 0.1 is sched_setscheduler allowed back from @resources for the helper threads' SCHED_BATCH (threadsched.py)
SECURITY_THRESHOLD = 12
#: files of other deploy helpers that compose.yaml mounts (docs/layout: helper "observe" writes them)
OTHER_HELPERS_FILES = {DEPLOY / "grafana" / "hookrules.json", DEPLOY / "prometheus" / "hookrules-alerts.yaml"}
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}}}"


def venv_tool(name: str) -> str:
    """A console script of the test venv (yamllint, check-jsonschema: test dependencies in pyproject.toml)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing: pip install -e '.[test]'"
    return str(path)


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    require_tool("systemd-analyze", ["systemd"], "systemd-analyze is in Debian's systemd package: "
                 "apt-get install systemd")
    return shutil.which("systemd-analyze") or "systemd-analyze"


# ---- the unit file ---------------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file (no key is in two sections of ours), values in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def setting(key: str) -> str:
    values = unit_settings(UNIT.read_text())[key]
    assert len(values) == 1, (key, values)
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span as the unit writes one: 30s, 2min, 500ms or a plain number of seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m[2]]


def exec_start() -> list[str]:
    return shlex.split(setting("ExecStart"))


def verifiable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as shipped, except that ExecStart runs the test venv's hookrules: systemd-analyze verify checks
    that the binary exists, and /opt/hookrules is where a user installs it, not where the tests have it."""
    text = UNIT.read_text() if text is None else text
    ours = Path(sys.executable).parent / "hookrules"
    assert ours.exists(), "the test venv has no hookrules script: pip install -e ."
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    path = tmp_path / "hookrules.service"
    path.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={ours} "))
    return path


def verify(systemd_analyze: str, unit: Path) -> str:
    """What `systemd-analyze verify` says about a unit: it exits 0 on most errors, so its words are the verdict."""
    res = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=120)
    return (res.stdout + res.stderr).strip() + ("" if res.returncode == 0 else f"\n(exit {res.returncode})")


def test_the_unit_verifies_without_a_word(systemd_analyze: str, tmp_path: Path) -> None:
    """The only change to the shipped unit is where ExecStart finds hookrules (the test venv's copy)."""
    unit = verifiable_unit(tmp_path)
    changed = [(a, b) for a, b in zip(UNIT.read_text().splitlines(), unit.read_text().splitlines()) if a != b]
    assert [a.split("=", 1)[0] for a, _ in changed] == ["ExecStart"]
    assert verify(systemd_analyze, unit) == ""


@pytest.mark.parametrize("breakage", [
    ("Restart=always", "Restart=sometimes"),  # a bad value
    ("ProtectSystem=strict", "ProtectSytem=strict"),  # a misspelled directive
    ("ExecReload=kill -HUP $MAINPID", "ExecReload=no-such-kill -HUP $MAINPID"),  # a command that does not exist
])
def test_verify_speaks_up_on_a_broken_unit(systemd_analyze: str, tmp_path: Path, breakage: tuple[str, str]) -> None:
    """The check above can fail: each of these mistakes makes verify say something."""
    text = UNIT.read_text()
    assert breakage[0] in text
    assert verify(systemd_analyze, verifiable_unit(tmp_path, text.replace(breakage[0], breakage[1]))) != ""


def security(systemd_analyze: str, unit: Path) -> tuple[int, str]:
    res = subprocess.run([systemd_analyze, "security", "--offline=true", f"--threshold={SECURITY_THRESHOLD}",
                          "--no-pager", str(unit)], capture_output=True, text=True, timeout=120)
    return res.returncode, res.stdout + res.stderr


def test_the_unit_scores_within_the_security_threshold(systemd_analyze: str, tmp_path: Path) -> None:
    code, out = security(systemd_analyze, verifiable_unit(tmp_path))
    level = re.search(r"Overall exposure level for hookrules\.service: (\d+\.\d+)", out)
    assert level, out
    print(f"systemd-analyze security: {level[1]} (threshold {SECURITY_THRESHOLD / 10})")
    assert code == 0, out


def test_an_unhardened_unit_is_over_the_threshold(systemd_analyze: str, tmp_path: Path) -> None:
    """The threshold means something: the same service without its hardening section fails it."""
    head = UNIT.read_text().split("# --- Hardening")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    code, out = security(systemd_analyze, verifiable_unit(tmp_path, head))
    assert code != 0, out


def test_the_unit_restarts_reloads_and_stops_as_hookrules_needs() -> None:
    """The settings the server's behaviour depends on (README: watchdog, SIGHUP, SIGTERM drain, workers)."""
    assert exec_start()[0] == INSTALLED
    assert setting("Restart") == "always"  # the watchdog's SIGKILL is a restart, not an end
    assert setting("ExecReload") == "kill -HUP $MAINPID"
    assert setting("KillMode") == "mixed"  # SIGTERM to the main process only: it drains its workers itself
    assert setting("DynamicUser") == "yes" and setting("ProtectSystem") == "strict"
    # a start refused with exit 2 is retried too: "port in use" can pass (TIME_WAIT connections of the process
    # before a switch to workers), and systemd must not give up either
    settings = unit_settings(UNIT.read_text())
    assert "RestartPreventExitStatus" not in settings and settings["StartLimitIntervalSec"] == ["0"]
    grace = tomllib.loads(UNIT_TOML.read_text())["grace_period"]
    # a worker drains for the grace period; the supervisor waits that plus STOP_MARGIN, kills, waits STOP_MARGIN
    assert seconds(setting("TimeoutStopSec")) > grace + 2 * STOP_MARGIN


def installed_layout(tmp_path: Path) -> tuple[Path, list[str]]:
    """/etc/hookrules as the unit's comments install it (the TOML and a copy of rules/), under tmp_path, and
    ExecStart's arguments pointed there."""
    etc = tmp_path / ETC.lstrip("/")
    shutil.copytree(BUNDLED_RULES, etc / "rules")
    shutil.copy(UNIT_TOML, etc / "hookrules.toml")
    args = [arg.replace(ETC, str(etc)) for arg in exec_start()[1:]]
    return etc, args


def test_execstart_and_the_shipped_toml_are_what_hookrules_accepts(tmp_path: Path) -> None:
    """The real parser and config loader: the TOML's relative rules path lands on /etc/hookrules/rules."""
    etc, args = installed_layout(tmp_path)
    parsed = _parser().parse_args(args)
    parsed.argv = args
    config = serve_config(parsed)
    assert parsed.command == "serve" and config.config_file == etc / "hookrules.toml"
    assert config.rules == etc / "rules"
    assert config.workers == 1 and config.grace_period == 5.0


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ready(server: ServerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/readyz", timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_the_unit_command_serves_reloads_and_stops_cleanly(tmp_path: Path, workers: int) -> None:
    """ExecStart's command on the installed layout (loopback ports instead of the TOML's), then ExecReload's
    command, then systemctl stop as KillMode=mixed does it: SIGTERM to the main process only. It must exit 0
    within TimeoutStopSec and leave no process behind (systemd would SIGKILL those mid-drain)."""
    etc, args = installed_layout(tmp_path)
    assert args[0] == "serve"
    server = ServerProcess(etc / "rules", *args[1:], "--workers", str(workers), log_path=tmp_path / "server.log")
    try:
        assert wait_for(lambda: ready(server), timeout=30), server.log()
        family = descendants(server.proc.pid)
        assert len(family) >= workers  # the workers (and each one's watchdog)
        reload = shlex.split(setting("ExecReload").replace("$MAINPID", str(server.proc.pid)))
        subprocess.run(reload, check=True, timeout=30)
        assert wait_for(lambda: server.log().count("SIGHUP: reloaded") == workers, timeout=30), server.log()
        assert ready(server)
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = server.proc.wait(seconds(setting("TimeoutStopSec")))
        print(f"workers={workers}: stopped in {time.monotonic() - started:.2f} s")
        assert code == 0, server.log()
        assert not [pid for pid in family if alive(pid)], server.log()
    finally:
        server.stop()


# ---- compose -------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def mounts(name: str) -> dict[str, Path]:
    """{path in the container: path on the host} of a service's bind mounts (relative to deploy/)."""
    out = {}
    for volume in service(name).get("volumes", []):
        source, target, *_ = volume.split(":")
        assert source.startswith("."), f"{name}: {volume} is not a bind mount of a file in the repository"
        out[target] = (DEPLOY / source).resolve()
    return out


def hookrules_command() -> list[str]:
    command = service("hookrules")["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command)
    return command


def hookrules_config() -> Config:
    args = hookrules_command()
    parsed = _parser().parse_args(args)
    parsed.argv = args
    return serve_config(parsed)


def port(address: str | None) -> int:
    assert address is not None
    return int(parse_address(address, "address")[1])


def yaml_files() -> list[Path]:
    return [COMPOSE, *sorted(p for p in (DEPLOY / "compose").rglob("*") if p.suffix in (".yaml", ".yml"))]


def test_compose_validates_against_the_compose_spec() -> None:
    res = subprocess.run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_compose_spec_check_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy", 1))
    res = subprocess.run([venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "service_happy" in res.stdout + res.stderr


def test_every_yaml_file_lints_clean() -> None:
    files = yaml_files()
    assert len(files) >= 4  # compose.yaml, prometheus.yml, two Grafana provisioning files
    res = subprocess.run([venv_tool("yamllint"), "--strict", "-d", YAMLLINT_CONFIG, *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_mounted_file_is_in_the_repository() -> None:
    """Every bind mount's source exists (read-only: nothing in the stack writes to the repository). The two
    files helper "observe" writes may be absent from this branch alone; once merged they are checked too."""
    for name in compose()["services"]:
        for volume in service(name).get("volumes", []):
            assert volume.endswith(":ro"), f"{name}: {volume} should be read-only"
        for target, source in mounts(name).items():
            assert source.exists() or source in OTHER_HELPERS_FILES, f"{name}: {source} (for {target}) is missing"


def test_the_hookrules_service_is_the_repository_image_with_its_rules() -> None:
    hookrules = service("hookrules")
    assert (DEPLOY / hookrules["build"]["context"]).resolve() == ROOT  # the repository's Dockerfile
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert hookrules["image"] == f"localhost/hookrules:{version}"
    config = hookrules_config()
    assert mounts("hookrules") == {str(config.rules): BUNDLED_RULES}
    res = subprocess.run([sys.executable, "-m", "hookrules", "check", str(BUNDLED_RULES)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert hookrules["read_only"] is True and hookrules["cap_drop"] == ["ALL"] and hookrules["restart"] == "always"
    assert seconds(hookrules["stop_grace_period"]) > config.grace_period
    health = " ".join(hookrules["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port(config.metrics)}/readyz" in health
    assert hookrules["ports"] == [f"127.0.0.1:{port(config.metrics)}:{port(config.metrics)}"]


def test_every_broker_waits_for_hookrules_to_be_ready() -> None:
    for name in ("emqx", "vernemq", "rabbitmq", "prometheus"):
        assert service(name)["depends_on"] == {"hookrules": {"condition": "service_healthy"}}, name
        assert service(name)["healthcheck"]["test"], name
    assert service("grafana")["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for name in compose()["services"]:
        for published in service(name).get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published} beyond this machine"


def emqx_exhook() -> dict[str, str]:
    prefix = "EMQX_EXHOOK__SERVERS__1__"
    return {k[len(prefix):].lower(): v for k, v in environment("emqx").items() if k.startswith(prefix)}


def hocon_value(value: str) -> str:
    """What EMQX reads from an EMQX_* variable: HOCON, where // and # start a comment unless quoted."""
    if value.startswith('"'):
        assert value.endswith('"') and len(value) >= 2, value
        return value[1:-1]
    assert "//" not in value and "#" not in value, f"{value!r} must be quoted: EMQX would cut it at the comment"
    return value


def test_emqx_exhook_points_at_the_grpc_port() -> None:
    exhook = {k: hocon_value(v) for k, v in emqx_exhook().items()}
    assert set(exhook) >= {"name", "url", "request_timeout", "failed_action", "pool_size"}
    url = urllib.parse.urlsplit(exhook["url"])
    assert (url.scheme, url.hostname, url.port) == ("http", "hookrules", port(hookrules_config().grpc))
    assert exhook["failed_action"] in ("deny", "ignore")
    assert re.fullmatch(r"[A-Za-z0-9]+[A-Za-z0-9_-]*", exhook["name"])  # EMQX's rule for a server name
    # EMQX's default acl.conf allows everything before exhook is asked
    assert environment("emqx")["EMQX_AUTHORIZATION__SOURCES"] == "[]"


def test_the_hocon_quoting_check_catches_an_unquoted_url() -> None:
    with pytest.raises(AssertionError):
        hocon_value("http://hookrules:9000")


def vernemq_conf() -> dict[str, str]:
    """vernemq.conf lines the image writes from DOCKER_VERNEMQ_* variables (docker-vernemq's start script: drop
    the prefix, lower-case the name, every `__` becomes `.`)."""
    out = {}
    for key, value in environment("vernemq").items():
        assert key.startswith("DOCKER_VERNEMQ_"), key
        name = key[len("DOCKER_VERNEMQ_"):].lower().replace("__", ".")
        out[name] = value.replace("__", ".")
    return out


def vernemq_webhooks() -> dict[str, str]:
    """{hook: endpoint} of every webhook compose.yaml registers."""
    conf = vernemq_conf()
    names = {k.split(".")[1] for k in conf if k.startswith("vmq_webhooks.")}
    assert all(set(conf) >= {f"vmq_webhooks.{n}.hook", f"vmq_webhooks.{n}.endpoint"} for n in names), conf
    hooks = {conf[f"vmq_webhooks.{n}.hook"]: conf[f"vmq_webhooks.{n}.endpoint"] for n in names}
    assert len(hooks) == len(names), "two webhooks for one hook: VerneMQ would call hookrules twice"
    return hooks


def test_vernemq_registers_one_webhook_per_hook_the_rules_answer() -> None:
    answered = {hook for path in BUNDLED_RULES.glob("*.star") if (source := hook_for_file(path.name))
                for hook in answered_hooks(source) if HOOKS[hook].broker == "vernemq"}
    assert answered and set(vernemq_webhooks()) == answered
    conf = vernemq_conf()
    assert conf["plugins.vmq_webhooks"] == "on"
    assert conf["plugins.vmq_passwd"] == conf["plugins.vmq_acl"] == "off"
    assert conf["accept_eula"] == "yes"


def rabbitmq_paths() -> dict[str, str]:
    conf = {}
    for line in (DEPLOY / "compose" / "rabbitmq" / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    assert conf["auth_backends.1"] == "http"
    return {key.split(".")[1].removesuffix("_path"): value for key, value in conf.items()
            if key.startswith("auth_http.") and key.endswith("_path")}


def local_url(url: str, http_port: int, expected_port: int) -> str:
    """A URL a broker calls in the stack (http://hookrules:8080/...), pointed at the test's server."""
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port or 80) == ("http", "hookrules", expected_port), url
    return urllib.parse.urlunsplit(("http", f"127.0.0.1:{http_port}", parts.path, parts.query, ""))


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


#: one RabbitMQ check of each kind, with the fields RabbitMQ's MQTT plugin sends (tests/broker_calls.py)
RABBITMQ_CHECKS = {
    "user": {"username": "u", "password": "p", "vhost": "/", "client_id": "c1"},
    "vhost": {"username": "u", "vhost": "/", "ip": "127.0.0.1", "tags": "", "client_id": "c1"},
    "resource": {"username": "u", "vhost": "/", "resource": "exchange", "name": "amq.topic", "permission": "write",
                 "tags": "", "client_id": "c1"},
    "topic": {"username": "u", "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "write",
              "tags": "", "routing_key": "sensors.c1", "variable_map.client_id": "c1", "variable_map.username": "u"},
}


@pytest.fixture(scope="module")
def compose_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """hookrules as compose.yaml runs it (its command, the bundled rules), on loopback ports of its own."""
    tmp = tmp_path_factory.mktemp("compose")
    rules = tmp / "rules"
    shutil.copytree(BUNDLED_RULES, rules)
    args = hookrules_command()
    assert args[0] == "serve"
    config = hookrules_config()
    extra: list[str] = []
    flags = iter(args[1:])
    for arg in flags:
        if arg in ("--grpc", "--http", "--metrics", "--rules"):  # the test's own loopback ports, its rules copy
            next(flags)
        else:
            extra.append(arg)
    server = ServerProcess(rules, *extra, log_path=tmp / "server.log")
    yield server, config
    server.stop()


def test_every_vernemq_webhook_gets_an_answer_from_the_compose_command(compose_server: Any) -> None:
    server, config = compose_server
    for hook, endpoint in vernemq_webhooks().items():
        body = dict(vernemq_examples.EXAMPLES[hook])
        if "payload" in body:  # the stack keeps VerneMQ's default base64encode = on
            body["payload"] = base64.b64encode(body["payload"].encode()).decode()
        status, reply = post(local_url(endpoint, server.http_port, port(config.http)), json.dumps(body).encode(),
                             {"vernemq-hook": hook, "Content-Type": "application/json"})
        assert status == 200 and json.loads(reply)["result"] == "ok", (hook, status, reply)


def test_every_rabbitmq_path_gets_an_answer_from_the_compose_command(compose_server: Any) -> None:
    server, config = compose_server
    paths = rabbitmq_paths()
    assert set(paths) == set(RABBITMQ_CHECKS)
    for check, url in paths.items():
        status, reply = post(local_url(url, server.http_port, port(config.http)),
                             urllib.parse.urlencode(RABBITMQ_CHECKS[check]).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded"})
        assert (status, reply) == (200, b"allow"), (check, status, reply)


def test_the_compose_command_serves_emqx_its_hooks(compose_server: Any, stubs: dict[str, Stubs]) -> None:
    server, _ = compose_server
    s = stubs["v3"]
    with server.channel() as channel:
        reply = s.stub(channel).OnProviderLoaded(s.pb2.ProviderLoadedRequest(
            broker=s.pb2.BrokerInfo(version="5.8.6", sysdescr="EMQX"), meta=meta(s.pb2)), timeout=10)
    assert {"client.authenticate", "client.authorize"} <= {h.name for h in reply.hooks}


def test_prometheus_scrapes_hookrules_and_loads_the_alerts() -> None:
    prometheus = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    alerts_target = {t for t, s in mounts("prometheus").items() if s == DEPLOY / "prometheus" / "hookrules-alerts.yaml"}
    assert prometheus["rule_files"] == sorted(alerts_target)
    assert mounts("prometheus")["/etc/prometheus/prometheus.yml"] == DEPLOY / "compose" / "prometheus.yml"
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for sc in jobs["hookrules"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"hookrules:{port(hookrules_config().metrics)}"]
    alerts = DEPLOY / "prometheus" / "hookrules-alerts.yaml"
    if alerts.exists():  # the alerts name the scrape job in up{job="..."}: it must be one Prometheus has
        assert set(re.findall(r'up\{job="([^"]+)"', alerts.read_text())) <= set(jobs)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = mounts("grafana")
    datasources = yaml.safe_load((DEPLOY / "compose" / "grafana" / "datasources.yaml").read_text())["datasources"]
    assert [d["url"] for d in datasources if d["type"] == "prometheus"] == ["http://prometheus:9090"]
    assert "127.0.0.1:9090:9090" in service("prometheus")["ports"]
    providers = yaml.safe_load((DEPLOY / "compose" / "grafana" / "dashboards.yaml").read_text())["providers"]
    dashboard = [t for t, s in grafana.items() if s == DEPLOY / "grafana" / "hookrules.json"]
    assert len(dashboard) == 1 and [p["options"]["path"] for p in providers] == [os.path.dirname(dashboard[0])]
    assert environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard[0]
    for target, source in grafana.items():
        if target.startswith("/etc/grafana/provisioning/"):
            assert source.parent == DEPLOY / "compose" / "grafana"


def test_the_hookrules_healthcheck_passes_when_ready_and_fails_when_not(compose_server: Any) -> None:
    """The probe compose runs in the container (the image's venv Python), run here with the test venv's."""
    server, config = compose_server
    kind, interpreter, *args = service("hookrules")["healthcheck"]["test"]
    assert (kind, interpreter) == ("CMD", "/opt/hookrules/bin/python")
    published = f"127.0.0.1:{port(config.metrics)}"

    def probe(address: str) -> int:
        command = [arg.replace(published, address) for arg in args]
        return subprocess.run([sys.executable, *command], capture_output=True, timeout=30).returncode

    assert probe(f"127.0.0.1:{server.metrics_port}") == 0
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        assert probe(f"127.0.0.1:{closed.getsockname()[1]}") != 0


def serve_flags() -> set[str]:
    serve = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    return set(serve._option_string_actions)


def test_every_flag_the_deploy_files_name_is_one_hookrules_serve_takes() -> None:
    """Comments included (the TLS lines the unit suggests); lines about other tools' commands are not ours."""
    lines = [(path.name, line) for path in (UNIT, UNIT_TOML, COMPOSE) for line in path.read_text().splitlines()
             if not re.search(r"\b(docker|podman|systemctl) ", line)]
    named = {(name, flag) for name, line in lines for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)}
    assert {flag for _, flag in named} >= {"--config", "--rules", "--tls-cert", "--tls-key", "--polling"}
    known = serve_flags()
    assert not [(name, flag) for name, flag in named if flag not in known]
