"""GPUs council may place members on: what NVML sees, or what the policy declares where it sees none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
