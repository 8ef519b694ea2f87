"""Recent council answers by completion id, for `GET /v1/ballots/{id}` (bounded: oldest dropped first); the memory
store keeps its ballots and Responses conversations in the same way."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

# Ballots hold every seat's whole reply: kept by count alone, 1,000 answers of three 128 KB replies held 260 MB.
MAX_BYTES = 256 << 20


def _size(ballot: dict[str, Any]) -> int:
    """About what a ballot holds: its JSON's length (a few microseconds for an ordinary ballot)."""
    try:
        return len(orjson.dumps(ballot))
    except TypeError:  # what orjson refuses (an integer past 64 bits in a call's arguments): its text's length
        return len(str(ballot))


class BallotStore:
    """The last `capacity` ballots, within `max_bytes` of them: the oldest go first."""

    def __init__(self, capacity: int = 1000, max_bytes: int = MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()

    def put(self, ballot_id: str, ballot: dict[str, Any], size: int | None = None) -> None:
        """`size`: what the ballot holds, where the caller knows it (its JSON's length), else measured."""
        if (old := self._items.pop(ballot_id, None)) is not None:
            self.bytes -= old[1]
        size = _size(ballot) if size is None else size
        self._items[ballot_id] = (ballot, size)
        self.bytes += size
        self._trim(self.capacity)

    def resize(self, capacity: int) -> None:
        """Keep the last `capacity` ballots from now on (a reload's `server.ballots`)."""
        self.capacity = capacity
        self._trim(capacity)

    def _trim(self, capacity: int) -> None:
        while len(self._items) > capacity or (self.bytes > self.max_bytes and len(self._items) > 1):
            _, (_, size) = self._items.popitem(last=False)
            self.bytes -= size

    def get(self, ballot_id: str) -> dict[str, Any] | None:
        found = self._items.get(ballot_id)
        return None if found is None else found[0]

    def __len__(self) -> int:
        return len(self._items)
