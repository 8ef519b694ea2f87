"""A host's `/internal/members/{process}/...` in process: what a router on another host relays to this host's
processes, and what those calls hold here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from council.server.app import create_app
from council.server.router import Router
from council.voting.client import Relayed
from tests.server.test_app import KEY, HeldMember, _leaving_client, _router
from tests.servers import until

pytestmark = pytest.mark.anyio
CLUSTER_KEY = "cluster-key-0123456789abcdef"


@dataclass
class Recorder:
    """The process's client, recording the width (slots and rate) each relayed call asks for."""

    widths: list[int] = field(default_factory=list)

    async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
        self.widths.append(width)
        return Relayed(200, "application/json", b"{}")


@pytest.fixture
def host(tmp_path: Path) -> Router:
    router = _router(tmp_path)
    router.registry.cluster_key = CLUSTER_KEY
    return router


@pytest.fixture
async def peer(host: Router) -> AsyncIterator[httpx.AsyncClient]:
    """A router on another host, calling this one with the cluster key."""
    transport = httpx.ASGITransport(app=create_app(host))
    async with httpx.AsyncClient(transport=transport, base_url="http://host",
                                 headers={"Authorization": f"Bearer {CLUSTER_KEY}"}) as http:
        yield http


@pytest.mark.parametrize(("body", "width"), [
    ({"model": "m", "prompt": ["a", "b", "c"], "n": 2}, 6),
    ({"model": "m", "prompt": ["a", "b", "c", "d", "e", "f", "g", "h"]}, 8),
    ({"model": "m", "prompt": [1, 2, 3], "n": 2}, 2),  # token ids: one prompt
    ({"model": "m", "prompt": "a", "n": 3}, 3),
])
async def test_a_relayed_completion_holds_a_slot_per_prompt_and_choice(host: Router, peer: httpx.AsyncClient,
                                                                       body: dict[str, Any], width: int) -> None:
    """llama-server runs `n` tasks for each prompt of a list: the host holds that many of the process's slots, as
    the public /v1/completions does (it held `n` alone, so 8 prompts took 1 slot of the process's `parallel`)."""
    recorder = Recorder()
    assert host.assembly is not None
    host.assembly.ready_client = lambda process: recorder  # type: ignore[method-assign]
    reply = await peer.post("/internal/members/c/0/v1/completions", content=json.dumps(body))
    assert reply.status_code == 200, reply.text
    assert recorder.widths == [width]
    # A chat completion's prompt is its messages: `n` alone.
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2, "prompt": ["a", "b"]}
    assert (await peer.post("/internal/members/c/0/v1/chat/completions", content=json.dumps(chat))).status_code == 200
    assert recorder.widths == [width, 2]


async def test_a_body_nested_past_the_decoder_is_relayed_for_the_process_to_refuse(host: Router,
                                                                                   peer: httpx.AsyncClient) -> None:
    """JSON nested deeper than the decoder's stack was a RecursionError, a 500: it is relayed as any broken body
    (the process answers it itself), one slot wide."""
    recorder = Recorder()
    assert host.assembly is not None
    host.assembly.ready_client = lambda process: recorder  # type: ignore[method-assign]
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = await peer.post("/internal/members/c/0/v1/chat/completions", content=deep)
    assert reply.status_code == 200, reply.text
    assert recorder.widths == [1]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/messages"])
async def test_a_router_hanging_up_closes_the_hosts_member_request(host: Router, path: str) -> None:
    """Every one-seat council call reaches a host as a non-streamed relay; when the calling router drops it (an
    early stop, a client that left its council) the host's member request closes too, freeing its slot. Before,
    the host waited on the member to the end of an answer nobody read."""
    host.registry.cluster_key = KEY  # the raw-ASGI client sends KEY
    member = HeldMember()
    assert host.assembly is not None
    host.assembly.ready_client = lambda process: member  # type: ignore[method-assign]
    left, task = _leaving_client(create_app(host), f"/internal/members/c/0{path}",
                                 {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    await until(lambda: member.in_flight == 1, 5, "the member asked")
    left.set()
    await asyncio.wait_for(task, 5)
    assert member.cancelled == 1 and member.in_flight == 0


async def test_a_call_past_the_body_limit_is_refused_as_on_the_public_routes(host: Router,
                                                                              peer: httpx.AsyncClient) -> None:
    """`/internal/...` read a body of any size into memory, where the public routes refuse one past
    `server.max_body` with 413. It now refuses past the same limit, with headroom for what a council adds to its
    client's body (a member's system prompt, tool instructions), with the same error, declared or chunked; nothing
    reaches the process."""
    from council.server.routes.internal import BODY_HEADROOM

    recorder = Recorder()
    assert host.assembly is not None
    host.assembly.ready_client = lambda process: recorder  # type: ignore[method-assign]
    limit = BODY_HEADROOM * host.policy.server.max_body
    path = "/internal/members/c/0/v1/chat/completions"

    def body(size: int) -> bytes:
        head, tail = b'{"model": "m", "messages": [{"role": "user", "content": "', b'"}]}'
        return head + b"x" * (size - len(head) - len(tail)) + tail

    async def chunked(raw: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1 << 16):
            yield raw[start:start + (1 << 16)]

    for content in (body(limit + 1), chunked(body(limit + 1))):
        refused = await peer.post(path, content=content)
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["code"] == "body_too_large", refused.text
        assert refused.json()["error"]["message"] == f"request body over {limit} bytes"
    assert recorder.widths == []
    larger_than_public = body(host.policy.server.max_body + 1)  # what a council may send for a body within it
    assert (await peer.post(path, content=larger_than_public)).status_code == 200
    assert (await peer.post(path, content=chunked(body(limit)))).status_code == 200
    assert recorder.widths == [1, 1]
