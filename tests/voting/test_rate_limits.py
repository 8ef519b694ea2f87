"""Member rate limits: exact fractional rates (asyncio-throttle's whole requests per period), one limiter per
model target shared by every seat and passthrough on it, the strictest rate winning, `n: K` counting K."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.voting.assembly import assemble
from council.voting.client import HttpMemberClient, RateLimits, RemoteClient, Throttle, exact_rate

pytestmark = pytest.mark.anyio


async def grant_times(limiter: Throttle, widths: list[int]) -> list[float]:
    """When each of these requests (taking `width` requests' worth each) got its turn, from the first start."""
    start = time.monotonic()
    times: list[float] = []

    async def one(width: int) -> None:
        async with limiter.slot(width):
            times.append(time.monotonic() - start)

    for width in widths:  # in order: each waits behind the ones before
        await one(width)
    return times


def test_a_rate_is_whole_requests_per_period_exactly() -> None:
    assert exact_rate(2.5) == (5, 2.0)  # before: int(2.5) = 2 per second
    assert exact_rate(0.3) == (3, 10.0)
    assert exact_rate(0.5) == (1, 2.0)
    assert exact_rate(40) == (40, 1.0)
    assert exact_rate(1 / 3) == (1, 3.0)
    assert exact_rate(1e-4) == (1, 10000.0)  # below the fraction's resolution: one per 1/rate seconds


async def test_two_and_a_half_per_second_grants_five_in_any_two_seconds() -> None:
    times = await grant_times(Throttle(2.5), [1] * 10)
    # The first five go at once (rounded down to 2/s, the third waited a second)...
    assert times[4] < 1.0, times
    # ...never more than five in any two seconds (the clock's slack: the grant is timed after the throttle's log)...
    assert all(later - earlier >= 2.0 - 0.05 for earlier, later in zip(times, times[5:], strict=False)), times
    # ...and the next five as soon as the window moves (2/s would need four seconds for ten).
    assert times[9] < 3.5, times


async def test_a_grouped_request_of_k_counts_k() -> None:
    times = await grant_times(Throttle(2.5), [4, 2])
    assert times[0] < 1.0 and times[1] >= 2.0 - 0.05, times  # 4 + 2 > 5: the second waits for the window


def test_unlimited_until_a_rate_is_given_and_the_strictest_wins() -> None:
    limits = RateLimits()
    free = limits.for_target("a", None)
    assert free.per_second is None
    assert limits.for_target("a", 3) is free and free.per_second == 3  # an entry with a rate limits the target
    assert limits.for_target("a", 2.5).per_second == 2.5
    assert limits.for_target("a", 10).per_second == 2.5 and limits.for_target("a", None).per_second == 2.5
    assert limits.for_target("b", 10) is not free


def test_seats_and_passthrough_on_one_target_share_one_limiter(tmp_path: Path, syn: Path) -> None:
    """Before, each seat had its own throttle: three seats on one process got three times its rate."""
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(f"""
        gpus: [{{name: cpu, memory: 4GiB}}]
        slots: {{size: 256MiB, reserve: 0}}
        models:
          syn: {{path: {syn}, ctx_size: 512, share: true}}
          solo: {{path: {syn}, ctx_size: 512}}
          api: {{remote: {{model: openai/gpt-4o-mini}}}}
        councils:
          c:
            members:
              - {{model: syn, rate_limit: 3}}
              - {{model: syn, rate_limit: 2.5, samples: 2}}
              - {{model: syn}}
              - {{model: solo, rate_limit: 7}}
              - {{model: api, rate_limit: 0.5}}
              - {{model: api, rate_limit: 0.2}}
        """))
    plan = plan_policy(load_policy(path).policy)
    info = LlamaServerInfo(path=Path("llama-server"), build=None, version="", spec_types=())  # nothing is started
    assembly = assemble(plan, info, LifeConfig(run_dir=tmp_path / "run"))
    seats = assembly.engines["c"].seats
    clients = [seat.client for seat in seats]
    assert all(isinstance(c, HttpMemberClient) for c in clients[:5])
    assert all(isinstance(c, RemoteClient) for c in clients[5:])
    shared = {id(c.limiter) for c in clients[:4]}  # type: ignore[union-attr]
    assert len(shared) == 1, "the four syn seats share one process: one limiter"
    syn_limiter, solo_limiter = clients[0].limiter, clients[4].limiter  # type: ignore[union-attr]
    assert isinstance(syn_limiter, Throttle) and syn_limiter.per_second == 2.5  # the strictest entry
    assert isinstance(solo_limiter, Throttle) and solo_limiter is not syn_limiter and solo_limiter.per_second == 7
    remote = clients[5].limiter  # type: ignore[union-attr]
    assert remote is clients[6].limiter and isinstance(remote, Throttle) and remote.per_second == 0.2
    # Passthrough to the process goes through the same limiter.
    syn_process = next(name for name, p in assembly.supervisor.processes.items() if seats[0].name in p.seats)
    assert assembly.process_clients[syn_process].limiter is syn_limiter
