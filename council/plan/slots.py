"""Tiny-council slot packing: each GPU minus its reserve is cut into fixed slots; a member process takes
ceil(estimate / slot size) slots on one GPU; a council is admitted whole or not at all.

Councils are placed in policy order. Within a council an exact search (largest process first, GPUs by
index) finds a placement whenever one exists for the slots still free, so the result is deterministic
and a council is refused only when it truly cannot fit beside the councils admitted before it, or, for a
council of very many processes, when the search runs out of steps (its reason says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from council.plan.gpus import Gpu
from council.units import format_size


@dataclass(frozen=True)
class ProcessNeed:
    """One llama-server process to place; `seats` are the council seats it serves. `key`: a member entry's name
    (`COUNCIL/INDEX` unless named), or `COUNCIL:MODEL` for the process a `share: true` model's members share."""

    key: str
    model: str
    seats: tuple[str, ...]
    estimate_bytes: int


@dataclass(frozen=True)
class CouncilNeed:
    name: str
    processes: tuple[ProcessNeed, ...]


@dataclass
class GpuSlots:
    gpu: Gpu
    reserve_bytes: int
    total: int
    used: int = 0

    @property
    def free(self) -> int:
        return self.total - self.used


@dataclass(frozen=True)
class Placement:
    process: ProcessNeed
    slots: int
    gpu: str | None  # the GPU's `id` (identical cards share a name), None where not placed


@dataclass(frozen=True)
class CouncilResult:
    """`fits`: admitted as declared; `fallback`: admitted as its fallback (`reason` says why not as declared)."""

    name: str
    fits: bool
    reason: str | None
    placements: tuple[Placement, ...]
    fallback: bool = False

    @property
    def admitted(self) -> bool:
        return self.fits or self.fallback


@dataclass
class SlotPlan:
    slot_bytes: int
    gpus: list[GpuSlots]
    councils: list[CouncilResult] = field(default_factory=list)


def slots_for(estimate_bytes: int, slot_bytes: int) -> int:
    return max(1, math.ceil(estimate_bytes / slot_bytes))


