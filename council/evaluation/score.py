"""Scoring recorded answers offline, with the vote code live councils use (no model is asked again).

From one recording: each member's accuracy; the council's under every strategy and extractor; the oracle
(some member right); what early stop and cascades would have spent; and, by leaving each member out, which
members never change the outcome and which lower it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel

from council.evaluation.record import ItemRecord, MemberAnswer, unanswered, with_every_seat
from council.policy.schema import CascadeConfig, CouncilConfig, quorum_needed
from council.voting.extract import extract, extract_cut
from council.voting.vote import Ballot, Decision, VoteError, decide, seat_value, stop_after

# 2: `plans` (every cascade and early-stop plan, with the Pareto front), `items_scored` (each item's answer,
# agreement and verdict) and `council_accuracy`.
SCHEMA_VERSION = 2


class MemberScore(BaseModel):
    name: str
    model: str
    accuracy: float
    correct: int
    answered: int  # items it answered at all (status ok)
    tokens_per_item: float
    ms_per_item: float


class StrategyScore(BaseModel):
    strategy: str  # majority | weighted | confidence | similarity
    extract: str
    signal: str | None = None  # for confidence: answer | reply | tail
    temperature: float | None = None
    accuracy: float
    correct: int
    undecided: int  # items where every member abstained (counted wrong)


class SpendScore(BaseModel):
    """What a way of asking would have cost per item, and how accurate it is."""

    name: str  # "every member", "early stop", "cascade first 2", ...
    accuracy: float
    tokens_per_item: float
    ms_per_item: float
    members_per_item: float  # members asked (or, for early stop, not cancelled at once)
    stopped_early: float  # share of items decided before every member was heard


class PlanScore(BaseModel):
    """One way of asking replayed on every item: every member, early stop, or a cascade; under one vote."""

    name: str
    kind: str  # "every member" | "early stop" | "cascade" | "cascade (policy)"
    vote: str  # "majority", "weighted", "confidence tail, T=1", ...
    first: int | None = None  # a cascade `{first, then, agreement}`
    then: int | None = None
    agreement: float | None = None
    accuracy: float
    correct: int
    tokens_per_item: float  # completion tokens, every seat asked
    token_share: float = 1.0  # of the tokens every member spends (the council's own vote, `plans[0]`)
    ms_per_item: float
    members_per_item: float
    stopped_early: float
    # No other plan is at least as accurate for fewer tokens (or more accurate for as many): the Pareto front.
    pareto: bool = False
    # At least as accurate as the council with every member asked under its own vote (`council_accuracy`).
    keeps_accuracy: bool = False


class ItemScore(BaseModel):
    """The council's decision on one item under its own vote, every member asked."""

    index: int
    answer: str | None  # None: every member abstained
    agreement: float  # the winner's share of the votes cast (0 when undecided)
    correct: bool
    right_seats: int  # seats whose own answer is right


class LeaveOneOut(BaseModel):
    member: str
    accuracy_without: float
    delta: float  # accuracy without it minus with it: > 0 means the member lowers the council
    changed_items: int
    verdict: str  # "never changes the outcome" | "lowers it" | "raises it" | "changes it, no net effect"


class EvalReport(BaseModel):
    """`council eval --json`: everything is recomputable from `records` with `council tally`'s vote code."""

    schema_version: int = SCHEMA_VERSION
    council: str
    data: str
    items: int
    # Items no member answered (refused, e.g. longer than ctx_size; or the router could not be asked): each
    # member and the council count them wrong; their records have a failed answer from every seat.
    unanswered: int = 0
    strategy: str  # the council's own strategy and extractor, which `spend` and `leave_one_out` use
    extract: str
    members: list[MemberScore]
    # The most accurate member on these same items: chosen in hindsight, so a lucky sample can be it.
    best_member: str
    # The member picked on one half of the items (even, odd), scored on the other half, both ways: what picking
    # the best member is worth on items it was not picked on. None with fewer than two items.
    best_member_held_out: float | None = None
    # When every seat is the same model (samples, or seats differing only in sampling): its greedy seat (the first
    # at temperature 0, else the first seat) and the mean accuracy of the other seats. None otherwise.
    greedy_member: str | None = None
    samples_mean: float | None = None
    strategies: list[StrategyScore]
    oracle: float
    spend: list[SpendScore]
    leave_one_out: list[LeaveOneOut]
    # The council under its own vote with every member asked; every plan of `plans` is compared with it.
    council_accuracy: float | None = None
    plans: list[PlanScore] = []
    items_scored: list[ItemScore] = []
    # What the replay could not decide as the live council did (records made before a tie-break's input was kept).
    notes: list[str] = []
    records: list[ItemRecord]


