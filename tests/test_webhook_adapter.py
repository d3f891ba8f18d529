"""The webhook adapter on its real server (adapters/httpwire.py) and a real HTTP client, with an engine made to fail (the
one fault no request can provoke) or one noting the budget of each run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from hookrules.adapters.webhooks import WebhookAdapter
from hookrules.engine import Engine, Outcome
from hookrules.events import Event
from hookrules.ruleset import Limits, RuleSet, scan
from prometheus_client import REGISTRY

from . import vernemq_examples as spec
from .wire_harness import start_wire


def _internal_errors() -> float:
    return REGISTRY.get_sample_value("hookrules_bad_requests_total", {"broker": "vernemq", "reason": "internal_error"}) or 0.0


class FailingEngine(Engine):
    def decide(self, event: Event, timeout: float | None = None) -> Outcome:
        raise RuntimeError("a bug in hookrules")


async def _post(adapter: WebhookAdapter, hook: str, body: dict[str, Any]) -> tuple[int, Any]:
    server, port = await start_wire(adapter)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(f"http://127.0.0.1:{port}/", json=body, headers={"vernemq-hook": hook}) as resp:
                return resp.status, json.loads(await resp.read())
    finally:
        await server.stop(1.0)


def test_an_internal_error_is_answered_200_by_the_failure_policy_and_counted(tmp_path: Path) -> None:
    (tmp_path / "auth_on_register.star").write_text("allow()\n")
    (tmp_path / "on_register.star").write_text("log('seen')\n")
    ruleset, _ = scan(tmp_path, RuleSet())
    adapter = WebhookAdapter(FailingEngine(ruleset))
    before = _internal_errors()
    # auth_on_register fails closed by default (deny); a notification hook still gets its {}
    assert asyncio.run(_post(adapter, "auth_on_register", spec.EXAMPLES["auth_on_register"])) == \
        (200, {"result": {"error": "rule error"}})
    assert asyncio.run(_post(adapter, "on_register", spec.EXAMPLES["on_register"])) == (200, {})
    assert _internal_errors() == before + 2
    configured = WebhookAdapter(FailingEngine(ruleset, policies={"auth_on_register": "ignore"}))
    assert asyncio.run(_post(configured, "auth_on_register", spec.EXAMPLES["auth_on_register"])) == \
        (200, {"result": "next"})


class RecordingEngine(Engine):
    """The real engine, noting the time budget each run is given."""

    given: list[float | None]

    def decide(self, event: Event, timeout: float | None = None, check: Any = None) -> Outcome:
        self.given.append(timeout)
        return super().decide(event, timeout, check)


def test_a_subscription_of_many_topics_shares_one_runs_budget(tmp_path: Path) -> None:
    """auth_on_subscribe runs the rule once per topic; with the whole budget each, 80 topics on a slow
    rule kept VerneMQ waiting 8 s, and once the shared budget was spent every remaining topic still ran
    for MIN_SHARE (40,000 topics held the loop for 41 s). Result: the first run here uses the budget up,
    and the other 79 topics are answered by the policy (deny: refused with 128) without running."""
    (tmp_path / "auth_on_subscribe.star").write_text("for i in range(1000):\n    for j in range(1000):\n        x = j\nallow()\n")
    ruleset, _ = scan(tmp_path, RuleSet())
    engine = RecordingEngine(ruleset, limits=Limits(max_steps=10**7, timeout=0.05))
    engine.given = []
    body = dict(spec.EXAMPLES["auth_on_subscribe"], topics=[{"topic": f"t/{i}", "qos": 1} for i in range(80)])
    status, reply = asyncio.run(_post(WebhookAdapter(engine), "auth_on_subscribe", body))
    assert status == 200 and reply == {"result": "ok", "topics": [{"topic": f"t/{i}", "qos": 128} for i in range(80)]}
    assert len(engine.given) == 1 and engine.given[0] is not None and engine.given[0] <= 0.05, engine.given
