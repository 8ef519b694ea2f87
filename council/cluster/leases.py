"""GPU memory leases for the councils a router runs, kept in the shared state store.

With `state: redis://...` several routers (or GPU hosts) plan on the same GPUs: before a council's members
start, its router leases the memory of their slots (one lease per GPU, atomic in Redis, with a fencing token)
and renews them while it runs. Leases count bytes of memory, not slots: each router cuts a GPU into slots of its own
policy's `slots.size`, so two routers' slot counts do not compare, and together they could over-lease it. A
council whose slots another router holds is not started, and says why. If Redis goes away, councils already
admitted keep answering (renewal retries quietly) and new leases are refused.

A lease is lost when the store answers and the slots are no longer ours: our fencing token is dead (it expired
or was overwritten) and the slots went to another router. Its council's processes would go on using memory
someone else was granted, so the keeper tells its owner (`on_lost`), which stops them. From then on it asks for them
every round, as for a council refused at start, and tells its owner once they are its own again (`on_granted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from council.cluster.store import Lease, LegacyLease, StaleLease, StateError, StateStore, pause
from council.plan.gpus import Gpu, handing_back
from council.plan.planner import PolicyPlan
from council.plan.slots import CouncilResult, SlotPlan
from council.units import format_size

log = logging.getLogger("council.cluster.leases")


@dataclass(frozen=True)
class Room:
    """A GPU as this router leases on it: the capacity every router sharing it agrees on, and our reserve."""

    capacity_bytes: int
    keep_free_bytes: int  # the policy's `slots.reserve`: our own acquires leave that much unleased


@dataclass(frozen=True)
class Need:
    """What a council takes on one GPU: `slots` of its router's size, and their memory, which the store counts."""

    gpu: Gpu
    slots: int
    size: int  # bytes: exact, so what the plan fits in bytes the store fits too
    room: Room


def capacity_bytes(gpu: Gpu) -> int:
    """The GPU's capacity in the store. It must be one figure for every router that shares the GPU, so neither
    the usable memory after `slots.reserve` nor a slot count (both are per policy) will do: it is the device's
    total as NVML reports it (a policy's cap on that memory only limits its own plan), else for a declared GPU
    (`HOST/NAME` keys, shared only by routers of one host) its declared memory. In bytes, as the plan counts:
    a unit any coarser, rounded, refused councils the plan fits exactly (8 slots of 1 GB on 8 GB). Each router's
    reserve is kept by its own acquires instead (`Room.keep_free_bytes`)."""
    return gpu.device_bytes or gpu.memory_bytes


def _need(result: CouncilResult, slots: SlotPlan) -> list[Need]:
    """The slots, and their memory, that a council takes on each GPU."""
    # By id, as placements are: identical cards share a name, and by name their needs were summed on one.
    gpus = {g.gpu.id: g for g in slots.gpus}
    need: dict[str, int] = defaultdict(int)
    for placement in result.placements:
        if placement.gpu is not None:
            need[placement.gpu] += placement.slots
    return [Need(gpus[ident].gpu, count, count * slots.slot_bytes,
                 Room(capacity_bytes(gpus[ident].gpu), gpus[ident].reserve_bytes))
            for ident, count in need.items()]


def gpu_key(gpu: Gpu, host: str) -> str:
    """A GPU's name in the shared store: its NVML UUID (unique everywhere), else `host/ID` (a declared GPU's id is
    its name)."""
    return gpu.uuid or f"{host}/{gpu.id}"


@dataclass(frozen=True)
class Refusal:
    reason: str
    answered: bool  # the store answered "taken" (not: it could not be reached)


# Called with a council and why its slots are gone: another router holds them now.
LostLease = Callable[[str, str], None]
# Called with a council refused at start, or whose lease was lost, whose slots a renewal round has leased since.
GrantedLease = Callable[[str], None]