def gpu_slots(gpus: Sequence[Gpu], slot_bytes: int, reserve_bytes: int) -> list[GpuSlots]:
    """Whole slots per GPU after the reserve and any memory other processes already hold."""
    result = []
    for gpu in gpus:
        # Never more than the free memory: what NVML's process lists miss (graphics, unlisted or unsized
        # processes) is held all the same. Other processes hold part of the device, not of a policy's cap on it:
        # a 24 GiB cap on an 80 GiB card where others hold 50 is 24 GiB of room, not 24 - 50.
        device = gpu.device_bytes or gpu.memory_bytes
        room = min(gpu.memory_bytes, device - gpu.used_by_others_bytes, gpu.free_bytes)
        usable = room - reserve_bytes
        result.append(GpuSlots(gpu=gpu, reserve_bytes=reserve_bytes, total=max(0, usable // slot_bytes)))
    return result


# The exact search's bound. Remembering failed states keeps councils far below it (22 processes filling 7 GPUs:
# under a thousand steps); it only stops a pathological one from hanging `council plan` and the router.
SEARCH_STEPS = 200_000


class _GaveUp(Exception):
    """The search used its steps without settling whether the council fits."""


def _search(needs: list[int], free: list[int], limit: int) -> list[int] | None:
    """Assign each need (slots) to a GPU index so no GPU exceeds its free slots; None if impossible. Raises
    `_GaveUp` after `limit` steps.

    Needs are sorted largest first by the caller. Whether the needs from i on fit depends only on the multiset
    of free slots, not on which GPU has which: so a state that failed is remembered by (i, sorted free) and never
    searched again, and GPUs with equal free space at a depth are interchangeable (only the first is tried).
    """
    assignment: list[int] = [-1] * len(needs)
    rest = [sum(needs[i:]) for i in range(len(needs) + 1)]  # the slots still to place from i on
    failed: set[tuple[int, tuple[int, ...]]] = set()
    steps = 0

    def place(i: int) -> bool:
        nonlocal steps
        if i == len(needs):
            return True
        state = (i, tuple(sorted(free)))
        if state in failed or rest[i] > sum(free):
            return False
        steps += 1
        if steps > limit:
            raise _GaveUp
        tried: set[int] = set()
        for g, room in enumerate(free):
            if room < needs[i] or room in tried:
                continue
            tried.add(room)
            free[g] -= needs[i]
            assignment[i] = g
            if place(i + 1):
                return True
            free[g] += needs[i]
        failed.add(state)
        return False

    return assignment if place(0) else None


def _gave_up(slots: list[int], gpus: list[GpuSlots]) -> str:
    """The reason for a council the search could not settle: not a missing-memory reason, which would be false."""
    return (f"the search for a split of its {len(slots)} processes ({sum(slots)} slots) over the GPUs' free "
            f"slots ({', '.join(f'{g.gpu.name}: {g.free}' for g in gpus)}) gave up after {SEARCH_STEPS:,} steps: "
            "it may fit, but no split was found")


def _why_not(need: CouncilNeed, slots: list[int], gpus: list[GpuSlots], slot_bytes: int) -> str:
    """Name the member that does not fit, how much is missing and where."""
    order = sorted(range(len(slots)), key=lambda i: -slots[i])
    free = [g.free for g in gpus]
    if not gpus:
        return "no GPU to place on: NVML sees none and the policy declares no `gpus:`"
    for i in order:
        proc = need.processes[i]
        best = max(range(len(free)), key=lambda g: (free[g], -g))
        if free[best] >= slots[i]:
            free[best] -= slots[i]
            continue
        who = ", ".join(proc.seats) if len(proc.seats) <= 3 else f"{proc.key} ({len(proc.seats)} seats)"
        largest = max(gpus, key=lambda g: g.total)
        if slots[i] > largest.total:
            return (f"process {who} ({proc.model}, estimate {format_size(proc.estimate_bytes)}) needs {slots[i]} "
                    f"slots of {format_size(slot_bytes)} but the largest GPU, {largest.gpu.name}, has only "
                    f"{largest.total} after its reserve")
        missing = (slots[i] - free[best]) * slot_bytes
        return (f"process {who} ({proc.model}, estimate {format_size(proc.estimate_bytes)}, {slots[i]} slots) "
                f"does not fit: {format_size(missing)} missing on {gpus[best].gpu.name} "
                f"({free[best]} of {gpus[best].total} slots free)")
    used = sum(slots)
    return (f"needs {used} slots in all and no split of them over the GPUs' free slots "
            f"({', '.join(f'{g.gpu.name}: {g.free}' for g in gpus)}) holds every process")


def place_council(need: CouncilNeed, gpus: list[GpuSlots], slot_bytes: int) -> CouncilResult:
    """Admit the whole council (taking its slots) or none of it."""
    slots = [slots_for(p.estimate_bytes, slot_bytes) for p in need.processes]
    order = sorted(range(len(slots)), key=lambda i: (-slots[i], i))
    try:
        assignment = _search([slots[i] for i in order], [g.free for g in gpus], SEARCH_STEPS) if gpus else None
        reason = _why_not(need, slots, gpus, slot_bytes) if assignment is None else None
    except _GaveUp:
        assignment, reason = None, _gave_up(slots, gpus)
    if assignment is None:
        placements = tuple(Placement(p, s, None) for p, s in zip(need.processes, slots, strict=True))
        return CouncilResult(need.name, False, reason, placements)
    where: dict[int, int] = {order[k]: g for k, g in enumerate(assignment)}
    for i, g in where.items():
        gpus[g].used += slots[i]
    placements = tuple(Placement(p, slots[i], gpus[where[i]].gpu.id) for i, p in enumerate(need.processes))
    return CouncilResult(need.name, True, None, placements)


def pack(
    councils: Sequence[CouncilNeed],
    gpus: Sequence[Gpu],
    slot_bytes: int,
    reserve_bytes: int,
    fallback: Callable[[str], CouncilNeed | None] | None = None,
) -> SlotPlan:
    """Place councils in order; a council that does not fit may be replaced by its fallback, if that fits."""
    plan = SlotPlan(slot_bytes=slot_bytes, gpus=gpu_slots(gpus, slot_bytes, reserve_bytes))
    for need in councils:
        result = place_council(need, plan.gpus, slot_bytes)
        if not result.fits and fallback is not None and (alt := fallback(need.name)) is not None:
            alt_result = place_council(alt, plan.gpus, slot_bytes)
            if alt_result.fits:
                result = CouncilResult(need.name, False, result.reason, alt_result.placements, fallback=True)
        plan.councils.append(result)
    return plan
