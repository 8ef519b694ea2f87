"""The OpenAI Responses API (README "Agents"): `POST /v1/responses` and `/v1/responses/input_tokens` for a council
(translated to chat and asked by vote) and for a model (relayed to llama-server, its stream completed), called
with the official openai SDK against a real `council serve` whose members are real Qwen2.5-Coder-0.5B
llama-servers. In-process beside them: the translation and the event sequences, read by the SDK's own stream
accumulator (llama-server's stream as b11434 writes it, for a function call a 0.5B model never makes as one)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from council.members.binary import LlamaServerInfo
from council.server.apis.responses import (
    ResponsesRequest,
    StreamFixer,
    events_of,
    for_model,
    item_events,
    output_items,
    response_object,
    to_chat,
    validate_responses,
)
from council.server.app import create_app
from council.server.requests import BadRequest
from council.setup.catalog import by_name
from tests.policies import policy_yaml
from tests.server.test_app import KEY as APP_KEY
from tests.server.test_app import _requests_total, _router
from tests.servers import CouncilServer, start_council_serve

QWEN05 = by_name("qwen2.5-coder-0.5b")
assert QWEN05
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
KEY = "responses-test-key"


# ---- in-process: translation and event sequences -----------------------------------------------------------


def request(**fields: Any) -> tuple[ResponsesRequest, dict[str, Any]]:
    body = {"model": "agents", "input": "hi", **fields}
    return validate_responses(body), body


def test_input_items_become_the_chat_body_members_are_sent() -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    ask, body = request(instructions="Be brief.", top_k=3, max_output_tokens=5, parallel_tool_calls=False,
                        tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, store=False,
                        input=[{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                               {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
                               call, {**call, "call_id": "call_2", "arguments": '{"city":"Rome"}'},
                               {"type": "reasoning", "id": "rs_1", "summary": []},
                               {"type": "function_call_output", "call_id": "call_1", "output": "21 C"}])
    chat = to_chat(ask, body, history=[{"role": "user", "content": "before"}])
    calls = [{"id": c, "type": "function", "function": {"name": "get_weather", "arguments": a}}
             for c, a in (("call_1", '{"city":"Paris"}'), ("call_2", '{"city":"Rome"}'))]
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "before"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},  # its text and both calls: one turn
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (chat["max_tokens"], chat["parallel_tool_calls"], chat["top_k"]) == (5, False, 3)  # unknown: passed
    assert not {"input", "instructions", "store", "max_output_tokens"} & set(chat)
    schema = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
    ask, body = request(text={"format": schema})
    assert to_chat(ask, body, [])["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}}


def test_instructions_and_a_leading_developer_message_are_one_system_message() -> None:
    """Codex sends `instructions` and developer messages: they reached the members as two system messages, which
    most chat templates refuse past the first place (the router's own rule for a member's `system` is one)."""
    ask, body = request(instructions="You are Codex.", input=[
        {"role": "developer", "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
        {"role": "user", "content": "list the files"}])
    assert to_chat(ask, body, [])["messages"] == [
        {"role": "developer", "content": "You are Codex.\n\nSandbox: read-only."},
        {"role": "user", "content": "list the files"}]
    ask, body = request(instructions="You are Codex.", input="hi")  # alone, the instructions lead
    assert to_chat(ask, body, [])["messages"] == [{"role": "system", "content": "You are Codex."},
                                                  {"role": "user", "content": "hi"}]


def test_allowed_tools_offer_members_and_a_relayed_model_those_tools_alone() -> None:
    """`tool_choice: {type: allowed_tools}` (OpenAI's form for "only these of the declared tools") was a 400 whose
    message named a field of another form; now members, and a model's llama-server, are offered those alone."""
    clock = {**WEATHER, "name": "get_time"}
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
    ask, body = request(tools=[WEATHER, clock], tool_choice=choice)
    chat = to_chat(ask, body, [])
    assert [t["function"]["name"] for t in chat["tools"]] == ["get_time"] and chat["tool_choice"] == "required"
    relayed = for_model(body, [])
    assert relayed["tools"] == [clock] and relayed["tool_choice"] == "required"
    assert response_object("resp_1", ask, 1, "completed", [])["tool_choice"] == choice  # echoed as it was asked
    with pytest.raises(BadRequest, match="`tool_choice` names function 'book', which `tools` does not declare"):
        validate_responses({**body, "tool_choice": {**choice, "tools": [{"type": "function", "name": "book"}]}})


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"input": "x"}, "missing_model", "`model` is required"),
    ({"model": "c"}, "invalid_input", "input: Field required"),
    ({"model": "c", "input": "x", "temperature": "0.5"}, "invalid_temperature", "valid number"),
    ({"model": "c", "input": "x", "tools": [{"type": "web_search"}]}, "unsupported_tool", "only function tools"),
    ({"model": "c", "input": [{"type": "function_call_output", "output": "x"}]}, "invalid_input", "call_id"),
    ({"model": "c", "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "invalid_input", "a system message cannot hold input_image parts"),
    ({"model": "c", "input": "x", "tool_choice": {"type": "function", "name": "book"}, "tools": [WEATHER]},
     "invalid_tool_choice", "names function 'book'"),
    ({"model": "c", "input": "x", "background": True}, "unsupported_background", "background"),
    ({"model": "c", "input": "x", "prompt": {"id": "pmpt_1", "variables": {"city": "Paris"}}}, "unsupported_prompt",
     "`prompt` (a stored prompt template) is not supported"),
    # fields that begin like a union's branch name (`str`) are named, and give the code, all the same
    ({"model": "c", "input": "x", "stream": "yes"}, "invalid_stream", "stream: Input should be a valid boolean"),
    ({"model": "c", "input": "x", "stream_options": "x"}, "invalid_stream_options",
     "stream_options: Input should be a valid dictionary"),
    ({"model": "c", "input": "x", "tools": [WEATHER, WEATHER]}, "invalid_tools",
     "`tools` declares function 'get_weather' twice"),
    ({"model": "c", "input": "x", "tools": [{**WEATHER, "strict": "yes"}]}, "invalid_tools",
     "tools.0.strict: Input should be a valid boolean"),
])
def test_bad_bodies_are_one_clear_400(body: dict[str, Any], code: str, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_responses(body)
    assert caught.value.code == code and says in str(caught.value)


IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
SHOT = {"type": "function_call", "call_id": "call_1", "name": "screenshot", "arguments": "{}"}


def tool_output(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "What is on screen?"}, SHOT,
            {"type": "function_call_output", "call_id": "call_1", "output": list(parts)}]


