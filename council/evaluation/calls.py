"""Scoring recorded function-calling answers (BFCL) offline: each member and the council, per category.

A seat's answer is its set of calls, or no call. The council's answer is re-decided from the recorded seat
answers by a call vote (`VOTERS`, by mode), so a vote rule can be compared on the same recording without asking
any model again:

- `set`: every call of a seat, as (name, canonical JSON arguments), compared as a multiset (parallel calls in
  another order agree); "no call" is one more answer and can win. A seat whose calls are not all valid (an
  undeclared name, arguments its tool's JSON Schema refuses) abstains, and so does a reply cut off by max_tokens
  before it made a call. Arguments equal to their declared default are left out first (`voted_calls`), as the
  council does. Weighted plurality; ties go to the seat first in council order.
- `argument`: the functions are chosen as in `set`, by the multiset of called names (or no call); the seats that
  called exactly those are aligned call by call (each seat's calls matched to the first such seat's, one to one,
  by name and then by the most equal argument values), and each argument takes the weighted plurality of its
  values (absent is a value); a result that fails its schema falls back to `set`'s answer.

`cascade_row` replays a council as a cascade: its first seats alone where they agree, every seat otherwise.

These are the evaluation's own reading of the vote; a council's live vote code can be plugged in as another mode
(`VOTERS[mode] = f`, `f(answers, item) -> calls or None`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from council.evaluation.bfcl import BfclItem, grade, schema_problems
from council.evaluation.record import ItemRecord, MemberAnswer, unanswered, with_every_seat
from council.policy.schema import VoteConfig, quorum_needed
from council.voting.extract import canonical_tool_call
from council.voting.tools import without_defaults

Calls = list[dict[str, Any]]
# A call vote: the seats' recorded answers to one item → the council's calls ([] = no call), None when every seat
# abstained.
Voter = Callable[[Sequence[MemberAnswer], BfclItem], Calls | None]
NO_CALL = ("no call",)


def calls_of(answer: MemberAnswer) -> Calls:
    return list(answer.tool_calls or [])


def voted_calls(answer: MemberAnswer, item: BfclItem) -> Calls:
    """A seat's calls as the council counts and returns them: each less the arguments that equal the default
    their property declares (`council.voting.tools.without_defaults`)."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in item.tools}
    out = []
    for call in calls_of(answer):
        if _name(call) in schemas:
            kept, dropped = without_defaults(schemas[_name(call)], _args(call))
            if dropped:
                call = {**call, "function": {**call["function"], "arguments": json.dumps(kept)}}
        out.append(call)
    return out


def call_key(call: Mapping[str, Any]) -> str:
    fn = call.get("function") or {}
    return canonical_tool_call(str(fn.get("name") or ""), fn.get("arguments") or "{}") or f"{fn.get('name')}(?)"


def ballot(answer: MemberAnswer, item: BfclItem) -> tuple[str, ...] | None:
    """What a seat's answer votes for: `NO_CALL`, the sorted keys of its calls, or None (it abstains: it did not
    answer, or a call of it is invalid)."""
    if answer.status != "ok":
        return None
    calls = voted_calls(answer, item)
    if not calls:  # a reply cut off by max_tokens is unfinished: its lack of a call is no answer
        return None if answer.cut_off and not answer.recovered else NO_CALL
    if schema_problems(item, calls):
        return None
    return tuple(sorted(call_key(c) for c in calls))


def _plurality(keys: Sequence[tuple[Any, float]]) -> Any:
    """The key with the most weight; ties go to the one that came first."""
    totals: dict[Any, float] = {}
    for key, weight in keys:
        totals[key] = totals.get(key, 0.0) + weight
    return max(totals, key=lambda k: (totals[k], -list(totals).index(k))) if totals else None


def vote_set(answers: Sequence[MemberAnswer], item: BfclItem) -> Calls | None:
    votes = [(b, a.weight, a) for a in answers if (b := ballot(a, item)) is not None]
    winner = _plurality([(b, w) for b, w, _ in votes])
    if winner is None:
        return None
    return [] if winner == NO_CALL else voted_calls(next(a for b, _, a in votes if b == winner), item)


def _args(call: Mapping[str, Any]) -> dict[str, Any]:
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder's stack
        return {}
    return value if isinstance(value, dict) else {}


def _name(call: Mapping[str, Any]) -> str:
    return str((call.get("function") or {}).get("name") or "")


