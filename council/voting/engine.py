"""Ask a council's members, stop as soon as the vote is decided, and decide.

Members are asked stage by stage (one stage of everyone, unless the council has a `cascade`): a later stage
is asked only when the stages before it did not agree; its members are `skipped` otherwise. The council's
`timeout` bounds the whole question; members still out at the deadline are `timeout`, members still out
once no late vote could change the winner are `cancelled` (their HTTP requests are closed, so their
llama-server slots free up; `STRAGGLER_GRACE` after the answer, not before it, so a seat whose reply is already
on its way keeps its connection). Fewer answers than the quorum is an error, never a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from council.errors import CouncilError
from council.policy.schema import CouncilConfig, Sampling, ToolInstructions
from council.voting.ballots import BallotStore
from council.voting.client import MemberClient, MemberReply, Streaming
from council.voting.confidence import signals
from council.voting.extract import canonical_tool_call, extract, extract_cut
from council.voting.lanes import Call, Rates, group_calls, lanes
from council.voting.request import CouncilRequest, dumps
from council.voting.tools import (
    CUT_OFF,
    CUT_OFF_CALL,
    FOLLOW_UP_RULE,
    ToolAnswer,
    Toolbox,
    ToolDecision,
    ballot_text,
    calls_as_text,
    decide_tools,
    read_answer,
    tool_instructions,
)
from council.voting.vote import (
    Ballot,
    Decision,
    Stop,
    VoteError,
    decide,
    judge_pick,
    judge_prompt,
    judge_request,
    seat_value,
    stop_after,
)

log = logging.getLogger("council.voting.engine")

# After an early stop, how long a seat still out may finish before its request is closed (the answer does not
# wait for it). Seats asked at once often end within a moment of each other; closing a request whose reply is
# arriving throws its connection away, and the next question pays a new one (~10% of a 3-seat council's router
# CPU against an instant member, bench/hotpath.py). A few ms of a straggler's generation is what it costs.
STRAGGLER_GRACE = 0.005


def _retrieve(task: asyncio.Task[None]) -> None:
    """A straggler's end, read so that an error in it is not reported as never retrieved (a lane turns a member's
    failure into a reply; anything else was already lost with the vote decided)."""
    if not task.cancelled():
        task.exception()


def _close_stragglers(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


@dataclass(frozen=True)
class Seat:
    """A member's place in a council: its name, order, model, weight, sampling, the client that asks it and its
    member's own `tool_instructions` (None: the council's). (A `MemberProcess` is a llama-server process; several
    seats may share one.)"""

    name: str
    order: int
    model: str
    weight: float
    sampling: Sampling
    client: MemberClient
    tool_instructions: ToolInstructions | None = None


Bodies = Callable[[Seat], Mapping[str, Any]]  # the body each seat starts from (`CouncilEngine.seat_bodies`)
T = TypeVar("T")


@dataclass
class SeatOutcome:
    seat: Seat
    reply: MemberReply
    extracted: str | None = None
    confidence: float | None = None  # the member's probability of its answer (from token logprobs)
    stage: int = 1
    signals: dict[str, float] | None = None  # every confidence signal (council eval scores each)
    abstained: str | None = None  # why an answered reply has no vote, where the engine withheld it
    tool: ToolAnswer | None = None  # with `tools` in the request: its calls, their verdicts, `recovered`

    def to_json(self) -> dict[str, Any]:
        r = self.reply
        return {"name": self.seat.name, "model": self.seat.model, "weight": self.seat.weight,
                "status": r.status, "answer": r.text,
                # Unrounded, with the mean token logprob: the tie-break rules `latency` and `logprob` read them, and
                # `council eval` replays the vote from this entry.
                "extracted": self.extracted, "latency_ms": r.latency_ms, "logprob": r.logprob,
                "completion_tokens": r.completion_tokens, "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "draft_acceptance": r.draft_acceptance,
                "confidence": None if self.confidence is None else round(self.confidence, 6),
                "confidence_signals": self.signals, "stage": self.stage, "finish_reason": r.finish_reason,
                **({"abstained": self.abstained} if self.abstained else {}),
                **({"error": r.error} if r.error else {}),
                **(self.tool.to_json() if self.tool is not None else {})}



class QuorumError(CouncilError, RuntimeError):
    """Fewer seats answered than the council's quorum (or every answer abstained)."""

    def __init__(self, council: str, message: str, outcomes: list[SeatOutcome]) -> None:
        super().__init__(f"council {council}: {message}")
        self.outcomes = outcomes


