"""The VerneMQ webhooks spec's example payloads and replies, as Python dicts.

Copied from vmq-docs plugindevelopment/webhookplugins.md (../shared/reference/seeds/004_0b6982cd4c46e7ea.txt).
The spec's payloads are plain text ("hello"), which VerneMQ sends only with base64encode = off, so a test
posts them with `?base64=off`. on_session_expired has no example in the spec: its payload is the one of
the other on_client_* hooks (../shared/reference/vernemq-webhooks.md, section 1.3).
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, dict[str, Any]] = {
    "auth_on_register": {
        "peer_addr": "127.0.0.1",
        "peer_port": 8888,
        "username": "username",
        "password": "password",
        "mountpoint": "",
        "client_id": "clientid",
        "clean_session": False,
    },
    "auth_on_subscribe": {
        "client_id": "clientid",
        "mountpoint": "",
        "username": "username",
        "topics": [{"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 2}],
    },
    "auth_on_publish": {
        "username": "username",
        "client_id": "clientid",
        "mountpoint": "",
        "qos": 1,
        "topic": "a/b",
        "payload": "hello",
        "retain": False,
    },
    "on_register": {
        "peer_addr": "127.0.0.1",
        "peer_port": 8888,
        "username": "username",
        "mountpoint": "",
        "client_id": "clientid",
    },
    "on_publish": {
        "username": "username",
        "client_id": "clientid",
        "mountpoint": "",
        "qos": 1,
        "topic": "a/b",
        "payload": "hello",
        "retain": False,
    },
    "on_subscribe": {
        "client_id": "clientid",
        "mountpoint": "",
        "username": "username",
        "topics": [{"topic": "a/b", "qos": 1}, {"topic": "c/d", "qos": 2}],
    },
    "on_unsubscribe": {
        "username": "username",
        "client_id": "clientid",
        "mountpoint": "",
        "topics": ["a/b", "c/d"],
    },
    "on_deliver": {
        "username": "username",
        "client_id": "clientid",
        "mountpoint": "",
        "topic": "a/b",
        "payload": "hello",
    },
    "on_offline_message": {
        "client_id": "clientid",
        "mountpoint": "",
        "qos": "1",  # sic: a string in the spec
        "topic": "sometopic",
        "payload": "payload",
        "retain": False,
    },
    "on_client_wakeup": {"client_id": "clientid", "mountpoint": ""},
    "on_client_offline": {"client_id": "clientid", "mountpoint": ""},
    "on_client_gone": {"client_id": "clientid", "mountpoint": ""},
    "auth_on_register_m5": {
        "peer_addr": "127.0.0.1",
        "peer_port": 8888,
        "mountpoint": "",
        "client_id": "client-id",
        "username": "username",
        "password": "password",
        "clean_start": True,
        "properties": {},
    },
    "on_auth_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "properties": {"p_authentication_data": "QVVUSF9EQVRBMA==", "p_authentication_method": "AUTH_METHOD"},
    },
    "auth_on_subscribe_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "topics": [{"topic": "test/topic", "qos": 1}],
        "properties": {},
    },
    "auth_on_publish_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "qos": 1,
        "topic": "some/topic",
        "payload": "message payload",
        "retain": False,
        "properties": {},
    },
    "on_register_m5": {
        "peer_addr": "127.0.0.1",
        "peer_port": 8888,
        "mountpoint": "",
        "client_id": "client-id",
        "username": "username",
        "properties": {},
    },
    "on_publish_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "qos": 1,
        "topic": "test/topic",
        "payload": "message payload",
        "retain": False,
        "properties": {},
    },
    "on_subscribe_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "topics": [{"topic": "test/topic", "qos": 1}, {"topic": "test/topic", "qos": 128}],
        "properties": {},
    },
    "on_unsubscribe_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "topics": ["test/topic"],
        "properties": {},
    },
    "on_deliver_m5": {
        "username": "username",
        "mountpoint": "",
        "client_id": "client-id",
        "topic": "test/topic",
        "payload": "message payload",
        "properties": {},
    },
    # not in the spec (see the module docstring)
    "on_session_expired": {"client_id": "clientid", "mountpoint": ""},
}

# -- the spec's example replies -------------------------------------------------------------------

AUTH_ON_REGISTER_MODIFIERS = {
    "result": "ok",
    "modifiers": {"max_message_size": 65535, "max_inflight_messages": 10000, "retry_interval": 20000},
}
AUTH_ON_PUBLISH_REWRITE = {
    "result": "ok",
    "modifiers": {"topic": "rewritten/topic", "qos": 2, "payload": "rewritten payload", "retain": True},
}
AUTH_ON_PUBLISH_M5_REWRITE = {"modifiers": {"topic": "rewritten/topic"}, "result": "ok"}
ON_UNSUBSCRIBE_REWRITE = {"result": "ok", "topics": ["rewritten/topic"]}
ON_UNSUBSCRIBE_M5_REWRITE = {"modifiers": {"topics": ["rewritten/topic"]}, "result": "ok"}
ON_DELIVER_REWRITE = {"result": "ok", "modifiers": {"topic": "rewritten/topic", "payload": "rewritten payload"}}
# the spec prints this one with a missing brace and comma; this is what it means
ON_AUTH_M5_REPLY = {
    "modifiers": {
        "properties": {"p_authentication_data": "QVVUSF9EQVRBMQ==", "p_authentication_method": "AUTH_METHOD"},
        "reason_code": 0,
    },
    "result": "ok",
}
