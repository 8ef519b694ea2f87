"""A streamed request's admission (its key's in-flight count, its council's or model's queue place) and what its
stream holds are given back however the response ends, also when the stream's body never started. Starlette
cancels the response's task wherever it waits, the head's `send` among them (a client that leaves while the
write is paused); the body's generator had not started, so its `finally`, which released all of it, never ran,
not even when it was collected: the key and the queue lost that place for good (the raw ASGI server here pauses
the head's write, as a server applying backpressure does)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from council.server.app import create_app
from council.server.router import Router
from council.voting.client import Relayed
from tests.server.test_app import ASKED, KEY, _router
from tests.voting.fakes import FakeClient, Say

pytestmark = pytest.mark.anyio


async def _left_while_the_head_waits(router: Router, path: str, body: dict[str, object]) -> None:
    """The app over raw ASGI: the head's write is paused (its `send` waits), then the client leaves."""
    incoming = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    left, head = asyncio.Event(), asyncio.Event()

    async def receive() -> dict[str, object]:
        if incoming:
            return incoming.pop(0)
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            head.set()
            await asyncio.Event().wait()  # paused: the client reads nothing

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("council", 80),
             "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]}
    task = asyncio.create_task(create_app(router)(scope, receive, send))
    await asyncio.wait_for(head.wait(), 5)
    left.set()
    await asyncio.wait_for(task, 5)


def _statuses(router: Router, model: str) -> dict[str, float]:
    metrics = text_string_to_metric_families(generate_latest(router.metrics.registry).decode())
    return {s.labels["status"]: s.value for f in metrics for s in f.samples
            if s.name == "council_requests_total" and s.labels["model"] == model}


def _principal_in_flight(router: Router) -> int:
    principal = router.keys.principal(f"Bearer {KEY}", "chat")
    assert principal is not None
    return principal.in_flight


@pytest.mark.parametrize(("path", "asked"), ASKED, ids=[a[0].rsplit("/", 1)[1] for a in ASKED])
async def test_a_council_stream_whose_body_never_started_gives_its_admission_back(tmp_path: Path, path: str,
                                                                                  asked: dict[str, object]) -> None:
    router = _router(tmp_path)
    engine = router.engines["c"]
    fakes = [FakeClient(Say("a", delay=30.0)) for _ in engine.seats]
    engine.seats = [dataclasses.replace(seat, client=fake) for seat, fake in zip(engine.seats, fakes, strict=True)]
    await _left_while_the_head_waits(router, path, {"model": "c", **asked, "stream": True})
    assert router.limits.queues["c"] == 0 and _principal_in_flight(router) == 0
    assert _statuses(router, "c") == {"499": 1.0}  # counted as a client gone, as a stream it left
    assert [f.in_flight for f in fakes] == [0, 0]


class HeldStreamMember:
    """A process's client whose streamed answer is open until its caller closes it."""

    def __init__(self) -> None:
        self.open = 0

    @contextlib.asynccontextmanager
    async def stream(self, body: bytes, path: str, width: int = 1) -> AsyncIterator[tuple[Relayed, Any]]:
        self.open += 1

        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: {}\n\n"

        try:
            yield Relayed(200, "text/event-stream", b""), chunks()
        finally:
            self.open -= 1


@pytest.mark.parametrize(("path", "asked"), [ASKED[0], ASKED[1]], ids=["completions", "messages"])
async def test_a_relayed_stream_whose_body_never_started_closes_the_members_request(
        tmp_path: Path, path: str, asked: dict[str, object]) -> None:
    """The same for a model's stream, which also held the member's request open (its slot) until collected."""
    router = _router(tmp_path)
    member = HeldStreamMember()
    router.passthrough_client = lambda model: member  # type: ignore[method-assign, assignment, return-value]
    await _left_while_the_head_waits(router, path, {"model": "m", **asked, "stream": True})
    assert member.open == 0
    assert router.limits.queues["m"] == 0 and _principal_in_flight(router) == 0
    assert _statuses(router, "m") == {"499": 1.0}
