"""A running policy: its supervisor's members wired to council engines (local HTTP or remote litellm)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from council.ballots import BallotStore
from council.fanout import CouncilEngine, CouncilMember
from council.fleet import Fleet
from council.member import State
from council.member_client import LocalClient, LocalEndpoint, RemoteClient, rate_limiter
from council.plan import PolicyPlan, fallback_council
from council.policy import CouncilConfig
from council.supervisor import Supervisor


@dataclass
class Runtime:
    engines: dict[str, CouncilEngine]
    ballots: BallotStore
    http: httpx.AsyncClient


def _endpoint(supervisor: Supervisor, process: str) -> LocalEndpoint | None:
    member = supervisor.members.get(process)
    if member is None or member.state is not State.READY:
        return None
    return LocalEndpoint(url=member.spec.url, api_key=member.spec.api_key,
                         request=lambda: supervisor.request(process))


def council_configs(plan: PolicyPlan) -> dict[str, CouncilConfig]:
    """The configuration each admitted council runs with: as declared, or its fallback."""
    configs = {}
    for result in plan.slots.councils:
        declared = plan.policy.councils[result.name]
        if result.fits:
            configs[result.name] = declared
        elif result.fallback:
            alt = fallback_council(result.name, declared)
            if alt is not None:
                configs[result.name] = alt
    return configs


def build_runtime(plan: PolicyPlan, fleet: Fleet, supervisor: Supervisor, *,
                  http: httpx.AsyncClient | None = None, ballots: BallotStore | None = None) -> Runtime:
    policy = plan.policy
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                     limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))
    ballots = ballots if ballots is not None else BallotStore()  # an empty store is falsy
    process_of = {member: process for process, members in fleet.served.items() for member in members}
    slots: dict[str, asyncio.Semaphore] = {}
    engines: dict[str, CouncilEngine] = {}
    for name, config in council_configs(plan).items():
        members = []
        for order, (member_name, member) in enumerate(zip(config.member_names(name), config.members, strict=True)):
            model = policy.models[member.model]
            limiter = rate_limiter(member.rate_limit)
            if model.remote is not None:
                client: LocalClient | RemoteClient = RemoteClient(model.remote, limiter)
            else:
                process = process_of[member_name]
                if process not in slots:
                    slots[process] = asyncio.Semaphore(model.parallel * len(fleet.served[process]))
                client = LocalClient(endpoint=lambda p=process: _endpoint(supervisor, p), http=http,
                                     limiter=limiter, slots=slots[process])
            members.append(CouncilMember(name=member_name, order=order, model=member.model, weight=member.weight,
                                         sampling=member.sampling, client=client))
        engines[name] = CouncilEngine(name, config, members, ballots)
    return Runtime(engines=engines, ballots=ballots, http=http)
