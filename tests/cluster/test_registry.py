"""The registry's loops end when cancelled, even when the store call they were in swallowed the cancellation
(redis-py can turn a cancel that races its socket timeout into a timeout error: a stub provokes exactly that)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from council.cluster.memory_store import MemoryState
from council.cluster.redis_store import RedisState
from council.cluster.registry import Registry
from council.cluster.store import Listing, StateError
from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.policy.loading import load_policy
from council.server.app import create_app
from council.server.router import open_router
from council.voting.assembly import assemble
from tests.policies import policy_yaml

pytestmark = pytest.mark.anyio


class SwallowingState(MemoryState):
    """The first `members()` hangs until cancelled, then reports an outage instead of the cancellation; later
    calls answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def members(self) -> Listing:
        if not self.entered.is_set():
            self.entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise StateError("Redis at redis://x is unreachable: Timeout reading from socket") from None
        return Listing({}, "memory")


async def test_following_the_registry_stops_when_cancelled_although_the_store_swallowed_it() -> None:
    """Before, the loop took the swallowed cancel for an outage and went on: `council serve --role router` then
    hung on SIGTERM (its stop waited for this task forever)."""
    state = SwallowingState()
    task = asyncio.create_task(Registry(state, heartbeat=0.05, cluster_key=None).follow_forever())
    await asyncio.wait_for(state.entered.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)  # (wait_for would wait on, cancelling it again and again)
    assert task in done and task.cancelled()


def _process(name: str, seats: list[str], model: str = "m") -> SimpleNamespace:
    return SimpleNamespace(name=name, seats=seats, spec=SimpleNamespace(model=model), ready=True)


async def test_a_router_calls_only_hosts_whose_entries_carry_the_cluster_keys_signature() -> None:
    """Before, any process that could write to Redis listed a URL of its own for a member, and the router sent it
    its users' prompts with `Authorization: Bearer <cluster key>`. Entries are now signed with the cluster key
    (host and fields): the router drops unsigned ones, ones signed with another key, and signed ones whose URL,
    members or host were changed."""
    key = "the-real-cluster-key-0123456789"
    state = MemoryState()
    host = Registry(state, heartbeat=1.0, cluster_key=key)
    until = await state.clock_ms() + 60_000
    genuine = host.entries("http://gpu-a:8080", [_process("a", ["a"])], until)
    assert genuine[0]["url"] == "http://gpu-a:8080/internal/members/a" and genuine[0]["sig"]
    await state.publish_members("http://gpu-a:8080", genuine, ttl=60)
    evil = "http://10.9.9.9:80/internal/members/b"
    unsigned = {"process": "b", "members": ["b"], "model": "m", "ready": True, "url": evil}
    await state.publish_members("0-attacker", [unsigned], ttl=60)
    await state.publish_members("0-other-key", Registry(state, 1.0, "another-cluster-key-987654321").entries(
        "http://10.9.9.9:80", [_process("b", ["b"])], until), ttl=60)
    await state.publish_members("0-moved", [{**genuine[0], "url": evil}], ttl=60)
    await state.publish_members("0-seats", [{**genuine[0], "members": ["a", "b"]}], ttl=60)
    await state.publish_members("0-copied", genuine, ttl=60)  # the same entry under another host name

    router = Registry(state, heartbeat=1.0, cluster_key=key)
    await router.refresh()
    assert router.hosts == {"http://gpu-a:8080": genuine}
    found = router.endpoint("a")
    assert found is not None and found.url == "http://gpu-a:8080/internal/members/a" and found.api_key == key
    assert router.endpoint("b") is None
    model = router.model_endpoint("m")
    assert model is not None and model.url == found.url
    await router.aclose()

    keyless = Registry(state, heartbeat=1.0, cluster_key=None)
    assert keyless.entries("http://gpu-a:8080", [_process("a", ["a"])], until)[0].get("sig") is None
    await keyless.refresh()
    assert keyless.hosts == {} and keyless.endpoint("a") is None


