"""A streamed passthrough whose member breaks off mid-stream, whose client goes away, or whose relaying fails in
the router's own code: the client reads an error event the SDKs raise (the headers, 200, are long gone), and the
metrics count 502, 499 or 500, not the member's 200. Stubs provoke the faults: a real llama-server cannot be made
to drop a stream at a chosen chunk, nor the router to fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from council.server.routes.passthrough import relay_through
from council.voting.client import Endpoint, HttpMemberClient, Relayed


def sse_stream(chunks: list[dict[str, Any]]) -> contextlib.AbstractAsyncContextManager[Any]:
    """What a stand-in member's `stream` opens: `chunks` as server-sent events, then `[DONE]`."""

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[tuple[Relayed, AsyncIterator[bytes]]]:
        async def events() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        yield Relayed(200, "text/event-stream", b""), events()

    return opened()


pytestmark = pytest.mark.anyio

FIRST = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'


async def _breaking(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers any request with a chunked event stream, one chunk of it, then closes the connection."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n%s\r\n" % (len(FIRST), FIRST))
    await writer.drain()
    writer.close()


@pytest.fixture
async def member() -> AsyncIterator[HttpMemberClient]:
    server = await asyncio.start_server(_breaking, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with aiohttp.ClientSession() as http:
        yield HttpMemberClient(lambda: Endpoint("m/0", url, "key", http))
    server.close()
    await server.wait_closed()


async def test_a_stream_the_member_breaks_ends_with_an_error_event_and_counts_as_502(
        member: HttpMemberClient) -> None:
    statuses: list[int] = []
    response = await relay_through(member, b"{}", "/v1/chat/completions", True, statuses.append)
    assert response.status_code == 200
    chunks = [chunk async for chunk in response.body_iterator]
    assert chunks[0] == FIRST
    error = json.loads(bytes(chunks[-1]).removeprefix(b"data: "))["error"]
    assert error["code"] == "member_failed" and "member m/0's stream broke" in error["message"]
    assert statuses == [502]


async def test_a_stream_the_client_leaves_counts_as_499(member: HttpMemberClient) -> None:
    statuses: list[int] = []
    response = await relay_through(member, b"{}", "/v1/chat/completions", True, statuses.append)
    body = response.body_iterator
    assert await anext(body) == FIRST  # type: ignore[call-overload]
    await body.aclose()  # type: ignore[attr-defined]
    assert statuses == [499]


class _Faulty:
    """A member client whose stream opens well and then fails in the router's own code (no member fault)."""

    def stream(self, payload: bytes, path: str, width: int) -> contextlib.AbstractAsyncContextManager[Any]:
        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[tuple[Relayed, AsyncIterator[bytes]]]:
            async def chunks() -> AsyncIterator[bytes]:
                yield FIRST
                raise ValueError("a bug")

            yield Relayed(200, "text/event-stream", b""), chunks()

        return opened()


async def test_a_fault_of_the_router_while_relaying_ends_with_an_error_event_and_counts_as_500() -> None:
    statuses: list[int] = []
    response = await relay_through(_Faulty(), b"{}", "/v1/chat/completions", True,  # type: ignore[arg-type]
                                   statuses.append)
    chunks = [chunk async for chunk in response.body_iterator]
    assert chunks[0] == FIRST
    error = json.loads(bytes(chunks[-1]).removeprefix(b"data: "))["error"]
    assert error["code"] == "internal_error" and "ValueError" in error["message"]
    assert statuses == [500]


class _Written:
    """A member whose whole answer is two calls written as text (a small model's way), relayed as llama-server
    returns it."""

    def __init__(self, cities: tuple[str, ...] = ("Paris", "Rome")) -> None:
        self.cities = cities

    async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
        content = json.dumps([{"name": "get_weather", "arguments": {"city": c}} for c in self.cities])
        return Relayed(200, "application/json", json.dumps({"choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}).encode())


async def test_a_relayed_models_recovered_calls_keep_to_parallel_tool_calls_false() -> None:
    """A model relayed with `recover_tool_calls`: calls written as text became `tool_calls`, all of them, though
    the request said `parallel_tool_calls: false` (the server holds only its own native calls to one)."""
    from council.server.routes.passthrough import _toolbox

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    for parallel, cities in ((False, ["Paris"]), (True, ["Paris", "Rome"])):
        payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Paris and Rome?"}],
                              "tools": [tool], "parallel_tool_calls": parallel}).encode()
        response = await relay_through(_Written(), payload, "/v1/chat/completions", False,  # type: ignore[arg-type]
                                       toolbox=_toolbox(payload))
        choice = json.loads(bytes(response.body))["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert [json.loads(c["function"]["arguments"])["city"] for c in choice["message"]["tool_calls"]] == cities


async def test_a_relayed_models_call_written_twice_is_one_call_with_parallel_tool_calls_false() -> None:
    """The same call written twice came back as two identical `tool_calls` (only distinct calls were held to one),
    so the agent ran the action twice; a council, voting on the set, returned one."""
    from council.server.routes.passthrough import _toolbox

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Paris?"}], "tools": [tool],
                          "parallel_tool_calls": False}).encode()
    response = await relay_through(_Written(("Paris", "Paris")), payload,  # type: ignore[arg-type]
                                   "/v1/chat/completions", False, toolbox=_toolbox(payload))
    choice = json.loads(bytes(response.body))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]] == [{"city": "Paris"}]


