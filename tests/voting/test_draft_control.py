"""Live draft length (`n_max: auto`) against real llama-server processes on the synthetic MTP models.

Acceptance is forced low honestly: the auto member's model path is a symlink, first to a model whose MTP head
is always wrong (`disagree_every=1`), later to one that is always right. The process loads whatever the link
names when it (re)starts, so "acceptance recovers" means the member's next process sees another model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig, MemberProcess
from council.members.states import State, StateChange
from council.plan.planner import estimate_process, plan_policy
from council.policy.schema import Policy
from council.setup.synthetic import write_qwen35
from council.voting.assembly import assemble
from council.voting.draft_control import DraftController
from tests.policies import policy_yaml
from tests.servers import CouncilServer, until

pytestmark = pytest.mark.anyio
FAST = {"backoff_base": 0.2, "backoff_cap": 1.0, "watch_interval": 0.1, "metrics_interval": 60.0,
        "drain_timeout": 5.0}


def policy_doc(link: Path, good: Path, slot_bytes: int | None = None) -> dict:
    auto = {"start": 3, "limit": 8, "interval": 0.2, "window": 30, "min_drafts": 20, "margin": 0.1, "sustain": 2,
            "probe_after": 4}
    return {
        "gpus": [{"name": "cpu", "memory": "4GiB"}],
        "slots": {"size": slot_bytes or (1 << 30), "reserve": 0},
        "models": {
            # The step costs `council tune` would write: a step at n costs 1 + 0.3 n plain steps.
            "auto": {"path": str(link), "ctx_size": 512, "threads": 1,
                     "draft": {"type": "mtp", "n_max": "auto", "auto": auto,
                               "step_cost": {n: 1 + 0.3 * n for n in range(9)}}},
            "fixed": {"path": str(good), "ctx_size": 512, "threads": 1, "draft": {"type": "mtp", "n_max": 1}},
        },
        "councils": {"c": {"members": [{"model": "auto", "name": "c/auto"}, {"model": "fixed", "name": "c/1"},
                                       {"model": "fixed", "name": "c/2"}], "quorum": 2}},
    }


async def workload(process: MemberProcess) -> None:
    """Keep the member busy with real completions while it is ready (the counters move only with traffic)."""
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            if not process.ready:
                await asyncio.sleep(0.05)
                continue
            spec = process.spec
            with contextlib.suppress(httpx.HTTPError):
                async with process.request():
                    await client.post(f"{spec.url}/completion", headers={"Authorization": f"Bearer {spec.api_key}"},
                                      json={"prompt": "hello", "n_predict": 48, "temperature": 0})


async def test_live_tuning_moves_down_and_back_up_within_quorum_and_slots(
        llama_server_bin: LlamaServerInfo, tmp_path: Path) -> None:
    bad = write_qwen35(tmp_path / "bad.gguf", disagree_every=1)  # every draft token rejected
    good = write_qwen35(tmp_path / "good.gguf")  # every draft token accepted
    link = tmp_path / "member.gguf"
    link.symlink_to(bad)
    # Slots sized so the auto member fits up to n=4 and not beyond (recurrent state grows with n).
    probe = Policy.model_validate(policy_doc(link, good))
    at = {n: estimate_process(probe.with_draft_n("auto", n), "auto", 1, "cpu").total for n in (4, 5)}
    assert at[5] > at[4]
    policy = Policy.model_validate(policy_doc(link, good, slot_bytes=at[4]))
    plan = plan_policy(policy)
    assert plan.all_admitted
    ns: list[int | None] = []
    quorum_seen: list[int] = []

    def watch(change: StateChange) -> None:
        members = assembly.supervisor.processes
        if change.member == "c/auto" and change.new is State.READY:
            ns.append(members["c/auto"].recipe.draft_n)
        if change.member == "c/auto" and change.new is State.DRAINING and change.reason.startswith("draft tuning"):
            quorum_seen.append(sum(members[m].ready for m in ("c/1", "c/2")))

    assembly = assemble(plan, llama_server_bin, LifeConfig(run_dir=tmp_path / "run", **FAST), listeners=[watch])
    supervisor = assembly.supervisor
    members = supervisor.processes
    auto = members["c/auto"]
    controller = DraftController(lambda: plan, assembly)
    await supervisor.start()
    tasks = [asyncio.create_task(workload(auto))]
    try:
        await supervisor.wait_settled(60)
        assert all(m.ready for m in members.values()), [m.reason for m in members.values()]
        assert auto.recipe.draft_n == 3

        # Quorum: with one fixed member stopped, moving the auto member would leave 1 of 3 ready (< 2).
        await members["c/1"].stop("test: out of the council")
        tasks.append(asyncio.create_task(run(controller)))
        await until(lambda: any("quorum 2" in e["reason"] for e in controller.events), 30, "a quorum refusal")
        assert auto.recipe.draft_n == 3 and auto.ready
        members["c/1"].start()

        # Acceptance 0: any draft only costs, so n goes down to 0 (no speculation).
        await until(lambda: auto.recipe.draft_n == 0 and auto.ready, 60, "n down to 0")
        # The workload changes (the next process will load the good model); at n=0 nothing is measured, so
        # the tuner probes n=1 after `probe_after`, sees acceptance 1, and moves up as far as the slots allow.
        link.unlink()
        link.symlink_to(good)
        await until(lambda: auto.recipe.draft_n == 4 and auto.ready, 90, "n back up to 4")
        await asyncio.sleep(2)  # settled: with n>4 refused by memory, it stays
        assert auto.recipe.draft_n == 4
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await supervisor.stop()

    assert ns == [3, 0, 1, 4], ns
    assert quorum_seen and min(quorum_seen) >= 2  # every tuning restart left the council its quorum
    changes = [e for e in controller.events if e["kind"] == "changed"]
    assert [e["reason"].split(":")[1].strip() for e in changes] == ["n 3 → 0", "probe", "n 1 → 4"]
    assert any("needs 2 slots" in e["reason"] for e in controller.events if e["kind"] == "refused")
    # The transitions carry the reasons (what /admin/members shows in `history`), and the snapshot the tuning.
    reasons = [c.reason for c in auto.history if c.new is State.DRAINING]
    assert any(r.startswith("draft tuning: n 3 → 0") for r in reasons)
    snap = auto.snapshot()
    assert snap["draft_n"] == 4 and snap["draft_tuning"]["changes"] == 3


async def run(controller: DraftController) -> None:
    await controller.run_forever()


def test_serve_tunes_live_and_shows_it(serve: Callable[..., CouncilServer], tmp_path: Path) -> None:
    """`council serve` runs the controller: /admin/members, /metrics and the log show the change and why."""
    bad = write_qwen35(tmp_path / "bad.gguf", disagree_every=1)
    good = write_qwen35(tmp_path / "good.gguf")
    auto = {"start": 2, "limit": 4, "interval": 0.2, "window": 30, "min_drafts": 20, "sustain": 2, "probe_after": 600}
    server = serve(policy_yaml(
        {"auto": {"path": bad, "ctx_size": 512, "threads": 1, "draft": {"type": "mtp", "n_max": "auto", "auto": auto}},
         "fixed": {"path": good, "ctx_size": 512, "threads": 1}},
        {"c": {"members": [{"model": "auto"}, {"model": "fixed"}], "quorum": 1}}))

    def member() -> dict:
        return next(m for m in httpx.get(f"{server.url}/admin/members").json()["members"] if m["model"] == "auto")

    assert member()["draft_n"] == 2
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=30) as client:
        while member()["draft_n"] != 0 or member()["state"] != "ready":
            assert time.monotonic() < deadline, member()
            with contextlib.suppress(httpx.HTTPError):
                client.post(f"{server.url}/v1/chat/completions",
                            json={"model": "auto", "max_tokens": 48, "messages": [{"role": "user", "content": "go"}]})
    snap = member()
    assert any(h["reason"].startswith("draft tuning: n 2 → 0") for h in snap["history"])
    assert snap["draft_tuning"]["changes"] == 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'council_process_draft_n{process="c/0"} 0.0' in metrics
    assert 'council_process_draft_changes{process="c/0"} 1.0' in metrics
    assert "draft tuning: n 2 → 0" in server.log()
    # A reload that leaves the process as it is keeps the length tuning chose: the new recipe's was `auto.start`
    # (2), so /admin/members said 2 and the process's next start would have run at 2.
    reloaded = httpx.post(f"{server.url}/admin/reload", timeout=60)
    assert reloaded.status_code == 200 and "c/0" in reloaded.json()["unchanged"], reloaded.text
    assert member()["draft_n"] == 0 and member()["state"] == "ready", member()


class _Reloaded:
    """A tunable process as the controller sees one (its recipe, state, counters), every draft position accepted:
    a stand-in, so a reload can swap it between ticks at once (the real reload is tested above and in tests/server)."""

    def __init__(self, name: str, n: int) -> None:
        from types import SimpleNamespace

        from council.members.draft_tuning import DraftCounters

        self.name, self.state, self.tuning, self.moved_to = name, State.READY, dict[str, object](), list[int]()
        self.recipe = SimpleNamespace(draft_n=n, retune=lambda n: SimpleNamespace(draft_n=n, retune=None))
        self.spec = SimpleNamespace(model="m")
        self.counters = DraftCounters()
        self.stats = SimpleNamespace(counters=lambda: self.counters)

    async def scrape(self) -> None:
        pass

    async def restart_planned(self, recipe: object, reason: str) -> bool:
        self.moved_to.append(recipe.draft_n)  # type: ignore[attr-defined]
        self.recipe.draft_n = recipe.draft_n  # type: ignore[attr-defined]
        return True

    def drafts(self, steps: int) -> None:
        from council.members.draft_tuning import DraftCounters

        n, c = self.recipe.draft_n, self.counters
        self.counters = DraftCounters(c.drafts + steps, c.drafted + steps * n, c.accepted + steps * n, tuple(
            (c.per_pos[i] if i < len(c.per_pos) else 0) + steps for i in range(n)))


@pytest.mark.parametrize(("before", "after", "moves"), [
    ({"start": 2, "limit": 8}, {"start": 2, "limit": 2}, []),  # it went to 8 under a limit of 2
    ({"start": 2, "limit": 4}, {"start": 6, "limit": 8}, []),  # KeyError every tick: live tuning stopped
    ({"start": 2, "limit": 4, "step_cost": {0: 1.0, 1: 1.1, 4: 1.4}},
     {"start": 2, "limit": 4, "step_cost": {0: 1.0, 1: 3.0, 4: 9.0}}, [0]),  # it went up to 4 by the old costs
], ids=["limit lowered", "range raised", "new step costs"])
async def test_a_reload_that_changes_a_models_draft_retunes_by_the_new_one(
        tmp_path: Path, before: dict[str, object], after: dict[str, object], moves: list[int]) -> None:
    """A reload restarts a process whose model's `draft` changed under the same name, and the controller kept its
    tuner: the old `auto` range and step costs (`tune --write` then reload was ignored)."""
    from types import SimpleNamespace

    gguf = write_qwen35(tmp_path / "m.gguf")

    def planned(settings: dict[str, object]) -> object:
        auto = {k: v for k, v in settings.items() if k != "step_cost"}
        draft = {"type": "mtp", "n_max": "auto", "step_cost": settings.get("step_cost", {}), "auto": {
            "interval": 1, "window": 600, "min_drafts": 10, "margin": 0.1, "sustain": 1, **auto}}
        return plan_policy(Policy.model_validate({
            "gpus": [{"name": "cpu", "memory": "64GiB"}], "slots": {"size": "8GiB", "reserve": 0},
            "models": {"m": {"path": str(gguf), "ctx_size": 256, "draft": draft}},
            "councils": {"c": {"members": [{"model": "m"}], "quorum": 1}}}))

    now = [1000.0]
    state = SimpleNamespace(plan=planned(before))
    name = next(iter(state.plan.placements())).process.key
    processes = {name: _Reloaded(name, int(before["start"]))}  # type: ignore[call-overload]
    assembly = SimpleNamespace(supervisor=SimpleNamespace(processes=processes), quorum_shortfalls=lambda without: {})
    controller = DraftController(lambda: state.plan, assembly, clock=lambda: now[0])  # type: ignore[arg-type]
    await controller.tick()
    state.plan = planned(after)  # the reload: a new plan, the process replaced at the new start
    process = processes[name] = _Reloaded(name, int(after["start"]))  # type: ignore[call-overload]
    for _ in range(4):
        now[0] += 1
        process.drafts(50)
        await controller.tick()
    assert process.moved_to == moves and controller.tuners[name].settings.n_limit == after["limit"]
    assert process.tuning["n"] == process.recipe.draft_n, process.tuning  # judged at every tick: none failed
