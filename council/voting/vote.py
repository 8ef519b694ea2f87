"""Decide a council's answer from its ballots: majority, weighted, similarity, and a judge's pick.

A decision depends only on the ballots, never on the order they arrived in: ballots are sorted by the
member's place in the council before anything is counted. Ties between answers are broken by the
council's `tie_break` rules in order (`order` always ends the list, so a tie is always resolved).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rapidfuzz.distance import Indel

from council.errors import CouncilError

STRATEGIES = ("majority", "weighted", "confidence", "similarity", "judge")
# Strategies whose winner can be known before every member has answered (a vote still out is worth at most
# its weight, confidence votes included: a probability is at most 1).
EARLY_STOPPABLE = frozenset({"majority", "weighted", "confidence"})
SIMILARITY_THRESHOLD = 0.6
_EPS = 1e-9


class VoteError(CouncilError, ValueError):
    """No decision is possible: every seat abstained, or fewer answered than the quorum."""


@dataclass(frozen=True)
class Ballot:
    """One member's say. `answer` is the extracted, normalised answer; None means it abstained."""

    member: str
    order: int  # the member's place in the council
    answer: str | None
    text: str | None = None  # the raw reply, for `similarity` and as the council's message
    weight: float = 1.0
    latency_ms: float | None = None
    logprob: float | None = None  # mean token logprob, where the member reported them
    # The member's probability of its answer (the geometric mean of its answer tokens' probabilities, else
    # of the whole reply's); None without logprobs (a remote member): it then counts at its weight.
    confidence: float | None = None


@dataclass(frozen=True)
class Decision:
    answer: str | None  # None: nobody voted (every reply was cut off; the speaker's unfinished text is shown)
    agreement: float  # winning weight / weight of all votes cast
    votes: dict[str, float]
    winner_members: tuple[str, ...]
    tie_broken_by: str | None
    text: str | None  # the winning reply to show: the speaker's
    # The member whose reply is the council's (its text, message and logprobs): the first winner in council
    # order; similarity: the medoid; judge: the answer the judge picked.
    speaker: str | None = None

    @classmethod
    def unfinished(cls, speaker: str, text: str | None) -> Decision:
        """Nobody voted: every reply was cut off by max_tokens, and `speaker`'s unfinished reply is the answer."""
        return cls(answer=None, agreement=0.0, votes={}, winner_members=(), tie_broken_by=None, text=text,
                   speaker=speaker)

    def to_json(self) -> dict[str, object]:
        return {"answer": self.answer, "agreement": round(self.agreement, 6), "votes": self.votes,
                "winner_members": list(self.winner_members), "tie_broken_by": self.tie_broken_by}


def _vote_value(ballot: Ballot, strategy: str, temperature: float = 1.0) -> float:
    if strategy == "majority":
        return 1.0
    if strategy == "confidence" and ballot.confidence is not None:
        return ballot.weight * ballot.confidence ** (1.0 / temperature)
    return ballot.weight


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= _EPS * max(1.0, scale)


def _tie_key(rule: str, voters: Sequence[Ballot]) -> float:
    """Smaller is better; inf when the rule has no data for these voters (it cannot separate them)."""
    if rule == "weight":
        return -sum(b.weight for b in voters)
    if rule == "latency":
        return min((b.latency_ms for b in voters if b.latency_ms is not None), default=math.inf)
    if rule == "order":
        return float(min(b.order for b in voters))
    if rule == "logprob":
        return -max((b.logprob for b in voters if b.logprob is not None), default=-math.inf)
    raise ValueError(f"unknown tie-break rule {rule!r}")


def break_tie(groups: dict[str, list[Ballot]], tied: list[str], rules: Sequence[str]) -> tuple[str, str | None]:
    """The winner among `tied` answers and the rule that separated them (None when nothing was tied)."""
    if len(tied) == 1:
        return tied[0], None
    for rule in [*rules, *([] if "order" in rules else ["order"])]:
        keys = {a: _tie_key(rule, groups[a]) for a in tied}
        best = min(keys.values())
        tied = [a for a in tied if keys[a] == best or _close(keys[a], best, abs(best))]
        if len(tied) == 1:
            return tied[0], rule
    raise AssertionError("`order` always separates distinct answers")  # distinct answers have distinct voters


def _tally(ballots: Sequence[Ballot], strategy: str, key: Callable[[Ballot], str | None]) -> dict[str, list[Ballot]]:
    groups: dict[str, list[Ballot]] = {}
    for ballot in sorted(ballots, key=lambda b: b.order):
        answer = key(ballot)
        if answer is not None:
            groups.setdefault(answer, []).append(ballot)
    return groups


