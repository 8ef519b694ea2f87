"""The Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`, `/v1/models` in its shape), called with
the official `anthropic` SDK: in process for translation and errors (no member runs), then through a real
`council serve` whose council and relayed model are a real Qwen2.5-Coder-0.5B llama-server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.policy.loading import load_policy
from council.policy.schema import Sampling
from council.server.apis.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    message_body,
    stream_answer,
    stream_start,
    to_chat,
    validate,
    with_own_system,
)
from council.server.app import create_app
from council.server.requests import BadRequest, ChatRequest, validate_body
from council.server.router import open_router
from council.server.routes.anthropic import _normalised
from council.setup.catalog import by_name
from council.voting.assembly import assemble
from council.voting.client import MemberReply
from council.voting.engine import CouncilAnswer, Seat, SeatOutcome
from council.voting.tools import tool_instructions
from council.voting.vote import Decision
from tests.policies import member_entry, policy_yaml
from tests.server.test_app import KEY, _router
from tests.servers import CouncilServer
from tests.voting.fakes import FakeClient, Say

QWEN05 = by_name("qwen2.5-coder-0.5b")
assert QWEN05
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
BILLING = "x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli; "
PARIS = '{"city": "Paris"}'


# ---- translation, in process ------------------------------------------------------------------------------------


def test_a_claude_code_turn_becomes_the_chat_request_members_are_sent() -> None:
    body = {
        "model": "c", "max_tokens": 512, "stream": True, "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"],
        "system": [{"type": "text", "text": f"{BILLING}cch=3fa9c;"},
                   {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call the tool", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21 C"}]},
                {"type": "text", "text": "And tomorrow?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "no forecast",
                                          "is_error": True}]},
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "iVBO"}},
                                         {"type": "text", "text": "and this?"}]}],
        "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "mirostat": 2, "council": {"early_stop": False}}
    chat = to_chat(validate(body, MessagesRequest), body)
    assert chat["messages"] == [
        # the billing header's per-request hash is fixed, or no prompt cache would match past it
        {"role": "system", "content": f"{BILLING}cch=fffff;\nYou are an agent."},
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21 C"},  # the result first, right after its call
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no forecast"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                                     {"type": "text", "text": "and this?"}]}]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False and chat["stop"] == ["END"] and chat["max_tokens"] == 512
    assert chat["temperature"] == 0.2 and chat["top_k"] == 5 and chat["mirostat"] == 2  # unknown fields pass
    assert chat["council"] == {"early_stop": False} and "stream" not in chat  # the router streams, members never
    assert not {"system", "metadata", "thinking", "stop_sequences"} & set(chat)
    request = validate_body(chat, ChatRequest)  # what the council is asked, validated as chat's own
    assert isinstance(request, ChatRequest) and request.has_media
    council = request.council_request(chat)
    assert council.members_payload["tools"] == chat["tools"] and council.members_payload["tool_choice"] == "required"
    assert council.question == "and this?" and council.early_stop is False
    for choice, chat_choice in [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")]:
        assert to_chat(validate({**body, "tool_choice": choice}, MessagesRequest), body)["tool_choice"] == chat_choice


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"messages": ASK}, "invalid_max_tokens", "max_tokens: Field required"),
    ({"messages": ASK, "max_tokens": 0}, "invalid_max_tokens", "greater than or equal to 1"),
    ({"messages": [], "max_tokens": 5}, "invalid_messages", "messages"),
    ({"messages": ASK, "max_tokens": 5, "temperature": 1.5}, "invalid_temperature", "less than or equal to 1"),
    ({"messages": ASK, "max_tokens": "5"}, "invalid_max_tokens", "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}],
      "max_tokens": 5}, "invalid_messages", "`tool_use` blocks belong in assistant turns"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}], "max_tokens": 5},
     "invalid_messages", "document"),
    ({"messages": ASK, "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "invalid_tools", "'web_search_20250305', one of Anthropic's server tools"),
    # which tool a call names must be one: Anthropic refuses this too ("Tool names must be unique")
    ({"messages": ASK, "max_tokens": 5, "tools": [WEATHER, {**WEATHER, "description": "another"}]},
     "invalid_tools", "`tools` declares tool 'get_weather' twice"),
    ({"messages": ASK, "max_tokens": 5, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "book"}},
     "invalid_tool_choice", "names tool 'book', which `tools` does not declare"),
    ({"messages": ASK, "max_tokens": 5, "tool_choice": {"type": "any"}}, "invalid_tool_choice", "needs `tools`"),
    ({"model": 3, "messages": ASK, "max_tokens": 5}, "missing_model", "`model` is required"),
    ({"messages": ASK, "max_tokens": 5, "stream": 1}, "invalid_stream", "stream: Input should be a valid boolean"),
])
def test_bad_bodies_are_refused_naming_the_field(body: dict[str, Any], code: str, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate({"model": "c", **body}, MessagesRequest)
    assert caught.value.code == code and says in str(caught.value), str(caught.value)


def test_a_members_own_system_is_counted_after_the_requests() -> None:
    body = {"model": "c", "messages": ASK, "system": [{"type": "text", "text": "agent"}]}
    assert validate(body, CountTokensRequest).system is not None  # count_tokens needs no max_tokens
    assert with_own_system(body, "own")["system"] == "agent\n\nown"
    assert with_own_system({**body, "system": None}, "own")["system"] == "own"
    assert with_own_system(body, None) is body


def answer_of(message: dict[str, Any], finish: str) -> CouncilAnswer:
    """A council answer whose speaker said `message` (two seats, the second with a longer, partly cached prompt)."""
    seats = [Seat(name=f"s{i}", order=i, model="m", weight=1.0, sampling=Sampling(), client=None)  # type: ignore[arg-type]
             for i in range(2)]
    replies = [MemberReply(status="ok", text=message.get("content"), message=message, prompt_tokens=40 + 10 * i,
                           cached_tokens=8 * i, completion_tokens=7 + i, finish_reason=finish) for i in range(2)]
    return CouncilAnswer(id="chatcmpl-abc", council="c", strategy="majority",
                         decision=Decision(answer="x", agreement=1.0, votes={"x": 2.0}, winner_members=("s0", "s1"),
                                           tie_broken_by=None, text=message.get("content")),
                         outcomes=[SeatOutcome(seat=s, reply=r) for s, r in zip(seats, replies, strict=True)],
                         early_stop=False, tool_calls=message.get("tool_calls"))


@pytest.mark.parametrize(("message", "finish", "stop"), [
    ({"role": "assistant", "content": "Bonjour !"}, "stop", "end_turn"),
    ({"role": "assistant", "content": "Bonj"}, "length", "max_tokens"),
    ({"role": "assistant", "content": "", "reasoning_content": "hmm"}, "stop", "end_turn"),
    ({"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}}]},
     "tool_calls", "tool_use"),
])
def test_the_sdks_stream_accumulator_rebuilds_the_whole_message(message: dict[str, Any], finish: str,
                                                                 stop: str) -> None:
    answer = answer_of(message, finish)
    whole = message_body(answer)
    assert whole["id"] == "msg_abc" and whole["stop_reason"] == stop and whole["council"]["ballot_id"] == "chatcmpl-abc"
    # one model's usage: the longest prompt (cache reads apart) and the speaker's own tokens; every member's in council
    assert whole["usage"] == {"input_tokens": 42, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0,
                              "output_tokens": 7}
    assert whole["council"]["usage"]["completion_tokens"] == 15
    snapshot, partial_json = None, {}  # type: ignore[var-annotated]
    raw = stream_start("msg_abc", "c") + b"".join(stream_answer(answer, overhead_ms=0.5))
    for event in raw.decode().split("\n\n")[:-1]:
        name, data = (line.split(": ", 1)[1] for line in event.splitlines())
        assert json.loads(data)["type"] == name
        snapshot = accumulate_event(event=json.loads(data), current_snapshot=snapshot, json_bufs=partial_json)
    assert snapshot is not None
    assert snapshot.model_dump(exclude_none=True) == anthropic.types.Message.model_validate(
        {k: v for k, v in whole.items() if k != "council"}).model_dump(exclude_none=True)


# ---- errors and auth through the app, in process, read by the SDK -----------------------------------------------


@pytest.fixture
async def sdk(tmp_path: Path) -> AsyncIterator[Callable[..., anthropic.AsyncAnthropic]]:
    """SDK clients on the app around a router whose members never start (no llama-server runs)."""
    app = create_app(_router(tmp_path))
    opened: list[httpx2.AsyncClient] = []

    def make(**credentials: str) -> anthropic.AsyncAnthropic:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://council")
        opened.append(http)
        return anthropic.AsyncAnthropic(base_url="http://council", http_client=http, max_retries=0,
                                        **(credentials or {"api_key": KEY}))

    yield make
    for http in opened:
        await http.aclose()


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[Callable[[Say], tuple[anthropic.AsyncAnthropic, list[FakeClient]]]]:
    """An SDK client on the app around a router whose council `c` has its seats scripted (no llama-server runs),
    and the seats' fake clients, which record what each member was sent."""
    opened: list[httpx2.AsyncClient] = []

    def make(say: Say) -> tuple[anthropic.AsyncAnthropic, list[FakeClient]]:
        router = _router(tmp_path)
        engine = router.engines["c"]
        fakes = [FakeClient(say) for _ in engine.seats]
        engine.seats = [dataclasses.replace(s, client=f) for s, f in zip(engine.seats, fakes, strict=True)]
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(router)), base_url="http://council")
        opened.append(http)
        return anthropic.AsyncAnthropic(base_url="http://council", http_client=http, max_retries=0, api_key=KEY), fakes

    yield make
    for http in opened:
        await http.aclose()


