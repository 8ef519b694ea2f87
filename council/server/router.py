"""The router: one running policy behind the HTTP API — its plan, leases, member processes, council engines,
the member registry (several hosts), keys and limits — and the reload that swaps a policy in place.

Start-up goes down the data path: plan (policy → slots) → leases (cluster) → assemble (members, engines)
→ start the supervisor → publish or follow the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from council.cluster.leases import LeaseKeeper
from council.cluster.registry import Registry
from council.cluster.store import StateError, StateStore, open_state
from council.errors import CouncilError
from council.members.binary import LlamaServerInfo
from council.members.fleet import recipes_from_plan
from council.members.process import LifeConfig, MemberProcess
from council.members.states import StateChange
from council.plan.planner import PolicyPlan, plan_policy
from council.policy.loading import LoadedPolicy, PolicyError, Problem, load_policy
from council.policy.schema import Policy
from council.server.auth import KeyRing
from council.server.events import EventBus
from council.server.limits import Limits
from council.server.metrics import MemberCollector, RouterMetrics
from council.voting.assembly import Assembly, assemble, build_engines
from council.voting.ballots import BallotStore
from council.voting.client import HttpMemberClient
from council.voting.draft_control import DraftController
from council.voting.engine import CouncilAnswer, CouncilEngine
from council.voting.request import CouncilRequest, last_user_text

Role = Literal["both", "router", "host"]


class ReloadError(CouncilError):
    """The new policy is refused; the old one keeps running."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Router:
    policy_path: Path
    loaded: LoadedPolicy
    server: LlamaServerInfo
    run_dir: Path
    life: dict[str, Any] = field(default_factory=dict)  # LifeConfig fields other than run_dir
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    role: Role = "both"
    advertise_url: str = "http://127.0.0.1:8080"

    def __post_init__(self) -> None:
        self.plan: PolicyPlan = plan_policy(self.policy)
        self.events = EventBus()  # the dashboard's live view: member changes, ballots, log lines
        self.listeners: list[Callable[[StateChange], None]] = [self._member_changed]
        self.state: StateStore = open_state(self.policy.state)
        self.shared = self.policy.state != "memory"  # ballots and rate limits live in Redis too
        self.leases = LeaseKeeper(self.state, holder=f"{socket.gethostname()}:{os.getpid()}")
        self.keys = KeyRing(self.policy.server.api_keys)
        self.registry = Registry(self.state, self.policy.server.heartbeat,
                                 os.environ.get(self.policy.server.cluster_key_env) or None)
        self.limits = Limits(self.metrics, self.state, self.shared, self.policy.server.max_queue)
        self.ballots = BallotStore(self.policy.server.ballots)
        self.assembly: Assembly | None = None
        self.draft_control: DraftController | None = None  # live draft length of `n_max: auto` members
        self._tasks: list[asyncio.Task[None]] = []
        self._sharing: set[asyncio.Task[None]] = set()  # ballot copies on their way to Redis (kept from the GC)
        self._reload_lock = asyncio.Lock()
        self.metrics.watch(MemberCollector(lambda: [m.snapshot() for m in self.processes.values()],
                                           lambda: self.plan.to_json()["gpus"]))

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @property
    def life_config(self) -> LifeConfig:
        return LifeConfig(run_dir=self.run_dir, **self.life)

    @property
    def processes(self) -> dict[str, MemberProcess]:
        return self.assembly.supervisor.processes if self.assembly is not None else {}

    @property
    def engines(self) -> dict[str, CouncilEngine]:
        return self.assembly.engines if self.assembly is not None else {}

    @property
    def refused(self) -> dict[str, str]:
        return {} if self.role == "router" else self.plan.refused

    def accepts_media(self, target: str) -> bool:
        """Whether image or audio parts can go to `target` (a council or a model): every local model behind it
        must have a multimodal projector (`--mmproj` in its args); remote models are taken to accept them."""
        policy = self.policy
        engine = self.engines.get(target)
        models = [s.model for s in engine.seats] if engine is not None else [target]
        return all(policy.models[m].remote is not None or any(a in ("--mmproj", "-mm", "--mmproj-url", "-mmu")
                                                              for a in policy.models[m].args) for m in models)

    def passthrough_client(self, model: str) -> tuple[MemberProcess, HttpMemberClient] | None:
        """The least busy ready process serving `model`, and the client its council calls go through."""
        assert self.assembly is not None
        ready = [p for p in self.processes.values() if p.spec.model == model and p.ready]
        if not ready:
            return None
        process = min(ready, key=lambda p: (p.in_flight, p.name))
        return process, self.assembly.process_clients[process.name]

    # ---- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lease the plan's slots (councils that get none are not started), then launch the members.

        Roles: `both` runs members and answers; `host` runs members and publishes them to the registry;
        `router` runs none and answers with the members the registry lists (on other hosts)."""
        if self.role == "router":
            self.assembly = assemble(self.plan, self.server, self.life_config, ballots=self.ballots,
                                     elsewhere=self.registry.endpoint, run_members=False)
            self._tasks.append(asyncio.create_task(self.registry.follow_forever(), name="registry"))
            return
        self.plan = await self.leases.admit(self.plan)
        self.assembly = assemble(self.plan, self.server, self.life_config, ballots=self.ballots,
                                 listeners=self.listeners)
        self.assembly.supervisor.log_listeners.append(self._log_line)
        await self.assembly.supervisor.start()
        self.leases.start_renewing()
        # Reads the current plan and engines on every tick, so a reload that adds `n_max: auto` is picked up.
        self.draft_control = DraftController(lambda: self.plan, self.assembly.supervisor, lambda: self.engines)
        self._tasks.append(asyncio.create_task(self.draft_control.run_forever(), name="draft-tuning"))
        if self.shared:
            self._tasks.append(asyncio.create_task(
                self.registry.publish_forever(self.advertise_url, lambda: self.processes.values()), name="heartbeat"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.role != "router" and self.shared:
            await self.registry.withdraw(self.advertise_url)
        if self.assembly is not None:
            await self.assembly.supervisor.stop()
        await self.leases.release_all()
        await self.registry.aclose()
        await self.state.close()

    # ---- answers ------------------------------------------------------------------------------------------

    def answered(self, answer: CouncilAnswer, request: CouncilRequest | dict[str, Any] | None = None) -> None:
        """Count a council answer in the metrics, copy its ballot to the shared store, and publish it (with the
        question: the request's last user message)."""
        metrics = self.metrics
        doc = answer.council_json()
        self.events.publish("ballot", {"id": answer.id, "question": _question(request), "created": time.time(),
                                       **doc})
        if self.shared:  # so /v1/ballots/{id} works on every router; an outage only loses the copy
            task = asyncio.create_task(self._share_ballot(answer.id))
            self._sharing.add(task)
            task.add_done_callback(self._sharing.discard)
        metrics.answers.labels(answer.council, str(answer.early_stop).lower(), str(answer.degraded).lower()).inc()
        metrics.agreement.labels(answer.council).observe(answer.decision.agreement)
        winners = set(answer.decision.winner_members)
        for m in doc["members"]:
            metrics.votes.labels(answer.council, m["name"], m["status"], str(m["name"] in winners).lower()).inc()

    def _member_changed(self, change: StateChange) -> None:
        process = self.processes.get(change.member)
        self.events.publish("member", {"change": change.to_json(),
                                       "member": process.snapshot() if process is not None else None})

    def _log_line(self, member: str, line: str) -> None:
        self.events.publish("log", {"member": member, "line": line})

    async def _share_ballot(self, ballot_id: str) -> None:
        ballot = self.ballots.get(ballot_id)
        if ballot is not None:
            with contextlib.suppress(StateError):
                await self.state.put_ballot(ballot_id, ballot, self.policy.server.ballots)

    async def ballot(self, ballot_id: str) -> dict[str, Any] | None:
        """A recent ballot from this router, else from the shared store (StateError if it is away)."""
        found = self.ballots.get(ballot_id)
        if found is None and self.shared:
            found = await self.state.get_ballot(ballot_id)
        return found

    def readiness(self) -> tuple[bool, list[str]]:
        """Every admitted council has a quorum of ready members (remote members count as ready)."""
        reasons = []
        assert self.assembly is not None
        for name, engine in self.engines.items():
            ready = 0
            for seat in engine.seats:
                process = self.assembly.process_of(seat.name)
                if process is not None:
                    ready += self.processes[process].ready
                elif self.role != "router" or self.registry.endpoint(seat.name) is not None:
                    ready += 1  # a remote (litellm) member, or one the registry lists
            need = engine.config.quorum_count()
            if ready < need:
                reasons.append(f"council {name}: {ready} of {len(engine.seats)} members ready, quorum {need}")
        for name, reason in self.refused.items():
            reasons.append(f"council {name} is not running: {reason}")
        return not reasons, reasons

    # ---- reload -------------------------------------------------------------------------------------------

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the policy: only processes whose launch inputs changed restart; a bad policy is refused."""
        async with self._reload_lock:
            try:
                loaded = load_policy(self.policy_path)
            except PolicyError as exc:
                raise ReloadError(exc.lines()) from None
            try:
                plan = plan_policy(loaded.policy)
            except (OSError, ValueError) as exc:
                raise ReloadError([Problem((), str(exc)).format(str(self.policy_path))]) from None
            assert self.assembly is not None
            if self.role == "router":  # no members here: only the councils and keys change
                changes: dict[str, list[str]] = {"unchanged": [], "restarted": [], "stopped": [], "started": []}
            else:
                plan, changes = await self._swap_processes(plan)
            self.loaded, self.plan = loaded, plan
            self.keys.update(loaded.policy.server.api_keys)
            self.limits.max_queue = loaded.policy.server.max_queue
            elsewhere = self.registry.endpoint if self.role == "router" else None
            self.assembly.engines, self.assembly.process_clients = build_engines(
                plan, self.assembly.supervisor, self.ballots, elsewhere)
            return changes

    async def _swap_processes(self, plan: PolicyPlan) -> tuple[PolicyPlan, dict[str, list[str]]]:
        refused = [f"council {c.name} does not fit: {c.reason}" for c in plan.slots.councils if not c.admitted]
        if refused:
            raise ReloadError(refused)
        # Our own leases would count against the new plan: give them back, lease anew, and on refusal take the
        # old ones again (the old councils never stopped).
        await self.leases.release_leases()
        plan = await self.leases.admit(plan)
        refused = [f"council {name}: {reason}" for name, reason in plan.refused.items()]
        if refused:
            await self.leases.release_leases()
            self.leases.keep_wanting(self.plan)
            await self.leases.admit(self.plan)
            raise ReloadError(refused)
        assert self.assembly is not None
        supervisor = self.assembly.supervisor
        recipes = {r.name: r for r in recipes_from_plan(plan, self.server)}
        old_keys = {name: _identity(self.plan, name) for name in supervisor.processes}
        new_keys = {name: _identity(plan, name) for name in recipes}
        unchanged = [n for n in new_keys if old_keys.get(n) == new_keys[n]]
        removed = [n for n in old_keys if n not in new_keys or old_keys[n] != new_keys[n]]
        added = [n for n in new_keys if n not in unchanged]
        await asyncio.gather(*(supervisor.remove(n, "reload: changed or removed") for n in removed))
        for name in added:
            supervisor.add(recipes[name])
        for name in unchanged:  # same process, but the new plan's recipe for its next restart
            supervisor.replace_recipe(recipes[name])
        return plan, {"unchanged": sorted(unchanged), "restarted": sorted(set(removed) & set(added)),
                      "stopped": sorted(set(removed) - set(added)), "started": sorted(set(added) - set(removed))}


def _question(request: CouncilRequest | dict[str, Any] | None) -> str:
    if isinstance(request, CouncilRequest):
        return request.question
    return last_user_text((request or {}).get("messages"))


def _identity(plan: PolicyPlan, name: str) -> tuple[Any, ...]:
    """What a process is launched from: its model's config (and its draft model's), members, GPU."""
    policy = plan.policy
    placement = next(p for p in plan.placements() if p.process.key == name)
    model = policy.models[placement.process.model]
    draft = policy.models[model.draft.model].model_dump_json() if model.draft.model else None
    return (placement.process.model, model.model_dump_json(), draft, placement.process.seats, placement.gpu)
