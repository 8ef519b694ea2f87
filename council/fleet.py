"""The member processes a plan asks for: one launch factory per admitted process, for the supervisor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from council.gguf_meta import GgufError, read_gguf
from council.launch import LaunchSpec, build_launch, default_threads
from council.llama import LlamaServerInfo
from council.plan import PolicyPlan


@dataclass(frozen=True)
class Fleet:
    factories: dict[str, Callable[[int], LaunchSpec]]
    served: dict[str, tuple[str, ...]]  # process name -> the council members it serves
    refused: dict[str, str]  # council -> why it was not admitted


def _has_chat_template(path: Path | None) -> bool:
    if path is None:
        return True
    try:
        return read_gguf(path).has_chat_template
    except GgufError:
        return True


def _factory(**fixed: Any) -> Callable[[int], LaunchSpec]:
    """A launch spec per start: each start gets a fresh port (and key)."""
    return lambda port: build_launch(port=port, **fixed)


def fleet_from_plan(plan: PolicyPlan, server: LlamaServerInfo) -> Fleet:
    """Every process of every admitted council; threads split the CPU's cores among CPU-resident members."""
    policy = plan.policy
    placements = [(r.name, p) for r in plan.slots.councils if r.admitted for p in r.placements]
    on_cpu = len(placements) if plan.device == "cpu" else 0
    threads = default_threads(on_cpu) if on_cpu else None
    gpu_ids = {g.name: (g.uuid or str(g.index)) for g in plan.gpus if g.source == "nvml" or g.uuid}
    factories: dict[str, Callable[[int], LaunchSpec]] = {}
    served: dict[str, tuple[str, ...]] = {}
    chat: dict[str, bool] = {}
    for _council, placement in placements:
        proc = placement.process
        model = proc.model
        if model not in chat:
            chat[model] = _has_chat_template(policy.models[model].path)
        factories[proc.key] = _factory(key=proc.key, model_name=model, policy=policy, server=server,
                                       members=len(proc.members), threads=threads,
                                       gpu=gpu_ids.get(placement.gpu or ""), chat=chat[model])
        served[proc.key] = proc.members
    refused = {r.name: r.reason or "" for r in plan.slots.councils if not r.admitted}
    return Fleet(factories, served, refused)
