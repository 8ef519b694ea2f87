"""State shared by routers: GPU slot leases with fencing tokens, a member registry with heartbeats, a token
bucket per key and recent ballots.

`state: memory` (one router) keeps it in this process; `state: redis://host:port/db` keeps it in Redis so
several routers on several hosts see one truth. Both implement `StateStore` with the same semantics.

In Redis every read-modify-write is one Lua script (atomic on the server) and every expiry is judged by
the server's TIME, never by a router's clock, so routers with skewed clocks still agree on what expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PREFIX = "council:"
# Short enough that a router answers "Redis is down" in about a second instead of hanging a request.
REDIS_TIMEOUT_S = 1.0


class StateError(RuntimeError):
    """The shared state cannot answer (e.g. Redis unreachable); the message is one line."""


class StaleLease(StateError):
    """The lease's fencing token is no longer live: it expired (and maybe was reclaimed) or was released."""


@dataclass(frozen=True)
class Lease:
    """`slots` slots on `gpu`, held by `holder` under fencing `token` (unique per GPU, increasing).

    `expires_at` is on this process's `time.monotonic()` clock and never later than the store's own expiry
    (for Redis it is measured from before the request was sent), so renewing before it is always in time.
    """

    gpu: str
    holder: str
    slots: int
    token: int
    expires_at: float


@runtime_checkable
class StateStore(Protocol):
    async def acquire(self, gpu: str, total_slots: int, holder: str, slots: int, ttl: float) -> Lease | None:
        """Lease `slots` of the GPU's `total_slots`; None when not enough are free (expired leases are)."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend the lease to `ttl` from now; raises StaleLease if it expired, was reclaimed or released."""
        ...

    async def release(self, lease: Lease) -> None:
        """Free the lease's slots; idempotent, and a stale token releases nothing."""
        ...

    async def leased(self, gpu: str) -> int:
        """Slots currently held on the GPU (expired leases not counted)."""
        ...

    async def check_fence(self, gpu: str, token: int) -> bool:
        """Whether `token` is still a live lease on the GPU."""
        ...

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float) -> None:
        """Replace the host's entry in the registry; it disappears `ttl` seconds later unless published again."""
        ...

    async def withdraw(self, host: str) -> None:
        """Remove the host's entry now (a clean shutdown need not wait for its heartbeat to lapse)."""
        ...

    async def members(self) -> dict[str, list[dict[str, Any]]]:
        """Host -> its published members, for hosts whose heartbeat is alive."""
        ...

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        """Spend one token of the key's bucket (refill `rate`/s up to `burst`); None if allowed, else seconds
        until one is available."""
        ...

    async def put_ballot(self, ballot_id: str, ballot: dict[str, Any], keep: int) -> None:
        """Store a ballot; only the `keep` most recently put remain."""
        ...

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None: ...

    async def ping(self) -> None:
        """Raise StateError unless the store answers."""
        ...

    async def close(self) -> None: ...


def open_state(url: str, *, prefix: str = DEFAULT_PREFIX) -> StateStore:
    """`memory` (or empty) for this process only; `redis://`, `rediss://` or `unix://` for Redis."""
    if url in ("", "memory"):
        return MemoryState()
    if urlsplit(url).scheme in ("redis", "rediss", "unix"):
        return RedisState(url, prefix=prefix)
    raise ValueError(f"state must be `memory` or a redis:// URL, not {url!r}")


def _check_lease_args(total_slots: int, slots: int, ttl: float) -> None:
    if total_slots < 0 or slots < 1:
        raise ValueError(f"need slots >= 1 and total_slots >= 0, got slots={slots} total_slots={total_slots}")
    _check_ttl(ttl)


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"ttl must be positive, got {ttl}")


def _check_bucket(rate: float, burst: float) -> None:
    # A bucket that can never hold one whole token would answer "wait" forever.
    if not rate > 0 or burst < 1:
        raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")


def _check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")


def _json_copy(value: Any) -> Any:
    # Memory keeps what Redis would return: a JSON round trip, so both reject the same values and a caller
    # mutating its dict afterwards changes nothing stored.
    return json.loads(json.dumps(value))


@dataclass
class _Held:
    holder: str
    slots: int
    expires: float


