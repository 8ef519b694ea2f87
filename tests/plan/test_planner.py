"""`council plan` on the shipped policies and on councils that do not fit.

README: "Policies, `council check` and `council plan`".
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from council.plan.gpus import Gpu
from council.plan.planner import plan_policy, resolve_gpus
from council.policy.loading import load_policy
from council.policy.schema import Policy
from council.setup.catalog import by_name
from tests.conftest import run_cli
from tests.policies import policy_yaml

POLICIES = Path(__file__).parents[2] / "policies"
assert sorted(POLICIES.glob("*.yaml")), f"no policies in {POLICIES}"
GiB = 1 << 30


def plan_json(policy: Path | str) -> tuple[int, dict]:
    result = run_cli("plan", str(policy), "--json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.mark.parametrize("policy", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_policy_is_valid(policy: Path) -> None:
    result = run_cli("check", str(policy))
    assert result.returncode == 0, result.stderr


def test_demo_plan_fits_with_gguf_estimates() -> None:
    code, doc = plan_json(POLICIES / "demo.yaml")
    assert code == 0
    assert doc["device"] == "cpu"
    assert doc["gpus"] == [{"name": "cpu", "id": "cpu", "memory_bytes": 8 * GiB, "reserve_bytes": GiB,
                            "source": "policy", "slots": 7, "slots_used": 3}]
    assert [m["name"] for m in doc["members"]] == ["demo/0", "demo/1", "demo/2"]
    for member in doc["members"]:
        assert member["estimate_source"] == "gguf"
        assert member["gpu"] == "cpu" and member["slots"] == 1
        assert set(member["breakdown"]) == {"weights", "kv", "recurrent", "mtp", "compute", "overhead"}
        assert member["estimate_bytes"] == sum(member["breakdown"].values())
    qwen = by_name("qwen2.5-coder-0.5b")
    assert qwen is not None
    # Weights resident on the CPU are at least the tensors of the file.
    assert doc["members"][0]["breakdown"]["weights"] >= 0.95 * qwen.size
    assert doc["councils"] == [{"name": "demo", "fits": True, "reason": None, "fallback": False}]


def test_seed_card_policy_fills_the_24gib_card_exactly() -> None:
    code, doc = plan_json(POLICIES / "qwen35-4b-mtp.yaml")
    assert code == 0
    assert doc["slot_bytes"] == 4 * GiB
    assert doc["gpus"][0]["slots"] == doc["gpus"][0]["slots_used"] == 5
    assert {m["estimate_source"] for m in doc["members"]} == {"policy"}
    assert {m["estimate_bytes"] for m in doc["members"]} == {round(3.65 * GiB)}
    assert doc["councils"] == [{"name": "quintet", "fits": True, "reason": None, "fallback": False}]


def test_fallback_is_admitted_and_says_why() -> None:
    code, doc = plan_json(POLICIES / "fallback.yaml")
    assert code == 0
    [five] = doc["councils"]
    assert five["fits"] is False and five["fallback"] is True
    assert "process five/" in five["reason"] and "missing on cpu" in five["reason"]
    assert [m["model"] for m in doc["members"]] == ["coder-0.5b"] * 3


def test_shared_process_serves_three_members() -> None:
    code, doc = plan_json(POLICIES / "shared-process.yaml")
    assert code == 0
    assert len({m["process"] for m in doc["members"]}) == 1
    assert doc["gpus"][0]["slots_used"] == doc["members"][0]["slots"]


def test_council_that_does_not_fit_exits_3_with_reason(tmp_path: Path) -> None:
    policy = tmp_path / "big.yaml"
    smol = by_name("smollm2-135m")
    assert smol is not None
    policy.write_text(policy_yaml(
        {"s": {"path": smol.path}, "big": {"path": tmp_path / "absent.gguf", "memory": "3GiB"}},
        {"ok": {"members": [{"model": "s"}]}, "huge": {"members": [{"model": "s"}, {"model": "big"}]}},
        gpu="tiny", memory="2GiB", slot="512MiB"))
    code, doc = plan_json(policy)
    assert code == 3
    ok, huge = doc["councils"]
    assert ok["fits"] is True
    assert huge["fits"] is False
    assert huge["reason"] == ("process huge/1 (big, estimate 3.00 GiB) needs 6 slots of 512.00 MiB but the largest "
                              "GPU, tiny, has only 4 after its reserve")
    assert [m["gpu"] for m in doc["members"]] == ["tiny", None, None]
    table = run_cli("plan", str(policy))
    assert table.returncode == 3
    assert "council huge does not fit" in table.stdout


def test_missing_model_without_memory_is_exit_2(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("models:\n  a: {path: /nonexistent.gguf}\ncouncils:\n  c: {members: [{model: a}]}\n")
    result = run_cli("plan", str(policy))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"{policy}:2: models.a.path: /nonexistent.gguf does not exist "
                                     "(and no `memory:` is given to plan with)")


def test_nvml_gpus_win_and_a_declared_name_caps_one() -> None:
    loaded = load_policy(POLICIES / "qwen35-4b-mtp.yaml")
    h100 = Gpu(name="NVIDIA H100 80GB HBM3", memory_bytes=80 * GiB, free_bytes=79 * GiB, source="nvml", uuid="GPU-1")
    assert resolve_gpus(loaded.policy, [h100]) == [h100]
    capped = resolve_gpus(loaded.policy.model_copy(update={"gpus": [
        loaded.policy.gpus[0].model_copy(update={"name": "gpu0"})]}), [h100])
    assert capped[0].memory_bytes == 24 * GiB and capped[0].source == "policy"
    plan = plan_policy(loaded.policy, [h100])
    assert plan.device == "gpu"
    assert plan.slots.gpus[0].total == 19  # (80 GiB - 512 MiB) // 4 GiB


def test_a_cap_on_a_shared_gpu_counts_other_tenants_against_the_device_not_the_cap() -> None:
    """A 24 GiB cap on an 80 GiB card where another tenant holds 50 GiB (30 free) gave 0 slots (24 - 50) and refused
    a council that fits, saying the GPU had nothing "after its reserve". Room is the cap, within what is free."""
    policy = Policy.model_validate({
        "gpus": [{"name": "gpu0", "memory": "24GiB"}], "slots": {"size": "4GiB", "reserve": "1GiB"},
        "models": {"m": {"path": "/nonexistent/m.gguf", "memory": "7GiB"}},
        "councils": {"c": {"members": [{"model": "m"}]}}})
    h100 = Gpu(name="NVIDIA H100 80GB HBM3", memory_bytes=80 * GiB, device_bytes=80 * GiB, free_bytes=30 * GiB,
               source="nvml", uuid="GPU-1", used_by_others_bytes=50 * GiB)
    plan = plan_policy(policy, nvml=[h100])
    assert plan.all_admitted and plan.slots.gpus[0].total == 5, plan.refused  # (24 - 1) // 4
    squeezed = plan_policy(policy, nvml=[replace(h100, free_bytes=9 * GiB, used_by_others_bytes=71 * GiB)])
    assert squeezed.slots.gpus[0].total == 2  # the cap, within what is free: (9 - 1) // 4
    uncapped = plan_policy(policy.model_copy(update={"gpus": []}), nvml=[h100])
    assert uncapped.slots.gpus[0].total == 7  # min(80 - 50, 30) - 1, as before


def test_a_declared_gpu_that_stands_for_no_seen_one_is_said_to_be_ignored() -> None:
    """A cap whose name matched no GPU NVML sees (a typo, `gpu1` on a one-GPU host) was dropped without a word,
    and the plan used the whole card. `council plan` says so now, naming the GPUs it sees."""
    policy = Policy.model_validate({
        "gpus": [{"name": "gpu1", "memory": "24GiB"}, {"name": "gpu0", "memory": "40GiB"}],
        "slots": {"size": "4GiB", "reserve": 0},
        "models": {"m": {"path": "/nonexistent/m.gguf", "memory": "7GiB"}}, "councils": {"c": {"members": [
            {"model": "m"}]}}})
    h100 = Gpu(name="NVIDIA H100 80GB HBM3", memory_bytes=80 * GiB, device_bytes=80 * GiB, free_bytes=80 * GiB,
               source="nvml", uuid="GPU-1")
    plan = plan_policy(policy, nvml=[h100])
    assert plan.ignored == ["gpus.0.name: 'gpu1' is none of the GPUs NVML sees (gpu0 (NVIDIA H100 80GB HBM3)): it "
                            "is ignored, and caps nothing; name a GPU by `gpuN`, its name or its UUID"]
    assert plan.to_json()["ignored_gpus"] == plan.ignored and plan.slots.gpus[0].total == 10  # gpu0's cap holds
    assert plan_policy(policy, nvml=[]).ignored == []  # no GPU seen: the declared ones are the GPUs


def test_identical_gpus_are_placed_on_by_id_and_named_in_the_json() -> None:
    """NVML gives identical cards one product name; a placement names the card by its id (UUID here), and
    `council plan --json` (the CLI's table, the dashboard) says which card each member is on."""
    policy = Policy.model_validate({
        "slots": {"size": "1GiB", "reserve": 0},
        "models": {"big": {"path": "/nonexistent/big.gguf", "memory": "20GiB"}},
        "councils": {"duo": {"members": [{"model": "big"}, {"model": "big"}]}},
    })
    name = "NVIDIA GeForce RTX 4090"
    gpus = [Gpu(name=name, memory_bytes=24 * GiB, free_bytes=24 * GiB, source="nvml", index=i, uuid=f"GPU-{i}")
            for i in range(2)]
    plan = plan_policy(policy, nvml=gpus)
    assert sorted(p.gpu or "" for p in plan.placements()) == ["GPU-0", "GPU-1"]
    doc = plan.to_json()
    assert [(g["name"], g["id"], g["slots_used"]) for g in doc["gpus"]] == [(name, "GPU-0", 20), (name, "GPU-1", 20)]
    assert sorted(m["gpu"] for m in doc["members"]) == ["GPU-0", "GPU-1"]


def test_samples_share_one_process_sized_for_them_and_too_many_are_refused(tmp_path: Path) -> None:
    smol = by_name("smollm2-135m")
    assert smol is not None
    policy = tmp_path / "samples.yaml"
    policy.write_text(policy_yaml(
        {"s": {"path": smol.path, "ctx_size": 2048}},
        {"five": {"members": [{"model": "s"}, {"model": "s", "samples": 5}]},
         "many": {"members": [{"model": "s", "samples": 64}]}}, memory="3GiB", slot="1GiB"))
    code, doc = plan_json(policy)
    assert code == 3
    five, many = doc["councils"]
    assert five["fits"] is True and many["fits"] is False
    rows = [m for m in doc["members"] if m["council"] == "five"]
    assert [m["name"] for m in rows] == ["five/0", *(f"five/1#{k}" for k in range(5))]
    assert {m["process"] for m in rows[1:]} == {"five/1"}  # the five samples: one process, five slots
    one, shared = rows[0]["estimate_bytes"], rows[1]["estimate_bytes"]
    assert shared > one  # sized for five slots (KV for each)
    assert many["reason"].startswith("process many/0 (64 seats) (s, estimate 2.96 GiB, 3 slots) does not fit")


def test_a_refusal_names_a_shared_process_as_a_process() -> None:
    """Before: "member sc:q (4 seats) ...": `sc:q` is the process four members share, no member."""
    policy = Policy.model_validate({
        "slots": {"size": "1GiB", "reserve": 0},
        "models": {"q": {"path": "/nonexistent/q.gguf", "memory": "1GiB", "share": True}},
        "councils": {"sc": {"members": [{"model": "q", "sampling": {"temperature": t}} for t in (0, .3, .6, .9)]}},
    })
    plan = plan_policy(policy, [Gpu("gpu0", 3 * GiB, 3 * GiB, "nvml", uuid="GPU-0")])
    assert plan.refused["sc"] == ("process sc:q (4 seats) (q, estimate 4.00 GiB) needs 4 slots of 1.00 GiB but the "
                                  "largest GPU, gpu0, has only 3 after its reserve")


def test_the_plan_table_has_a_row_per_process_naming_its_seats() -> None:
    """The table had a row per seat, each with its process's whole estimate and slots: a process shared by three
    seats read as three processes (3 × the memory, 3 slots, where the GPU row said 1 used)."""
    code, doc = plan_json(POLICIES / "shared-process.yaml")
    assert code == 0 and {m["process"] for m in doc["members"]} == {"triplets:smollm2"} and len(doc["members"]) == 3
    table = run_cli("plan", str(POLICIES / "shared-process.yaml"))
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "smollm2" in line]  # the seats' column may wrap
    assert len(rows) == 1 and "triplets:smollm2" in rows[0] and rows[0].count("MiB") == 5, table.stdout
    assert all(f"triplets/{i}" in table.stdout for i in range(3)), table.stdout
