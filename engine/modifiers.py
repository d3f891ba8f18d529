"""VerneMQ modifiers a rule may send with allow(modifiers={...}): the keys and types VerneMQ accepts.

VerneMQ turns modifier names into atoms with binary_to_existing_atom and crashes the client's
connection on a name it does not know (../shared/reference/vernemq-webhooks.md 1.4-1.5), so every
key is checked here, by the rule call that sets it, and an unknown one is a rule error, never sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

Check = Callable[[str, Any], Any]


def _bool(key: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"modifier '{key}' must be True or False, not {value!r}")
    return value


def _int(key: str, value: Any) -> int:
    if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"modifier '{key}' must be a number, not {value!r}")
    if value < 0:
        raise ValueError(f"modifier '{key}' must not be negative, not {value!r}")
    return int(round(value))  # VerneMQ rounds floats too


def _positive(key: str, value: Any) -> int:
    number = _int(key, value)
    if number <= 0:
        raise ValueError(f"modifier '{key}' must be greater than 0, not {value!r}")
    return number


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"modifier '{key}' must be a string, not {value!r}")
    return value


def _one_of(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"modifier '{key}' must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return check


def _int_in(*choices: int) -> Check:
    def check(key: str, value: Any) -> int:
        if type(value) is not int or value not in choices:
            raise ValueError(f"modifier '{key}' must be one of {', '.join(map(str, choices))}, not {value!r}")
        return value

    return check


def _bytes(key: str, value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if not isinstance(value, bytes):
        raise ValueError(f"modifier '{key}' must be bytes or a string, not {value!r}")
    return value


def _user_properties(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"modifier '{key}' must be a dict of strings to strings, not {value!r}")
    return dict(value)


def _nested(schema: Mapping[str, Check]) -> Check:
    def check(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"modifier '{key}' must be a dict, not {value!r}")
        return validate(value, schema, f"{key}.")

    return check


_REGISTER: dict[str, Check] = {
    **{k: _bool for k in ("allow_register", "allow_publish", "allow_subscribe", "allow_unsubscribe",
                          "clean_session", "upgrade_qos")},
    **{k: _int for k in ("max_message_size", "max_connection_lifetime", "max_message_rate", "max_inflight_messages",
                         "retry_interval", "max_online_messages", "max_offline_messages", "max_drain_time",
                         "max_msgs_per_drain_step")},
    "username": _str,
    "mountpoint": _str,
    "client_id": _str,
    "shared_subscription_policy": _one_of("prefer_local", "local_only", "random"),
    "queue_type": _one_of("fifo", "lifo"),
}
_PUBLISH: dict[str, Check] = {"throttle": _positive, "mountpoint": _str}

#: allow(modifiers=...) keys per VerneMQ hook; a hook not listed takes none.
SCHEMAS: Mapping[str, Mapping[str, Check]] = MappingProxyType({
    "auth_on_register": _REGISTER,
    "auth_on_register_m5": {**_REGISTER, "properties": _nested({"p_user_property": _user_properties,
                                                                "p_session_expiry_interval": _int})},
    "auth_on_publish": _PUBLISH,
    "auth_on_publish_m5": _PUBLISH,
    "on_auth_m5": {"reason_code": _int_in(0, 24),
                   "properties": _nested({"p_authentication_method": _str, "p_authentication_data": _bytes})},
})


def validate(modifiers: Mapping[str, Any], schema: Mapping[str, Check], prefix: str = "") -> dict[str, Any]:
    """The modifiers, checked and normalized; ValueError names the first bad key and what is accepted."""
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        check = schema.get(key) if isinstance(key, str) else None
        if check is None:
            raise ValueError(f"VerneMQ does not know the modifier '{prefix}{key}'; it accepts: {', '.join(schema)}")
        out[key] = check(prefix + key, value)
    if ("mountpoint" in out) != ("client_id" in out) and "client_id" in schema:
        raise ValueError("modifiers 'mountpoint' and 'client_id' must be set together (VerneMQ ignores one alone)")
    return out
