"""State shared by routers: GPU memory leases with fencing tokens, a member registry with heartbeats, a token
bucket per key and recent ballots.

`state: memory` (one router) keeps it in this process; `state: redis://host:port/db` keeps it in Redis so
several routers on several hosts see one truth. Both implement `StateStore` with the same semantics.

In Redis every read-modify-write is one Lua script (atomic on the server) and every expiry is judged by
the server's TIME, never by a router's clock, so routers with skewed clocks still agree on what expired.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from council.errors import CouncilError

DEFAULT_PREFIX = "council:"


@dataclass(frozen=True)
class Listing:
    """The registry as read at one moment: host -> its published members (hosts whose heartbeat is alive), and
    the registry's epoch, a token the first host to publish into an empty store writes there. A changed or
    missing epoch tells a router the store lost everything (Redis restarted without persistence, flushed or
    replaced), which hosts that left cannot look like."""

    hosts: dict[str, list[dict[str, Any]]]
    epoch: str | None


class StateError(CouncilError, RuntimeError):
    """The shared state cannot answer (e.g. Redis unreachable); the message is one line."""


class StaleLease(StateError):
    """The lease's fencing token is no longer live: it expired (and maybe was reclaimed) or was released."""


class LegacyLease(StateError):
    """A live lease on the GPU was written by an older council, which counted slots of its own size rather than
    bytes: nobody can tell how much memory it holds, so nothing more is leased there until it is gone. The store
    answered (this is no outage); the message is one line."""


@dataclass(frozen=True)
class Lease:
    """`size` bytes of `gpu`'s memory, held by `holder` under fencing `token` (unique per GPU, increasing).

    Memory, not slots: routers whose policies cut a GPU into slots of different sizes share it, and only memory
    compares between them.

    `expires_at` is on this process's `time.monotonic()` clock and never later than the store's own expiry
    (for Redis it is measured from before the request was sent), so renewing before it is always in time.
    """

    gpu: str
    holder: str
    size: int
    token: int
    expires_at: float


@runtime_checkable
class StateStore(Protocol):
    async def acquire(self, gpu: str, capacity_bytes: int, holder: str, size: int, ttl: float,
                      keep_free_bytes: int = 0, replacing: Collection[int] = ()) -> Lease | None:
        """Lease `size` bytes of the GPU's `capacity_bytes` so that every live lease together leaves
        `keep_free_bytes` unleased; None when not enough is free (expired leases are). `replacing`: tokens of
        `holder`'s own leases that are not counted, since the caller releases them once it holds their
        replacements (a reload), so their memory is never free in between. Raises LegacyLease while an older
        council's lease is live on the GPU."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend the lease to `ttl` from now; raises StaleLease if it expired, was reclaimed or released."""
        ...

    async def release(self, lease: Lease) -> None:
        """Free the lease's memory; idempotent, and a stale token releases nothing."""
        ...

    async def leased(self, gpu: str) -> int:
        """Bytes currently leased on the GPU (expired leases and an older council's, in slots, not counted)."""
        ...

    async def check_fence(self, gpu: str, token: int) -> bool:
        """Whether `token` is still a live lease on the GPU."""
        ...

    async def holders(self, gpu: str) -> dict[str, int]:
        """Holder -> bytes it holds on the GPU now (expired leases and an older council's, in slots, not counted)."""
        ...

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float,
                              owner: str = "") -> str | None:
        """Replace the host's entry in the registry, as `owner` (the instance publishing it); it disappears `ttl`
        seconds later unless published again. While another owner's entry for `host` is live, nothing is written
        and that owner is returned (two hosts with one advertise URL replaced each other's entries)."""
        ...

    async def withdraw(self, host: str, owner: str = "") -> None:
        """Remove the host's entry now, if `owner`'s (a clean shutdown need not wait for its heartbeat to lapse;
        another instance's entry at the same URL is not this one's to remove)."""
        ...

    async def members(self) -> Listing:
        """Host -> its published members, for hosts whose heartbeat is alive, and the registry's epoch."""
        ...

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        """Spend one token of the key's bucket (refill `rate`/s up to `burst`); None if allowed, else seconds
        until one is available."""
        ...

    async def put_ballot(self, ballot_id: str, ballot: dict[str, Any], keep: int) -> None:
        """Store a ballot; only the `keep` most recently put remain."""
        ...

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None: ...

    async def put_response(self, response_id: str, conversation: dict[str, Any], keep: int) -> None:
        """Store a Responses conversation (for `previous_response_id`); only the `keep` most recently put remain."""
        ...

    async def get_response(self, response_id: str) -> dict[str, Any] | None: ...

    async def eviction_policy(self) -> str | None:
        """How the store drops keys under memory pressure (Redis' `maxmemory-policy`), None where it cannot say
        or never does."""
        ...

    async def ping(self) -> None:
        """Raise StateError unless the store answers."""
        ...

    async def clock_ms(self) -> int:
        """The store's clock, in integer milliseconds: the one every router and host reads (Redis' TIME), so a
        time a host signs into its registry entries is judged the same by every router."""
        ...

    async def close(self) -> None: ...


