"""From a plan to a running policy: member processes under a supervisor, and a council engine per council.

`Assembly` is the one owner of "which seat runs on which process, and is council X ready?": `assemble()` builds
it, `council serve` (and its reloads), `council up`, `council eval`, the tests and the benchmarks use it, and
the router's readiness, the draft controller and the internal member route ask it. Seats this router runs are
called through their process; with `elsewhere` (a router reading the member registry) a seat no local process
serves is called on the host that runs it; a `remote:` model's seat is called through litellm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from council.members.binary import LlamaServerInfo
from council.members.fleet import recipes_from_plan
from council.members.process import LifeConfig, Listener, MemberProcess
from council.members.states import State
from council.members.supervisor import Supervisor
from council.plan.planner import PolicyPlan
from council.policy.schema import CouncilConfig
from council.voting.ballots import BallotStore
from council.voting.client import Endpoint, HttpMemberClient, MemberClient, NoLimit, RateLimits, RemoteClient
from council.voting.engine import CouncilEngine, Seat

# Finds the endpoint of a seat no local process serves (on another host), or None.
# Where another host runs a seat (its name, and the model the policy gives it), or None.
Elsewhere = Callable[[str, str | None], Endpoint | None]


def process_endpoint(process: MemberProcess) -> Endpoint | None:
    """Where a local process answers, while it is ready."""
    if process.state is not State.READY:
        return None
    return Endpoint(name=process.name, url=process.spec.url, api_key=process.spec.api_key, http=process.http,
                    request=process.request, slots=process.slots)


def endpoint_of(process: MemberProcess) -> Callable[[], Endpoint | None]:
    """`process_endpoint`, made once per start (a start has its own port and key) and HTTP session rather than
    once per call: every member call asks."""
    made: tuple[object, object, Endpoint | None] = (None, None, None)

    def endpoint() -> Endpoint | None:
        nonlocal made
        if process.state is not State.READY:
            return None
        spec, http, where = made
        if where is None or spec is not process.spec or http is not process.http:
            where = process_endpoint(process)
            made = (process.spec, process.http, where)
        return where

    return endpoint


@dataclass
class Assembly:
    """The running policy's processes and engines, and where each seat runs."""

    supervisor: Supervisor
    ballots: BallotStore
    elsewhere: Elsewhere | None = None
    engines: dict[str, CouncilEngine] = field(default_factory=dict)
    # Per local process, the client a passthrough (or another host's router) uses: the one of the first seat it
    # serves (same slots, same rate limit as that seat's council calls).
    process_clients: dict[str, HttpMemberClient] = field(default_factory=dict)
    remote_seats: frozenset[str] = frozenset()  # seats of `remote:` models (litellm): taken to be ready
    seat_models: dict[str, str] = field(default_factory=dict)  # the model the policy gives each seat

    def process_of(self, seat: str) -> MemberProcess | None:
        """The local process that serves `seat`, or None (a remote model's seat, or one on another host)."""
        return next((p for p in self.supervisor.processes.values() if seat in p.seats), None)

    def seat_ready(self, seat: str, *, without: str | None = None) -> bool:
        """Whether `seat` can answer now: its local process is ready (and is not the process `without`, which is
        about to be taken out), the registry lists it on another host, or it is a remote model's."""
        process = self.process_of(seat)
        if process is not None:
            return process.name != without and process.ready
        if seat in self.remote_seats:
            return True
        return self.elsewhere is not None and self.elsewhere(seat, self.seat_models.get(seat)) is not None

    def ready_seats(self, council: str, *, without: str | None = None) -> int:
        return sum(self.seat_ready(s.name, without=without) for s in self.engines[council].seats)

    def quorum_shortfalls(self, *, without: str | None = None) -> dict[str, str]:
        """Per council below its quorum (with the process `without` taken out, if given): why, in words."""
        short = {}
        for name, engine in self.engines.items():
            if without is not None and not any(self.process_name(s.name) == without for s in engine.seats):
                continue  # taking `without` out does not touch this council
            ready, need = self.ready_seats(name, without=without), engine.config.quorum_count()
            if ready < need:
                short[name] = f"{ready} of {len(engine.seats)} seats ready, quorum {need}"
        return short

    def process_name(self, seat: str) -> str | None:
        process = self.process_of(seat)
        return process.name if process is not None else None

    def ready_client(self, process: str) -> HttpMemberClient | None:
        """The client of a local process that is ready now (for passthrough and the internal member route)."""
        local = self.supervisor.processes.get(process)
        client = self.process_clients.get(process)
        return client if local is not None and local.ready else None

    def build_engines(self, plan: PolicyPlan, *, every_council: bool = False) -> None:
        """An engine per admitted council (`every_council`: each council of the policy, for a router that runs
        no process and finds its seats through the registry), replacing the engines there were."""
        policy = plan.policy
        configs: dict[str, CouncilConfig] = dict(policy.councils) if every_council else plan.configs
        engines: dict[str, CouncilEngine] = {}
        clients: dict[str, HttpMemberClient] = {}
        remote: set[str] = set()
        models: dict[str, str] = {}
        limits = RateLimits()  # one limiter per process or remote model, whichever seats and calls go to it
        for name, config in configs.items():
            seats = []
            for order, (seat_name, member, _) in enumerate(config.seats(name)):
                model = policy.models[member.model]
                models[seat_name] = member.model
                process = self.process_of(seat_name)
                client: MemberClient
                if model.remote is not None:
                    client = RemoteClient(model.remote, limits.for_target(f"remote:{member.model}", member.rate_limit))
                    remote.add(seat_name)
                elif process is None and self.elsewhere is not None:
                    # Limited on the host that runs it: its relay goes through that process's limiter.
                    find = self.elsewhere
                    client = HttpMemberClient(endpoint=lambda s=seat_name, m=member.model, find=find: find(s, m),
                                              limiter=NoLimit(), patience=config.timeout)
                else:
                    assert process is not None, f"seat {seat_name} has no process"
                    client = HttpMemberClient(endpoint=endpoint_of(process), target=process.name,
                                              limiter=limits.for_target(process.name, member.rate_limit),
                                              patience=config.timeout)
                    # Passthrough has no deadline of its own: the watchdog's patience, not this council's.
                    clients.setdefault(process.name, replace(client, patience=None))
                seats.append(Seat(name=seat_name, order=order, model=member.model, weight=member.weight,
                                  sampling=member.sampling, client=client, tool_instructions=member.tool_instructions))
            engines[name] = CouncilEngine(name, config, seats, self.ballots)
        self.engines, self.process_clients, self.remote_seats = engines, clients, frozenset(remote)
        self.seat_models = models


def assemble(plan: PolicyPlan, server: LlamaServerInfo, life: LifeConfig, *, ballots: BallotStore | None = None,
             listeners: list[Listener] | None = None, elsewhere: Elsewhere | None = None,
             run_members: bool = True) -> Assembly:
    """The supervisor (not started) with a process per admitted placement, and the engines over them.
    `run_members=False` (a registry router) runs no process and answers through `elsewhere`."""
    recipes = recipes_from_plan(plan, server) if run_members else []
    assembly = Assembly(Supervisor(life, recipes, listeners), ballots if ballots is not None else BallotStore(),
                        elsewhere)
    assembly.build_engines(plan, every_council=not run_members)
    return assembly
