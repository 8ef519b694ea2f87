"""Reading one choice of a streamed `n` request from its chunks (the shapes llama-server sends)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from council.members.process import Slots
from council.voting.client import Endpoint, HttpMemberClient, MemberUnavailable, _Choice
from council.voting.engine import extract_reply


def test_a_streamed_choice_reassembles_text_tool_calls_and_logprobs() -> None:
    choice = _Choice()
    choice.add({"index": 2, "delta": {"role": "assistant", "content": None}})
    choice.add({"index": 2, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": ""}}]},
                "logprobs": {"content": [{"token": "<tool_call>", "logprob": -0.1}]}})
    for piece in ('{"city": ', '"Paris"', "}"):
        choice.add({"index": 2, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                    "logprobs": {"content": [{"token": piece, "logprob": -0.3}]}})
    choice.add({"index": 2, "delta": {}, "finish_reason": "tool_calls"})
    reply = choice.reply(12.0, {"completion_tokens": 9, "prompt_tokens": 40}, {"draft_n": 4, "draft_n_accepted": 3},
                         first=False)
    assert reply.status == "ok" and reply.completion_tokens == 9 and reply.draft_acceptance == 0.75
    assert reply.prompt_tokens == 0  # only the first choice back carries the prompt
    call = reply.message["tool_calls"][0]  # type: ignore[index]
    assert call["id"] == "call_1" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert extract_reply(reply, "auto") == 'get_weather({"city":"Paris"})'
    assert reply.logprob is not None and abs(reply.logprob - (-0.1 - 0.9) / 4) < 1e-9


def test_without_a_usage_chunk_a_choice_counts_its_own_tokens() -> None:
    choice = _Choice()
    for word in ("The ", "river", "."):
        choice.add({"index": 0, "delta": {"content": word}})
    reply = choice.reply(5.0, None, {}, first=True)
    assert reply.text == "The river." and reply.completion_tokens == 3
    with_logprobs = _Choice()
    with_logprobs.add({"index": 0, "delta": {"content": "ab"},
                       "logprobs": {"content": [{"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -1.0}]}})
    assert with_logprobs.reply(5.0, None, {}, first=True).completion_tokens == 2  # a chunk may carry several tokens


@pytest.mark.anyio
async def test_a_passthrough_waiting_on_a_process_being_stopped_is_member_unavailable() -> None:
    """A relayed call waiting for the process's slot while the process stops (its HTTP session closes) raised
    aiohttp's RuntimeError('Session is closed'), which the app answered with a 500 (`internal_error`). It is the
    member not being ready: `MemberUnavailable`, 503 `no_ready_member`."""
    from tests.servers import until

    http = aiohttp.ClientSession()
    slots = Slots(1)
    where = Endpoint(name="m/0", url="http://127.0.0.1:9", api_key="k", http=http, slots=slots)
    client = HttpMemberClient(endpoint=lambda: where, target="m")
    held = slots.hold()
    await held.__aenter__()  # a request in flight
    waiting = asyncio.create_task(client.relay(b"{}", "/v1/chat/completions"))
    await until(lambda: slots.waiting == 1, 5, "the relay waiting for the slot")
    await http.close()  # MemberProcess.stop closes the process's session
    await held.__aexit__(None, None, None)  # the one in flight ends: the waiting call gets the slot
    with pytest.raises(MemberUnavailable, match="m/0 was stopped"):
        await waiting
    with pytest.raises(MemberUnavailable, match="m/0 was stopped"):  # a stream the same
        async with client.stream(b"{}", "/v1/chat/completions"):
            pass
    assert slots.free == 1


@pytest.mark.anyio
async def test_a_seat_whose_process_is_not_ready_says_so() -> None:
    """No endpoint is the seat's process not being ready (a member is the policy's entry, which may have several
    processes and seats): the reply and the passthrough's 503 said "member is not ready"."""
    client = HttpMemberClient(endpoint=lambda: None, target="m")
    assert (await client.complete({})).error == "process is not ready"
    assert [reply.error async for _, reply in client.choices({}, 2)] == ["process is not ready"] * 2
    with pytest.raises(MemberUnavailable, match=r"^process is not ready$"):
        await client.relay(b"{}", "/v1/chat/completions")


@pytest.mark.anyio
async def test_a_remote_member_is_sent_chat_parameters_never_litellms_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote member called `litellm.acompletion(**the client's body)`, and litellm reads its own settings from
    its arguments: a chat key's `"base_url"` sent the operator's provider key, and the prompt, to the client's
    server (which could also answer for the seat); `extra_headers` and the rest alike. It is now sent OpenAI's chat
    parameters and the policy's sampling only."""
    from aiohttp import web

    from council.policy.schema import RemoteConfig
    from council.voting.client import RemoteClient
    from tests.servers import serving

    heard: dict[str, list[dict[str, object]]] = {"provider": [], "attacker": []}

    def app(who: str) -> web.Application:
        async def complete(request: web.Request) -> web.Response:
            heard[who].append({"auth": request.headers.get("Authorization"), "x": request.headers.get("X-Sneak"),
                               "body": await request.json()})
            return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": f"from {who}"}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
        served = web.Application()
        served.router.add_post("/v1/chat/completions", complete)
        return served

    monkeypatch.setenv("PROVIDER_KEY", "sk-operator-provider-secret")
    async with serving(app("provider")) as provider, serving(app("attacker")) as attacker:
        client = RemoteClient(RemoteConfig(model="openai/m", api_base=f"{provider}/v1", api_key_env="PROVIDER_KEY"))
        reply = await client.complete({"messages": [{"role": "user", "content": "hi"}], "temperature": 0,
                                       "base_url": f"{attacker}/v1", "api_base": f"{attacker}/v1",
                                       "extra_headers": {"X-Sneak": "1"}, "api_key": "theirs",
                                       "mock_response": "forged", "max_tokens": 5, "service_tier": "flex"})
    assert reply.status == "ok" and reply.text == "from provider", reply
    assert heard["attacker"] == [] and len(heard["provider"]) == 1
    call = heard["provider"][0]
    assert call["auth"] == "Bearer sk-operator-provider-secret" and call["x"] is None
    body = call["body"]
    assert isinstance(body, dict) and body["max_tokens"] == 5 and body["temperature"] == 0
    assert body["service_tier"] == "flex"  # OpenAI's chat parameters pass


def test_a_positive_log_probability_is_read_as_certainty_not_more() -> None:
    """Token logprobs above 0 (a broken or proxied member: llama-server's are at most 0) made a confidence above 1,
    which outweighed the other seats live and which `council tally` then refused to replay ("`confidence` must be
    a probability in (0, 1]")."""
    from council.voting.client import reply_from_openai
    from council.voting.confidence import signals

    tokens = [{"token": "4", "logprob": 0.5}, {"token": "2", "logprob": -0.1}]
    reply = reply_from_openai({"choices": [{"message": {"role": "assistant", "content": "42"},
                                            "logprobs": {"content": tokens}}]}, 1.0)
    assert reply.logprob is not None and -0.1 < reply.logprob <= 0
    found = signals(reply.logprobs, reply.text, "42", "number")
    assert found is not None and all(0 < v <= 1 for v in found.values()), found
