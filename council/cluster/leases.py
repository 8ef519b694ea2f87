"""GPU slot leases for the councils a router runs, kept in the shared state store.

With `state: redis://...` several routers (or GPU hosts) plan on the same GPUs: before a council's members
start, its router leases their slots (one lease per GPU, atomic in Redis, with a fencing token) and renews
them while it runs. A council whose slots another router holds is not started, and says why. If Redis
goes away, councils already admitted keep answering (renewal retries quietly) and new leases are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import defaultdict

from council.cluster.store import Lease, StaleLease, StateError, StateStore
from council.plan.gpus import Gpu
from council.plan.planner import PolicyPlan
from council.plan.slots import CouncilResult, GpuSlots

log = logging.getLogger("council.cluster.leases")


def _need(result: CouncilResult, gpus: dict[str, GpuSlots]) -> list[tuple[GpuSlots, int]]:
    """The slots a council takes on each GPU."""
    need: dict[str, int] = defaultdict(int)
    for placement in result.placements:
        if placement.gpu is not None:
            need[placement.gpu] += placement.slots
    return [(gpus[name], count) for name, count in need.items()]


def gpu_key(gpu: Gpu, host: str) -> str:
    """A GPU's name in the shared store: its NVML UUID (unique everywhere), else `host/name`."""
    return gpu.uuid or f"{host}/{gpu.name}"


class LeaseKeeper:
    def __init__(self, state: StateStore, holder: str, ttl: float = 30.0, host: str | None = None) -> None:
        self.state = state
        self.holder = holder
        self.ttl = ttl
        self.host = host or socket.gethostname()
        self.leases: dict[str, list[Lease]] = {}
        self.totals: dict[str, int] = {}  # slots per GPU key, for re-acquiring a stale lease
        # What each running council needs; the renewal loop leases what is missing (e.g. after an outage).
        self.wanted: dict[str, list[tuple[GpuSlots, int]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def admit(self, plan: PolicyPlan) -> PolicyPlan:
        """Lease the slots of every council the plan admits; refuse (in a new plan) those that get none."""
        gpus = {g.gpu.name: g for g in plan.slots.gpus}
        refused = {}
        for result in plan.slots.councils:
            if result.admitted:
                reason = await self._lease(result.name, _need(result, gpus))
                if reason is not None:
                    refused[result.name] = reason
        return plan.refuse(refused)

    async def _lease(self, council: str, need: list[tuple[GpuSlots, int]]) -> str | None:
        taken: list[Lease] = []
        try:
            for on_gpu, count in need:
                key = gpu_key(on_gpu.gpu, self.host)
                self.totals[key] = on_gpu.total
                lease = await self.state.acquire(key, on_gpu.total, self.holder, count, self.ttl)
                if lease is None:
                    leased = await self.state.leased(key)
                    await self._release(taken)
                    return (f"its {count} slots on {on_gpu.gpu.name} are leased elsewhere "
                            f"({leased} of {on_gpu.total} held by other routers)")
                taken.append(lease)
        except StateError as exc:
            await self._release(taken)
            return f"cannot lease its slots: {exc}"
        self.leases[council] = taken
        self.wanted[council] = need
        return None

    def keep_wanting(self, plan: PolicyPlan) -> None:
        """The councils of `plan` run (a reload was refused): keep leasing their slots until Redis agrees."""
        gpus = {g.gpu.name: g for g in plan.slots.gpus}
        for result in plan.slots.councils:
            if result.admitted:
                self.wanted[result.name] = _need(result, gpus)

    async def _release(self, leases: list[Lease]) -> None:
        for lease in leases:
            with contextlib.suppress(StateError):
                await self.state.release(lease)

    def start_renewing(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            for council, need in list(self.wanted.items()):
                if council not in self.leases and await self._lease(council, need) is not None:
                    log.warning("council %s runs without its leases (the store refused or is away)", council)
            for council, leases in self.leases.items():
                renewed = []
                for lease in leases:
                    try:
                        renewed.append(await self.state.renew(lease, self.ttl))
                    except StaleLease:
                        # Expired while Redis was away, say: take it again if the slots are still free.
                        log.warning("lease of %s for council %s went stale; re-acquiring", lease.gpu, council)
                        try:
                            fresh = await self.state.acquire(lease.gpu, self.totals[lease.gpu], self.holder,
                                                             lease.slots, self.ttl)
                        except StateError:
                            fresh = None
                        renewed.append(fresh or lease)
                    except StateError as exc:
                        log.warning("cannot renew leases (%s); councils keep running", exc)
                        renewed.append(lease)
                self.leases[council] = renewed

    async def release_leases(self) -> None:
        for leases in self.leases.values():
            await self._release(leases)
        self.leases.clear()
        self.wanted.clear()

    async def release_all(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.release_leases()
