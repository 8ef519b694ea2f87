"""A scripted `MemberClient` (as httpx's `MockTransport` stands in for a network): each seat answers what its
script says after the script's delay, so the engine's quorum, cascade, deadline and early-stop logic can be
tested in-process in milliseconds, beside the real-process tests in test_engine.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from council.policy.schema import CouncilConfig
from council.voting.client import MemberReply, Status
from council.voting.engine import CouncilEngine, Seat


@dataclass(frozen=True)
class Say:
    """One scripted reply: `text` after `delay` seconds (a `status` other than ok answers without text)."""

    text: str = ""
    delay: float = 0.0
    status: Status = "ok"
    http_status: int | None = None  # a member's own refusal (4xx) or failure (5xx)
    logprobs: dict[str, Any] | None = None
    message: dict[str, Any] | None = None  # the whole message (tool calls), else {"content": text}
    finish_reason: str | None = None  # `length`: cut off by max_tokens

    def reply(self, latency_ms: float) -> MemberReply:
        if self.status != "ok" or self.http_status is not None:
            return MemberReply(status="error" if self.status == "ok" else self.status, latency_ms=latency_ms,
                               http_status=self.http_status, error=f"scripted {self.http_status or self.status}")
        message = self.message or {"role": "assistant", "content": self.text}
        return MemberReply(status="ok", text=self.text, message=message, latency_ms=latency_ms,
                           prompt_tokens=3, completion_tokens=max(1, len(self.text.split())), logprobs=self.logprobs,
                           finish_reason=self.finish_reason)


Script = Say | Callable[[Mapping[str, Any]], Say]  # a reply, or one chosen from the payload (a judge's prompt)


@dataclass
class FakeClient:
    """A member that follows its script. It records what it was sent, how many calls are in flight and how many
    were cancelled (an early stop or a deadline closes them, as the HTTP client closes a connection)."""

    script: Script
    target: str | None = None  # None: never grouped into one `n` request
    sent: list[Mapping[str, Any]] = field(default_factory=list)
    grouped: list[int] = field(default_factory=list)  # the `n` of each grouped request (`choices`) it was sent
    in_flight: int = 0
    cancelled: int = 0

    async def complete(self, payload: Mapping[str, Any]) -> MemberReply:
        say = self.script(payload) if callable(self.script) else self.script
        self.sent.append(payload)
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await asyncio.sleep(say.delay)  # the member generating (not synchronisation: the behaviour scripted)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return say.reply((loop.time() - start) * 1000)

    async def choices(self, payload: Mapping[str, Any], n: int,
                      streaming: object = None) -> AsyncIterator[tuple[int, MemberReply]]:
        self.grouped.append(n)

        async def one(i: int) -> tuple[int, MemberReply]:
            return i, await self.complete(payload)

        for finished in asyncio.as_completed([one(i) for i in range(n)]):
            yield await finished


def council(config: Mapping[str, Any], *scripts: Script, name: str = "c") -> tuple[CouncilEngine, list[FakeClient]]:
    """An engine for `config` (a council's policy entry; members default to `{model: m}`, one per script) whose
    seats, in order, follow `scripts`, and the fake clients behind them."""
    members = [{"model": "m", **m} for m in config.get("members", [{}] * len(scripts))]
    return engine_of(CouncilConfig.model_validate({**config, "members": members}), *scripts, name=name)


def engine_of(config: CouncilConfig, *scripts: Script, name: str = "c") -> tuple[CouncilEngine, list[FakeClient]]:
    """An engine for a parsed council configuration (a planner's fallback, say) over scripted seats."""
    seats_of = config.seats(name)
    assert len(seats_of) == len(scripts), f"{len(seats_of)} seats, {len(scripts)} scripts"
    clients = [FakeClient(script) for script in scripts]
    seats = [Seat(name=seat_name, order=i, model=member.model, weight=member.weight, sampling=member.sampling,
                  client=client, tool_instructions=member.tool_instructions)
             for i, ((seat_name, member, _), client) in enumerate(zip(seats_of, clients, strict=True))]
    return CouncilEngine(name, config, seats), clients