@dataclass(frozen=True)
class Rule:
    strategy: str
    extract: str
    signal: str = "answer"
    temperature: float = 1.0
    tie_break: tuple[str, ...] = ("weight", "latency", "order")
    # The council's `quorum`: fewer answers decide nothing, as live (`quorum_not_met`).
    quorum: int | Literal["majority", "all"] = 1


@lru_cache(maxsize=1 << 16)
def _read(text: str | None, how: str, cut_off: bool) -> str | None:
    # Replaying hundreds of plans reads the same replies again and again.
    return extract_cut(text, how) if cut_off else extract(text, how)


def vote_of(answer: MemberAnswer, how: str) -> str | None:
    """What a recorded reply votes under extractor `how`, as a live council counts it: a reply cut off by
    max_tokens only with an answer it stated (`extract_cut`)."""
    return _read(answer.text, how, answer.cut_off)


def ballots(answers: Sequence[MemberAnswer], rule: Rule, keep: Sequence[int] | None = None) -> list[Ballot]:
    """The ballots of the answering members (all, or those at indexes `keep`) under `rule`; a reply cut off by
    max_tokens abstains unless it stated its answer."""
    out = []
    for order, answer in enumerate(answers):
        if answer.status != "ok" or (keep is not None and order not in keep):
            continue
        signal = (answer.signals or {}).get(rule.signal, answer.confidence)
        out.append(Ballot(member=answer.member, order=order, answer=vote_of(answer, rule.extract),
                          text=answer.text, weight=answer.weight, latency_ms=answer.latency_ms,
                          logprob=answer.logprob, confidence=signal))
    return out


def council_decision(answers: Sequence[MemberAnswer], rule: Rule,
                     keep: Sequence[int] | None = None) -> Decision | None:
    """The council's decision from these answers (those at `keep`, the seats asked, else all); None when every
    member abstained, or fewer answered than the quorum needs of the seats asked (the live council answers
    `quorum_not_met` then, never a guess)."""
    found = ballots(answers, rule, keep)
    if len(found) < quorum_needed(rule.quorum, len(answers) if keep is None else len(keep)):
        return None
    try:
        return decide(found, rule.strategy, rule.tie_break, temperature=rule.temperature)
    except VoteError:
        return None


def council_answer(answers: Sequence[MemberAnswer], rule: Rule, keep: Sequence[int] | None = None) -> str | None:
    """The council's answer from these answers (None when every member abstained)."""
    decision = council_decision(answers, rule, keep)
    return None if decision is None else decision.answer


def reference(record: ItemRecord, how: str) -> str | None:
    return _read(record.reference, how, False)


def is_right(vote: str | None, ref: str | None) -> bool:
    """An answer is right when it is the reference: an abstention (None) never is, even where the reference reads
    as None under this extractor (`council eval` refuses such data for the council's own extractor; under the
    others, nobody is right on that item)."""
    return vote is not None and vote == ref


def unreadable_reference(references: Sequence[tuple[int, str]], how: str) -> str | None:
    """`line: why` for the first (line, reference) that extractor `how` reads as nothing, else None: no answer could
    be scored right against it."""
    for line, ref in references:
        if _read(ref, how, False) is None:
            shown = ref if len(ref) <= 40 else ref[:39] + "…"
            return (f"{line}: answer {shown!r} cannot be read by the council's extractor {how} (vote.extract): no "
                    "member's answer could be scored right against it")
    return None


def _accuracy(hits: int, total: int) -> float:
    return hits / total if total else 0.0


