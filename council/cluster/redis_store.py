"""Shared state in Redis: `state: redis://host:port/db`.

Every read-modify-write is one Lua script (atomic on the server), loaded from the package's `lua/` folder;
a script includes another with a `-- @include NAME` line. Times are integer milliseconds of the server's
clock, so routers with skewed clocks still agree on what expired; numbers that go back into Redis are
formatted with %d because Lua's default number-to-string conversion can turn big integers into exponent
notation, which Redis would not read back as an integer.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from council.cluster.store import (
    DEFAULT_PREFIX,
    Lease,
    LegacyLease,
    Listing,
    StaleLease,
    StateError,
    check_bucket,
    check_keep,
    check_lease_args,
    check_ttl,
)
from council.voting.ballots import MAX_BYTES

# Short enough that a router answers "Redis is down" in about a second instead of hanging a request.
REDIS_TIMEOUT_S = 1.0
_INCLUDE = re.compile(r"^-- @include (\w+)$", re.M)


@cache
def lua_script(name: str) -> str:
    """The text of `lua/NAME.lua` with its includes expanded (package data, so it works from a wheel)."""
    text = resources.files("council.cluster").joinpath("lua", f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda m: lua_script(m.group(1)), text)


def redacted(url: str) -> str:
    """The URL without its password, for messages: the userinfo's and a `password=` query parameter's (redis-py
    reads both, and a `unix://` URL can carry one only in its query). Something that is no URL is said so, never
    echoed (it may hold a password): `council doctor` read `$COUNCIL_REDIS_URL` so, and `redis://[::1` was a
    traceback there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a valid URL)"
    if not parts.scheme or "://" not in url:
        return "(not a valid URL)"
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, where = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{where}"  # the host as written: IPv6 keeps its brackets
    query = "&".join(f"{item.partition('=')[0]}=***" if unquote(item.partition("=")[0]).lower() == "password"
                     else item for item in parts.query.split("&")) if parts.query else ""
    # Written out, not urlunsplit: that drops the `//` of `unix:///path`.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


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
        self._shown_url = redacted(url)
        # One immediate retry on a broken connection (e.g. a pooled socket Redis closed); never on a timeout.
        # A connection can also break after Redis ran the script, its reply lost: acquire and take carry a request
        # id, so the retry gets the first answer rather than a second lease or token (put_ballot's second run only
        # bumps the order's counter once more).
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._unreachable: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
        self._failed: type[BaseException] = RedisError
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                              socket_connect_timeout=timeout_s, retry=retry)
        def script(name: str) -> Any:
            return self._redis.register_script(lua_script(name))

        self._acquire, self._renew, self._release = script("acquire"), script("renew"), script("release")
        self._leased, self._fence, self._holders = script("leased"), script("fence"), script("holders")
        self._publish, self._members, self._withdraw = script("publish"), script("members"), script("withdraw")
        self._take = script("take")
        self._unanswered: dict[tuple[str, str, int, tuple[int, ...]], str] = {}  # acquire ids that got no answer
        self._put_ballot = script("put_ballot")

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
        return [f"{self.prefix}hosts", f"{self.prefix}members", f"{self.prefix}owners", f"{self.prefix}epoch"]

    def _ballot_keys(self, kind: str = "ballots") -> list[str]:
        return [f"{self.prefix}{kind}", f"{self.prefix}{kind}:order", f"{self.prefix}{kind}:seq",
                f"{self.prefix}{kind}:bytes"]

    async def acquire(self, gpu: str, capacity_bytes: int, holder: str, size: int, ttl: float,
                      keep_free_bytes: int = 0, replacing: Collection[int] = ()) -> Lease | None:
        check_lease_args(capacity_bytes, size, ttl, keep_free_bytes)
        sent = time.monotonic()
        # A request id: redis-py's retry on a broken connection resends it, and the script grants it once. One that
        # got no answer (a timeout: Redis slow or paused) is sent again by the next ask for the same lease: Redis
        # may run the first once it resumes, and the lease it granted then was known to nobody, refusing this
        # router's own next ask for its whole TTL.
        same = (gpu, holder, size, tuple(sorted(replacing)))
        asked = self._unanswered.pop(same, None) or f"{self.prefix}gpu:{gpu}:acquire:{uuid.uuid4().hex}"
        try:
            with self._errors():
                token = await self._acquire(keys=[*self._lease_keys(gpu), asked],
                                            args=[capacity_bytes, keep_free_bytes, size, _ms(ttl), holder,
                                                  *(str(t) for t in replacing)])
        except StateError:
            if len(self._unanswered) < 1024:  # a few leases a router: bounded all the same
                self._unanswered[same] = asked
            raise
        if token is None:
            return None
        if int(token) < 0:
            raise LegacyLease(f"an older council router holds a live lease on {gpu} in {self._shown_url}, counted in "
                              "its own slots rather than bytes: upgrade every router that shares this Redis")
        return Lease(gpu=gpu, holder=holder, size=size, token=int(token), expires_at=sent + ttl)

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        check_ttl(ttl)
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

    async def holders(self, gpu: str) -> dict[str, int]:
        with self._errors():
            flat = await self._holders(keys=self._lease_keys(gpu)[:1])
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def publish_members(self, host: str, members: list[dict[str, Any]], ttl: float,
                              owner: str = "") -> str | None:
        check_ttl(ttl)
        payload = json.dumps(members)
        with self._errors():
            other = await self._publish(keys=self._registry_keys(), args=[host, payload, _ms(ttl), owner,
                                                                          uuid.uuid4().hex])
        return other if isinstance(other, str) else None

    async def withdraw(self, host: str, owner: str = "") -> None:
        with self._errors():
            await self._withdraw(keys=self._registry_keys(), args=[host, owner])

    async def members(self) -> Listing:
        with self._errors():
            epoch, *flat = await self._members(keys=self._registry_keys())
        hosts = {flat[i]: entries for i in range(0, len(flat), 2) if (entries := _json(flat[i + 1])) is not None}
        return Listing(hosts, epoch if isinstance(epoch, str) and epoch else None)

    async def take(self, key: str, rate: float, burst: float) -> float | None:
        check_bucket(rate, burst)
        with self._errors():
            wait = await self._take(keys=[f"{self.prefix}rate:{key}"],
                                    args=[repr(float(rate)), repr(float(burst)), uuid.uuid4().hex])
        return None if wait is None else float(wait)

    async def put_ballot(self, ballot_id: str, ballot: dict[str, Any], keep: int) -> None:
        check_keep(keep)
        payload = json.dumps(ballot)
        with self._errors():
            await self._put_ballot(keys=self._ballot_keys(), args=[ballot_id, payload, keep, MAX_BYTES])

    async def get_ballot(self, ballot_id: str) -> dict[str, Any] | None:
        with self._errors():
            found = await self._redis.hget(self._ballot_keys()[0], ballot_id)
        return None if found is None else _object(found)

    async def put_response(self, response_id: str, conversation: dict[str, Any], keep: int) -> None:
        check_keep(keep)
        payload = json.dumps(conversation)
        with self._errors():  # the ballots' script: the same bounded, most-recent-kept place
            await self._put_ballot(keys=self._ballot_keys("responses"), args=[response_id, payload, keep, MAX_BYTES])

    async def get_response(self, response_id: str) -> dict[str, Any] | None:
        with self._errors():
            found = await self._redis.hget(self._ballot_keys("responses")[0], response_id)
        return None if found is None else _object(found)

    async def eviction_policy(self) -> str | None:
        """Redis' `maxmemory-policy`, or None where it cannot say (CONFIG disabled, as managed services do, or Redis
        away): one that evicts (`allkeys-*`, `volatile-*`) may drop a live lease under memory pressure, and another
        router then leases the same GPU memory until the holder's next renewal."""
        try:
            found = await self._redis.config_get("maxmemory-policy")
        except (self._failed, *self._unreachable):
            return None
        policy = found.get("maxmemory-policy") if isinstance(found, dict) else None
        return policy if isinstance(policy, str) else None

    async def ping(self) -> None:
        with self._errors():
            await self._redis.ping()

    async def clock_ms(self) -> int:
        with self._errors():
            seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def close(self) -> None:
        with self._errors():
            await self._redis.aclose()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _json(raw: str | bytes) -> Any:
    """A stored value, or None where it is not JSON: anyone who reaches Redis can write there, and a value we did
    not write is one we never had (an unknown ballot, a host not listed), never a 500."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _object(raw: str | bytes) -> dict[str, Any] | None:
    found = _json(raw)
    return found if isinstance(found, dict) else None