class MemoryState:
    """The state of one router, in this process (asyncio.Lock, time.monotonic())."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._leases: dict[str, dict[int, _Held]] = {}
        self._fences: dict[str, int] = {}
        self._hosts: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._ballots: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _live(self, gpu: str, now: float) -> dict[int, _Held]:
        held = self._leases.setdefault(gpu, {})
        for token in [t for t, h in held.items() if h.expires <= now]:
            del held[token]
        return held

    async def acquire(self, gpu: str, total_slots: int, holder: str, slots: int, ttl: float) -> Lease | None:
        _check_lease_args(total_slots, slots, ttl)
        async with self._lock:
            now = time.monotonic()
            held = self._live(gpu, now)
            if sum(h.slots for h in held.values()) + slots > total_slots:
                return None
            token = self._fences[gpu] = self._fences.get(gpu, 0) + 1
            held[token] = _Held(holder, slots, now + ttl)
            return Lease(gpu=gpu, holder=holder, slots=slots, token=token, expires_at=now + ttl)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        _check_ttl(ttl)
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
            return sum(h.slots for h in self._live(gpu, time.monotonic()).values())

    async def check_fence(self, gpu: str, token: int) -> bool:
        async with self._lock:
            return token in self._live(gpu, time.monotonic())

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float) -> None:
        _check_ttl(ttl)
        copied = _json_copy(members)
        async with self._lock:
            self._hosts[host] = (time.monotonic() + ttl, copied)

    async def withdraw(self, host: str) -> None:
        async with self._lock:
            self._hosts.pop(host, None)

    async def members(self) -> dict[str, list[dict[str, Any]]]:
        async with self._lock:
            now = time.monotonic()
            for host in [h for h, (expires, _) in self._hosts.items() if expires <= now]:
                del self._hosts[host]
            return {host: _json_copy(members) for host, (_, members) in self._hosts.items()}

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        _check_bucket(rate, burst)
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
        _check_keep(keep)
        copied = _json_copy(ballot)
        async with self._lock:
            self._ballots[ballot_id] = copied
            self._ballots.move_to_end(ballot_id)
            while len(self._ballots) > keep:
                self._ballots.popitem(last=False)

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None:
        async with self._lock:
            found = self._ballots.get(ballot_id)
            return None if found is None else _json_copy(found)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# Lua for RedisState. Times are integer milliseconds of the server's clock; numbers that go back into
# Redis are formatted with %d because Lua's default number-to-string conversion can turn big integers
# into exponent notation, which Redis would not read back as an integer.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# A lease is a field of the GPU's hash: token -> "EXPIRES_MS SLOTS HOLDER".
# KEYS: leases hash, fence counter. ARGV: total, slots, ttl_ms, holder. Returns the token, or nil when full.
_ACQUIRE = _NOW + """
local now = now_ms()
local total, want, ttl, holder = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expires, slots = string.match(entries[i + 1], '^(%d+) (%d+) ')
  if tonumber(expires) <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    used = used + tonumber(slots)
  end
end
if used + want > total then
  return false
end
-- Seed a missing counter from the clock so tokens keep increasing even if Redis lost the counter in a
-- restart without persistence: a token from before the restart can never be handed out again.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], string.format('%d', now * 1000))
end
local token = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], token, string.format('%d %d %s', now + ttl, want, holder))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return token
"""

# KEYS: leases hash. ARGV: token, holder, ttl_ms. Returns 1 if renewed, 0 if stale.
_RENEW = _NOW + """
local now = now_ms()
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
local expires, slots, holder = string.match(entry, '^(%d+) (%d+) (.*)$')
if tonumber(expires) <= now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
if holder ~= ARGV[2] then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s %s', now + ttl, slots, holder))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""

# KEYS: leases hash. ARGV: token, holder.
_RELEASE = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and string.match(entry, '^%d+ %d+ (.*)$') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: leases hash. Read only: expired entries are skipped here and deleted by the next acquire.
_LEASED = _NOW + """
local now = now_ms()
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  local expires, slots = string.match(entries[i], '^(%d+) (%d+) ')
  if tonumber(expires) > now then
    used = used + tonumber(slots)
  end
end
return used
"""

# KEYS: leases hash. ARGV: token.
_FENCE = _NOW + """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and tonumber(string.match(entry, '^(%d+) ')) > now_ms() then
  return 1
end
return 0
"""

# Registry: a sorted set host -> heartbeat deadline (server ms) and a hash host -> members JSON.
_PRUNE_HOSTS = _NOW + """
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, host in ipairs(gone) do
  redis.call('HDEL', KEYS[2], host)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: hosts zset, members hash. ARGV: host, members JSON, ttl_ms.
_PUBLISH = _PRUNE_HOSTS + """
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: hosts zset, members hash. Returns host, JSON, host, JSON...
_MEMBERS = _PRUNE_HOSTS + """
local out = {}
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local members = redis.call('HGET', KEYS[2], host)
  if members then
    table.insert(out, host)
    table.insert(out, members)
  end
end
return out
"""

# KEYS: hosts zset, members hash. ARGV: host.
_WITHDRAW = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# Token bucket in a hash {tokens, ts}. KEYS: bucket. ARGV: rate per s, burst. Returns nil if allowed, else
# the wait in seconds as a string (Lua numbers returned to Redis are truncated to integers).
_TAKE = _NOW + """
local now = now_ms()
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) / 1000 * rate)
local wait = nil
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', now))
-- Once it would have refilled to full, a missing key means the same thing: let Redis drop it.
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
if wait then
  return string.format('%.17g', wait)
end
return false
"""

