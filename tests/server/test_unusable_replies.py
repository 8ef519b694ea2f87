"""What an agent's SDK is told when no seat's reply can be the answer, through the real `openai` and `anthropic`
SDKs at their default retry policy (two retries of a 5xx unless `x-should-retry: false`). Members are scripted
(a real model cut off or writing an invalid call cannot be made to do it on cue; tests/server/test_cut_off.py asks
real ones): every reply cut off by max_tokens is an unfinished answer (`length`, `max_tokens`, `incomplete`),
as a single model's is, not a 503 the SDKs took for an outage and ran the council for twice more, to the same
end; every reply unusable for what it says is a 502 `no_valid_answer` they do not retry, unless a seat failed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from council.server.app import create_app
from tests.server.test_app import ANTHROPIC_TOOL, CHAT_TOOL, KEY, WEATHER, _router
from tests.voting.fakes import FakeClient, Say

pytestmark = pytest.mark.anyio

CUT_CALL = '[{"name": "get_weather", "arguments": {"ci'
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
TOWN = Say(message={"role": "assistant", "content": None, "tool_calls": [  # `town`: the schema requires `city`
    {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"town": "Paris"}'}}]})


def scripted(tmp_path: Path, *says: Say) -> tuple[Any, list[FakeClient]]:
    router = _router(tmp_path, [{"model": "m"} for _ in says] if len(says) != 2 else None)
    engine = router.engines["c"]
    fakes = [FakeClient(say) for say in says]
    engine.seats = [dataclasses.replace(seat, client=f) for seat, f in zip(engine.seats, fakes, strict=True)]
    return create_app(router), fakes


def sdks(app: Any) -> tuple[openai.AsyncOpenAI, anthropic.AsyncAnthropic]:
    """Both SDKs at their default `max_retries` (2), in process."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://council")
    http2 = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://council")
    return (openai.AsyncOpenAI(api_key=KEY, base_url="http://council/v1", http_client=http),
            anthropic.AsyncAnthropic(api_key=KEY, base_url="http://council", http_client=http2))


async def test_every_seat_cut_off_writing_a_call_is_an_unfinished_answer_on_every_api(tmp_path: Path) -> None:
    cut = Say(text=CUT_CALL, finish_reason="length")
    app, fakes = scripted(tmp_path, cut, cut)
    chat, claude = sdks(app)
    completion = await chat.chat.completions.create(model="c", messages=ASK, tools=[CHAT_TOOL],  # type: ignore[list-item]
                                                    max_tokens=12)
    whole = completion.choices[0]
    assert whole.finish_reason == "length" and whole.message.tool_calls is None
    assert whole.message.content == CUT_CALL  # what was written, as a single model's cut reply shows it
    council = completion.model_extra["council"]  # type: ignore[index]
    assert council["answer"] is None and council["votes"] == {} and council["speaker"] == "c/0"
    assert {m["abstained"] for m in council["members"]} == {"cut off by max_tokens while writing a tool call"}
    async with chat.chat.completions.stream(model="c", messages=ASK, tools=[CHAT_TOOL],  # type: ignore[list-item]
                                            max_tokens=12) as stream:
        with pytest.raises(openai.LengthFinishReasonError) as streamed:  # the helper's word for it, as with OpenAI
            await stream.get_final_completion()
    assert streamed.value.completion.choices[0].message.content == CUT_CALL
    message = await claude.messages.create(model="c", max_tokens=12, messages=ASK,  # type: ignore[arg-type]
                                           tools=[ANTHROPIC_TOOL])  # type: ignore[list-item]
    assert message.stop_reason == "max_tokens" and [b.type for b in message.content] == ["text"]
    response = await chat.responses.create(model="c", input="What is the weather in Paris?", max_output_tokens=12,
                                           tools=[{"type": "function", **WEATHER}])  # type: ignore[list-item]
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert [len(f.sent) for f in fakes] == [4, 4]  # once per request: nothing was retried


async def test_every_seat_cut_off_in_a_native_call_is_an_unfinished_answer_too(tmp_path: Path) -> None:
    """A seat grouped with others (`samples`) is streamed by llama-server, and a call it was writing when max_tokens
    ended it stays in `tool_calls` with partial arguments: that read as an invalid call, and the council answered
    502 `no_valid_answer` where the same call cut off in its text is an unfinished answer."""
    cut = Say("", finish_reason="length", message={"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Pa'}}]})
    app, fakes = scripted(tmp_path, cut, cut)
    chat, claude = sdks(app)
    completion = await chat.chat.completions.create(model="c", messages=ASK, tools=[CHAT_TOOL],  # type: ignore[list-item]
                                                    max_tokens=12)
    whole = completion.choices[0]
    assert whole.finish_reason == "length" and whole.message.tool_calls is None  # no call that fails its schema
    council = completion.model_extra["council"]  # type: ignore[index]
    assert {m["abstained"] for m in council["members"]} == {"cut off by max_tokens while writing a tool call"}
    message = await claude.messages.create(model="c", max_tokens=12, messages=ASK,  # type: ignore[arg-type]
                                           tools=[ANTHROPIC_TOOL])  # type: ignore[list-item]
    assert message.stop_reason == "max_tokens"
    response = await chat.responses.create(model="c", input="What is the weather in Paris?", max_output_tokens=12,
                                           tools=[{"type": "function", **WEATHER}])  # type: ignore[list-item]
    assert response.status == "incomplete"
    assert [len(f.sent) for f in fakes] == [3, 3]  # once per request: nothing was retried


async def test_calls_that_fail_their_schema_everywhere_are_a_502_the_sdks_do_not_retry(tmp_path: Path) -> None:
    app, fakes = scripted(tmp_path, TOWN, TOWN)
    chat, claude = sdks(app)
    with pytest.raises(openai.APIStatusError) as caught:
        await chat.chat.completions.create(model="c", messages=ASK, tools=[CHAT_TOOL])  # type: ignore[list-item]
    assert caught.value.status_code == 502 and caught.value.code == "no_valid_answer"
    assert "every seat abstained: c/0: invalid tool call: get_weather" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.APIStatusError) as refused:
        await claude.messages.create(model="c", max_tokens=64, messages=ASK,  # type: ignore[arg-type]
                                     tools=[ANTHROPIC_TOOL])  # type: ignore[list-item]
    assert refused.value.status_code == 502 and refused.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert [len(f.sent) for f in fakes] == [2, 2]  # one council per request (each SDK would have asked thrice)


async def test_where_a_seat_failed_asking_again_may_help_so_the_sdks_may_retry(tmp_path: Path) -> None:
    app, fakes = scripted(tmp_path, TOWN, TOWN, Say(http_status=500))
    chat, _ = sdks(app)
    chat = chat.with_options(max_retries=1)
    with pytest.raises(openai.APIStatusError) as caught:
        await chat.chat.completions.create(model="c", messages=ASK, tools=[CHAT_TOOL])  # type: ignore[list-item]
    assert caught.value.status_code == 502 and caught.value.code == "no_valid_answer"
    assert "x-should-retry" not in caught.value.response.headers
    assert [len(f.sent) for f in fakes] == [2, 2, 2]  # asked, then retried once
