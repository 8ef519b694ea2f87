"""Agent loops through a council (README, "Agents"): the agent's messages reach every member, `tool_choice` is
honoured, streamed tool calls come in OpenAI's shape. A real `council serve` with a real llama-server member
(Qwen2.5-Coder-0.5B), called with the real openai SDK.

Tool calls come from a remote member (litellm's `openai/` provider) pointed at a small local server that
records every body it is sent: with llama-server b11434, no catalog model's reply comes back as parsed
`tool_calls` (Qwen2.5-Coder's template gets no tool grammar, not even with `tool_choice: "required"`; checked
by hand), and the recorded bodies show what each member was sent. The real member sits in the same council:
it is sent the same agent history, and must answer it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from council.policy.schema import Sampling
from council.server.requests import BadRequest, ChatRequest, validate_body
from council.server.routes.chat import stream_deltas
from council.setup.catalog import by_name
from council.voting.engine import member_payload
from council.voting.request import CouncilRequest
from council.voting.tools import FOLLOW_UP_RULE, ONE_CALL_RULES, RESULTS, TOOL_RULES, calls_as_text
from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer, RunningServer, wait_for

QWEN05 = by_name("qwen2.5-coder-0.5b")
assert QWEN05
AGENT = "You are a travel agent. Use the tools."
OWN = "Member rule: answer in one short sentence."
FINAL = "It is 21 C and sunny in Paris."


def tool(name: str, description: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


TOOLS = [tool("get_weather", "The current weather in a city"), tool("get_time", "The local time in a city")]


# ---- in-process: what each seat is sent ------------------------------------------------------------------


def test_a_members_system_is_added_to_the_agents_never_replaces_it() -> None:
    user = {"role": "user", "content": "q"}
    sent = member_payload({"messages": [{"role": "system", "content": AGENT}, user]}, Sampling(system=OWN))
    assert sent["messages"] == [{"role": "system", "content": f"{AGENT}\n\n{OWN}"}, user]
    parts = {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    sent = member_payload({"messages": [parts, user]}, Sampling(system=OWN))
    assert sent["messages"] == [{"role": "developer", "content": f"a\nb\n\n{OWN}"}, user]  # one system message
    sent = member_payload({"messages": [user]}, Sampling(system=OWN))
    assert sent["messages"] == [{"role": "system", "content": OWN}, user]  # none to add to: it leads
    later = [user, {"role": "system", "content": "later"}]
    assert member_payload({"messages": later}, Sampling(system=OWN))["messages"][1:] == later  # kept, in place
    request = {"messages": [{"role": "system", "content": AGENT}, user]}
    assert member_payload(request, Sampling(temperature=0))["messages"] is request["messages"]  # no copy


def test_tool_history_passes_unchanged_and_the_shared_payload_is_never_changed() -> None:
    history = [{"role": "system", "content": AGENT}, {"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_7", "type": "function", "function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_7", "content": "21 C"}]
    shared = {"messages": history, "tools": TOOLS, "parallel_tool_calls": False}
    frozen = json.dumps(shared)
    sent = member_payload(shared, Sampling(system=OWN, seed=3))
    assert sent["messages"][1:] == history[1:] and sent["messages"][2] is history[2]  # the same objects
    assert sent["tools"] is TOOLS and sent["parallel_tool_calls"] is False
    assert json.dumps(shared) == frozen  # other seats get the request as the agent sent it


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "agent", "messages": [{"role": "user", "content": "weather in Paris?"}], **fields}


def members_payload(**fields: Any) -> Any:
    chat = validate_body(body(**fields), ChatRequest)
    assert isinstance(chat, ChatRequest)
    return chat.council_request(body(**fields))


def test_tool_choice_is_applied_once_for_every_member() -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    request = members_payload(tools=TOOLS, tool_choice=named, parallel_tool_calls=False)
    # llama-server reads tool_choice only as a string: members get only that tool, and must call it
    assert request.members_payload["tools"] == [TOOLS[1]] and request.members_payload["tool_choice"] == "required"
    assert request.tools == [TOOLS[1]] and request.members_payload["parallel_tool_calls"] is False
    request = members_payload(tools=TOOLS, tool_choice="none", parallel_tool_calls=True)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(request.members_payload) and not request.tools
    request = members_payload(tools=TOOLS, tool_choice="required")
    assert request.members_payload["tools"] is TOOLS and request.members_payload["tool_choice"] == "required"
    # evaluation and benchmarks build requests from plain bodies: the same rule
    assert CouncilRequest.of({"messages": [], "tools": TOOLS, "tool_choice": named}).tools == [TOOLS[1]]
    for fields, says in [({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "book"}}},
                          "names function 'book', which `tools` does not declare (declared: get_weather, get_time)"),
                         ({"tool_choice": "required"}, "`tool_choice` 'required' needs `tools`"),
                         ({"tool_choice": named}, "`tool_choice` naming 'get_time' needs `tools`")]:
        with pytest.raises(BadRequest, match="tool_choice") as caught:
            validate_body(body(**fields), ChatRequest)
        assert says in str(caught.value) and caught.value.code == "invalid_tool_choice"


def test_streamed_deltas_accumulate_into_the_message_with_the_sdks_own_accumulator() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Rome"}'}}]
    for message in ({"role": "assistant", "content": None, "tool_calls": calls},
                    {"role": "assistant", "content": "Checking.", "tool_calls": calls},
                    {"role": "assistant", "content": "plain text"},
                    {"role": "assistant", "content": "It is 7.", "reasoning_content": "6+1=7"},
                    {"role": "assistant", "content": None, "reasoning_content": "Oslo, then Rome.",
                     "tool_calls": calls}):
        deltas = stream_deltas(message)
        state = ChatCompletionStreamState()
        ends = "tool_calls" if message.get("tool_calls") else "stop"
        for delta, finish in [*((d, None) for d in deltas), ({}, ends)]:
            state.handle_chunk(ChatCompletionChunk.model_validate(
                {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "agent",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
        got = state.get_final_completion().choices[0].message
        assert got.content == message["content"]
        assert (got.model_extra or {}).get("reasoning_content") == message.get("reasoning_content")  # (was lost)
        keep = {"id": True, "type": True, "function": {"name", "arguments"}}
        assert [c.model_dump(include=keep) for c in got.tool_calls or []] == (message.get("tool_calls") or [])
        if message.get("tool_calls"):  # OpenAI's shape: a call opens with its name and empty arguments
            assert deltas[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
            assert all(set(d) == {"tool_calls"} for d in deltas[1:])


# ---- through a real `council serve` ----------------------------------------------------------------------


class Provider:
    """An OpenAI-compatible provider that records each body: it calls `get_weather` (both tools when asked
    for the weather and the time) with the tools it is given, and answers in text after a tool result."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers["content-length"])))
                provider.bodies.append(doc)
                out = json.dumps(provider.answer(doc)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, doc: dict[str, Any]) -> dict[str, Any]:
        messages, tools = doc["messages"], doc.get("tools") or []
        names = [t["function"]["name"] for t in tools]
        message: dict[str, Any] = {"role": "assistant", "content": f"no call; tools: {names}"}
        if messages[-1]["role"] == "tool" or str(messages[-1].get("content")).startswith(RESULTS):
            message = {"role": "assistant", "content": FINAL}
        elif names:
            wanted = names if "time" in str(messages[-1]["content"]) else names[:1]
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{len(self.bodies)}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps({"city": "Paris"})}}
                for i, name in enumerate(wanted)]}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    stub = Provider()
    yield stub
    stub.close()


