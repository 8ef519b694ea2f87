"""The router process: a policy's members under supervision, its council engines, and reloads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from council.auth import KeyRing
from council.ballots import BallotStore
from council.fleet import Fleet, fleet_from_plan
from council.leases import LeaseKeeper
from council.llama import LlamaServerInfo
from council.member import StateChange
from council.member_client import LocalEndpoint
from council.metrics import MemberCollector, RouterMetrics
from council.plan import PolicyPlan, plan_policy
from council.policy import Policy
from council.policy_file import LoadedPolicy, PolicyError, Problem, load_policy
from council.runtime import Runtime, build_runtime
from council.state import StateError, StateStore, open_state
from council.supervisor import Supervisor, SupervisorConfig


class ReloadError(Exception):
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
    supervisor_config: dict[str, Any] = field(default_factory=dict)
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    role: Literal["both", "router", "host"] = "both"
    advertise_url: str = "http://127.0.0.1:8080"

    def __post_init__(self) -> None:
        self.plan: PolicyPlan = plan_policy(self.policy)
        self.fleet: Fleet = fleet_from_plan(self.plan, self.server)
        self.listeners: list[Callable[[StateChange], None]] = []
        self.supervisor = Supervisor({}, SupervisorConfig(run_dir=self.run_dir, **self.supervisor_config))
        self.state: StateStore = open_state(self.policy.state)
        self.shared = self.policy.state != "memory"  # ballots and rate limits live in Redis too
        self.leases = LeaseKeeper(self.state, holder=f"{socket.gethostname()}:{os.getpid()}")
        self.keys = KeyRing(self.policy.server.api_keys)
        self.cluster_key = os.environ.get(self.policy.server.cluster_key_env) or None
        self.registry: dict[str, list[dict[str, Any]]] = {}  # host -> its ready members (last known)
        self._tasks: list[asyncio.Task[None]] = []
        self.ballots = BallotStore(self.policy.server.ballots)
        self.runtime: Runtime | None = None
        self.queues: dict[str, int] = {}
        self._reload_lock = asyncio.Lock()
        self.metrics.watch(MemberCollector(
            lambda: [m.snapshot() for m in self.supervisor.members.values()],
            lambda: self.plan.to_json()["gpus"]))

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    async def start(self) -> None:
        """Lease the plan's slots (councils that get none are not started), then launch the members.

        Roles: `both` runs members and answers; `host` runs members and publishes them to the registry;
        `router` runs none and answers with the members the registry lists (on other hosts)."""
        if self.role == "router":
            self.fleet = Fleet({}, {}, {})
            self._tasks.append(asyncio.create_task(self._follow_registry(), name="registry"))
        else:
            self.plan = await self.leases.admit(self.plan)
            self.fleet = fleet_from_plan(self.plan, self.server)
            self.supervisor = Supervisor(self.fleet.factories, self.supervisor.config, self.fleet.served,
                                         self.listeners)
            await self.supervisor.start()
            self.leases.start_renewing()
            if self.shared:
                self._tasks.append(asyncio.create_task(self._publish_members(), name="heartbeat"))
        self.runtime = build_runtime(self.plan, self.fleet, self.supervisor, ballots=self.ballots,
                                     elsewhere=self._elsewhere if self.role == "router" else None)

    async def _publish_members(self) -> None:
        """Heartbeat: this host's ready members, re-published before the last entry expires."""
        beat = self.policy.server.heartbeat
        while True:
            entries = [{"process": m.name, "members": list(m.members), "model": m.spec.model, "ready": True,
                        "url": f"{self.advertise_url}/internal/members/{m.name}"}
                       for m in self.supervisor.members.values() if m.ready]
            with contextlib.suppress(StateError):
                await self.state.publish_members(self.advertise_url, entries, ttl=3 * beat)
            await asyncio.sleep(beat)

    async def _follow_registry(self) -> None:
        """Keep the last registry Redis gave us: during an outage, answer with what was known."""
        while True:
            with contextlib.suppress(StateError):
                self.registry = await self.state.members()
            await asyncio.sleep(self.policy.server.heartbeat / 2)

    def _elsewhere(self, member: str) -> LocalEndpoint | None:
        if self.cluster_key is None:
            return None
        for host in sorted(self.registry):
            for entry in self.registry[host]:
                if member in entry.get("members", ()) and entry.get("ready"):
                    return LocalEndpoint(url=str(entry["url"]), api_key=self.cluster_key,
                                         request=contextlib.nullcontext)
        return None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.role != "router" and self.shared:
            with contextlib.suppress(StateError):
                await self.state.withdraw(self.advertise_url)
        await self.supervisor.stop()
        await self.leases.release_all()
        await self.state.close()
        if self.runtime is not None:
            await self.runtime.http.aclose()

    def readiness(self) -> tuple[bool, list[str]]:
        """Every admitted council has a quorum of ready members (remote members count as ready)."""
        reasons = []
        assert self.runtime is not None
        process_of = {m: p for p, members in self.fleet.served.items() for m in members}
        for name, engine in self.runtime.engines.items():
            ready = 0
            for member in engine.members:
                process = process_of.get(member.name)
                if process is not None:
                    ready += self.supervisor.members[process].ready
                elif self.role != "router" or self._elsewhere(member.name) is not None:
                    ready += 1  # a remote (litellm) member, or one the registry lists
            need = engine.config.quorum_count()
            if ready < need:
                reasons.append(f"council {name}: {ready} of {len(engine.members)} members ready, quorum {need}")
        for name, reason in self.fleet.refused.items():
            reasons.append(f"council {name} is not running: {reason}")
        return not reasons, reasons

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
            if self.role == "router":  # no members here: only the councils and keys change
                self.loaded, self.plan = loaded, plan
                self.keys = KeyRing(loaded.policy.server.api_keys)
                old = self.runtime
                self.runtime = build_runtime(plan, self.fleet, self.supervisor, ballots=self.ballots,
                                             http=old.http if old else None, elsewhere=self._elsewhere)
                return {"unchanged": [], "restarted": [], "stopped": [], "started": []}
            refused = [f"council {c.name} does not fit: {c.reason}" for c in plan.slots.councils if not c.admitted]
            if refused:
                raise ReloadError(refused)
            # Our own leases would count against the new plan: give them back, lease anew, and on refusal
            # take the old ones again (the old councils never stopped).
            await self.leases.release_leases()
            plan = await self.leases.admit(plan)
            refused = [f"council {c.name}: {c.reason}" for c in plan.slots.councils if not c.admitted]
            if refused:
                await self.leases.release_leases()
                self.leases.keep_wanting(self.plan)  # the old councils never stopped
                await self.leases.admit(self.plan)
                raise ReloadError(refused)
            fleet = fleet_from_plan(plan, self.server)
            old_keys = {name: self._identity(self.plan, self.fleet, name) for name in self.fleet.factories}
            new_keys = {name: self._identity(plan, fleet, name) for name in fleet.factories}
            unchanged = [n for n in new_keys if old_keys.get(n) == new_keys[n]]
            removed = [n for n in old_keys if n not in new_keys or old_keys[n] != new_keys[n]]
            added = [n for n in new_keys if n not in unchanged]
            await asyncio.gather(*(self.supervisor.remove(n, "reload: changed or removed") for n in removed))
            for name in added:
                self.supervisor.add(name, fleet.factories[name], fleet.served[name])
            for name in unchanged:  # same process, but the new plan's factory for its next restart
                self.supervisor.replace_factory(name, fleet.factories[name])
            self.loaded, self.plan, self.fleet = loaded, plan, fleet
            self.keys = KeyRing(loaded.policy.server.api_keys)
            old_runtime = self.runtime
            self.runtime = build_runtime(plan, fleet, self.supervisor,
                                         http=old_runtime.http if old_runtime else None, ballots=self.ballots)
            return {"unchanged": sorted(unchanged), "restarted": sorted(set(removed) & set(added)),
                    "stopped": sorted(set(removed) - set(added)), "started": sorted(set(added) - set(removed))}

    @staticmethod
    def _identity(plan: PolicyPlan, fleet: Fleet, name: str) -> tuple[Any, ...]:
        """What a process is launched from: its model's config (and its draft model's), members, GPU."""
        policy = plan.policy
        placement = next(p for r in plan.slots.councils for p in r.placements if p.process.key == name)
        model = policy.models[placement.process.model]
        draft = policy.models[model.draft.model].model_dump_json() if model.draft.model else None
        return (placement.process.model, model.model_dump_json(), draft, fleet.served[name], placement.gpu)
