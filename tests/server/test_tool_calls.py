"""Tool calls through a real `council serve` whose seats are real Qwen2.5-Coder-0.5B llama-servers, called with the
openai SDK: the model writes its call as JSON in its content (llama-server's parser leaves it there), the council
recovers it, votes on it and returns it as a tool call the SDK parses; with recovery off it answers with text."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from council.setup.catalog import by_name
from tests.policies import policy_yaml
from tests.servers import CouncilServer, RunningServer

QWEN05 = by_name("qwen2.5-coder-0.5b")
assert QWEN05
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def agents(serve: Callable[..., CouncilServer]) -> CouncilServer:
    seats = {"members": [{"model": "qwen", "samples": 2, "sampling": {"temperature": 0, "max_tokens": 60}}],
             "timeout": "240s"}
    return serve(policy_yaml({"qwen": {"path": QWEN05.path, "ctx_size": 1024, "recover_tool_calls": True}},
                             {"agents": seats, "literal": {**seats, "vote": {"recover_tool_calls": False}},
                              "sure": {**seats, "vote": {"strategy": "confidence"}},
                              "cascade": {**seats, "vote": {"cascade": {"first": 1}}}},
                             memory="8GiB", slot="1GiB"))


def test_a_council_of_small_models_returns_the_call_they_wrote_as_text(agents: CouncilServer) -> None:
    client = openai.OpenAI(base_url=f"{agents.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="agents", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1 and choice.message.content is None
    assert calls[0].type == "function" and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    council = reply.model_extra["council"]
    for seat in council["members"]:  # neither seat's server made it a tool call: the council read it
        assert seat["recovered"] is True and seat["calls"][0]["verdict"] == "valid", seat
        assert '"get_weather"' in seat["answer"]
    assert council["answer"] == 'get_weather({"city":"Paris"})' and council["agreement"] == 1.0
    ballot = httpx.get(f"{agents.url}/v1/ballots/{reply.id}").json()
    assert ballot["tools"] == [WEATHER] and ballot["recover_tool_calls"] is True
    assert all(a["recovered"] and a["calls"][0]["recovered"] for a in ballot["answers"])

    # The same seats with `vote.recover_tool_calls: false`: the reply is the text they wrote
    literal = client.chat.completions.create(model="literal", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    choice = literal.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert '"get_weather"' in (choice.message.content or "")
    council = literal.model_extra["council"]
    assert council["answer"] == "(no call)" and all("recovered" not in m for m in council["members"])


def test_a_confidence_council_of_samples_answers_tool_requests(agents: CouncilServer) -> None:
    """Before, its grouped seats asked for logprobs with tools on a streamed request, and llama-server answered 400."""
    client = openai.OpenAI(base_url=f"{agents.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="sure", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    assert [m["status"] for m in reply.model_extra["council"]["members"]] == ["ok", "ok"]
    assert reply.choices[0].finish_reason == "tool_calls"


def test_a_tool_council_as_a_cascade_answers_from_its_first_seat_when_that_seat_made_a_valid_call(
        agents: CouncilServer) -> None:
    """`cascade: {first: 1}`: the first seat's recovered, valid call decides alone (agreement 1 of 1), and the
    second seat is never asked: what the cascade rows of `bench.agents` replay offline, live."""
    client = openai.OpenAI(base_url=f"{agents.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="cascade", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls is not None
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    council = reply.model_extra["council"]
    assert (council["stage"], council["stages"]) == (1, 2)
    assert [m["status"] for m in council["members"]] == ["ok", "skipped"]
    assert council["members"][0]["recovered"] is True
    assert reply.usage is not None and reply.usage.completion_tokens == council["members"][0]["completion_tokens"]


def test_passthrough_with_recovery_returns_the_call_whole_and_streamed(agents: CouncilServer) -> None:
    client = openai.OpenAI(base_url=f"{agents.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="qwen", messages=ASK, tools=[WEATHER],  # type: ignore[list-item]
                                           temperature=0, max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    calls = choice.message.tool_calls
    assert calls is not None and [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    # streamed: held back until it is known, then OpenAI's tool-call chunks, which the SDK's helper accumulates
    with client.chat.completions.stream(model="qwen", messages=ASK, tools=[WEATHER],  # type: ignore[list-item]
                                        temperature=0, max_tokens=60) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls" and streamed.message.tool_calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    assert not streamed.message.content
    # a question its tool cannot answer streams as text, as the model wrote it
    plain = list(client.chat.completions.create(model="qwen", stream=True, tools=[WEATHER],  # type: ignore[list-item]
                                                temperature=0, max_tokens=12,
                                                messages=[{"role": "user", "content": "Say hello in French."}]))
    text = "".join(c.choices[0].delta.content or "" for c in plain if c.choices)
    assert text and not any(c.choices[0].delta.tool_calls for c in plain if c.choices)


def test_remote_members_keep_their_tool_calls(serve: Callable[..., CouncilServer],
                                              start_server: Callable[..., RunningServer]) -> None:
    """Two `remote:` members through litellm's `openai/` provider: a bare llama-server (the model's JSON text,
    recovered by the council) and a router relaying the model with `recover_tool_calls` (real `tool_calls`,
    which the council keeps as they are)."""
    bare = start_server(QWEN05.path, "--jinja", ctx=1024)
    relaying = serve(policy_yaml({"qwen": {"path": QWEN05.path, "ctx_size": 1024, "recover_tool_calls": True}},
                                 {"one": {"members": [{"model": "qwen"}]}}, memory="8GiB", slot="1GiB"))
    sampling = {"temperature": 0, "max_tokens": 60}
    mixed = serve(policy_yaml(
        {"text": {"remote": {"model": "openai/qwen", "api_base": f"{bare.url}/v1", "api_key_env": "BARE_KEY"}},
         "calls": {"remote": {"model": "openai/qwen", "api_base": f"{relaying.url}/v1", "api_key_env": "RELAY_KEY"}}},
        {"far": {"members": [{"model": "text", "sampling": sampling}, {"model": "calls", "sampling": sampling}],
                 "quorum": "all", "timeout": "240s"}}), env={"BARE_KEY": bare.api_key, "RELAY_KEY": "unused"})
    client = openai.OpenAI(base_url=f"{mixed.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="far", messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None, choice
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    text, calls = reply.model_extra["council"]["members"]
    assert text["status"] == calls["status"] == "ok", (text, calls)
    assert text["recovered"] is True and '"get_weather"' in text["answer"]
    assert "recovered" not in calls and calls["calls"] == [
        {"name": "get_weather", "arguments": {"city": "Paris"}, "verdict": "valid"}]  # its own tool_calls, kept
    assert reply.model_extra["council"]["agreement"] == 1.0


def test_an_argument_a_model_gives_at_its_declared_default_is_left_out_of_the_call(agents: CouncilServer) -> None:
    """Real seats asked for the default unit write it; the council returns the call without it (the tool applies
    its default either way) and each seat's call says what was left out."""
    weather = {"type": "function", "function": {**WEATHER["function"], "parameters": {
        "type": "object", "required": ["city"],
        "properties": {"city": {"type": "string"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}}}}}
    client = openai.OpenAI(base_url=f"{agents.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model="agents", tools=[weather],  # type: ignore[list-item]
                                           messages=[{"role": "user", "content": "Weather in Paris, in celsius?"}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None, choice
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [{"city": "Paris"}]
    for seat in reply.model_extra["council"]["members"]:
        assert seat["calls"][0]["defaulted"] == ["unit"] and seat["calls"][0]["verdict"] == "valid", seat