def agent_council(serve: Callable[..., CouncilServer], provider: Provider, real_tokens: int = 2) -> CouncilServer:
    """`agent`: two seats on the recording provider (the first with its own system prompt) and a real
    Qwen2.5-Coder-0.5B seat with its own system prompt."""
    far = {"model": "openai/stub", "api_base": provider.url, "api_key_env": "STUB_KEY"}
    server = serve(policy_yaml(
        {"qwen": {"path": QWEN05.path, "ctx_size": 1024}, "far": {"remote": far}},
        {"agent": {"members": [member_entry("far", system=OWN, name="own"), member_entry("far", name="plain"),
                               member_entry("qwen", system=OWN, temperature=0, max_tokens=real_tokens, name="real")],
                   "vote": {"strategy": "majority", "extract": "text"}, "timeout": "600s"}},
        memory="8GiB", slot="1GiB", server={"host": "127.0.0.1", "port": 8080}), env={"STUB_KEY": "unused"})

    def real_ready() -> bool:  # /readyz holds once the remote seats make a quorum: the real one may still load
        members = httpx.get(f"{server.url}/admin/members", timeout=10).json()["members"]
        return all(m["state"] == "ready" for m in members)

    wait_for(real_ready, "the real member to be ready", timeout=300)
    return server


def sdk(server: CouncilServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)


EVERY = {"council": {"early_stop": False}}  # wait for the real member too: its answer is part of the check


