"""How much a decision may put in a broker's reply: one bound on its containers together.

Each container field of a Decision has bounds of its own (a topic's length, a modifier's type, 1000 ACL
rules), but they do not compose with aliasing: `{"k%d" % i: t for i in range(1000)}` with one 60 KB `t`
costs the rule nothing and made an 80 MB VerneMQ reply, encoded on the event loop. modifiers.carried_problem
is the one check at the boundary (decision_problem), for every field that holds a container.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from hookrules.decisions import Allow, Decision, Rewrite
from hookrules.modifiers import CONTAINER_FIELDS, MAX_CARRIED_TEXT, carried_problem, decision_problem

from .broker_calls import vernemq
from .support import ServerProcess, wait_for
from .vernemq_examples import EXAMPLES

T = "a/" + "a" * 60_000  # one string, aliased

#: every container field, too big by aliasing, on a hook (and channel) that carries it
TOO_BIG: dict[str, tuple[str, str, Decision]] = {
    "modifiers": ("auth_on_register_m5", "", Allow(modifiers=MappingProxyType({"properties": MappingProxyType(
        {"p_user_property": MappingProxyType({f"k{i}": T for i in range(100)})})}))),
    "topics": ("on_unsubscribe", "", Rewrite(topics=(T,) * 100)),
    "tags": ("rabbitmq.user", "", Allow(tags=("administrator",) * 100_000)),
    "attrs": ("client.authenticate", "http", Allow(attrs=MappingProxyType({f"k{i}": T for i in range(100)}))),
    "acl": ("client.authenticate", "http", Allow(acl=(MappingProxyType(
        {"permission": "allow", "action": "all", "topics": (T,) * 10}),) * 10)),
}


def test_every_container_field_of_every_decision_is_counted() -> None:
    """Enumerated from the Decision classes: a field typed as a mapping or a tuple is a container."""
    found = {f.name for cls in (Allow, Rewrite) for f in dataclasses.fields(cls)
             if "Mapping" in str(f.type) or "tuple" in str(f.type)}
    assert found == set(CONTAINER_FIELDS) == set(TOO_BIG)


@pytest.mark.parametrize("field", sorted(TOO_BIG))
def test_an_aliased_container_past_the_bound_is_never_sent(field: str) -> None:
    hook, channel, decision = TOO_BIG[field]
    problem = decision_problem(hook, decision, channel)
    assert problem is not None and f"over {MAX_CARRIED_TEXT} characters" in problem, problem


def test_a_decision_within_the_bound_passes() -> None:
    assert carried_problem(Rewrite(topics=("a/" + "a" * 1000,) * 900)) is None
    assert carried_problem(Rewrite(topics=("a/" + "a" * 1000,) * 1100)) is not None


def test_a_cycle_ends_the_walk() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert carried_problem(Allow(modifiers=MappingProxyType({"x": loop}))) is not None


def test_a_webhook_reply_is_the_failure_policy_not_60_mb(tmp_path: Path) -> None:
    """The rule that answered each on_unsubscribe with 60 MB of topics: now a rule error, answered by
    the hook's failure policy (ignore: "next")."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "on_unsubscribe.star").write_text('t = "a/" + "a" * 60000\nrewrite(topics=[t] * 1000)\n')
    server = ServerProcess(rules, log_path=tmp_path / "server.log")
    try:
        assert vernemq(server, "on_unsubscribe", EXAMPLES["on_unsubscribe"]) == {"result": "next"}
        assert wait_for(lambda: "would fill over" in server.log()), server.log()[-2000:]
    finally:
        server.stop()
