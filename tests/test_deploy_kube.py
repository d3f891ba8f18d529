"""deploy/kubernetes/: every manifest checked by the real tools (kubernetes-validate --strict, yamllint --strict), and
every claim the manifests make about hookrules checked against hookrules itself.

- The validators must be able to fail: each is run once on deliberately broken copies (CRDs only warn in
  kubernetes-validate, so the test also requires a "passed" line for every core resource and accepts warnings
  only for the custom resources it knows).
- The ConfigMap is the bundled rules/, key for key and byte for byte.
- The Deployment's args, probes, ports and drain are run: the real server starts with the container's own
  args on the ConfigMap's contents laid out by kubelet's AtomicWriter, and answers the probes the way the
  Deployment expects, including what each probe says while the authentication rule is broken (why the gRPC
  health probe is only the startup probe).
- The broker examples point at the Service's ports and at the hooks the bundled rules answer; the RabbitMQ
  snippet boots a real RabbitMQ node that lets an MQTT client in through hookrules.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hookrules.hooks import HOOKS
from hookrules.ruleset import RuleSet, scan

from .atomic_writer import AtomicWriter
from .broker_calls import vernemq_register
from .rabbit_mqtt import SyncClient
from .rabbitmq_node import RabbitNode
from .support import BUNDLED_RULES, ROOT, ServerProcess

KUBE = ROOT / "deploy" / "kubernetes"
YAMLLINT_CONFIG = ROOT / "deploy" / ".yamllint"
BIN = Path(sys.executable).parent
#: files that are not Kubernetes objects: yamllint checks them, kubernetes-validate cannot
HELM_VALUES = {"examples/vernemq-values.yaml"}
#: custom resources: kubernetes-validate bundles no schema for them and only warns (checked by hand below)
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
                "EMQX": "apps.emqx.io/v2beta1", "RabbitmqCluster": "rabbitmq.com/v1beta1"}


def yaml_files() -> list[Path]:
    return sorted(KUBE.rglob("*.yaml"))


def manifests() -> list[Path]:
    return [p for p in yaml_files() if str(p.relative_to(KUBE)) not in HELM_VALUES]


def load(name: str) -> Any:
    return yaml.safe_load((KUBE / name).read_text())


#: the oldest Kubernetes the manifests are for (preStop's sleep action is on by default from 1.30) and the newest
#: kubernetes-validate knows
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]


def validate(paths: list[Path], version: str = KUBERNETES_VERSIONS[-1]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", version, *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


# -- the real tools ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(version: str) -> None:
    files = manifests()
    assert {p.name for p in files} >= {"deployment.yaml", "service.yaml", "configmap.yaml", "pdb.yaml",
                                       "servicemonitor.yaml"}
    result = validate(files, version)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for path in files:
        doc = yaml.safe_load(path.read_text())
        rel = str(path)
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == CUSTOM_KINDS[doc["kind"]], rel
            assert re.search(rf"WARN {re.escape(rel)} Couldn't find schema for kind {doc['kind']}", out), out
        else:  # a core resource was really validated, not passed over
            assert re.search(rf"INFO {re.escape(rel)} passed for resource", out), out
    assert "ERROR" not in out, out


#: a mistake kubernetes-validate --strict must catch in a copy of deployment.yaml
BROKEN_DEPLOYMENTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown_field": lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
    "wrong_type": lambda d: d["spec"].update(replicas="two"),
    "missing_required": lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    "nested_unknown_field": lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        capabilities={"drops": ["ALL"]}),
}


@pytest.mark.parametrize("mistake", sorted(BROKEN_DEPLOYMENTS))
def test_kubernetes_validate_fails_on_a_broken_copy(mistake: str, tmp_path: Path) -> None:
    doc = load("deployment.yaml")
    BROKEN_DEPLOYMENTS[mistake](doc)
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(doc))
    result = validate([broken])
    assert result.returncode != 0 and "ERROR" in result.stdout + result.stderr, result.stdout + result.stderr


def yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "yamllint"), "--strict", "-c", str(YAMLLINT_CONFIG), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_yamllint_strict_passes_on_every_file() -> None:
    result = yamllint(*yaml_files())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mistake", ["trailing_space", "unquoted_on", "tab_indent", "duplicate_key"])
def test_yamllint_fails_on_a_broken_copy(mistake: str, tmp_path: Path) -> None:
    text = (KUBE / "examples" / "vernemq-values.yaml").read_text()
    broken = {
        "trailing_space": text.replace("value: auth_on_register\n", "value: auth_on_register \n", 1),
        "unquoted_on": text.replace('value: "on"', "value: on", 1),
        "tab_indent": text.replace("  - name: DOCKER_VERNEMQ_PLUGINS__VMQ_WEBHOOKS\n",
                                   "\t- name: DOCKER_VERNEMQ_PLUGINS__VMQ_WEBHOOKS\n", 1),
        "duplicate_key": text.replace("additionalEnv:\n", "additionalEnv: []\nadditionalEnv:\n", 1),
    }[mistake]
    assert broken != text
    path = tmp_path / "values.yaml"
    path.write_text(broken)
    result = yamllint(path)
    assert result.returncode != 0, result.stdout


# -- the ConfigMap is the bundled rules ----------------------------------------------------------------------

def test_configmap_holds_the_bundled_rules_byte_for_byte() -> None:
    """Every rule file of rules/ is a key with the same bytes, and nothing else is: the manifest never drifts
    from the rules it ships. rules/tests/ (the test tables, for `hookrules test` in CI) is not served, and
    `kubectl create configmap --from-file=rules/` leaves subdirectories out the same way."""
    configmap = load("configmap.yaml")
    files = {p.name: p.read_text() for p in BUNDLED_RULES.iterdir() if p.is_file() and not p.name.startswith(".")}
    subdirs = {p.name for p in BUNDLED_RULES.iterdir() if p.is_dir()}
    assert subdirs <= {"tests"}, (f"rules/ now has {sorted(subdirs - {'tests'})}: libraries and data files need "
                                  "`items` paths in the Deployment's volume (see the docs) and keys here")
    hint = ("deploy/kubernetes/configmap.yaml differs from rules/: copy the files into its data, or regenerate it "
            "with `kubectl create configmap hookrules-rules --from-file=rules/ --dry-run=client -o yaml`")
    assert sorted(configmap["data"]) == sorted(files), hint
    for name, text in files.items():
        assert configmap["data"][name] == text, f"{name}: {hint}"
    deployment = load("deployment.yaml")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "items" not in volumes["rules"]["configMap"]  # every key the user adds is served


# -- the Deployment fits the server ------------------------------------------------------------------------

def container() -> dict[str, Any]:
    containers = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_deployment_security_image_and_mounts() -> None:
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    main = container()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert main["image"] == f"hookrules:{version}"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == version
    assert deployment["spec"]["replicas"] == 2
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001 and security["runAsGroup"] == 10001
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert set(main["resources"]["requests"]) == set(main["resources"]["limits"]) == {"cpu", "memory"}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert flag(main["args"], "--rules") == mounts["rules"]["mountPath"] == "/etc/hookrules/rules"
    assert not any("subPath" in m or "subPathExpr" in m for m in main["volumeMounts"])  # kubelet never updates those
    # a read-only root: the watchdog's clock file and the protos compiled at start go to the temp directory
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_pdb_and_servicemonitor_select_the_pods_and_ports() -> None:
    deployment, service = load("deployment.yaml"), load("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": 9000, "http": 8080, "metrics": 9464}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (number, name) for name, number in ports.items()}
    pdb = load("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    monitor = load("servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # the scrape job is then the Service's name, which the alerts select: up{job="hookrules"}
    assert service["metadata"]["name"] == "hookrules" and "jobLabel" not in monitor["spec"]


def test_termination_grace_covers_prestop_and_the_drain() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    main = container()
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(flag(main["args"], "--grace-period"))
    # preStop, then SIGTERM: up to --grace-period for calls in flight, then the exit (measured: within 0.6 s of it)
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 5


def probe_port(probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"] if "httpGet" in probe else probe["grpc"]["port"]
    return {p["name"]: p["containerPort"] for p in container()["ports"]}.get(port, port)


def local_args(args: list[str], rules: Path) -> list[str]:
    """The container's own args, with the rules directory and loopback ports of this machine."""
    out = list(args)
    out[out.index("--rules") + 1] = str(rules)
    return out[1:] if out[0] == "serve" else out