def score_members(records: Sequence[ItemRecord], how: str) -> list[MemberScore]:
    names = [a.member for a in records[0].answers]
    scores = []
    for i, name in enumerate(names):
        mine = [r.answers[i] for r in records]
        correct = sum(a.status == "ok" and is_right(vote_of(a, how), reference(r, how))
                      for a, r in zip(mine, records, strict=True))
        scores.append(MemberScore(name=name, model=mine[0].model, accuracy=_accuracy(correct, len(records)),
                                  correct=correct, answered=sum(a.status == "ok" for a in mine),
                                  tokens_per_item=sum(a.completion_tokens for a in mine) / len(records),
                                  ms_per_item=sum(a.latency_ms for a in mine) / len(records)))
    return scores


def score_rule(records: Sequence[ItemRecord], rule: Rule) -> StrategyScore:
    decided = [council_answer(r.answers, rule) for r in records]
    correct = sum(is_right(d, reference(r, rule.extract)) for d, r in zip(decided, records, strict=True))
    confidence = rule.strategy == "confidence"
    return StrategyScore(strategy=rule.strategy, extract=rule.extract, signal=rule.signal if confidence else None,
                         temperature=rule.temperature if confidence else None,
                         accuracy=_accuracy(correct, len(records)), correct=correct,
                         undecided=sum(d is None for d in decided))


def early_stop(record: ItemRecord, rule: Rule, quorum: int) -> tuple[str | None, float, float, int, bool]:
    """Replay the item with early stop: members arrive in the order they answered; once the stop rule a live
    council uses (`vote.stop_after`) says no late vote could change the winner, the rest are cancelled, having
    spent tokens in proportion to the time they ran. Returns (answer, tokens, ms, members heard, stopped early)."""
    answers = record.answers
    order = sorted(range(len(answers)), key=lambda i: (answers[i].latency_ms, i))
    heard: list[int] = []
    stop_at = max((a.latency_ms for a in answers), default=0.0)
    early = False
    for position, i in enumerate(order):
        heard.append(i)
        pending = sum(seat_value(rule.strategy, answers[j].weight) for j in order[position + 1:])
        if stop_after(ballots(answers, rule, heard), pending, quorum, rule.strategy,
                      temperature=rule.temperature) == "early":
            stop_at, early = answers[i].latency_ms, True
            break
    tokens = 0.0
    for j, answer in enumerate(answers):
        share = 1.0 if j in heard else min(1.0, stop_at / answer.latency_ms) if answer.latency_ms else 0.0
        tokens += answer.completion_tokens * share
    return council_answer(answers, rule, heard), tokens, stop_at, len(heard), early


def cascade(record: ItemRecord, rule: Rule, stages: list[list[int]], agreement: float,
            config: CouncilConfig) -> tuple[str | None, float, float, int, bool]:
    """Replay the item as a cascade: a stage is asked only when the stop rule a live council uses
    (`vote.stop_after`) finds the stages before it agree; stages run one after the other (each judged once it is
    complete, as recorded without early stop). Returns (answer, tokens, ms, members asked, decided before the
    last stage)."""
    answers = record.answers
    asked: list[int] = []
    tokens = ms = 0.0
    for number, stage in enumerate(stages, 1):
        asked += stage
        tokens += sum(answers[i].completion_tokens for i in stage)
        ms += max((answers[i].latency_ms for i in stage), default=0.0)
        cast = ballots(answers, rule, asked)
        voted = {b.order for b in cast if b.answer is not None}
        silent = sum(seat_value(rule.strategy, answers[i].weight) for i in asked if i not in voted)
        if stop_after(cast, 0.0, config.quorum_count(len(asked)), rule.strategy, early_stop=False, stage_done=True,
                      last_stage=number == len(stages), agreement=agreement, temperature=rule.temperature,
                      silent=silent) == "stage":
            return council_answer(answers, rule, asked), tokens, ms, len(asked), True
    return council_answer(answers, rule, asked), tokens, ms, len(asked), False


