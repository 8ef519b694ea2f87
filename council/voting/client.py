"""Calling one council member: a llama-server over a direct async HTTP client (aiohttp), or a remote model
through litellm (imported only when a remote member exists: it costs ~3 s to import)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

import aiohttp
import orjson

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
    cached_tokens: int = 0  # of the prompt tokens, those the server found in its cache (it did not read them)
    completion_tokens: int = 0
    draft_n: int | None = None
    draft_n_accepted: int | None = None
    logprob: float | None = None
    logprobs: dict[str, Any] | None = None  # the choice's `logprobs` object, returned for a winning member
    error: str | None = None
    http_status: int | None = None  # the member's status when it answered with an error
    timings: dict[str, Any] | None = None  # llama-server's own timings of the request (prefill, generation)
    # Why generation ended, as the member said: `stop`, `length` (cut off by max_tokens: the text is unfinished),
    # `tool_calls`; None when it did not say.
    finish_reason: str | None = None

    @property
    def rejected(self) -> bool:
        """The member refused the request itself (4xx): a client error, not a member failure."""
        return self.http_status is not None and 400 <= self.http_status < 500

    @property
    def draft_acceptance(self) -> float | None:
        return self.draft_n_accepted / self.draft_n if self.draft_n else None


class NotACompletion(ValueError):
    """A member's 200 body that is no chat completion (no choices, a message that is not one): its failure."""


def _choice_reply(choice: dict[str, Any], latency_ms: float, prompt_tokens: int, completion_tokens: int,
                  timings: dict[str, Any], cached: int = 0) -> MemberReply:
    message = choice.get("message")
    if not isinstance(message, dict):
        raise NotACompletion("its choice holds no message")
    if isinstance(message.get("content"), list):  # text parts (an OpenAI-compatible remote may answer so): one text
        message = {**message, "content": "".join(str(p.get("text") or "") for p in message["content"]
                                                 if isinstance(p, dict) and p.get("type", "text") == "text")}
    # Text or nothing: anything else (a number, an object) reached the extractors and failed the whole vote.
    if message.get("content") is not None and not isinstance(message["content"], str):
        raise NotACompletion(f"its message's content is {type(message['content']).__name__}, not text")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise NotACompletion("its message's tool_calls are not a list of calls")
    logprobs = ((choice.get("logprobs") or {}).get("content")) or []
    # A log probability is at most 0: a positive one (a broken or proxied member) made a confidence above 1, which
    # outweighed other seats live and which `council tally` then refused to replay.
    values = [min(0.0, t["logprob"]) for t in logprobs
              if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)]
    return MemberReply(
        status="ok", text=message.get("content") or "", message=message, latency_ms=latency_ms,
        prompt_tokens=prompt_tokens, cached_tokens=cached, completion_tokens=completion_tokens,
        draft_n=timings.get("draft_n"), draft_n_accepted=timings.get("draft_n_accepted"),
        logprob=sum(values) / len(values) if values else None,
        logprobs=choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None,
        timings=timings or None,
        finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
    )


