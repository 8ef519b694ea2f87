"""Ballots belong to the key that asked them: a chat-scope key reads its own (by id, in the event stream, in its
snapshot), never another key's; the admin scope reads all. In process (httpx.ASGITransport), the council's seats
scripted (tests.voting.fakes), so each answer is decided at once; a shared store is a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.policy.loading import load_policy
from council.server.app import create_app
from council.server.auth import Principal
from council.server.router import Router, open_router
from council.server.routes.events import events as event_stream
from council.voting.assembly import assemble
from tests.policies import policy_yaml
from tests.voting.fakes import Say, council

pytestmark = pytest.mark.anyio
KEYS = {"ops": "ops-key-0123456789", "alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}
SECRET = "the account number is 1234-5678"  # as the text extractor leaves it
CALL = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
    "name": "pay", "arguments": json.dumps({"account": "1234-5678", "amount": 900})}}]}
TOOLS = [{"type": "function", "function": {"name": "pay", "parameters": {
    "type": "object", "properties": {"account": {"type": "string"}, "amount": {"type": "number"}}}}}]


def _router(tmp_path: Path, state: str = "memory") -> Router:
    """A router with an admin key (`ops`) and two chat keys, whose council `c` has two scripted seats that agree
    (on `SECRET` when asked about it, or on a `pay` call when the request declares tools)."""
    keys = [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(),
             "scopes": ["chat", "admin"] if name == "ops" else ["chat"]} for name, key in KEYS.items()]
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}, {"model": "m"}]}},
                                memory="1GiB", server={"api_keys": keys}, state=state))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)

    def script(payload: Any) -> Say:  # Bob's secret where he tells it, else a plain answer
        if payload.get("tools"):
            return Say(message=CALL)
        return Say(SECRET if "1234" in json.dumps(payload["messages"]) else "42")

    engine, _ = council({"members": [{}, {}], "vote": {"extract": "text"}}, script, script)
    engine.ballots = router.ballots  # as assemble() wires a real engine: the router's store
    router.assembly.engines["c"] = engine
    return router


def _client(router: Router, name: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(router)), base_url="http://council",
                             headers={"Authorization": f"Bearer {KEYS[name]}"})


async def _ask(router: Router, name: str, question: str, **extra: Any) -> str:
    async with _client(router, name) as http:
        reply = await http.post("/v1/chat/completions", json={
            "model": "c", "messages": [{"role": "user", "content": question}], **extra})
    assert reply.status_code == 200, reply.text
    if extra.get("stream"):  # the id is in every chunk
        return str(json.loads(reply.text.split("data: ", 1)[1].split("\n", 1)[0])["id"])
    return str(reply.json()["id"])


@pytest.mark.parametrize("extra", [{}, {"stream": True}, {"tools": TOOLS}], ids=["text", "stream", "tools"])
async def test_a_chat_key_reads_its_own_ballot_and_no_one_elses(tmp_path: Path, extra: dict[str, Any]) -> None:
    router = _router(tmp_path)
    bobs = await _ask(router, "bob", "What is my account number? It is 1234-5678.", **extra)
    async with _client(router, "bob") as bob, _client(router, "alice") as alice, _client(router, "ops") as ops:
        # Another chat key gets what an unknown id gets: not even the ballot's existence.
        theirs, unknown = await alice.get(f"/v1/ballots/{bobs}"), await alice.get("/v1/ballots/chatcmpl-nope")
        assert "1234" not in theirs.text and "pay" not in theirs.text
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "ballot_not_found"
        own = await bob.get(f"/v1/ballots/{bobs}")
        assert own.status_code == 200 and own.json()["owner"] == "bob"
        if "tools" in extra:
            assert all(a["tool_calls"] == CALL["tool_calls"] for a in own.json()["answers"])
        else:
            assert own.json()["answer"] == SECRET
        assert (await ops.get(f"/v1/ballots/{bobs}")).json() == own.json()  # the admin scope reads every ballot


async def test_every_api_records_who_asked(tmp_path: Path) -> None:
    router = _router(tmp_path)
    async with _client(router, "bob") as bob:
        message = await bob.post("/v1/messages", json={
            "model": "c", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
        response = await bob.post("/v1/responses", json={"model": "c", "input": "hi"})
    assert message.status_code == response.status_code == 200, (message.text, response.text)
    for ballot_id in (message.json()["council"]["ballot_id"], response.json()["council"]["ballot_id"]):
        ballot = router.ballots.get(ballot_id)
        assert ballot is not None and ballot["owner"] == "bob"


async def _next_event(stream: AsyncIterator[Any]) -> tuple[str, dict[str, Any]]:
    """The next event of a server-sent-events body (keep-alive comments skipped)."""
    while True:
        chunk = await anext(stream)
        text = chunk.decode() if isinstance(chunk, bytes) else str(chunk)
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            return fields["event"], json.loads(fields["data"])


def _principal(router: Router, name: str) -> Principal:
    return router.keys.principal(f"Bearer {KEYS[name]}", "chat")


async def test_the_event_stream_and_snapshot_carry_only_the_callers_own_ballots(tmp_path: Path) -> None:
    router = _router(tmp_path)
    early = await _ask(router, "bob", "bob's early question")
    streams = {name: (await event_stream(router, _principal(router, name))).body_iterator
               for name in ("alice", "bob", "ops")}
    try:
        snapshots = {name: await _next_event(s) for name, s in streams.items()}
        assert {name: [b["id"] for b in snap["ballots"]] for name, (_, snap) in snapshots.items()} == {
            "alice": [], "bob": [early], "ops": [early]}
        assert snapshots["bob"][1]["ballots"][0]["question"] == "bob's early question"  # their own question

        bobs = await _ask(router, "bob", "What is my account number? It is 1234-5678.")
        alices = await _ask(router, "alice", "alice's question")
        # Alice's stream skips Bob's ballot: the next event it carries is her own, whole.
        kind, seen = await _next_event(streams["alice"])
        assert (kind, seen["id"], seen["question"], seen["owner"]) == ("ballot", alices, "alice's question", "alice")
        kind, seen = await _next_event(streams["bob"])
        assert (kind, seen["id"], seen["answer"]) == ("ballot", bobs, SECRET)
        assert [(await _next_event(streams["ops"]))[1]["owner"] for _ in range(2)] == ["bob", "alice"]
    finally:
        for stream in streams.values():
            await stream.aclose()  # type: ignore[attr-defined]
    # A page that connects later sees the same split.
    later = (await event_stream(router, _principal(router, "alice"))).body_iterator
    try:
        _, snap = await _next_event(later)
        assert [b["id"] for b in snap["ballots"]] == [alices] and SECRET not in json.dumps(snap)
    finally:
        await later.aclose()  # type: ignore[attr-defined]


async def test_the_owner_travels_with_the_ballot_through_a_shared_store(tmp_path: Path, redis_url: str) -> None:
    """Router A answers Bob; router B, which never saw the ballot, reads it from Redis and applies the same rule."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _router(tmp_path / "a", redis_url), _router(tmp_path / "b", redis_url)
    try:
        bobs = await _ask(a, "bob", "What is my account number? It is 1234-5678.")
        await asyncio.gather(*a._sharing)  # the copy on its way to Redis
        assert b.ballots.get(bobs) is None
        async with _client(b, "bob") as bob, _client(b, "alice") as alice, _client(b, "ops") as ops:
            assert (await alice.get(f"/v1/ballots/{bobs}")).status_code == 404
            own = await bob.get(f"/v1/ballots/{bobs}")
            assert own.status_code == 200 and own.json()["owner"] == "bob" and own.json()["answer"] == SECRET
            assert (await ops.get(f"/v1/ballots/{bobs}")).status_code == 200
    finally:
        await a.state.close()
        await b.state.close()


