"""The member processes a plan asks for: one recipe per admitted process, for the supervisor."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from council.members.binary import LlamaServerInfo
from council.members.launch import LaunchSpec, build_launch, default_threads
from council.members.process import ProcessRecipe
from council.plan.gguf import GgufError, read_gguf
from council.plan.planner import PolicyPlan
from council.policy.schema import Policy


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
    # Keyed by the GPU's id, as placements are: by name, identical cards were one, and every process went to it.
    gpu_ids = {g.id: (g.uuid or str(g.index)) for g in plan.gpus if g.source == "nvml" or g.uuid}
    chat: dict[str, bool] = {}
    recipes = []
    for placement in placements:
        proc = placement.process
        model = proc.model
        if model not in chat:
            chat[model] = _has_chat_template(policy.models[model].path)

        launch = functools.partial(build_launch, key=proc.key, model_name=model, server=server,
                                   members=len(proc.seats), threads=threads,
                                   gpu=gpu_ids.get(placement.gpu or ""), chat=chat[model])
        recipes.append(_recipe(policy, model, proc.key, proc.seats, launch, None))
    return recipes


def _recipe(policy: Policy, model: str, key: str, members: tuple[str, ...],
            launch: Callable[..., LaunchSpec], n: int | None) -> ProcessRecipe:
    """A process's recipe; for a `draft: {n_max: auto}` model also how to make it at another draft length."""
    config = policy.models[model]
    width = config.parallel * len(members)
    if not config.draft.is_auto:
        return ProcessRecipe(key, lambda port: launch(port=port, policy=policy), members, width)
    n = config.draft.n if n is None else n
    at_n = policy.with_draft_n(model, n)
    return ProcessRecipe(key, lambda port: launch(port=port, policy=at_n), members, width, draft_n=n,
                         retune=lambda new_n: _recipe(policy, model, key, members, launch, new_n))
