"""GPUs council may place members on: what NVML sees, or what the policy declares where it sees none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from council.policy.schema import GpuDecl, Policy

# Members on a declared `cpu` live in host memory; anything else is a GPU.
Device = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    free_bytes: int
    source: Literal["nvml", "policy"]
    index: int = 0
    uuid: str | None = None
    # Memory held by processes that are not ours; the planner must not count it as free.
    used_by_others_bytes: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
            others = 0
            try:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    others += proc.usedGpuMemory or 0
            except pynvml.NVMLError:
                pass
            gpus.append(Gpu(
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_bytes=int(mem.total),
                free_bytes=int(mem.free),
                source="nvml",
                index=index,
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                used_by_others_bytes=others,
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
            gpu = Gpu(name=gpu.name, memory_bytes=decl.memory, free_bytes=min(gpu.free_bytes, decl.memory),
                      source="policy", index=gpu.index, uuid=gpu.uuid, used_by_others_bytes=gpu.used_by_others_bytes)
        result.append(gpu)
    return result


def device_of(gpus: list[Gpu]) -> Device:
    """Members on a declared `cpu` live in host memory; anything else is a GPU."""
    return "cpu" if gpus and all(g.source == "policy" and g.name.lower() == "cpu" for g in gpus) else "gpu"
