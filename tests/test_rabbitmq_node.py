"""The throwaway RabbitMQ node works: it calls the auth backend as RabbitMQ does, and leaves nothing behind.

One node start (~15 s): a recording server stands in for hookrules, a real paho client connects.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .rabbit_mqtt import SyncClient
from .rabbit_recorder import Answer, Call, Recorder
from .rabbitmq_node import RabbitNode
from .support import alive, wait_for


def _deny_mallory(call: Call) -> Answer:
    return Answer("deny") if call.get("username") == "mallory" else Answer("allow")


def test_node_calls_the_auth_backend_and_stop_leaves_nothing(start_rabbit: Callable[..., RabbitNode]) -> None:
    with Recorder(_deny_mallory) as rec:
        node = start_rabbit(rec.base_url, http_method="post")
        assert node.node_proc is not None and node.epmd_proc is not None and node.workdir is not None
        pids = [node.node_proc.pid, node.epmd_proc.pid, *node.marked_pids()]
        workdir = node.workdir

        ok = SyncClient(node.mqtt_port, "cid-ok", "alice", "s3cret")
        assert ok.connect().connack == 0
        ok.disconnect()
        refused = SyncClient(node.mqtt_port, "cid-no", "mallory", "pw")
        out = refused.connect()
        refused.client.loop_stop()
        assert out.connack == 4 and out.closed

        user = rec.snapshot("user")
        vhost = rec.snapshot("vhost")
        assert [c.fields for c in user] == [
            (("username", "alice"), ("password", "s3cret"), ("vhost", "/"), ("client_id", "cid-ok")),
            (("username", "mallory"), ("password", "pw"), ("vhost", "/"), ("client_id", "cid-no"))]
        assert [c.fields for c in vhost] == [  # the refused user never reaches the vhost check
            (("username", "alice"), ("vhost", "/"), ("ip", "127.0.0.1"), ("tags", ""), ("client_id", "cid-ok"))]
        assert {(c.method, c.content_type) for c in user + vhost} == {("POST", "application/x-www-form-urlencoded")}

        node.stop()
    # by PID: the node, its epmd, and every helper process that carried the node's marker
    assert wait_for(lambda: not any(alive(p) for p in pids), timeout=10), [p for p in pids if alive(p)]
    assert node.marked_pids() == []
    assert not workdir.exists()
    assert os.path.isdir(workdir.parent)
