"""The router: one running policy behind the HTTP API — its plan, leases, member processes, council engines,
the member registry (several hosts), keys and limits — and the reload that swaps a policy in place.

Start-up goes down the data path: plan (policy → slots) → leases (cluster) → assemble (members, engines)
→ start the supervisor → publish or follow the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from council.cluster.leases import LeaseKeeper
from council.cluster.registry import Registry, host_instance
from council.cluster.store import StateError, StateStore, open_state
from council.errors import CouncilError
from council.members.binary import LlamaServerInfo
from council.members.fleet import recipes_from_plan
from council.members.launch import LaunchError
from council.members.process import LifeConfig, MemberProcess
from council.members.states import StateChange
from council.plan.gguf import read_gguf
from council.plan.gpus import Gpu, GpuInventory, nvml_gpus
from council.plan.planner import PolicyPlan, plan_policy
from council.policy.checks import environment_problems, missing_run_files
from council.policy.loading import LoadedPolicy, PolicyError, Problem, load_policy
from council.policy.schema import Policy
from council.server.auth import MAKE_A_KEY, KeyRing, env_secret
from council.server.events import EventBus
from council.server.history import History, point_json
from council.server.limits import Limits
from council.server.metrics import ProcessCollector, RouterMetrics
from council.voting.assembly import Assembly, assemble
from council.voting.ballots import BallotStore
from council.voting.client import HttpMemberClient
from council.voting.draft_control import DraftController
from council.voting.engine import CouncilAnswer, CouncilEngine
from council.voting.request import CouncilRequest, last_user_text

log = logging.getLogger("council.server.router")
Role = Literal["both", "router", "host"]
SHARE_WAIT = 1.0  # s: the most an answer waits for its ballot's copy in the shared store
# What a router reads of its policy only when it starts: the state store, and the registry, lease keeper and
# limits built on it (`state`), where it listens (`serve` binds once), the URL it publishes its members at, the
# cluster key's variable and the heartbeat (the registry's). A reload that changes one is refused: it would answer
# `reloaded` and go on as before.
AT_START: tuple[tuple[str, ...], ...] = (("state",), ("server", "host"), ("server", "port"),
                                         ("server", "advertise_url"), ("server", "cluster_key_env"),
                                         ("server", "heartbeat"))


class ReloadError(CouncilError):
    """The new policy is refused; the old one keeps running."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class RouterRole(Protocol):
    """Where a router's seats run: its own processes (`LocalRole`: `--role both|host`) or other hosts' processes
    found through the member registry (`PeerRole`: `--role router`). The router asks its role; nothing else
    branches on the role."""

    name: Role

    def refused(self, plan: PolicyPlan) -> dict[str, str]:
        """Councils of the plan this router will not answer, with the reason."""
        ...

    def check(self, loaded: LoadedPolicy, file: str) -> list[str]:
        """Why this router cannot run a new policy here (a reload's check before it stops anything)."""
        ...

    def starting_problems(self, router: Router, loaded: LoadedPolicy, plan: PolicyPlan) -> list[str]:
        """Why a process the reload to `plan` would start cannot start here (its model file is not there)."""
        ...

    async def start(self, router: Router) -> Assembly: ...

    async def stop(self, router: Router) -> None: ...

    async def swap(self, router: Router, plan: PolicyPlan) -> tuple[PolicyPlan, dict[str, list[str]]]:
        """Move the running processes to `plan` (a reload); the plan as leased and what changed."""
        ...

    def passthrough(self, router: Router, model: str) -> HttpMemberClient | None:
        """The client a request for `model` (not a council) goes through, None while none is ready."""
        ...

    async def granted(self, router: Router, council: str) -> None:
        """A council refused at start for want of leases holds them now: run it."""
        ...


