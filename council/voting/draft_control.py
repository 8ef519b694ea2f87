"""Live draft length (`draft: {n_max: auto}`): read each tunable member's counters, let its `DraftTuner` judge,
and restart the member at a better n — one process at a time, only while every council it sits in keeps its
quorum without it, after draining, and only to an n whose memory estimate still fits the member's slots.

This sits at the voting level because it must know councils and their quorum; the arithmetic is in
`council.members.draft_tuning`. Every change is a state transition of the process (ready → draining with the
reason, stopping, stopped, starting, …, ready), a line in the `council.draft` log, an entry in the member's
`draft_tuning` (shown by `/admin/members`) and a count in the router's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from council.members.draft_tuning import DraftTuner, StepCost, TunerSettings, Verdict, default_cost_per_token
from council.members.process import MemberProcess
from council.members.states import State
from council.plan.estimate import EstimateError
from council.plan.gguf import GgufError
from council.plan.planner import PolicyPlan, estimate_process
from council.plan.slots import slots_for
from council.policy.schema import AutoDraft
from council.units import format_size
from council.voting.assembly import Assembly

log = logging.getLogger("council.draft")


def tuner_settings(auto: AutoDraft) -> TunerSettings:
    return TunerSettings(window=auto.window, min_drafts=auto.min_drafts, margin=auto.margin, sustain=auto.sustain,
                         probe_after=auto.probe_after, n_limit=auto.limit, n_floor=auto.floor)


class DraftController:
    """Owns a `DraftTuner` per tunable process; `tick()` judges them all and acts on at most one."""

    def __init__(self, plan: Callable[[], PolicyPlan], assembly: Assembly, *,
                 clock: Callable[[], float] = time.monotonic, history: int = 64) -> None:
        self._plan = plan
        self.assembly = assembly  # its engines are replaced on reload; the gates read them at each tick
        self.supervisor = assembly.supervisor
        self._clock = clock
        self.tuners: dict[str, DraftTuner] = {}
        self._made_from: dict[str, Any] = {}  # process -> the model's `draft` its tuner was made from
        self.events: deque[dict[str, Any]] = deque(maxlen=history)  # changes and refusals, newest last
        self.changes: dict[str, int] = {}  # process -> draft length changes made
        self._busy: str | None = None  # the process being restarted at a new n
        self._fits: dict[tuple[str, int], str | None] = {}
        self._fits_plan: PolicyPlan | None = None
        self._said: set[tuple[str, str]] = set()  # refusals already logged (once each, until the next change)

    # ---- the loop ----------------------------------------------------------------------------------------

    def interval(self) -> float:
        autos = [self._plan().policy.models[p.spec.model].draft.auto for p in self._tunable()]
        return min((a.interval for a in autos), default=5.0)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick must not end live tuning
                log.exception("draft tuning tick failed")
            await asyncio.sleep(self.interval())

    def _tunable(self) -> list[MemberProcess]:
        return [p for p in self.supervisor.processes.values() if p.recipe.retune is not None
                and p.recipe.draft_n is not None]

    async def tick(self) -> None:
        now = self._clock()
        if self._busy is not None:
            process = self.supervisor.processes.get(self._busy)
            if process is not None and process.state not in (State.READY, State.FAILED):
                return  # one process at a time, until the restarted one is back
            if process is not None:
                self.tuners[process.name].changed(int(process.recipe.draft_n or 0), now)
            self._busy = None
        for process in self._tunable():
            verdict = await self._judge(process, now)
            if verdict is None or verdict.move_to is None:
                continue
            blocker = self._quorum_blocker(process)
            if blocker is not None:
                self._refuse(process, f"n {verdict.current} → {verdict.move_to} waits: {blocker}")
                continue
            await self._apply(process, verdict, now)
            return

    async def _judge(self, process: MemberProcess, now: float) -> Verdict | None:
        draft = self._plan().policy.models[process.spec.model].draft
        n = int(process.recipe.draft_n or 0)
        tuner = self.tuners.get(process.name)
        if tuner is None or self._made_from.get(process.name) != draft:
            # New, or a reload changed the model's `auto` or step costs (`tune --write`): the process, restarted
            # under the same name, kept the old tuner, ran past a lowered limit and ignored the new costs.
            cost = StepCost(dict(draft.step_cost), default_cost_per_token(draft.type))
            tuner = self.tuners[process.name] = DraftTuner(n, cost, tuner_settings(draft.auto))
            self._made_from[process.name] = draft
            tuner.changed(n, now)
        elif tuner.n != n:  # the process was replaced (a reload) at another n
            tuner.changed(n, now)
        if process.state is not State.READY:
            return None
        if n > 0:
            await process.scrape()
            tuner.observe(process.stats.counters(), now)
        verdict = tuner.evaluate(now, allowed=lambda m: self._memory_refusal(process, m))
        for m, why in verdict.refused.items():
            self._refuse(process, f"n={m} refused: {why}")
        process.tuning.update(n=n, verdict=verdict.reason, best=verdict.best, changes=self.changes.get(process.name, 0),
                              predicted={str(k): round(v, 3) for k, v in verdict.speeds.items()})
        return verdict

    # ---- the gates ---------------------------------------------------------------------------------------

    def _memory_refusal(self, process: MemberProcess, n: int) -> str | None:
        """Why n would not fit the member's slots (the plan's estimate redone at n: recurrent state grows)."""
        plan = self._plan()
        if plan is not self._fits_plan:  # a reload: other slots, other estimates
            self._fits, self._fits_plan = {}, plan
        key = (process.name, n)
        if key not in self._fits:
            self._fits[key] = self._check_memory(process, n)
        return self._fits[key]

    def _check_memory(self, process: MemberProcess, n: int) -> str | None:
        plan = self._plan()
        placement = next((p for p in plan.placements() if p.process.key == process.name), None)
        if placement is None:
            return "the process is not in the plan"
        model = placement.process.model
        try:
            estimate = estimate_process(plan.policy.with_draft_n(model, n), model, len(placement.process.seats),
                                        plan.device).total
        except (OSError, GgufError, EstimateError, ValueError) as exc:
            return f"no estimate at n={n}: {exc}"
        need = slots_for(estimate, plan.slots.slot_bytes)
        if need > placement.slots:
            return (f"estimate {format_size(estimate)} at n={n} needs {need} slots of "
                    f"{format_size(plan.slots.slot_bytes)}, the process has {placement.slots}")
        return None

    def _quorum_blocker(self, process: MemberProcess) -> str | None:
        """Why taking `process` out now would leave a council below its quorum, or None."""
        short = self.assembly.quorum_shortfalls(without=process.name)
        return next((f"council {council} would have {why}" for council, why in short.items()), None)

    # ---- acting ------------------------------------------------------------------------------------------

    def _refuse(self, process: MemberProcess, message: str) -> None:
        if (process.name, message) in self._said:
            return
        self._said.add((process.name, message))
        log.info("%s: %s", process.name, message)
        self._event(process, "refused", message)

    def _event(self, process: MemberProcess, kind: str, message: str) -> None:
        entry = {"member": process.name, "kind": kind, "reason": message, "at": time.time()}
        self.events.append(entry)
        process.tuning.setdefault("events", [])
        process.tuning["events"] = [*process.tuning["events"], entry][-8:]

    async def _apply(self, process: MemberProcess, verdict: Verdict, now: float) -> None:
        assert verdict.move_to is not None and process.recipe.retune is not None
        n = verdict.move_to
        reason = f"draft tuning: {verdict.reason}"
        recipe = process.recipe.retune(n)
        self._busy = process.name
        log.info("%s: %s", process.name, reason)
        if not await process.restart_planned(recipe, reason):
            self._busy = None
            return
        self.changes[process.name] = self.changes.get(process.name, 0) + 1
        self._said = {s for s in self._said if s[0] != process.name}
        self._event(process, "changed", reason)
        process.tuning.update(n=n, changes=self.changes[process.name])
        self.tuners[process.name].changed(n, now)
