"""A grouped request's choices that an early stop cuts still count the tokens they had generated: the client keeps
each open choice as it stands (`Streaming`). A stub streams the choices in an order a test can fix; the live test
(tests/voting/test_engine.py, early stop inside a sample group) shows the same against llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from council.voting.client import Endpoint, HttpMemberClient, Streaming
from tests.servers import serving

pytestmark = pytest.mark.anyio


def _event(doc: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _chunk(index: int, delta: dict[str, object], finish: str | None = None) -> bytes:
    return _event({"choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


@contextlib.asynccontextmanager
async def member(closed: asyncio.Event) -> AsyncIterator[str]:
    """Choice 1 writes five tokens, choice 0 two and ends (with its usage); then choice 1 goes on until the
    client closes the request."""

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index in (0, 1):
                await response.write(_chunk(index, {"role": "assistant", "content": None}))
            for token in ("a", "b", "c", "d", "e"):
                await response.write(_chunk(1, {"content": token}))
            for token in ("o", "k"):
                await response.write(_chunk(0, {"content": token}))
            await response.write(_chunk(0, {}, "stop"))
            await response.write(_event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}))
            while True:  # still generating
                await response.write(b": waiting\n\n")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            closed.set()
            raise
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with serving(app) as url:
        yield url


async def test_a_choice_cut_by_closing_the_request_keeps_its_tokens() -> None:
    closed = asyncio.Event()
    async with member(closed) as url, aiohttp.ClientSession() as http:
        client = HttpMemberClient(lambda: Endpoint("m/0", url, "key", http))
        streaming = Streaming()
        async with contextlib.aclosing(client.choices({"messages": []}, 2, streaming)) as got:
            async for index, reply in got:
                assert (index, reply.status, reply.text, reply.completion_tokens) == (0, "ok", "ok", 2)
                break  # the vote is decided: the request closes
        await asyncio.wait_for(closed.wait(), 10)
        # The cut choice: its five generated tokens (not the role chunk); the finished one is no longer open.
        assert streaming.tokens(1) == 5 and streaming.tokens(0) == 0 and list(streaming) == [1]