def _decide_groups(groups: dict[str, list[Ballot]], strategy: str, tie_break: Sequence[str],
                   temperature: float = 1.0) -> Decision:
    if not groups:
        raise VoteError("every seat abstained: no answer could be extracted from any reply")
    votes = {a: sum(_vote_value(b, strategy, temperature) for b in voters) for a, voters in groups.items()}
    total = sum(votes.values())
    top = max(votes.values())
    tied = [a for a, v in votes.items() if _close(v, top, total)]
    winner, rule = break_tie(groups, tied, tie_break)
    voters = groups[winner]
    return Decision(answer=winner, agreement=votes[winner] / total if total else 0.0, votes=votes,
                    winner_members=tuple(b.member for b in voters), tie_broken_by=rule, text=voters[0].text,
                    speaker=voters[0].member)


def decide(ballots: Sequence[Ballot], strategy: str = "majority", tie_break: Sequence[str] = ("weight", "latency",
           "order"), *, threshold: float = SIMILARITY_THRESHOLD, temperature: float = 1.0) -> Decision:
    """The council's decision. `judge` decides like `majority` here (the judge's own pick is `judge_pick`);
    `confidence` weighs each vote by the member's probability of its answer, p ** (1 / temperature)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    if strategy == "similarity":
        return _decide_similarity(ballots, tie_break, threshold)
    return _decide_groups(_tally(ballots, strategy, lambda b: b.answer), "majority" if strategy == "judge" else
                          strategy, tie_break, temperature)


def _ranked(ballots: Sequence[Ballot], strategy: str, temperature: float) -> list[float]:
    """Each answer's votes, most first."""
    groups = _tally(ballots, strategy, lambda b: b.answer)
    return sorted((sum(_vote_value(b, strategy, temperature) for b in v) for v in groups.values()), reverse=True)


def stage_agrees(ballots: Sequence[Ballot], strategy: str, agreement: float, temperature: float = 1.0,
                 silent: float = 0.0) -> bool:
    """A cascade stage is decided when its leader holds at least `agreement` of the votes its seats could cast,
    untied. `silent`: the `seat_value`s of the seats asked that cast none (failed, or abstained): they count
    against agreement, so a stage where one seat answers and the other wrote nothing readable is not unanimous."""
    ranked = _ranked(ballots, strategy, temperature)
    if not ranked:
        return False
    total = sum(ranked) + silent
    untied = len(ranked) == 1 or ranked[0] > ranked[1] + _EPS * max(1.0, ranked[0])
    return untied and ranked[0] >= agreement * total - _EPS * max(1.0, total)


def is_decided(ballots: Sequence[Ballot], pending_weight: float, strategy: str, temperature: float = 1.0,
               absolute: bool = False) -> bool:
    """True when no votes of the members still out could change the winner: leader > runner-up + pending.
    `absolute`: leader > every other vote + pending (a per-argument tool vote, whose shapes and argument values
    pool votes across answers, is decided only by a majority of all the votes there can be).

    Strict, so a tie (which a tie-break might settle differently with more voters) is never called early.
    """
    if strategy not in EARLY_STOPPABLE:
        return False
    ranked = _ranked(ballots, strategy, temperature)
    if not ranked:
        return False
    runner_up = sum(ranked[1:]) if absolute else ranked[1] if len(ranked) > 1 else 0.0
    return ranked[0] > runner_up + pending_weight + _EPS * max(1.0, ranked[0])


# ---- the stop rule: live councils (`engine`) and their offline replay (`evaluation.score`) both ask it -------

Stop = Literal["early", "stage"]


def seat_value(strategy: str, weight: float) -> float:
    """The most one seat still out can add to one answer: one vote under `majority` (and `judge`, which counts
    like majority), else its weight (a confidence vote is at most its weight: a probability is at most 1)."""
    return 1.0 if strategy in ("majority", "judge") else weight


def stop_after(ballots: Sequence[Ballot], pending: float, quorum: int, strategy: str, *, early_stop: bool = True,
               stage_done: bool = False, last_stage: bool = True, agreement: float = 1.0,
               temperature: float = 1.0, absolute: bool = False, silent: float = 0.0) -> Stop | None:
    """Whether to stop asking after the latest answer, and why. `ballots` are the answers so far, `pending` the
    `seat_value`s of every seat not yet heard (later stages' included), `quorum` the answers the seats asked so
    far need. `"early"`: no vote still out can change the winner (the rest are cancelled; only with
    `early_stop`); `"stage"`: the cascade stage just completed (`stage_done`) agrees, so later stages are never
    asked; None: go on (wait for the stage, or ask the next one). `absolute`: see `is_decided`; `silent`: see
    `stage_agrees`."""
    if len(ballots) < quorum:
        return None
    if early_stop and pending and is_decided(ballots, pending, strategy, temperature, absolute):
        return "early"
    if stage_done and not last_stage and stage_agrees(ballots, strategy, agreement, temperature, silent):
        return "stage"
    return None


