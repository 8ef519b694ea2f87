"""Calling one council member: a local llama-server over a direct async HTTP client, or a remote model
through litellm (imported only when a remote member exists: it costs ~3 s to import)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from council.policy import RemoteConfig

Status = Literal["ok", "timeout", "error", "cancelled"]


@dataclass
class MemberReply:
    """What one member said, or why it said nothing."""

    status: Status
    text: str | None = None
    message: dict[str, Any] | None = None  # the whole assistant message (tool calls live here)
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    draft_n: int | None = None
    draft_n_accepted: int | None = None
    logprob: float | None = None
    error: str | None = None

    @property
    def draft_acceptance(self) -> float | None:
        return self.draft_n_accepted / self.draft_n if self.draft_n else None


def reply_from_openai(body: dict[str, Any], latency_ms: float) -> MemberReply:
    """Read an OpenAI chat.completion body (llama-server adds `timings`)."""
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = body.get("usage") or {}
    timings = body.get("timings") or {}
    logprobs = ((choice.get("logprobs") or {}).get("content")) or []
    values = [t["logprob"] for t in logprobs if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return MemberReply(
        status="ok", text=message.get("content") or "", message=message, latency_ms=latency_ms,
        prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
        draft_n=timings.get("draft_n"), draft_n_accepted=timings.get("draft_n_accepted"),
        logprob=sum(values) / len(values) if values else None,
    )


class RateLimiter(Protocol):
    """Waits until a request may go (one small interface; asyncio-throttle behind it)."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class NoLimit:
    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        yield


class Throttle:
    """At most `per_second` requests in any one-second window."""

    def __init__(self, per_second: float) -> None:
        from asyncio_throttle import Throttler

        # Throttler counts whole requests per period: express fractional rates as 1 per 1/rate seconds.
        rate, period = (int(per_second), 1.0) if per_second >= 1 else (1, 1.0 / per_second)
        self._throttler = Throttler(rate_limit=rate, period=period)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._throttler:
            yield


def rate_limiter(per_second: float | None) -> RateLimiter:
    return Throttle(per_second) if per_second else NoLimit()


class MemberClient(Protocol):
    async def complete(self, payload: dict[str, Any]) -> MemberReply: ...


@dataclass
class LocalEndpoint:
    """Where a local member answers now (it changes on restart) and how to account for the request."""

    url: str
    api_key: str
    request: Callable[[], contextlib.AbstractAsyncContextManager[Any]]  # supervisor accounting (watchdog)


@dataclass
class LocalClient:
    """A member served by our own llama-server; `endpoint()` is asked at each call (restarts move it)."""

    endpoint: Callable[[], LocalEndpoint | None]
    http: aiohttp.ClientSession
    limiter: RateLimiter = field(default_factory=NoLimit)
    # The process's `parallel` slots, shared by the members it serves: more requests would only queue
    # inside llama-server, where our timeout could not see them.
    slots: asyncio.Semaphore | None = None

    async def complete(self, payload: dict[str, Any]) -> MemberReply:
        start = time.monotonic()
        for attempt in (1, 2):  # one retry on a connection error: the member may be restarting
            where = self.endpoint()
            if where is None:
                return MemberReply(status="error", error="member is not ready")
            headers = {"Authorization": f"Bearer {where.api_key}", "Content-Type": "application/json"}
            try:
                # Cancelling this (an early stop) drops the connection, which frees the member's slot.
                async with (self.limiter.slot(), self.slots or contextlib.nullcontext(), where.request(),
                            self.http.post(f"{where.url}/v1/chat/completions", data=json.dumps(payload),
                                           headers=headers) as response):
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if attempt == 2:
                    return MemberReply(status="error", error=f"{type(exc).__name__}: {exc}",
                                       latency_ms=(time.monotonic() - start) * 1000)
                continue
            latency = (time.monotonic() - start) * 1000
            if status != 200:
                return MemberReply(status="error", latency_ms=latency,
                                   error=f"member answered {status}: {raw[:200].decode(errors='replace')}")
            try:
                return reply_from_openai(json.loads(raw), latency)
            except ValueError:
                return MemberReply(status="error", latency_ms=latency, error="member answered with invalid JSON")
        raise AssertionError("unreachable")


@dataclass
class RemoteClient:
    """A member served elsewhere, through litellm."""

    remote: RemoteConfig
    limiter: RateLimiter = field(default_factory=NoLimit)

    async def complete(self, payload: dict[str, Any]) -> MemberReply:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import
        import litellm

        start = time.monotonic()
        key = os.environ.get(self.remote.api_key_env) if self.remote.api_key_env else None
        try:
            async with self.limiter.slot():
                response = await litellm.acompletion(model=self.remote.model, api_base=self.remote.api_base,
                                                     api_key=key, **payload)
        except Exception as exc:  # litellm maps every provider failure to its own exception tree
            return MemberReply(status="error", error=f"{type(exc).__name__}: {str(exc)[:200]}",
                               latency_ms=(time.monotonic() - start) * 1000)
        return reply_from_openai(response.model_dump(), (time.monotonic() - start) * 1000)
