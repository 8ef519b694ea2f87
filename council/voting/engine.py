"""Ask every member of a council at once, stop as soon as the vote is decided, and decide.

The council's `timeout` bounds the whole question; members still out at the deadline are `timeout`,
members still out once no late vote could change the winner are `cancelled` (their HTTP requests are
closed, so their llama-server slots free up). Fewer answers than the quorum is an error, never a guess.
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
from council.voting.extract import canonical_tool_call, extract
from council.voting.vote import Ballot, Decision, VoteError, decide, is_decided, judge_pick, judge_prompt


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

    def to_json(self) -> dict[str, Any]:
        r = self.reply
        return {"name": self.member.name, "model": self.member.model, "status": r.status, "answer": r.text,
                "extracted": self.extracted, "latency_ms": round(r.latency_ms),
                "completion_tokens": r.completion_tokens, "draft_acceptance": r.draft_acceptance,
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

    def usage(self) -> dict[str, int]:
        prompt = sum(o.reply.prompt_tokens for o in self.outcomes)
        completion = sum(o.reply.completion_tokens for o in self.outcomes)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def council_json(self) -> dict[str, Any]:
        """The `council` object of CONTRACT §3 (built once: the response, metrics and ballot all use it)."""
        if self._json is None:
            self._json = self._build_json()
        return self._json

    def _build_json(self) -> dict[str, Any]:
        d = self.decision
        return {"council": self.council, "strategy": self.strategy, "answer": d.answer,
                "agreement": round(d.agreement, 4), "votes": d.votes, "degraded": self.degraded,
                "early_stop": self.early_stop, "tie_broken_by": d.tie_broken_by,
                "winner_members": list(d.winner_members), "judge_fallback": self.judge_fallback,
                "members": [o.to_json() for o in self.outcomes]}


def member_payload(request: dict[str, Any], sampling: Sampling) -> dict[str, Any]:
    """The request as this member gets it: the policy's per-member sampling wins (it is what makes members
    differ); its `system` replaces the request's system message."""
    payload = {k: v for k, v in request.items() if k not in ("model", "stream", "n", "stream_options")}
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
    """One council at run time: its members' clients and its vote."""

    def __init__(self, name: str, config: CouncilConfig, members: list[Seat],
                 ballots: BallotStore | None = None) -> None:
        self.name = name
        self.config = config
        self.members = members
        self.ballots = ballots if ballots is not None else BallotStore()

    def _value(self, member: Seat) -> float:
        return 1.0 if self.config.vote.strategy in ("majority", "judge") else member.weight

    def _ballot(self, outcome: MemberOutcome) -> Ballot:
        m, r = outcome.member, outcome.reply
        return Ballot(member=m.name, order=m.order, answer=outcome.extracted, text=r.text, weight=m.weight,
                      latency_ms=r.latency_ms, logprob=r.logprob)

    async def ask(self, request: dict[str, Any]) -> CouncilAnswer:
        """Fan `request` (an OpenAI chat request body) out to every member and decide."""
        vote = self.config.vote
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.timeout
        tasks = {asyncio.create_task(m.client.complete(member_payload(request, m.sampling))): m for m in self.members}
        outcomes: dict[str, MemberOutcome] = {}
        early = False
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # the council's deadline
                for task in done:
                    member = tasks[task]
                    reply = task.result()
                    outcomes[member.name] = MemberOutcome(member, reply, extract_reply(reply, vote.extract)
                                                          if reply.status == "ok" else None)
                answered = [o for o in outcomes.values() if o.reply.status == "ok"]
                still_out = sum(self._value(tasks[t]) for t in pending)
                if pending and len(answered) >= self.config.quorum_count() and is_decided(
                        [self._ballot(o) for o in answered], still_out, vote.strategy):
                    early = True
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        for task in pending:
            member = tasks[task]
            status = "cancelled" if early else "timeout"
            error = None if early else f"no answer within the council's {self.config.timeout:g}s"
            waited = (loop.time() - started) * 1000
            outcomes[member.name] = MemberOutcome(member, MemberReply(status=status, error=error, latency_ms=waited))
        ordered = [outcomes[m.name] for m in self.members]
        answered = [o for o in ordered if o.reply.status == "ok"]
        if not answered and all(o.reply.rejected for o in ordered):
            raise RequestRejected(self.name, ordered[0].reply.error or "")
        if len(answered) < self.config.quorum_count():
            raise QuorumError(self.name, f"only {len(answered)} of {len(self.members)} members answered; the quorum "
                              f"is {self.config.quorum_count()}", ordered)
        ballots = [self._ballot(o) for o in answered]
        judge_fallback = False
        try:
            decision = decide(ballots, vote.strategy, vote.tie_break)
            if vote.strategy == "judge":
                picked = await self._judge(request, ballots)
                judge_fallback = picked is None
                decision = picked or decision
        except VoteError as exc:
            raise QuorumError(self.name, str(exc), ordered) from None
        answer = CouncilAnswer(id=f"chatcmpl-{uuid.uuid4().hex}", council=self.name, strategy=vote.strategy,
                               decision=decision, outcomes=ordered, early_stop=early, judge_fallback=judge_fallback)
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
                "answers": [{"member": o.member.name, "text": o.reply.text, "weight": o.member.weight,
                             "latency_ms": round(o.reply.latency_ms)} for o in answer.outcomes
                            if o.reply.status == "ok"]}