@pytest.mark.parametrize("extra", [{}, {"stream": True}], ids=["json", "stream"])
async def test_a_ballot_is_in_the_shared_store_when_its_answer_arrives(tmp_path: Path, redis_url: str,
                                                                     extra: dict[str, Any]) -> None:
    """The copy to Redis was started after the answer and not awaited: a client that asked another router for the
    ballot at once (behind a load balancer, say) got 404 on 4 of 30 tries."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _router(tmp_path / "a", redis_url), _router(tmp_path / "b", redis_url)
    try:
        async with _client(b, "bob") as bob:
            for n in range(10):
                asked = await _ask(a, "bob", f"Question {n}?", **extra)
                found = await bob.get(f"/v1/ballots/{asked}")
                assert found.status_code == 200, (n, found.text)
    finally:
        await a.state.close()
        await b.state.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_stored_response_is_continued_only_by_the_key_that_made_it(tmp_path: Path, stream: bool) -> None:
    """`previous_response_id` sends the stored conversation back to the members, and the answer repeats it: a
    conversation is its key's, as its ballots are. Another chat key gets the 400 an unknown id gets."""
    router = _router(tmp_path)
    async with _client(router, "bob") as bob:
        first = await bob.post("/v1/responses", json={"model": "c", "input": "My account number is 1234-5678.",
                                                      "stream": stream})
        assert first.status_code == 200, first.text
        if stream:  # the id is in the first event's response
            found = first.text.split("data: ", 1)[1].split("\n", 1)[0]
            made = str(json.loads(found)["response"]["id"])
        else:
            made = str(first.json()["id"])
        again = await bob.post("/v1/responses", json={"model": "c", "input": "And again?",
                                                      "previous_response_id": made})
        assert again.status_code == 200 and SECRET in again.text  # his own conversation goes on
    async with _client(router, "alice") as alice:
        stolen = await alice.post("/v1/responses", json={"model": "c", "input": "What did he say?",
                                                         "previous_response_id": made})
        unknown = await alice.post("/v1/responses", json={"model": "c", "input": "x",
                                                          "previous_response_id": "resp_never"})
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "previous_response_not_found"
    assert SECRET not in stolen.text and made in stolen.text
    assert stolen.json()["error"]["message"] == unknown.json()["error"]["message"].replace("resp_never", made)
    async with _client(router, "ops") as ops:  # the admin scope reads every ballot, and continues any conversation
        assert (await ops.post("/v1/responses", json={"model": "c", "input": "x",
                                                      "previous_response_id": made})).status_code == 200


async def test_an_event_stream_ends_when_a_reload_takes_its_key_away(tmp_path: Path) -> None:
    """Before, a dashboard connected with a key kept receiving ballots after a reload had removed that key (and a
    key that lost the admin scope kept the members' refreshes). Now the stream ends at its next event; the page
    reconnects, and the router asks it for a key it no longer accepts."""
    router = _router(tmp_path)
    streams = {name: (await event_stream(router, _principal(router, name))).body_iterator for name in ("alice", "bob")}
    try:
        for stream in streams.values():
            assert (await _next_event(stream))[0] == "snapshot"
        kept = [key for key in router.policy.server.api_keys if key.name != "alice"]
        router.keys.update(kept)  # what a reload does with the new policy's keys
        bobs = await _ask(router, "bob", "still here?")
        kind, seen = await _next_event(streams["bob"])  # a key the reload kept: its stream goes on
        assert (kind, seen["id"]) == ("ballot", bobs)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(_next_event(streams["alice"]), 10)
        with pytest.raises(Exception, match="invalid API key"):
            _principal(router, "alice")
    finally:
        for stream in streams.values():
            await stream.aclose()  # type: ignore[attr-defined]