class LeaseKeeper:
    def __init__(self, state: StateStore, holder: str, ttl: float = 30.0, host: str | None = None,
                 on_lost: LostLease | None = None, on_granted: GrantedLease | None = None) -> None:
        self.state = state
        self.holder = holder
        self.ttl = ttl
        self.host = host or socket.gethostname()
        self.on_lost = on_lost
        self.on_granted = on_granted
        self.leases: dict[str, list[Lease]] = {}
        self.rooms: dict[str, Room] = {}  # per GPU key, for re-acquiring a stale lease
        # What each running council needs; the renewal loop leases what is missing (e.g. after an outage).
        self.wanted: dict[str, list[Need]] = {}
        # Councils `admit` refused (their slots held elsewhere, Redis away): asked again every round, since what
        # refused them passes (a crashed predecessor's leases expire, Redis returns) and nothing else retries.
        self.pending: dict[str, list[Need]] = {}
        self._task: asyncio.Task[None] | None = None
        self._store_away = False  # renewals failing for want of the store: said once per outage, not per lease
        # A renewal round never interleaves with a reload's release-and-lease-anew: to the round, a lease the
        # reload gave back looks stale and its slots, leased anew by the reload, taken: a council lost for nothing.
        self._lock = asyncio.Lock()

    async def admit(self, plan: PolicyPlan) -> PolicyPlan:
        """Lease the slots of every council the plan admits; refuse (in a new plan) those that get none."""
        refused = {}
        async with self._lock:
            for result in plan.slots.councils:
                # A council leased already (a renewal round that ran first) keeps its leases.
                if result.admitted and result.name not in self.leases:
                    need = _need(result, plan.slots)
                    refusal = await self._lease(result.name, need)
                    if refusal is not None:
                        refused[result.name] = refusal.reason
                        self.pending[result.name] = need
        return plan.refuse(refused)

    async def admit_instead(self, plan: PolicyPlan) -> PolicyPlan:
        """A reload's leases: those of every council `plan` admits, taken with our current leases counted as given
        back, which they are only once every new one is held. Refused (a new plan of the refusals): the new ones
        taken go back and the old ones stay held. Nothing is ever free in between, for another router to take
        while our processes still use it."""
        taken: dict[str, list[Lease]] = {}
        wanted: dict[str, list[Need]] = {}
        refused: dict[str, str] = {}
        async with self._lock:
            ours: dict[str, list[int]] = defaultdict(list)
            for lease in (lease for leases in self.leases.values() for lease in leases):
                ours[lease.gpu].append(lease.token)
            for result in plan.slots.councils:
                if result.admitted:
                    need = wanted[result.name] = _need(result, plan.slots)
                    got = await self._take(need, ours)
                    if isinstance(got, Refusal):
                        refused[result.name] = got.reason
                    else:
                        taken[result.name] = got
            if refused:
                for leases in taken.values():
                    await self._release(leases)
                return plan.refuse(refused)
            for leases in self.leases.values():
                await self._release(leases)
            self.leases, self.wanted, self.pending = taken, wanted, {}
        return plan

    async def _lease(self, council: str, need: list[Need]) -> Refusal | None:
        got = await self._take(need, {})
        if isinstance(got, Refusal):
            return got
        self.leases[council] = got
        self.wanted[council] = need
        return None

    async def _take(self, need: list[Need], replacing: dict[str, list[int]]) -> list[Lease] | Refusal:
        """A lease for each GPU of `need` (`replacing`: per GPU key, tokens of ours not counted), or why not (none
        held then)."""
        taken: list[Lease] = []
        for want in need:
            key = gpu_key(want.gpu, self.host)
            room = self.rooms[key] = want.room
            one = want.slots == 1
            what = f"its {want.slots} slot{'' if one else 's'} ({format_size(want.size)}) on {want.gpu.name}"
            try:
                lease = await self.state.acquire(key, room.capacity_bytes, self.holder, want.size, self.ttl,
                                                 room.keep_free_bytes, replacing.get(key, ()))
                holders = await self.state.holders(key) if lease is None else {}
            except LegacyLease as exc:  # the store answered: an older router holds memory of unknown size
                await self._release(taken)
                return Refusal(f"{what} cannot be leased: {exc}", answered=True)
            except StateError as exc:
                await self._release(taken)
                return Refusal(f"cannot lease its slots: {exc}", answered=False)
            if lease is None:
                await self._release(taken)
                return Refusal(f"{what} {'is' if one else 'are'} leased elsewhere ({_held(holders, room, self.holder)}"
                               f"{_kept(room)})", answered=True)
            taken.append(lease)
        return taken

    async def routers_here(self, gpu: Gpu) -> set[int]:
        """PIDs of the routers on this host that hold leases on the GPU in this store (holders are `host:pid`)."""
        found = set()
        for holder in await self.state.holders(gpu_key(gpu, self.host)):
            host, _, pid = holder.rpartition(":")
            if host == self.host and pid.isdigit():
                found.add(int(pid))
        return found

    async def for_planning(self, gpus: list[Gpu], ours: int) -> list[Gpu]:
        """The GPUs as a plan leased here must see them: the memory of our own processes (router PID `ours`) is
        handed back, and so is that of the processes of routers on this host whose leases on the GPU count them
        already. A store that cannot answer hands back only ours (the others' memory stays counted: safe)."""
        leasing: dict[str, set[int]] = {}  # by id: identical cards share a name
        for gpu in gpus:
            try:
                leasing[gpu.id] = await self.routers_here(gpu)
            except StateError:
                leasing[gpu.id] = set()
        return handing_back(gpus, lambda gpu: leasing[gpu.id] | {ours})

    async def _release(self, leases: list[Lease]) -> None:
        for lease in leases:
            with contextlib.suppress(StateError):
                await self.state.release(lease)

    def start_renewing(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="lease-renewal")

    async def _renew_forever(self) -> None:
        while True:
            await pause(self.ttl / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        """One renewal round: lease what a running council misses, renew what it holds, and report a council
        whose slots the store says are another router's now (a store that cannot be reached loses nothing)."""
        granted: list[str] = []
        async with self._lock:
            lost: dict[str, str] = {}
            for council, need in list(self.pending.items()):
                if await self._lease(council, need) is None:
                    del self.pending[council]
                    granted.append(council)
            for council, need in list(self.wanted.items()):
                if council in self.leases:
                    continue
                refusal = await self._lease(council, need)
                if refusal is not None and refusal.answered:
                    lost[council] = refusal.reason
                elif refusal is not None:
                    log.warning("council %s runs without its leases (%s)", council, refusal.reason)
            for council, leases in list(self.leases.items()):
                renewed, why = await self._renew(council, leases)
                if why is None:
                    self.leases[council] = renewed
                else:
                    await self._release(renewed)
                    del self.leases[council]
                    lost[council] = why
            for council in lost:
                # Its processes stop. Asked for again from the next round on, as a council refused at start is:
                # when the other router gives the slots back (it stopped, or its lease lapsed), it runs again.
                self.pending[council] = self.wanted.pop(council)
        for council, why in lost.items():
            log.warning("council %s lost its leases: %s", council, why)
            if self.on_lost is not None:
                self.on_lost(council, why)
        for council in granted:
            log.info("council %s has its leases now", council)
            if self.on_granted is not None:
                self.on_granted(council)

    async def _renew(self, council: str, leases: list[Lease]) -> tuple[list[Lease], str | None]:
        """The council's leases renewed, and why they are lost (None: kept, also through a store outage)."""
        renewed: list[Lease] = []
        for lease in leases:
            try:
                renewed.append(await self.state.renew(lease, self.ttl))
                if self._store_away:
                    self._store_away = False
                    log.warning("leases are renewed again")
                continue
            except StaleLease:
                pass
            except StateError as exc:
                if not self._store_away:  # it was said for every lease at every round of the outage
                    self._store_away = True
                    log.warning("cannot renew leases (%s); councils keep running", exc)
                renewed.append(lease)
                continue
            # Our fencing token is dead: it expired (while Redis was away, say) or was reclaimed. Take the
            # memory again if it is still free; if another router holds it now, it is lost.
            room = self.rooms[lease.gpu]
            what = f"its lease of {format_size(lease.size)} on {lease.gpu} (fencing token {lease.token})"
            try:
                fresh = await self.state.acquire(lease.gpu, room.capacity_bytes, self.holder, lease.size, self.ttl,
                                                 room.keep_free_bytes)
                holders = await self.state.holders(lease.gpu) if fresh is None else {}
            except LegacyLease as exc:
                return renewed + leases[len(renewed) + 1:], f"{what} is no longer held and {exc}"
            except StateError as exc:
                log.warning("lease of %s for council %s went stale and the store is away (%s); keeping it",
                            lease.gpu, council, exc)
                renewed.append(lease)
                continue
            if fresh is None:
                return renewed + leases[len(renewed) + 1:], (
                    f"{what} is no longer held, and the GPU's memory is taken ({_held(holders, room, self.holder)}"
                    f"{_kept(room)})")
            log.warning("lease of %s for council %s went stale; re-acquired (token %d)", lease.gpu, council,
                        fresh.token)
            renewed.append(fresh)
        return renewed, None

    async def release_leases(self) -> None:
        async with self._lock:
            for leases in self.leases.values():
                await self._release(leases)
            self.leases.clear()
            self.wanted.clear()
            self.pending.clear()

    async def release_all(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.release_leases()


def _held(holders: dict[str, int], room: Room, ours: str) -> str:
    """Who holds the GPU's leased memory: other routers, and ours apart (its other councils, or what a reload
    replaces), so that an operator looks for the router that holds it."""
    others = sum(held for holder, held in holders.items() if holder != ours)
    mine = f", {format_size(holders[ours])} by this router" if holders.get(ours) else ""
    return f"{format_size(others)} of {format_size(room.capacity_bytes)} held by other routers{mine}"


def _kept(room: Room) -> str:
    """Why a lease that looks like it fits is refused: our reserve stays unleased too."""
    return f", {format_size(room.keep_free_bytes)} kept free by slots.reserve" if room.keep_free_bytes else ""