class NoValidAnswer(QuorumError):
    """Enough seats answered, and every answer abstained (calls that fail their schema, nothing to extract): the
    replies were unusable, not too few. `retry`: whether asking again may help (a seat failed; otherwise the same
    seats asked the same question answer alike: greedy, or a seed mixed with the question)."""

    def __init__(self, council: str, message: str, outcomes: list[SeatOutcome]) -> None:
        super().__init__(council, message, outcomes)
        self.retry = any(o.reply.status in ("timeout", "error") for o in outcomes)


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
    outcomes: list[SeatOutcome]
    early_stop: bool
    judge_fallback: bool = False
    stage: int = 1  # the cascade stage that decided (1 without a cascade)
    stages: int = 1
    # With `tools` in the request: the council's calls as returned (fresh ids; [] answers with text), the tool
    # vote's details, and the declared tools (the ballot keeps them, so `council tally` re-checks the calls).
    tool_calls: list[dict[str, Any]] | None = None
    tool_decision: ToolDecision | None = None
    tools: tuple[Any, ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool = True  # False: each seat's first call alone votes (the ballot keeps it for tally)
    judge: tuple[str, MemberReply] | None = None  # with `judge`: who judged and what its call cost (or why not)
    _json: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def degraded(self) -> bool:
        return any(o.reply.status in ("timeout", "error") for o in self.outcomes)

    @property
    def speaker(self) -> SeatOutcome | None:
        """The seat whose reply is the council's: the one the decision names (similarity: the medoid; judge:
        the answer it picked), not merely the first seat that voted for the winning answer."""
        name = self.decision.speaker or self.decision.winner_members[0]
        return next((o for o in self.outcomes if o.seat.name == name), None)

    @property
    def finish_reason(self) -> str:
        """The council's own: `length` when its winning reply was cut off by max_tokens (its text is unfinished),
        `tool_calls` when it calls tools, else `stop`."""
        if self.tool_calls:
            return "tool_calls"
        speaker = self.speaker
        if speaker is not None and speaker.reply.finish_reason == "length":
            return "length"
        return "tool_calls" if self.message.get("tool_calls") else "stop"

    @property
    def logprobs(self) -> dict[str, Any] | None:
        """The speaker's token logprobs, when the request asked for them."""
        speaker = self.speaker
        return speaker.reply.logprobs if speaker is not None else None

    @property
    def message(self) -> dict[str, Any]:
        """The speaker's message (its tool calls included), as the council's reply; with `tools` in the request,
        the council's own calls (never a call that fails its schema), or the speaker's text without calls."""
        speaker = self.speaker
        if self.tool_calls:
            # The speaker's own words beside its calls ("I'll look that up"), where its calls are the council's
            # and its tool-call syntax was parsed (a recovered call's text is the call itself): an agent shows them.
            text = speaker.reply.text if speaker is not None and self._speaks_for_the_calls(speaker) else None
            return {"role": "assistant", "content": text or None, "tool_calls": self.tool_calls}
        if self.tool_calls is not None and speaker is not None:
            own = {k: v for k, v in (speaker.reply.message or {}).items() if k not in ("role", "tool_calls")}
            return {"role": "assistant", **own, "content": speaker.reply.text or ""}
        if speaker is not None and speaker.reply.message is not None:
            return {"role": "assistant", **{k: v for k, v in speaker.reply.message.items() if k != "role"}}
        return {"role": "assistant", "content": self.decision.text or self.decision.answer}

    def _speaks_for_the_calls(self, speaker: SeatOutcome) -> bool:
        own = speaker.tool
        if own is None or own.recovered or self.tool_decision is None or not speaker.reply.text.strip():
            return False
        return {c.key for c in own.calls} == {c.key for c in self.tool_decision.calls}

    def usage(self) -> dict[str, Any]:
        """OpenAI usage over every request sent, the judge's too: a group's prompt counts once; `cached_tokens` are
        the prompt tokens the servers found in their caches (a chained lane's later members read only the rest)."""
        replies = [o.reply for o in self.outcomes]
        if self.judge is not None:
            replies.append(self.judge[1])
        prompt = sum(r.prompt_tokens for r in replies)
        completion = sum(r.completion_tokens for r in replies)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in replies)}}

    def context_usage(self) -> tuple[int, int, int]:
        """Prompt, cached and completion tokens as one model's answer would count them: the prompt as the seat that
        read the most of it counts it (what an agent's context window holds), the answer's own tokens. The agents'
        APIs report these (an agent compacts its context by them); `usage()` is every request's, the cost."""
        prompt, cached = max(((o.reply.prompt_tokens, o.reply.cached_tokens) for o in self.outcomes), default=(0, 0))
        speaker = self.speaker
        return prompt, cached, speaker.reply.completion_tokens if speaker else 0

    def council_json(self) -> dict[str, Any]:
        """The response's `council` object (README, "council serve"); built once: the response, metrics and
        ballot all use it."""
        if self._json is None:
            self._json = self._build_json()
        return self._json

    def _build_json(self) -> dict[str, Any]:
        d = self.decision
        return {"council": self.council, "strategy": self.strategy, "answer": d.answer,
                "agreement": round(d.agreement, 4), "votes": d.votes, "degraded": self.degraded,
                "early_stop": self.early_stop, "tie_broken_by": d.tie_broken_by,
                "winner_members": list(d.winner_members), "speaker": d.speaker, "judge_fallback": self.judge_fallback,
                "stage": self.stage, "stages": self.stages, "members": [o.to_json() for o in self.outcomes],
                **({"judge": _judge_json(*self.judge)} if self.judge is not None else {}),
                **({"tool_vote": self.tool_decision.to_json()} if self.tool_decision is not None else {})}


