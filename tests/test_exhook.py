"""The EMQX side, end to end: a real server on the bundled rules, driven by protoc-generated v2 and v3 clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .emqx_session import client_info, message, meta, run_session
from .support import ServerProcess, Stubs

VERSIONS = ["v2", "v3"]


def _stub(server: ServerProcess, stubs: dict[str, Stubs], version: str) -> tuple[Stubs, Any, Any]:
    channel = server.channel()
    return stubs[version], stubs[version].stub(channel), channel


@pytest.mark.parametrize("version", VERSIONS)
def test_provider_loaded_lists_exactly_the_hooks_with_rule_files(bundled_server: ServerProcess,
                                                                 stubs: dict[str, Stubs], version: str) -> None:
    s, stub, channel = _stub(bundled_server, stubs, version)
    with channel:
        pb = s.pb2
        reply = stub.OnProviderLoaded(pb.ProviderLoadedRequest(
            broker=pb.BrokerInfo(version="5.9.0", sysdescr="EMQX"), meta=meta(pb)), timeout=10)
    specs = {h.name: list(h.topics) for h in reply.hooks}
    assert specs == {"client.authenticate": [], "client.authorize": [], "message.publish": ["t/#", "sensors/#"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_whole_sessions_of_several_clients_at_once(bundled_server: ServerProcess, stubs: dict[str, Stubs],
                                                   version: str) -> None:
    """Eight clients run connect ... disconnect concurrently on one channel, as EMQX's pool does.

    Result: each gets the bundled rules' answers, with the reply shapes EMQX reads.
    """
    s, stub, channel = _stub(bundled_server, stubs, version)
    vr = s.pb2.ValuedResponse
    publishes = [("t/demo", b"original"), ("sensors/1", b""), ("sensors/2", b"21.5"), ("elsewhere/x", b"y")]
    users = [(f"dev-{i}", "baduser" if i % 4 == 0 else f"user{i}") for i in range(8)]
    with channel, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda u: run_session(s, stub, u[0], u[1], publishes), users))
    for (client_id, username), r in zip(users, results):
        assert r.authenticate.type == vr.STOP_AND_RETURN
        assert r.authenticate.WhichOneof("value") == "bool_result"
        assert r.authenticate.bool_result is (username != "baduser")
        assert (r.authorize_subscribe.type, r.authorize_subscribe.bool_result) == (vr.STOP_AND_RETURN, True)
        rewritten, dropped, passed, ignored = r.publish
        # rewrite: the whole message comes back, only the payload changed
        assert rewritten.type == vr.STOP_AND_RETURN and rewritten.WhichOneof("value") == "message"
        assert rewritten.message.payload == b"hardcode payload by hookrules :)"
        assert (rewritten.message.topic, rewritten.message.qos) == ("t/demo", 1)
        assert getattr(rewritten.message, "from") == client_id
        assert rewritten.message.headers["username"] == username
        assert "allow_publish" not in rewritten.message.headers
        # drop: same message, allow_publish=false
        assert dropped.type == vr.STOP_AND_RETURN
        assert dropped.message.headers["allow_publish"] == "false"
        assert (dropped.message.topic, dropped.message.payload, dropped.message.qos) == ("sensors/1", b"", 1)
        # allow: unchanged message
        assert (passed.type, passed.message.payload, passed.message.topic) == (vr.STOP_AND_RETURN, b"21.5", "sensors/2")
        assert "allow_publish" not in passed.message.headers
        # outside TOPICS: ignore, with no value
        assert ignored.type == vr.IGNORE and ignored.WhichOneof("value") is None
        assert len(r.notifications) == 6 + 2 * len(publishes) + 5
        assert all(type(n).__name__ == "EmptySuccess" for n in r.notifications)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("client_id", "topic", "allowed"), [
    ("dev-1", "devices/dev-1/temp", True),
    ("dev-1", "devices/dev-2/temp", False),
    ("dev-1", "$SYS/brokers", False),
    ("dev-1", "anything/else", True),
])
def test_authorize_publish(bundled_server: ServerProcess, stubs: dict[str, Stubs], version: str,
                           client_id: str, topic: str, allowed: bool) -> None:
    s, stub, channel = _stub(bundled_server, stubs, version)
    pb = s.pb2
    with channel:
        reply = stub.OnClientAuthorize(pb.ClientAuthorizeRequest(
            clientinfo=client_info(pb, client_id, "u"), type=pb.ClientAuthorizeRequest.PUBLISH, topic=topic,
            meta=meta(pb)), timeout=10)
    assert reply.type == pb.ValuedResponse.STOP_AND_RETURN
    assert reply.bool_result is allowed


def test_v3_publish_properties_reach_the_rule(start_server: Any, stubs: dict[str, Stubs], tmp_path: Any) -> None:
    rules = tmp_path / "props"
    rules.mkdir()
    (rules / "message.publish.star").write_text(
        'if message.user_properties.get("tenant") == "blocked":\n'
        '    drop("tenant blocked")\n'
        'rewrite(qos=0, topic="out/" + message.properties.get("Content-Type", "none"))\n')
    server = start_server(rules)
    s = stubs["v3"]
    pb = s.pb2
    with server.channel() as channel:
        stub = s.stub(channel)
        msg = message(pb, "c1", "u", "in/x", b"p", qos=2)
        blocked = stub.OnMessagePublish(pb.MessagePublishRequest(
            message=msg, meta=meta(pb), user_props=[pb.Property(name="tenant", value="blocked")]), timeout=10)
        moved = stub.OnMessagePublish(pb.MessagePublishRequest(
            message=msg, meta=meta(pb), props=[pb.Property(name="Content-Type", value="json")]), timeout=10)
    assert blocked.message.headers["allow_publish"] == "false"
    assert (moved.message.topic, moved.message.qos, moved.message.payload) == ("out/json", 0, b"p")


def test_undecodable_request_is_refused_and_the_server_keeps_answering(bundled_server: ServerProcess,
                                                                       stubs: dict[str, Stubs]) -> None:
    import grpc

    s = stubs["v3"]
    pb = s.pb2
    with bundled_server.channel() as channel:
        raw = channel.unary_unary("/emqx.exhook.v3.HookProvider/OnClientAuthenticate",
                                  request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff not a protobuf", timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot decode the client.authenticate request" in (info.value.details() or "")
        reply = s.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "gooduser"), meta=meta(pb)), timeout=10)
    assert (reply.type, reply.bool_result) == (pb.ValuedResponse.STOP_AND_RETURN, True)
    assert "refused an undecodable client.authenticate request" in bundled_server.log()
    assert 'hookrules_bad_requests_total{broker="emqx",reason="undecodable"} 1.0' in bundled_server.metrics_text()


def test_an_unknown_method_is_unimplemented_and_counted(start_server: Any, stubs: dict[str, Stubs],
                                                        tmp_path: Any) -> None:
    """A broker speaking another protocol (or a newer exhook version): UNIMPLEMENTED as grpc itself says
    it, but counted and logged; the hooks and the health service still answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    (tmp_path / "client.authenticate.star").write_text("allow()\n")
    server: ServerProcess = start_server(tmp_path)
    s = stubs["v3"]
    pb = s.pb2
    with server.channel() as channel:
        for method in ("/emqx.exhook.v9.HookProvider/OnClientAuthenticate", "/no.such.Service/Call"):
            raw = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as info:
                raw(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        reply = s.stub(channel).OnClientAuthenticate(pb.ClientAuthenticateRequest(
            clientinfo=client_info(pb, "c", "u"), meta=meta(pb)), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (reply.type, reply.bool_result) == (pb.ValuedResponse.STOP_AND_RETURN, True)
    assert 'hookrules_bad_requests_total{broker="emqx",reason="unknown_method"} 2.0' in server.metrics_text()
    assert "refused a call to unknown gRPC method '/emqx.exhook.v9.HookProvider/OnClientAuthenticate'" in server.log()
