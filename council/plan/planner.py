"""`council plan`: from a policy to estimates per member process to slots on GPUs.

README: "Policies, `council check` and `council plan`".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from council.plan.estimate import MemoryEstimate, estimate_member_bytes
from council.plan.gguf import read_gguf
from council.plan.gpus import Device, Gpu, device_of, nvml_gpus, resolve_gpus, unmatched
from council.plan.slots import CouncilNeed, CouncilResult, Placement, ProcessNeed, SlotPlan, pack
from council.policy.checks import path_problem
from council.policy.schema import CouncilConfig, ModelConfig, Policy

COMPONENTS = ("weights", "kv", "recurrent", "mtp", "compute", "overhead")


@dataclass(frozen=True)
class ProcessEstimate:
    total: int
    breakdown: dict[str, int]
    source: Literal["gguf", "policy"]


def estimate_process(policy: Policy, model_name: str, members: int, device: Device) -> ProcessEstimate:
    """A process's memory: the policy's `memory:` (per seat: `members` counts the seats the process serves) if
    given, else the GGUF-based estimate."""
    model = policy.models[model_name].for_members(members)
    breakdown = dict.fromkeys(COMPONENTS, 0)
    estimate: MemoryEstimate | None = None
    draft_cfg: ModelConfig | None = None
    if model.draft.type == "model" and model.draft.model:
        draft_cfg = policy.models[model.draft.model]
    # A draft model's file not there yet (`memory:` lets a policy be planned before its files are): the estimate
    # needs both files, so it is the policy's `memory:` or, without one, a refusal naming both (it was a bare
    # "cannot read GGUF" that named no field).
    draft_missing = draft_cfg is not None and draft_cfg.path is not None and path_problem(draft_cfg.path) is not None
    if model.path is not None and path_problem(model.path) is None and not draft_missing:
        draft = None
        if draft_cfg is not None and draft_cfg.path is not None:
            draft = (draft_cfg, read_gguf(draft_cfg.path))
        estimate = estimate_member_bytes(model, read_gguf(model.path), device=device, draft=draft)
        breakdown = estimate.breakdown()
        if device == "cpu":
            breakdown["overhead"] += model.cache_ram  # the prompt cache lives in host memory, up to its cap
    if model.memory is not None:
        return ProcessEstimate(model.memory * members, breakdown, "policy")
    if estimate is None:
        if draft_missing and draft_cfg is not None:
            raise FileNotFoundError(f"{draft_cfg.path} (models.{model.draft.model}, the draft model of models."
                                    f"{model_name}) does not exist and models.{model_name}.memory is not set")
        raise FileNotFoundError(f"{model.path} does not exist and models.{model_name}.memory is not set")
    return ProcessEstimate(sum(breakdown.values()), breakdown, "gguf")


def council_need(policy: Policy, name: str, council: CouncilConfig, device: Device,
                 cache: dict[tuple[str, int], ProcessEstimate]) -> CouncilNeed:
    """One process per member entry (the K seats of `samples: K` share it, a slot each), except members of a
    `share: true` model, which share one process per council."""
    groups: dict[str, list[str]] = {}
    models: dict[str, str] = {}
    for seat_name, member, entry in council.seats(name):
        model = policy.models[member.model]
        if model.remote is not None:  # served elsewhere: no process, no slot
            continue
        key = f"{name}:{member.model}" if model.share else entry
        groups.setdefault(key, []).append(seat_name)
        models[key] = member.model
    processes = []
    for key, members in groups.items():
        model_name = models[key]
        if (model_name, len(members)) not in cache:
            cache[(model_name, len(members))] = estimate_process(policy, model_name, len(members), device)
        processes.append(ProcessNeed(key, model_name, tuple(members), cache[(model_name, len(members))].total))
    return CouncilNeed(name, tuple(processes))


def fallback_council(name: str, council: CouncilConfig) -> CouncilConfig | None:
    fb = council.fallback
    if fb is None:
        return None
    members = council.members[: fb.members] if fb.members else council.members
    if fb.model:
        members = [m.model_copy(update={"model": fb.model}) for m in members]
    return council.model_copy(update={"members": members, "fallback": None})


@dataclass
class PolicyPlan:
    policy: Policy
    gpus: list[Gpu]
    device: Device
    slots: SlotPlan
    estimates: dict[tuple[str, int], ProcessEstimate]
    # The configuration each admitted council runs with: as declared, or its fallback. Nothing downstream
    # rebuilds a fallback; a council refused later (a lease taken elsewhere) is dropped with `refuse`.
    configs: dict[str, CouncilConfig] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # declared GPUs NVML's GPUs leave out, and why (`plan` says)

    @property
    def all_admitted(self) -> bool:
        return all(c.admitted for c in self.slots.councils)

    @property
    def refused(self) -> dict[str, str]:
        """Council -> why it is not running."""
        return {c.name: c.reason or "" for c in self.slots.councils if not c.admitted}

    def placements(self) -> list[Placement]:
        """Every process of every admitted council, in plan order."""
        return [p for c in self.slots.councils if c.admitted for p in c.placements]

    def refuse(self, reasons: dict[str, str]) -> PolicyPlan:
        """This plan with the named councils refused for the given reasons (their slots not taken)."""
        councils = [c if c.name not in reasons else
                    CouncilResult(c.name, False, reasons[c.name], tuple(Placement(p.process, p.slots, None)
                                                                          for p in c.placements))
                    for c in self.slots.councils]
        return replace(self, slots=replace(self.slots, councils=councils),
                       configs={k: v for k, v in self.configs.items() if k not in reasons})

    def readmit(self, planned: PolicyPlan, name: str) -> PolicyPlan:
        """This plan with council `name` as `planned` placed it (a council refused for want of a lease, leased
        later): the placements and configuration `refuse` dropped."""
        result = next(c for c in planned.slots.councils if c.name == name)
        councils = [result if c.name == name else c for c in self.slots.councils]
        configs = {**self.configs, **{k: v for k, v in planned.configs.items() if k == name}}
        return replace(self, slots=replace(self.slots, councils=councils), configs=configs)

    def to_json(self) -> dict[str, Any]:
        """`council plan --json`: estimates, placements and refusals, slot counts per GPU and each estimate's source.
        A member's `gpu` is the GPU's `id` (identical cards share a `name`)."""
        members = []
        councils = []
        for result in self.slots.councils:
            for placement in result.placements:
                proc = placement.process
                est = self.estimates[(proc.model, len(proc.seats))]
                for member in proc.seats:
                    members.append({
                        "name": member, "council": result.name, "model": proc.model, "process": proc.key,
                        "estimate_bytes": est.total, "estimate_source": est.source, "breakdown": est.breakdown,
                        "slots": placement.slots, "gpu": placement.gpu,
                    })
            councils.append({"name": result.name, "fits": result.fits, "reason": result.reason,
                             "fallback": result.fallback})
        return {
            "gpus": [{"name": s.gpu.name, "id": s.gpu.id, "memory_bytes": s.gpu.memory_bytes,
                      "reserve_bytes": s.reserve_bytes, "source": s.gpu.source, "slots": s.total,
                      "slots_used": s.used} for s in self.slots.gpus],
            "device": self.device,
            "slot_bytes": self.slots.slot_bytes,
            "members": members,
            "councils": councils,
            "ignored_gpus": self.ignored,
        }


def plan_policy(policy: Policy, nvml: list[Gpu] | None = None) -> PolicyPlan:
    seen = nvml_gpus() if nvml is None else nvml
    gpus = resolve_gpus(policy, seen)
    device = device_of(gpus)
    cache: dict[tuple[str, int], ProcessEstimate] = {}
    needs = [council_need(policy, name, c, device, cache) for name, c in policy.councils.items()]

    def fallback(name: str) -> CouncilNeed | None:
        alt = fallback_council(name, policy.councils[name])
        return council_need(policy, name, alt, device, cache) if alt is not None else None

    slots = pack(needs, gpus, policy.slots.size, policy.slots.reserve, fallback)
    configs: dict[str, CouncilConfig] = {}
    for result in slots.councils:
        if result.fits:
            configs[result.name] = policy.councils[result.name]
        elif result.fallback and (alt := fallback_council(result.name, policy.councils[result.name])) is not None:
            configs[result.name] = alt
    return PolicyPlan(policy, gpus, device, slots, cache, configs, unmatched(policy, seen))