def _judge_json(member: str, reply: MemberReply) -> dict[str, Any]:
    """The judge's call in the `council` object: its tokens are in `usage`, this says whose they are."""
    return {"member": member, "status": reply.status, "latency_ms": round(reply.latency_ms),
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            **({"error": reply.error} if reply.error else {})}


def member_payload(request: Mapping[str, Any], sampling: Sampling) -> dict[str, Any]:
    """The body one seat is sent: the request's pass-through fields (`CouncilRequest.members_payload`) with the
    policy's per-member sampling on top (it is what makes members differ). Its `system` is added to the
    request's system message, never replaces it: an agent's instructions reach every member. Everything else
    (tool results, assistant turns with their tool calls, tools, `tool_choice`) passes as it is."""
    payload = dict(request)
    for key in ("temperature", "top_p", "top_k", "seed", "max_tokens"):
        value = getattr(sampling, key)
        if value is not None:
            payload[key] = value
    if sampling.system is not None:
        payload["messages"] = with_system(payload.get("messages") or [], sampling.system)
    return payload


def question_salt(body: Mapping[str, Any]) -> int:
    """A 32-bit hash of what a seat is asked (its messages and tools), mixed into a fixed seed (`salted`)."""
    return zlib.crc32(dumps([body.get("messages"), body.get("tools")]))


def salted(seed: Any, salt: int) -> Any:
    """A fixed seed made the question's own: the same question gets the same draws (a seeded run repeats), other
    questions other draws. A seed alone replayed one sequence of random numbers on every question, so sample k
    drew its tokens from the same tail at the same steps each time, and a few samples were wrong on most
    questions (BFCL: two of eight samples right on 95 of 240 items, the others on about 160). A negative seed
    (llama-server's "random") and none are left as they are."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return seed
    return (seed + salt) % 0xFFFFFFFF  # 0xFFFFFFFF is llama-server's "random"


def with_system(messages: list[Any], system: str, before: bool = False) -> list[Any]:
    """`messages` with `system` after (`before`: ahead of) the leading system (or developer) message's text, in
    that one message: most chat templates accept a single system message, and only in first place. Without one,
    `system` leads."""
    first = messages[0] if messages else None
    if not isinstance(first, Mapping) or first.get("role") not in ("system", "developer"):
        return [{"role": "system", "content": system}, *messages]
    content = first.get("content")
    if isinstance(content, list):  # text parts (the only parts a system message takes): joined as they render
        content = "\n".join(str(p.get("text") or "") for p in content if isinstance(p, Mapping))
    merged = (f"{system}\n\n{content}" if before else f"{content}\n\n{system}") if content else system
    return [{**first, "content": merged}, *messages[1:]]


def extract_reply(reply: MemberReply, how: str) -> str | None:
    """Without declared tools (with them: `council.voting.tools`): tool calls vote as the set of
    `name(canonical JSON args)`; anything else through the council's extractor. A reply cut off by max_tokens
    votes only with an answer it stated (`extract_cut`): the last number of unfinished reasoning is no answer."""
    calls = (reply.message or {}).get("tool_calls") or []
    if calls:
        keys = [canonical_tool_call((c.get("function") or {}).get("name") or "",
                                    (c.get("function") or {}).get("arguments") or "{}") for c in calls]
        return None if None in keys else "\n".join(sorted({k for k in keys if k is not None}))
    return extract_cut(reply.text, how) if reply.finish_reason == "length" else extract(reply.text, how)


@dataclass
class Collected:
    """What asking the seats gave: every seat's outcome in council order, and how the asking ended."""

    outcomes: list[SeatOutcome]
    asked: int  # seats asked (the quorum counts these)
    early: bool  # stopped early: no vote still out could change the winner
    stage: int  # the stage at which asking ended
    stages: int
    deadline: float  # the council's (event loop time): what the judge's call has left


