"""Measure what RabbitMQ's rabbitmq_auth_backend_http sends for each MQTT action, and how it reads answers.

Run by hand (not collected by pytest): `.venv/bin/python -m tests.rabbit_measure [get|post] [answers]`.
It starts a throwaway node per HTTP method against a recording server, drives it with paho-mqtt and prints
every call RabbitMQ made, with its fields in wire order. Findings are written up in the lead's notes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from .rabbit_mqtt import SyncClient
from .rabbit_recorder import Answer, Call, Recorder
from .rabbitmq_node import RabbitNode


def show(title: str, rec: Recorder, outcome: object = "") -> None:
    calls = rec.snapshot()
    rec.clear()
    print(f"\n## {title}  -> client saw: {outcome}")
    for c in calls:
        print(f"  {c.method} /{c.check} [{c.content_type}] " + " & ".join(f"{k}={v!r}" for k, v in c.fields))


def sending(node: RabbitNode, rec: Recorder) -> None:
    p = node.mqtt_port
    c = SyncClient(p, "cid-1", "alice", "pw1")
    show("CONNECT alice/pw1 clean", rec, c.connect())
    c.disconnect()
    show("DISCONNECT", rec)
    c = SyncClient(p, "cid-nopw", "bob")
    show("CONNECT bob without password", rec, c.connect())
    c.disconnect()
    c = SyncClient(p, "cid-persist", "carol", "pw", clean_session=False)
    show("CONNECT carol clean_session=False", rec, c.connect())
    c.disconnect()
    rec.clear()
    c = SyncClient(p, "cid-sub", "dave", "pw")
    c.connect()
    rec.clear()
    for qos, topic in ((0, "s/q0"), (1, "s/q1"), (2, "s/q2")):
        show(f"SUBSCRIBE {topic} qos {qos}", rec, c.subscribe(topic, qos))
    show("SUBSCRIBE a.b/c (dot in a level) qos 0", rec, c.subscribe("a.b/c", 0))
    show("SUBSCRIBE a/+/c qos 0", rec, c.subscribe("a/+/c", 0))
    show("SUBSCRIBE a/# qos 1", rec, c.subscribe("a/#", 1))
    show("SUBSCRIBE x*/y qos 0", rec, c.subscribe("x*/y", 0))
    show("SUBSCRIBE a/*/c (literal star level) qos 0", rec, c.subscribe("a/*/c", 0))
    show("SUBSCRIBE /lead/slash qos 0", rec, c.subscribe("/lead/slash", 0))
    show("SUBSCRIBE same s/q0 again qos 0", rec, c.subscribe("s/q0", 0))
    show("UNSUBSCRIBE s/q1", rec, c.unsubscribe("s/q1"))
    show("PUBLISH p/q0 qos 0", rec, c.publish("p/q0", qos=0))
    show("PUBLISH p/q1 qos 1", rec, c.publish("p/q1", qos=1))
    show("PUBLISH p/r retained qos 1", rec, c.publish("p/r", qos=1, retain=True))
    show("PUBLISH a.b/c (dot) qos 0", rec, c.publish("a.b/c", qos=0))
    show("PUBLISH x*/y qos 0", rec, c.publish("x*/y", qos=0))
    for _ in range(5):
        c.publish("p/five", qos=0, settle=0.05)
    time.sleep(0.5)
    show("5 x PUBLISH p/five qos 0 in a row", rec)
    time.sleep(2.0)
    show("PUBLISH p/five again after 2 s", rec, c.publish("p/five", qos=0))
    c.disconnect()
    show("DISCONNECT (subscriber)", rec)
    w = SyncClient(p, "cid-will", "erin", "pw", will=("w/t", b"gone"))
    w.connect()
    rec.clear()
    w.drop()
    time.sleep(1.0)
    show("abrupt close of a client with a will on w/t", rec)


def answer_case(node: RabbitNode, rec: Recorder, check: str, answer: Answer, action: str) -> None:
    """Answer `check` with `answer` (everything else: allow) and perform `action` (connect/subscribe/publish)."""
    def responder(call: Call) -> Answer:
        return answer if call.check == check else Answer()
    rec.responder = responder
    c = SyncClient(node.mqtt_port, f"cid-{check}-{action}", "ans", "pw")
    try:
        if action == "connect":
            out = c.connect()
        else:
            rec.responder = lambda call: Answer()
            first = c.connect()
            rec.clear()
            rec.responder = responder
            out = c.subscribe("ans/t", 1) if action == "subscribe" else c.publish("ans/t", qos=1)
            if first.connack != 0:
                out = first
        show(f"{check} answered {answer} on {action}: ({out.seconds:.2f} s)", rec, out)
    finally:
        c.disconnect() if not c.closed else c.client.loop_stop()
        rec.responder = lambda call: Answer()
        rec.clear()


def answers(node: RabbitNode, rec: Recorder) -> None:
    bodies: list[Answer] = [Answer("allow"), Answer("deny"), Answer("ALLOW"), Answer("Deny"),
                            Answer("allow administrator"), Answer("allow\n"), Answer(" allow "), Answer(""),
                            Answer("maybe"), Answer("allow", 404), Answer("allow", 500), Answer("allow", 201),
                            Answer("allow", 204)]
    for a in bodies:
        answer_case(node, rec, "user", a, "connect")
    for a in (Answer("deny"), Answer("allow\n"), Answer("")):
        answer_case(node, rec, "vhost", a, "connect")
    for a in (Answer("deny"), Answer("allow\n"), Answer("allow", 500)):
        answer_case(node, rec, "topic", a, "subscribe")
        answer_case(node, rec, "resource", a, "subscribe")
        answer_case(node, rec, "topic", a, "publish")
    answer_case(node, rec, "user", Answer("allow", delay=20.0), "connect")


def main(argv: list[str]) -> None:
    methods = [m for m in argv if m in ("get", "post")] or ["get", "post"]
    what: list[Callable[[RabbitNode, Recorder], None]] = [answers] if "answers" in argv else [sending]
    for method in methods:
        with Recorder() as rec, RabbitNode(rec.base_url, http_method=method) as node:  # type: ignore[arg-type]
            print(f"\n# http_method = {method}, node {node.node_name}")
            for step in what:
                step(node, rec)


if __name__ == "__main__":
    main(sys.argv[1:])
