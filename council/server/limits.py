"""The request limits, as one async context manager: a key's rate (one token bucket for every router when
state is shared), a key's requests in flight, and the requests queued for one council or model."""

from __future__ import annotations

import math
import time
from types import TracebackType

from council.cluster.store import StateError, StateStore
from council.errors import CouncilError
from council.server.auth import Principal
from council.server.metrics import RouterMetrics


class Limited(CouncilError):
    """Past a limit; the client may retry after `retry_after` seconds (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message)
        self.code, self.retry_after = code, retry_after


class Admission:
    """One admitted request; leaving it (or `release()`, once) frees its place in every limit."""

    def __init__(self, limits: Limits, who: Principal, target: str) -> None:
        self._limits, self.who, self.target = limits, who, target
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.who.in_flight -= 1
            self._limits.queues[self.target] -= 1

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()


LOCAL_AFTER_FAILURE_S = 5.0  # rate limits kept by each router's own buckets after Redis failed to answer


class Limits:
    def __init__(self, metrics: RouterMetrics, state: StateStore, shared: bool, max_queue: int) -> None:
        self.metrics, self.state, self.shared, self.max_queue = metrics, state, shared, max_queue
        self.queues: dict[str, int] = {}  # requests waiting for or inside one council or model
        self._local_until = 0.0  # monotonic: Redis failed lately, this router's own buckets answer until then

    async def _take(self, who: Principal) -> float | None:
        """The key's rate limit: shared by all routers through Redis, or this router's own bucket (also the
        fallback while Redis is away, so an outage never turns into unlimited or refused traffic). After a failed
        ask, Redis is not asked again for LOCAL_AFTER_FAILURE_S: a Redis stalled (paused, slow) made every
        rate-limited request wait out the store's timeout, a second or two each, for as long as it lasted."""
        if who.rate_limit is None or not self.shared or time.monotonic() < self._local_until:
            return who.take()
        try:
            return await self.state.take(f"key:{who.name}", who.rate_limit, max(1.0, who.rate_limit))
        except StateError:
            self._local_until = time.monotonic() + LOCAL_AFTER_FAILURE_S
            return who.take()

    def _refuse(self, reason: str, message: str, code: str, retry_after: int = 1) -> Limited:
        self.metrics.rejected.labels(reason).inc()
        return Limited(message, code, retry_after)

    async def admit(self, who: Principal, target: str) -> Admission:
        """Admit one request for `target` (a council or model) or raise Limited. The key's places and the queue
        are checked before its rate: a request refused for them spends none of the key's rate. They are checked
        again once the rate is taken (taking it may wait on Redis, while other requests come in)."""
        self._check_places(who, target)
        if (wait := await self._take(who)) is not None:
            raise self._refuse("rate", f"rate limit of key {who.name} exceeded", "rate_limited",
                               max(1, math.ceil(wait)))
        self._check_places(who, target)
        who.in_flight += 1
        self.queues[target] = self.queues.get(target, 0) + 1
        return Admission(self, who, target)

    def _check_places(self, who: Principal, target: str) -> None:
        if who.max_concurrency is not None and who.in_flight >= who.max_concurrency:
            raise self._refuse("concurrency", f"key {who.name} has {who.in_flight} requests in flight (its limit)",
                               "too_many_requests")
        queued = self.queues.get(target, 0)
        if queued >= self.max_queue:
            raise self._refuse("queue", f"{target}: {queued} requests already queued (max_queue)", "queue_full")