@dataclass
class LocalRole:
    """Runs the plan's processes here (leased first), tunes their draft length, and with shared state publishes
    them to the registry (`host`, and `both` with Redis)."""

    server: LlamaServerInfo
    life: LifeConfig
    name: Role = "both"
    draft_control: DraftController | None = None  # live draft length of `n_max: auto` members
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def refused(self, plan: PolicyPlan) -> dict[str, str]:
        return plan.refused

    def check(self, loaded: LoadedPolicy, file: str) -> list[str]:
        """What only this machine can say of a new policy (`council check`'s own checks: its files, their GGUF
        headers, the draft types the installed llama-server knows): a reload refuses it before stopping anything."""
        return [p.format(file) for p in environment_problems(loaded, self.server, read_gguf)]

    def starting_problems(self, router: Router, loaded: LoadedPolicy, plan: PolicyPlan) -> list[str]:
        """The model files of the processes the reload would start (changed or new) that are not there, `memory:`
        or not: it accepted one and stopped a council's working processes for ones that could never load. A
        process it leaves running is not asked (its file may go: it has it open)."""
        assert router.assembly is not None
        started = _started(router.plan, router.assembly.supervisor.processes, plan)
        models = {p.process.model for p in plan.placements() if p.process.key in started}
        return [p.format(str(router.policy_path)) for p in missing_run_files(loaded, models)]

    async def start(self, router: Router) -> Assembly:
        # Planned again now the store can say which neighbours' memory its leases count already.
        router.planned = plan_policy(router.policy, await router.gpus())
        router.plan = await router.leases.admit(router.planned)
        assembly = assemble(router.plan, self.server, self.life, ballots=router.ballots, listeners=router.listeners)
        assembly.supervisor.log_listeners.append(router.log_line)
        await assembly.supervisor.start()
        router.leases.start_renewing()
        # Reads the current plan on every tick (the assembly's engines too), so a reload that adds `n_max: auto`
        # is picked up.
        self.draft_control = DraftController(lambda: router.plan, assembly)
        self._tasks.append(asyncio.create_task(self.draft_control.run_forever(), name="draft-tuning"))
        if router.shared:
            router.registry.instance = host_instance(self.life.run_dir, router.advertise_url)
            self._tasks.append(asyncio.create_task(router.registry.publish_forever(
                router.advertise_url, lambda: assembly.supervisor.processes.values()), name="heartbeat"))
        return assembly

    async def stop(self, router: Router) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if router.shared:
            await router.registry.withdraw(router.advertise_url)
        if router.assembly is not None:
            await router.assembly.supervisor.stop()

    def passthrough(self, router: Router, model: str) -> HttpMemberClient | None:
        """The least busy ready process serving `model`, through the client its council calls use."""
        assert router.assembly is not None
        ready = [p for p in router.assembly.supervisor.processes.values() if p.spec.model == model and p.ready]
        if not ready:
            return None
        return router.assembly.process_clients[min(ready, key=lambda p: (p.in_flight, p.name)).name]

    async def granted(self, router: Router, council: str) -> None:
        """Start the council's processes as the plan placed it before its lease was refused (or, lost, as it ran),
        and its engine."""
        assert router.assembly is not None
        router.plan = router.plan.readmit(router.planned, council)
        names = {p.process.key for c in router.plan.slots.councils if c.name == council for p in c.placements}
        supervisor = router.assembly.supervisor
        for recipe in recipes_from_plan(router.plan, self.server):
            if recipe.name in names and recipe.name not in supervisor.processes:
                supervisor.add(recipe)
        router.assembly.build_engines(router.plan)

    async def swap(self, router: Router, plan: PolicyPlan) -> tuple[PolicyPlan, dict[str, list[str]]]:
        refused = [f"council {c.name} does not fit: {c.reason}" for c in plan.slots.councils if not c.admitted]
        if refused:
            raise ReloadError(refused)
        try:  # every new process can be launched: found out now, not after the old ones stopped
            for recipe in recipes_from_plan(plan, self.server):
                recipe.make_spec(0)
        except LaunchError as exc:
            raise ReloadError([str(exc)]) from None
        # The new plan's leases, our own old ones counted as given back; they are released only once the new ones
        # are held, and a refusal leaves them held (the old councils never stopped).
        plan = await router.leases.admit_instead(plan)
        refused = [f"council {name}: {reason}" for name, reason in plan.refused.items()]
        if refused:
            raise ReloadError(refused)
        assert router.assembly is not None
        supervisor = router.assembly.supervisor
        recipes = {r.name: r for r in recipes_from_plan(plan, self.server)}
        started = _started(router.plan, supervisor.processes, plan)
        unchanged = [n for n in recipes if n not in started]
        removed = [n for n in supervisor.processes if n not in recipes or n in started]
        added = [n for n in recipes if n in started]
        await asyncio.gather(*(supervisor.remove(n, "reload: changed or removed") for n in removed))
        for name in added:
            supervisor.add(recipes[name])
        for name in unchanged:  # same process, but the new plan's recipe for its next restart
            recipe, running = recipes[name], supervisor.processes[name].recipe.draft_n
            if recipe.retune is not None and running is not None and running != recipe.draft_n:
                # At the length live tuning chose, which it runs at: the new recipe's is `auto.start`, and the
                # process was reported, and restarted at its next start, as if tuning had never moved it.
                recipe = recipe.retune(running)
            supervisor.replace_recipe(recipe)
        return plan, {"unchanged": sorted(unchanged), "restarted": sorted(set(removed) & set(added)),
                      "stopped": sorted(set(removed) - set(added)), "started": sorted(set(added) - set(removed))}


