"""A process's `parallel` slots (`Slots`): in order, `n` at once, and a cancelled waiter loses nothing.
In-process: the real servers' tests (test_supervisor, tests/server) use the same slots under real load."""

from __future__ import annotations

import asyncio

import pytest

from council.members.process import Slots

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    for _ in range(5):  # a few turns of the loop: every woken task runs up to its next wait
        await asyncio.sleep(0)


async def test_waiters_enter_first_come_first_served_and_only_as_many_as_fit() -> None:
    slots = Slots(2)
    entered: list[str] = []
    gates = {name: asyncio.Event() for name in "abcde"}

    async def ask(name: str, count: int = 1) -> None:
        async with slots.hold(count):
            entered.append(name)
            await gates[name].wait()

    tasks = [asyncio.create_task(ask("a")), asyncio.create_task(ask("b")), asyncio.create_task(ask("c", 2)),
             asyncio.create_task(ask("d")), asyncio.create_task(ask("e"))]
    await _settle()
    assert entered == ["a", "b"] and slots.free == 0 and slots.waiting == 3
    gates["a"].set()
    await _settle()
    assert entered == ["a", "b"] and slots.free == 1  # c needs two: d and e wait behind it, in order
    gates["b"].set()
    await _settle()
    assert entered == ["a", "b", "c"] and slots.free == 0 and slots.waiting == 2
    gates["c"].set()
    await _settle()
    assert entered == ["a", "b", "c", "d", "e"] and slots.waiting == 0
    gates["d"].set()
    gates["e"].set()
    await asyncio.gather(*tasks)
    assert slots.free == 2


async def test_a_cancelled_waiter_leaves_its_place_and_its_slots_to_the_next() -> None:
    slots = Slots(1)
    entered: list[str] = []
    release = asyncio.Event()

    async def ask(name: str, count: int = 1) -> None:
        async with slots.hold(count):
            entered.append(name)
            await release.wait()

    first = asyncio.create_task(ask("first"))
    await _settle()
    queued = asyncio.create_task(ask("queued"))
    last = asyncio.create_task(ask("last"))
    await _settle()
    queued.cancel()  # cancelled while it waits
    await _settle()
    assert slots.waiting == 1
    release.set()
    await asyncio.gather(first, last, queued, return_exceptions=True)
    assert entered == ["first", "last"] and queued.cancelled() and slots.free == 1


async def test_slots_handed_to_a_waiter_cancelled_before_it_ran_go_on_to_the_next() -> None:
    slots = Slots(1)
    entered: list[str] = []

    async def ask(name: str) -> None:
        async with slots.hold():
            entered.append(name)
            await asyncio.sleep(0)

    holder = slots.hold()
    await holder.__aenter__()
    handed = asyncio.create_task(ask("handed"))
    after = asyncio.create_task(ask("after"))
    await _settle()
    await holder.__aexit__(None, None, None)  # hands the slot to `handed`...
    handed.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(handed, after, return_exceptions=True)
    assert entered == ["after"] and slots.free == 1 and slots.waiting == 0


async def test_a_group_wider_than_the_process_takes_every_slot_instead_of_waiting_forever() -> None:
    slots = Slots(2)
    async with slots.hold(5):
        assert slots.free == 0
    assert slots.free == 2
