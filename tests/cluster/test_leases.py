"""The lease keeper against a real Redis: leases count memory, so routers with different slot sizes share a GPU
without over-leasing it; a lease another router now holds is lost (and reported, once); a lease that merely
expired is taken again; a Redis outage loses nothing; an older council's lease (in slots) blocks, not crashes."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from council.cluster.leases import LeaseKeeper, Need, Room, capacity_bytes
from council.cluster.memory_store import MemoryState
from council.cluster.redis_store import RedisState
from council.plan.gpus import Gpu, GpuProcess, resolve_gpus
from council.plan.planner import PolicyPlan, plan_policy
from council.policy.loading import load_policy
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.anyio
GiB = 1 << 30


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
        assert f"its lease of 512.00 MiB on testhost/cpu (fencing token {old.token})" in reason
        assert reason.endswith("the GPU's memory is taken (512.00 MiB of 512.00 MiB held by other routers)")
        assert ours.leases == {} and ours.wanted == {}
        assert not await ours.state.check_fence(old.gpu, old.token)
        # Theirs is untouched, and the next round reports nothing again.
        await ours.renew_once()
        await theirs.renew_once()
        assert len(ours.reported) == 1 and theirs.reported == []
        assert await theirs.state.leased(old.gpu) == 512 << 20  # bytes
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


def sized_plan(tmp_path: Path, slot: str, councils: dict[str, tuple[int, str]], gpu: Gpu,
               reserve: str = "0") -> PolicyPlan:
    """A policy cutting `gpu` into slots of `slot`; each council: that many members of that memory."""
    path = tmp_path / f"policy-{slot}-{'-'.join(councils)}.yaml"
    lines = [f"slots: {{size: {slot}, reserve: {reserve}}}", "models:"]
    lines += [f"  m{name}: {{path: /nonexistent/m.gguf, memory: {memory}}}" for name, (_, memory) in councils.items()]
    lines += ["councils:"]
    lines += [f"  {name}: {{members: [{', '.join([f'{{model: m{name}}}'] * count)}]}}"
              for name, (count, _) in councils.items()]
    path.write_text("\n".join(lines) + "\n")
    return plan_policy(load_policy(path).policy, [gpu])


@pytest.mark.parametrize(("memory", "slot", "seats", "reserve"), [("8GB", "1GB", 8, "0"), ("10GB", "3GB", 3, "1GB")])
async def test_a_council_the_plan_fits_exactly_is_leased(redis_url: str, prefix: str, tmp_path: Path, memory: str,
                                                         slot: str, seats: int, reserve: str) -> None:
    """Leases count bytes, as the plan does. Counted in MiB, the slots' memory and the reserve rounded up and the
    capacity down, a council that fills a GPU sized in decimal units exactly was refused after the plan had
    admitted it (8 slots of 1 GB on 8 GB: 7630 MiB asked of 7629)."""
    from council.units import parse_size
    size = parse_size(memory)
    gpu = Gpu(name="cpu", memory_bytes=size, free_bytes=size, source="policy")
    plan = sized_plan(tmp_path, slot, {"full": (seats, "100MiB")}, gpu, reserve=reserve)
    assert plan.all_admitted
    keeper = LeaseKeeper(RedisState(redis_url, prefix=prefix), "host-a:1", host="host-a")
    try:
        assert (await keeper.admit(plan)).refused == {}
        assert await keeper.state.leased("host-a/cpu") == seats * parse_size(slot)
    finally:
        await keeper.release_all()
        await keeper.state.close()


async def test_routers_with_different_slot_sizes_never_lease_more_memory_than_the_gpu_has(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """One 40 GiB GPU (its NVML UUID is the key), two routers on other hosts: one cuts it into 20 GiB slots, the
    other into 8 GiB ones. Before, leases counted slots against each router's own slot total: the first leased 1
    of its 2, the second then 4 more of its 5 (5 <= 5), 52 GiB of 40 leased."""
    gpu = Gpu(name="GPU0", memory_bytes=40 * GiB, free_bytes=40 * GiB, source="nvml", uuid=f"GPU-{uuid.uuid4()}",
              device_bytes=40 * GiB)
    large = sized_plan(tmp_path, "20GiB", {"solo": (1, "19GiB")}, gpu)
    small = sized_plan(tmp_path, "8GiB", {"wide": (4, "7GiB"), "lone": (1, "7GiB")}, gpu)
    assert [g.total for g in large.slots.gpus] == [2] and [g.total for g in small.slots.gpus] == [5]
    assert large.all_admitted and small.all_admitted  # each plan alone fits the GPU
    first = LeaseKeeper(RedisState(redis_url, prefix=prefix), "host-a:1", host="host-a")
    second = LeaseKeeper(RedisState(redis_url, prefix=prefix), "host-b:2", host="host-b")
    try:
        assert (await first.admit(large)).all_admitted
        admitted = await second.admit(small)
        # 20 GiB + 4 x 8 GiB would be 52 GiB: refused, in memory; the one 8 GiB slot still fits beside it.
        assert admitted.refused == {"wide": "its 4 slots (32.00 GiB) on GPU0 are leased elsewhere "
                                            "(20.00 GiB of 40.00 GiB held by other routers)"}
        assert list(second.leases) == ["lone"]
        assert await first.state.holders(gpu.uuid or "") == {"host-a:1": 20 * GiB, "host-b:2": 8 * GiB}
        assert await first.state.leased(gpu.uuid or "") == 28 * GiB <= capacity_bytes(gpu)
        # Renewal keeps both, and the other way round holds too: the large slot no longer fits beside 28 GiB.
        await first.renew_once()
        await second.renew_once()
        assert list(first.leases) == ["solo"] and list(second.leases) == ["lone"]
        await first.release_leases()
        assert (await second.admit(small)).all_admitted  # `wide` now: 40 GiB in all
        refused = await first.admit(large)
        assert refused.refused == {"solo": "its 1 slot (20.00 GiB) on GPU0 is leased elsewhere "
                                           "(40.00 GiB of 40.00 GiB held by other routers)"}
    finally:
        for keeper in (first, second):
            await keeper.release_all()
            await keeper.state.close()


async def test_a_routers_reserve_stays_unleased_by_its_own_acquires(redis_url: str, prefix: str,
                                                                   tmp_path: Path) -> None:
    """The capacity is the GPU's whole memory, the same for everyone; each router's `slots.reserve` is kept by its
    own acquires, so routers of one slot size and reserve refuse what slot counts refused: 2 + 3 of 4 slots."""
    gpu = Gpu(name="GPU0", memory_bytes=10 * GiB, free_bytes=10 * GiB, source="nvml", uuid=f"GPU-{uuid.uuid4()}",
              device_bytes=10 * GiB)
    pair = sized_plan(tmp_path, "2GiB", {"pair": (2, "1536MiB")}, gpu, reserve="2GiB")
    trio = sized_plan(tmp_path, "2GiB", {"trio": (3, "1536MiB")}, gpu, reserve="2GiB")
    assert [g.total for g in trio.slots.gpus] == [4] and pair.all_admitted and trio.all_admitted
    first = LeaseKeeper(RedisState(redis_url, prefix=prefix), "a:1", host="a")
    second = LeaseKeeper(RedisState(redis_url, prefix=prefix), "b:2", host="b")
    try:
        assert (await first.admit(pair)).all_admitted
        # 4 GiB + 6 GiB fit the 10 GiB, but not beside the 2 GiB this router keeps free.
        assert (await second.admit(trio)).refused == {"trio": (
            "its 3 slots (6.00 GiB) on GPU0 are leased elsewhere (4.00 GiB of 10.00 GiB held by other routers, "
            "2.00 GiB kept free by slots.reserve)")}
    finally:
        for keeper in (first, second):
            await keeper.release_all()
            await keeper.state.close()


def test_the_capacity_is_the_devices_memory_whatever_a_policy_caps(tmp_path: Path) -> None:
    """A policy may cap a GPU's memory to plan a smaller card; the routers sharing it still agree on its capacity."""
    seen = Gpu(name="GPU0", memory_bytes=80 * GiB, free_bytes=80 * GiB, source="nvml", uuid="GPU-1",
               device_bytes=80 * GiB)
    path = tmp_path / "policy.yaml"
    path.write_text("gpus: [{name: GPU-1, memory: 24GiB}]\nmodels: {}\ncouncils: {}\n")
    [capped] = resolve_gpus(load_policy(path).policy, [seen])
    assert capped.memory_bytes == 24 * GiB
    assert capacity_bytes(capped) == capacity_bytes(seen) == 80 * GiB
    declared = Gpu(name="cpu", memory_bytes=512 * (1 << 20) + 5, free_bytes=0, source="policy")
    assert capacity_bytes(declared) == 512 * (1 << 20) + 5  # bytes, as the plan counts them