def _spend(name: str, records: Sequence[ItemRecord], results: list[tuple[str | None, float, float, int, bool]],
           how: str) -> SpendScore:
    n = len(records)
    correct = sum(is_right(r[0], reference(rec, how)) for r, rec in zip(results, records, strict=True))
    return SpendScore(name=name, accuracy=_accuracy(correct, n), tokens_per_item=sum(r[1] for r in results) / n,
                      ms_per_item=sum(r[2] for r in results) / n, members_per_item=sum(r[3] for r in results) / n,
                      stopped_early=sum(r[4] for r in results) / n)


def spending(records: Sequence[ItemRecord], rule: Rule, config: CouncilConfig) -> list[SpendScore]:
    """Every member asked (as recorded), early stop, the council's own cascade, and `first: k` cascades."""
    size = len(records[0].answers)
    every = [(council_answer(r.answers, rule), float(sum(a.completion_tokens for a in r.answers)), r.wall_ms, size,
              False) for r in records]
    rows = [_spend("every member", records, every, rule.extract),
            _spend("early stop", records, [early_stop(r, rule, config.quorum_count()) for r in records],
                   rule.extract)]
    plans: list[tuple[str, list[list[int]], float]] = []
    if config.vote.cascade is not None:
        plans.append((f"cascade (policy) {config.stages()}", config.stages(), config.vote.cascade.agreement))
    for first in (2, 3, 4):  # a first stage of one member always "agrees": it is that member alone
        if first < size:
            plans.append((f"cascade first {first}", [list(range(first)), list(range(first, size))], 1.0))
    for name, stages, agreement in plans:
        rows.append(_spend(name, records, [cascade(r, rule, stages, agreement, config) for r in records], rule.extract))
    return rows


def vote_label(rule: Rule) -> str:
    return f"confidence {rule.signal}, T={rule.temperature:g}" if rule.strategy == "confidence" else rule.strategy


# The cascades `plans` replays: `{first, then, agreement}` (README: cascades), under each vote of `plan_votes`.
PLAN_FIRST = (1, 2, 3, 4)
PLAN_THEN = (1, 2, 3)
PLAN_AGREEMENT = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 1.0)


def plan_votes(records: Sequence[ItemRecord], own: Rule) -> list[Rule]:
    """The council's own vote, majority, and (where the members sent logprobs) confidence on the tail of the
    reply at T=1 and on the answer at T=0.5."""
    votes = [own, Rule("majority", own.extract, tie_break=own.tie_break, quorum=own.quorum)]
    if any(a.confidence is not None or a.signals for r in records for a in r.answers):
        votes += [Rule("confidence", own.extract, "tail", 1.0, own.tie_break, own.quorum),
                  Rule("confidence", own.extract, "answer", 0.5, own.tie_break, own.quorum)]
    return list({vote_label(v): v for v in votes}.values())


def _plan(name: str, kind: str, rule: Rule, records: Sequence[ItemRecord],
          results: list[tuple[str | None, float, float, int, bool]], **cascade: float | None) -> PlanScore:
    s = _spend(name, records, results, rule.extract)
    correct = sum(is_right(res[0], reference(r, rule.extract)) for res, r in zip(results, records, strict=True))
    return PlanScore(name=name, kind=kind, vote=vote_label(rule), accuracy=s.accuracy, correct=correct,
                     tokens_per_item=s.tokens_per_item, ms_per_item=s.ms_per_item,
                     members_per_item=s.members_per_item, stopped_early=s.stopped_early, **cascade)


def mark_front(plans: list[PlanScore], base: PlanScore) -> list[PlanScore]:
    """`pareto` on the plans no other beats on both accuracy and tokens; `keeps_accuracy` on those at `base`'s
    accuracy or above; `token_share` of `base`'s tokens."""
    best = -1.0
    for p in sorted(plans, key=lambda p: (p.tokens_per_item, -p.accuracy)):
        p.pareto = p.accuracy > best
        best = max(best, p.accuracy)
        p.keeps_accuracy = p.accuracy >= base.accuracy - 1e-9
        p.token_share = p.tokens_per_item / base.tokens_per_item if base.tokens_per_item else 1.0
    return plans


