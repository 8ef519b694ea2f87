"""The router's live events for the dashboard (`GET /admin/events`): member state changes, new ballots,
member log lines, lost leases, the history's new points and finished reloads, published by the router's hooks
and fanned out to every subscriber.

Each subscriber has a bounded queue: a slow one loses its oldest events (and is told how many) rather than
holding up the router, which publishes without ever waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

KINDS = ("member", "ballot", "log", "lease", "history", "reload", "close")


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    at: float


@dataclass(eq=False)  # compared (and hashed) by identity: the bus keeps a set of them
class Subscription:
    """One listener's queue of events; `dropped` counts those lost because it fell behind."""

    capacity: int
    queue: asyncio.Queue[Event] = field(init=False)
    dropped: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.capacity)

    def offer(self, event: Event) -> None:
        while self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(event)

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None when none came within `timeout` seconds."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self.queue.get_nowait()
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class EventBus:
    """publish(kind, data) from the event loop (or, safely, from another thread); subscribe() for a queue.
    The last `keep` ballots are kept, so a page that connects later still sees the recent votes."""

    def __init__(self, capacity: int = 512, keep: int = 50) -> None:
        self.capacity = capacity
        self.recent_ballots: deque[dict[str, Any]] = deque(maxlen=keep)
        self._subscribers: set[Subscription] = set()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, kind, data)  # asyncio queues are not thread-safe
            return
        self._deliver(kind, data)

    def _deliver(self, kind: str, data: dict[str, Any]) -> None:
        event = Event(next(self._ids), kind, data, time.time())
        if kind == "ballot":
            self.recent_ballots.append(data)
        for subscriber in list(self._subscribers):
            subscriber.offer(event)

    def close(self) -> None:
        """End every stream (the server is shutting down: open streams would hold up its graceful exit). Safe
        to call from a signal handler."""
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, "close", {})

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        self._loop = asyncio.get_running_loop()
        subscription = Subscription(self.capacity)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