def _align(anchor: Calls, calls: Calls) -> list[dict[str, Any]]:
    """`calls` reordered to match `anchor` one to one: same name, then the most equal argument values."""
    left = list(range(len(calls)))
    out = []
    for want in anchor:
        wanted = _args(want)

        def agreement(i: int, wanted: dict[str, Any] = wanted, name: str = _name(want)) -> tuple[bool, int]:
            mine = _args(calls[i])
            return _name(calls[i]) == name, sum(json.dumps(mine.get(k), sort_keys=True) == json.dumps(
                v, sort_keys=True) for k, v in wanted.items() if k in mine)

        best = max(left, key=lambda i: (*agreement(i), -i))
        left.remove(best)
        out.append(_args(calls[best]))
    return out


ABSENT = "\0absent"


def vote_argument(answers: Sequence[MemberAnswer], item: BfclItem) -> Calls | None:
    fallback = vote_set(answers, item)
    votes = [(b, a) for a in answers if (b := ballot(a, item)) is not None]
    shapes = [(NO_CALL if b == NO_CALL else tuple(sorted(_name(c) for c in calls_of(a))), a.weight)
              for b, a in votes]
    shape = _plurality(shapes)
    if shape is None or shape == NO_CALL:
        return fallback if shape is None else []
    seats = [a for (s, _), (_, a) in zip(shapes, votes, strict=True) if s == shape]
    anchor = voted_calls(seats[0], item)
    aligned = [_align(anchor, voted_calls(a, item)) for a in seats]
    result = []
    for position, call in enumerate(anchor):
        keys = dict.fromkeys(k for row in aligned for k in row[position])
        args = {}
        for key in keys:
            value = _plurality([(json.dumps(row[position].get(key, ABSENT), sort_keys=True), a.weight)
                                for row, a in zip(aligned, seats, strict=True)])
            if value != json.dumps(ABSENT):
                args[key] = json.loads(value)
        result.append({**call, "function": {"name": _name(call), "arguments": json.dumps(args)}})
    return fallback if schema_problems(item, result) else result


DEFAULT_TIE_BREAK = ("weight", "latency", "order")


def council_voter(mode: str, strategy: str = "majority", tie_break: Sequence[str] = DEFAULT_TIE_BREAK,
                  temperature: float = 1.0, how: str = "auto", tool_choice: Any = None,
                  judged: Mapping[str, str] | None = None) -> Voter | None:
    """The live council's own call vote (`council.voting.tools`, where this checkout has it) as an offline voter:
    the recorded native calls read and validated as the engine reads them (under the request's `tool_choice`), and
    decided with the council's strategy, tie-break, confidence temperature and extractor, as `CouncilEngine`
    decides them. `judge` is replayed from the judge's recorded replies (`judged`: its prompt, `judge_prompt_for`,
    → what it answered), picked as the live council picks; where none is recorded, or it names no answer, majority
    decides, as the live council falls back to it. `tool_choice: none` asks the members for text: the live council
    votes on the text and answers without calls (None when every reply abstains)."""
    try:
        from council.voting import tools  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    from council.voting.extract import extract, extract_cut
    from council.voting.vote import Ballot, VoteError, decide, judge_pick, judge_prompt

    voted = "majority" if strategy == "judge" else strategy

    def vote(answers: Sequence[MemberAnswer], item: BfclItem) -> Calls | None:
        if tool_choice == "none":
            texts = [Ballot(member=a.member, order=order, answer=(extract_cut if a.cut_off else extract)(a.text, how),
                            text=a.text, weight=a.weight, latency_ms=a.latency_ms, logprob=a.logprob)
                     for order, a in enumerate(answers) if a.status == "ok"]
            try:
                decide(texts, voted, tie_break, temperature=temperature)
            except VoteError:
                return None
            return []
        box = tools.Toolbox(item.tools, tool_choice)
        ballots, read = _tool_ballots(answers, box)
        try:
            picked = None
            if strategy == "judge":  # as the engine: the judge's pick, else the majority's, decides the calls
                prompt, candidates = judge_prompt(item.question, ballots)
                if judged is not None and prompt in judged:
                    picked = judge_pick(judged[prompt], candidates, ballots, tie_break)
                picked = picked or decide(ballots, strategy, tie_break, temperature=temperature)
            decided = tools.decide_tools(ballots, read, box, mode=mode, strategy=voted, tie_break=tie_break,
                                         temperature=temperature, how=how, decision=picked)
        except (VoteError, ValueError):
            return None
        return [c.openai() for c in decided.calls]

    return vote


