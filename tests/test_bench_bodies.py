"""The request bodies the router benches time are ones the API takes: a rule the API gained later (tools of one
name, a `tool_use` left unanswered) made `bench.overhead` stop at its own body with a 400, unnoticed until the
bench was next run. Each bench part that builds such a body runs here once, at one repetition."""

from __future__ import annotations

from bench.hotpath import _agent_body
from bench.overhead import responses_translation_cost, translation_cost, validation_cost
from council.server.requests import ChatRequest, validate_body


def test_the_benches_agent_bodies_are_valid_requests() -> None:
    assert set(validation_cost(1)) == {"one-line chat", "agent (20 turns, 4 tools)"}
    assert translation_cost(1)["messages_in_us"] > 0
    assert set(responses_translation_cost(1)) >= {"request, one-line", "request, agent (20 turns, 4 tools)"}
    validate_body({"model": "trio", **_agent_body()}, ChatRequest)