async def test_an_older_councils_lease_in_slots_refuses_the_council_and_crashes_nothing(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Left in Redis by a router from before leases counted bytes (`EXPIRES SLOTS HOLDER`), its size is unknown:
    the council is refused with a reason, like slots leased elsewhere, until that lease is gone."""
    plan = two_slot_plan(tmp_path)
    ours = Keeper(RedisState(redis_url, prefix=prefix), "a:1")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"{prefix}gpu:testhost/cpu:leases"
    try:
        seconds, micros = client.time()
        client.hset(key, "3", f"{seconds * 1000 + micros // 1000 + 300_000} 1 oldhost:7")
        refused = await ours.admit(plan)
        assert refused.refused["pair"].startswith("its 2 slots (512.00 MiB) on cpu cannot be leased: an older "
                                                  "council router holds a live lease on testhost/cpu")
        assert ours.leases == {}
        client.delete(key)
        assert (await ours.admit(plan)).all_admitted
    finally:
        client.close()
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
        assert await ours.state.leased(fresh.gpu) == 512 << 20  # bytes
    finally:
        await ours.release_all()
        await ours.state.close()
        server.kill()
        server.wait(timeout=10)


async def test_planning_hands_back_ours_and_leasing_neighbours_on_this_host_only(redis_url: str,
                                                                                prefix: str) -> None:
    """A neighbour's members are counted by its leases: NVML's count of them is handed back, once. A router that
    leases nothing here (another store, `state: memory`) or a process of another host's holder stays counted."""
    size = 1 << 20
    gpu = Gpu(name="H100", memory_bytes=4096 * size, free_bytes=1024 * size, source="nvml", uuid="GPU-x",
              used_by_others_bytes=3072 * size,
              processes=(GpuProcess(11, 10, 1024 * size),    # ours (router 10)
                         GpuProcess(21, 20, 1024 * size),    # a neighbour that leases here (router 20)
                         GpuProcess(31, 30, 1024 * size)))   # a router that leases in another store
    state = RedisState(redis_url, prefix=prefix)
    keeper = Keeper(state, "testhost:10")
    try:
        assert await state.acquire("GPU-x", 16, "testhost:20", 4, 30.0) is not None
        assert await state.acquire("GPU-x", 16, "otherhost:30", 4, 30.0) is not None  # same PID, other host
        assert await state.holders("GPU-x") == {"testhost:20": 4, "otherhost:30": 4}
        assert await keeper.routers_here(gpu) == {20}
        [planned] = await keeper.for_planning([gpu], ours=10)
        assert planned.used_by_others_bytes == 1024 * size
        assert [p.pid for p in planned.processes] == [31]
    finally:
        await state.close()
    # The store away: only our own memory is handed back (the neighbour's stays counted, the safe side).
    away = Keeper(RedisState(f"redis://127.0.0.1:{free_port()}/0"), "testhost:10")
    [planned] = await away.for_planning([gpu], ours=10)
    assert planned.used_by_others_bytes == 2048 * size
    await away.state.close()


async def test_two_identical_gpus_are_leased_and_handed_back_each_on_its_own(tmp_path: Path) -> None:
    """NVML names identical cards alike. Before, leases keyed GPUs by that name: a council of 20 GiB on each of
    two 24 GiB cards asked for 40 GiB of one card's memory and was refused; and planning handed back on both
    cards the processes of a router that leases on one only."""
    name = "NVIDIA GeForce RTX 4090"
    a, b = (Gpu(name=name, memory_bytes=24 * GiB, free_bytes=24 * GiB, source="nvml", index=i, uuid=f"GPU-{i}",
                device_bytes=24 * GiB) for i in range(2))
    plan = sized_plan(tmp_path, "1GiB", {"duo": (2, "20GiB")}, a)
    plan = plan_policy(plan.policy, [a, b])
    assert plan.all_admitted
    state = MemoryState()
    keeper = LeaseKeeper(state, "testhost:10", host="testhost")
    assert (await keeper.admit(plan)).refused == {}
    assert await state.holders("GPU-0") == await state.holders("GPU-1") == {"testhost:10": 20 * GiB}
    await keeper.release_leases()

    # Router 20 of this host leases on the second card only; a process of it sits on each card.
    held = [GpuProcess(21, 20, GiB)]
    a, b = (replace(g, free_bytes=23 * GiB, used_by_others_bytes=GiB, processes=tuple(held)) for g in (a, b))
    assert await state.acquire("GPU-1", 24 * GiB, "testhost:20", GiB, 30.0) is not None
    first, second = await keeper.for_planning([a, b], ours=10)
    assert first.used_by_others_bytes == GiB  # its leases do not count it on this card
    assert second.used_by_others_bytes == 0


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_refusal_counts_this_routers_own_leases_apart_from_other_routers(redis_url: str, prefix: str,
                                                                                 store: str) -> None:
    """Two councils of one router that its plan fits beside a neighbour's lease but its leases cannot both get:
    the refusal said "3.00 GiB of 4.00 GiB held by other routers" where another router holds 1 GiB, sending the
    operator after the wrong router."""
    def state() -> MemoryState | RedisState:
        return shared if store == "memory" else RedisState(redis_url, prefix=prefix)

    shared = MemoryState()
    gpu = Gpu(name="GPU0", memory_bytes=4 * GiB, free_bytes=4 * GiB, source="nvml", uuid=f"GPU-{uuid.uuid4()}")
    room = Room(capacity_bytes=4 * GiB, keep_free_bytes=0)
    other, ours = LeaseKeeper(state(), holder="otherhost:111", host="h"), LeaseKeeper(state(), holder="h:222", host="h")
    try:
        assert await other._lease("x", [Need(gpu, 1, GiB, room)]) is None
        assert await ours._lease("a", [Need(gpu, 2, 2 * GiB, room)]) is None
        refusal = await ours._lease("b", [Need(gpu, 2, 2 * GiB, room)])
        assert refusal is not None and refusal.reason == (
            "its 2 slots (2.00 GiB) on GPU0 are leased elsewhere (1.00 GiB of 4.00 GiB held by other routers, "
            "2.00 GiB by this router)")
    finally:
        for keeper in (other, ours):
            await keeper.release_all()
            await keeper.state.close()


async def test_a_store_outage_is_said_once_not_for_every_lease_at_every_round(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """"cannot renew leases" was logged for every lease at every renewal round for as long as Redis was away (the
    registry said its outage once); now once, and once again when renewals go through. (A store that refuses to
    renew stands in for an unreachable Redis.)"""
    import logging

    from council.cluster.store import Lease, StateError

    class Away(MemoryState):
        away = False

        async def renew(self, lease: Lease, ttl: float) -> Lease:
            if self.away:
                raise StateError("Redis at redis://x is unreachable: Connection refused")
            return await super().renew(lease, ttl)

    caplog.set_level(logging.WARNING, logger="council.cluster.leases")
    state = Away()
    keeper = LeaseKeeper(state, "host-a:1", host="host-a")
    assert (await keeper.admit(two_slot_plan(tmp_path))).all_admitted
    state.away = True
    for _ in range(3):
        await keeper.renew_once()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if m.startswith("cannot renew leases")]) == 1, said
    state.away = False
    await keeper.renew_once()
    await keeper.renew_once()
    assert [r.getMessage() for r in caplog.records][1:] == ["leases are renewed again"]
    await keeper.release_all()