class CouncilEngine:
    """One council at run time: its seats' clients and its vote."""

    def __init__(self, name: str, config: CouncilConfig, seats: list[Seat],
                 ballots: BallotStore | None = None) -> None:
        self.name = name
        self.config = config
        self.seats = seats
        self.ballots = ballots if ballots is not None else BallotStore()
        self.rates: dict[str, Rates] = {}  # per process (seat target): what decides `prompt_reuse: auto`

    def _ballot(self, outcome: SeatOutcome) -> Ballot:
        m, r = outcome.seat, outcome.reply
        return Ballot(member=m.name, order=m.order, answer=outcome.extracted,
                      text=r.text if outcome.tool is None else ballot_text(outcome.tool, r.text), weight=m.weight,
                      latency_ms=r.latency_ms, logprob=r.logprob, confidence=outcome.confidence)

    def _outcome(self, seat: Seat, reply: MemberReply, stage: int, toolbox: Toolbox | None = None) -> SeatOutcome:
        how = self.config.vote.extract
        if reply.status != "ok":
            return SeatOutcome(seat, reply, stage=stage)
        if toolbox is not None:
            try:
                tool = read_answer(reply.message, reply.text, reply.finish_reason, toolbox,
                                   self.config.vote.recover_tool_calls)
            except Exception as exc:  # the seat answered: a fault in checking its calls is its abstention, never
                # the vote's fault (a 500) nor its lane's (the seat reported as a timeout)
                log.exception("council %s: the calls of %s could not be checked", self.name, seat.name)
                tool = ToolAnswer(vote=None, abstained=f"its calls could not be checked: {type(exc).__name__}: {exc}")
            found = signals(reply.logprobs, reply.text, tool.vote, how)
            return SeatOutcome(seat, reply, tool.vote, found[self.config.vote.confidence] if found else None, stage,
                               found, tool.abstained, tool)
        try:
            extracted = extract_reply(reply, how)
            found = signals(reply.logprobs, reply.text, extracted, how)
        except Exception as exc:  # as with calls: a reply the extractor cannot read is its seat's abstention,
            # never the whole vote's fault (a 500) nor its lane's (the seat reported as a timeout)
            log.exception("council %s: the reply of %s could not be read", self.name, seat.name)
            return SeatOutcome(seat, reply, None, None, stage, None,
                               f"its reply could not be read: {type(exc).__name__}: {exc}")
        if extracted is not None:
            why = None
        elif reply.finish_reason == "length":
            why = CUT_OFF  # it stopped before it answered
        else:  # the 502 that follows when every seat abstains names each one's reason
            why = "an empty reply" if not reply.text.strip() else f"no answer found by vote.extract ({how})"
        return SeatOutcome(seat, reply, extracted, found[self.config.vote.confidence] if found else None, stage,
                           found, why)

    def payload(self, body: Mapping[str, Any], seat: Seat, salt: Callable[[], int] | None = None) -> dict[str, Any]:
        payload = member_payload(body, seat.sampling)
        if salt is not None and "seed" in payload:  # hashed only where a seat is seeded
            payload["seed"] = salted(payload["seed"], salt())
        # The confidence vote reads the members' token logprobs; llama-server refuses logprobs with tools on a
        # streamed (grouped) request, so tool-calling seats vote at their weight instead.
        if self.config.vote.strategy == "confidence" and not body.get("tools"):
            payload.setdefault("logprobs", True)
        return payload

    def calls(self, body: Mapping[str, Any] | Bodies, seats: list[Seat]) -> list[Call[Seat]]:
        """The requests that ask `seats` with `body` (the members' payload: one for every seat, or each seat's,
        `seat_bodies`); seats whose payloads differ only in seed share one, with `n` (a member's samples, which
        take its one body)."""
        body_of = body if callable(body) else lambda _: body
        salts: dict[int, int] = {}  # per distinct body (bodies are made once per request): hashed once

        def salt(one: Mapping[str, Any]) -> Callable[[], int]:
            def hashed() -> int:
                if id(one) not in salts:
                    salts[id(one)] = question_salt(one)
                return salts[id(one)]
            return hashed

        return group_calls([(seat, self.payload(body_of(seat), seat, salt(body_of(seat)))) for seat in seats],
                           self.config.share_prompt)

    def lanes(self, body: Mapping[str, Any] | Bodies, seats: list[Seat]) -> list[list[Call[Seat]]]:
        """The requests as lanes: one lane's requests go one after another (reusing one prompt), lanes at once."""
        return lanes(self.calls(body, seats), self.config.prompt_reuse, self.rates)

    async def ask(self, request: CouncilRequest | Mapping[str, Any]) -> CouncilAnswer:
        """Ask and decide. A plain mapping is an OpenAI chat body sent to the members as it is
        (`CouncilRequest.of`). `early_stop=False` in the request (evaluation) asks every seat of every stage and
        waits for each, so every member's answer is known."""
        if not isinstance(request, CouncilRequest):
            request = CouncilRequest.of(request)
        toolbox = self.toolbox(request)
        return await self._conclude(request, await self._collect(request, toolbox), toolbox)

    @staticmethod
    def calls_tools(request: CouncilRequest) -> bool:
        """Whether members are to call tools: the request declares some, and `tool_choice` is not `none` (which
        asks for text, voted on as text)."""
        return bool(request.tools) and request.members_payload.get("tool_choice") != "none"

    @classmethod
    def toolbox(cls, request: CouncilRequest) -> Toolbox | None:
        """The request's tools, one validator per tool, for every seat, and what `tool_choice` and
        `parallel_tool_calls` allow; None where members call no tools."""
        if not cls.calls_tools(request):
            return None
        asked = request.members_payload
        return Toolbox(request.tools, asked.get("tool_choice"), asked.get("parallel_tool_calls") is not False)

    def per_instructions(self, make: Callable[[ToolInstructions], T]) -> Callable[[Seat], T]:
        """Each seat's `make(kind)`, for the kind of tool instructions it is given (its member's own, else the
        council's), made once per kind, on the first seat that needs it."""
        made: dict[str, T] = {}
        default = self.config.vote.tool_instructions

        def of(seat: Seat) -> T:
            how = seat.tool_instructions or default
            if how not in made:
                made[how] = make(how)
            return made[how]

        return of

    def tool_text(self, request: CouncilRequest, how: ToolInstructions | None = None) -> str | None:
        """The tool instructions added to a member's system message for `request`: `how` (a member's own), else
        the council's (None: members call no tools, or they are given none)."""
        if not self.calls_tools(request):
            return None
        parallel = request.members_payload.get("parallel_tool_calls") is not False
        return tool_instructions(request.tools, how or self.config.vote.tool_instructions, parallel)

    def tool_texts(self, request: CouncilRequest) -> Callable[[Seat], str | None]:
        """Each seat's `tool_text` for `request`, each distinct text made once."""
        return self.per_instructions(lambda how: self.tool_text(request, how))

    def members_body(self, request: CouncilRequest, toolbox: Toolbox | None,
                     how: ToolInstructions | None = None) -> Mapping[str, Any]:
        """The body a seat starts from: the request's, with the tool instructions `how` (else the council's)
        when members are to call tools."""
        body = request.members_payload
        text = None if toolbox is None else self.tool_text(request, how)
        if text is None:
            return body
        # Told to write calls as a JSON list, a member reads its past calls and their results so too (and, once
        # results are in, that they may answer from them): see `calls_as_text`.
        messages, results = calls_as_text(list(body.get("messages") or []))
        # (Not where a call is required: the rule would say the opposite.)
        follow_up = results and body.get("tool_choice") in (None, "auto")
        return {**body, "messages": with_system(messages, text + FOLLOW_UP_RULE if follow_up else text)}

    def seat_bodies(self, request: CouncilRequest, toolbox: Toolbox | None) -> Bodies:
        """Each seat's body (`members_body` with its own tool instructions), each distinct one made once per
        request. The common case is one body for all, made at once: no tools to call (the request's), or no member
        with instructions of its own (or all with the same)."""
        if toolbox is None:
            body = request.members_payload
            return lambda _: body
        own = {seat.tool_instructions for seat in self.seats}
        if len(own) == 1:
            told = self.members_body(request, toolbox, own.pop())
            return lambda _: told
        return self.per_instructions(lambda how: self.members_body(request, toolbox, how))

    async def _collect(self, request: CouncilRequest, toolbox: Toolbox | None = None) -> Collected:
        """Ask stage by stage until the stop rule (`vote.stop_after`) says stop, the deadline passes, or every
        stage was asked; seats still out are then cancelled, timed out or (never asked) skipped."""
        vote = self.config.vote
        early_stop = request.early_stop
        # A per-argument tool vote pools votes across call sets: only a majority of all votes decides early.
        absolute = toolbox is not None and vote.tools == "per_argument"
        agreement = vote.cascade.agreement if vote.cascade else 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.timeout
        stages = self.config.stages() if early_stop else [list(range(len(self.seats)))]
        body = self.seat_bodies(request, toolbox)  # each member's own tool instructions
        outcomes: dict[str, SeatOutcome] = {}
        ballots: list[Ballot] = []
        tasks: list[asyncio.Task[None]] = []
        asked: list[Seat] = []
        waiting: set[str] = set()
        # A grouped call's seats, by name: its choices as they stand, for the tokens of those an early stop cuts.
        generating: dict[str, tuple[Streaming, int]] = {}
        stop: Stop | None = None
        number = quorum = 0
        silent = 0.0  # the seat values of seats heard that cast no vote: against a cascade stage's agreement
        ended_at = len(stages)

        def arrive(seat: Seat, reply: MemberReply) -> bool:
            """Count one seat's reply; True once the stop rule says stop."""
            nonlocal stop, silent
            if seat.client.target is not None:
                self.rates.setdefault(seat.client.target, Rates()).observe(reply)
            outcome = outcomes[seat.name] = self._outcome(seat, reply, number, toolbox)
            waiting.discard(seat.name)
            if reply.status == "ok":
                ballots.append(self._ballot(outcome))
            if reply.status != "ok" or outcome.extracted is None:
                silent += seat_value(vote.strategy, seat.weight)
            pending = sum(seat_value(vote.strategy, m.weight) for m in self.seats if m.name not in outcomes)
            stop = stop_after(ballots, pending, quorum, vote.strategy, early_stop=early_stop,
                              stage_done=not waiting, last_stage=number == len(stages), agreement=agreement,
                              temperature=vote.confidence_temperature, absolute=absolute, silent=silent)
            return stop is not None

        async def ask_lane(lane: list[Call[Seat]], take: Callable[[Seat, MemberReply], bool]) -> None:
            """A lane's calls one after another (each finds the prompt the last one left in the cache), each reply
            given to `take` as it ends (a grouped call's choices one by one: early stop can cut in); stops once
            `take` says so (leaving a grouped call closes its request). A client that raises instead of replying
            (a fault no client should have) fails the seats it had not yet reported: a lane that died silently
            would leave the vote waiting for them until the council's deadline."""
            reported: set[str] = set()

            def told(seat: Seat, reply: MemberReply) -> bool:
                reported.add(seat.name)
                return take(seat, reply)

            try:
                for call in lane:
                    if stop is not None:
                        return  # decided while this lane was out: it asks no one else
                    if len(call.seats) == 1:
                        if told(call.seats[0], await call.seats[0].client.complete(call.payload)):
                            return
                        continue
                    streaming = Streaming()
                    for index, seat in enumerate(call.seats):
                        generating[seat.name] = (streaming, index)
                    async with contextlib.aclosing(call.seats[0].client.choices(call.payload, len(call.seats),
                                                                                streaming)) as got:
                        async for index, reply in got:
                            if told(call.seats[index], reply):
                                return
            except Exception as exc:  # any fault becomes the seats' error, never a stalled vote
                log.exception("council %s: a member client raised instead of replying", self.name)
                failed = MemberReply(status="error", error=f"the member's client failed: {type(exc).__name__}: {exc}")
                for seat in (seat for call in lane for seat in call.seats):
                    if seat.name not in reported and stop is None:
                        told(seat, failed)

        arrivals: asyncio.Queue[tuple[Seat, MemberReply]] | None = None  # made for the first stage of several lanes

        def queued(seat: Seat, reply: MemberReply) -> bool:
            assert arrivals is not None
            if stop is not None:
                return True  # a straggler ending in its grace: the vote is decided
            arrivals.put_nowait((seat, reply))  # the vote reads it in `_collect`'s own task
            return False

        deadline_passed = asyncio.timeout_at(deadline)
        try:
            async with deadline_passed:
                for number, stage in enumerate(stages, 1):
                    seats = [self.seats[i] for i in stage]
                    asked += seats
                    quorum = self.config.quorum_count(len(asked))
                    waiting = {seat.name for seat in seats}
                    stage_lanes = self.lanes(body, seats)
                    if len(stage_lanes) == 1:
                        # One lane (one member, or calls that share a prompt): asked here, with no task or queue
                        # between the replies and the vote: the common small council's whole path.
                        await ask_lane(stage_lanes[0], arrive)
                    else:
                        if arrivals is None:
                            arrivals = asyncio.Queue()
                        tasks += [asyncio.create_task(ask_lane(lane, queued)) for lane in stage_lanes]
                        while waiting and stop is None:
                            arrive(*await arrivals.get())
                    if stop is not None:
                        ended_at = number
                        break
                    if not ballots and all(o.reply.rejected for o in outcomes.values()):
                        break  # the request itself is refused: later stages would refuse it too
        except TimeoutError:
            if not deadline_passed.expired():
                raise
            ended_at = number  # seats still out are `timeout`
        finally:
            out = [task for task in tasks if not task.done()]
            if out and stop == "early":
                # Closed a moment later, off the answer's path; one that ends before then keeps its connection.
                for task in out:
                    task.add_done_callback(_retrieve)
                loop.call_later(STRAGGLER_GRACE, _close_stragglers, out)
            else:
                for task in out:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        waited = (loop.time() - started) * 1000
        stage_of = {self.seats[i].name: n for n, stage in enumerate(stages, 1) for i in stage}
        early = stop == "early"
        for seat in self.seats:
            if seat.name in outcomes:
                continue
            if seat not in asked:
                reply = MemberReply(status="skipped")
            elif early:
                # A choice of a grouped request counts what it had streamed (it was generated: it is a cost); a
                # request of its own was closed before its usage came, so it counts none.
                streaming, index = generating.get(seat.name, (None, 0))
                reply = MemberReply(status="cancelled", latency_ms=waited,
                                    completion_tokens=streaming.tokens(index) if streaming is not None else 0)
            else:
                reply = MemberReply(status="timeout", latency_ms=waited,
                                    error=f"no answer within the council's {self.config.timeout:g}s")
            outcomes[seat.name] = SeatOutcome(seat, reply, stage=stage_of[seat.name])
        return Collected([outcomes[m.name] for m in self.seats], len(asked), early, ended_at, len(stages), deadline)

    async def _conclude(self, request: CouncilRequest, collected: Collected,
                        toolbox: Toolbox | None = None) -> CouncilAnswer:
        """Quorum, vote (and the judge's pick; with tools, the council's calls), and the ballot."""
        vote = self.config.vote
        ordered = collected.outcomes
        answered = [o for o in ordered if o.reply.status == "ok"]
        if not answered and all(o.reply.rejected for o in ordered if o.reply.status != "skipped"):
            raise RequestRejected(self.name, next(o.reply.error for o in ordered if o.reply.rejected) or "")
        need = self.config.quorum_count(collected.asked)
        if len(answered) < need:
            raise QuorumError(self.name, f"only {len(answered)} of {collected.asked} seats answered; "
                              f"the quorum is {need}", ordered)
        ballots = [self._ballot(o) for o in answered]
        judge_fallback = False
        judged: tuple[str, MemberReply] | None = None
        tool_decision = None
        try:
            if toolbox is not None and vote.strategy != "judge":
                tool_decision = self._decide_tools(ballots, answered, toolbox)
                decision = tool_decision.decision
            else:
                decision = decide(ballots, vote.strategy, vote.tie_break, temperature=vote.confidence_temperature)
            if vote.strategy == "judge":
                picked, judged = await self._judge(request.question, ballots, collected.deadline)
                judge_fallback = picked is None
                decision = picked or decision
                if toolbox is not None:
                    tool_decision = self._decide_tools(ballots, answered, toolbox, decision)
        except VoteError as exc:
            unfinished = _unfinished(answered)
            if unfinished is None:
                raise NoValidAnswer(self.name, _abstained(answered) or str(exc), ordered) from None
            decision, tool_decision = unfinished, None
        calls = [c.openai() for c in tool_decision.calls] if tool_decision is not None else None
        answer = CouncilAnswer(id=f"chatcmpl-{uuid.uuid4().hex}", council=self.name, strategy=vote.strategy,
                               decision=decision, outcomes=ordered, early_stop=collected.early,
                               judge_fallback=judge_fallback, stage=collected.stage, stages=collected.stages,
                               tool_calls=[] if calls is None and toolbox is not None else calls,
                               tool_decision=tool_decision, tools=tuple(request.tools),
                               tool_choice=request.members_payload.get("tool_choice"), judge=judged,
                               parallel_tool_calls=toolbox is None or toolbox.parallel)
        self.ballots.put(answer.id, self.ballot_record(answer, request.owner))
        return answer

    def _decide_tools(self, ballots: list[Ballot], answered: list[SeatOutcome], toolbox: Toolbox,
                      decision: Decision | None = None) -> ToolDecision:
        vote = self.config.vote
        answers = {o.seat.name: o.tool for o in answered if o.tool is not None}
        return decide_tools(ballots, answers, toolbox, mode=vote.tools, strategy=vote.strategy,
                            tie_break=vote.tie_break, temperature=vote.confidence_temperature, how=vote.extract,
                            decision=decision)

    async def _judge(self, question: str, ballots: list[Ballot],
                     deadline: float) -> tuple[Decision | None, tuple[str, MemberReply] | None]:
        """The judge member picks an answer by number, within the council's deadline; None (fall back to majority)
        when it cannot. Also who was asked and its reply (its tokens count in `usage`), None when nobody was."""
        judge = self.config.vote.judge
        member = next((m for m in self.seats if judge in (m.order, m.name)), None)
        if member is None:
            return None, None
        prompt, candidates = judge_prompt(question, ballots)
        if not candidates:
            return None, None
        started = asyncio.get_running_loop().time()
        out_of_time = asyncio.timeout_at(deadline)
        try:
            async with out_of_time:  # cancelled past it: its request closes, freeing the judge's slot
                reply = await member.client.complete(judge_request(prompt))
        except TimeoutError:
            if not out_of_time.expired():
                raise
            reply = MemberReply(status="timeout", latency_ms=(asyncio.get_running_loop().time() - started) * 1000,
                                error=f"the judge did not answer within the council's {self.config.timeout:g}s")
        picked = judge_pick(reply.text if reply.status == "ok" else None, candidates, ballots,
                            self.config.vote.tie_break)
        return picked, (member.name, reply)

    def ballot_record(self, answer: CouncilAnswer, owner: str | None = None) -> dict[str, Any]:
        """The full ballot: the council object plus the raw answers, in `council tally`'s input format, and who
        asked (`owner`), which travels with it (a shared store's copy too) so every router can tell who may read it."""
        vote = self.config.vote
        tools = {"tools": list(answer.tools), "tool_choice": answer.tool_choice, "tool_vote_mode": vote.tools,
                 "recover_tool_calls": vote.recover_tool_calls} if answer.tool_calls is not None else {}
        if tools and not answer.parallel_tool_calls:
            tools["parallel_tool_calls"] = False
        return {"id": answer.id, "created": int(time.time()), **({"owner": owner} if owner is not None else {}),
                **answer.council_json(),
                "extract": vote.extract, "tie_break": list(vote.tie_break),
                "confidence_temperature": vote.confidence_temperature, **tools,
                "answers": [{"member": o.seat.name, "text": o.reply.text, "weight": o.seat.weight,
                             "latency_ms": o.reply.latency_ms, "logprob": o.reply.logprob,
                             "confidence": o.confidence,
                             "completion_tokens": o.reply.completion_tokens,
                             "finish_reason": o.reply.finish_reason, **_calls_record(o)} for o in answer.outcomes
                            if o.reply.status == "ok"]}


