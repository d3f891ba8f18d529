"""Where hookrules' own CPU goes in one broker call, stage by stage, in process (no network, no gRPC).

    python bench/call_stages.py            # ExHook (v3) and VerneMQ calls of the benchmarks' mixes

For each call the benchmarks send (bench/loadgen.py's EMQX session, bench/webhooks_loadgen.py's VerneMQ
mix), against the bundled rules/: the request as the adapter receives it (decoded protobuf, or the JSON
body's bytes), then, in process CPU time (time.process_time, best of 5 repeats):

* ExHook: build (request -> Event), run (the rule alone), decide (Engine.decide: lookup, run, checks,
  counters), reply (Decision -> reply bytes), and the whole handler (grpc.aio's handler coroutine, driven
  without a loop, with a context that says 4.9 s remain);
* VerneMQ: json (the body decoded), events (body -> Events), decide (every Event of the call), and the
  whole answer (WebhookAdapter.answer on an httpwire Request).

These are the figures a change to the adapters, the engine or the interpreter moves; what a call costs a
server under load is larger (cache misses under grpc-core and the loop: about 2.5x for the handler, more for
the process tree at saturation), and that is what peers_bench.py measures.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hookrules.adapters import exhook_proto
from hookrules.adapters.exhook import EVENT_BUILDERS, RPC_HOOKS, ExhookAdapter, _Replies
from hookrules.adapters.httpwire import Request
from hookrules.adapters.jsonwire import decode
from hookrules.adapters.vernemq import iter_events
from hookrules.adapters.webhooks import WebhookAdapter
from hookrules.engine import Engine
from hookrules.ruleset import Limits, RuleSet, scan
from loadgen import session_calls
from webhooks_loadgen import MIXES

RULES = Path(__file__).resolve().parent.parent / "rules"
TIMEOUT = 4.9


def per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.Timer(fn, timer=time.process_time).repeat(5, number)) / number * 1e6


class _Context:
    """What the ExHook handler asks of grpc.aio's context on the usual path."""

    def time_remaining(self) -> float:
        return TIMEOUT


def _drive(coro: Any) -> Any:
    """A handler coroutine that never awaits on the usual path, run to its end without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the handler awaited: not the usual path")


def exhook_rows(engine: Engine, number: int) -> list[str]:
    proto = exhook_proto.load("v3")
    adapter = ExhookAdapter(engine, versions=("v3",))
    handlers = adapter.method_handlers(adapter.protos[0])
    replies = _Replies(proto)
    limits = Limits()
    context = _Context()
    rows = []
    seen = set()
    for call in session_calls(proto, "bench-0001", "user1"):
        hook = RPC_HOOKS.get(call.rpc)
        if hook not in ("client.authenticate", "client.authorize", "message.publish"):
            continue
        request = call.request
        topic = request.message.topic if hook == "message.publish" else getattr(request, "topic", "")
        if (hook, topic) in seen:
            continue
        seen.add((hook, topic))
        build = EVENT_BUILDERS[hook]
        event = build(hook, request)
        rule = engine.ruleset.answer(hook)[1]
        if rule is None:
            raise RuntimeError(f"no bundled rule answers {hook}")
        decision = engine.decide(event, TIMEOUT).decision
        reply = replies.publish if hook == "message.publish" else replies.boolean
        method = handlers[call.rpc]
        data = request.SerializeToString()
        handler, deserialize = method.unary_unary, method.request_deserializer
        rows.append(f"| ExHook {hook} {topic} | {decision.kind} | build {per_call_us(lambda: build(hook, request), number):.2f}"
                    f" | run {per_call_us(lambda: rule.run(event, limits), number):.2f}"
                    f" | decide {per_call_us(lambda: engine.decide(event, TIMEOUT), number):.2f}"
                    f" | reply {per_call_us(lambda: reply(deserialize(data), decision), number):.2f}"
                    f" (decode {per_call_us(lambda: deserialize(data), number):.2f})"
                    f" | handler {per_call_us(lambda: _drive(handler(deserialize(data), context)), number):.2f} |")
    return rows


def vernemq_rows(engine: Engine, number: int) -> list[str]:
    adapter = WebhookAdapter(engine)
    route = adapter.router()
    rows = []
    for sent in MIXES["vernemq"].requests:
        headers = {k.lower(): v for k, v in sent.headers.items()}
        hook = headers["vernemq-hook"]
        body = decode(sent.body)
        events = list(iter_events(hook, body, True))
        request = Request("POST", "/", "", headers, "1.1", True, sent.body)
        answer = route(request).answer
        rows.append(f"| VerneMQ {sent.label} | {len(events)} event(s) | json {per_call_us(lambda: decode(sent.body), number):.2f}"
                    f" | events {per_call_us(lambda: list(iter_events(hook, body, True)), number):.2f}"
                    f" | decide {per_call_us(lambda: [engine.decide(e) for e in events], number):.2f}"
                    f" | | answer {per_call_us(lambda: answer(request), number):.2f} |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20000, help="calls per repeat (default 20000)")
    args = parser.parse_args(argv)
    ruleset, outcomes = scan(RULES, RuleSet())
    failed = [e.one_line() for o in outcomes for e in o.errors]
    if failed:
        print("the bundled rules do not load: " + "; ".join(failed), file=sys.stderr)
        return 1
    engine = Engine(ruleset)
    print(f"hookrules' own CPU per call, µs (process time, best of 5 x {args.number}), bundled rules/")
    print("| call | decision | stages | | | | whole |")
    print("|---|---|---|---|---|---|---|")
    for row in exhook_rows(engine, args.number) + vernemq_rows(engine, args.number):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