def all_plans(records: Sequence[ItemRecord], own: Rule, config: CouncilConfig) -> list[PlanScore]:
    """Every member, early stop and every `{first, then, agreement}` cascade (and the policy's own), under each
    vote of `plan_votes`, replayed on every item; the Pareto front against the council's own accuracy."""
    size = len(records[0].answers)
    plans: list[PlanScore] = []
    for rule in plan_votes(records, own):
        label = vote_label(rule)
        every = [(council_answer(r.answers, rule), float(sum(a.completion_tokens for a in r.answers)), r.wall_ms,
                  size, False) for r in records]
        plans.append(_plan(f"every member ({label})", "every member", rule, records, every))
        plans.append(_plan(f"early stop ({label})", "early stop", rule, records,
                           [early_stop(r, rule, config.quorum_count()) for r in records]))
        if config.vote.cascade is not None:
            stages, agreement = config.stages(), config.vote.cascade.agreement
            plans.append(_plan(f"cascade (policy) {stages} ({label})", "cascade (policy)", rule, records,
                               [cascade(r, rule, stages, agreement, config) for r in records], agreement=agreement))
        for first in (f for f in PLAN_FIRST if f < size):
            for then in PLAN_THEN:
                stages = CascadeConfig(first=first, then=then).resolve(size)
                for agreement in PLAN_AGREEMENT:
                    plans.append(_plan(f"first {first}, then {then}, agreement {agreement:g} ({label})", "cascade",
                                       rule, records, [cascade(r, rule, stages, agreement, config) for r in records],
                                       first=first, then=then, agreement=agreement))
    return mark_front(plans, plans[0])


def score_items(records: Sequence[ItemRecord], rule: Rule) -> list[ItemScore]:
    out = []
    for r in records:
        decision = council_decision(r.answers, rule)
        ref = reference(r, rule.extract)
        out.append(ItemScore(index=r.index, answer=decision.answer if decision else None,
                             agreement=decision.agreement if decision else 0.0,
                             correct=decision is not None and is_right(decision.answer, ref),
                             right_seats=sum(a.status == "ok" and is_right(vote_of(a, rule.extract), ref)
                                             for a in r.answers)))
    return out


def leave_one_out(records: Sequence[ItemRecord], rule: Rule) -> list[LeaveOneOut]:
    size = len(records[0].answers)
    full = [council_answer(r.answers, rule) for r in records]
    base = sum(is_right(d, reference(r, rule.extract)) for d, r in zip(full, records, strict=True))
    rows = []
    for m in range(size):
        keep = [i for i in range(size) if i != m]
        without = [council_answer(r.answers, rule, keep) for r in records]
        correct = sum(is_right(d, reference(r, rule.extract)) for d, r in zip(without, records, strict=True))
        changed = sum(a != b for a, b in zip(full, without, strict=True))
        delta = _accuracy(correct - base, len(records))
        verdict = ("never changes the outcome" if changed == 0 else "lowers it" if delta > 0 else "raises it"
                   if delta < 0 else "changes it, no net effect")
        rows.append(LeaveOneOut(member=records[0].answers[m].member, accuracy_without=_accuracy(correct, len(records)),
                                delta=delta, changed_items=changed, verdict=verdict))
    return rows


def unknown_logprob_ties(records: Sequence[ItemRecord], rule: Rule) -> int:
    """Items whose tie went to the tie-break rule `logprob` (or a rule after it) in records that do not say what the
    live rule read (made before `logprob` was kept): the replay broke those ties by the next rule, live may not
    have."""
    rules = [*rule.tie_break, *([] if "order" in rule.tie_break else ["order"])]
    if "logprob" not in rules:
        return 0
    count = 0
    for r in records:
        if all(a.logprob_known for a in r.answers if a.status == "ok"):
            continue
        decision = council_decision(r.answers, rule)
        if decision is not None and decision.tie_broken_by is not None and (
                rules.index(decision.tie_broken_by) >= rules.index("logprob")):
            count += 1
    return count


