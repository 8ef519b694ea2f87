"""Calling one council member: a llama-server over a direct async HTTP client (aiohttp), or a remote model
through litellm (imported only when a remote member exists: it costs ~3 s to import)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from council.errors import CouncilError
from council.policy.schema import RemoteConfig

Status = Literal["ok", "timeout", "error", "cancelled", "skipped"]


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
    logprobs: dict[str, Any] | None = None  # the choice's `logprobs` object, returned for a winning member
    error: str | None = None
    http_status: int | None = None  # the member's status when it answered with an error

    @property
    def rejected(self) -> bool:
        """The member refused the request itself (4xx): a client error, not a member failure."""
        return self.http_status is not None and 400 <= self.http_status < 500

    @property
    def draft_acceptance(self) -> float | None:
        return self.draft_n_accepted / self.draft_n if self.draft_n else None


def _choice_reply(choice: dict[str, Any], latency_ms: float, prompt_tokens: int, completion_tokens: int,
                  timings: dict[str, Any]) -> MemberReply:
    message = choice.get("message") or {}
    logprobs = ((choice.get("logprobs") or {}).get("content")) or []
    values = [t["logprob"] for t in logprobs if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return MemberReply(
        status="ok", text=message.get("content") or "", message=message, latency_ms=latency_ms,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        draft_n=timings.get("draft_n"), draft_n_accepted=timings.get("draft_n_accepted"),
        logprob=sum(values) / len(values) if values else None,
        logprobs=choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None,
    )


def reply_from_openai(body: dict[str, Any], latency_ms: float) -> MemberReply:
    """Read an OpenAI chat.completion body (llama-server adds `timings`)."""
    usage = body.get("usage") or {}
    return _choice_reply((body.get("choices") or [{}])[0], latency_ms, int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), body.get("timings") or {})


def replies_from_openai(body: dict[str, Any], latency_ms: float, n: int) -> list[MemberReply]:
    """One reply per choice of an `n`-choice body, by `index`. The prompt was read once: its tokens go to the
    first choice. llama-server's `usage` counts the first choice's tokens only, so each choice counts its own
    from its logprobs (grouped calls ask for them) where it has them."""
    if n == 1:
        return [reply_from_openai(body, latency_ms)]
    usage = body.get("usage") or {}
    choices = {int(c.get("index", i)): c for i, c in enumerate(body.get("choices") or [])}
    replies = []
    for i in range(n):
        choice = choices.get(i)
        if choice is None:
            replies.append(MemberReply(status="error", latency_ms=latency_ms, error=f"choice {i} of {n} missing"))
            continue
        tokens = ((choice.get("logprobs") or {}).get("content"))
        completion = len(tokens) if isinstance(tokens, list) else (int(usage.get("completion_tokens") or 0)
                                                                   if i == 0 else 0)
        replies.append(_choice_reply(choice, latency_ms, int(usage.get("prompt_tokens") or 0) if i == 0 else 0,
                                     completion, body.get("timings") or {} if i == 0 else {}))
    return replies


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


class MemberUnavailable(CouncilError):
    """No ready process serves this member right now (starting, restarting, or gone)."""


class MemberFailed(CouncilError):
    """The member's connection broke before it answered; the message names the member and how."""


class SlotHolder(Protocol):
    """A process's `parallel` slots (`council.members.process.Slots`): hold `count` of them for one call."""

    def hold(self, count: int = 1) -> contextlib.AbstractAsyncContextManager[None]: ...


@dataclass
class Endpoint:
    """Where a member answers now (it moves on restart) and what a call must hold while it runs: the HTTP
    session, the process's `parallel` slots and its request accounting (the watchdog's view)."""

    name: str
    url: str
    api_key: str
    http: aiohttp.ClientSession
    request: Callable[[], contextlib.AbstractAsyncContextManager[Any]] = contextlib.nullcontext
    slots: SlotHolder | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}


@dataclass(frozen=True)
class Relayed:
    """A member's answer as its bytes, for passthrough (status and content type as the member sent them)."""

    status: int
    content_type: str
    body: bytes