def cached_tokens(usage: dict[str, Any] | None) -> int:
    """`usage.prompt_tokens_details.cached_tokens`: prompt tokens the server did not have to read."""
    details = (usage or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0


def reply_from_openai(body: Any, latency_ms: float) -> MemberReply:
    """Read an OpenAI chat.completion body (llama-server adds `timings`); NotACompletion where it is none: `{}` or
    `{"error": ...}` with a 200 read as one empty choice, an `ok` seat that abstained, and where every seat did, a
    502 telling SDKs not to retry a council whose members had all failed."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise NotACompletion("no choices")
    usage = body.get("usage") or {}
    return _choice_reply(choices[0], latency_ms, int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), body.get("timings") or {}, cached_tokens(usage))


@dataclass
class _Choice:
    """One choice of a streamed `n` request, as its chunks arrive."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    # Chunks that carried generated text (llama-server streams one per token; its first chunk, the role, and
    # its last, the finish reason, carry none): the tokens so far when no usage says.
    generated: int = 0
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.logprobs) or self.generated

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        content, reasoning, calls = delta.get("content"), delta.get("reasoning_content"), delta.get("tool_calls")
        if content or reasoning or calls:
            self.generated += 1
        if isinstance(content, str):
            self.content.append(content)
        if isinstance(reasoning, str):
            self.reasoning.append(reasoning)
        for call in calls or []:
            # Tool calls stream as pieces keyed by their index: the name once, the arguments in parts.
            into = self.tool_calls.setdefault(int(call.get("index", 0)),
                                              {"type": "function", "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                into["id"] = call["id"]
            fn = call.get("function") or {}
            into["function"]["name"] += fn.get("name") or ""
            into["function"]["arguments"] += fn.get("arguments") or ""
        entries = (choice.get("logprobs") or {}).get("content")
        if isinstance(entries, list):
            self.logprobs += entries
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]

    def reply(self, latency_ms: float, usage: dict[str, Any] | None, timings: dict[str, Any],
              first: bool) -> MemberReply:
        """The finished choice; only the `first` one back carries the prompt's tokens (read once for all)."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        # llama-server sends each choice's own usage after its last chunk; without it, count its tokens.
        completion = int(usage.get("completion_tokens") or 0) if usage else self.tokens
        prompt = int(usage.get("prompt_tokens") or 0) if usage and first else 0
        return _choice_reply({"message": message, "logprobs": {"content": self.logprobs} if self.logprobs else None,
                              "finish_reason": self.finish_reason},
                             latency_ms, prompt, completion, timings, cached_tokens(usage) if first else 0)


class Streaming(dict[int, _Choice]):
    """The choices of a grouped request still being generated, by index, as they stand: when an early stop closes
    the request, what each had generated (its usage never comes) is still counted."""

    def tokens(self, index: int) -> int:
        choice = self.get(index)
        return 0 if choice is None else choice.tokens


class RateLimiter(Protocol):
    """Waits until a request may go (one small interface; asyncio-throttle behind it)."""

    def slot(self, count: int = 1) -> contextlib.AbstractAsyncContextManager[None]: ...


# A slot that never waits: one shared, stateless object, where a generator-based context manager would cost a
# generator per call (~1.2 us each, bench/hotpath.py --steps).
GO: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class NoLimit:
    def slot(self, count: int = 1) -> contextlib.AbstractAsyncContextManager[None]:
        return GO


def exact_rate(per_second: float) -> tuple[int, float]:
    """A rate as whole requests per period, exactly: 2.5/s is 5 per 2 s, 0.3/s is 3 per 10 s (asyncio-throttle
    counts whole requests in a sliding window; rounding 2.5 down to 2 lost a fifth of the rate)."""
    exact = Fraction(per_second).limit_denominator(1000)
    if exact == 0:  # below one request per 1000 s: one request per 1/rate seconds
        return 1, 1.0 / per_second
    return exact.numerator, float(exact.denominator)


class Throttle:
    """At most `per_second` requests per second on one target, exactly (`exact_rate`); unlimited while no rate
    is set. `tighten` lowers the rate: entries with different rates on one target get the strictest."""

    def __init__(self, per_second: float | None = None) -> None:
        from asyncio_throttle import Throttler

        self.per_second: float | None = None
        self._throttler = Throttler(rate_limit=1)
        if per_second:
            self.tighten(per_second)

    def tighten(self, per_second: float) -> None:
        if self.per_second is None or per_second < self.per_second:
            self.per_second = per_second
            self._throttler.rate_limit, self._throttler.period = exact_rate(per_second)

    def slot(self, count: int = 1) -> contextlib.AbstractAsyncContextManager[None]:
        """`count` requests' worth: a grouped request of `n: K` is K completions, so it counts K."""
        return GO if self.per_second is None else self._acquire(count)

    @contextlib.asynccontextmanager
    async def _acquire(self, count: int) -> AsyncIterator[None]:
        for _ in range(count):
            await self._throttler.acquire()
        yield


class RateLimits:
    """One limiter per model target (a local process, a remote model), shared by every seat and the passthrough
    calls on it: K seats on one target share its rate instead of getting K times it."""

    def __init__(self) -> None:
        self._by_target: dict[str, Throttle] = {}

    def for_target(self, target: str, per_second: float | None) -> Throttle:
        limiter = self._by_target.setdefault(target, Throttle())
        if per_second:
            limiter.tighten(per_second)
        return limiter


class MemberClient(Protocol):
    """What a seat asks. `target` names the process the calls go to: seats with the same target and the same
    request can share one request for `n` choices (None: never grouped)."""

    @property
    def target(self) -> str | None: ...

    async def complete(self, payload: dict[str, Any]) -> MemberReply: ...

    def choices(self, payload: dict[str, Any], n: int,
                streaming: Streaming | None = None) -> AsyncIterator[tuple[int, MemberReply]]: ...


class MemberUnavailable(CouncilError):
    """No ready process serves this member right now (starting, restarting, or gone)."""


NOT_READY = "process is not ready"  # the seat's llama-server: a member is the policy's entry, not this process


class MemberFailed(CouncilError):
    """The member's connection broke before it answered; the message names the member and how."""


class CallOutcome(Protocol):
    """What a call reports about the member's part in it, for the process's watchdog
    (`council.members.process.RequestOutcome`): a 5xx or an unreadable body is the member's failure, a readable
    answer a success; a 4xx (the caller's fault) and a call the router cancels report nothing."""

    def succeeded(self) -> None: ...

    def failed(self, reason: str) -> None: ...

    def progressed(self) -> None:
        """Bytes of the answer arrived: the member is not stuck (a stream's every chunk)."""

    def held(self) -> None:
        """The caller holds a chunk and asks for no more until the next `progressed()`: not the member's silence."""


class Unaccounted:
    """The outcome of a call no local watchdog follows (a member on another host counts its own)."""

    def succeeded(self) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass

    def progressed(self) -> None:
        pass

    def held(self) -> None:
        pass


def _unaccounted(patience: float | None = None) -> contextlib.AbstractAsyncContextManager[CallOutcome]:
    return contextlib.nullcontext(Unaccounted())


def member_fault(status: int) -> bool:
    """A status that is the member's failure: a 5xx, but not 501 (llama-server's "not supported": a feature the
    process was not started with, which no restart brings)."""
    return status >= 500 and status != 501


class SlotHolder(Protocol):
    """A process's `parallel` slots (`council.members.process.Slots`): hold `count` of them for one call."""

    def hold(self, count: int = 1) -> contextlib.AbstractAsyncContextManager[None]: ...


@dataclass
class Endpoint:
    """Where a member answers now (it moves on restart) and what a call must hold while it runs: the HTTP
    session, the process's `parallel` slots and its request accounting (the watchdog's view), which takes the
    call's patience (`HttpMemberClient.patience`)."""

    name: str
    url: str
    api_key: str
    http: aiohttp.ClientSession
    request: Callable[[float | None], contextlib.AbstractAsyncContextManager[CallOutcome]] = _unaccounted
    slots: SlotHolder | None = None
    # Where no local watchdog follows the call (a member on another host, which may go silent without closing the
    # connection): how long it may wait for a byte, or as long as the call's patience where longer, before it
    # fails. None: the process's watchdog takes a stuck call for its process's fault.
    silence: float | None = None
    headers: dict[str, str] = field(init=False, repr=False)  # every call's; aiohttp copies them, never changes them

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}


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
    # How long a call may go without a byte from the member before the member's watchdog takes it for stuck,
    # where longer than the watchdog's own `stuck_after`: a council's timeout (its deadline cancels the call
    # anyway). None (passthrough): the watchdog's.
    patience: float | None = None

    @contextlib.asynccontextmanager
    async def _call(self, where: Endpoint, path: str, data: bytes,
                    width: int = 1) -> AsyncIterator[tuple[aiohttp.ClientResponse, CallOutcome]]:
        """One request to the member, holding its rate limit, `width` of its slots and its request accounting.
        The status is judged here (a 5xx is the member's failure); a caller that reads a 2xx body reports
        whether it was readable (`succeeded()` / `failed(reason)`). An exception leaving the block counts as
        a failure; a cancellation (an early stop) as nothing."""
        # Cancelling this (an early stop) drops the connection, which frees the member's llama-server slots.
        async with (self.limiter.slot(width), where.slots.hold(width) if where.slots else GO,
                    where.request(self.patience) as outcome,
                    await _post(where, path, data, self.patience) as response):
            if member_fault(response.status):
                outcome.failed(f"member answered {response.status}")
            yield response, outcome

    async def complete(self, payload: dict[str, Any], path: str = "/v1/chat/completions") -> MemberReply:
        start = time.monotonic()
        where = self.endpoint()
        if where is None:
            return MemberReply(status="error", error=NOT_READY)
        try:
            async with self._call(where, path, orjson.dumps(payload)) as (response, outcome):
                status, raw = response.status, await response.read()
                latency = (time.monotonic() - start) * 1000
                if status != 200:
                    return MemberReply(status="error", latency_ms=latency, http_status=status,
                                       error=f"member answered {status}: {_reason(raw)}")
                try:
                    reply = reply_from_openai(orjson.loads(raw), latency)
                except NotACompletion as exc:
                    outcome.failed(f"member answered with no chat completion: {exc}")
                    return MemberReply(status="error", latency_ms=latency,
                                       error=f"member answered with no chat completion: {exc}")
                except (ValueError, KeyError, TypeError, AttributeError):
                    outcome.failed("member answered with invalid JSON")
                    return MemberReply(status="error", latency_ms=latency, error="member answered with invalid JSON")
                outcome.succeeded()
                return reply
        except (aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: its session closed (the process stopped)
            return MemberReply(status="error", error=f"{type(exc).__name__}: {exc}",
                               latency_ms=(time.monotonic() - start) * 1000)

    async def choices(self, payload: dict[str, Any], n: int, streaming: Streaming | None = None,
                      path: str = "/v1/chat/completions") -> AsyncIterator[tuple[int, MemberReply]]:
        """The `n` choices of one request (one prompt pass, `n` slots held), each as soon as it is complete:
        the request streams (choices arrive interleaved by index), so a vote can be decided, and the request
        closed, before the slowest choice ends. Every index is yielded once; the prompt's tokens go to the
        first choice reported (the server read the prompt once). `streaming` holds the choices not yet
        complete, as they stand."""
        start = time.monotonic()
        body = {**payload, "n": n, "stream": True, "stream_options": {"include_usage": True}}
        data = orjson.dumps(body)
        done: set[int] = set()
        error = NOT_READY
        where = self.endpoint()
        if where is not None:
            try:
                async with self._call(where, path, data, n) as (response, outcome):
                    if response.status != 200:
                        error = f"member answered {response.status}: {_reason(await response.read())}"
                        for i in range(n):
                            yield i, MemberReply(status="error", latency_ms=(time.monotonic() - start) * 1000,
                                                 http_status=response.status, error=error)
                        return
                    async for index, reply in _stream_choices(response, outcome, n, start, streaming):
                        done.add(index)
                        yield index, reply
                    error = "the member's stream ended before every choice finished"
                    if len(done) == n:
                        outcome.succeeded()
                    else:
                        outcome.failed(error)
            except (aiohttp.ClientError, RuntimeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except (ValueError, TypeError, AttributeError) as exc:  # an event that is JSON but not a chunk's shape
                error = f"the member's stream was malformed: {type(exc).__name__}"
        for i in range(n):
            if i not in done:
                yield i, MemberReply(status="error", latency_ms=(time.monotonic() - start) * 1000, error=error)

    def _where(self) -> Endpoint:
        where = self.endpoint()
        if where is None:
            raise MemberUnavailable(NOT_READY)
        return where

    async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
        """One call relayed as bytes (a passthrough, or another host's router calling this one); `width` is the
        request's `n` (the slots and rate it takes)."""
        where = self._where()
        try:
            async with self._call(where, path, body, width) as (response, outcome):
                relayed = Relayed(response.status, response.headers.get("content-type", "application/json"),
                                  await response.read())
                if 200 <= relayed.status < 300:
                    if _readable(relayed):
                        outcome.succeeded()
                    else:
                        outcome.failed("member answered with invalid JSON")
                return relayed
        except (aiohttp.ClientError, RuntimeError) as exc:
            if (failure := _relay_failure(where, exc)) is None:
                raise
            raise failure from None

    @contextlib.asynccontextmanager
    async def stream(self, body: bytes, path: str,
                     width: int = 1) -> AsyncIterator[tuple[Relayed, AsyncIterator[bytes]]]:
        """A streamed call: the head (status, content type) and the body's chunks as they come; the slot and
        the accounting are held until the caller leaves the block. A 2xx stream read to its end is a success,
        one that breaks a failure; one the caller leaves early (a client that went away) is neither."""
        where = self._where()
        try:
            async with self._call(where, path, body, width) as (response, outcome):
                head = Relayed(response.status, response.headers.get("content-type", "text/event-stream"), b"")
                yield head, _chunks(response, outcome, where.name)
        except (aiohttp.ClientError, RuntimeError) as exc:
            if (failure := _relay_failure(where, exc)) is None:
                raise
            raise failure from None


def _relay_failure(where: Endpoint, exc: Exception) -> CouncilError | None:
    """What a relayed call's exception means for its caller: the member failed (an HTTP error), or was stopped
    while the call waited for its slot (aiohttp's "Session is closed" RuntimeError after a drain, reload or draft
    restart: not ready, a 503, not a 500); None for any other RuntimeError, the router's own fault, raised as it
    is."""
    if isinstance(exc, aiohttp.ServerTimeoutError) and where.silence is not None:  # a relay has no patience
        return MemberFailed(f"member {where.name} failed: its host sent nothing for {where.silence:g} s (down, or cut "
                            "off without closing the connection)")
    if isinstance(exc, aiohttp.ClientError):
        return MemberFailed(f"member {where.name} failed: {type(exc).__name__}")
    if where.http.closed:
        return MemberUnavailable(f"member {where.name} was stopped while the request waited")
    return None


async def _post(where: Endpoint, path: str, data: bytes, patience: float | None = None) -> aiohttp.ClientResponse:
    """Send a request and read its head, sending it once more on a fresh connection when the first send fails
    for want of a connection: a kept-alive connection the member closed meanwhile (its keep-alive ran out, or
    it restarted) fails here, before any byte of an answer, for every kind of call. Not on a timeout: a member
    too slow to accept is not made to wait twice. An endpoint's `silence` bounds each read, the body's too."""
    url = f"{where.url}{path}"
    timeout = {} if where.silence is None else {"timeout": aiohttp.ClientTimeout(
        total=None, sock_connect=where.http.timeout.sock_connect, sock_read=max(where.silence, patience or 0.0))}
    try:
        return await where.http.post(url, data=data, headers=where.headers, **timeout)
    except aiohttp.ServerTimeoutError:
        raise
    except aiohttp.ClientConnectionError:
        return await where.http.post(url, data=data, headers=where.headers, **timeout)


async def _chunks(response: aiohttp.ClientResponse, outcome: CallOutcome, name: str) -> AsyncIterator[bytes]:
    """A streamed body's chunks; reports the outcome here, since the caller iterates outside the call's block
    (an error in its loop never passes through the accounting). A stream that breaks raises `MemberFailed`."""
    try:
        async for chunk in response.content.iter_any():
            # Held while the caller writes the chunk on: a client that stops reading stops the relay reading the
            # member, and the watchdog restarted the member for that silence (any chat key could).
            outcome.held()
            yield chunk
            outcome.progressed()  # asking the member for more from now on
    except aiohttp.ClientError as exc:
        outcome.failed(f"the member's stream broke: {type(exc).__name__}")
        raise MemberFailed(f"member {name}'s stream broke: {type(exc).__name__}") from None
    if 200 <= response.status < 300:
        outcome.succeeded()


def _readable(relayed: Relayed) -> bool:
    """A relayed 2xx body that says it is JSON parses as JSON."""
    if "json" not in relayed.content_type:
        return True
    try:
        orjson.loads(relayed.body)
    except ValueError:
        return False
    return True


async def _stream_choices(response: aiohttp.ClientResponse, outcome: CallOutcome, n: int, start: float,
                          streaming: Streaming | None = None) -> AsyncIterator[tuple[int, MemberReply]]:
    """Read an `n`-choice chat stream (server-sent events): yield each choice when its usage chunk (which
    follows its last chunk) arrives, or when the next event shows the usage is not coming. Each index is yielded
    once; chunks for an index already yielded are ignored. The choices still open are kept in `streaming`; each
    line read is `outcome`'s progress."""
    open_choices: dict[int, _Choice] = Streaming() if streaming is None else streaming
    finished: list[int] = []  # ended, waiting for their usage chunk
    yielded: set[int] = set()

    def ready(usage: dict[str, Any] | None, timings: dict[str, Any]) -> tuple[int, MemberReply]:
        index = finished.pop(0)
        reply = open_choices.pop(index).reply((time.monotonic() - start) * 1000, usage, timings, not yielded)
        yielded.add(index)
        return index, reply

    async for raw_line in response.content:
        outcome.progressed()
        line = raw_line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            chunk = orjson.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        if chunk.get("usage") is not None and finished:
            yield ready(chunk["usage"], chunk.get("timings") or {})
            continue
        while finished:  # a choice ended without a usage chunk
            yield ready(None, {})
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            if not 0 <= index < n or index in yielded:
                continue
            open_choices.setdefault(index, _Choice()).add(choice)
            if choice.get("finish_reason"):
                finished.append(index)
    while finished:
        yield ready(None, {})


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


# What a remote member is sent of a request: OpenAI's chat parameters, and the policy's own sampling. The client's
# body carried every other field to `litellm.acompletion`, which reads its own settings from its arguments: a chat
# key's `base_url` sent the operator's provider key, and the prompt, to a server of the client's choosing
# (`extra_headers`, `custom_llm_provider`, `mock_response` and the rest alike).
REMOTE_FIELDS = frozenset({
    "messages", "temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "stop",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "user", "reasoning_effort", "verbosity", "service_tier", "store",
    "metadata", "prediction", "web_search_options", "modalities", "audio", "prompt_cache_key", "safety_identifier",
    "functions", "function_call", "thinking"})


@dataclass
class RemoteClient:
    """A member served elsewhere, through litellm."""

    remote: RemoteConfig
    limiter: RateLimiter = field(default_factory=NoLimit)
    target: None = None  # a provider's requests are never grouped

    async def choices(self, payload: dict[str, Any], n: int,
                      streaming: Streaming | None = None) -> AsyncIterator[tuple[int, MemberReply]]:
        """`n` separate calls (providers bill `n` choices as separate completions anyway), as they finish."""
        async def one(i: int) -> tuple[int, MemberReply]:
            return i, await self.complete(payload)

        for finished in asyncio.as_completed([one(i) for i in range(n)]):
            yield await finished

    async def complete(self, payload: dict[str, Any]) -> MemberReply:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import
        import litellm

        start = time.monotonic()
        key = os.environ.get(self.remote.api_key_env) if self.remote.api_key_env else None
        try:
            async with self.limiter.slot():
                response = await litellm.acompletion(model=self.remote.model, api_base=self.remote.api_base,
                                                     api_key=key, **{k: v for k, v in payload.items()
                                                                     if k in REMOTE_FIELDS})
        except Exception as exc:  # litellm maps every provider failure to its own exception tree
            return MemberReply(status="error", error=f"{type(exc).__name__}: {str(exc)[:200]}",
                               latency_ms=(time.monotonic() - start) * 1000)
        try:
            return reply_from_openai(response.model_dump(), (time.monotonic() - start) * 1000)
        except NotACompletion as exc:
            return MemberReply(status="error", error=f"{self.remote.model} answered with no chat completion: {exc}",
                               latency_ms=(time.monotonic() - start) * 1000)
