"""A synchronous paho-mqtt client for tests: each call waits (bounded) for the broker's answer or the close.

Why: a refused SUBSCRIBE or PUBLISH on RabbitMQ closes the connection instead of answering, so every step here
returns what happened (an ack, or "closed") rather than hanging. reconnect_on_failure=False: otherwise paho
reconnects and resends a refused QoS 1 publish in a loop. MQTT 3.1.1: RabbitMQ 3.10 has no MQTT 5.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# paho 2 reports an MQTT 3.1.1 CONNACK code as its MQTT 5 reason code; this maps it back to the wire's code
_CONNACK = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}
STEP_TIMEOUT = 20.0  # seconds; RabbitMQ's HTTP backend waits up to 15 s for an answer


@dataclass
class Outcome:
    """What the client saw: connack code (None: none came), suback codes, closed, and how long it took."""

    connack: int | None = None
    suback: list[int] | None = None
    puback: bool = False
    closed: bool = False
    seconds: float = 0.0
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        if self.connack is not None:
            parts.append(f"CONNACK {self.connack}")
        if self.suback is not None:
            parts.append(f"SUBACK {self.suback}")
        if self.puback:
            parts.append("PUBACK")
        if self.closed:
            parts.append("connection closed")
        return ", ".join(parts) or "nothing"


class SyncClient:
    def __init__(self, port: int, client_id: str, username: str | None = None, password: str | None = None,
                 clean_session: bool = True, will: tuple[str, bytes] | None = None, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                                  protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self._cond = threading.Condition()
        self._events: list[tuple[str, Any]] = []
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client.on_connect = lambda c, u, f, rc, p: self._push("connack", _CONNACK.get(rc.value, rc.value))
        self.client.on_disconnect = lambda c, u, f, rc, p: self._push("closed", rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._push("suback", [r.value for r in rcs])
        self.client.on_unsubscribe = lambda c, u, mid, rcs, p: self._push("unsuback", mid)
        self.client.on_publish = lambda c, u, mid, rc, p: self._push("puback", mid)
        self.client.on_message = lambda c, u, m: self._on_message(m)
        self.closed = False

    def _on_message(self, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            self._cond.notify_all()

    def _push(self, kind: str, value: Any) -> None:
        with self._cond:
            self._events.append((kind, value))
            if kind == "closed":
                self.closed = True
            self._cond.notify_all()

    def _forget(self) -> None:
        """Drop events from earlier steps (paho calls on_publish for QoS 0 too) so a step sees only its own."""
        with self._cond:
            self._events = [e for e in self._events if e[0] == "closed"]

    def _await(self, kinds: set[str], timeout: float) -> tuple[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (k, v) in enumerate(self._events):
                    if k in kinds or k == "closed":
                        del self._events[i]
                        return k, v
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def connect(self, timeout: float = STEP_TIMEOUT) -> Outcome:
        t = time.monotonic()
        out = Outcome()
        try:
            self.client.connect(self.host, self.port, keepalive=60)
        except OSError:
            out.closed = True
            return out
        self.client.loop_start()
        ev = self._await({"connack"}, timeout)
        if ev and ev[0] == "connack":
            out.connack = ev[1]
            if ev[1] != 0:  # paho closes after a refusal; wait for that so the state is settled
                self._await(set(), 2.0)
                out.closed = True
        elif ev:
            out.closed = True
        out.seconds = time.monotonic() - t
        return out

    def subscribe(self, topic: str, qos: int = 0, timeout: float = STEP_TIMEOUT) -> Outcome:
        t = time.monotonic()
        out = Outcome()
        self._forget()
        self.client.subscribe(topic, qos)
        ev = self._await({"suback"}, timeout)
        if ev and ev[0] == "suback":
            out.suback = ev[1]
        elif ev:
            out.closed = True
        out.seconds = time.monotonic() - t
        return out

    def unsubscribe(self, topic: str, timeout: float = STEP_TIMEOUT) -> Outcome:
        t = time.monotonic()
        out = Outcome()
        self._forget()
        self.client.unsubscribe(topic)
        ev = self._await({"unsuback"}, timeout)
        out.closed = bool(ev and ev[0] == "closed")
        out.seconds = time.monotonic() - t
        return out

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 0, retain: bool = False,
                settle: float = 1.0) -> Outcome:
        """QoS 1 waits for PUBACK (or the close); QoS 0 has no ack, so it waits `settle` s for a close."""
        t = time.monotonic()
        out = Outcome()
        self._forget()
        self.client.publish(topic, payload, qos=qos, retain=retain)
        ev = self._await({"puback"} if qos else set(), STEP_TIMEOUT if qos else settle)
        out.puback = bool(ev and ev[0] == "puback" and qos)
        out.closed = self.closed
        out.seconds = time.monotonic() - t
        return out

    def wait_messages(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            return list(self.messages)

    def disconnect(self) -> None:
        """A clean DISCONNECT (no will is published)."""
        if not self.closed:
            self.client.disconnect()
            self._await(set(), 5.0)
        self.client.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT, as a crashed client would (the will is published)."""
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            try:  # paho's thread reads the EOF and reports a disconnect; the broker sees no DISCONNECT
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._await(set(), 5.0)
        self.client.loop_stop()