class Pod:
    """The server started as the Deployment starts it, and its probes asked as kubelet asks them."""

    def __init__(self, rules: Path, tmp_path: Path):
        main = container()
        assert main["args"][0] == "serve"
        self.probes = {kind: main[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        self.server = ServerProcess(rules, *local_args(main["args"], rules), log_path=tmp_path / "pod.log")
        self.ports = {9000: self.server.grpc_port, 8080: self.server.http_port, 9464: self.server.metrics_port}

    def ask(self, kind: str) -> str:
        """What the probe sees: an HTTP status, or the gRPC health status name."""
        probe = self.probes[kind]
        port = self.ports[probe_port(probe)]
        if "grpc" in probe:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=10)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=10) as resp:
                return str(resp.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)


def configmap_volume(tmp_path: Path, data: dict[str, str]) -> Path:
    target = tmp_path / "etc-hookrules-rules"
    target.mkdir()
    AtomicWriter(target).write(data)
    return target


def test_the_deployments_args_serve_the_configmap_and_answer_every_probe(tmp_path: Path) -> None:
    volume = configmap_volume(tmp_path, load("configmap.yaml")["data"])
    pod = Pod(volume, tmp_path)
    try:
        assert pod.ask("startup") == "SERVING"
        assert pod.ask("readiness") == "200"
        assert pod.ask("liveness") == "200"
        assert vernemq_register(pod.server, "c1", "alice", "pw") == {"result": "ok"}
        assert vernemq_register(pod.server, "c2", "baduser", "pw")["result"] != "ok"
    finally:
        assert pod.server.stop() == 0  # SIGTERM: drained and exited cleanly
    assert "stopping: draining calls in flight for up to 10s" in pod.server.log_path.read_text()