class OutageState(MemoryState):
    """`members()` fails as an unreachable Redis does for the first `failing` reads, then answers."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    async def members(self) -> Listing:
        if self.failing > 0:
            self.failing -= 1
            raise StateError("Redis at redis://x is unreachable: Connection refused")
        return await super().members()


async def test_a_router_says_why_it_calls_no_host(caplog: pytest.LogCaptureFixture) -> None:
    """A router whose cluster key differs from its hosts', or that cannot read Redis, served on with every answer a
    503 `quorum_not_met` and nothing in its log after "council serving". Now each is said, once."""
    import logging

    caplog.set_level(logging.WARNING, logger="council.cluster.registry")
    state = OutageState(failing=3)
    until = await state.clock_ms() + 60_000
    await state.publish_members("http://gpu-a:8080", Registry(state, 1.0, "another-cluster-key-987654321").entries(
        "http://gpu-a:8080", [_process("a", ["a"])], until), ttl=60)
    router = Registry(state, heartbeat=0.02, cluster_key="the-real-cluster-key-0123456789")
    task = asyncio.create_task(router.follow_forever())
    try:
        deadline = time.monotonic() + 10
        while "not signed with this router's cluster key" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.02)
        for _ in range(5):  # several more reads: nothing said twice
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot read the member registry (Redis at redis://x is unreachable" in m for m in lines) == 1, lines
    assert sum("the member registry is readable again" in m for m in lines) == 1, lines
    assert [m for m in lines if "not signed" in m] == [
        "http://gpu-a:8080's registry entries are not signed with this router's cluster key (another key): its "
        "members are not called; give every host and router the same key"], lines
    assert router.endpoint("a") is None
    await router.aclose()


async def test_a_host_that_cannot_be_reached_is_asked_after_one_that_can(tmp_path: Path) -> None:
    """Two hosts list seat `a`; the first in name order advertises a URL nobody reaches (a wrong advertise_url),
    and its heartbeat keeps it listed: every call for `a` went to it and failed (18 of 18 answers degraded), the
    healthy host never asked. Now a host a call could not reach is asked last for a while."""
    from aiohttp import web

    from council.voting.client import HttpMemberClient
    from tests.servers import free_port, serving

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "42"}}]})

    app = web.Application()
    app.router.add_post("/{path:.*}", answer)
    key = "the-real-cluster-key-0123456789"
    state = MemoryState()
    until = await state.clock_ms() + 60_000
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serving(app) as healthy:
        for url in (nowhere, healthy.replace("127.0.0.1", "localhost")):  # `nowhere` first in name order
            entries = Registry(state, 1.0, key).entries(url, [_process("a", ["a"])], until)
            await state.publish_members(url, entries, ttl=60)
        router = Registry(state, heartbeat=1.0, cluster_key=key)
        await router.refresh()
        client = HttpMemberClient(lambda: router.endpoint("a"))
        first = await client.complete({"messages": []})
        assert first.status == "error", first
        then = [await client.complete({"messages": []}) for _ in range(3)]
        assert [r.text for r in then] == ["42"] * 3, then
        await router.aclose()


async def test_what_anyone_may_write_in_redis_never_stops_the_router_following_the_registry() -> None:
    """Anyone who reaches Redis can write there. A signature that is not ASCII made hmac.compare_digest raise
    TypeError, which killed the follow task: the registry froze (dead hosts listed, new ones never seen). Now such
    an entry is one nobody signed, and the loop goes on to see the real host."""
    from council.cluster.registry import sign

    state = MemoryState()
    registry = Registry(state, heartbeat=0.05, cluster_key="k" * 32)
    forged = {"process": "m/0", "members": ["c/0"], "model": "m", "ready": True, "url": "http://evil/x", "sig": "é"}
    await state.publish_members("http://0-evil:1", [forged], ttl=30)
    task = asyncio.create_task(registry.follow_forever())
    try:
        real = {"process": "m/0", "members": ["c/0"], "model": "m", "ready": True, "url": "http://gpu-a:8080/m",
                "until": await state.clock_ms() + 30_000}
        await state.publish_members("http://gpu-a:8080", [{**real, "sig": sign("k" * 32, "http://gpu-a:8080", real)}],
                                    ttl=30)
        deadline = asyncio.get_running_loop().time() + 10
        while "http://gpu-a:8080" not in registry.hosts:
            assert not task.done(), task
            assert asyncio.get_running_loop().time() < deadline, "the real host was never seen"
            await asyncio.sleep(0.02)
        assert "http://0-evil:1" not in registry.hosts
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_entry_put_back_after_its_host_left_is_not_listed(redis_url: str) -> None:
    """Entries were signed with no time in them: whoever could write to Redis without the key could put back any
    entry a host ever published (it left, its address is another machine's now) with a deadline of their own, and
    routers sent that seat's prompts and the cluster key there. The signed `until` (Redis' clock) now drops it."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    key = "the-real-cluster-key-0123456789"
    host = Registry(state, heartbeat=0.1, cluster_key=key)
    router = Registry(state, heartbeat=0.1, cluster_key=key)
    beating = asyncio.create_task(host.publish_forever("http://gpu-old:8080", lambda: [_process("c/0", ["c/0"])]))
    try:
        stored: dict[str, list[dict[str, object]]] = {}
        deadline = time.monotonic() + 5
        while not stored:
            assert time.monotonic() < deadline, "the host never published"
            stored = (await state.members()).hosts
            await asyncio.sleep(0.02)
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await host.withdraw("http://gpu-old:8080")
        await state.publish_members("http://gpu-old:8080", stored["http://gpu-old:8080"], ttl=3600)  # put back
        await router.refresh()
        assert router.endpoint("c/0") is not None  # still within its three heartbeats: fine
        deadline = time.monotonic() + 5
        while router.endpoint("c/0") is not None:
            assert time.monotonic() < deadline, "the put-back entry is still listed"
            await asyncio.sleep(0.05)
            await router.refresh()
        assert "http://gpu-old:8080" in (await state.members()).hosts  # Redis still lists it: the router drops it
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await router.aclose()
        await state.close()


