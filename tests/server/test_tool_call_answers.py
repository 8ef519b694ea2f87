"""What a council or a relayed model returns as tool calls, driven in process (scripted seats, a scripted
passthrough process): calls whose arguments orjson cannot write, a named `tool_choice`, a model relayed with
`recover_tool_calls`. No llama-server is started."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.policy.loading import load_policy
from council.server.app import create_app
from council.server.router import Router, open_router
from council.voting.assembly import assemble
from council.voting.client import Relayed
from tests.policies import policy_yaml
from tests.server.test_app import KEY, _router
from tests.server.test_passthrough_stream import sse_stream
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
    # Each API under its own route (Responses counted as `chat` once, a streamed one and a whole one alike).
    assert counted == ['council_requests_total{model="c",route="chat",status="200"} 2.0',
                       'council_requests_total{model="c",route="messages",status="200"} 1.0',
                       'council_requests_total{model="c",route="responses",status="200"} 1.0'], counted


def _recovering(tmp_path: Path) -> Router:
    """A router for model `m`, relayed with `recover_tool_calls: true` (and council `c` of it)."""
    path = tmp_path / "policy.yaml"
    model = {"path": tmp_path / "absent.gguf", "memory": "100MiB", "recover_tool_calls": True}
    path.write_text(policy_yaml({"m": model}, {"c": {"members": [{"model": "m"}]}}, memory="1GiB", server={
        "api_keys": [{"name": "app", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)
    return router


class _Writes:
    """A model's process whose reply is `text` (a call written as text), whole or streamed; it records the bodies
    it was sent."""

    def __init__(self, text: str) -> None:
        self.text, self.sent = text, list[dict[str, Any]]()

    async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
        self.sent.append(json.loads(body))
        return Relayed(200, "application/json", json.dumps({"choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": self.text}}]}).encode())

    def stream(self, body: bytes, path: str, width: int = 1) -> contextlib.AbstractAsyncContextManager[Any]:
        self.sent.append(json.loads(body))
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": self.text},
                                "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]

        return sse_stream(chunks)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_named_tool_choice_holds_a_relayed_models_recovered_calls_to_that_function(
        tmp_path: Path, stream: bool) -> None:
    """Naming `get_time`, an agent got back a `get_weather` call the model wrote as text (a council makes that call
    invalid), and llama-server was sent the object, which it reads as `auto`. The model is now sent what a
    council's members are: the named tool alone, required; a call to another function stays the text it was."""
    router = _recovering(tmp_path)
    asked = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER, TIME],
             "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "stream": stream}
    for written, called in (('{"name": "get_weather", "arguments": {"city": "Paris"}}', []),
                            ('{"name": "get_time", "arguments": {"tz": "CET"}}', ["get_time"])):
        member = _Writes(written)
        router.passthrough_client = lambda model, member=member: member  # type: ignore[method-assign,misc]
        async with _client(router) as http:
            answer = await http.post("/v1/chat/completions", json=asked)
        assert answer.status_code == 200, answer.text
        assert member.sent[0]["tool_choice"] == "required" and member.sent[0]["tools"] == [TIME]
        if stream:
            deltas = [e["choices"][0]["delta"] for e in _events(answer.text)[:-1]]
            calls = [c["function"]["name"] for d in deltas for c in d.get("tool_calls") or []]
            text = "".join(d.get("content") or "" for d in deltas)
        else:
            message = answer.json()["choices"][0]["message"]
            calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
            text = message.get("content") or ""
        assert calls == called and (text == written) == (not called), (written, calls, text)
    # A body relayed with the object itself (not by this route) is held to the named function all the same.
    from council.server.routes.passthrough import _toolbox
    from council.voting.tools import recovered_calls

    toolbox = _toolbox(json.dumps(asked).encode())
    assert toolbox is not None and recovered_calls('{"name": "get_weather", "arguments": {}}', toolbox) is None


DEEP = {"brackets": "[" * 3000 + "]" * 3000, "objects": '{"a": ' * 3000 + "1" + "}" * 3000,
        "fenced": "```json\n" + "[" * 3000 + "]" * 3000 + "\n```", "tagged": "<tool_call>" + "[" * 3000 + "]" * 3000
        + "</tool_call>", "in prose": "Call it:\n```json\n" + "[" * 3000 + "]" * 3000 + "\n```\nthen answer."}


