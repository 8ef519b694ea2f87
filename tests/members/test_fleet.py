"""The process recipes a plan asks for: each process launched on the GPU the plan placed it on."""

from __future__ import annotations

from pathlib import Path

from council.members.binary import LlamaServerInfo
from council.members.fleet import recipes_from_plan
from council.plan.gpus import Gpu
from council.plan.planner import plan_policy
from council.policy.schema import Policy

GiB = 1 << 30
SERVER = LlamaServerInfo(path=Path("/opt/llama-server"), build=11434, version="", spec_types=("none",))


def test_two_identical_gpus_each_get_their_own_process() -> None:
    """NVML names identical cards alike. Before, the launch looked GPUs up by that name: both processes of a
    council split over two 24 GiB cards got the last card's UUID, 40 GiB on one card and the other idle."""
    policy = Policy.model_validate({
        "slots": {"size": "1GiB", "reserve": 0},
        "models": {"big": {"path": "/nonexistent/big.gguf", "memory": "20GiB"}},
        "councils": {"duo": {"members": [{"model": "big"}, {"model": "big"}]}},
    })
    gpus = [Gpu(name="NVIDIA GeForce RTX 4090", memory_bytes=24 * GiB, free_bytes=24 * GiB, source="nvml", index=i,
                uuid=f"GPU-{i}") for i in range(2)]
    plan = plan_policy(policy, nvml=gpus)
    assert plan.all_admitted and [s.used for s in plan.slots.gpus] == [20, 20]
    devices = [r.make_spec(1234).env["CUDA_VISIBLE_DEVICES"] for r in recipes_from_plan(plan, SERVER)]
    assert sorted(devices) == ["GPU-0", "GPU-1"]


def test_identical_gpus_without_uuids_are_told_apart_by_index() -> None:
    policy = Policy.model_validate({
        "slots": {"size": "1GiB", "reserve": 0},
        "models": {"big": {"path": "/nonexistent/big.gguf", "memory": "20GiB"}},
        "councils": {"duo": {"members": [{"model": "big"}, {"model": "big"}]}},
    })
    gpus = [Gpu(name="Tesla T4", memory_bytes=24 * GiB, free_bytes=24 * GiB, source="nvml", index=i)
            for i in range(2)]
    plan = plan_policy(policy, nvml=gpus)
    assert [p.gpu for p in plan.placements()] == ["gpu0", "gpu1"]
    devices = [r.make_spec(1234).env["CUDA_VISIBLE_DEVICES"] for r in recipes_from_plan(plan, SERVER)]
    assert sorted(devices) == ["0", "1"]