def test_three_turn_agent_loop_through_a_council(serve: Callable[..., CouncilServer], provider: Provider,
                                                 start_server: Callable[..., RunningServer]) -> None:
    server = agent_council(serve, provider)
    client = sdk(server)
    messages: list[Any] = [{"role": "system", "content": AGENT}, {"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="agent", messages=messages, tools=TOOLS, parallel_tool_calls=False,
                                           extra_body=EVERY)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    council = first.model_extra["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok", "ok"], [m.get("error") for m in
                                                                             council["members"]]
    asked = list(provider.bodies)
    # the agent's system message reaches both remote seats, then the council's tool instructions (one call: the
    # agent said parallel_tool_calls false); the seat with its own system gets all three, in one message
    told = f"{AGENT}\n\n{ONE_CALL_RULES}"
    assert sorted(b["messages"][0]["content"] for b in asked) == sorted([told, f"{told}\n\n{OWN}"])
    assert all(b["parallel_tool_calls"] is False and b["tools"] == TOOLS for b in asked)

    # turn 2: the agent sends the tool's result under the id the council returned; every member gets both, in
    # the words of the tool rules it was given (its call as the JSON list they ask for, the result as a user
    # turn: in the template's own tags a small model echoed the result back), and may answer from them
    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = client.chat.completions.create(model="agent", messages=messages, tools=TOOLS, extra_body=EVERY)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content == FINAL
    council = second.model_extra["council"]
    assert [m["status"] for m in council["members"]] == ["ok", "ok", "ok"], council  # llama-server took it
    for sent in provider.bodies[len(asked):]:
        assistant, result = sent["messages"][-2:]
        called = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        assert assistant == {"role": "assistant", "content": called}
        returned = f'{RESULTS}\n- get_weather with {{"city": "Paris"}}: {{"temp_c": 21}}'
        assert result == {"role": "user", "content": returned}
        assert FOLLOW_UP_RULE in sent["messages"][0]["content"]

    # the real member read the agent's system message too: its prompt is exactly the template applied to the
    # merged messages (a replaced system prompt would be shorter), as a llama-server of the same model counts it
    alone = start_server(QWEN05.path, ctx=1024)
    told, _ = calls_as_text([m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in messages[1:]])
    merged = [{"role": "system", "content": f"{AGENT}\n\n{TOOL_RULES}{FOLLOW_UP_RULE}\n\n{OWN}"}, *told]
    real = next(m for m in council["members"] if m["name"] == "real")

    def count(msgs: list[Any]) -> int:
        prompt = httpx.post(f"{alone.url}/apply-template", json={"messages": msgs, "tools": TOOLS},
                            headers=alone.headers, timeout=60).json()["prompt"]
        return len(httpx.post(f"{alone.url}/tokenize", json={"content": prompt}, headers=alone.headers,
                              timeout=60).json()["tokens"])

    assert real["prompt_tokens"] == count(merged)
    assert count([{"role": "system", "content": OWN}, *merged[1:]]) < real["prompt_tokens"]


def test_tool_choice_reaches_members_as_llama_server_reads_it(serve: Callable[..., CouncilServer],
                                                             provider: Provider) -> None:
    server = agent_council(serve, provider)
    client = sdk(server)
    ask = [{"role": "user", "content": "Weather and time in Paris?"}]
    named = client.chat.completions.create(model="agent", messages=ask, tools=TOOLS, extra_body=EVERY,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_time"]
    assert [m["status"] for m in named.model_extra["council"]["members"]] == ["ok", "ok", "ok"]
    assert all(b["tools"] == [TOOLS[1]] and b["tool_choice"] == "required" for b in provider.bodies)
    seen = len(provider.bodies)
    none = client.chat.completions.create(model="agent", messages=ask, tools=TOOLS, tool_choice="none",
                                          extra_body=EVERY)
    assert none.choices[0].finish_reason == "stop" and not none.choices[0].message.tool_calls
    assert none.choices[0].message.content == "no call; tools: []"  # the members were given no tools
    assert all("tools" not in b and "tool_choice" not in b for b in provider.bodies[seen:])
    assert [m["status"] for m in none.model_extra["council"]["members"]] == ["ok", "ok", "ok"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="agent", messages=ask, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "book_hotel"}})
    assert caught.value.code == "invalid_tool_choice" and "book_hotel" in caught.value.message
    assert len(provider.bodies) == seen + 2  # refused at the door: no member was asked


def test_streamed_tool_calls_accumulate_to_the_non_streamed_calls(serve: Callable[..., CouncilServer],
                                                                  provider: Provider) -> None:
    server = agent_council(serve, provider)
    client = sdk(server)
    ask = [{"role": "user", "content": "Weather and time in Paris?"}]

    def calls(message: Any) -> list[tuple[str, Any]]:
        return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]

    plain = client.chat.completions.create(model="agent", messages=ask, tools=TOOLS)
    expected = calls(plain.choices[0].message)
    assert expected == [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]

    with client.chat.completions.stream(model="agent", messages=ask, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    assert calls(final.choices[0].message) == expected and final.choices[0].finish_reason == "tool_calls"
    assert all(c.id and c.type == "function" for c in final.choices[0].message.tool_calls or [])

    chunks = list(client.chat.completions.create(model="agent", messages=ask, tools=TOOLS, stream=True))
    built: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            into = built.setdefault(piece.index, {"name": "", "arguments": ""})
            if piece.id:
                assert piece.function and piece.function.name and piece.function.arguments == ""  # it opens
                into["id"], into["name"] = piece.id, piece.function.name
            elif piece.function and piece.function.arguments:
                into["arguments"] += piece.function.arguments
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(built.items())] == expected
    assert all(c["id"] for c in built.values())
    last = chunks[-1]
    assert last.choices[0].finish_reason == "tool_calls" and last.usage is not None
    assert [m["status"] for m in last.model_extra["council"]["members"]][:2] == ["ok", "ok"]

    with client.chat.completions.stream(model="agent", messages=[{"role": "user", "content": "hi"}]) as stream:
        text = stream.get_final_completion()
    assert text.choices[0].message.content == "no call; tools: []" and not text.choices[0].message.tool_calls
