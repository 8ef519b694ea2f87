"""Recent council answers by completion id, for `GET /v1/ballots/{id}` (bounded: oldest dropped first)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class BallotStore:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, ballot_id: str, ballot: dict[str, Any]) -> None:
        self._items[ballot_id] = ballot
        self._items.move_to_end(ballot_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def resize(self, capacity: int) -> None:
        """Keep the last `capacity` ballots from now on (a reload's `server.ballots`)."""
        self.capacity = capacity
        while len(self._items) > capacity:
            self._items.popitem(last=False)

    def get(self, ballot_id: str) -> dict[str, Any] | None:
        return self._items.get(ballot_id)

    def __len__(self) -> int:
        return len(self._items)
