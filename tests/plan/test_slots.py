"""Slot packing: never over-allocates, admits whole councils only, same input -> same plan."""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from council.plan import slots
from council.plan.gpus import Gpu, GpuProcess, handing_back, nvml_gpus, parent_pid
from council.plan.slots import CouncilNeed, ProcessNeed, gpu_slots, pack, slots_for

GiB = 1 << 30


def gpu(name: str, gib: float, others: float = 0) -> Gpu:
    return Gpu(name=name, memory_bytes=int(gib * GiB), free_bytes=int(gib * GiB), source="policy",
               used_by_others_bytes=int(others * GiB))


def council(name: str, *estimates_gib: float) -> CouncilNeed:
    return CouncilNeed(name, tuple(
        ProcessNeed(f"{name}/{i}", "m", (f"{name}/{i}",), int(e * GiB)) for i, e in enumerate(estimates_gib)))


def test_slot_counts() -> None:
    assert slots_for(int(2.7 * GiB), 3 * GiB) == 1
    assert slots_for(3 * GiB, 3 * GiB) == 1
    assert slots_for(3 * GiB + 1, 3 * GiB) == 2
    assert slots_for(1, 3 * GiB) == 1
    [g] = gpu_slots([gpu("a", 24)], 3 * GiB, GiB // 2)
    assert g.total == 7  # (24 - 0.5) // 3
    [g] = gpu_slots([gpu("a", 24, others=5)], 3 * GiB, GiB // 2)
    assert g.total == 6  # memory held by other processes is not ours to plan


def test_seed_card_council_of_seven_fits_one_24gib_gpu_and_an_eighth_does_not() -> None:
    plan = pack([council("seven", *[2.7] * 7), council("one-more", 2.7)], [gpu("rtx", 24)], 3 * GiB, GiB // 2)
    assert [c.fits for c in plan.councils] == [True, False]
    assert plan.gpus[0].used == 7
    reason = plan.councils[1].reason or ""
    assert "process one-more/0" in reason and "3.00 GiB missing on rtx (0 of 7 slots free)" in reason


def test_member_larger_than_any_gpu_is_named() -> None:
    plan = pack([council("big", 1, 30)], [gpu("a", 24), gpu("b", 16)], 3 * GiB, 0)
    assert not plan.councils[0].fits
    assert "process big/1" in (plan.councils[0].reason or "")
    assert "needs 10 slots" in (plan.councils[0].reason or "")
    assert [g.used for g in plan.gpus] == [0, 0]  # nothing of a refused council is kept


def test_exact_search_finds_split_that_greedy_misses() -> None:
    # Two GPUs of 5 slots; first-fit-decreasing of [3,3,2,2] fits, but a greedy order 2,2,3,3 onto the
    # first GPU would not: the search must find {3,2} + {3,2}.
    plan = pack([council("c", 3, 3, 2, 2)], [gpu("a", 5), gpu("b", 5)], GiB, 0)
    assert plan.councils[0].fits
    assert sorted(g.used for g in plan.gpus) == [5, 5]


def test_a_large_council_that_fills_the_gpus_exactly_is_admitted() -> None:
    """22 processes that fill 7 GPUs of 16 slots exactly. Before, the search spent its 200,000 steps on states
    it had already seen fail and refused the council with a false reason: "member c/21 ... 1.00 GiB missing"."""
    sizes = [14, 11, 10, 8, 7, 6, 6, 5, 5, 5, 5, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    plan = pack([council("c", *sizes)], [gpu(f"g{i}", 16) for i in range(7)], GiB, 0)
    assert plan.councils[0].fits, plan.councils[0].reason
    assert [g.used for g in plan.gpus] == [16] * 7


def test_a_search_that_runs_out_of_steps_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the bound is reached, the reason is that, not a missing-memory reason that is false."""
    monkeypatch.setattr(slots, "SEARCH_STEPS", 3)
    plan = pack([council("c", 3, 3, 2, 2, 1, 1)], [gpu("a", 6), gpu("b", 6)], GiB, 0)
    [result] = plan.councils
    assert not result.fits and all(p.gpu is None for p in result.placements)
    assert result.reason == ("the search for a split of its 6 processes (12 slots) over the GPUs' free slots "
                             "(a: 6, b: 6) gave up after 3 steps: it may fit, but no split was found")
    assert [g.used for g in plan.gpus] == [0, 0]


def test_no_gpus_is_a_reason_not_a_crash() -> None:
    plan = pack([council("c", 1)], [], GiB, 0)
    assert not plan.councils[0].fits
    assert "no GPU" in (plan.councils[0].reason or "")


def test_fallback_is_admitted_when_the_council_is_not() -> None:
    plan = pack([council("c", 2, 2, 2)], [gpu("a", 4)], GiB, 0, fallback=lambda name: council(name, 2, 2))
    result = plan.councils[0]
    assert not result.fits and result.fallback and result.admitted
    assert len(result.placements) == 2
    assert plan.gpus[0].used == 4


councils_st = st.lists(
    st.lists(st.floats(min_value=0.1, max_value=12, allow_nan=False), min_size=1, max_size=6),
    min_size=1, max_size=6,
)
gpus_st = st.lists(st.floats(min_value=0, max_value=48, allow_nan=False), min_size=0, max_size=4)


@settings(max_examples=300, deadline=None)
@given(councils_st, gpus_st, st.sampled_from([1, 2, 3]), st.sampled_from([0, 0.5]))
def test_packing_properties(sizes: list[list[float]], gpu_gib: list[float], slot_gib: int, reserve: float) -> None:
    needs = [council(f"c{i}", *s) for i, s in enumerate(sizes)]
    gpus = [gpu(f"g{i}", m) for i, m in enumerate(gpu_gib)]
    slot, res = slot_gib * GiB, int(reserve * GiB)
    plan = pack(needs, gpus, slot, res)
    # Never over-allocates: per GPU, used slots <= total and slot bytes fit in memory minus reserve.
    used: dict[str, int] = {}
    for result in plan.councils:
        if result.fits:
            assert all(p.gpu is not None for p in result.placements)  # whole council placed
            for p in result.placements:
                assert p.slots * slot >= p.process.estimate_bytes
                used[p.gpu] = used.get(p.gpu, 0) + p.slots  # type: ignore[index]
        else:
            assert all(p.gpu is None for p in result.placements)  # nothing of it placed
            assert result.reason
    for g in plan.gpus:
        assert used.get(g.gpu.id, 0) == g.used <= g.total
        assert g.used * slot <= max(0, g.gpu.memory_bytes - res)
    # Deterministic: the same input gives the same plan.
    again = pack(needs, gpus, slot, res)
    assert [(c.fits, c.placements, c.reason) for c in again.councils] == [
        (c.fits, c.placements, c.reason) for c in plan.councils]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
       st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=3))
def test_refused_only_when_no_assignment_exists(needs: list[int], free: list[int]) -> None:
    """Brute force over every assignment agrees with the planner on whether a lone council fits."""
    import itertools

    possible = any(
        all(sum(n for n, g in zip(needs, combo, strict=True) if g == k) <= free[k] for k in range(len(free)))
        for combo in itertools.product(range(len(free)), repeat=len(needs))
    )
    plan = pack([council("c", *needs)], [gpu(f"g{i}", f) for i, f in enumerate(free)], GiB, 0)
    assert plan.councils[0].fits == possible


def test_handing_back_frees_only_the_processes_of_the_named_routers() -> None:
    """NVML's count of memory held by processes includes a router's own members and its leasing neighbours';
    handed back, those leave `used_by_others`; a process of anyone else stays counted."""
    ours, neighbour, stranger = GpuProcess(101, 100, 3 * GiB), GpuProcess(201, 200, 3 * GiB), GpuProcess(301, 1, GiB)
    orphan = GpuProcess(401, None, GiB)  # its parent is not visible here: never handed back
    full = Gpu(name="rtx", memory_bytes=24 * GiB, free_bytes=16 * GiB, source="nvml",
               used_by_others_bytes=8 * GiB, processes=(ours, neighbour, stranger, orphan))
    [g] = handing_back([full], lambda gpu: {100, 200} if gpu.name == "rtx" else set())
    assert g.used_by_others_bytes == 2 * GiB and g.free_bytes == 22 * GiB
    assert g.processes == (stranger, orphan)
    assert [s.total for s in gpu_slots([g], 3 * GiB, 0)] == [7]  # before: (24 - 8) // 3 = 5
    assert handing_back([full], lambda gpu: set()) == [full]


def test_memory_nvml_does_not_report_free_is_never_planned() -> None:
    """Before, the cut took the total less the listed processes: 14 GiB that NVML's lists miss (a desktop's
    graphics processes, a process it cannot size) counted as free, and 23 slots were planned where 10 GiB are."""
    unlisted = Gpu(name="rtx", memory_bytes=24 * GiB, free_bytes=10 * GiB, source="nvml")
    assert [s.total for s in gpu_slots([unlisted], GiB, GiB)] == [9]  # (10 - 1) // 1
    # What this router hands back counts as free again, and still no more than that.
    ours = Gpu(name="rtx", memory_bytes=24 * GiB, free_bytes=10 * GiB, source="nvml", used_by_others_bytes=4 * GiB,
               processes=(GpuProcess(101, 100, 4 * GiB),))
    [back] = handing_back([ours], lambda gpu: {100})
    assert back.free_bytes == 14 * GiB and [s.total for s in gpu_slots([back], GiB, GiB)] == [13]


def test_nvml_counts_graphics_processes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake pynvml: a 24 GiB card whose desktop holds 14 GiB through graphics processes, one of them also a
    compute process. Before, only compute processes were asked: a council of 2 x 8 GiB was admitted on 10 GiB."""
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    both = SimpleNamespace(pid=2**22 + 1, usedGpuMemory=4 * GiB)  # no such PID here: no parent
    vars(fake).update(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(total=24 * GiB, free=10 * GiB, used=14 * GiB),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [both],
        nvmlDeviceGetGraphicsRunningProcesses=lambda handle: [both, SimpleNamespace(pid=2**22 + 2,
                                                                                    usedGpuMemory=10 * GiB)],
        nvmlDeviceGetName=lambda handle: b"NVIDIA GeForce RTX 4090", nvmlDeviceGetUUID=lambda handle: b"GPU-0")
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    [seen] = nvml_gpus()
    assert seen.used_by_others_bytes == 14 * GiB and seen.free_bytes == 10 * GiB
    assert sorted(p.used_bytes for p in seen.processes) == [4 * GiB, 10 * GiB]
    plan = pack([council("c", 8, 8)], [seen], GiB, GiB)
    assert not plan.councils[0].fits and plan.gpus[0].total == 9
    assert "missing on NVIDIA GeForce RTX 4090" in (plan.councils[0].reason or "")


def test_parent_pid_reads_proc() -> None:
    assert parent_pid(os.getpid()) == os.getppid()
    assert parent_pid(2**22 + 1) is None  # beyond pid_max: no such process
