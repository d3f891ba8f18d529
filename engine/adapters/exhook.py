"""EMQX ExHook front-end: the 21 HookProvider RPCs of emqx.exhook.v2 and v3 on one grpc.aio server.

Request -> Event, Engine.decide, Decision -> reply. Reply rules follow ../shared/reference/emqx-exhook.md:
authn/authz answer with bool_result, message.publish with the whole request message (never the other
way round, which EMQX treats as IGNORE), notifications with EmptySuccess. Every call answers OK, in time:
a failure is turned into the hook's failure-policy decision here, never into a gRPC error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from .. import metrics
from ..decisions import Decision
from ..engine import Engine
from ..events import EMPTY, Client, Conn, Event, Message, SubOpts, TopicFilter
from ..hooks import EMQX_HOOKS
from ..modifiers import decision_problem
from ..ratelimit import Every
from ..ruleset import RuleSet
from . import exhook_proto
from .admission import Admission
from .exhook_proto import ExhookProto

log = logging.getLogger(__name__)

BROKER = "emqx"
CHANNEL = "exhook"
#: Leave this share of EMQX's request_timeout (the gRPC deadline) for the reply to travel back,
#: within bounds: 0.5 s of the default 5 s, never less than 50 ms.
DEADLINE_MARGIN = (0.1, 0.05, 0.5)

RPC_HOOKS: dict[str, str] = {
    "OnClientConnect": "client.connect",
    "OnClientConnack": "client.connack",
    "OnClientConnected": "client.connected",
    "OnClientDisconnected": "client.disconnected",
    "OnClientAuthenticate": "client.authenticate",
    "OnClientAuthorize": "client.authorize",
    "OnClientSubscribe": "client.subscribe",
    "OnClientUnsubscribe": "client.unsubscribe",
    "OnSessionCreated": "session.created",
    "OnSessionSubscribed": "session.subscribed",
    "OnSessionUnsubscribed": "session.unsubscribed",
    "OnSessionResumed": "session.resumed",
    "OnSessionDiscarded": "session.discarded",
    "OnSessionTakenover": "session.takenover",
    "OnSessionTerminated": "session.terminated",
    "OnMessagePublish": "message.publish",
    "OnMessageDelivered": "message.delivered",
    "OnMessageDropped": "message.dropped",
    "OnMessageAcked": "message.acked",
}

# -- request -> Event ---------------------------------------------------------------------------


# Built on every call, so written for speed: positional arguments, protobuf's containers read once
# (a map's `get` costs 150 ns, and `dict(map)` twice what a comprehension does), empty ones skipped.


def _client(ci: Any) -> Client:
    return Client(ci.clientid, ci.username, ci.password, ci.peerhost, ci.peerport, ci.sockport, ci.protocol,
                  ci.mountpoint, ci.is_superuser, ci.anonymous, ci.cn, ci.dn, ci.node)


def _conn(ci: Any) -> Conn:
    return Conn(ci.clientid, ci.username, ci.peerhost, ci.peerport, ci.sockport, ci.proto_name, ci.proto_ver,
                ci.keepalive, ci.node)


def _props(props: Any) -> Any:
    """MQTT properties (v3's repeated Property): a read-only map; a repeated name keeps its last value."""
    if not len(props):
        return EMPTY
    return MappingProxyType({p.name: p.value for p in props})


def _headers(m: Any) -> Any:
    headers = m.headers
    if not len(headers):
        return EMPTY
    return MappingProxyType({k: headers[k] for k in headers})


def _message(m: Any, headers: Any, props: Any = (), user_props: Any = ()) -> Message:
    return Message(m.id, getattr(m, "from"), m.topic, m.payload, m.qos, False, m.timestamp, headers,
                   _props(props), _props(user_props), m.node)


def _sender(m: Any, headers: Any) -> Client:
    """The publisher, as far as a message tells: EMQX sends no clientinfo with publish and dropped."""
    get = headers.get
    return Client(getattr(m, "from"), get("username", ""), "", get("peerhost", ""), 0, 0, get("protocol", ""), "",
                  False, False, "", "", m.node)


def _filters(tfs: Iterable[Any]) -> tuple[TopicFilter, ...]:
    return tuple(TopicFilter(t.name, t.subopts.qos, t.subopts.rh, t.subopts.rap, t.subopts.nl) for t in tfs)


def _conn_event(hook: str, r: Any, **extra: Any) -> Event:
    conn = _conn(r.conninfo)
    client = Client(id=conn.id, username=conn.username, peerhost=conn.peerhost, peerport=conn.peerport,
                    sockport=conn.sockport, protocol=conn.proto_name, node=conn.node)
    data = {"conn": conn, "properties": _props(r.props), "user_properties": _props(getattr(r, "user_props", ())), **extra}
    return Event(hook, BROKER, client, MappingProxyType(data), CHANNEL)


def _client_event(hook: str, r: Any, **data: Any) -> Event:
    return Event(hook, BROKER, _client(r.clientinfo), MappingProxyType(data), CHANNEL)


def _publish_event(hook: str, r: Any) -> Event:
    """message.publish: v3 carries the PUBLISH properties beside the message; v2 has none."""
    m = r.message
    headers = _headers(m)
    message = _message(m, headers, getattr(r, "props", ()), getattr(r, "user_props", ()))
    return Event(hook, BROKER, _sender(m, headers), MappingProxyType({"message": message}), CHANNEL)


def _dropped_event(hook: str, r: Any) -> Event:
    m = r.message
    headers = _headers(m)
    return Event(hook, BROKER, _sender(m, headers), MappingProxyType({"message": _message(m, headers),
                                                                     "reason": r.reason}), CHANNEL)


_AUTHZ_ACTIONS = {0: "publish", 1: "subscribe"}

EVENT_BUILDERS: dict[str, Callable[[str, Any], Event]] = {
    "client.connect": lambda h, r: _conn_event(h, r),
    "client.connack": lambda h, r: _conn_event(h, r, result_code=r.result_code),
    "client.connected": lambda h, r: _client_event(h, r),
    "client.disconnected": lambda h, r: _client_event(h, r, reason=r.reason),
    # `request` is what EMQX's HTTP authenticator/authorizer sent (adapters/emqx_http.py): nothing here
    "client.authenticate": lambda h, r: _client_event(h, r, result=r.result, request=EMPTY),
    # EMQX sends no qos with an authorization: None, as authorize.star reads it
    "client.authorize": lambda h, r: _client_event(h, r, action=_AUTHZ_ACTIONS.get(r.type, "publish"),
                                                   topic=r.topic, qos=None, result=r.result, request=EMPTY),
    "client.subscribe": lambda h, r: _client_event(h, r, topic_filters=_filters(r.topic_filters),
                                                   properties=_props(r.props),
                                                   user_properties=_props(getattr(r, "user_props", ()))),
    "client.unsubscribe": lambda h, r: _client_event(h, r, topic_filters=_filters(r.topic_filters),
                                                     properties=_props(r.props),
                                                     user_properties=_props(getattr(r, "user_props", ()))),
    "session.created": lambda h, r: _client_event(h, r),
    "session.subscribed": lambda h, r: _client_event(h, r, topic=r.topic, subopts=SubOpts(
        r.subopts.qos, r.subopts.rh, r.subopts.rap, r.subopts.nl)),
    "session.unsubscribed": lambda h, r: _client_event(h, r, topic=r.topic),
    "session.resumed": lambda h, r: _client_event(h, r),
    "session.discarded": lambda h, r: _client_event(h, r),
    "session.takenover": lambda h, r: _client_event(h, r),
    "session.terminated": lambda h, r: _client_event(h, r, reason=r.reason),
    "message.publish": _publish_event,
    "message.delivered": lambda h, r: _client_event(h, r, message=_message(r.message, _headers(r.message))),
    "message.acked": lambda h, r: _client_event(h, r, message=_message(r.message, _headers(r.message))),
    "message.dropped": _dropped_event,
}


# -- Decision -> reply --------------------------------------------------------------------------


class _Replies:
    """Reply builders for one proto version: each returns the serialized reply, so that encoding happens
    inside the handler's error handling (a value protobuf refuses is answered by the failure policy,
    never a gRPC error), and the constant replies are serialized once."""

    def __init__(self, proto: ExhookProto):
        vr = proto.ValuedResponse
        self.empty: bytes = proto.EmptySuccess().SerializeToString()
        self.ignore: bytes = vr(type=vr.IGNORE).SerializeToString()
        self.allow: bytes = vr(type=vr.STOP_AND_RETURN, bool_result=True).SerializeToString()
        self.deny: bytes = vr(type=vr.STOP_AND_RETURN, bool_result=False).SerializeToString()
        #: a STOP_AND_RETURN reply up to its message's length: the message (an empty one's length is the
        #: last byte, 0) is written after it, as protobuf writes a ValuedResponse with a message
        self.with_message: bytes = vr(type=vr.STOP_AND_RETURN, message=proto.Message()).SerializeToString()[:-1]
        sample = proto.Message(topic="t", payload=b"p" * 200)  # a length of two varint bytes
        written = sample.SerializeToString()
        if self.with_message + _varint(len(written)) + written != vr(type=vr.STOP_AND_RETURN,
                                                                      message=sample).SerializeToString():
            raise RuntimeError(f"exhook {proto.version}: protobuf writes a ValuedResponse otherwise than publish() does")

    def notify(self, request: Any, decision: Decision) -> bytes:
        return self.empty

    def boolean(self, request: Any, decision: Decision) -> bytes:
        kind = decision.kind
        if kind == "allow":
            return self.allow
        if kind in ("deny", "drop"):
            return self.deny
        return self.ignore

    def publish(self, request: Any, decision: Decision) -> bytes:
        """EMQX reads back topic, payload and qos (and the allow_publish header): echo the whole message.

        The request's own message is changed and serialized (this call's, decoded for it alone and read
        by nothing after its reply: the event holds copies): a copy into a new reply costs 1.5 us more.
        Every value is checked before the first change, so a failure cannot leave it half changed for
        the failure policy's reply."""
        kind = decision.kind
        if kind == "ignore":
            return self.ignore
        msg = request.message
        if kind == "rewrite":
            if (problem := decision_problem("message.publish", decision)) is not None:
                raise ValueError(problem)  # checked when made; again here, where it is sent
            if decision.topic is not None:  # type: ignore[union-attr]
                msg.topic = decision.topic  # type: ignore[union-attr]
            if decision.payload is not None:  # type: ignore[union-attr]
                msg.payload = decision.payload  # type: ignore[union-attr]
            if decision.qos is not None:  # type: ignore[union-attr]
                msg.qos = decision.qos  # type: ignore[union-attr]
        elif kind in ("deny", "drop"):
            msg.headers["allow_publish"] = "false"
        body: bytes = msg.SerializeToString()
        return self.with_message + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    """A length as protobuf writes it (base 128, least significant group first)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _reply_kind(hook: str) -> str:
    if hook == "message.publish":
        return "publish"
    if hook in ("client.authenticate", "client.authorize"):
        return "boolean"
    return "notify"


# -- the servicer -------------------------------------------------------------------------------


def _margin(remaining: float) -> float:
    share, low, high = DEADLINE_MARGIN
    return min(max(remaining * share, low), high)


#: Undecodable requests are logged at most this often (each is counted).
BAD_REQUEST_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler can refuse it clearly."""

    error: str


def _decoder(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:  # grpc would answer UNKNOWN with a Python traceback text
            return Undecodable(str(exc))

    return decode



def _as_emqx_sees(topics: tuple[str, ...]) -> tuple[str, ...]:
    """A rule's TOPICS as EMQX reads a HookSpec's: a set of filters (order and repeats mean nothing:
    sent in the rule's order, each once, and compared as sets by rules_changed), and none at all
    (every message) when one cannot be encoded (see _hook_spec): `["a/#", "a/#"]` after `["a/#"]` is
    no change to warn about."""
    try:
        for topic in topics:
            topic.encode("utf-8")
    except UnicodeEncodeError:
        return ()
    return tuple(dict.fromkeys(topics))


class ExhookAdapter:
    """Serves HookProvider for every proto version given, all answered by one engine."""

    def __init__(self, engine: Engine, versions: Iterable[str] = ("v2", "v3"), max_concurrent: int = 1000):
        self.engine = engine
        self.admission = Admission(max_concurrent)
        self.protos = [exhook_proto.load(v) for v in versions]
        #: the hook spec EMQX last loaded, to tell operators when the rules no longer match it
        self.advertised: dict[str, tuple[str, ...]] | None = None
        #: the hook list last warned about, so a reload that leaves it as it was says nothing again
        self._reported: dict[str, frozenset[str]] | None = None
        self._refusal_log = Every(BAD_REQUEST_LOG_INTERVAL)
        self._shed_log = Every(BAD_REQUEST_LOG_INTERVAL)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        """Every proto version's service as a generic handler. (grpc's registered methods, matched by
        grpc-core instead of in Python, measured slower under h2load on grpcio 1.85: 205 against 197 us
        an authorize, 231 against 214 a publish.)"""
        return [grpc.method_handlers_generic_handler(proto.service_name, self.method_handlers(proto))
                for proto in self.protos]

    def unknown_methods_handler(self) -> grpc.GenericRpcHandler:
        """Register it last: every method no other handler serves gets UNIMPLEMENTED, as from grpc
        itself, but counted (unknown_method) and logged, so a broker on another protocol is seen."""
        adapter = self

        class UnknownMethods(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                method = str(details.method)[:200]

                async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    metrics.BAD_REQUESTS.labels(BROKER, "unknown_method").inc()
                    if adapter._refusal_log.due():
                        log.warning("refused a call to unknown gRPC method %r (UNIMPLEMENTED); more within %.0f s "
                                    "are only counted", method, BAD_REQUEST_LOG_INTERVAL)
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")

                return grpc.unary_unary_rpc_method_handler(refuse)

        return UnknownMethods()

    def method_handlers(self, proto: ExhookProto) -> dict[str, grpc.RpcMethodHandler]:
        """{RPC name: handler} of one proto version's service."""
        replies = _Replies(proto)
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for rpc, (req_name, resp_name) in proto.methods.items():
            serializer = proto.messages[resp_name].SerializeToString
            if rpc == "OnProviderLoaded":
                fn = self._loaded_handler(proto)
            elif rpc == "OnProviderUnloaded":
                fn = self._unloaded_handler(proto, replies)
                serializer = None  # it returns replies.empty, already serialized
            else:
                hook = RPC_HOOKS[rpc]
                fn = self._hook_handler(hook, getattr(replies, _reply_kind(hook)), replies)
                serializer = None  # the handler returns the reply's bytes (see _Replies)
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=_decoder(proto.messages[req_name]), response_serializer=serializer)
        return handlers

    def _hook_handler(self, hook: str, reply: Callable[[Any, Decision], bytes], replies: _Replies) -> Callable[..., Any]:
        build = EVENT_BUILDERS[hook]
        engine = self.engine
        admission = self.admission
        timer = metrics.REQUEST_SECONDS.labels(BROKER, hook)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request.__class__ is Undecodable:
                return await self.refuse(request, hook, context)
            started = time.perf_counter()
            if not engine.needs_event(hook):  # no rule: answered at once, nothing to queue for
                admission.last_activity = started  # a draining server waits for these to stop too
                try:
                    return reply(request, engine.skip(BROKER, hook).decision)
                except Exception:  # a bug of ours must still give EMQX an answer it understands
                    return self._fallback(hook, request, reply, replies)
                finally:
                    timer.observe(time.perf_counter() - started)
            if not admission.enter():
                return await self.shed(hook, context)
            try:
                # no yield here, unlike the webhooks: grpc.aio takes calls from grpc-core one per loop
                # turn, so a yield would not show the backlog, only cost every call a loop turn
                remaining = context.time_remaining()
                timeout = None if remaining is None else max(remaining - _margin(remaining), 0.001)
                outcome = engine.decide(build(hook, request), timeout)
                return reply(request, outcome.decision)
            except Exception:  # a bug of ours must still give EMQX an answer it understands
                return self._fallback(hook, request, reply, replies)
            finally:
                admission.leave()
                timer.observe(time.perf_counter() - started)

        return handle

    def _fallback(self, hook: str, request: Any, reply: Callable[[Any, Decision], bytes], replies: _Replies) -> bytes:
        """The answer to a bug of ours (call it from an except block): logged, counted and decided by the
        failure policy, and if even building that reply fails, the reply that means 'no opinion'."""
        try:
            return reply(request, self.engine.internal_error(BROKER, hook))
        except Exception:
            return replies.empty if reply == replies.notify else replies.ignore  # == : bound methods

    async def shed(self, hook: str, context: grpc.aio.ServicerContext) -> Any:
        """Past max_concurrent_calls: RESOURCE_EXHAUSTED at once, so EMQX applies its failed_action
        instead of waiting out its request_timeout. Counted, and logged at most every 10 s."""
        metrics.BAD_REQUESTS.labels(BROKER, "overloaded").inc()
        if self._shed_log.due():
            log.warning("overloaded: %d calls waiting or running, refused a %s call with RESOURCE_EXHAUSTED "
                        "(--max-concurrent-calls); more within %.0f s are only counted", self.admission.in_flight,
                        hook, BAD_REQUEST_LOG_INTERVAL)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"overloaded: {self.admission.in_flight} calls waiting or running")

    async def refuse(self, request: Undecodable, what: str, context: grpc.aio.ServicerContext) -> Any:
        """A request that is not the protobuf it claims to be: INVALID_ARGUMENT, counted, logged."""
        metrics.BAD_REQUESTS.labels(BROKER, "undecodable").inc()
        if self._refusal_log.due():
            log.warning("refused an undecodable %s request (%s); more within %.0f s are only counted "
                        "in hookrules_bad_requests_total", what, request.error, BAD_REQUEST_LOG_INTERVAL)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode the {what} request: {request.error}")

    def hook_specs(self, ruleset: RuleSet) -> dict[str, tuple[str, ...]]:
        """The EMQX hooks that have a rule file (their own, or authenticate.star and authorize.star for
        the two they answer), in EMQX's order, with their TOPICS.

        A file that has never loaded is listed too (without topics): EMQX then calls it and it answers
        by its failure policy, and fixing the file needs no provider reload.
        """
        specs: dict[str, tuple[str, ...]] = {}
        for info in EMQX_HOOKS:
            source, rule = ruleset.answer(info.name)  # its own file, or the portable one that answers it
            if rule is not None:
                specs[info.name] = _as_emqx_sees(rule.topics)
            elif source is not None:
                specs[info.name] = ()
        return specs

    def _loaded_handler(self, proto: ExhookProto) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request.__class__ is Undecodable:
                return await self.refuse(request, "OnProviderLoaded", context)
            specs = self.hook_specs(self.engine.ruleset)
            self.advertised = specs
            self._reported = None
            log.info("EMQX %s (node %s, cluster %s) loaded hookrules over exhook %s: %s",
                     request.broker.version or "?", request.meta.node or "?", request.meta.cluster_name or "-",
                     proto.version, ", ".join(specs) or "no hooks (no rule files)")
            return proto.LoadedResponse(hooks=[self._hook_spec(proto, n, t) for n, t in specs.items()])

        return handle

    def _hook_spec(self, proto: ExhookProto, hook: str, topics: tuple[str, ...]) -> Any:
        """One HookSpec; TOPICS that protobuf cannot carry (a lone surrogate) are left out, so EMQX sends
        that hook every message and the rule's own TOPICS filter (CompiledRule.wants) still applies."""
        try:
            return proto.HookSpec(name=hook, topics=topics)
        except (ValueError, TypeError) as exc:
            log.error("%s: its TOPICS cannot be sent to EMQX (%s); EMQX will call it for every message and "
                      "hookrules filters them", hook, exc)
            return proto.HookSpec(name=hook)

    def _unloaded_handler(self, proto: ExhookProto, replies: _Replies) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request.__class__ is Undecodable:
                return await self.refuse(request, "OnProviderUnloaded", context)
            log.info("EMQX node %s unloaded hookrules (exhook %s)", request.meta.node or "?", proto.version)
            return replies.empty

        return handle

    def rules_changed(self, ruleset: RuleSet) -> None:
        """Tell the operator when EMQX's copy of the hook list is stale: it re-asks only on (re)load."""
        if self.advertised is None:
            return
        specs = {hook: frozenset(topics) for hook, topics in self.hook_specs(ruleset).items()}
        advertised = {hook: frozenset(topics) for hook, topics in self.advertised.items()}
        if specs == self._reported or (specs == advertised and self._reported is None):
            return  # no change since the last word about it
        if specs == advertised:
            self._reported = None
            log.info("EMQX hook list matches again the one EMQX loaded: no provider reload needed")
            return
        self._reported = specs
        added = [h for h in specs if h not in advertised]
        removed = [h for h in advertised if h not in specs]
        retopic = [h for h in specs if h in advertised and specs[h] != advertised[h]]
        parts = [f"{label}: {', '.join(hooks)}" for label, hooks in
                 (("added", added), ("removed", removed), ("topics changed", retopic)) if hooks]
        log.warning("EMQX hook list changed (%s). EMQX asks for the list only when it loads the provider: until "
                    "then it does not call added hooks, and removed hooks answer ignore(). Reload it by disabling and "
                    "enabling the ExHook server (dashboard, or PUT /api/v5/exhooks/<name>).", "; ".join(parts))
