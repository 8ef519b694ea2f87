"""The member processes a plan asks for: one recipe per admitted process, for the supervisor."""

from __future__ import annotations

import functools
from pathlib import Path

from council.members.binary import LlamaServerInfo
from council.members.launch import build_launch, default_threads
from council.members.process import ProcessRecipe
from council.plan.gguf import GgufError, read_gguf
from council.plan.planner import PolicyPlan


def _has_chat_template(path: Path | None) -> bool:
    if path is None:
        return True
    try:
        return read_gguf(path).has_chat_template
    except GgufError:
        return True


def recipes_from_plan(plan: PolicyPlan, server: LlamaServerInfo) -> list[ProcessRecipe]:
    """Every process of every admitted council; threads split the CPU's cores among CPU-resident members."""
    policy = plan.policy
    placements = plan.placements()
    threads = default_threads(len(placements)) if plan.device == "cpu" and placements else None
    gpu_ids = {g.name: (g.uuid or str(g.index)) for g in plan.gpus if g.source == "nvml" or g.uuid}
    chat: dict[str, bool] = {}
    recipes = []
    for placement in placements:
        proc = placement.process
        model = proc.model
        if model not in chat:
            chat[model] = _has_chat_template(policy.models[model].path)

        make_spec = functools.partial(build_launch, key=proc.key, model_name=model, policy=policy, server=server,
                                      members=len(proc.members), threads=threads,
                                      gpu=gpu_ids.get(placement.gpu or ""), chat=chat[model])
        width = policy.models[model].parallel * len(proc.members)
        recipes.append(ProcessRecipe(proc.key, lambda port, make=make_spec: make(port=port), proc.members, width))
    return recipes
