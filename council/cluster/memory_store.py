"""The state of one router, in this process: `state: memory`, with the same semantics as Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from council.cluster.store import (
    Lease,
    Listing,
    StaleLease,
    check_bucket,
    check_keep,
    check_lease_args,
    check_ttl,
    json_copy,
)
from council.voting.ballots import MAX_BYTES, BallotStore


@dataclass
class _Held:
    holder: str
    size: int
    expires: float


class MemoryState:
    """The state of one router, in this process (asyncio.Lock, time.monotonic())."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._leases: dict[str, dict[int, _Held]] = {}
        self._fences: dict[str, int] = {}
        self._hosts: dict[str, tuple[float, list[dict[str, Any]], str]] = {}  # host -> (expires, members, owner)
        self._buckets: dict[str, tuple[float, float]] = {}
        # Each within MAX_BYTES (a Redis keeps them in its own memory): a stored Responses conversation holds its
        # whole history again, so 300 turns of 1 MB held 300 MB, by count alone.
        self._ballots = BallotStore(max_bytes=MAX_BYTES)
        self._responses = BallotStore(max_bytes=MAX_BYTES)

    def _live(self, gpu: str, now: float) -> dict[int, _Held]:
        held = self._leases.setdefault(gpu, {})
        for token in [t for t, h in held.items() if h.expires <= now]:
            del held[token]
        return held

    async def acquire(self, gpu: str, capacity_bytes: int, holder: str, size: int, ttl: float,
                      keep_free_bytes: int = 0, replacing: Collection[int] = ()) -> Lease | None:
        check_lease_args(capacity_bytes, size, ttl, keep_free_bytes)
        async with self._lock:
            now = time.monotonic()
            held = self._live(gpu, now)
            used = sum(h.size for t, h in held.items() if not (t in replacing and h.holder == holder))
            if used + size + keep_free_bytes > capacity_bytes:
                return None
            token = self._fences[gpu] = self._fences.get(gpu, 0) + 1
            held[token] = _Held(holder, size, now + ttl)
            return Lease(gpu=gpu, holder=holder, size=size, token=token, expires_at=now + ttl)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        check_ttl(ttl)
        async with self._lock:
            now = time.monotonic()
            held = self._live(lease.gpu, now).get(lease.token)
            if held is None or held.holder != lease.holder:
                raise StaleLease(f"lease {lease.token} on {lease.gpu} is no longer held by {lease.holder}")
            held.expires = now + ttl
            return replace(lease, expires_at=now + ttl)

    async def release(self, lease: Lease) -> None:
        async with self._lock:
            held = self._leases.get(lease.gpu, {})
            if lease.token in held and held[lease.token].holder == lease.holder:
                del held[lease.token]

    async def leased(self, gpu: str) -> int:
        async with self._lock:
            return sum(h.size for h in self._live(gpu, time.monotonic()).values())

    async def check_fence(self, gpu: str, token: int) -> bool:
        async with self._lock:
            return token in self._live(gpu, time.monotonic())

    async def holders(self, gpu: str) -> dict[str, int]:
        async with self._lock:
            found: dict[str, int] = {}
            for held in self._live(gpu, time.monotonic()).values():
                found[held.holder] = found.get(held.holder, 0) + held.size
            return found

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float,
                              owner: str = "") -> str | None:
        check_ttl(ttl)
        copied = json_copy(members)
        async with self._lock:
            now = time.monotonic()
            held = self._hosts.get(host)
            if held is not None and held[0] > now and held[2] != owner:
                return held[2]
            self._hosts[host] = (now + ttl, copied, owner)
        return None

    async def withdraw(self, host: str, owner: str = "") -> None:
        async with self._lock:
            held = self._hosts.get(host)
            if held is not None and held[2] == owner:
                del self._hosts[host]

    async def members(self) -> Listing:
        async with self._lock:
            now = time.monotonic()
            for host in [h for h, (expires, _, _) in self._hosts.items() if expires <= now]:
                del self._hosts[host]
            # One epoch for the store's life: this process's memory is never emptied under its readers.
            return Listing({host: json_copy(members) for host, (_, members, _) in self._hosts.items()}, "memory")

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        check_bucket(rate, burst)
        async with self._lock:
            now = time.monotonic()
            tokens, stamp = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
            wait = None
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            self._buckets[key] = (tokens, now)
            return wait

    async def put_ballot(self, ballot_id: str, ballot: dict[str, Any], keep: int) -> None:
        await self._put(self._ballots, ballot_id, ballot, keep)

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None:
        return await self._get(self._ballots, ballot_id)

    async def put_response(self, response_id: str, conversation: dict[str, Any], keep: int) -> None:
        await self._put(self._responses, response_id, conversation, keep)

    async def get_response(self, response_id: str) -> dict[str, Any] | None:
        return await self._get(self._responses, response_id)

    async def _put(self, into: BallotStore, key: str, value: dict[str, Any], keep: int) -> None:
        """Kept as Redis would keep it (a JSON copy), the last `keep`."""
        check_keep(keep)
        text = json.dumps(value)
        async with self._lock:
            into.capacity = keep
            into.put(key, json.loads(text), size=len(text))

    async def _get(self, source: BallotStore, key: str) -> dict[str, Any] | None:
        async with self._lock:
            found = source.get(key)
            return None if found is None else json_copy(found)

    async def eviction_policy(self) -> str | None:
        return None  # this process's memory drops nothing

    async def ping(self) -> None:
        return None

    async def clock_ms(self) -> int:
        return int(time.monotonic() * 1000)  # the clock its own expiries are judged by

    async def close(self) -> None:
        return None