def _tool_ballots(answers: Sequence[MemberAnswer], box: Any) -> tuple[list[Any], dict[str, Any]]:
    """The seats' ballots on a request with tools, as the engine builds them, and each seat's read answer."""
    from council.voting import tools
    from council.voting.vote import Ballot

    read: dict[str, Any] = {}
    ballots = []
    for order, a in enumerate(answers):
        if a.status != "ok":
            continue
        # Recovery is applied to the records beforehand (as a separate arm), not here. A recovered call was written
        # whole in the text: the live engine's rule for a native call cut off by max_tokens (abstain) is not its.
        seen = tools.read_answer({"tool_calls": a.tool_calls} if a.tool_calls else None, a.text,
                                 None if a.recovered else "length" if a.cut_off else a.finish_reason, box,
                                 recover_calls=False)
        read[a.member] = seen
        ballots.append(Ballot(member=a.member, order=order, answer=seen.vote, text=tools.ballot_text(seen, a.text),
                              weight=a.weight, latency_ms=a.latency_ms, logprob=a.logprob))
    return ballots, read


def judge_prompt_for(answers: Sequence[MemberAnswer], item: BfclItem) -> str | None:
    """The prompt a live council's judge reads for these answers (`vote.strategy: judge`), or None where asking it
    cannot change the answer: the seats that vote all agree (or none votes)."""
    from council.voting import tools
    from council.voting.vote import judge_prompt

    ballots, _ = _tool_ballots(answers, tools.Toolbox(item.tools))
    if len({b.answer for b in ballots if b.answer is not None}) < 2:
        return None
    prompt, candidates = judge_prompt(item.question, ballots)
    return prompt if candidates else None


COUNCIL_MODES = (("set", "council set"), ("per_argument", "council per_argument"))
VOTERS: dict[str, Voter] = {"set": vote_set, "argument": vote_argument}
# With the council's own vote code present, its two modes are scored beside the evaluation's reading (here with the
# vote's defaults; `score_calls` replays them with the policy's settings).
for _mode, _label in COUNCIL_MODES:
    if (_voter := council_voter(_mode)) is not None:
        VOTERS[_label] = _voter


def policy_voters(vote: VoteConfig, tool_choice: Any = None) -> dict[str, Voter]:
    """`VOTERS` with the council's own two modes deciding as the policy's vote does, under the run's `tool_choice`."""
    voters = dict(VOTERS)
    for mode, label in COUNCIL_MODES:
        found = council_voter(mode, vote.strategy, tuple(vote.tie_break), vote.confidence_temperature, vote.extract,
                              tool_choice)
        if found is not None:
            voters[label] = found
    return voters


def replayed_vote(vote: VoteConfig, tool_choice: Any = None) -> list[str]:
    """What the council rows replay of the policy's vote, and what they cannot."""
    said = [f"council set / council per_argument: strategy {vote.strategy}, tie_break {', '.join(vote.tie_break)}, "
            f"tool_choice {tool_choice or 'unset'}, each seat at its recorded weight (the policy's own tool vote: "
            f"{vote.tools})"]
    if vote.strategy == "judge":
        said.append("the judge is not asked again offline: majority decides the council rows, as it does live when "
                    "the judge names no answer")
    return said


class CategoryScore(BaseModel):
    category: str  # a BFCL category, or "overall"
    items: int
    correct: int
    accuracy: float
    invalid_calls: int = 0  # calls returned that fail their tool's schema (or name no declared tool)
    undecided: int = 0  # items where every seat abstained (counted wrong)
    tokens_per_item: float = 0.0
    ms_per_item: float = 0.0


class CallsRow(BaseModel):
    name: str  # a member, or `council (set)`, `council (argument)`, `oracle`
    model: str = ""
    categories: list[CategoryScore]
    hits: list[bool] = []  # right or not, item by item in the records' order (for paired comparisons)

    def overall(self) -> CategoryScore:
        return self.categories[-1]


class CallItem(BaseModel):
    """One item under the `set` vote, every seat asked."""

    index: int
    category: str
    agreement: float  # the winning call set's share of the weight of the seats that voted (0: all abstained)
    correct: bool  # the council's calls (`set` vote) are right
    right_seats: int  # seats whose own calls are right