def _calls_record(outcome: SeatOutcome) -> dict[str, Any]:
    """A seat's calls in its ballot entry: the tool calls it sent (`council tally` reads these, with `text` for
    recovery) and, for the reader, each call as the vote saw it (verdict, `recovered`) and why it abstained."""
    native = (outcome.reply.message or {}).get("tool_calls")
    if outcome.tool is None:
        return {"tool_calls": native} if native else {}
    return {**({"tool_calls": native} if native else {}), **outcome.tool.to_json(),
            **({"abstained": outcome.abstained} if outcome.abstained else {})}


def _unfinished(answered: list[SeatOutcome]) -> Decision | None:
    """Where every reply was cut off by max_tokens before it stated an answer or finished its calls: the first
    seat's unfinished reply as the council's, which nobody voted for (its `finish_reason` is `length`, as a single
    model's would be; an agent's SDK acts on that, where an error reads as an outage and is retried as it was)."""
    if not answered or any(o.abstained not in (CUT_OFF, CUT_OFF_CALL) for o in answered):
        return None
    return Decision.unfinished(answered[0].seat.name, answered[0].reply.text)


def _abstained(answered: list[SeatOutcome]) -> str | None:
    """Why every reply abstained, when max_tokens (or, with tools, invalid calls) is the reason: the caller can act
    on it (every reply cut off is an unfinished answer, not this error)."""
    cut = sum(o.abstained in (CUT_OFF, CUT_OFF_CALL) for o in answered)
    if not cut:
        why = [f"{o.seat.name}: {o.abstained}" for o in answered if o.abstained]  # invalid tool calls, say
        return "every seat abstained: " + "; ".join(why) if len(why) == len(answered) else None
    return (f"every seat abstained: {cut} of {len(answered)} replies were cut off by max_tokens (raise max_tokens), "
            "the others had no valid answer")
