"""The shared state (council/state.py) in memory and in a real Redis: leases with fencing, the member
registry, the shared rate limit, ballots, and a Redis outage and recovery."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from council.cluster.memory_store import MemoryState
from council.cluster.redis_store import RedisState
from council.cluster.store import (
    Lease,
    LegacyLease,
    StaleLease,
    StateError,
    StateStore,
    expand_env,
    open_state,
)
from tests.servers import free_port, start_redis

pytestmark = pytest.mark.anyio
LONG = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _pair(kind: str, redis_url: str) -> tuple[StateStore, StateStore]:
    """Two routers' views of one state: two RedisState clients on one prefix, or one MemoryState twice."""
    if kind == "memory":
        store = MemoryState()
        return store, store
    prefix = f"test:{uuid.uuid4().hex}:"
    return RedisState(redis_url, prefix=prefix), RedisState(redis_url, prefix=prefix)


async def _close(a: StateStore, b: StateStore) -> None:
    await a.close()
    if b is not a:
        await b.close()


@pytest.fixture(params=["memory", "redis"])
async def pair(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[tuple[StateStore, StateStore]]:
    a, b = _pair(request.param, redis_url)
    yield a, b
    await _close(a, b)


async def until(condition: Callable[[], Awaitable[bool]], deadline_s: float = 5.0) -> float:
    """Poll `condition` until true; seconds it took. Fails the test past the deadline."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"condition not met within {deadline_s}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_open_state(redis_url: str) -> None:
    assert isinstance(open_state("memory"), MemoryState)
    store = open_state(redis_url, prefix="x:")
    assert isinstance(store, RedisState) and store.prefix == "x:"
    assert isinstance(store, StateStore)
    with pytest.raises(ValueError, match="memory"):
        open_state("postgres://db")


async def test_lease_basics(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    first = await a.acquire("gpu0", 4, "router-a", 2, LONG)
    second = await b.acquire("gpu0", 4, "router-b", 2, LONG)
    assert first is not None and second is not None
    assert second.token > first.token
    assert first.expires_at > time.monotonic()
    assert await a.acquire("gpu0", 4, "router-a", 1, LONG) is None
    assert await a.acquire("gpu1", 4, "router-a", 4, LONG) is not None  # GPUs are independent
    assert await a.leased("gpu0") == 4 and await b.leased("gpu0") == 4

    await b.release(first)
    assert await a.leased("gpu0") == 2
    await b.release(first)  # idempotent
    assert await a.leased("gpu0") == 2
    with pytest.raises(StaleLease):
        await a.renew(first, LONG)
    assert not await a.check_fence("gpu0", first.token)
    third = await a.acquire("gpu0", 4, "router-a", 2, LONG)
    assert third is not None and third.token > second.token
    assert await b.acquire("gpu0", 4, "router-b", 1, LONG) is None
    with pytest.raises(ValueError):
        await a.acquire("gpu0", 4, "router-a", 0, LONG)


async def test_an_acquire_replacing_its_holders_own_leases_does_not_count_them(
        pair: tuple[StateStore, StateStore]) -> None:
    """A reload's acquire: the holder's leases it replaces are not counted (it releases them once it holds their
    replacements), another holder's are, whatever tokens are named."""
    a, b = pair
    old = await a.acquire("gpu0", 4, "router-a", 3, LONG)
    theirs = await b.acquire("gpu0", 4, "router-b", 1, LONG)
    assert old is not None and theirs is not None
    assert await a.acquire("gpu0", 4, "router-a", 3, LONG) is None
    new = await a.acquire("gpu0", 4, "router-a", 3, LONG, replacing=[old.token])
    assert new is not None and await a.leased("gpu0") == 7  # both held until the old one is released
    await a.release(old)
    assert await b.acquire("gpu0", 4, "router-b", 1, LONG, replacing=[new.token]) is None  # not its own
    assert await a.acquire("gpu0", 4, "router-a", 1, LONG, replacing=[theirs.token]) is None


async def test_an_acquire_leaves_its_routers_reserve_unleased(pair: tuple[StateStore, StateStore]) -> None:
    """`keep_free_bytes` is the acquiring router's `slots.reserve`: what all live leases leave, not what this one
    may take."""
    a, b = pair
    assert await a.acquire("gpu0", 1000, "router-a", 600, LONG, keep_free_bytes=100) is not None
    assert await b.acquire("gpu0", 1000, "router-b", 301, LONG, keep_free_bytes=100) is None
    assert await b.acquire("gpu0", 1000, "router-b", 300, LONG, keep_free_bytes=100) is not None
    assert await a.leased("gpu0") == 900
    with pytest.raises(ValueError):
        await a.acquire("gpu1", 1000, "router-a", 1, LONG, keep_free_bytes=-1)


async def test_a_lease_an_older_council_wrote_in_slots_blocks_the_gpu_until_it_expires(redis_url: str) -> None:
    """Before leases counted bytes, an entry was `EXPIRES SLOTS HOLDER` in its router's own slot size: read as bytes it
    would count next to nothing. While one is live, acquire refuses (LegacyLease, one line) instead of guessing;
    reads leave it out; renew and release leave it alone; once expired it is swept like any other."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"{prefix}gpu:gpu0:leases"
    try:
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        client.hset(key, "7", f"{now_ms + 400} 2 oldhost:9")
        client.pexpire(key, 60_000)
        with pytest.raises(LegacyLease) as caught:
            await state.acquire("gpu0", 80 << 30, "router-a", 1 << 30, LONG)
        assert "older council router" in str(caught.value) and "\n" not in str(caught.value)
        assert await state.leased("gpu0") == 0 and await state.holders("gpu0") == {}
        forged = Lease(gpu="gpu0", holder="oldhost:9", size=2, token=7, expires_at=0.0)
        with pytest.raises(StaleLease):
            await state.renew(forged, LONG)
        await state.release(forged)
        assert client.hget(key, "7") == f"{now_ms + 400} 2 oldhost:9"

        async def swept() -> bool:
            try:
                return await state.acquire("gpu0", 80 << 30, "router-a", 1 << 30, LONG) is not None
            except LegacyLease:
                return False

        await until(swept)
        assert list(client.hvals(key)) and all(v.split()[1] == f"{1 << 30}B" for v in client.hvals(key))
    finally:
        client.delete(key, f"{prefix}gpu:gpu0:fence")
        client.close()
        await state.close()


async def test_renew_extends_and_expiry_reclaims(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    kept = await a.acquire("gpu0", 3, "router-a", 1, 0.6)
    lapsing = await a.acquire("gpu0", 3, "router-a", 2, 0.3)
    assert kept is not None and lapsing is not None
    renewed = await a.renew(kept, LONG)
    assert renewed.token == kept.token and renewed.expires_at > kept.expires_at

    # The lease nobody renews lapses; the renewed one outlives it.
    await until(lambda: _equals(b.leased("gpu0"), 1))
    assert await b.check_fence("gpu0", kept.token)
    assert not await b.check_fence("gpu0", lapsing.token)

    new: list[Lease] = []

    async def reclaimed() -> bool:
        lease = await b.acquire("gpu0", 3, "router-b", 2, LONG)
        if lease is not None:
            new.append(lease)
        return lease is not None

    await until(reclaimed)
    taken = new[0]
    assert taken.token > lapsing.token
    with pytest.raises(StaleLease):
        await a.renew(lapsing, LONG)
    assert not await a.check_fence("gpu0", lapsing.token)
    assert await a.check_fence("gpu0", taken.token)
    await a.release(lapsing)  # a stale token releases nothing
    assert await b.leased("gpu0") == 3
    # Another holder cannot renew or release a lease by guessing its token.
    forged = Lease(gpu="gpu0", holder="router-a", size=2, token=taken.token, expires_at=0.0)
    with pytest.raises(StaleLease):
        await a.renew(forged, LONG)
    await a.release(forged)
    assert await b.leased("gpu0") == 3

    # Past the renewed lease's first deadline it is still live: renew extended it.
    async def past_first_deadline() -> bool:
        return time.monotonic() > kept.expires_at + 0.1

    await until(past_first_deadline)
    assert await b.check_fence("gpu0", kept.token) and await b.leased("gpu0") == 3


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_holders_sum_each_holders_live_leases(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    assert await a.holders("gpu0") == {}
    for slots in (1, 2):
        assert await a.acquire("gpu0", 8, "host:1", slots, LONG) is not None
    assert await b.acquire("gpu0", 8, "host:2", 1, 0.3) is not None
    assert await b.acquire("gpu1", 8, "host:3", 1, LONG) is not None  # another GPU
    assert await b.holders("gpu0") == {"host:1": 3, "host:2": 1}

    async def lapsed() -> bool:
        return await a.holders("gpu0") == {"host:1": 3}

    await until(lapsed)


# No shrinking: a failing example still prints, and shrinking 50-task concurrent runs takes minutes.
@settings(max_examples=12, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(total=st.integers(1, 10), sizes=st.lists(st.integers(1, 3), min_size=50, max_size=50),
       releases=st.lists(st.booleans(), min_size=50, max_size=50), seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_leases_never_oversubscribe(kind: str, redis_url: str, total: int, sizes: list[int], releases: list[bool],
                                    seed: int) -> None:
    """Two routers, 50 concurrent acquires of 1-3 bytes, some released at once: never more than `total`."""
    asyncio.run(_oversubscribe(kind, redis_url, total, sizes, releases, random.Random(seed)))


async def _oversubscribe(kind: str, redis_url: str, total: int, sizes: list[int], releases: list[bool],
                         rng: random.Random) -> None:
    routers = _pair(kind, redis_url)
    held: list[Lease] = []
    # Counted after the store granted and before it frees, so it never exceeds what the store holds.
    holding = [0, 0]  # now, peak

    async def attempt(i: int) -> None:
        router = routers[i % 2]
        await asyncio.sleep(rng.random() * 0.005)
        lease = await router.acquire("gpu", total, f"router-{i % 2}", sizes[i], LONG)
        if lease is None:
            return
        holding[0] += lease.size
        holding[1] = max(holding[1], holding[0])
        if releases[i]:
            await asyncio.sleep(rng.random() * 0.005)
            holding[0] -= lease.size
            await routers[(i + 1) % 2].release(lease)
        else:
            held.append(lease)

    try:
        await asyncio.gather(*(attempt(i) for i in range(50)))
        assert holding[1] <= total
        assert sum(lease.size for lease in held) == holding[0] <= total
        assert await routers[0].leased("gpu") == holding[0] == await routers[1].leased("gpu")
        assert len({lease.token for lease in held}) == len(held)
    finally:
        await _close(*routers)


async def test_registry(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    await a.publish_members("host-a", [{"member": "m1", "port": 1}], 0.5)
    published = time.monotonic()
    await b.publish_members("host-b", [{"member": "m2"}], LONG)
    assert (await b.members()).hosts == {"host-a": [{"member": "m1", "port": 1}], "host-b": [{"member": "m2"}]}
    await a.publish_members("host-a", [{"member": "m3"}], 0.5)  # replaces the entry
    published = time.monotonic()
    assert (await b.members()).hosts["host-a"] == [{"member": "m3"}]

    async def gone() -> bool:
        return "host-a" not in (await b.members()).hosts

    await until(gone)
    assert time.monotonic() - published < 0.5 + 0.4  # ttl, plus polling and a slow machine
    assert (await a.members()).hosts == {"host-b": [{"member": "m2"}]}
    await b.withdraw("host-b")
    assert (await a.members()).hosts == {}


async def test_rate_limit_is_shared(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    key = f"key-{uuid.uuid4().hex}"
    assert await a.take(key, 2.0, 3) is None
    assert await b.take(key, 2.0, 3) is None
    assert await a.take(key, 2.0, 3) is None
    wait = await b.take(key, 2.0, 3)
    assert wait is not None and 0 < wait <= 0.5
    assert await a.take("another-key", 2.0, 3) is None

    async def allowed() -> bool:
        return await a.take(key, 2.0, 3) is None

    assert await until(allowed) < 2.0
    with pytest.raises(ValueError):
        await a.take(key, 0, 3)


async def test_ballots(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    for i in range(5):
        await a.put_ballot(f"chatcmpl-{i}", {"i": i, "answers": [{"member": "m", "text": "42"}]}, keep=3)
    assert await b.get_ballot("chatcmpl-4") == {"i": 4, "answers": [{"member": "m", "text": "42"}]}
    assert [i for i in range(5) if await b.get_ballot(f"chatcmpl-{i}") is not None] == [2, 3, 4]
    await b.put_ballot("chatcmpl-2", {"i": 2}, keep=3)  # re-put: newest again
    await b.put_ballot("chatcmpl-5", {"i": 5}, keep=3)
    kept = [i for i in range(6) if await a.get_ballot(f"chatcmpl-{i}") is not None]
    assert kept == [2, 4, 5]
    assert await a.get_ballot("missing") is None


async def test_responses_are_kept_apart_from_ballots(pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    conversation = {"items": [{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant"}]}
    for i in range(4):
        await a.put_response(f"resp_{i}", {**conversation, "i": i}, keep=2)
    assert await b.get_response("resp_3") == {**conversation, "i": 3}
    assert [i for i in range(4) if await b.get_response(f"resp_{i}") is not None] == [2, 3]
    await a.put_ballot("resp_3", {"ballot": True}, keep=5)  # another place: neither overwrites the other
    assert await b.get_response("resp_3") == {**conversation, "i": 3}
    assert await b.get_ballot("resp_3") == {"ballot": True} and await b.get_response("missing") is None


async def test_redis_outage_and_recovery(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path)
    port = urlsplit(url).port
    state = RedisState(url, prefix="outage:")
    restarted: subprocess.Popen[bytes] | None = None
    try:
        before = await state.acquire("gpu0", 2, "router-a", 1, LONG)
        assert before is not None

        # A Redis that accepts connections but never answers: a timeout, not a hang.
        proc.send_signal(signal.SIGSTOP)
        await _assert_unreachable(state, url, state.leased("gpu0"))
        proc.send_signal(signal.SIGCONT)
        await until(_answers(state))
        assert await state.leased("gpu0") == 1

        # A Redis that is gone: every call fails fast with one line naming the URL.
        proc.terminate()
        proc.wait(timeout=10)
        await _assert_unreachable(state, url, state.acquire("gpu0", 2, "router-a", 1, LONG))
        await _assert_unreachable(state, url, state.take("k", 1, 1))
        await _assert_unreachable(state, url, state.members())

        # A new Redis on the same port: the same client works again by itself.
        restarted = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        await until(_answers(state), deadline_s=20)
        after = await state.acquire("gpu0", 2, "router-a", 2, LONG)
        assert after is not None
        # The restart lost the fence counter, yet tokens still only go up.
        assert after.token > before.token
        assert await state.take("k", 1, 1) is None
    finally:
        await state.close()
        for p in (proc, restarted):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(timeout=10)


async def _assert_unreachable(state: RedisState, url: str, call: Awaitable[object]) -> None:
    start = time.monotonic()
    with pytest.raises(StateError) as caught:
        await call
    assert time.monotonic() - start < 2.5
    message = str(caught.value)
    assert message.startswith(f"Redis at {url} is unreachable: ") and "\n" not in message


def _answers(state: StateStore) -> Callable[[], Awaitable[bool]]:
    async def answers() -> bool:
        try:
            await state.ping()
        except StateError:
            return False
        return True

    return answers


async def test_the_state_url_reads_the_password_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`redis://:${VAR}@host` (the Kubernetes policy's, with the Secret's password in the pod's environment): a
    Redis that requires a password answers with it, refuses without it, and an unset variable is one line, never a
    try without a password."""
    proc, url = start_redis(tmp_path, password="f00dfeedc0ffee0123456789abcdef01")
    try:
        port = urlsplit(url).port
        monkeypatch.setenv("COUNCIL_TEST_REDIS_PASSWORD", "f00dfeedc0ffee0123456789abcdef01")
        store = open_state(f"redis://:${{COUNCIL_TEST_REDIS_PASSWORD}}@127.0.0.1:{port}/0")
        assert isinstance(store, RedisState) and "f00dfeed" not in store._shown_url
        await store.ping()
        await store.close()
        anonymous = open_state(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(StateError, match=r"(?i)auth"):
            await anonymous.publish_members("0-attacker", [], LONG)
        await anonymous.close()
        monkeypatch.setenv("COUNCIL_TEST_REDIS_PASSWORD", "")
        with pytest.raises(ValueError, match=r"state: \$\{COUNCIL_TEST_REDIS_PASSWORD\} is not set"):
            open_state(f"redis://:${{COUNCIL_TEST_REDIS_PASSWORD}}@127.0.0.1:{port}/0")
        assert expand_env("redis://:pa$word@h:1/0") == "redis://:pa$word@h:1/0"  # only the braced form
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_password_is_not_shown() -> None:
    state = RedisState("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in state._shown_url and "127.0.0.1:1" in state._shown_url


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:{port}/0?password=s3cret-pw", "redis://127.0.0.1:{port}/0?password=***"),
    ("redis://127.0.0.1:{port}/0?socket_keepalive=true&password=s3cret-pw",
     "redis://127.0.0.1:{port}/0?socket_keepalive=true&password=***"),
    ("unix:///run/no-such-redis-{port}.sock?db=0&password=s3cret-pw",
     "unix:///run/no-such-redis-{port}.sock?db=0&password=***"),
    ("redis://u:s3cret-pw@[::1]:{port}/0", "redis://u:***@[::1]:{port}/0"),
])
async def test_a_password_in_the_query_is_not_shown_either(url: str, shown: str) -> None:
    """redis-py reads `?password=` too (a `unix://` URL has nowhere else for it), and the unreachable message is what
    /readyz (open to all), 503 bodies and the log repeat: it names the place, never the password."""
    port = free_port()
    state = RedisState(url.format(port=port))
    try:
        with pytest.raises(StateError) as caught:
            await state.ping()
        assert str(caught.value).startswith(f"Redis at {shown.format(port=port)} is unreachable: ")
        assert "s3cret" not in str(caught.value)
    finally:
        await state.close()


async def test_keys_are_prefixed(redis_url: str) -> None:
    """Everything a RedisState writes lives under its prefix (tests and deployments can share a Redis)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = set(client.scan_iter())
        assert await state.acquire("gpu0", 1, "r", 1, LONG) is not None
        await state.publish_members("h", [], LONG)
        await state.take("k", 1, 1)
        await state.put_ballot("b", {}, 1)
        await state.put_response("r", {}, 1)
        written = set(client.scan_iter()) - before
        assert written and all(k.startswith(prefix) for k in written)
        client.delete(*written)
    finally:
        client.close()
        await state.close()


async def test_values_council_did_not_write_read_as_absent(redis_url: str) -> None:
    """Anyone who reaches Redis can write there: a registry value, a ballot or a stored conversation that is not
    JSON (or not an object) was a JSONDecodeError from the store, a 500 on /v1/ballots/{id}. Now it reads as
    absent, and the other hosts are still listed."""
    prefix = f"test:{uuid.uuid4().hex}:"
    state = RedisState(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await state.publish_members("http://gpu-a:8080", [{"process": "m/0"}], ttl=30)
        await state.publish_members("http://junk:1", [], ttl=30)
        client.hset(f"{prefix}members", "http://junk:1", "{not json")
        client.hset(f"{prefix}ballots", "b-junk", "{not json")
        client.hset(f"{prefix}responses", "r-list", "[1, 2]")
        assert (await state.members()).hosts == {"http://gpu-a:8080": [{"process": "m/0"}]}
        assert await state.get_ballot("b-junk") is None and await state.get_response("r-list") is None
    finally:
        for key in client.keys(f"{prefix}*"):
            client.delete(key)
        client.close()
        await state.close()


class ReplyLosingProxy:
    """A TCP proxy to Redis that, once armed, forwards the next EVALSHA, reads Redis' reply and drops the
    connection instead of passing it on: the script ran, its caller saw a broken connection (and retries). With
    `hold`, it keeps the connection silent until the caller gives up (a timeout), as a Redis paused or slow past
    the router's timeout does, then resumed."""

    def __init__(self, redis_url: str, hold: bool = False) -> None:
        self.upstream = urlsplit(redis_url)
        self.hold = hold
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.upstream.path}"

    async def _handle(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        redis_in, redis_out = await asyncio.open_connection(self.upstream.hostname, self.upstream.port)
        try:
            while data := await client_in.read(65536):
                redis_out.write(data)
                await redis_out.drain()
                reply = await redis_in.read(65536)
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
                    self.dropped += 1
                    if self.hold:
                        await client_in.read(65536)  # until the caller gives up and closes
                    return
                client_out.write(reply)
                await client_out.drain()
        finally:
            client_out.close()
            redis_out.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_script_whose_reply_was_lost_is_not_run_twice(redis_url: str) -> None:
    """redis-py retries once on a broken connection, also one that broke after Redis ran the script: one
    acquire() left two leases (the first unknown to its keeper, blocking other routers for its TTL), one take()
    spent two tokens. Each carries a request id now, and the retry gets the first run's answer."""
    prefix = f"test:{uuid.uuid4().hex}:"
    proxy = ReplyLosingProxy(redis_url)
    state = RedisState(await proxy.start(), prefix=prefix)
    direct = RedisState(redis_url, prefix=prefix)
    try:
        warm = await state.acquire("warm", 100, "me:1", 1, LONG)  # scripts loaded, a connection pooled
        assert warm is not None
        proxy.armed = True
        lease = await state.acquire("gpu0", 1000, "me:1", 400, LONG)
        assert proxy.dropped == 1 and lease is not None
        assert await direct.holders("gpu0") == {"me:1": 400} and await direct.check_fence("gpu0", lease.token)
        await state.release(lease)
        assert await direct.leased("gpu0") == 0
        proxy.armed = True
        assert await state.take("k", 0.001, 2) is None  # one of the bucket's two tokens
        assert proxy.dropped == 2
        assert await direct.take("k", 0.001, 2) is None  # the second is still there
        assert await direct.take("k", 0.001, 2) is not None
    finally:
        await state.close()
        await direct.close()
        await proxy.close()


async def test_an_acquire_that_timed_out_is_asked_again_as_the_same_request(redis_url: str) -> None:
    """An acquire Redis ran but answered too late (paused, slow) timed out; the next ask carried a new request id,
    so the first run's lease, known to nobody, refused this router's own next ask for its whole TTL. The next ask
    for the same lease now carries the same id and gets that lease."""
    prefix = f"test:{uuid.uuid4().hex}:"
    proxy = ReplyLosingProxy(redis_url, hold=True)
    state = RedisState(await proxy.start(), prefix=prefix)
    direct = RedisState(redis_url, prefix=prefix)
    try:
        assert await state.acquire("warm", 100, "me:1", 1, LONG) is not None  # scripts loaded
        proxy.armed = True
        with pytest.raises(StateError, match="unreachable"):
            await state.acquire("gpu0", 1000, "me:1", 600, LONG)
        assert proxy.dropped == 1 and await direct.holders("gpu0") == {"me:1": 600}  # granted, unanswered
        lease = await state.acquire("gpu0", 1000, "me:1", 600, LONG)
        assert lease is not None, "refused by its own unanswered lease"
        assert await direct.holders("gpu0") == {"me:1": 600} and await direct.check_fence("gpu0", lease.token)
        other = await state.acquire("gpu0", 1000, "me:1", 300, LONG)  # another ask: a request of its own
        assert other is not None and other.token != lease.token
    finally:
        await state.close()
        await direct.close()
        await proxy.close()


async def test_the_memory_store_keeps_its_conversations_within_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stored Responses conversation holds its whole history again: 300 turns of 1 MB held 300 MB, bounded
    by count alone (`server.ballots`). The oldest now go past the budget too (one larger than it is kept alone)."""
    from council.cluster import memory_store

    monkeypatch.setattr(memory_store, "MAX_BYTES", 1_000_000)
    state = MemoryState()
    for i in range(20):
        await state.put_response(f"resp_{i}", {"items": ["x" * 100_000]}, keep=1000)
    kept = [i for i in range(20) if await state.get_response(f"resp_{i}") is not None]
    assert kept == list(range(11, 20)), kept  # the nine newest fit
    await state.put_response("resp_huge", {"items": ["x" * 5_000_000]}, keep=1000)
    assert await state.get_response("resp_huge") is not None and await state.get_response("resp_19") is None


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_ballots_are_kept_within_a_byte_budget_in_either_store(
        monkeypatch: pytest.MonkeyPatch, redis_url: str, kind: str) -> None:
    """Redis kept the last `server.ballots` ballots by count alone, each every seat's whole reply: 1,000 answers of
    large replies held hundreds of MB of the memory the routers' leases share. It now keeps within the budget the
    memory store keeps (the oldest go first; one larger than it is kept alone), shared by every router, and a
    ballot put again counts once."""
    from council.cluster import memory_store, redis_store

    monkeypatch.setattr(memory_store, "MAX_BYTES", 1_000_000)
    monkeypatch.setattr(redis_store, "MAX_BYTES", 1_000_000)
    a, b = _pair(kind, redis_url)
    try:
        for i in range(20):
            await (a if i % 2 else b).put_ballot(f"chatcmpl-{i}", {"text": "x" * 100_000}, keep=1000)
        kept = [i for i in range(20) if await a.get_ballot(f"chatcmpl-{i}") is not None]
        assert kept == list(range(11, 20)), kept  # the nine newest fit
        await a.put_ballot("chatcmpl-19", {"text": "y" * 100_000}, keep=1000)  # the same id again: no one else goes
        assert [i for i in range(20) if await b.get_ballot(f"chatcmpl-{i}") is not None] == kept
        await b.put_ballot("chatcmpl-huge", {"text": "x" * 5_000_000}, keep=1000)
        assert await a.get_ballot("chatcmpl-huge") is not None and await a.get_ballot("chatcmpl-19") is None
        await a.put_ballot("chatcmpl-small", {"text": "z"}, keep=1000)  # the huge one goes once another comes
        assert await b.get_ballot("chatcmpl-huge") is None and await b.get_ballot("chatcmpl-small") is not None
        # Responses conversations are kept apart, within a budget of their own
        await a.put_response("resp_0", {"items": ["x" * 900_000]}, keep=1000)
        assert await b.get_response("resp_0") is not None and await b.get_ballot("chatcmpl-small") is not None
    finally:
        await _close(a, b)


async def test_the_store_says_whether_redis_evicts_keys(tmp_path: Path, redis_url: str) -> None:
    """A Redis with `maxmemory` and an evicting policy dropped live leases under memory pressure, and another
    router leased the same GPU memory until the holder's next renewal: the router now warns at start (README)."""
    from tests.servers import free_port, wait_for

    assert await MemoryState().eviction_policy() is None
    default = RedisState(redis_url)
    assert await default.eviction_policy() == "noeviction"
    await default.close()
    port = free_port()
    evicting = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory", "64mb",
                                 "--maxmemory-policy", "allkeys-lru"], stdout=subprocess.DEVNULL)
    state = RedisState(f"redis://127.0.0.1:{port}/0")
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                        text=True).stdout.strip() == "PONG", "redis-server")
        assert await state.eviction_policy() == "allkeys-lru"
        evicting.kill()
        evicting.wait(timeout=10)
        assert await state.eviction_policy() is None  # away: it cannot say
    finally:
        await state.close()
        evicting.kill()
        evicting.wait(timeout=10)
