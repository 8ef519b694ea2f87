"""The registry's loops end when cancelled, even when the store call they were in swallowed the cancellation
(redis-py can turn a cancel that races its socket timeout into a timeout error: a stub provokes exactly that)."""

from __future__ import annotations

import asyncio

import pytest

from council.cluster.memory_store import MemoryState
from council.cluster.registry import Registry
from council.cluster.store import StateError

pytestmark = pytest.mark.anyio


class SwallowingState(MemoryState):
    """The first `members()` hangs until cancelled, then reports an outage instead of the cancellation; later
    calls answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def members(self) -> dict[str, list[dict[str, object]]]:
        if not self.entered.is_set():
            self.entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise StateError("Redis at redis://x is unreachable: Timeout reading from socket") from None
        return {}


async def test_following_the_registry_stops_when_cancelled_although_the_store_swallowed_it() -> None:
    """Before, the loop took the swallowed cancel for an outage and went on: `council serve --role router` then
    hung on SIGTERM (its stop waited for this task forever)."""
    state = SwallowingState()
    task = asyncio.create_task(Registry(state, heartbeat=0.05, cluster_key=None).follow_forever())
    await asyncio.wait_for(state.entered.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)  # (wait_for would wait on, cancelling it again and again)
    assert task in done and task.cancelled()
