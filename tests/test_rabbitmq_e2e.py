"""End to end with a real broker: Debian's RabbitMQ asks hookrules through rabbitmq_auth_backend_http, and
real MQTT clients (paho) connect, subscribe and publish. The same two portable files answer EMQX (gRPC) and
VerneMQ (webhooks) from the same server in the same test.

One node for the module (a boot is 9-15 s), started beside one hookrules server on a rules directory the
tests share: each test uses its own client ids, and the test that edits a rule puts it back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import broker_calls as call
from .rabbit_mqtt import SyncClient
from .rabbitmq_node import RabbitNode
from .support import ServerProcess, Stubs, wait_for

AUTHENTICATE = """\
# who may connect, whichever broker asks
USERS = {"alice": "wonderland", "bob": "builder", "carol": "s3cret"}
if USERS.get(client.username) == client.password:
    allow()
deny("bad credentials")
"""

AUTHORIZE = """\
# each client owns devices/<client id>/; anyone may watch every device's status
mine = "devices/" + client.id + "/"
if action == "publish" and topic.startswith(mine):
    allow()
if action == "subscribe" and (topic.startswith(mine) or topic == "devices/+/status"):
    allow()
deny("not yours")
"""


@pytest.fixture(scope="module")
def hookrules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("e2e")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "authenticate.star").write_text(AUTHENTICATE)
    (rules / "authorize.star").write_text(AUTHORIZE)
    server = ServerProcess(rules, "--decision-log", str(tmp / "decisions.jsonl"), log_path=tmp / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(rabbitmq: float | None, hookrules: ServerProcess) -> Iterator[RabbitNode]:
    """RabbitMQ, asking hookrules by POST (the README's setup)."""
    with RabbitNode(f"http://127.0.0.1:{hookrules.http_port}", http_method="post") as started:
        yield started


@pytest.fixture
def clients() -> Iterator[list[SyncClient]]:
    made: list[SyncClient] = []
    yield made
    for client in made:
        client.disconnect()


def mqtt(node: RabbitNode, made: list[SyncClient], client_id: str, username: str, password: str) -> SyncClient:
    client = SyncClient(node.mqtt_port, client_id, username, password)
    made.append(client)
    return client


def test_connect_is_decided_by_authenticate_star(node: RabbitNode, clients: list[SyncClient]) -> None:
    assert mqtt(node, clients, "alice-c1", "alice", "wonderland").connect().connack == 0
    refused = mqtt(node, clients, "mallory-c1", "mallory", "wonderland").connect()
    assert refused.connack == 4 and refused.closed  # bad user name or password
    wrong = mqtt(node, clients, "alice-c2", "alice", "guess").connect()
    assert wrong.connack == 4 and wrong.closed


def test_a_publish_is_delivered_end_to_end_and_a_refused_one_never(node: RabbitNode,
                                                                   clients: list[SyncClient]) -> None:
    watcher = mqtt(node, clients, "bob-c1", "bob", "builder")
    assert watcher.connect().connack == 0
    # a wildcard subscription: RabbitMQ checks the routing key devices.*.status, authorize.star reads devices/+/status
    assert watcher.subscribe("devices/+/status", qos=1).suback == [1]
    assert watcher.subscribe("devices/bob-c1/#", qos=1).suback == [1]
    sender = mqtt(node, clients, "alice-c3", "alice", "wonderland")
    assert sender.connect().connack == 0
    assert sender.publish("devices/alice-c3/status", b"online", qos=1).puback
    assert watcher.wait_messages(1) == [("devices/alice-c3/status", b"online", False)]
    # alice writing into bob's tree is refused: RabbitMQ closes her connection and routes nothing
    intruder = mqtt(node, clients, "alice-c4", "alice", "wonderland")
    assert intruder.connect().connack == 0
    refused = intruder.publish("devices/bob-c1/cmd", b"reboot", qos=1)
    assert refused.closed and not refused.puback
    # bob's own publish to the same topic, sent after it, arrives: the refused one, sent first, never did
    assert watcher.publish("devices/bob-c1/cmd", b"own", qos=1).puback
    assert watcher.wait_messages(2) == [("devices/alice-c3/status", b"online", False),
                                        ("devices/bob-c1/cmd", b"own", False)]


def test_a_refused_subscribe_closes_the_connection(node: RabbitNode, clients: list[SyncClient]) -> None:
    client = mqtt(node, clients, "carol-c1", "carol", "s3cret")
    assert client.connect().connack == 0
    assert client.subscribe("devices/carol-c1/+", qos=0).suback == [0]  # its own tree
    refused = client.subscribe("devices/bob-c1/#", qos=0)
    assert refused.closed and refused.suback is None


def test_a_rule_edit_takes_effect_for_the_next_connect(node: RabbitNode, hookrules: ServerProcess,
                                                       clients: list[SyncClient]) -> None:
    rule = hookrules.rules / "authenticate.star"
    before = hookrules.metrics_text()
    rule.write_text('if client.username == "carol":\n    deny("carol is suspended")\n' + AUTHENTICATE)
    try:
        assert wait_for(lambda: hookrules.metrics_text().count("hookrules_rule_info{") and
                        _rule_version(hookrules.metrics_text()) != _rule_version(before), timeout=10)
        suspended = mqtt(node, clients, "carol-c2", "carol", "s3cret").connect()
        assert suspended.connack == 4
        assert mqtt(node, clients, "bob-c2", "bob", "builder").connect().connack == 0
    finally:
        rule.write_text(AUTHENTICATE)
    assert wait_for(lambda: _rule_version(hookrules.metrics_text()) == _rule_version(before), timeout=10)
    assert mqtt(node, clients, "carol-c3", "carol", "s3cret").connect().connack == 0


def _rule_version(metrics: str) -> str:
    for line in metrics.splitlines():
        if line.startswith('hookrules_rule_info{hook="authenticate"'):
            return line.split('version="')[1].split('"')[0]
    return ""


def test_the_same_files_answer_emqx_and_vernemq_beside_rabbitmq(node: RabbitNode, hookrules: ServerProcess,
                                                                stubs: dict[str, Stubs],
                                                                clients: list[SyncClient]) -> None:
    s = stubs["v3"]
    for username, password, allowed in (("alice", "wonderland", True), ("mallory", "x", False)):
        assert call.emqx_authenticate(hookrules, s, "c-emqx", username, password) is allowed
        assert (call.vernemq_register(hookrules, "c-vmq", username, password) == {"result": "ok"}) is allowed
        assert (mqtt(node, clients, f"c-rmq-{username}", username, password).connect().connack == 0) is allowed
    assert call.emqx_authorize(hookrules, s, "dev-9", "publish", "devices/dev-9/x") is True
    assert call.emqx_authorize(hookrules, s, "dev-9", "publish", "devices/dev-8/x") is False
    assert call.vernemq_subscribe(hookrules, "dev-9", "devices/+/status")["result"] == "ok"
    text = hookrules.metrics_text()
    for hook in ("rabbitmq.user", "rabbitmq.vhost", "rabbitmq.topic", "rabbitmq.resource"):
        assert f'hookrules_request_duration_seconds_count{{broker="rabbitmq",hook="{hook}"}}' in text, hook
    assert 'hookrules_decisions_total{broker="rabbitmq",decision="deny",hook="rabbitmq.user",source="rule"}' in text
    assert 'hookrules_bad_requests_total{broker="rabbitmq"' not in text  # RabbitMQ sent nothing we could not read


def test_rabbitmq_asking_by_get(rabbitmq: float | None, hookrules: ServerProcess) -> None:
    """auth_http.http_method = get: the same checks, in the query string."""
    with RabbitNode(f"http://127.0.0.1:{hookrules.http_port}", http_method="get") as node:
        made: list[SyncClient] = []
        try:
            client = mqtt(node, made, "alice-g1", "alice", "wonderland")
            assert client.connect().connack == 0
            assert client.subscribe("devices/alice-g1/#", qos=1).suback == [1]
            assert client.publish("devices/alice-g1/t", b"1", qos=1).puback
            assert client.wait_messages(1) == [("devices/alice-g1/t", b"1", False)]
            assert mqtt(node, made, "alice-g2", "alice", "nope").connect().connack == 4
        finally:
            for client in made:
                client.disconnect()
