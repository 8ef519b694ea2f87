"""Ask a council's members, stop as soon as the vote is decided, and decide.

Members are asked stage by stage (one stage of everyone, unless the council has a `cascade`): a later stage
is asked only when the stages before it did not agree; its members are `skipped` otherwise. The council's
`timeout` bounds the whole question; members still out at the deadline are `timeout`, members still out
once no late vote could change the winner are `cancelled` (their HTTP requests are closed, so their
llama-server slots free up). Fewer answers than the quorum is an error, never a guess.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from council.errors import CouncilError
from council.policy.schema import CouncilConfig, Sampling
from council.voting.ballots import BallotStore
from council.voting.client import MemberClient, MemberReply
from council.voting.confidence import signals
from council.voting.extract import canonical_tool_call, extract
from council.voting.lanes import Call, Rates, group_calls, lanes
from council.voting.vote import (
    Ballot,
    Decision,
    VoteError,
    decide,
    is_decided,
    judge_pick,
    judge_prompt,
    stage_agrees,
)


@dataclass(frozen=True)
class Seat:
    """A member's place in a council: its name, order, model, weight, sampling and the client that asks it.
    (A `MemberProcess` is a llama-server process; several seats may share one.)"""

    name: str
    order: int
    model: str
    weight: float
    sampling: Sampling
    client: MemberClient


@dataclass
class MemberOutcome:
    member: Seat
    reply: MemberReply
    extracted: str | None = None
    confidence: float | None = None  # the member's probability of its answer (from token logprobs)
    stage: int = 1
    signals: dict[str, float] | None = None  # every confidence signal (council eval scores each)

    def to_json(self) -> dict[str, Any]:
        r = self.reply
        return {"name": self.member.name, "model": self.member.model, "weight": self.member.weight,
                "status": r.status, "answer": r.text,
                "extracted": self.extracted, "latency_ms": round(r.latency_ms),
                "completion_tokens": r.completion_tokens, "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "draft_acceptance": r.draft_acceptance,
                "confidence": None if self.confidence is None else round(self.confidence, 6),
                "confidence_signals": self.signals, "stage": self.stage,
                **({"error": r.error} if r.error else {})}


class QuorumError(CouncilError, RuntimeError):
    """Fewer members answered than the council's quorum (or every answer abstained)."""

    def __init__(self, council: str, message: str, outcomes: list[MemberOutcome]) -> None:
        super().__init__(f"council {council}: {message}")
        self.outcomes = outcomes


class RequestRejected(CouncilError, ValueError):
    """Every member refused the request itself (4xx): the request is at fault, not the members."""

    def __init__(self, council: str, reason: str) -> None:
        super().__init__(f"council {council}: every member rejected the request: {reason}")


@dataclass
class CouncilAnswer:
    id: str
    council: str
    strategy: str
    decision: Decision
    outcomes: list[MemberOutcome]
    early_stop: bool
    judge_fallback: bool = False
    stage: int = 1  # the cascade stage that decided (1 without a cascade)
    stages: int = 1
    _json: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def degraded(self) -> bool:
        return any(o.reply.status in ("timeout", "error") for o in self.outcomes)

    @property
    def winner(self) -> MemberOutcome | None:
        return next((o for o in self.outcomes if o.member.name == self.decision.winner_members[0]), None)

    @property
    def logprobs(self) -> dict[str, Any] | None:
        """The winning member's token logprobs, when the request asked for them."""
        winner = self.winner
        return winner.reply.logprobs if winner is not None else None

    @property
    def message(self) -> dict[str, Any]:
        """The winning member's message (its tool calls included), as the council's reply."""
        winner = self.winner
        if winner is not None and winner.reply.message is not None:
            return {"role": "assistant", **{k: v for k, v in winner.reply.message.items() if k != "role"}}
        return {"role": "assistant", "content": self.decision.text or self.decision.answer}

    def usage(self) -> dict[str, Any]:
        """OpenAI usage over every request sent: a group's prompt counts once; `cached_tokens` are the prompt
        tokens the servers found in their caches (a chained lane's later members read only the rest)."""
        prompt = sum(o.reply.prompt_tokens for o in self.outcomes)
        completion = sum(o.reply.completion_tokens for o in self.outcomes)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(o.reply.cached_tokens for o in self.outcomes)}}

    def council_json(self) -> dict[str, Any]:
        """The `council` object of the README's `council serve` (built once: response, metrics, ballot use it)."""
        if self._json is None:
            self._json = self._build_json()
        return self._json

    def _build_json(self) -> dict[str, Any]:
        d = self.decision
        return {"council": self.council, "strategy": self.strategy, "answer": d.answer,
                "agreement": round(d.agreement, 4), "votes": d.votes, "degraded": self.degraded,
                "early_stop": self.early_stop, "tie_broken_by": d.tie_broken_by,
                "winner_members": list(d.winner_members), "judge_fallback": self.judge_fallback,
                "stage": self.stage, "stages": self.stages, "members": [o.to_json() for o in self.outcomes]}