class City(pydantic.BaseModel):
    name: str
    population: int


@pytest.mark.anyio
async def test_structured_output_reaches_the_members_as_response_format(
        scripted: Callable[[Say], tuple[anthropic.AsyncAnthropic, list[FakeClient]]]) -> None:
    """`output_config.format` (what `messages.parse(output_format=...)` sends) went to the members as a field
    llama-server ignores, so nothing held their answer to the schema; it is chat's `response_format` now."""
    client, fakes = scripted(Say('{"name": "Tokyo", "population": 37000000}'))
    parsed = await client.messages.parse(model="c", max_tokens=64, messages=ASK, output_format=City)  # type: ignore[arg-type]
    assert parsed.parsed_output == City(name="Tokyo", population=37000000)
    sent = fakes[0].sent[-1]
    assert sent["response_format"]["type"] == "json_schema" and "output_config" not in sent
    assert sent["response_format"]["json_schema"]["schema"]["properties"].keys() == {"name", "population"}
    with pytest.raises(anthropic.BadRequestError) as bad:  # a format without its schema
        await client.messages.create(model="c", max_tokens=64, messages=ASK,  # type: ignore[arg-type]
                                     output_config={"format": {"type": "json_schema"}})  # type: ignore[typeddict-item]
    assert bad.value.body["error"]["details"]["error_code"] == "invalid_output_config"  # type: ignore[index]
    assert "output_config.format.schema" in bad.value.message


