"""The lease keeper against a real Redis: a lease another router now holds is lost (and reported, once); a
lease that merely expired is taken again; a Redis outage loses nothing."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from council.cluster.leases import LeaseKeeper
from council.cluster.redis_store import RedisState
from council.plan.gpus import Gpu, GpuProcess
from council.plan.planner import PolicyPlan, plan_policy
from council.policy.loading import load_policy
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def two_slot_plan(tmp_path: Path) -> PolicyPlan:
    """One council that takes both slots of a declared 512 MiB `cpu`."""
    path = tmp_path / "policy.yaml"
    path.write_text("""
gpus: [{name: cpu, memory: 512MiB}]
slots: {size: 256MiB, reserve: 0}
models:
  m: {path: /nonexistent/m.gguf, memory: 200MiB}
councils:
  pair:
    members: [{model: m}, {model: m}]
""")
    plan = plan_policy(load_policy(path).policy)
    assert plan.all_admitted and [g.total for g in plan.slots.gpus] == [2]
    return plan


class Keeper(LeaseKeeper):
    """A keeper that records what it reports lost."""

    def __init__(self, state: RedisState, holder: str) -> None:
        super().__init__(state, holder, ttl=30.0, host="testhost", on_lost=self.record)
        self.reported: list[tuple[str, str]] = []

    def record(self, council: str, reason: str) -> None:
        self.reported.append((council, reason))


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    yield f"test:{uuid.uuid4().hex}:"


async def test_a_lease_another_router_took_is_lost_and_reported(redis_url: str, prefix: str,
                                                                tmp_path: Path) -> None:
    """Before, the stale lease was kept (`fresh or lease`) and nobody was told: its processes went on."""
    plan = two_slot_plan(tmp_path)
    ours, theirs = Keeper(RedisState(redis_url, prefix=prefix), "a:1"), Keeper(RedisState(redis_url, prefix=prefix),
                                                                              "b:2")
    try:
        assert (await ours.admit(plan)).all_admitted
        [old] = ours.leases["pair"]
        assert not (await theirs.admit(plan)).all_admitted  # both slots are ours
        # Our lease lapses (a long pause, a clock jump on Redis...) and the other router takes the slots.
        redis.Redis.from_url(redis_url).delete(f"{prefix}gpu:testhost/cpu:leases")
        assert (await theirs.admit(plan)).all_admitted
        await ours.renew_once()
        [(council, reason)] = ours.reported
        assert council == "pair"
        assert f"fencing token {old.token}" in reason and "another router holds the GPU (2 of 2" in reason
        assert ours.leases == {} and ours.wanted == {}
        assert not await ours.state.check_fence(old.gpu, old.token)
        # Theirs is untouched, and the next round reports nothing again.
        await ours.renew_once()
        await theirs.renew_once()
        assert len(ours.reported) == 1 and theirs.reported == []
        assert await theirs.state.leased(old.gpu) == 2
    finally:
        await ours.release_all()
        await theirs.release_all()
        await ours.state.close()
        await theirs.state.close()


async def test_an_overwritten_lease_is_lost(redis_url: str, prefix: str, tmp_path: Path) -> None:
    """Another holder written over our token (the store answers: not ours) with the GPU full: lost."""
    plan = two_slot_plan(tmp_path)
    ours = Keeper(RedisState(redis_url, prefix=prefix), "a:1")
    try:
        await ours.admit(plan)
        [lease] = ours.leases["pair"]
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        key = f"{prefix}gpu:testhost/cpu:leases"
        entry = client.hget(key, str(lease.token))
        assert isinstance(entry, str) and entry.endswith(" a:1")
        client.hset(key, str(lease.token), entry.replace(" a:1", " b:2"))
        await ours.renew_once()
        assert [c for c, _ in ours.reported] == ["pair"]
    finally:
        await ours.release_all()
        await ours.state.close()


async def test_an_expired_lease_with_free_slots_is_taken_again(redis_url: str, prefix: str, tmp_path: Path) -> None:
    plan = two_slot_plan(tmp_path)
    ours = Keeper(RedisState(redis_url, prefix=prefix), "a:1")
    try:
        await ours.admit(plan)
        [old] = ours.leases["pair"]
        redis.Redis.from_url(redis_url).delete(f"{prefix}gpu:testhost/cpu:leases")
        await ours.renew_once()
        [fresh] = ours.leases["pair"]
        assert ours.reported == [] and fresh.token > old.token
        assert await ours.state.check_fence(fresh.gpu, fresh.token)
    finally:
        await ours.release_all()
        await ours.state.close()


def _redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                    text=True).stdout.strip() == "PONG", "redis-server")
    return proc


async def test_a_redis_outage_loses_nothing(tmp_path: Path) -> None:
    """Redis gone: renewal fails and nothing is reported lost. Back empty: the slots are free, leased again."""
    plan = two_slot_plan(tmp_path)
    port = free_port()
    server = _redis(port, tmp_path)
    ours = Keeper(RedisState(f"redis://127.0.0.1:{port}/0"), "a:1")
    try:
        await ours.admit(plan)
        [old] = ours.leases["pair"]
        server.kill()
        server.wait(timeout=10)
        await ours.renew_once()
        await ours.renew_once()
        assert ours.reported == [] and ours.leases["pair"] == [old]
        server = _redis(port, tmp_path)  # nothing kept on disk: our token is unknown there now
        await ours.renew_once()
        [fresh] = ours.leases["pair"]
        assert ours.reported == [] and fresh.token != old.token
        assert await ours.state.leased(fresh.gpu) == 2
    finally:
        await ours.release_all()
        await ours.state.close()
        server.kill()
        server.wait(timeout=10)


async def test_planning_hands_back_ours_and_leasing_neighbours_on_this_host_only(redis_url: str,
                                                                                prefix: str) -> None:
    """A neighbour's members are counted by its leases: NVML's count of them is handed back, once. A router that
    leases nothing here (another store, `state: memory`) or a process of another host's holder stays counted."""
    mib = 1 << 20
    gpu = Gpu(name="H100", memory_bytes=4096 * mib, free_bytes=1024 * mib, source="nvml", uuid="GPU-x",
              used_by_others_bytes=3072 * mib,
              processes=(GpuProcess(11, 10, 1024 * mib),    # ours (router 10)
                         GpuProcess(21, 20, 1024 * mib),    # a neighbour that leases here (router 20)
                         GpuProcess(31, 30, 1024 * mib)))   # a router that leases in another store
    state = RedisState(redis_url, prefix=prefix)
    keeper = Keeper(state, "testhost:10")
    try:
        assert await state.acquire("GPU-x", 16, "testhost:20", 4, 30.0) is not None
        assert await state.acquire("GPU-x", 16, "otherhost:30", 4, 30.0) is not None  # same PID, other host
        assert await state.holders("GPU-x") == {"testhost:20": 4, "otherhost:30": 4}
        assert await keeper.routers_here(gpu) == {20}
        [planned] = await keeper.for_planning([gpu], ours=10)
        assert planned.used_by_others_bytes == 1024 * mib
        assert [p.pid for p in planned.processes] == [31]
    finally:
        await state.close()
    # The store away: only our own memory is handed back (the neighbour's stays counted, the safe side).
    away = Keeper(RedisState(f"redis://127.0.0.1:{free_port()}/0"), "testhost:10")
    [planned] = await away.for_planning([gpu], ours=10)
    assert planned.used_by_others_bytes == 2048 * mib
    await away.state.close()
