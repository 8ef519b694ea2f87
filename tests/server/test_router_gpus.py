"""A router on a GPU it shares: NVML counts every process's memory, but the router's own members are placed anew
by each plan and a neighbour's are counted by its leases, so neither is counted as held by others too. The GPU
here is an injected inventory (no GPU on the test machine); the members, the router and Redis are real."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import redis

from council.cluster.redis_store import RedisState
from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.plan.gpus import Gpu, GpuProcess, parent_pid
from council.policy.loading import load_policy
from council.server.router import Router, open_router

pytestmark = pytest.mark.anyio
MiB = 1 << 20
SLOT = 256 * MiB
NEIGHBOUR = 4_000_000  # a router PID of this host (above any real one: the inventory is made up around it)


def write_policy(path: Path, syn: Path, state: str) -> Path:
    """A council of two members, 200 MiB each: a slot each."""
    path.write_text(f"""
state: {state}
slots: {{size: 256MiB, reserve: 0}}
models:
  syn: {{path: {syn}, ctx_size: 512, memory: 200MiB, gpu_layers: 0}}
councils:
  pair:
    members: [{{model: syn, sampling: {{max_tokens: 4}}}}, {{model: syn, sampling: {{max_tokens: 4}}}}]
    vote: {{extract: text}}
""")
    return path


class FakeNvml:
    """What NVML would say of one GPU of `slots` slots: `others` plus every member process of `router`, by PID and
    parent (read from /proc, as `nvml_gpus` does)."""

    def __init__(self, slots: int, others: tuple[GpuProcess, ...] = ()) -> None:
        self.uuid = f"GPU-{uuid.uuid4()}"
        self.slots = slots
        self.others = others
        self.router: Router | None = None

    def __call__(self) -> list[Gpu]:
        ours = [p.pid for p in (self.router.processes.values() if self.router else ()) if p.pid is not None]
        processes = (*self.others, *(GpuProcess(pid, parent_pid(pid), 200 * MiB) for pid in ours))
        used = sum(p.used_bytes for p in processes)
        return [Gpu(name="Test GPU", memory_bytes=self.slots * SLOT, free_bytes=self.slots * SLOT - used,
                    source="nvml", uuid=self.uuid, used_by_others_bytes=used, processes=processes,
                    device_bytes=self.slots * SLOT)]


async def test_reload_of_a_policy_that_fills_the_gpu_is_accepted_while_its_members_run(
    tmp_path: Path, syn: Path, llama_server_bin: LlamaServerInfo
) -> None:
    """Before, the reload re-read NVML, counted the router's own two members (400 MiB) as held by others and
    refused the council that fills the GPU: `does not fit`, 0 of 0 slots."""
    path = write_policy(tmp_path / "policy.yaml", syn, "memory")
    nvml = FakeNvml(slots=2)
    router = nvml.router = open_router(path, load_policy(path), llama_server_bin,
                                       LifeConfig(run_dir=tmp_path / "run"), inventory=nvml)
    try:
        await router.start()
        assert router.assembly is not None and await router.assembly.supervisor.wait_settled(120)
        assert all(p.ready for p in router.processes.values()) and len(nvml()[0].processes) == 2
        changes = await router.reload()
        assert changes["unchanged"] == ["pair/0", "pair/1"] and changes["restarted"] == []
        [gpu] = router.plan.slots.gpus
        assert (gpu.total, gpu.used) == (2, 2)
        assert router.readiness() == (True, [])
    finally:
        await router.stop()


async def test_reload_on_a_full_gpu_counts_our_members_and_a_neighbours_leased_memory_once(
    tmp_path: Path, syn: Path, redis_url: str, llama_server_bin: LlamaServerInfo
) -> None:
    """The GPU has 4 slots; a neighbour router on this host leases 2 and its member holds their memory; our
    council takes the other 2. Before, the start refused the council (the neighbour counted by NVML and by its
    leases: 2 slots left, 2 leased) and a reload refused itself (our own members counted as others')."""
    state = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(state).flushdb()
    path = write_policy(tmp_path / "policy.yaml", syn, state)
    nvml = FakeNvml(slots=4, others=(GpuProcess(NEIGHBOUR + 1, NEIGHBOUR, 2 * SLOT),))  # the neighbour's member
    gpu_uuid = nvml.uuid
    neighbour = RedisState(state)
    # Leases count bytes: the neighbour holds 2 slots' worth (512 MiB) of the GPU's 1024.
    held = await neighbour.acquire(gpu_uuid, 4 * SLOT, f"{socket.gethostname()}:{NEIGHBOUR}", 2 * SLOT,
                                   300.0)
    assert held is not None
    router = nvml.router = open_router(path, load_policy(path), llama_server_bin,
                                       LifeConfig(run_dir=tmp_path / "run"), inventory=nvml)
    try:
        await router.start()
        assert router.plan.refused == {}
        assert router.assembly is not None and await router.assembly.supervisor.wait_settled(120)
        assert all(p.ready for p in router.processes.values())
        assert {parent_pid(p.pid) for p in router.processes.values() if p.pid is not None} == {os.getpid()}
        # The GPU is full now: the neighbour's 2 slots and our 2, each process counted once.
        assert await neighbour.leased(gpu_uuid) == 4 * SLOT

        changes = await router.reload()
        assert changes["unchanged"] == ["pair/0", "pair/1"] and changes["restarted"] == []
        [gpu] = router.plan.slots.gpus
        assert (gpu.total, gpu.used) == (4, 2)
        assert await neighbour.holders(gpu_uuid) == {f"{socket.gethostname()}:{NEIGHBOUR}": 2 * SLOT,
                                                      router.leases.holder: 2 * SLOT}
        ready, reasons = router.readiness()
        assert ready, reasons
    finally:
        await router.stop()
        await neighbour.release(held)
        await neighbour.close()
