"""GPUs council may place members on: what NVML sees, or what the policy declares where it sees none.

Only what NVML reports free is free: memory held by graphics processes, or by processes NVML does not list or
cannot size, is in no process list, so the slot cut never counts more than `free_bytes`.

What NVML reports as held by processes is not all held by others: a router's own member processes (a reload
places them anew) and those of a router on this host whose leases the planning router sees (the leases count
them) must not be counted a second time; `handing_back` takes them out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from council.policy.schema import GpuDecl, Policy

# Members on a declared `cpu` live in host memory; anything else is a GPU.
Device = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML sees on a GPU: its PID, its parent's (a member's parent is the router that started it) and
    the GPU memory it holds."""

    pid: int
    parent: int | None
    used_bytes: int


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    free_bytes: int  # NVML's free, plus what `handing_back` returns: the most a plan may count as free
    source: Literal["nvml", "policy"]
    index: int = 0
    uuid: str | None = None
    # Memory held by processes that are not ours; the planner must not count it as free.
    used_by_others_bytes: int = 0
    processes: tuple[GpuProcess, ...] = ()  # what `used_by_others_bytes` sums, where NVML lists them
    # The device's own total as NVML reports it, kept when a policy caps `memory_bytes`: a cap is one router's
    # planning, while routers sharing the GPU must agree on what it holds (leases count against this).
    device_bytes: int | None = None
    # This GPU among the others, for placement, launch and leases (`name` is for messages): NVML gives identical
    # cards the same product name. Its UUID, else NVML's index (`gpuN`), else the declared name (unique in a
    # policy). Set once from what NVML or the policy said, so a policy's cap (`replace`) keeps it.
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            ident = self.uuid or (f"gpu{self.index}" if self.source == "nvml" else self.name)
            object.__setattr__(self, "id", ident)


# Where a router's GPUs come from: NVML on a real host; a test hands in its own.
GpuInventory = Callable[[], list[Gpu]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parent_pid(pid: int) -> int | None:
    """Field 4 of /proc/PID/stat; None if the process is gone or not visible here (another PID namespace)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def handing_back(gpus: Sequence[Gpu], routers: Callable[[Gpu], Collection[int]]) -> list[Gpu]:
    """The GPUs without the memory of member processes the plan or the leases account for already: those whose
    parent is one of `routers(gpu)` (this router, whose processes the new plan places, and routers on this host
    holding leases on that GPU). Any other process's memory stays held by others."""
    result = []
    for gpu in gpus:
        parents = set(routers(gpu))
        back = [p for p in gpu.processes if p.parent is not None and p.parent in parents]
        if back:
            freed = sum(p.used_bytes for p in back)
            gpu = replace(gpu, used_by_others_bytes=max(0, gpu.used_by_others_bytes - freed),
                          free_bytes=min(gpu.memory_bytes, gpu.free_bytes + freed),
                          processes=tuple(p for p in gpu.processes if p not in back))
        result.append(gpu)
    return result


def nvml_gpus() -> list[Gpu]:
    """Every GPU NVML reports; an empty list when there is no driver or no GPU (a normal answer here)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            # Graphics processes (a desktop, a browser) hold memory too; one doing both is in both lists, once here.
            listed: dict[int, GpuProcess] = {}
            for running in (pynvml.nvmlDeviceGetComputeRunningProcesses,
                            pynvml.nvmlDeviceGetGraphicsRunningProcesses):
                try:
                    for proc in running(handle):
                        pid, used = int(proc.pid), proc.usedGpuMemory or 0
                        if pid not in listed or used > listed[pid].used_bytes:
                            listed[pid] = GpuProcess(pid, parent_pid(pid), used)
                except pynvml.NVMLError:
                    pass
            processes = list(listed.values())
            gpus.append(Gpu(
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_bytes=int(mem.total),
                device_bytes=int(mem.total),
                free_bytes=int(mem.free),
                source="nvml",
                index=index,
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                used_by_others_bytes=sum(p.used_bytes for p in processes),
                processes=tuple(processes),
            ))
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        pynvml.nvmlShutdown()


def declared_gpu(decl: GpuDecl, index: int) -> Gpu:
    return Gpu(name=decl.name, memory_bytes=decl.memory, free_bytes=decl.memory, source="policy", index=index)


def resolve_gpus(policy: Policy, nvml: list[Gpu] | None = None) -> list[Gpu]:
    """NVML's GPUs; where it sees none, the policy's `gpus:`. A declared GPU named like a seen one (name,
    `gpuN` or UUID) overrides that GPU's memory, e.g. to plan a 24 GiB card on a larger one."""
    seen = nvml_gpus() if nvml is None else nvml
    if not seen:
        return [declared_gpu(d, i) for i, d in enumerate(policy.gpus)]
    overrides = {d.name: d for d in policy.gpus}
    result = []
    for gpu in seen:
        decl = next((overrides[k] for k in (gpu.name, f"gpu{gpu.index}", gpu.uuid or "") if k in overrides), None)
        if decl is not None:
            gpu = replace(gpu, memory_bytes=decl.memory, free_bytes=min(gpu.free_bytes, decl.memory), source="policy")
        result.append(gpu)
    return result


def unmatched(policy: Policy, seen: list[Gpu]) -> list[str]:
    """Why each declared GPU that stands for none of the GPUs NVML sees is ignored (none where NVML sees none: the
    declared ones are the GPUs then). A cap with a typo in its name planned on the whole card without a word."""
    if not seen:
        return []
    names = {k for g in seen for k in (g.name, f"gpu{g.index}", g.uuid or "") if k}
    found = ", ".join(f"gpu{g.index} ({g.name})" for g in seen)
    return [f"gpus.{i}.name: {d.name!r} is none of the GPUs NVML sees ({found}): it is ignored, and caps nothing; "
            "name a GPU by `gpuN`, its name or its UUID" for i, d in enumerate(policy.gpus) if d.name not in names]


def device_of(gpus: list[Gpu]) -> Device:
    """Members on a declared `cpu` live in host memory; anything else is a GPU."""
    return "cpu" if gpus and all(g.source == "policy" and g.name.lower() == "cpu" for g in gpus) else "gpu"
