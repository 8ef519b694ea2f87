"""A streamed passthrough whose member breaks off mid-stream, or whose client goes away: the client reads an
error event the SDKs raise (the headers, 200, are long gone), and the metrics count 502 or 499, not the member's
200. A stub provokes the break: a real llama-server cannot be made to drop a stream at a chosen chunk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from council.server.routes.passthrough import relay_through
from council.voting.client import Endpoint, HttpMemberClient

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