# ---- similarity: free text, no extra model call --------------------------------------------------------


def _words(ballot: Ballot) -> list[str]:
    return (ballot.answer or ballot.text or "").split()


def similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """Word-level similarity in [0, 1]: twice the longest common subsequence of words over both lengths (rapidfuzz's
    normalised Indel similarity, bit-parallel in C++). difflib's ratio, which this replaced, approximates the same
    measure in Python, and took up to a second a pair on the event loop where replies repeat themselves."""
    if not a and not b:
        return 1.0
    return Indel.normalized_similarity(a, b)


def _decide_similarity(ballots: Sequence[Ballot], tie_break: Sequence[str], threshold: float) -> Decision:
    """Cluster replies (each joins the first cluster whose founder it resembles, in council order); the
    heaviest cluster wins and its medoid — the reply most like the others in it — is the answer."""
    voting = [b for b in sorted(ballots, key=lambda b: b.order) if b.answer is not None]
    if not voting:
        raise VoteError("every seat abstained: no reply had any text")
    words = {b.member: _words(b) for b in voting}
    # Each pair compared once (the measure is symmetric): the medoids compared every pair of a cluster twice over,
    # each reply with itself too.
    known: dict[tuple[str, str], float] = {}

    def like(a: Ballot, b: Ballot) -> float:
        if a.member == b.member:
            return 1.0  # what a reply scores against itself, without reading it
        if (key := (min(a.member, b.member), max(a.member, b.member))) not in known:
            known[key] = similarity(words[key[0]], words[key[1]])
        return known[key]

    clusters: list[list[Ballot]] = []
    for ballot in voting:
        home = next((c for c in clusters if like(c[0], ballot) >= threshold), None)
        if home is None:
            clusters.append([ballot])
        else:
            home.append(ballot)

    def medoid(cluster: list[Ballot]) -> Ballot:
        return max(cluster, key=lambda b: (sum(like(b, o) for o in cluster), -b.order))

    groups = {medoid(c).answer or "": c for c in clusters}
    decision = _decide_groups(groups, "weighted", tie_break)
    speaker = medoid(groups[decision.answer])
    return Decision(answer=decision.answer, agreement=decision.agreement, votes=decision.votes,
                    winner_members=decision.winner_members, tie_broken_by=decision.tie_broken_by,
                    text=speaker.text, speaker=speaker.member)


# ---- judge ------------------------------------------------------------------------------------------------


def judge_prompt(question: str, ballots: Sequence[Ballot]) -> tuple[str, list[Ballot]]:
    """The judge's prompt with the answers anonymised and numbered, and the ballots in that numbering."""
    candidates = [b for b in sorted(ballots, key=lambda b: b.order) if b.text]
    listing = "\n\n".join(f"Answer {i}:\n{b.text}" for i, b in enumerate(candidates, 1))
    prompt = (f"Several assistants answered this question:\n\n{question}\n\n{listing}\n\n"
              f"Which answer is correct? Reply with the number of the best answer (1-{len(candidates)}) only.")
    return prompt, candidates


def judge_request(prompt: str) -> dict[str, Any]:
    """What the judge member is sent: its prompt, answered greedily and briefly (a number)."""
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}


def judge_pick(reply: str | None, candidates: Sequence[Ballot], ballots: Sequence[Ballot],
               tie_break: Sequence[str]) -> Decision | None:
    """The decision the judge's reply names, or None when it names no valid candidate (fall back)."""
    import re

    match = re.search(r"\b(\d+)\b", reply or "")
    if match is None or not 1 <= int(match.group(1)) <= len(candidates):
        return None
    chosen = candidates[int(match.group(1)) - 1]
    if chosen.answer is None:
        return None
    groups = _tally(ballots, "majority", lambda b: b.answer)
    votes = {a: float(len(v)) for a, v in groups.items()}
    voters = groups[chosen.answer]
    return Decision(answer=chosen.answer, agreement=votes[chosen.answer] / sum(votes.values()), votes=votes,
                    winner_members=tuple(b.member for b in voters), tie_broken_by=None, text=chosen.text,
                    speaker=chosen.member)