class CallsReport(BaseModel):
    """`council eval --json` on function-calling data: rows per member and per council vote, per category."""

    kind: str = "function-calling"
    council: str
    data: str
    items: int
    # Items no member answered (refused, or the router could not be asked): counted wrong for every row.
    unanswered: int = 0
    categories: list[str]
    members: list[CallsRow]
    councils: list[CallsRow]
    oracle: CallsRow  # some seat right
    items_scored: list[CallItem] = []
    # How the council rows replay the policy's vote (strategy, tie-break, tool_choice), and what cannot be replayed.
    vote: list[str] = []
    records: list[ItemRecord]


def _category_scores(records: Sequence[ItemRecord], hits: Sequence[bool], invalid: Sequence[int],
                     undecided: Sequence[bool], tokens: Sequence[float], ms: Sequence[float]) -> list[CategoryScore]:
    categories = list(dict.fromkeys(r.category or "?" for r in records))
    out = []
    for category in [*categories, "overall"]:
        keep = [i for i, r in enumerate(records) if category == "overall" or (r.category or "?") == category]
        n = len(keep)
        out.append(CategoryScore(category=category, items=n, correct=sum(hits[i] for i in keep),
                                 accuracy=sum(hits[i] for i in keep) / n if n else 0.0,
                                 invalid_calls=sum(invalid[i] for i in keep),
                                 undecided=sum(undecided[i] for i in keep),
                                 tokens_per_item=sum(tokens[i] for i in keep) / n if n else 0.0,
                                 ms_per_item=sum(ms[i] for i in keep) / n if n else 0.0))
    return out


def _invalid(item: BfclItem, calls: Calls | None) -> int:
    return len(schema_problems(item, calls or []))


def member_rows(records: Sequence[ItemRecord], items: Mapping[str, BfclItem]) -> list[CallsRow]:
    rows = []
    for m, first in enumerate(records[0].answers):
        mine = [r.answers[m] for r in records]
        found = [items[r.item_id or ""] for r in records]
        hits = [a.status == "ok" and grade(i, calls_of(a)).valid for a, i in zip(mine, found, strict=True)]
        rows.append(CallsRow(name=first.member, model=first.model, hits=hits, categories=_category_scores(
            records, hits, [_invalid(i, calls_of(a)) for a, i in zip(mine, found, strict=True)],
            [a.status != "ok" for a in mine], [a.completion_tokens for a in mine], [a.latency_ms for a in mine])))
    return rows


def _quorate(answers: Sequence[MemberAnswer], quorum: int | Literal["majority", "all"]) -> bool:
    """Enough of the seats asked answered for the council's `quorum` (else the live council answers
    `quorum_not_met`, never a guess)."""
    return sum(a.status == "ok" for a in answers) >= quorum_needed(quorum, len(answers))


def council_row(records: Sequence[ItemRecord], items: Mapping[str, BfclItem], mode: str,
                keep: Sequence[int] | None = None, name: str | None = None,
                voters: Mapping[str, Voter] = VOTERS, quorum: int | Literal["majority", "all"] = 1) -> CallsRow:
    """The council's answers re-decided by `voters[mode]` (over the seats at `keep`, else all), scored; an item
    fewer seats answered than `quorum` needs is decided by none."""
    voter = voters[mode]
    decided, found, tokens = [], [], []
    for r in records:
        answers = [a for i, a in enumerate(r.answers) if keep is None or i in keep]
        item = items[r.item_id or ""]
        decided.append(voter(answers, item) if _quorate(answers, quorum) else None)
        found.append(item)
        tokens.append(sum(a.completion_tokens for a in answers))
    return _decided_row(name or f"council ({mode})", records, decided, found, tokens)


def _decided_row(name: str, records: Sequence[ItemRecord], decided: Sequence[Calls | None],
                 found: Sequence[BfclItem], tokens: Sequence[float]) -> CallsRow:
    """A council's decided calls, item by item, graded and scored per category."""
    hits = [d is not None and grade(i, d).valid for d, i in zip(decided, found, strict=True)]
    return CallsRow(name=name, hits=hits, categories=_category_scores(
        records, hits, [_invalid(i, d) for d, i in zip(decided, found, strict=True)], [d is None for d in decided],
        tokens, [r.wall_ms for r in records]))


