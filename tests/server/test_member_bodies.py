"""A member that answers 200 with a body its API does not define (no `input_tokens` in a count, no Response object
from `/v1/responses`): the client gets a 502 naming the member's failure, never a 500 (the router's own fault).
A stand-in llama-server provokes it: a real one cannot be made to answer so."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from council.server.app import create_app
from council.voting.client import Endpoint, HttpMemberClient
from tests.server.test_app import KEY, _router
from tests.servers import serving

pytestmark = pytest.mark.anyio

BODIES = {"no count": b'{"nope": 1}', "html": b"<html>busy</html>", "a list": b"[1]", "a string": b'"x"',
          "null output": b'{"id": "resp_1", "output": null}'}


@pytest.fixture
async def answering(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, bytes]]]:
    """The app for council `c` (two seats of model `m`) and model `m`, every request of either sent to a
    stand-in process that answers 200 with `said["body"]`."""
    said = {"body": b"{}"}

    async def answer(_: web.Request) -> web.Response:
        return web.Response(body=said["body"], content_type="application/json")

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    router = _router(tmp_path)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        def member(i: int) -> HttpMemberClient:  # a process per seat: each asked alone (`complete`)
            return HttpMemberClient(lambda: Endpoint(f"m/{i}", url, "key", http), target=f"m/{i}")

        engine = router.engines["c"]
        engine.seats = [dataclasses.replace(s, client=member(i)) for i, s in enumerate(engine.seats)]
        router.passthrough_client = lambda model: member(0)  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=create_app(router), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield client, said


@pytest.mark.parametrize("body", ["no count", "html"])
async def test_a_councils_count_the_member_did_not_give_is_a_502(
        answering: tuple[httpx.AsyncClient, dict[str, bytes]], body: str) -> None:
    """`/v1/messages/count_tokens` on a council read the member's `input_tokens` unguarded: 500 (KeyError,
    JSONDecodeError), where `/v1/responses/input_tokens` answered 502 `count_failed` for the same member."""
    client, said = answering
    said["body"] = BODIES[body]
    messages = await client.post("/v1/messages/count_tokens",
                                 json={"model": "c", "messages": [{"role": "user", "content": "x"}]})
    assert messages.status_code == 502, messages.text
    error = messages.json()["error"]
    assert error["type"] == "api_error" and "could not count the input" in error["message"], error
    responses = await client.post("/v1/responses/input_tokens", json={"model": "c", "input": "x"})
    assert responses.status_code == 502 and responses.json()["error"]["code"] == "count_failed", responses.text


@pytest.mark.parametrize("body", ["a list", "a string", "null output"])
async def test_a_relayed_model_whose_answer_is_no_response_object_is_a_502(
        answering: tuple[httpx.AsyncClient, dict[str, bytes]], body: str) -> None:
    """`/v1/responses` relayed to a model completed the process's answer as a dict with an `output` list: a list, a
    string or `output: null` was a 500 (AttributeError, TypeError). Now 502 `member_error`, counted as such."""
    from prometheus_client.parser import text_string_to_metric_families

    client, said = answering
    said["body"] = BODIES[body]
    reply = await client.post("/v1/responses", json={"model": "m", "input": "x"})
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "member_error" and "Response object" in reply.text, reply.text
    counted = {s.labels["status"] for f in text_string_to_metric_families((await client.get("/metrics")).text)
               for s in f.samples if s.name == "council_requests_total" and s.labels["model"] == "m"}
    assert counted == {"502"}, counted
    said["body"] = json.dumps({"id": "resp_2", "object": "response", "output": [], "status": "completed"}).encode()
    fine = await client.post("/v1/responses", json={"model": "m", "input": "x"})
    assert fine.status_code == 200 and fine.json()["id"] == "resp_2", fine.text
    assert fine.json()["model"] and "x-council-overhead-ms" in fine.headers


@pytest.mark.parametrize(("output", "says"), [
    ([{"type": "function_call", "id": "fc_1", "name": "f", "arguments": "{}"}], "(call_id: Field required)"),
    ([{"type": "web_search_call", "id": "ws_1", "status": "completed"}], "a `web_search_call` item"),
    (["x"], "(not an object)"),
])
async def test_a_model_conversation_a_council_cannot_read_is_a_400_on_the_council(
        answering: tuple[httpx.AsyncClient, dict[str, bytes]], output: list[object], says: str) -> None:
    """A model's Response is stored with the process's own output items; continuing it on a council
    (`previous_response_id`) read them as input items unguarded: an item the council's schema refuses (a call
    without `call_id`, a built-in tool's item) was a 500 (ValidationError). Now a 400 naming the item; the model
    itself still continues it."""
    client, said = answering
    said["body"] = json.dumps({"id": "resp_m", "object": "response", "output": output, "status": "completed"}).encode()
    first = await client.post("/v1/responses", json={"model": "m", "input": "hi"})
    assert first.status_code == 200, first.text
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        reply = await client.post(path, json={"model": "c", "input": "and?", "previous_response_id": "resp_m"})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "invalid_previous_response" and says in error["message"], error
    said["body"] = json.dumps({"id": "resp_n", "object": "response", "output": [], "status": "completed"}).encode()
    again = await client.post("/v1/responses", json={"model": "m", "input": "and?", "previous_response_id": "resp_m"})
    assert again.status_code == 200, again.text


async def test_a_reply_whose_content_is_text_parts_is_one_text_on_every_api(
        answering: tuple[httpx.AsyncClient, dict[str, bytes]]) -> None:
    """A member may answer `content` as a list of parts (OpenAI-compatible remotes do): the Messages API wrote the
    list into a text block's `text`, and the anthropic SDK's stream accumulator raised TypeError on it."""
    client, said = answering
    said["body"] = json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "forty"}, {"type": "text", "text": "-two"}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    ask = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
    whole = await client.post("/v1/messages", json=ask)
    assert whole.status_code == 200 and whole.json()["content"] == [{"type": "text", "text": "forty-two"}], whole.text
    streamed = await client.post("/v1/messages", json={**ask, "stream": True})
    deltas = [json.loads(line[6:])["delta"] for line in streamed.text.splitlines()
              if line.startswith("data: ") and '"content_block_delta"' in line]
    assert deltas == [{"type": "text_delta", "text": "forty-two"}], streamed.text
    chat = await client.post("/v1/chat/completions", json={k: v for k, v in ask.items() if k != "max_tokens"})
    assert chat.json()["choices"][0]["message"]["content"] == "forty-two", chat.text


async def test_a_streamed_answer_whose_content_is_null_stays_null(
        answering: tuple[httpx.AsyncClient, dict[str, bytes]]) -> None:
    """A reply whose `content` is null (a reasoning model cut off while it thought) was null in the whole answer
    and "" in the stream, so the SDK's stream helpers rebuilt another message than the whole answer is."""
    client, said = answering
    said["body"] = json.dumps({"choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": None, "reasoning_content": "Let me think about"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    ask = {"model": "c", "messages": [{"role": "user", "content": "q"}], "council": {"extract": "text"}}
    whole = (await client.post("/v1/chat/completions", json=ask)).json()
    streamed = await client.post("/v1/chat/completions", json={**ask, "stream": True})
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in streamed.text.splitlines()
              if line.startswith("data: {") and '"choices":[{' in line]
    assert deltas and "content" in deltas[0], streamed.text
    assert [d.get("content") for d in deltas if "content" in d] == [whole["choices"][0]["message"]["content"]]