class _Thinking:
    """A thinking model's stream whose reply is a call written as text, after its reasoning, as llama-server
    streams them (the reasoning as `reasoning_content` deltas, with their logprobs)."""

    def stream(self, payload: bytes, path: str, width: int) -> contextlib.AbstractAsyncContextManager[Any]:
        text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
        deltas = [{"role": "assistant", "content": None}, {"reasoning_content": "Paris "},
                  {"reasoning_content": "weather."}, *({"content": text[i:i + 9]} for i in range(0, len(text), 9))]
        logprobs = {"content": [{"token": "Paris", "logprob": -0.5}]}
        chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None,
                                **({"logprobs": logprobs} if "reasoning_content" in d else {})}]} for d in deltas]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

        return sse_stream(chunks)


async def test_a_relayed_streams_recovered_calls_keep_its_reasoning_and_logprobs() -> None:
    """Streamed, a reply recovered as calls lost its `reasoning_content` and logprobs (only the calls and the
    finish chunk were replayed), which the same reply unstreamed keeps."""
    from council.server.routes.passthrough import _toolbox

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Paris?"}], "tools": [tool],
                          "stream": True}).encode()
    response = await relay_through(_Thinking(), payload, "/v1/chat/completions", True,  # type: ignore[arg-type]
                                   toolbox=_toolbox(payload))
    text = b"".join([bytes(c) async for c in response.body_iterator]).decode()
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    choices = [json.loads(d)["choices"][0] for d in data[:-1]]
    deltas = [c["delta"] for c in choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Paris weather."
    assert not any(d.get("content") for d in deltas)
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls") or []] == ["get_weather"]
    assert len([c for c in choices if c.get("logprobs")]) == 2
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["tool_calls"]


async def test_a_relayed_stream_held_for_recovery_sends_keep_alives_and_the_same_events() -> None:
    """Held back while it may be calls, a relayed stream sent nothing for as long as the model wrote (a proxy's
    idle timeout could cut it): it sends the comment a council's held stream sends, before any event, and the
    events themselves are the ones sent without it."""
    from council.server.routes.passthrough import KEEPALIVE, _recovering, _toolbox

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Paris?"}], "tools": [tool],
                          "stream": True}).encode()
    text = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'
    chunks = [{"choices": [{"index": 0, "delta": {"content": text[i:i + 5]}, "finish_reason": None}]}
              for i in range(0, len(text), 5)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

    async def relayed(keepalive_s: float) -> list[bytes]:
        toolbox = _toolbox(payload)
        assert toolbox is not None
        async with sse_stream(chunks) as (_head, events):
            return [bytes(c) async for c in _recovering(events, toolbox, keepalive_s)]

    at_once, patient = await relayed(0.0), await relayed(3600.0)
    kept = [c for c in at_once if c == KEEPALIVE]
    assert len(kept) == len(chunks) + 1  # one before each event it held back (here: every one, `[DONE]` too)
    assert at_once[:len(kept)] == kept and KEEPALIVE not in patient
    def events(sent: list[bytes]) -> bytes:  # a recovered call's id is drawn anew on each run
        return re.sub(rb'"id":"[^"]+"', b'"id":""', b"".join(c for c in sent if c != KEEPALIVE))

    assert events(at_once) == events(patient)
    assert b'"tool_calls"' in patient[0] and b'"finish_reason":"tool_calls"' in b"".join(patient)