def with_caps(records: Sequence[ItemRecord], config: CouncilConfig, council: str) -> list[ItemRecord]:
    """Records with each answer's max_tokens filled from the policy's seats where the record has neither it nor a
    finish_reason (recorded before either was kept), so that a reply that used every token counts as cut off."""
    caps = {name: seat.sampling.max_tokens for name, seat, _ in config.seats(council)}

    def fill(a: MemberAnswer) -> MemberAnswer:
        known = a.finish_reason is not None or a.max_tokens is not None
        return a if known or caps.get(a.member) is None else a.model_copy(update={"max_tokens": caps[a.member]})

    return [r.model_copy(update={"answers": [fill(a) for a in r.answers]}) for r in records]


def held_out_best(records: Sequence[ItemRecord], how: str) -> float | None:
    """The accuracy of the best member picked on one half of the items (even, odd) and scored on the other, both
    ways: picking in hindsight on the same items rewards the luckiest sample."""
    if len(records) < 2:
        return None
    hits = [[a.status == "ok" and is_right(vote_of(a, how), reference(r, how)) for a in r.answers] for r in records]
    correct = 0
    for picked_on, scored_on in ((hits[::2], hits[1::2]), (hits[1::2], hits[::2])):
        totals = [sum(row[m] for row in picked_on) for m in range(len(hits[0]))]
        best = totals.index(max(totals))  # ties: the first in council order
        correct += sum(row[best] for row in scored_on)
    return _accuracy(correct, len(records))


def greedy_and_samples(members: Sequence[MemberScore], config: CouncilConfig,
                       council: str) -> tuple[MemberScore, list[MemberScore]] | None:
    """When every seat is one model (samples of it): the greedy seat (the first at temperature 0, else the first
    seat) and the other seats, its samples. None for a council of different models."""
    seats = {name: seat for name, seat, _ in config.seats(council)}
    if len(members) < 2 or len({m.model for m in members}) != 1:
        return None
    greedy = next((m for m in members if m.name in seats and seats[m.name].sampling.temperature == 0), members[0])
    return greedy, [m for m in members if m is not greedy]


# Scored beside the council's own extractor.
EXTRACTORS = ("auto", "number", "choice", "text")


def score(records: list[ItemRecord], council: str, config: CouncilConfig, data: str) -> EvalReport:
    missing = unanswered(records)
    records = with_caps(with_every_seat(records, [(name, seat.model) for name, seat, _ in config.seats(council)]),
                        config, council)
    vote = config.vote
    own = Rule(vote.strategy if vote.strategy != "judge" else "majority", vote.extract, vote.confidence,
               vote.confidence_temperature, tuple(vote.tie_break), config.quorum)
    members = score_members(records, vote.extract)
    rules = [Rule(s, how, tie_break=own.tie_break, quorum=own.quorum)
             for how in dict.fromkeys((vote.extract, *EXTRACTORS)) for s in ("majority", "weighted", "similarity")]
    rules += [Rule("confidence", vote.extract, signal, t, own.tie_break, own.quorum)
              for signal in ("answer", "reply", "tail")
              for t in (0.5, 1.0, 2.0)]
    oracle = sum(any(a.status == "ok" and is_right(vote_of(a, vote.extract), reference(r, vote.extract))
                     for a in r.answers) for r in records)
    best = max(members, key=lambda m: (m.accuracy, -members.index(m)))
    sampled = greedy_and_samples(members, config, council)
    plans = all_plans(records, own, config)
    notes = []
    if unsure := unknown_logprob_ties(records, own):
        notes.append(f"{unsure} of {len(records)} items tied under the council's vote and reached tie_break `logprob` "
                     "in records made before logprobs were recorded: the replay broke those ties by the next rule, "
                     "the live council may have answered otherwise")
    return EvalReport(council=council, data=data, items=len(records), unanswered=missing, strategy=own.strategy,
                      extract=own.extract, notes=notes,
                      members=members, best_member=best.name,
                      best_member_held_out=held_out_best(records, vote.extract),
                      greedy_member=sampled[0].name if sampled else None,
                      samples_mean=sum(m.accuracy for m in sampled[1]) / len(sampled[1]) if sampled else None,
                      strategies=[score_rule(records, r) for r in rules],
                      oracle=_accuracy(oracle, len(records)), spend=spending(records, own, config),
                      leave_one_out=leave_one_out(records, own), council_accuracy=plans[0].accuracy, plans=plans,
                      items_scored=score_items(records, own), records=records)