@dataclass
class HttpMemberClient:
    """A member served by a llama-server over HTTP: one of our processes, or one on another host through its
    router's member endpoint. `endpoint()` is asked at each call (restarts move it). Council calls and
    passthrough both go through here, so both respect the process's slots and the member's rate limit."""

    endpoint: Callable[[], Endpoint | None]
    limiter: RateLimiter = field(default_factory=NoLimit)
    # What the calls go to (a process name): seats with the same target and the same request can share one
    # request with `n` (one prompt pass for several samples). None: never grouped.
    target: str | None = None

    @contextlib.asynccontextmanager
    async def _call(self, where: Endpoint, path: str, data: bytes,
                    width: int = 1) -> AsyncIterator[aiohttp.ClientResponse]:
        # Cancelling this (an early stop) drops the connection, which frees the member's llama-server slots.
        async with (self.limiter.slot(), where.slots.hold(width) if where.slots else contextlib.nullcontext(),
                    where.request(),
                    where.http.post(f"{where.url}{path}", data=data, headers=where.headers) as response):
            yield response

    async def complete(self, payload: dict[str, Any], path: str = "/v1/chat/completions") -> MemberReply:
        return (await self.complete_many(payload, 1, path))[0]

    async def complete_many(self, payload: dict[str, Any], n: int,
                            path: str = "/v1/chat/completions") -> list[MemberReply]:
        """`n` choices of one request (`n` > 1: one prompt pass, `n` slots held); one reply per choice."""
        start = time.monotonic()
        data = json.dumps({**payload, "n": n} if n > 1 else payload).encode()
        for attempt in (1, 2):  # one retry on a connection error: the member may be restarting
            where = self.endpoint()
            if where is None:
                return [MemberReply(status="error", error="member is not ready")] * n
            try:
                async with self._call(where, path, data, n) as response:
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if attempt == 2:
                    return [MemberReply(status="error", error=f"{type(exc).__name__}: {exc}",
                                        latency_ms=(time.monotonic() - start) * 1000)] * n
                continue
            latency = (time.monotonic() - start) * 1000
            if status != 200:
                return [MemberReply(status="error", latency_ms=latency, http_status=status,
                                    error=f"member answered {status}: {_reason(raw)}")] * n
            try:
                return replies_from_openai(json.loads(raw), latency, n)
            except (ValueError, KeyError, TypeError):
                return [MemberReply(status="error", latency_ms=latency, error="member answered with invalid JSON")] * n
        raise AssertionError("unreachable")

    def _where(self) -> Endpoint:
        where = self.endpoint()
        if where is None:
            raise MemberUnavailable("member is not ready")
        return where

    async def relay(self, body: bytes, path: str) -> Relayed:
        """One call relayed as bytes (a passthrough, or another host's router calling this one)."""
        where = self._where()
        try:
            async with self._call(where, path, body) as response:
                return Relayed(response.status, response.headers.get("content-type", "application/json"),
                               await response.read())
        except aiohttp.ClientError as exc:
            raise MemberFailed(f"member {where.name} failed: {type(exc).__name__}") from None

    @contextlib.asynccontextmanager
    async def stream(self, body: bytes, path: str) -> AsyncIterator[tuple[Relayed, AsyncIterator[bytes]]]:
        """A streamed call: the head (status, content type) and the body's chunks as they come; the slot and
        the accounting are held until the caller leaves the block."""
        where = self._where()
        try:
            async with self._call(where, path, body) as response:
                head = Relayed(response.status, response.headers.get("content-type", "text/event-stream"), b"")
                yield head, response.content.iter_any()
        except aiohttp.ClientError as exc:
            raise MemberFailed(f"member {where.name} failed: {type(exc).__name__}") from None


def _reason(raw: bytes) -> str:
    """A member's error message: the OpenAI error shape's `message` where it sent one, else its first bytes."""
    try:
        doc = json.loads(raw)
        message = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
        if isinstance(message, str) and message:
            return message[:300]
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode(errors="replace")


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
