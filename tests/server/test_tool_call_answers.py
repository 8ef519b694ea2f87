"""What a council or a relayed model returns as tool calls, driven in process (scripted seats, a scripted
passthrough process): calls whose arguments orjson cannot write, a named `tool_choice`, a model relayed with
`recover_tool_calls`. No llama-server is started."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from council.server.app import create_app
from council.server.router import Router
from tests.server.test_app import KEY, _router
from tests.voting.fakes import FakeClient, Say

pytestmark = pytest.mark.anyio

ADD = {"name": "add", "parameters": {"type": "object", "properties": {"n": {"type": "integer"},
                                                                      "note": {"type": "string"}}}}
ASKED = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}],
                                  "tools": [{"type": "function", "function": ADD}]},
         "/v1/messages": {"max_tokens": 16, "messages": [{"role": "user", "content": "x"}],
                          "tools": [{"name": "add", "input_schema": ADD["parameters"]}]},
         "/v1/responses": {"input": "x", "tools": [{"type": "function", **ADD}]}}


def _seated(tmp_path: Path, *replies: Say) -> Router:
    router = _router(tmp_path)
    engine = router.engines["c"]
    engine.seats = [dataclasses.replace(seat, client=FakeClient(reply))
                    for seat, reply in zip(engine.seats, replies, strict=True)]
    return router


def _client(router: Router) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(router), raise_app_exceptions=False),
                             base_url="http://council", headers={"Authorization": f"Bearer {KEY}"})


def _events(text: str) -> list[Any]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


# Arguments that pass the tool's schema but that orjson refuses to write: an integer past 64 bits (JSON Schema's
# `integer` has no bound) and a lone UTF-16 surrogate escape (half an emoji).
BEYOND_ORJSON = {"integer past 64 bits": ('{"n": 123456789012345678901234567890}',
                                          {"n": 123456789012345678901234567890}),
                 "lone surrogate": ('{"note": "sunny \\ud83d"}', {"note": "sunny \ud83d"})}


@pytest.mark.parametrize("written", ["native", "text"])
@pytest.mark.parametrize("arguments", list(BEYOND_ORJSON))
async def test_a_valid_call_whose_arguments_orjson_cannot_write_is_answered_whole_and_streamed(
        tmp_path: Path, arguments: str, written: str) -> None:
    """Such a call was a 500 whole, and streamed the answer stopped after its arguments, with no finish chunk,
    error event or `[DONE]`, counted as 499 and 500; on the Messages and Responses APIs a lone surrogate was a
    500 whole. Every API now answers with the call as the model wrote it."""
    raw, parsed = BEYOND_ORJSON[arguments]
    if written == "native":
        reply = Say("", message={"role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "add", "arguments": raw}}]})
    else:
        reply = Say('{"name": "add", "arguments": ' + raw + "}")
    router = _seated(tmp_path, reply, reply)
    async with _client(router) as http:
        whole = await http.post("/v1/chat/completions", json={"model": "c", **ASKED["/v1/chat/completions"]})
        assert whole.status_code == 200, whole.text
        choice = whole.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == parsed
        assert whole.json()["council"]["members"][0]["calls"][0]["arguments"] == parsed

        streamed = await http.post("/v1/chat/completions",
                                   json={"model": "c", **ASKED["/v1/chat/completions"], "stream": True})
        events = _events(streamed.text)
        assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1]), events
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
        assert json.loads(events[-3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]) == parsed

        for path in ("/v1/messages", "/v1/responses"):
            answered = await http.post(path, json={"model": "c", **ASKED[path]})
            assert answered.status_code == 200, (path, answered.text)
    metrics = generate_latest(router.metrics.registry).decode()
    counted = [line for line in metrics.splitlines() if line.startswith("council_requests_total{")]
    assert counted == ['council_requests_total{model="c",route="chat",status="200"} 3.0',
                       'council_requests_total{model="c",route="messages",status="200"} 1.0'], counted