CALLED = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                            "input": {"city": "Paris"}}]}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"}


@pytest.mark.anyio
@pytest.mark.parametrize(("messages", "says"), [
    ([{"role": "user", "content": []}], "messages.0: all messages must have non-empty content"),
    ([{"role": "user", "content": ""}], "messages.0: all messages must have non-empty content"),
    ([*ASK, {"role": "assistant", "content": ""}, {"role": "user", "content": "hi"}],
     "messages.1: all messages must have non-empty content"),
    ([*ASK, CALLED, {"role": "user", "content": "never mind, say hi"}],
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ([*ASK, CALLED, {"role": "user", "content": "wait"}, {"role": "assistant", "content": "OK."},
      {"role": "user", "content": [RESULT]}], "messages.1: `tool_use` ids were found without `tool_result`"),
    ([{"role": "user", "content": [{**RESULT, "tool_use_id": "toolu_nope"}]}],
     "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_nope"),
    ([*ASK, CALLED, {"role": "user", "content": [RESULT, {**RESULT, "tool_use_id": "toolu_2"}]}],
     "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_2"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}],
     "messages.0.content.0: text content blocks must be non-empty"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": ""}]}],
     "messages.0.content.1: text content blocks must be non-empty"),
    ([*ASK, {"role": "assistant", "content": [*CALLED["content"], *CALLED["content"]]},
      {"role": "user", "content": [RESULT]}], "messages.1.content.1: `tool_use` ids must be unique"),
    ([*ASK, CALLED, {"role": "user", "content": [RESULT]}, CALLED, {"role": "user", "content": [RESULT]}],
     "messages.3.content.0: `tool_use` ids must be unique"),
])
async def test_a_broken_conversation_is_refused_as_anthropic_refuses_it(
        scripted: Callable[[Say], tuple[anthropic.AsyncAnthropic, list[FakeClient]]], messages: list[Any],
        says: str) -> None:
    """Empty turns and unpaired `tool_use`/`tool_result` blocks reached the members as an empty user turn, calls
    nobody answered or a tool message answering no call; they are 400 `invalid_messages` now, in Anthropic's
    words. So are an empty text block (an empty turn, or a stray line break in one) and two calls with one id
    (a result answering either), which Anthropic refuses too."""
    client, fakes = scripted(Say("hi"))
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="c", max_tokens=16, messages=messages)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert bad.value.body["error"]["details"] == {"error_code": "invalid_messages"}  # type: ignore[index]
    assert says in bad.value.message and not fakes[0].sent


