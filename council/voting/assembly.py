"""From a plan to a running policy: member processes under a supervisor, and a council engine per council.

`assemble()` is the one place this wiring is written; `council serve` (and its reloads), `council up`, the
tests and the benchmarks all use it. Members this router runs are called through their process; with
`elsewhere` (a router reading the member registry) a member no local process serves is called on the host
that runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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

# Finds the endpoint of a member no local process serves (on another host), or None.
Elsewhere = Callable[[str], Endpoint | None]


def process_endpoint(process: MemberProcess) -> Endpoint | None:
    """Where a local process answers, while it is ready."""
    if process.state is not State.READY:
        return None
    return Endpoint(name=process.name, url=process.spec.url, api_key=process.spec.api_key, http=process.http,
                    request=process.request, slots=process.slots)


@dataclass
class Assembly:
    supervisor: Supervisor
    engines: dict[str, CouncilEngine]
    ballots: BallotStore
    # Per local process, the client a passthrough uses: the one of the first seat it serves (same slots, same
    # rate limit as that seat's council calls).
    process_clients: dict[str, HttpMemberClient] = field(default_factory=dict)

    def process_of(self, member: str) -> str | None:
        return next((name for name, p in self.supervisor.processes.items() if member in p.seats), None)


def build_engines(plan: PolicyPlan, supervisor: Supervisor, ballots: BallotStore,
                  elsewhere: Elsewhere | None = None) -> tuple[dict[str, CouncilEngine], dict[str, HttpMemberClient]]:
    """An engine per council this router answers (every council of the policy for a registry router)."""
    policy = plan.policy
    process_of = {member: name for name, p in supervisor.processes.items() for member in p.seats}
    configs: dict[str, CouncilConfig] = plan.configs if elsewhere is None else dict(policy.councils)
    engines: dict[str, CouncilEngine] = {}
    process_clients: dict[str, HttpMemberClient] = {}
    limits = RateLimits()  # one limiter per process or remote model, whichever seats and calls go to it
    for name, config in configs.items():
        seats = []
        for order, (seat_name, member, _) in enumerate(config.seats(name)):
            model = policy.models[member.model]
            client: MemberClient
            if model.remote is not None:
                client = RemoteClient(model.remote, limits.for_target(f"remote:{member.model}", member.rate_limit))
            elif seat_name not in process_of and elsewhere is not None:
                # Limited on the host that runs it: its relay goes through that process's limiter.
                client = HttpMemberClient(endpoint=lambda m=seat_name: elsewhere(m), limiter=NoLimit())
            else:
                process = supervisor.processes[process_of[seat_name]]
                client = HttpMemberClient(endpoint=lambda p=process: process_endpoint(p), target=process.name,
                                          limiter=limits.for_target(process.name, member.rate_limit))
                process_clients.setdefault(process.name, client)
            seats.append(Seat(name=seat_name, order=order, model=member.model, weight=member.weight,
                              sampling=member.sampling, client=client))
        engines[name] = CouncilEngine(name, config, seats, ballots)
    return engines, process_clients


def assemble(plan: PolicyPlan, server: LlamaServerInfo, life: LifeConfig, *, ballots: BallotStore | None = None,
             listeners: list[Listener] | None = None, elsewhere: Elsewhere | None = None,
             run_members: bool = True) -> Assembly:
    """The supervisor (not started) with a process per admitted placement, and the engines over them.
    `run_members=False` (a registry router) runs no process and answers through `elsewhere`."""
    recipes = recipes_from_plan(plan, server) if run_members else []
    supervisor = Supervisor(life, recipes, listeners)
    ballots = ballots if ballots is not None else BallotStore()
    engines, clients = build_engines(plan, supervisor, ballots, elsewhere)
    return Assembly(supervisor, engines, ballots, clients)