# Ballots: a hash id -> JSON and a sorted set id -> sequence number (re-putting an id moves it to the end).
# KEYS: ballots hash, order zset, sequence counter. ARGV: id, JSON, keep.
_PUT_BALLOT = """
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', seq), ARGV[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('HDEL', KEYS[1], old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return 1
"""


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    netloc = f"{user}{host}:{parts.port}" if parts.port else f"{user}{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisState:
    """Shared state in Redis (redis.asyncio), every key under `prefix`."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.url = url
        self.prefix = prefix
        self._shown_url = _redact(url)
        # One immediate retry on a broken connection (e.g. a pooled socket Redis closed); never on a timeout,
        # since a script that timed out may still have run and acquire/take are not idempotent.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._unreachable: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
        self._failed: type[BaseException] = RedisError
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                              socket_connect_timeout=timeout_s, retry=retry)
        script = self._redis.register_script
        self._acquire, self._renew, self._release = script(_ACQUIRE), script(_RENEW), script(_RELEASE)
        self._leased, self._fence = script(_LEASED), script(_FENCE)
        self._publish, self._members, self._withdraw = script(_PUBLISH), script(_MEMBERS), script(_WITHDRAW)
        self._take = script(_TAKE)
        self._put_ballot = script(_PUT_BALLOT)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._unreachable as e:
            raise StateError(f"Redis at {self._shown_url} is unreachable: {_one_line(e)}") from e
        except self._failed as e:
            raise StateError(f"Redis at {self._shown_url} failed: {_one_line(e)}") from e

    def _lease_keys(self, gpu: str) -> list[str]:
        return [f"{self.prefix}gpu:{gpu}:leases", f"{self.prefix}gpu:{gpu}:fence"]

    def _registry_keys(self) -> list[str]:
        return [f"{self.prefix}hosts", f"{self.prefix}members"]

    def _ballot_keys(self) -> list[str]:
        return [f"{self.prefix}ballots", f"{self.prefix}ballots:order", f"{self.prefix}ballots:seq"]

    async def acquire(self, gpu: str, total_slots: int, holder: str, slots: int, ttl: float) -> Lease | None:
        _check_lease_args(total_slots, slots, ttl)
        sent = time.monotonic()
        with self._errors():
            token = await self._acquire(keys=self._lease_keys(gpu), args=[total_slots, slots, _ms(ttl), holder])
        if token is None:
            return None
        return Lease(gpu=gpu, holder=holder, slots=slots, token=int(token), expires_at=sent + ttl)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        _check_ttl(ttl)
        sent = time.monotonic()
        with self._errors():
            renewed = await self._renew(keys=self._lease_keys(lease.gpu)[:1],
                                        args=[lease.token, lease.holder, _ms(ttl)])
        if not renewed:
            raise StaleLease(f"lease {lease.token} on {lease.gpu} is no longer held by {lease.holder}")
        return replace(lease, expires_at=sent + ttl)

    async def release(self, lease: Lease) -> None:
        with self._errors():
            await self._release(keys=self._lease_keys(lease.gpu)[:1], args=[lease.token, lease.holder])

    async def leased(self, gpu: str) -> int:
        with self._errors():
            return int(await self._leased(keys=self._lease_keys(gpu)[:1]))

    async def check_fence(self, gpu: str, token: int) -> bool:
        with self._errors():
            return bool(await self._fence(keys=self._lease_keys(gpu)[:1], args=[token]))

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float) -> None:
        _check_ttl(ttl)
        payload = json.dumps(members)
        with self._errors():
            await self._publish(keys=self._registry_keys(), args=[host, payload, _ms(ttl)])

    async def withdraw(self, host: str) -> None:
        with self._errors():
            await self._withdraw(keys=self._registry_keys(), args=[host])

    async def members(self) -> dict[str, list[dict[str, Any]]]:
        with self._errors():
            flat = await self._members(keys=self._registry_keys())
        return {flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        _check_bucket(rate, burst)
        with self._errors():
            wait = await self._take(keys=[f"{self.prefix}rate:{key}"], args=[repr(float(rate)), repr(float(burst))])
        return None if wait is None else float(wait)

    async def put_ballot(self, ballot_id: str, ballot: dict[str, Any], keep: int) -> None:
        _check_keep(keep)
        payload = json.dumps(ballot)
        with self._errors():
            await self._put_ballot(keys=self._ballot_keys(), args=[ballot_id, payload, keep])

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None:
        with self._errors():
            found = await self._redis.hget(self._ballot_keys()[0], ballot_id)
        return None if found is None else json.loads(found)

    async def ping(self) -> None:
        with self._errors():
            await self._redis.ping()

    async def close(self) -> None:
        with self._errors():
            await self._redis.aclose()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