@pytest.mark.anyio
@pytest.mark.parametrize("messages", [
    [*ASK, CALLED, {"role": "user", "content": [RESULT, {"type": "text", "text": "and tomorrow?"}]}],
    # consecutive turns of one role are one turn: the result may come in a later user message of it
    [*ASK, CALLED, {"role": "user", "content": "one moment"}, {"role": "user", "content": [RESULT]}],
    [*ASK, {"role": "assistant", "content": "Let me look."}, CALLED, {"role": "user", "content": [RESULT]}],
    # a final assistant turn is a prefill: empty, or a call whose result is not in yet
    [*ASK, {"role": "assistant", "content": ""}], [*ASK, CALLED],
    [*ASK, {"role": "assistant", "content": [{"type": "text", "text": ""}]}],
    # an assistant turn as the council wrote it, sent back: its empty answer, or an empty text before its call
    [*ASK, {"role": "assistant", "content": [{"type": "text", "text": ""}]}, {"role": "user", "content": "hello?"}],
    [*ASK, {"role": "assistant", "content": [{"type": "text", "text": ""}, *CALLED["content"]]},
     {"role": "user", "content": [RESULT]}],
    # the tool runner's second round: calls of their own ids, each answered
    [*ASK, CALLED, {"role": "user", "content": [RESULT]},
     {"role": "assistant", "content": [{"type": "text", "text": "And Rome?"},
                                       {**CALLED["content"][0], "id": "toolu_2"}]},
     {"role": "user", "content": [{**RESULT, "tool_use_id": "toolu_2", "content": ""}]}],
])
async def test_conversations_anthropic_takes_reach_the_members(
        scripted: Callable[[Say], tuple[anthropic.AsyncAnthropic, list[FakeClient]]], messages: list[Any]) -> None:
    client, fakes = scripted(Say("hi"))
    answer = await client.messages.create(model="c", max_tokens=16, messages=messages)
    assert answer.content[0].type == "text" and answer.content[0].text == "hi" and fakes[0].sent