def cascade_row(records: Sequence[ItemRecord], items: Mapping[str, BfclItem], mode: str, first: int) -> CallsRow:
    """The council as a cascade (`vote.cascade: {first: N}`), replayed: its first `first` seats answer alone when
    every one of them votes and all agree (a seat whose call is invalid abstains, and an abstention is no
    agreement, as in the live council), else every seat votes by `VOTERS[mode]`. Tokens count only the seats the
    cascade asked."""
    voter = VOTERS[mode]
    decided, found, tokens = [], [], []
    for r in records:
        item = items[r.item_id or ""]
        asked = r.answers[:first]
        votes = [(b, a) for a in asked if (b := ballot(a, item)) is not None]
        if len(votes) == len(asked) and all(b == votes[0][0] for b, _ in votes):
            decided.append([] if votes[0][0] == NO_CALL else voted_calls(votes[0][1], item))
        else:
            asked = r.answers
            decided.append(voter(asked, item))
        found.append(item)
        tokens.append(sum(a.completion_tokens for a in asked))
    return _decided_row(f"council ({mode}), cascade {{first: {first}}}", records, decided, found, tokens)


def oracle_row(records: Sequence[ItemRecord], items: Mapping[str, BfclItem]) -> CallsRow:
    hits = [any(a.status == "ok" and grade(items[r.item_id or ""], calls_of(a)).valid for a in r.answers)
            for r in records]
    zero = [0] * len(records)
    return CallsRow(name="oracle (some seat right)", hits=hits, categories=_category_scores(
        records, hits, zero, [False] * len(records), zero, zero))


def score_items(records: Sequence[ItemRecord], items: Mapping[str, BfclItem]) -> list[CallItem]:
    out = []
    for r in records:
        item = items[r.item_id or ""]
        votes = [(b, a.weight) for a in r.answers if (b := ballot(a, item)) is not None]
        winner, total = _plurality(votes), sum(w for _, w in votes)
        decided = vote_set(r.answers, item)
        out.append(CallItem(index=r.index, category=r.category or "?",
                            agreement=sum(w for b, w in votes if b == winner) / total if total else 0.0,
                            correct=decided is not None and grade(item, decided).valid,
                            right_seats=sum(a.status == "ok" and grade(item, calls_of(a)).valid for a in r.answers)))
    return out


def with_recovered_calls(records: Sequence[ItemRecord], items: Mapping[str, BfclItem],
                         prose: bool = False) -> list[ItemRecord]:
    """The records with each seat's calls written as text (`council.voting.recovery`) as its calls, where it made
    none the server parsed: what a council reads with `vote.recover_tool_calls` (its default). The recorded text
    stays, so the other reading is one flag away. `prose` also reads calls among prose (`recovery.among_prose`),
    which councils do not: the benchmark measures what that would change."""
    from council.voting.recovery import recover

    def fix(a: MemberAnswer, item: BfclItem) -> MemberAnswer:
        if a.tool_calls or a.status != "ok":
            return a
        found = recover(a.text, [t["function"]["name"] for t in item.tools], prose)
        if found is None:
            return a
        calls = [{"type": "function", "function": {"name": name, "arguments": args if isinstance(args, str)
                                                   else json.dumps(args)}} for name, args in found[0]]
        return a.model_copy(update={"tool_calls": calls, "recovered": True})

    return [r.model_copy(update={"answers": [fix(a, items[r.item_id or ""]) for a in r.answers]}) for r in records]


def score_calls(records: list[ItemRecord], items: Sequence[BfclItem], council: str, data: str,
                recover: bool = True, seats: Sequence[tuple[str, str]] = (), vote: VoteConfig | None = None,
                tool_choice: Any = None, quorum: int | Literal["majority", "all"] = 1) -> CallsReport:
    """Per member and per call vote; with `recover`, calls written as text count as the council reads them. An item
    no member answered counts wrong for every seat (`seats`, (name, model), name them when no item was answered).
    The council's own vote code decides as `vote` (the policy's) does, under the run's `tool_choice`, and an item
    fewer seats answered than the council's `quorum` needs is decided by none, as live."""
    vote = vote if vote is not None else VoteConfig()
    voters = policy_voters(vote, tool_choice)
    none = unanswered(records)
    records = with_every_seat(records, seats)
    by_id = {i.id: i for i in items}
    missing = [r.item_id for r in records if r.item_id not in by_id]
    if missing:
        raise KeyError(f"records of items not in the data: {', '.join(map(str, missing[:5]))}")
    if recover:
        records = with_recovered_calls(records, by_id)
    return CallsReport(council=council, data=data, items=len(records), unanswered=none,
                       categories=list(dict.fromkeys(r.category or "?" for r in records)),
                       members=member_rows(records, by_id),
                       councils=[council_row(records, by_id, m, voters=voters, quorum=quorum) for m in voters],
                       oracle=oracle_row(records, by_id), items_scored=score_items(records, by_id),
                       vote=replayed_vote(vote, tool_choice), records=records)