@pytest.mark.anyio
async def test_an_image_or_file_a_tool_returns_is_kept_or_refused_never_dropped(tmp_path: Path) -> None:
    """A `function_call_output` holding an image or a file (an agent's screenshot tool) was flattened to its text:
    the members read `"screenshot:\n"` and the council answered as if they had seen it. Its parts now reach the
    members as a user message's do, so a text-only council or model refuses it as it refuses the same image sent
    by the user."""
    ask, body = request(input=tool_output({"type": "input_text", "text": "screenshot:"}, IMAGE))
    assert ask.has_media
    assert to_chat(ask, body, [])["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": [
        {"type": "text", "text": "screenshot:"}, {"type": "image_url", "image_url": {"url": IMAGE["image_url"]}}]}
    transport = httpx.ASGITransport(app=create_app(_router(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        client = openai.AsyncOpenAI(base_url="http://council/v1", api_key=APP_KEY, http_client=http, max_retries=0)
        pdf = {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}
        for model, sent in [("c", tool_output(IMAGE)), ("m", tool_output(IMAGE)), ("c", tool_output(pdf)),
                            ("c", [{"role": "user", "content": [IMAGE]}])]:  # the user's own image, as before
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model=model, input=sent)  # type: ignore[arg-type]
            assert refused.value.code == "unsupported_content", (model, refused.value.message)
            assert f"{model} is text-only" in refused.value.message


def accumulate(events: list[dict[str, Any]], tools: list[Any]) -> Any:
    """The events through the SDK's own stream accumulator (what `client.responses.stream()` runs)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=tools, text_format=openai.omit)
    for n, event in enumerate(events):
        assert event["sequence_number"] == n
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    assert state._completed_response is not None
    return state._completed_response


def test_a_council_answer_streams_in_the_sequence_the_sdk_accumulates() -> None:
    ask, _ = request(tools=[WEATHER])
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]
    for message in ({"role": "assistant", "content": "Checking.", "tool_calls": calls},
                    {"role": "assistant", "content": "plain text"}, {"role": "assistant", "content": ""}):
        output = output_items(message)
        opening = response_object("resp_x", ask, 0, "in_progress", [])
        final = response_object("resp_x", ask, 0, "completed", output, council={"answer": "x"})
        events = [{"type": "response.created", "response": opening},
                  {"type": "response.in_progress", "response": opening}, *item_events(output),
                  {"type": "response.completed", "response": final}]
        for n, event in enumerate(events):
            event["sequence_number"] = n
        got = accumulate(events, [WEATHER])
        assert got.output_text == (message["content"] or "")
        assert [(c.call_id, c.name, c.arguments) for c in got.output if c.type == "function_call"] == [
            (c["id"], "get_weather", c["function"]["arguments"]) for c in message.get("tool_calls", [])]


def llama_stream(text: str, call: bool) -> bytes:
    """What llama-server b11434 streams for /v1/responses (tools/server/server-task.cpp): no sequence numbers,
    no indexes, no `function_call_arguments.done`, bare lifecycle responses."""
    bare = {"id": "resp_l", "object": "response", "status": "in_progress"}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": bare},
                                    {"type": "response.in_progress", "response": bare}]
    output: list[dict[str, Any]] = []
    if text:
        events += [{"type": "response.output_item.added", "item": {"content": [], "id": "msg_l", "role": "assistant",
                                                                    "status": "in_progress", "type": "message"}},
                   {"type": "response.content_part.added", "item_id": "msg_l", "part": {"type": "output_text",
                                                                                        "text": ""}},
                   *({"type": "response.output_text.delta", "item_id": "msg_l", "delta": d} for d in text.split(" "))]
    if call:
        events += [{"type": "response.output_item.added", "item": {"id": "fc_1", "arguments": "", "call_id": "call_1",
                                                                    "name": "get_weather", "type": "function_call",
                                                                    "status": "in_progress"}},
                   {"type": "response.function_call_arguments.delta", "delta": '{"city":', "item_id": "fc_1"},
                   {"type": "response.function_call_arguments.delta", "delta": '"Oslo"}', "item_id": "fc_1"}]
    if text:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text.replace(" ", "")}
        item = {"type": "message", "status": "completed", "id": "msg_l", "content": [part], "role": "assistant"}
        events += [{"type": "response.output_text.done", "item_id": "msg_l", "text": part["text"]},
                   {"type": "response.content_part.done", "item_id": "msg_l", "part": part},
                   {"type": "response.output_item.done", "item": item}]
        output.append(item)
    if call:
        item = {"id": "fc_1", "type": "function_call", "status": "completed", "arguments": '{"city":"Oslo"}',
                "call_id": "call_1", "name": "get_weather"}
        events.append({"type": "response.output_item.done", "item": item})
        output.append(item)
    events.append({"type": "response.completed", "response": {
        "id": "resp_l", "object": "response", "created_at": 1, "status": "completed", "model": "qwen", "output": output,
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}})
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_llama_servers_stream_is_completed_for_the_sdk() -> None:
    ask, _ = request(model="qwen", tools=[WEATHER])
    for text, call in (("Hello there friend", False), ("", True), ("Let me see", True)):
        raw = llama_stream(text, call)
        if text:  # as llama-server sends it, the SDK cannot read its text (no content index)
            with pytest.raises(TypeError):
                accumulate([{**e, "sequence_number": n} for n, e in enumerate(events_of(raw)[0])], [WEATHER])
        fixer, pending, events = StreamFixer(ask), b"", []
        for cut in range(0, len(raw), 97):  # events split across chunks, as they come off the socket
            found, pending = events_of(pending + raw[cut:cut + 97])
            events += [event for data in found for sent in fixer.fix(data) for event in events_of(sent)[0]]
        assert not pending and events[0]["type"] == "response.created"
        got = accumulate(events, [WEATHER])
        assert got.output_text == text.replace(" ", "")
        assert [(c.call_id, c.arguments) for c in got.output if c.type == "function_call"] == (
            [("call_1", '{"city":"Oslo"}')] if call else [])
        dones = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        assert [d["arguments"] for d in dones] == (['{"city":"Oslo"}'] if call else [])
        assert fixer.final is not None and fixer.final["tools"] == [WEATHER]  # the request's settings, filled in


# ---- in process: the routes' errors, as the SDK reads them (no member runs: httpx.ASGITransport) ----------


@pytest.mark.anyio
async def test_errors_and_failures_reach_the_sdk_in_the_responses_shape(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=create_app(_router(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        client = openai.AsyncOpenAI(base_url="http://council/v1", api_key=APP_KEY, http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="c", input="x", max_output_tokens=0)
        assert bad.value.code == "invalid_max_output_tokens" and bad.value.type == "invalid_request_error"
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="nope", input="x")
        with pytest.raises(openai.AuthenticationError):
            await client.with_options(api_key="wrong").responses.create(model="c", input="x")
        with pytest.raises(openai.BadRequestError) as template:  # stored at OpenAI: the members would lose it
            await client.responses.create(model="c", input="x", prompt={"id": "pmpt_1", "variables": {"a": "b"}})
        assert template.value.code == "unsupported_prompt"
        with pytest.raises(openai.BadRequestError, match="previous_response_id 'resp_gone' is unknown"):
            await client.responses.create(model="c", input="x", previous_response_id="resp_gone")
        with pytest.raises(openai.InternalServerError) as down:  # no member of c runs here: no quorum
            await client.responses.create(model="c", input="x")
        assert down.value.status_code == 503 and down.value.code == "quorum_not_met"
        with pytest.raises(openai.InternalServerError) as relayed:  # nor of the model, for a passthrough
            await client.responses.create(model="m", input="x")
        assert relayed.value.code == "no_ready_member"
        # streamed, the failure comes inside the 200 stream: an `error` event and `response.failed`
        events = [e async for e in await client.responses.create(model="c", input="x", stream=True)]
        assert [e.type for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
        assert [e.sequence_number for e in events] == [0, 1, 2, 3]
        failed = events[-1].response
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "quorum_not_met"
        assert failed.id == events[0].response.id
        async with client.responses.stream(model="c", input="x") as stream:
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()
        counted = _requests_total((await http.get("/metrics", headers={"Authorization": f"Bearer {APP_KEY}"})).text)
        assert counted[("c", "503")] == 3 and counted[("m", "503")] == 1 and counted[("-", "404")] == 1


# ---- through a real `council serve` ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: LlamaServerInfo) -> Iterator[CouncilServer]:
    """`agents`: two Qwen2.5-Coder-0.5B samples at temperature 0 (they write calls as JSON text; the council
    recovers them); `qwen`, the same model relayed. One server for the module: members load once."""
    workdir = tmp_path_factory.mktemp("responses")
    seats = {"members": [{"model": "qwen", "samples": 2, "sampling": {"temperature": 0, "max_tokens": 60}}],
             "timeout": "240s"}
    text = policy_yaml({"qwen": {"path": QWEN05.path, "ctx_size": 2048, "recover_tool_calls": True}},
                       {"agents": seats}, memory="8GiB", slot="1GiB",
                       server={"api_keys": [{"name": "agent", "env": "RESPONSES_KEY"}]})
    env = {"COUNCIL_HOME": str(workdir), "LLAMA_SERVER": str(llama_server_bin.path), "RESPONSES_KEY": KEY}
    server = start_council_serve(text, workdir, env, deadline_s=300)
    yield server
    assert server.stop() == 0, server.log()[-2000:]
    leftover = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "members outlived `council serve`"


def sdk(server: CouncilServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)


def shape(response: Any) -> list[tuple[str, ...]]:
    """What a response says, without its fresh ids."""
    return [(i.type, i.content[0].text) if i.type == "message" else (i.type, i.name, i.arguments)
            for i in response.output]


ADD = "What is 2+2? Answer with the number only."


def test_a_council_answers_plain_and_streamed(agents: CouncilServer) -> None:
    client = sdk(agents)
    plain = client.responses.create(model="agents", input=ADD, instructions="You are a calculator.")
    assert plain.status == "completed" and plain.object == "response" and plain.id.startswith("resp_")
    assert "4" in plain.output_text and shape(plain) == [("message", plain.output_text)]
    assert plain.usage is not None and plain.usage.input_tokens > 0 and plain.usage.output_tokens > 0
    council = plain.model_extra["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok"] and council["agreement"] == 1.0
    # `usage` as one model's answer counts it (the context an agent compacts by), `council.usage` every request's
    members = council["members"]
    speaker = next(m for m in members if m["name"] == council["speaker"])
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (max(m["prompt_tokens"] for m in members),
                                                                     speaker["completion_tokens"])
    assert council["usage"]["prompt_tokens"] == sum(m["prompt_tokens"] for m in members)
    assert council["usage"]["completion_tokens"] == sum(m["completion_tokens"] for m in members)
    ballot = httpx.get(f"{agents.url}/v1/ballots/{council['ballot_id']}", headers={"Authorization": f"Bearer {KEY}"})
    assert ballot.status_code == 200 and ballot.json()["council"] == "agents"

    with client.responses.stream(model="agents", input=ADD, instructions="You are a calculator.") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert shape(final) == shape(plain) and final.model_extra["council"]["answer"] == council["answer"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    events = list(client.responses.create(model="agents", input=ADD, instructions="You are a calculator.",
                                          stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == plain.output_text

    # tokens: each distinct member counts its own prompt, the largest is the answer; the model counts alone
    counted = client.responses.input_tokens.count(model="agents", input=ADD)
    assert counted.input_tokens > 0 and counted.object == "response.input_tokens"
    assert {m["input_tokens"] for m in counted.model_extra["council"]["members"]} == {counted.input_tokens}
    alone = client.responses.input_tokens.count(model="qwen", input=ADD)
    assert alone.input_tokens == counted.input_tokens  # same model, same template, no member system prompt
    # with tools, the members also read the council's tool instructions: counted, as they are sent
    tooled = client.responses.input_tokens.count(model="agents", input=ADD, tools=[WEATHER])  # type: ignore[list-item]
    bare = client.responses.input_tokens.count(model="qwen", input=ADD, tools=[WEATHER])  # type: ignore[list-item]
    assert tooled.input_tokens > bare.input_tokens > alone.input_tokens


def test_errors_come_as_the_sdk_reads_them(agents: CouncilServer) -> None:
    client = sdk(agents)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="agents", input="x", temperature="hot")  # type: ignore[arg-type]
    assert bad.value.code == "invalid_temperature"
    with pytest.raises(openai.BadRequestError) as hosted:
        client.responses.create(model="agents", input="x", tools=[{"type": "web_search"}])
    assert hosted.value.code == "unsupported_tool"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="nobody", input="x")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        sdk(agents, "wrong").responses.create(model="agents", input="x")
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model="agents", input="x", previous_response_id="resp_never")
    assert missing.value.code == "previous_response_not_found" and "resp_never" in missing.value.message
    with pytest.raises(openai.BadRequestError) as count:
        client.responses.input_tokens.count(model="agents", input=[{"type": "item_reference", "id": "x"}])
    assert count.value.code == "invalid_input"


@pytest.mark.timeout(1200)  # five council answers of up to 60 tokens each, on a CPU other tests share
def test_a_function_call_round_trip_through_a_council(agents: CouncilServer) -> None:
    """The members write the call as JSON text; the council recovers it and returns a `function_call` item; its
    output comes back by `previous_response_id` and reaches every member, which answer from it."""
    client = sdk(agents)
    ask = "What is the weather in Paris?"
    first = client.responses.create(model="agents", input=ask, tools=[WEATHER])  # type: ignore[list-item]
    calls = [i for i in first.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})], first.output
    assert calls[0].call_id.startswith("call_") and first.status == "completed"
    assert all(m["recovered"] for m in first.model_extra["council"]["members"])
    with client.responses.stream(model="agents", input=ask, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        streamed = stream.get_final_response()
    assert shape(streamed) == shape(first)

    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C and sunny"}
    second = client.responses.create(model="agents", previous_response_id=first.id, input=[result],
                                     tools=[WEATHER], tool_choice="none")  # type: ignore[list-item]
    assert second.previous_response_id == first.id and "21" in second.output_text, second.output
    council = second.model_extra["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok"]
    # the same turn sent whole (the agent keeps the history itself) reads as the continued one
    whole = client.responses.create(model="agents", tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
                                    input=[{"role": "user", "content": ask}, calls[0].model_dump(), result])
    assert whole.usage is not None and second.usage is not None and "21" in whole.output_text
    assert whole.usage.input_tokens == second.usage.input_tokens  # the members were sent the same conversation

    # `store: false` keeps nothing to continue from
    unstored = client.responses.create(model="agents", input=ADD, store=False)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="agents", input="and 3+3?", previous_response_id=unstored.id)


def test_a_model_is_relayed_and_its_stream_completed(agents: CouncilServer) -> None:
    """llama-server answers the Responses API itself; its stream reaches the SDK with sequence numbers and
    indexes, and `previous_response_id` (which llama-server refuses) works through the stored conversation."""
    client = sdk(agents)
    plain = client.responses.create(model="qwen", input=ADD, temperature=0, max_output_tokens=8)
    assert plain.status == "completed" and "4" in plain.output_text and plain.id.startswith("resp_")
    assert plain.usage is not None and plain.usage.input_tokens > 0
    with client.responses.stream(model="qwen", input=ADD, temperature=0, max_output_tokens=8) as stream:
        final = stream.get_final_response()
    assert shape(final) == shape(plain)
    events = list(client.responses.create(model="qwen", input=ADD, temperature=0, max_output_tokens=8, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(e.output_index == 0 and e.content_index == 0 for e in deltas)
    assert "".join(e.delta for e in deltas) == plain.output_text

    # a named function: llama-server reads `tool_choice` only as a string (the object became `auto` over every tool)
    clock = {**WEATHER, "name": "get_time", "description": "Get the current time in a city"}
    named = client.responses.create(model="qwen", input=ADD, max_output_tokens=1, tools=[WEATHER, clock],  # type: ignore[list-item]
                                    tool_choice={"type": "function", "name": "get_weather"})
    only = client.responses.create(model="qwen", input=ADD, max_output_tokens=1, tools=[WEATHER],  # type: ignore[list-item]
                                   tool_choice="required")
    assert named.usage is not None and only.usage is not None
    assert named.usage.input_tokens == only.usage.input_tokens  # offered that tool alone

    nxt = "Now add 1 to it. The number only."
    alone = client.responses.input_tokens.count(model="qwen", input=nxt).input_tokens
    counted = client.responses.input_tokens.count(model="qwen", input=nxt, previous_response_id=plain.id)
    later = client.responses.create(model="qwen", input=nxt, temperature=0, max_output_tokens=8,
                                    previous_response_id=plain.id)
    assert later.status == "completed" and later.output_text and later.previous_response_id == plain.id
    assert later.usage is not None and plain.usage.output_tokens > 0
    assert later.usage.input_tokens == counted.input_tokens > alone + plain.usage.output_tokens  # the earlier turn too
    with client.responses.stream(model="qwen", input=nxt, temperature=0, max_output_tokens=8,
                                 previous_response_id=later.id) as stream:
        longer = stream.get_final_response()
    assert longer.usage is not None and longer.usage.input_tokens > later.usage.input_tokens  # and a third
