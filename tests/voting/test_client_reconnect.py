"""A member that closes a kept-alive connection: the next call on it fails to send, and the client sends it once
more on a fresh connection (every kind of call: `complete`, `relay`, `stream`) instead of failing the member. A
stub provokes it: a real llama-server closes idle connections only after its keep-alive timeout, at no moment a
test can pick."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from council.voting.client import Endpoint, HttpMemberClient, MemberFailed

pytestmark = pytest.mark.anyio

ANSWER = json.dumps({"choices": [{"message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()


class DroppingMember:
    """Answers the first request on each connection and keeps it open; a second request on the same connection
    is read, then the connection is closed without an answer (as a member whose keep-alive ran out does).
    `drop_every` closes every connection at its first request instead (a member that is gone for good)."""

    def __init__(self, drop_every: bool = False) -> None:
        self.drop_every = drop_every
        self.connections = 0
        self.answered = 0
        self.server: asyncio.Server | None = None

    async def _request(self, reader: asyncio.StreamReader) -> None:
        """Read one request, head and body."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            served = 0
            while True:
                try:
                    await self._request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if served or self.drop_every:
                    return  # closed under the client's feet
                served += 1
                self.answered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
                await writer.drain()
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection at most, so the second call must take the kept-alive one.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


async def test_a_call_on_a_connection_the_member_closed_is_sent_again(http: aiohttp.ClientSession) -> None:
    member = DroppingMember()
    async with member as url:
        client = HttpMemberClient(lambda: Endpoint("m/0", url, "key", http))
        first = await client.complete({"messages": []})
        second = await client.complete({"messages": []})  # its kept-alive connection is dropped: sent again
        assert (first.status, second.status) == ("ok", "ok") and second.text == "4"
        relayed = await client.relay(b"{}", "/v1/chat/completions")  # the same for a relayed call
        assert relayed.status == 200 and json.loads(relayed.body) == json.loads(ANSWER)
        async with client.stream(b"{}", "/v1/chat/completions") as (head, chunks):  # and a streamed passthrough
            body = b"".join([chunk async for chunk in chunks])
        assert head.status == 200 and json.loads(body) == json.loads(ANSWER)
        assert member.answered == 4 and member.connections == 4  # each retry on a fresh connection


async def test_a_member_that_drops_every_connection_fails_after_one_retry(http: aiohttp.ClientSession) -> None:
    member = DroppingMember(drop_every=True)
    async with member as url:
        client = HttpMemberClient(lambda: Endpoint("m/0", url, "key", http))
        reply = await client.complete({"messages": []})
        assert reply.status == "error" and reply.error and "ServerDisconnected" in reply.error
        with pytest.raises(MemberFailed, match="member m/0 failed: ServerDisconnectedError"):
            await client.relay(b"{}", "/v1/chat/completions")
        with pytest.raises(MemberFailed, match="member m/0 failed: ServerDisconnectedError"):
            async with client.stream(b"{}", "/v1/chat/completions"):
                pass
        assert member.connections == 6 and member.answered == 0  # two tries each, never more