@pytest.mark.parametrize("shape", list(DEEP))
async def test_a_reply_nested_too_deep_to_read_is_text(tmp_path: Path, shape: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A reply that opens brackets without end (a small model looping `[[[[` to max_tokens) was read for calls
    with Python's JSON decoder, which recursed past Python's limit: RecursionError, a 500 from a model relayed
    with `recover_tool_calls`, and a council logged a traceback for the seat. Such a reply holds no call a schema
    could check: it is the text it was, the council answers with the other seat's call, the relayed model with
    its text."""
    deep = DEEP[shape]
    call = Say('{"name": "add", "arguments": {"n": 1}}')
    router = _seated(tmp_path, Say(deep), call)
    async with _client(router) as http:
        for path in ASKED:
            answer = await http.post(path, json={"model": "c", **ASKED[path]})
            assert answer.status_code == 200, (path, answer.text[:300])
        council = (await http.post("/v1/chat/completions", json={"model": "c", **ASKED["/v1/chat/completions"]}))
    members = council.json()["council"]["members"]
    assert members[0]["status"] != "error" and not members[0].get("calls"), members[0]
    assert members[1]["calls"][0]["name"] == "add", members
    (tmp_path / "relayed").mkdir()
    relayed = _recovering(tmp_path / "relayed")
    for stream in (False, True):
        member = _Writes(deep)
        relayed.passthrough_client = lambda model, member=member: member  # type: ignore[method-assign,misc]
        async with _client(relayed) as http:
            answer = await http.post("/v1/chat/completions", json={"model": "m", **ASKED["/v1/chat/completions"],
                                                                   "stream": stream})
        assert answer.status_code == 200, answer.text[:300]
        if stream:
            deltas = [e["choices"][0]["delta"] for e in _events(answer.text)[:-1]]
            assert "".join(d.get("content") or "" for d in deltas) == deep
        else:
            assert answer.json()["choices"][0]["message"]["content"] == deep
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.records



async def test_the_speakers_words_beside_its_calls_reach_the_agent_on_every_api(tmp_path: Path) -> None:
    """A seat whose calls won and who said something beside them ("I'll add it up.", parsed as tool-call syntax)
    had its words dropped: the council answered `content: null`. Its words come with the calls now, on every API
    and streamed; a call recovered from text (the text is the call) and a seat whose calls differ from the
    council's keep `content` null."""
    said = "I'll add it up."
    native = Say(said, message={"role": "assistant", "content": said, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "add", "arguments": '{"n": 2}'}}]})
    async with _client(_seated(tmp_path, native, native)) as http:
        chat = (await http.post("/v1/chat/completions", json={**ASKED["/v1/chat/completions"], "model": "c"})).json()
        message = chat["choices"][0]["message"]
        assert message["content"] == said and message["tool_calls"][0]["function"]["name"] == "add", message
        streamed = await http.post("/v1/chat/completions",
                                   json={**ASKED["/v1/chat/completions"], "model": "c", "stream": True})
        deltas = [e["choices"][0]["delta"] for e in _events(streamed.text)[:-1] if e.get("choices")]
        assert "".join(d.get("content") or "" for d in deltas) == said
        claude = (await http.post("/v1/messages", json={**ASKED["/v1/messages"], "model": "c"})).json()
        assert [b["type"] for b in claude["content"]] == ["text", "tool_use"] and claude["content"][0]["text"] == said
        response = (await http.post("/v1/responses", json={**ASKED["/v1/responses"], "model": "c"})).json()
        assert [i["type"] for i in response["output"]] == ["message", "function_call"], response["output"]
    recovered = Say('{"name": "add", "arguments": {"n": 2}}')
    (tmp_path / "r").mkdir()
    async with _client(_seated(tmp_path / "r", recovered, recovered)) as http:
        chat = (await http.post("/v1/chat/completions", json={**ASKED["/v1/chat/completions"], "model": "c"})).json()
        assert chat["choices"][0]["message"]["content"] is None