@dataclass
class PeerRole:
    """Runs no process: answers every council of the policy with the processes the registry lists on other
    hosts, and relays a model's requests to a host that serves it."""

    server: LlamaServerInfo
    life: LifeConfig
    name: Role = "router"
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def refused(self, plan: PolicyPlan) -> dict[str, str]:
        return {}  # this router places nothing: the hosts' plans decide

    def check(self, loaded: LoadedPolicy, file: str) -> list[str]:
        return []  # it launches nothing: its hosts check their own

    def starting_problems(self, router: Router, loaded: LoadedPolicy, plan: PolicyPlan) -> list[str]:
        return []

    async def start(self, router: Router) -> Assembly:
        self._tasks.append(asyncio.create_task(router.registry.follow_forever(), name="registry"))
        return assemble(router.plan, self.server, self.life, ballots=router.ballots,
                        elsewhere=router.registry.endpoint, run_members=False)

    async def stop(self, router: Router) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def swap(self, router: Router, plan: PolicyPlan) -> tuple[PolicyPlan, dict[str, list[str]]]:
        return plan, {"unchanged": [], "restarted": [], "stopped": [], "started": []}  # only councils and keys

    async def granted(self, router: Router, council: str) -> None:
        return None  # it leases nothing

    def passthrough(self, router: Router, model: str) -> HttpMemberClient | None:
        endpoint = router.registry.model_endpoint(model)
        return HttpMemberClient(endpoint=lambda: endpoint) if endpoint is not None else None


def open_router(policy_path: Path, loaded: LoadedPolicy, server: LlamaServerInfo, life: LifeConfig, *,
                role: Role = "both", advertise_url: str = "http://127.0.0.1:8080",
                metrics: RouterMetrics | None = None, inventory: GpuInventory = nvml_gpus) -> Router:
    """Read what a router starts from — the plan (GGUF headers, GPUs) and the state store — and build it.
    `inventory` lists the GPUs and what holds their memory (NVML; tests hand in their own)."""
    policy = loaded.policy
    plan = plan_policy(policy, inventory())
    state = open_state(policy.state)
    impl: RouterRole = (PeerRole(server, life) if role == "router" else LocalRole(server, life, name=role))
    return Router(policy_path, loaded, plan, state, impl, metrics=metrics or RouterMetrics(),
                  advertise_url=advertise_url, inventory=inventory)


