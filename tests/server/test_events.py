"""The event bus behind GET /admin/events, in process: fan-out, bounded queues, threads, close; and what a
chat-scope key may see of it (its own ballots: tests/server/test_ballot_owners.py follows them end to end)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from council.server.auth import Principal
from council.server.events import Event, EventBus
from council.server.routes.events import sse, visible
from tests.server.test_tool_call_answers import Say, _client, _seated

pytestmark = pytest.mark.anyio


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    with bus.subscribe() as one, bus.subscribe() as two:
        assert bus.subscribers == 2
        bus.publish("log", {"member": "a/0", "line": "x"})
        bus.publish("member", {"change": {"new": "ready"}})
        for sub in (one, two):
            first, second = await sub.next(1), await sub.next(1)
            assert first is not None and second is not None
            assert (first.kind, second.kind) == ("log", "member") and first.id < second.id
        assert await one.next(0.01) is None  # nothing more: a timeout, not a hang
    assert bus.subscribers == 0


async def test_a_slow_subscriber_loses_its_oldest_events_and_never_blocks_publish() -> None:
    bus = EventBus(capacity=4)
    with bus.subscribe() as slow:
        for i in range(10):
            bus.publish("log", {"line": str(i)})  # returns at once though nobody reads
        assert slow.dropped == 6
        lines = [(await slow.next(1)).data["line"] for _ in range(4)]  # type: ignore[union-attr]
        assert lines == ["6", "7", "8", "9"]


async def test_publish_from_another_thread_and_close() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        thread = threading.Thread(target=bus.publish, args=("log", {"line": "from a thread"}))
        thread.start()
        thread.join()
        event = await sub.next(2)
        assert event is not None and event.data["line"] == "from a thread"
        bus.close()
        event = await sub.next(2)
        assert event is not None and event.kind == "close" and bus.closed


async def test_recent_ballots_are_kept_for_late_pages() -> None:
    bus = EventBus(keep=2)
    for i in range(3):
        bus.publish("ballot", {"id": str(i)})
    await asyncio.sleep(0)
    assert [b["id"] for b in bus.recent_ballots] == ["1", "2"]


def test_chat_scope_sees_its_own_ballots_whole_and_nothing_else() -> None:
    alice, bob = (Principal(name=name, scopes=frozenset({"chat"})) for name in ("alice", "bob"))
    ops = Principal(name="ops", scopes=frozenset({"chat", "admin"}))
    ballot = Event(1, "ballot", {"id": "chatcmpl-1", "owner": "alice", "question": "private", "answer": "42"}, 0.0)
    ownerless = Event(2, "ballot", {"id": "chatcmpl-2", "question": "older router", "answer": "7"}, 0.0)
    log = Event(3, "log", {"member": "a/0", "line": "x"}, 0.0)
    member = Event(4, "member", {"change": {}, "member": {}}, 0.0)
    assert visible(ballot, ops) == visible(ballot, alice) == ballot.data  # the asker's own question too
    assert visible(ballot, bob) is None  # another key's ballot: not even that it exists
    assert visible(ownerless, ops) == ownerless.data and visible(ownerless, alice) is None
    assert visible(log, alice) is None and visible(member, alice) is None
    assert sse("ballot", {"a": 1}, 7) == b'id: 7\nevent: ballot\ndata: {"a":1}\n\n'
    # What a browser's JSON.parse reads: a figure that is not finite is null (`Infinity` broke the page's stream),
    # text is UTF-8, and what orjson cannot write (a lone surrogate in a model's reply) still is.
    assert sse("member", {"tps": float("inf"), "q": "数"}) == 'event: member\ndata: {"tps":null,"q":"数"}\n\n'.encode()

    def strict(constant: str) -> None:
        raise AssertionError(f"{constant} is no JSON a browser parses")

    odd = sse("member", {"tps": [float("-inf"), float("nan")], "s": "\ud83d"}).removeprefix(b"event: member\ndata: ")
    assert json.loads(odd, parse_constant=strict) == {"tps": [None, None], "s": "\ud83d"}


async def test_the_dashboards_stream_carries_a_glimpse_of_a_large_ballot(tmp_path: Path) -> None:
    """Each page that connects gets the recent ballots: whole, 50 prompts of a megabyte made each connect ~100 MB
    written on the event loop while other requests waited. The stream's ballot cuts each text; the answer and
    /v1/ballots/{id} keep every character."""
    long = "word " * 50_000
    router = _seated(tmp_path, Say(long), Say(long))
    async with _client(router) as http:
        answer = await http.post("/v1/chat/completions", json={"model": "c", "messages": [
            {"role": "user", "content": "tell me " + long}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == long
        full = (await http.get(f"/v1/ballots/{answer.json()['id']}")).json()
    seen = router.events.recent_ballots[-1]
    assert seen["id"] == answer.json()["id"] and seen["question"].startswith("tell me word")
    assert len(json.dumps(seen)) < 12_000, len(json.dumps(seen))  # each text cut to 1,000 characters
    assert seen["question"].endswith(f"… [{len('tell me ' + long) - 1000} more characters]"), seen["question"][-60:]
    assert any(len(a) > 200_000 for a in (full["answer"], *[m.get("answer") or "" for m in full["members"]]))