def test_while_the_authentication_rule_is_broken_only_readiness_says_so(tmp_path: Path) -> None:
    """An authentication rule that never loaded (failure policy deny): this pod would refuse every client, so
    /readyz answers 503 and it takes no traffic. gRPC health stays SERVING (it says started, not ready) and
    /healthz 200 (a restart would not fix a rule): so gRPC health is the startup probe, /readyz readiness,
    /healthz liveness."""
    data = dict(load("configmap.yaml")["data"])
    data["authenticate.star"] = 'allow()\nif client.username == "x"\n    deny("x")\n'
    pod = Pod(configmap_volume(tmp_path, data), tmp_path)
    try:
        assert pod.ask("readiness") == "503"
        assert pod.ask("startup") == "SERVING"
        assert pod.ask("liveness") == "200"
    finally:
        pod.server.stop()


# -- the broker examples ------------------------------------------------------------------------------------

def service_url(port_name: str) -> str:
    service = load("service.yaml")
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}[port_name]
    return f"http://{service['metadata']['name']}.hookrules.svc.cluster.local:{port}"


def bundled_hooks(broker: str) -> set[str]:
    ruleset, _ = scan(BUNDLED_RULES, RuleSet())
    return {hook for hook in ruleset.answered() if HOOKS[hook].broker == broker}


def test_emqx_example_points_exhook_at_the_service() -> None:
    emqx = load("examples/emqx.yaml")
    config = emqx["spec"]["config"]["data"]
    assert f'url = "{service_url("grpc")}"' in config
    for setting in ("failed_action = deny", "pool_size = 8", "request_timeout = 5s", 'name = "hookrules"'):
        assert setting in config


def test_vernemq_values_register_every_hook_the_bundled_rules_answer() -> None:
    env = {e["name"]: e["value"] for e in load("examples/vernemq-values.yaml")["additionalEnv"]}
    assert env["DOCKER_VERNEMQ_PLUGINS__VMQ_WEBHOOKS"] == "on"
    hooks = {}
    for name, value in env.items():
        match = re.fullmatch(r"DOCKER_VERNEMQ_VMQ_WEBHOOKS__([A-Z0-9_]+)__HOOK", name)
        if match:
            assert env[f"DOCKER_VERNEMQ_VMQ_WEBHOOKS__{match[1]}__ENDPOINT"] == service_url("http") + "/"
            hooks[value] = match[1]
    endpoints = [n for n in env if n.endswith("__ENDPOINT")]
    assert len(endpoints) == len(hooks)  # no endpoint without its hook
    assert set(hooks) == bundled_hooks("vernemq")


def test_rabbitmq_example_lets_a_client_in_through_hookrules(rabbitmq: float | None, tmp_path: Path) -> None:
    """The snippet as RabbitMQ reads it: a real node boots with its lines (the Service's host swapped for this
    machine's hookrules), so every key exists, and its checks reach hookrules' bundled rules."""
    cluster = load("examples/rabbitmq.yaml")["spec"]["rabbitmq"]
    assert {"rabbitmq_mqtt", "rabbitmq_auth_backend_http"} <= set(cluster["additionalPlugins"])
    lines = [line.strip() for line in cluster["additionalConfig"].splitlines()
             if line.strip() and not line.strip().startswith("#")]
    paths = {k: v for k, v in (line.split(" = ", 1) for line in lines) if k.endswith("_path")}
    assert paths == {f"auth_http.{check}_path": f"{service_url('http')}/rabbitmq/{check}"
                     for check in ("user", "vhost", "resource", "topic")}
    hookrules = ServerProcess(BUNDLED_RULES, log_path=tmp_path / "hookrules.log")
    local = [line.replace(service_url("http"), f"http://127.0.0.1:{hookrules.http_port}") for line in lines]
    clients: list[SyncClient] = []
    try:
        with RabbitNode(f"http://127.0.0.1:{hookrules.http_port}", http_method="post", extra_conf=local) as node:
            for user, connack in (("alice", 0), ("baduser", 4)):
                client = SyncClient(node.mqtt_port, f"{user}-1", user, "pw")
                clients.append(client)
                assert client.connect().connack == connack, hookrules.log()
    finally:
        for client in clients:
            client.disconnect()
        hookrules.stop()