_ENV_REF = re.compile(r"\$\{(\w+)\}")


def expand_env(url: str) -> str:
    """The state URL with each `${NAME}` replaced by that environment variable, so a policy file (a ConfigMap,
    say) can name Redis' password without holding it: `redis://:${COUNCIL_REDIS_PASSWORD}@redis:6379/0`.
    Only the braced form: a literal `$` in a password stays as written. The value goes in as it is (a hex
    password needs no URL quoting). An unset or empty variable is a ValueError naming it: an empty password would
    quietly try Redis without one."""
    missing = [name for name in _ENV_REF.findall(url) if not os.environ.get(name)]
    if missing:
        raise ValueError(f"state: ${{{missing[0]}}} is not set (the state URL reads it from the environment)")
    return _ENV_REF.sub(lambda m: os.environ[m.group(1)], url)


def open_state(url: str, *, prefix: str = DEFAULT_PREFIX) -> StateStore:
    """`memory` (or empty) for this process only; `redis://`, `rediss://` or `unix://` for Redis, `${NAME}` in
    the URL read from the environment (`expand_env`)."""
    from council.cluster.memory_store import MemoryState
    from council.cluster.redis_store import RedisState

    if url in ("", "memory"):
        return MemoryState()
    if urlsplit(url).scheme in ("redis", "rediss", "unix"):
        return RedisState(expand_env(url), prefix=prefix)
    raise ValueError(f"state must be `memory` or a redis:// URL, not {url!r}")


def check_lease_args(capacity_bytes: int, size: int, ttl: float, keep_free_bytes: int) -> None:
    if capacity_bytes < 0 or size < 1 or keep_free_bytes < 0:
        raise ValueError(f"need size >= 1, capacity_bytes >= 0 and keep_free_bytes >= 0, got size={size} "
                         f"capacity_bytes={capacity_bytes} keep_free_bytes={keep_free_bytes}")
    check_ttl(ttl)


def check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl}")


def check_bucket(rate: float, burst: float) -> None:
    # A bucket that can never hold one whole token would answer "wait" forever.
    if not rate > 0 or burst < 1:
        raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")


def check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")


def json_copy(value: Any) -> Any:
    # Memory keeps what Redis would return: a JSON round trip, so both reject the same values and a caller
    # mutating its dict afterwards changes nothing stored.
    return json.loads(json.dumps(value))


async def pause(seconds: float) -> None:
    """`asyncio.sleep` for loops that ride out store outages: it first honours a cancellation that a library
    swallowed. redis-py can turn a cancel that races its own socket timeout into a timeout error, which such a loop
    ignores as an outage; the task is then "cancelling" yet loops on, and the router's stop waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)
