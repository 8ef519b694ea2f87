"""The request limits in-process (the same through a real `council serve`: tests/server/test_api.py and, shared
through Redis, tests/cluster/test_multi_router.py)."""

from __future__ import annotations

import pytest

from council.cluster.memory_store import MemoryState
from council.server.auth import Principal
from council.server.limits import Limited, Limits
from council.server.metrics import RouterMetrics

pytestmark = pytest.mark.anyio


async def test_a_request_refused_for_its_keys_places_or_the_queue_spends_none_of_its_rate() -> None:
    """A client at its concurrency limit (or facing a full queue) is told so, and keeps its rate for later: it is
    not soon told `rate_limited` for requests it was never allowed to make."""
    limits = Limits(RouterMetrics(), MemoryState(), shared=False, max_queue=2)
    who = Principal("agent", frozenset({"chat"}), rate_limit=5, max_concurrency=1, tokens=5)
    first = await limits.admit(who, "trio")
    left = who.tokens
    with pytest.raises(Limited) as refused:
        await limits.admit(who, "trio")
    assert refused.value.code == "too_many_requests" and who.tokens >= left  # only the refill may add to it
    other = Principal("other", frozenset({"chat"}), rate_limit=5, tokens=5)
    second = await limits.admit(other, "trio")
    left = other.tokens
    with pytest.raises(Limited) as full:
        await limits.admit(other, "trio")
    assert full.value.code == "queue_full" and other.tokens >= left
    first.release()
    second.release()
    assert who.in_flight == other.in_flight == 0 and limits.queues["trio"] == 0


async def test_a_stalled_redis_is_not_waited_on_by_every_rate_limited_request() -> None:
    """Each rate-limited request asked Redis, waited out its timeout (a second or two), then fell back to the
    router's own bucket, for as long as Redis stalled. After a failed ask the router's buckets answer for a few
    seconds before Redis is asked again. (A store that fails at once stands in for one that times out.)"""
    from council.cluster.store import StateError

    class Stalled(MemoryState):
        asked = 0

        async def take(self, key: str, rate: float, burst: float) -> float | None:
            self.asked += 1
            raise StateError("Redis at redis://x is unreachable: Timeout reading from socket")

    state = Stalled()
    limits = Limits(RouterMetrics(), state, shared=True, max_queue=100)
    who = Principal("agent", frozenset({"chat"}), rate_limit=50, tokens=50)
    for _ in range(10):
        async with await limits.admit(who, "c"):
            pass
    assert state.asked == 1  # was 10: each request waited on the stalled store
