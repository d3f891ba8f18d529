"""The bundled rules (rules/*.star) coded by hand in Python, as the peers a user would write instead of
hookrules code them: one copy, so the peers cannot drift apart from each other (peers_bench.py checks at
start that their replies equal hookrules' for every request kind).

* authenticate: rules/authenticate.star: refuse the user "baduser", let everyone else in;
* authorize: rules/authorize.star: devices/<id>/... belongs to client <id> (by name or by wildcard; a
  client named "+" or "#" owns nothing), nobody publishes to $SYS/...;
* webhook_reply: the VerneMQ webhook reply for those rules: auth_on_register(_m5) -> authenticate,
  auth_on_publish(_m5) -> authorize, auth_on_subscribe(_m5) -> authorize once per topic (a subscription
  with a refused topic is answered with the whole topic list, refused topics at QoS 128, or 0x87 under
  "modifiers" for MQTT 5); any other hook {"result": "next"} (no opinion).

Framework-free on purpose: each peer keeps only what its framework makes a user write (the handler, the
routing, the server), bench/peer_servicer.py's ExHook mapping included.
"""

from __future__ import annotations

from typing import Any

OK = {"result": "ok"}
NEXT = {"result": "next"}


def authenticate(username: str | None) -> str | None:
    """rules/authenticate.star: None to let the client in, else the reason to refuse."""
    return "user is banned" if username == "baduser" else None


def authorize(client_id: str, publish: bool, topic: str) -> str | None:
    """rules/authorize.star: None to allow, else the reason to refuse."""
    words = topic.split("/")
    if words[0] == "devices" and (len(words) < 2 or words[1] != client_id or client_id in ("+", "#")):
        return "devices/<id>/ belongs to client <id>"
    if publish and topic.startswith("$SYS/"):
        return "$SYS topics are read-only"
    return None


def webhook_reply(hook: str, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON reply to VerneMQ's webhook `hook` (its vernemq-hook header) with this body."""
    if hook in ("auth_on_register", "auth_on_register_m5"):
        reason = authenticate(body.get("username"))
        return OK if reason is None else {"result": {"error": reason}}
    if hook in ("auth_on_publish", "auth_on_publish_m5"):
        reason = authorize(body.get("client_id") or "", True, body["topic"])
        return OK if reason is None else {"result": {"error": reason}}
    if hook in ("auth_on_subscribe", "auth_on_subscribe_m5"):
        client_id = body.get("client_id") or ""
        topics = body["topics"]
        refused = [authorize(client_id, False, t["topic"]) is not None for t in topics]
        if not any(refused):
            return OK
        m5 = hook.endswith("_m5")
        granted = [{"topic": t["topic"], "qos": (135 if m5 else 128) if no else t.get("qos", 0)}
                   for t, no in zip(topics, refused)]
        return {"result": "ok", "modifiers": {"topics": granted}} if m5 else {"result": "ok", "topics": granted}
    return NEXT