class Router:
    """One running policy behind the HTTP API. Its parts are handed in (`open_router` reads them); the role
    decides where the seats run."""

    def __init__(self, policy_path: Path, loaded: LoadedPolicy, plan: PolicyPlan, state: StateStore,
                 role: RouterRole, *, metrics: RouterMetrics, advertise_url: str = "http://127.0.0.1:8080",
                 inventory: GpuInventory = nvml_gpus) -> None:
        self.policy_path = policy_path
        self.loaded = loaded
        self.plan = plan
        self.planned = plan  # as placed before leases refused any council (`plan` is as leased)
        self.state = state
        self.role = role
        self.metrics = metrics
        self.advertise_url = advertise_url
        self.inventory = inventory
        policy = loaded.policy
        self.events = EventBus()  # the dashboard's live view: member changes, ballots, log lines
        self.history = History(policy.server.history)  # the dashboard's last hour, sampled by `_sample_history`
        self.listeners: list[Callable[[StateChange], None]] = [self._process_changed]
        self.shared = policy.state != "memory"  # ballots and rate limits live in Redis too
        self.leases = LeaseKeeper(state, holder=f"{socket.gethostname()}:{os.getpid()}", on_lost=self.lease_lost,
                                  on_granted=self.lease_granted)
        self.lost: dict[str, str] = {}  # council -> why its processes were stopped (its slots went elsewhere)
        self.keys = KeyRing(policy.server.api_keys)
        self.public = False  # bound beyond loopback (`serve` says): a reload may not leave it without keys
        self.registry = Registry(state, policy.server.heartbeat,
                                 env_secret(policy.server.cluster_key_env))
        self.limits = Limits(metrics, state, self.shared, policy.server.max_queue)
        self.ballots = BallotStore(policy.server.ballots)
        self.assembly: Assembly | None = None
        self._sharing: set[asyncio.Task[None]] = set()  # ballot copies on their way to Redis (kept from the GC)
        self._reload_lock = asyncio.Lock()
        self._stopping = False
        self._history_task: asyncio.Task[None] | None = None
        metrics.watch(ProcessCollector(lambda: [p.snapshot() for p in self.processes.values()],
                                      lambda: self.plan.to_json()["gpus"]))

    @property
    def policy(self) -> Policy:
        return self.loaded.policy

    @property
    def processes(self) -> dict[str, MemberProcess]:
        return self.assembly.supervisor.processes if self.assembly is not None else {}

    @property
    def engines(self) -> dict[str, CouncilEngine]:
        return self.assembly.engines if self.assembly is not None else {}

    @property
    def refused(self) -> dict[str, str]:
        return self.role.refused(self.plan)

    def local_models(self, target: str) -> list[str]:
        """The models behind `target` (a council or a model) that llama-server processes serve, each once."""
        engine = self.engines.get(target)
        models = [s.model for s in engine.seats] if engine is not None else [target]
        return [m for m in dict.fromkeys(models) if m in self.policy.models and self.policy.models[m].remote is None]

    def text_only(self, target: str) -> list[str]:
        """The models behind `target` (a council or a model) that cannot read image or audio parts, each once, in
        seat order: local models without a multimodal projector (`--mmproj` in their args); remote models are taken
        to accept them. Empty: media can go to `target`."""
        return [m for m in self.local_models(target)
                if not any(a in ("--mmproj", "-mm", "--mmproj-url", "-mmu") for a in self.policy.models[m].args)]

    def passthrough_client(self, model: str) -> HttpMemberClient | None:
        """The client a request for `model` goes through (a ready process here, or a host that serves it)."""
        return self.role.passthrough(self, model)

    # ---- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the role: lease the plan's slots and launch the processes (councils that get no lease are not
        started), or follow the registry."""
        if (policy := await self.state.eviction_policy()) not in (None, "noeviction"):
            log.warning("Redis evicts keys under memory pressure (maxmemory-policy %s): a lease or a registry entry "
                        "it drops lets another router lease the same GPU memory; set maxmemory-policy noeviction",
                        policy)
        self.assembly = await self.role.start(self)
        self._history_task = asyncio.create_task(self._sample_history(), name="history")

    async def stop(self) -> None:
        self._stopping = True  # a council leased in a last renewal round starts nothing now
        if self._history_task is not None:
            self._history_task.cancel()
            await asyncio.gather(self._history_task, return_exceptions=True)
        await self.role.stop(self)
        await self.leases.release_all()
        await self.registry.aclose()
        await self.state.close()

    # ---- answers ------------------------------------------------------------------------------------------

    async def answered(self, answer: CouncilAnswer, request: CouncilRequest | dict[str, Any] | None = None,
                       seconds: float | None = None) -> None:
        """Count a council answer (that took `seconds`) in the metrics and the history, publish it (with the
        question: the request's last user message, and its owner: who asked, so each subscriber sees only what
        `may_read` allows), and copy its ballot to the shared store before the answer leaves."""
        metrics = self.metrics
        doc = answer.council_json()
        self.history.answered(answer.council, answer.decision.agreement, seconds)
        owner = request.owner if isinstance(request, CouncilRequest) else None
        self.events.publish("ballot", glimpse({"id": answer.id, "question": _question(request), "created": time.time(),
                                               **({"owner": owner} if owner is not None else {}), **doc}))
        metrics.answer_count(answer.council, str(answer.early_stop).lower(), str(answer.degraded).lower()).inc()
        metrics.agreement_of(answer.council).observe(answer.decision.agreement)
        winners = set(answer.decision.winner_members)
        for m in doc["members"]:
            metrics.vote_count(answer.council, m["name"], m["status"], str(m["name"] in winners).lower()).inc()
        if self.shared:  # so /v1/ballots/{id} works on every router; an outage only loses the copy
            task = asyncio.create_task(self._share_ballot(answer.id))
            self._sharing.add(task)
            task.add_done_callback(self._sharing.discard)
            # Awaited, so a client that asks another router for the ballot at once finds it there (it was copied
            # after the answer left: 4 of 30 such reads were 404); a slow store holds no answer past a second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), SHARE_WAIT)

    def _process_changed(self, change: StateChange) -> None:
        process = self.processes.get(change.member)
        self.events.publish("member", {"change": change.to_json(),
                                       "member": process.snapshot() if process is not None else None})

    def lease_lost(self, council: str, reason: str) -> None:
        """Another router holds the council's slots now: stop its processes (they would run on memory granted to
        someone else) and say why in /readyz, the log and the dashboard. Stays so until the keeper leases its slots
        again (`lease_granted`: the other router gave them back) or a reload leases anew."""
        why = f"lease lost: {reason}"
        self.lost[council] = why
        log.error("council %s stops: %s", council, why)
        self.events.publish("lease", {"council": council, "reason": why})
        task = asyncio.create_task(self._stop_council(council, why), name=f"stop-{council}")
        self._sharing.add(task)  # kept from the GC until done
        task.add_done_callback(self._sharing.discard)

    def lease_granted(self, council: str) -> None:
        """A council refused at start (its slots leased elsewhere, Redis away), or stopped when its lease was lost,
        holds its leases now: run it, as if it had been leased at start (a crashed predecessor's leases expired,
        Redis came back, the router that took its slots gave them back)."""
        task = asyncio.create_task(self._start_council(council), name=f"start-{council}")
        self._sharing.add(task)  # kept from the GC until done
        task.add_done_callback(self._sharing.discard)

    async def _start_council(self, council: str) -> None:
        async with self._reload_lock:  # a reload swaps processes too
            # A reload since may have leased it (or dropped it) already.
            if (self.assembly is None or self._stopping or council not in self.leases.leases
                    or (council not in self.plan.refused and council not in self.lost)):
                return
            log.info("council %s starts: its leases are held now", council)
            if self.lost.pop(council, None) is not None:
                self.events.publish("lease", {"council": council, "reason": None})  # the dashboard's "stopped" goes
            await self.role.granted(self, council)

    async def _stop_council(self, council: str, why: str) -> None:
        async with self._reload_lock:  # a reload swaps processes too
            if self.assembly is None or council not in self.lost:
                return
            supervisor = self.assembly.supervisor
            names = [p.process.key for c in self.plan.slots.councils if c.name == council for p in c.placements]
            await asyncio.gather(*(supervisor.remove(n, why) for n in names if n in supervisor.processes))

    async def _sample_history(self) -> None:
        """One point of the dashboard's time series every `server.history` seconds, published as it is taken."""
        while True:
            self.history.resize(self.policy.server.history)  # a reload may change the step
            await asyncio.sleep(self.history.step)
            at = round(time.time(), 3)
            try:
                point = self.history.sample(at, list(self.processes.values()), list(self.engines))
            except Exception:  # a bug here must not stop the charts for good: the next step tries again
                log.exception("the dashboard's history could not take a point")
                continue
            self.events.publish("history", point_json(at, point))

    def log_line(self, process: str, line: str) -> None:
        self.events.publish("log", {"member": process, "line": line})

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
        """Every council has a quorum of ready seats (the assembly's rule), and none was refused."""
        assert self.assembly is not None
        reasons = [f"council {name} is stopped: {why}" for name, why in self.lost.items()]
        reasons += [f"council {name}: {why}" for name, why in self.assembly.quorum_shortfalls().items()
                    if name not in self.lost]
        reasons += [f"council {name} is not running: {reason}" for name, reason in self.refused.items()]
        return not reasons, reasons

    # ---- reload -------------------------------------------------------------------------------------------

    async def gpus(self) -> list[Gpu]:
        """The inventory without the memory a new plan accounts for itself: our processes (it places them anew)
        and those of routers on this host whose leases it sees (the leases count them)."""
        return await self.leases.for_planning(self.inventory(), os.getpid())

    def _key_problems(self, loaded: LoadedPolicy) -> list[str]:
        """A reload keeps the keys as `serve` demands them at start: each key's variable set, and keys at all,
        none of them a placeholder or short, where the router is bound beyond loopback."""
        keys = loaded.policy.server.api_keys
        ring = KeyRing(keys)
        problems = [f"API key variable not set: {missing}" for missing in ring.missing_env]
        if self.public and not keys:
            problems.append("server.api_keys: this router is bound beyond loopback, so it needs API keys")
        if self.public:
            problems += [f"server.api_keys: {weak}, too weak for a router bound beyond loopback: {MAKE_A_KEY}"
                         for weak in ring.weak]
        return problems

    def _restart_problems(self, loaded: LoadedPolicy) -> list[str]:
        """The settings read only at start (`AT_START`) that the new policy changes, each with its line."""
        problems = []
        for path in AT_START:
            old: Any = self.policy
            new: Any = loaded.policy
            for part in path:
                old, new = getattr(old, part), getattr(new, part)
            if old != new:  # no values: `state` may hold a password
                problems.append(loaded.problem(path, "changed, but read only when the router starts: restart it "
                                               "to change this").format(str(self.policy_path)))
        return problems

    def _checked_policy(self, gpus: list[Gpu]) -> tuple[LoadedPolicy, PolicyPlan]:
        """The policy file read again, checked and planned on `gpus`; a bad one is a ReloadError."""
        try:
            loaded = load_policy(self.policy_path)
        except PolicyError as exc:
            raise ReloadError(exc.lines()) from None
        problems = (self._restart_problems(loaded) + self.role.check(loaded, str(self.policy_path))
                    + self._key_problems(loaded))
        if problems:
            raise ReloadError(problems)
        try:
            return loaded, plan_policy(loaded.policy, gpus)
        except (OSError, ValueError) as exc:
            raise ReloadError([Problem((), str(exc)).format(str(self.policy_path))]) from None

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the policy: only processes whose launch inputs changed restart; a bad policy is refused."""
        async with self._reload_lock:
            # Read, checked and planned in a thread: the model files' headers are read from disk (a network mount
            # may take long), and requests go on meanwhile.
            loaded, plan = await asyncio.to_thread(self._checked_policy, await self.gpus())
            assert self.assembly is not None
            if problems := self.role.starting_problems(self, loaded, plan):
                raise ReloadError(problems)
            # The keys first: the swap waits for changed processes to drain (up to drain_timeout, then their
            # stop), and a key the new policy removes was honoured all that while. A refused swap puts them back.
            before = self.loaded.policy.server.api_keys
            self.keys.update(loaded.policy.server.api_keys)
            try:
                plan, changes = await self.role.swap(self, plan)
            except BaseException:
                self.keys.update(before)
                raise
            self.loaded, self.plan, self.planned = loaded, plan, plan
            self.lost.clear()  # every council of the new plan holds its leases again
            self.limits.max_queue = loaded.policy.server.max_queue
            self.ballots.resize(loaded.policy.server.ballots)  # Redis' copies and Responses' store read it live
            self.assembly.build_engines(plan, every_council=self.assembly.elsewhere is not None)
            # Open dashboards take a fresh snapshot (councils, plan) and re-read the history, whose step is the
            # new one now rather than after the sampler's current (old) step.
            self.history.resize(loaded.policy.server.history)
            self.events.publish("reload", {})
            settle_memory()  # what the old plan held goes; what the new one built lives as long
            return changes


def settle_memory() -> None:
    """Collect, then freeze what is left: the app, the plan, the processes and their clients live as long as the
    router, and every full pass of the cyclic collector walked them all (~120,000 objects, ~140 ms each, every few
    hundred requests: 16-20% of the router's CPU per request). Frozen objects are still freed by reference
    counting; a reload (which calls this again) unfreezes them first, so the old plan's cycles are collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


GLIMPSE_CHARS = 1000  # of any one text in a ballot the dashboard's stream carries


def glimpse(value: Any) -> Any:
    """A ballot as the dashboard's stream carries it: each text (a question, a reply voted whole, a vote's key) cut
    to GLIMPSE_CHARS. Each page that connects gets the last 50 ballots: whole, prompts of a megabyte made each
    connect ~100 MB written on the event loop, seconds of every other request's time. A ballot opens in full from
    /v1/ballots/{id}."""
    if isinstance(value, str):
        return value if len(value) <= GLIMPSE_CHARS else (
            f"{value[:GLIMPSE_CHARS]}… [{len(value) - GLIMPSE_CHARS} more characters]")
    if isinstance(value, dict):
        return {glimpse(k) if isinstance(k, str) else k: glimpse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [glimpse(v) for v in value]
    return value


def _question(request: CouncilRequest | dict[str, Any] | None) -> str:
    if isinstance(request, CouncilRequest):
        return request.question
    return last_user_text((request or {}).get("messages"))


def _started(old: PolicyPlan, running: Iterable[str], new: PolicyPlan) -> set[str]:
    """The processes of `new` a reload to it starts: new ones, and those whose launch inputs (`_identity`) changed;
    the others keep running (what `swap` does, and what `starting_problems` checks first)."""
    before = {name: _identity(old, name) for name in running}
    return {key for p in new.placements() if before.get(key := p.process.key) != _identity(new, key)}


def _identity(plan: PolicyPlan, name: str) -> tuple[Any, ...]:
    """What a process is launched from: its model's config (and its draft model's), members, GPU."""
    policy = plan.policy
    placement = next(p for p in plan.placements() if p.process.key == name)
    model = policy.models[placement.process.model]
    draft = policy.models[model.draft.model].model_dump_json() if model.draft.model else None
    return (placement.process.model, model.model_dump_json(), draft, placement.process.seats, placement.gpu)