@pytest.mark.anyio
async def test_errors_come_in_anthropics_shape_and_the_sdk_raises_its_own(
        sdk: Callable[..., anthropic.AsyncAnthropic]) -> None:
    client = sdk()
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="c", max_tokens=5, messages=[{"role": "robot", "content": "x"}])  # type: ignore[typeddict-item]
    assert bad.value.body == {"type": "error", "error": {  # type: ignore[comparison-overlap]
        "type": "invalid_request_error", "message": bad.value.body["error"]["message"],  # type: ignore[index]
        "details": {"error_code": "invalid_messages"}}}
    assert "messages.0.role" in bad.value.message and bad.value.response.headers["x-council-overhead-ms"]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        await sdk(api_key="wrong").messages.create(model="c", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
    assert wrong.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(auth_token="wrong").messages.count_tokens(model="c", messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as council_only:  # a council of local members: nothing to relay
        await client.messages.create(model="c", max_tokens=5, messages=ASK, extra_body={"n": 2})  # type: ignore[arg-type]
    assert "`n` other than 1" in council_only.value.message
    # the members never started: the council has no quorum, which is Anthropic's "overloaded", as chat's 503
    with pytest.raises(anthropic.InternalServerError) as down:
        await client.messages.create(model="c", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
    assert down.value.status_code == 503 and down.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as relayed:  # a model without a ready process
        await sdk(auth_token=KEY).messages.create(model="m", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
    assert relayed.value.status_code == 503 and relayed.value.body["error"]["message"] == "no ready member serves m"  # type: ignore[index]



@pytest.mark.anyio
async def test_a_relayed_stream_the_router_cannot_finish_ends_with_an_anthropic_error_event() -> None:
    """The relay ends a broken stream with an unnamed `data: {"error": ...}` event (chat's shape), which the
    Anthropic SDK skips: a relayed model's Messages stream turns it into the `error` event the SDK raises."""
    start = b'event: message_start\ndata: {"type": "message_start"}\n\n'
    broken = b'data: {"error":{"message":"member m/0\'s stream broke: ClientPayloadError","type":"server_error",' \
             b'"code":"member_failed"}}\n\n'

    async def relayed() -> AsyncIterator[bytes]:
        yield start
        yield broken

    out = b"".join([chunk async for chunk in _normalised(relayed())])
    assert out.startswith(start)
    event, data = out[len(start):].split(b"\n", 1)
    assert event == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["details"] == {"error_code": "member_failed"} and "stream broke" in error["error"]["message"]

@pytest.mark.anyio
async def test_models_list_in_each_apis_shape(sdk: Callable[..., anthropic.AsyncAnthropic], tmp_path: Path) -> None:
    listed = [m async for m in sdk().models.list()]
    assert [(m.id, m.type, (m.model_extra or {})["kind"]) for m in listed] == [("c", "model", "council"),
                                                                               ("m", "model", "model")]
    assert (await sdk(auth_token=KEY).models.retrieve("c")).display_name == "c"
    with pytest.raises(anthropic.NotFoundError):
        await sdk().models.retrieve("nope")
    transport = httpx.ASGITransport(app=create_app(_router(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        openai_shape = (await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).json()
        assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"
        anthropic_shape = (await http.get("/v1/models", headers={"x-api-key": KEY})).json()
        assert anthropic_shape["has_more"] is False and anthropic_shape["first_id"] == "c"
        refused = await http.get("/v1/models", headers={"x-api-key": "wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        refused = await http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape
        for path in ("/v1/chat/completions", "/v1/completions"):  # the chat routes take `x-api-key` too
            unknown = await http.post(path, json={"model": "nope", "messages": ASK, "prompt": "hi"},
                                      headers={"x-api-key": KEY})
            assert unknown.status_code == 404, unknown.text  # past auth
            refused = await http.post(path, json={"model": "nope", "messages": ASK}, headers={"x-api-key": "wrong"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        too_big = await http.post("/v1/messages?beta=true", content=b"x" * (2 << 20),
                                  headers={"x-api-key": KEY, "content-type": "application/json"})
        assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "request_too_large"


@pytest.mark.anyio
async def test_a_name_with_a_slash_is_retrieved_in_each_apis_shape(tmp_path: Path) -> None:
    """`/v1/models/{id}` matched no `/`, so `models.retrieve("org/m")` of a listed name was Starlette's bare 404;
    the id is now the rest of the path."""
    path = tmp_path / "policy.yaml"
    keys = {"api_keys": [{"name": "app", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
    path.write_text(policy_yaml({"org/m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"team/c": {"members": [{"model": "org/m"}]}}, memory="1GiB", server=keys))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=())
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)  # the councils' engines
    app = create_app(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://council") as http, \
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://council") as http2:
        oai = openai.AsyncOpenAI(api_key=KEY, base_url="http://council/v1", http_client=http, max_retries=0)
        ant = anthropic.AsyncAnthropic(api_key=KEY, base_url="http://council", http_client=http2, max_retries=0)
        for name, kind in (("team/c", "council"), ("org/m", "model")):
            found = await oai.models.retrieve(name)
            assert (found.id, found.object, (found.model_extra or {})["kind"]) == (name, "model", kind)
            assert (await ant.models.retrieve(name)).display_name == name
        with pytest.raises(openai.NotFoundError) as missing:  # an unknown name with a slash: the route's own 404
            await oai.models.retrieve("org/nope")
        assert missing.value.code == "model_not_found" and "'org/nope'" in missing.value.message


# ---- through a real `council serve` ------------------------------------------------------------------------------

REAL_KEY = "anthropic-real-key-0123456789"
HELLO = [{"role": "user", "content": "Say hello in French."}]
KEYS = {"api_keys": [{"name": "agent", "sha256": hashlib.sha256(REAL_KEY.encode()).hexdigest()}]}


@pytest.fixture
def alphabet(serve: Callable[..., CouncilServer], syn: Path) -> CouncilServer:
    """`alphabet`: two members on the synthetic model (each answers `abcdef`); `syn`: that model relayed. One key,
    sent as `x-api-key` or as a bearer token."""
    return serve(policy_yaml({"syn": {"path": syn, "ctx_size": 512}},
                             {"alphabet": {"members": [member_entry("syn", max_tokens=6)] * 2,
                                           "vote": {"strategy": "majority", "extract": "text"}}}, server=KEYS))


def real_sdk(server: CouncilServer, **credentials: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, max_retries=0, timeout=300,
                               **(credentials or {"api_key": REAL_KEY}))


def blocks(message: Any) -> list[dict[str, Any]]:
    """Content blocks without the ids a council makes afresh for every answer."""
    return [{k: v for k, v in b.model_dump(exclude_none=True).items() if k != "id"} for b in message.content]


def events(server: CouncilServer, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The raw server-sent events of a streamed request, as (event, data)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("POST", f"{server.url}/v1/messages?beta=true", json={**body, "stream": True}, timeout=300,
                      headers={"x-api-key": REAL_KEY, "anthropic-version": "2023-06-01"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        for event in reply.read().decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in event.splitlines() if ": " in line)
            if "event" in lines:
                seen.append((lines["event"], json.loads(lines["data"])))
    return seen


def test_a_council_answers_messages_whole_and_streamed(alphabet: CouncilServer) -> None:
    client = real_sdk(alphabet)
    plain = client.messages.create(model="alphabet", max_tokens=60, messages=HELLO)  # type: ignore[arg-type]
    assert plain.type == "message" and plain.role == "assistant" and plain.model == "alphabet"
    assert plain.id.startswith("msg_") and [(b.type, b.text) for b in plain.content] == [("text", "abcdef")]  # type: ignore[union-attr]
    assert plain.stop_reason == "max_tokens"  # the members' 6 tokens ran out
    council = (plain.model_extra or {})["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok"] and council["votes"] == {"abcdef": 2.0}
    # usage as one model's: the prompt as one member read it (cache reads apart), the answer's own tokens
    prompt = council["members"][0]["prompt_tokens"]
    assert plain.usage.input_tokens + (plain.usage.cache_read_input_tokens or 0) == prompt > 0
    assert plain.usage.output_tokens == 6 and council["usage"]["completion_tokens"] == 12  # every member's
    ballot = httpx.get(f"{alphabet.url}/v1/ballots/{council['ballot_id']}", headers={"x-api-key": REAL_KEY})
    assert ballot.status_code == 200 and [a["text"] for a in ballot.json()["answers"]] == ["abcdef", "abcdef"]

    with client.messages.stream(model="alphabet", max_tokens=60, messages=HELLO) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    assert blocks(final) == blocks(plain) and final.stop_reason == plain.stop_reason
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == prompt

    seen = events(alphabet, {"model": "alphabet", "max_tokens": 60, "messages": HELLO})
    names = [name for name, _ in seen if name != "ping"]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"], names
    assert [name for name, _ in seen[:1]] == ["message_start"]  # pings, if any, only while the members work
    delta = next(data for name, data in seen if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["council"]["overhead_ms"] >= 0
    assert [m["status"] for m in delta["council"]["members"]] == ["ok", "ok"]
    scraped = httpx.get(f"{alphabet.url}/metrics", headers={"Authorization": f"Bearer {REAL_KEY}"}).text
    counted = {(s.labels["route"], s.labels["model"], s.labels["status"]): s.value
               for family in text_string_to_metric_families(scraped)
               for s in family.samples if s.name == "council_requests_total"}
    assert counted[("messages", "alphabet", "200")] == 3  # whole, streamed by the SDK, streamed raw


def test_count_tokens_for_a_model_and_a_council(alphabet: CouncilServer) -> None:
    client = real_sdk(alphabet)
    alone = client.messages.count_tokens(model="syn", messages=HELLO).input_tokens  # type: ignore[arg-type]
    with_system = client.messages.count_tokens(model="syn", messages=HELLO, system="be brief").input_tokens  # type: ignore[arg-type]
    assert 0 < alone < with_system
    # the council's members read the model's tokenizer: the largest count is the model's
    assert client.messages.count_tokens(model="alphabet", messages=HELLO, system="be brief").input_tokens == with_system  # type: ignore[arg-type]
    # what a completion's usage says it read
    answered = client.messages.create(model="alphabet", max_tokens=6, messages=HELLO)  # type: ignore[arg-type]
    assert answered.usage.input_tokens + (answered.usage.cache_read_input_tokens or 0) == alone
    # with tools, the members also read the council's tool instructions (`brief`), after the request's system
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": schema}]
    chat_tool = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                  "parameters": schema}}
    told = tool_instructions([chat_tool], "brief")
    assert told is not None
    read = client.messages.count_tokens(model="syn", messages=HELLO, system=told, tools=tools).input_tokens  # type: ignore[arg-type]
    assert client.messages.count_tokens(model="alphabet", messages=HELLO, tools=tools).input_tokens == read  # type: ignore[arg-type]
    bearer = real_sdk(alphabet, auth_token=REAL_KEY)  # Claude Code's ANTHROPIC_AUTH_TOKEN: a bearer token
    assert bearer.messages.count_tokens(model="alphabet", messages=HELLO).input_tokens == alone  # type: ignore[arg-type]
    with pytest.raises(anthropic.AuthenticationError):
        real_sdk(alphabet, api_key="wrong").messages.count_tokens(model="alphabet", messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=HELLO)  # type: ignore[arg-type]


def test_a_model_is_relayed_whole_and_streamed(alphabet: CouncilServer) -> None:
    client = real_sdk(alphabet, auth_token=REAL_KEY)
    whole = client.messages.create(model="syn", max_tokens=4, messages=HELLO)  # type: ignore[arg-type]
    assert whole.type == "message" and [(b.type, b.text) for b in whole.content] == [("text", "abcd")]  # type: ignore[union-attr]
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 4
    with client.messages.stream(model="syn", max_tokens=4, messages=HELLO) as stream:  # type: ignore[arg-type]
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert blocks(final) == blocks(whole) and final.stop_reason == whole.stop_reason
    # a stop sequence that ended the reply is said (llama-server named it, but said `end_turn`)
    stopped = client.messages.create(model="syn", max_tokens=6, messages=HELLO, stop_sequences=["d"])  # type: ignore[arg-type]
    with client.messages.stream(model="syn", max_tokens=6, messages=HELLO, stop_sequences=["d"]) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_message()
    for message in (stopped, streamed):
        assert (message.stop_reason, message.stop_sequence, blocks(message)) == ("stop_sequence", "d", [
            {"type": "text", "text": "abc"}])
    # llama-server's own refusal (the prompt is over its context), in Anthropic's shape, whole and streamed
    long = [{"role": "user", "content": "word " * 600}]
    for streamed in (False, True):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(model="syn", max_tokens=4, messages=long, stream=streamed)  # type: ignore[call-overload]
        body = refused.value.body
        assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "context" in body["error"]["message"], body


@pytest.fixture
def agents(serve: Callable[..., CouncilServer]) -> CouncilServer:
    """`agents`: two greedy samples of Qwen2.5-Coder-0.5B in one process (one request, `n: 2`)."""
    seats = {"members": [{"model": "qwen", "samples": 2, "sampling": {"temperature": 0, "max_tokens": 40}}],
             "timeout": "300s"}
    return serve(policy_yaml({"qwen": {"path": QWEN05.path, "ctx_size": 1024}}, {"agents": seats},
                             memory="8GiB", slot="1GiB", server=KEYS))


def test_a_tool_use_round_trip_through_a_council(agents: CouncilServer) -> None:
    """Qwen2.5-Coder-0.5B writes its call as JSON text; the council recovers it and answers with a `tool_use`
    block, whose id the next turn's `tool_result` answers; every member reads that result and answers with it.
    (The SDK's stream accumulator on a council's `tool_use` blocks: in process, above.)"""
    client = real_sdk(agents)
    first = client.messages.create(model="agents", max_tokens=60, tools=[WEATHER], messages=ASK)  # type: ignore[arg-type, list-item]
    assert first.stop_reason == "tool_use", first
    calls = [b for b in first.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [("get_weather", {"city": "Paris"})] and calls[0].id

    history = [*ASK, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                             "content": "It is 21 C and sunny in Paris."}]}]
    # `none`: answer in words now (left to it, the 0.5B calls the tool again, to the end of its tokens)
    second = client.messages.create(model="agents", max_tokens=60, tools=[WEATHER], messages=history,  # type: ignore[arg-type, list-item]
                                    tool_choice={"type": "none"})
    council = (second.model_extra or {})["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok"], council
    text = "".join(b.text for b in second.content if b.type == "text")
    assert second.stop_reason in ("end_turn", "max_tokens") and "21" in text, second  # it read the result


def test_a_relayed_model_is_offered_only_the_tools_its_tool_choice_leaves(agents: CouncilServer) -> None:
    """llama-server's own Messages translation dropped `tool_choice: none` (the model was still offered every
    tool) and made a named tool `required` over every tool (it could call another). The tools a model is offered
    are in its prompt, so the prompt's size says which it was offered."""
    client = real_sdk(agents)
    clock = {"name": "get_time", "description": "The time in a city", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}

    def prompt(**extra: Any) -> int:
        message = client.messages.create(model="qwen", max_tokens=1, messages=ASK, **extra)  # type: ignore[arg-type]
        return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)

    both = [WEATHER, clock]
    assert prompt(tools=both, tool_choice={"type": "none"}) == prompt()
    named = prompt(tools=both, tool_choice={"type": "tool", "name": "get_weather"})
    required = {"type": "any"}
    assert named == prompt(tools=[WEATHER], tool_choice=required) < prompt(tools=both, tool_choice=required)