def member_payload(request: dict[str, Any], sampling: Sampling) -> dict[str, Any]:
    """The request as this member gets it: the policy's per-member sampling wins (it is what makes members
    differ); its `system` replaces the request's system message."""
    payload = {k: v for k, v in request.items() if k not in ("model", "stream", "n", "stream_options", "council")}
    for key in ("temperature", "top_p", "top_k", "seed", "max_tokens"):
        value = getattr(sampling, key)
        if value is not None:
            payload[key] = value
    if sampling.system is not None:
        rest = [m for m in payload.get("messages", []) if m.get("role") != "system"]
        payload["messages"] = [{"role": "system", "content": sampling.system}, *rest]
    return payload


def extract_reply(reply: MemberReply, how: str) -> str | None:
    """A tool call votes as `name(canonical JSON args)`; anything else through the council's extractor."""
    calls = (reply.message or {}).get("tool_calls") or []
    if calls:
        fn = calls[0].get("function") or {}
        return canonical_tool_call(fn.get("name") or "", fn.get("arguments") or "{}")
    return extract(reply.text, how)


class CouncilEngine:
    """One council at run time: its seats' clients and its vote."""

    def __init__(self, name: str, config: CouncilConfig, members: list[Seat],
                 ballots: BallotStore | None = None) -> None:
        self.name = name
        self.config = config
        self.members = members
        self.ballots = ballots if ballots is not None else BallotStore()
        self.rates: dict[str, Rates] = {}  # per process (seat target): what decides `prompt_reuse: auto`

    def _value(self, member: Seat) -> float:
        """The most a seat still out can add to one answer (confidence votes are at most the weight)."""
        return 1.0 if self.config.vote.strategy in ("majority", "judge") else member.weight

    def _ballot(self, outcome: MemberOutcome) -> Ballot:
        m, r = outcome.member, outcome.reply
        return Ballot(member=m.name, order=m.order, answer=outcome.extracted, text=r.text, weight=m.weight,
                      latency_ms=r.latency_ms, logprob=r.logprob, confidence=outcome.confidence)

    def _outcome(self, seat: Seat, reply: MemberReply, stage: int) -> MemberOutcome:
        how = self.config.vote.extract
        if reply.status != "ok":
            return MemberOutcome(seat, reply, stage=stage)
        extracted = extract_reply(reply, how)
        found = signals(reply.logprobs, reply.text, extracted, how)
        return MemberOutcome(seat, reply, extracted, found[self.config.vote.confidence] if found else None, stage,
                             found)

    def payload(self, request: dict[str, Any], seat: Seat) -> dict[str, Any]:
        payload = member_payload(request, seat.sampling)
        if self.config.vote.strategy == "confidence":
            payload.setdefault("logprobs", True)  # the confidence vote reads the members' token logprobs
        return payload

    def calls(self, request: dict[str, Any], seats: list[Seat]) -> list[Call[Seat]]:
        """The requests that ask `seats` (seats differing only in seed share one, with `n`)."""
        return group_calls([(seat, self.payload(request, seat)) for seat in seats], self.config.share_prompt)

    def lanes(self, request: dict[str, Any], seats: list[Seat]) -> list[list[Call[Seat]]]:
        """The requests as lanes: one lane's requests go one after another (reusing one prompt), lanes at once."""
        return lanes(self.calls(request, seats), self.config.prompt_reuse, self.rates)

    async def ask(self, request: dict[str, Any], *, early_stop: bool = True) -> CouncilAnswer:
        """Ask `request` (an OpenAI chat request body) and decide. `early_stop=False` (evaluation) asks every
        seat of every stage and waits for each, so every member's answer is known."""
        vote = self.config.vote
        temperature = vote.confidence_temperature
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.timeout
        stages = self.config.stages() if early_stop else [list(range(len(self.members)))]
        stage_of = {self.members[i].name: n for n, stage in enumerate(stages, 1) for i in stage}
        arrivals: asyncio.Queue[tuple[Seat, MemberReply]] = asyncio.Queue()
        outcomes: dict[str, MemberOutcome] = {}
        tasks: list[asyncio.Task[None]] = []
        asked: list[Seat] = []
        early = timed_out = False
        decided_at = len(stages)

        async def arrive(seat: Seat, reply: MemberReply) -> None:
            if seat.client.target is not None:
                self.rates.setdefault(seat.client.target, Rates()).observe(reply)
            await arrivals.put((seat, reply))

        async def run(lane: list[Call[Seat]]) -> None:
            for call in lane:  # one after another: each finds the prompt the last one left in the cache
                if len(call.seats) == 1:
                    await arrive(call.seats[0], await call.seats[0].client.complete(call.payload))
                    continue
                async for index, reply in call.seats[0].client.choices(call.payload, len(call.seats)):
                    await arrive(call.seats[index], reply)  # each choice votes as it ends (early stop can cut in)

        try:
            for number, stage in enumerate(stages, 1):
                seats = [self.members[i] for i in stage]
                asked += seats
                tasks += [asyncio.create_task(run(lane)) for lane in self.lanes(request, seats)]
                waiting = {seat.name for seat in seats}
                while waiting:
                    try:
                        seat, reply = await asyncio.wait_for(arrivals.get(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        timed_out = True
                        break
                    outcomes[seat.name] = self._outcome(seat, reply, number)
                    waiting.discard(seat.name)
                    answered = [self._ballot(o) for o in outcomes.values() if o.reply.status == "ok"]
                    still_out = sum(self._value(m) for m in self.members if m.name not in outcomes)
                    if (early_stop and still_out and len(answered) >= self.config.quorum_count(len(asked))
                            and is_decided(answered, still_out, vote.strategy, temperature)):
                        early = True
                        break
                if early or timed_out:
                    decided_at = number
                    break
                answered = [self._ballot(o) for o in outcomes.values() if o.reply.status == "ok"]
                if not answered and all(o.reply.rejected for o in outcomes.values()):
                    break  # the request itself is refused: later stages would refuse it too
                if number < len(stages) and len(answered) >= self.config.quorum_count(len(asked)) and stage_agrees(
                        answered, vote.strategy, vote.cascade.agreement if vote.cascade else 1.0, temperature):
                    decided_at = number
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        waited = (loop.time() - started) * 1000
        for seat in self.members:
            if seat.name in outcomes:
                continue
            if seat not in asked:
                reply = MemberReply(status="skipped")
            elif early:
                reply = MemberReply(status="cancelled", latency_ms=waited)
            else:
                reply = MemberReply(status="timeout", latency_ms=waited,
                                    error=f"no answer within the council's {self.config.timeout:g}s")
            outcomes[seat.name] = MemberOutcome(seat, reply, stage=stage_of[seat.name])
        ordered = [outcomes[m.name] for m in self.members]
        answered_outcomes = [o for o in ordered if o.reply.status == "ok"]
        if not answered_outcomes and all(o.reply.rejected for o in ordered if o.reply.status != "skipped"):
            raise RequestRejected(self.name, next(o.reply.error for o in ordered if o.reply.rejected) or "")
        need = self.config.quorum_count(len(asked))
        if len(answered_outcomes) < need:
            raise QuorumError(self.name, f"only {len(answered_outcomes)} of {len(asked)} members answered; "
                              f"the quorum is {need}", ordered)
        ballots = [self._ballot(o) for o in answered_outcomes]
        judge_fallback = False
        try:
            decision = decide(ballots, vote.strategy, vote.tie_break, temperature=temperature)
            if vote.strategy == "judge":
                picked = await self._judge(request, ballots)
                judge_fallback = picked is None
                decision = picked or decision
        except VoteError as exc:
            raise QuorumError(self.name, str(exc), ordered) from None
        answer = CouncilAnswer(id=f"chatcmpl-{uuid.uuid4().hex}", council=self.name, strategy=vote.strategy,
                               decision=decision, outcomes=ordered, early_stop=early, judge_fallback=judge_fallback,
                               stage=decided_at, stages=len(stages))
        self.ballots.put(answer.id, self.ballot_record(answer))
        return answer

    async def _judge(self, request: dict[str, Any], ballots: list[Ballot]) -> Decision | None:
        """The judge member picks an answer by number; None (fall back to majority) when it cannot."""
        judge = self.config.vote.judge
        member = next((m for m in self.members if judge in (m.order, m.name)), None)
        if member is None:
            return None
        question = next((m.get("content") for m in reversed(request.get("messages", []))
                         if m.get("role") == "user"), "") or ""
        prompt, candidates = judge_prompt(str(question), ballots)
        if not candidates:
            return None
        reply = await member.client.complete({"messages": [{"role": "user", "content": prompt}],
                                              "temperature": 0, "max_tokens": 16})
        return judge_pick(reply.text if reply.status == "ok" else None, candidates, ballots, self.config.vote.tie_break)

    def ballot_record(self, answer: CouncilAnswer) -> dict[str, Any]:
        """The full ballot: the council object plus the raw answers, in `council tally`'s input format."""
        return {"id": answer.id, "created": int(time.time()), **answer.council_json(),
                "extract": self.config.vote.extract, "tie_break": list(self.config.vote.tie_break),
                "confidence_temperature": self.config.vote.confidence_temperature,
                "answers": [{"member": o.member.name, "text": o.reply.text, "weight": o.member.weight,
                             "latency_ms": round(o.reply.latency_ms), "confidence": o.confidence,
                             "completion_tokens": o.reply.completion_tokens} for o in answer.outcomes
                            if o.reply.status == "ok"]}
