"""What EMQX sends for one MQTT session, in its order (../shared/reference/emqx-exhook.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .support import Stubs


@dataclass
class SessionReplies:
    authenticate: Any = None
    authorize_subscribe: Any = None
    authorize_publish: Any = None
    publish: list[Any] = field(default_factory=list)
    notifications: list[Any] = field(default_factory=list)


def meta(pb: Any) -> Any:
    return pb.RequestMeta(node="emqx@127.0.0.1", version="5.9.0", sysdescr="EMQX", cluster_name="test")


def client_info(pb: Any, client_id: str, username: str, password: str = "secret") -> Any:
    return pb.ClientInfo(node="emqx@127.0.0.1", clientid=client_id, username=username, password=password,
                         peerhost="127.0.0.1", peerport=50000, sockport=1883, protocol="mqtt")


def message(pb: Any, client_id: str, username: str, topic: str, payload: bytes, qos: int = 1) -> Any:
    msg = pb.Message(node="emqx@127.0.0.1", id="0006" + client_id.encode().hex().upper()[:28].ljust(28, "0"),
                     qos=qos, topic=topic, payload=payload, timestamp=1700000000000)
    setattr(msg, "from", client_id)
    msg.headers["username"] = username
    msg.headers["peerhost"] = "127.0.0.1"
    msg.headers["protocol"] = "mqtt"
    return msg


def run_session(stubs: Stubs, stub: Any, client_id: str, username: str,
                publishes: list[tuple[str, bytes]], sub_topic: str = "t/1", timeout: float = 10) -> SessionReplies:
    """Connect, subscribe, publish each (topic, payload), deliver, unsubscribe, disconnect."""
    pb = stubs.pb2
    ci = client_info(pb, client_id, username)
    conninfo = pb.ConnInfo(node="emqx@127.0.0.1", clientid=client_id, username=username, peerhost="127.0.0.1",
                           sockport=1883, proto_name="MQTT", proto_ver="5", keepalive=60, peerport=50000)
    out = SessionReplies()
    n = out.notifications
    props = [pb.Property(name="Session-Expiry-Interval", value="100")]
    n.append(stub.OnClientConnect(pb.ClientConnectRequest(conninfo=conninfo, props=props, meta=meta(pb)), timeout=timeout))
    out.authenticate = stub.OnClientAuthenticate(
        pb.ClientAuthenticateRequest(clientinfo=ci, result=False, meta=meta(pb)), timeout=timeout)
    n.append(stub.OnSessionCreated(pb.SessionCreatedRequest(clientinfo=ci, meta=meta(pb)), timeout=timeout))
    n.append(stub.OnClientConnected(pb.ClientConnectedRequest(clientinfo=ci, meta=meta(pb)), timeout=timeout))
    n.append(stub.OnClientConnack(pb.ClientConnackRequest(conninfo=conninfo, result_code="success", meta=meta(pb)),
                                  timeout=timeout))
    authz = pb.ClientAuthorizeRequest
    out.authorize_subscribe = stub.OnClientAuthorize(
        authz(clientinfo=ci, type=authz.SUBSCRIBE, topic=sub_topic, result=False, meta=meta(pb)), timeout=timeout)
    subopts = pb.SubOpts(qos=1)
    n.append(stub.OnClientSubscribe(pb.ClientSubscribeRequest(
        clientinfo=ci, topic_filters=[pb.TopicFilter(name=sub_topic, subopts=subopts)], meta=meta(pb)), timeout=timeout))
    n.append(stub.OnSessionSubscribed(pb.SessionSubscribedRequest(clientinfo=ci, topic=sub_topic, subopts=subopts,
                                                                  meta=meta(pb)), timeout=timeout))
    for topic, payload in publishes:
        out.authorize_publish = stub.OnClientAuthorize(
            authz(clientinfo=ci, type=authz.PUBLISH, topic=topic, result=False, meta=meta(pb)), timeout=timeout)
        msg = message(pb, client_id, username, topic, payload)
        out.publish.append(stub.OnMessagePublish(pb.MessagePublishRequest(message=msg, meta=meta(pb)), timeout=timeout))
        n.append(stub.OnMessageDelivered(pb.MessageDeliveredRequest(clientinfo=ci, message=msg, meta=meta(pb)),
                                         timeout=timeout))
        n.append(stub.OnMessageAcked(pb.MessageAckedRequest(clientinfo=ci, message=msg, meta=meta(pb)), timeout=timeout))
    dropped = message(pb, client_id, username, "nobody/listens", b"x")
    n.append(stub.OnMessageDropped(pb.MessageDroppedRequest(message=dropped, reason="no_subscribers", meta=meta(pb)),
                                   timeout=timeout))
    n.append(stub.OnClientUnsubscribe(pb.ClientUnsubscribeRequest(
        clientinfo=ci, topic_filters=[pb.TopicFilter(name=sub_topic)], meta=meta(pb)), timeout=timeout))
    n.append(stub.OnSessionUnsubscribed(pb.SessionUnsubscribedRequest(clientinfo=ci, topic=sub_topic, meta=meta(pb)),
                                        timeout=timeout))
    n.append(stub.OnClientDisconnected(pb.ClientDisconnectedRequest(clientinfo=ci, reason="normal", meta=meta(pb)),
                                       timeout=timeout))
    n.append(stub.OnSessionTerminated(pb.SessionTerminatedRequest(clientinfo=ci, reason="normal", meta=meta(pb)),
                                      timeout=timeout))
    return out