async def test_a_host_that_leaves_has_its_session_closed_once_its_calls_end(redis_url: str) -> None:
    """The router kept an HTTP session (a connector, its pooled connections) per host ever seen, for its whole life.
    A host that leaves the registry now has its session closed and dropped: at once when no call is in it, else
    when its last call ends (a call it was still answering is not cut off); one that comes back gets a new one."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    key = "the-real-cluster-key-0123456789"
    hosts = {"http://gpu-a:8080": "a/0", "http://gpu-b:8080": "b/0"}
    publisher = Registry(state, heartbeat=1.0, cluster_key=key)
    router = Registry(state, heartbeat=1.0, cluster_key=key)
    try:
        until = await state.clock_ms() + 60_000
        for url, process in hosts.items():
            await state.publish_members(url, publisher.entries(url, [_process(process, [process])], until), ttl=60,
                                        owner=publisher.instance)
        await router.refresh()
        a, b = router.endpoint("a/0"), router.endpoint("b/0")
        assert a is not None and b is not None and not a.http.closed and not b.http.closed
        async with b.request(None):  # a call to b in flight
            for url in hosts:
                await publisher.withdraw(url)
            await router.refresh()
            assert router.hosts == {}
            assert a.http.closed  # idle: closed at once
            assert not b.http.closed  # its call goes on
        assert b.http.closed  # closed as its last call ended
        assert router._sessions == {}
        await state.publish_members("http://gpu-a:8080", publisher.entries(
            "http://gpu-a:8080", [_process("a/0", ["a/0"])], until), ttl=60)
        await router.refresh()
        again = router.endpoint("a/0")
        assert again is not None and not again.http.closed and again.http is not a.http
    finally:
        await router.aclose()
        await state.close()


async def test_a_call_relayed_to_a_host_that_goes_silent_fails_instead_of_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `--role router` relaying a model's request to a host that froze (or was cut off without a reset: the
    connection stays open) waited forever: no local watchdog follows a host's member, and the session had no read
    limit. The call held the key's and the model's places (429s followed). It now fails as a stuck call does,
    after the stuck rule's silence (here shortened), a 502, with its places given back."""
    monkeypatch.setenv("COUNCIL_CLUSTER_KEY", "the-real-cluster-key-0123456789")
    reached = asyncio.Event()

    async def silent_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # takes the request, then says nothing
        reached.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        writer.close()

    host_server = await asyncio.start_server(silent_host, "127.0.0.1", 0)
    host = f"http://127.0.0.1:{host_server.sockets[0].getsockname()[1]}"
    key = "in-process-key-0123456789"
    path = tmp_path / "policy.yaml"
    keys = [{"name": "app", "sha256": hashlib.sha256(key.encode()).hexdigest()}]
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}, {"model": "m"}]}}, memory="1GiB",
                                server={"api_keys": keys}))
    info = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), info, life, role="router")
    router.registry.stuck_after = 0.5
    router.assembly = assemble(router.plan, info, life, ballots=router.ballots, elsewhere=router.registry.endpoint,
                               run_members=False)
    try:
        until = await router.state.clock_ms() + 60_000
        await router.state.publish_members(host, router.registry.entries(host, [_process("m/0", ["c/0"])], until),
                                           ttl=60)
        await router.registry.refresh()
        transport = httpx.ASGITransport(app=create_app(router))
        async with httpx.AsyncClient(transport=transport, base_url="http://council", timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            # (an in-process transport has no timeout of its own: the deadline is the test's)
            reply = await asyncio.wait_for(http.post("/v1/chat/completions", json={
                "model": "m", "messages": [{"role": "user", "content": "hi"}]}), 20)
            assert reached.is_set()
        assert reply.status_code == 502, reply.text
        said = "member m/0 failed: its host sent nothing for 0.5 s (down, or cut off without closing the connection)"
        assert reply.json()["error"] == {"message": said, "type": "server_error", "code": "member_error"}
        assert router.limits.queues.get("m", 0) == 0
    finally:
        await router.registry.aclose()
        host_server.close()


async def test_a_seat_a_host_lists_for_another_model_is_not_called(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A host whose policy gives seat `c/0` another model (a rolling policy change, one host's file edited alone)
    answered the router's seat `c/0`, model `m`: counted ready, voting, its ballot naming `m`. The seat is now found
    only on a host that serves the seat's model, and the router says once which host lists it otherwise."""
    monkeypatch.setenv("COUNCIL_CLUSTER_KEY", "the-real-cluster-key-0123456789")
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}, {"model": "m"}]}}, memory="1GiB"))
    info = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), info, life, role="router")
    router.assembly = assemble(router.plan, info, life, ballots=router.ballots, elsewhere=router.registry.endpoint,
                               run_members=False)
    try:
        until = await router.state.clock_ms() + 60_000
        for host, model in (("http://gpu-a:8080", "other"), ("http://gpu-b:8080", "m")):
            process = _process(f"{model}/0", ["c/0"], model)
            await router.state.publish_members(host, router.registry.entries(host, [process], until), ttl=60)
        await router.registry.refresh()
        # gpu-a comes first in name order and lists c/0, but for `other`: gpu-b, which serves `m`, answers it
        seat = router.engines["c"].seats[0]
        assert seat.name == "c/0" and seat.model == "m"
        where = seat.client.endpoint()  # type: ignore[attr-defined]
        assert where is not None and where.url == "http://gpu-b:8080/internal/members/m/0"
        assert router.assembly.seat_ready("c/0") and not router.assembly.seat_ready("c/1")
        await router.state.withdraw("http://gpu-b:8080")
        await router.registry.refresh()
        assert not router.assembly.seat_ready("c/0") and seat.client.endpoint() is None  # type: ignore[attr-defined]
        said = [r.getMessage() for r in caplog.records if "lists seat c/0" in r.getMessage()]
        assert said == ["http://gpu-a:8080 lists seat c/0 for model 'other', where this router's policy has 'm': "
                        "not called"]
    finally:
        await router.registry.aclose()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_two_hosts_given_one_advertise_url_neither_replace_nor_withdraw_each_other(
        store: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two hosts given the same `server.advertise_url` replaced each other's entry at every heartbeat (a router
    called whichever published last) and one's clean stop withdrew the other's members, with no word of why. Now
    the first keeps the URL and the second says so once; its withdraw leaves the first's entry; once the first
    leaves, the second is listed. A host restarted from its run folder is the same instance: it replaces its own
    live entry at once."""
    import logging

    from council.cluster.registry import host_instance
    from council.members.pidfiles import proc_start_time

    caplog.set_level(logging.WARNING, logger="council.cluster.registry")
    state = (MemoryState() if store == "memory" else
             RedisState(request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex}:"))
    key, url = "the-real-cluster-key-0123456789", "http://gpu-a:8080"
    first, second = Registry(state, 0.02, key), Registry(state, 0.02, key)
    first.instance = host_instance(tmp_path / "first", url)
    second.instance = host_instance(tmp_path / "second", url)
    assert host_instance(tmp_path / "first", url) == first.instance != second.instance  # kept in its run folder
    # Two hosts sharing one run folder (one COUNCIL_HOME) and the URL: the id's process is alive, a new one is made.
    record = next((tmp_path / "first").glob("registry-*"))
    record.write_text(f"{first.instance} 1 {proc_start_time(1)}\n")  # held by a live process (init), not this one
    assert host_instance(tmp_path / "first", url) != first.instance
    record.write_text(f"{first.instance} {os.getpid()} {proc_start_time(os.getpid())}\n")
    mine, theirs = [_process("a/0", ["a/0"])], [_process("b/0", ["b/0"])]
    beating = [asyncio.create_task(first.publish_forever(url, lambda: mine))]
    try:
        deadline = time.monotonic() + 10
        while url not in (await state.members()).hosts:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        beating.append(asyncio.create_task(second.publish_forever(url, lambda: theirs)))
        while "is listed by another host" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.02)
        for _ in range(5):  # more heartbeats of both: the first's members stay listed
            await asyncio.sleep(0.02)
            assert [e["process"] for e in (await state.members()).hosts[url]] == ["a/0"]
        await second.withdraw(url)
        assert [e["process"] for e in (await state.members()).hosts[url]] == ["a/0"]  # not the second's to withdraw
        restarted = Registry(state, 0.02, key)
        restarted.instance = host_instance(tmp_path / "first", url)
        assert await state.publish_members(url, [], ttl=1, owner=restarted.instance) is None  # its own: at once
        beating[0].cancel()
        await asyncio.gather(beating[0], return_exceptions=True)
        await first.withdraw(url)
        while [e["process"] for e in (await state.members()).hosts.get(url, [])] != ["b/0"]:
            assert time.monotonic() < deadline, (await state.members()).hosts
            await asyncio.sleep(0.02)
    finally:
        for task in beating:
            task.cancel()
        await asyncio.gather(*beating, return_exceptions=True)
        await state.close()
    said = [r.getMessage() for r in caplog.records]
    assert sum("is listed by another host" in m for m in said) == 1, said
    assert sum("the other host's entry lapsed" in m for m in said) == 1, said


async def _emptied(redis_url: str, prefix: str) -> None:
    """What a Redis restarted without persistence (or flushed) looks like to one cluster: none of its keys."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_a_router_keeps_its_hosts_through_a_redis_emptied_under_it(redis_url: str) -> None:
    """Redis restarted empty: until each host published again (up to a heartbeat), routers read no host at all
    and answered every request 503. The registry's epoch tells an emptied store from hosts that left: the hosts
    read before are kept until they are listed again or their own entries lapse, and a host that withdraws
    cleanly is still dropped at once."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    key = "the-real-cluster-key-0123456789"
    router = Registry(state, heartbeat=0.2, cluster_key=key)
    hosts = {url: Registry(state, heartbeat=0.2, cluster_key=key) for url in ("http://gpu-a:8080", "http://gpu-b:8080")}
    try:
        for url, host in hosts.items():
            await state.publish_members(url, host.entries(url, [_process(f"{url[-6]}/0", [url[-6]])],
                                                          await state.clock_ms() + 600), ttl=0.6, owner=host.instance)
        await router.refresh()
        assert router.endpoint("a") is not None and router.endpoint("b") is not None
        await _emptied(redis_url, prefix)
        assert (await state.members()).hosts == {}
        await router.refresh()
        assert router.endpoint("a") is not None and router.endpoint("b") is not None  # was None: a 503
        # One host publishes again (a new epoch); the other is still carried, not yet listed.
        url = "http://gpu-a:8080"

        async def publish(ttl_s: float) -> None:
            until = await state.clock_ms() + round(ttl_s * 1000)
            await state.publish_members(url, hosts[url].entries(url, [_process("a/0", ["a"])], until), ttl=ttl_s,
                                        owner=hosts[url].instance)

        await publish(0.6)
        await router.refresh()
        assert router.endpoint("a") is not None and router.endpoint("b") is not None
        # The one that never came back is dropped three of the router's heartbeats after the restart was seen.
        deadline = time.monotonic() + 5
        while router.endpoint("b") is not None:
            assert time.monotonic() < deadline, "a host carried across the restart never lapsed"
            await asyncio.sleep(0.05)
            await router.refresh()
        # A clean withdraw leaves the epoch as it was: the host is dropped at the next read, not carried.
        await publish(60)
        await router.refresh()
        assert router.endpoint("a") is not None
        await hosts[url].withdraw(url)
        await router.refresh()
        assert router.endpoint("a") is None
    finally:
        await router.aclose()
        await state.close()


async def test_hosts_are_kept_through_a_redis_outage_longer_than_their_entries_then_an_empty_restart(
        redis_url: str) -> None:
    """Redis away longer than three heartbeats, then back empty: the hosts' signed deadlines had passed while it
    was away, so the router kept them (the epoch changed) and at once dropped them as lapsed: 503s until each
    published again. The copies it carries were verified when read: they are kept for three of its heartbeats
    from the moment it finds the store emptied."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    key = "the-real-cluster-key-0123456789"
    router = Registry(state, heartbeat=2.0, cluster_key=key)
    host = Registry(state, heartbeat=0.1, cluster_key=key)
    try:
        until = await state.clock_ms() + 300
        await state.publish_members("http://gpu-a:8080", host.entries("http://gpu-a:8080", [_process("a/0", ["a"])],
                                                                      until), ttl=0.3, owner=host.instance)
        await router.refresh()
        assert router.endpoint("a") is not None
        await _emptied(redis_url, prefix)  # Redis "away" (the router does not read) and back empty
        deadline = time.monotonic() + 10
        while await state.clock_ms() <= until:  # the entry's own deadline passes meanwhile
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await router.refresh()
        assert router.endpoint("a") is not None  # was None: every request a 503 until the host published again
    finally:
        await router.aclose()
        await state.close()
