"""Offline call votes and scores on recorded answers (BFCL items from the real wheel): parallel calls in another
order agree, invalid calls abstain, "no call" can win, and the per-argument vote mixes values across seats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from council.evaluation.bfcl import BfclItem, download_wheel, grade, load_bfcl, reference_calls
from council.evaluation.calls import CallsRow, cascade_row, score_calls, vote_argument, vote_set
from council.evaluation.dataset import DatasetError
from council.evaluation.record import ItemRecord, MemberAnswer
from council.policy.schema import VoteConfig


@pytest.fixture(scope="module")
def items() -> dict[str, BfclItem]:
    try:
        wheel = download_wheel()
    except DatasetError as exc:
        pytest.skip(f"the bfcl-eval wheel cannot be downloaded: {exc}")
    return {i.id: i for i in load_bfcl(wheel, ("simple_python", "parallel", "irrelevance"))}


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def seat(i: int, calls: list[dict[str, Any]] | None, text: str = "", weight: float = 1.0) -> MemberAnswer:
    return MemberAnswer(member=f"c/{i}", model="m", status="ok", text=text, tool_calls=calls or None, weight=weight,
                        completion_tokens=10, latency_ms=100)


def test_parallel_calls_in_another_order_are_one_vote(items: dict[str, BfclItem]) -> None:
    item = items["parallel_0"]
    right = reference_calls(item)
    wrong = [call("spotify_play", artist="Taylor Swift", duration=99)]
    seats = [seat(0, wrong), seat(1, right), seat(2, right[::-1])]
    decided = vote_set(seats, item)
    assert decided is not None and grade(item, decided).valid


def test_invalid_calls_abstain_and_no_call_can_win(items: dict[str, BfclItem]) -> None:
    item = items["simple_python_0"]
    bad = [call("calculate_triangle_area", base="ten", height=5)]  # fails the schema
    assert vote_set([seat(0, bad), seat(1, bad), seat(2, reference_calls(item))], item) == reference_calls(item)
    assert vote_set([seat(0, bad)], item) is None  # every seat abstained
    no_call = vote_set([seat(0, None, "I can't"), seat(1, None, "no"), seat(2, reference_calls(item))], item)
    assert no_call == []
    irrelevant = items["irrelevance_0"]
    assert grade(irrelevant, vote_set([seat(0, None, "no"), seat(1, None, "no"),
                                       seat(2, [call(irrelevant.tools[0]["function"]["name"], weight=1.0,
                                                     height=2.0)])], irrelevant) or []).valid


def test_argument_vote_takes_each_value_from_the_majority(items: dict[str, BfclItem]) -> None:
    item = items["simple_python_0"]  # calculate_triangle_area(base=10, height=5)
    seats = [seat(0, [call("calculate_triangle_area", base=10, height=6)]),
             seat(1, [call("calculate_triangle_area", base=11, height=5)]),
             seat(2, [call("calculate_triangle_area", base=10, height=5, unit="cm")])]
    assert not grade(item, vote_set(seats, item) or []).valid  # three different sets: the first wins
    decided = vote_argument(seats, item)
    assert decided is not None and json.loads(decided[0]["function"]["arguments"]) == {"base": 10, "height": 5}
    assert grade(item, decided).valid


def test_scores_per_category_from_records(items: dict[str, BfclItem], tmp_path: Path) -> None:
    chosen = [items["simple_python_0"], items["parallel_0"], items["irrelevance_0"]]
    records = []
    for n, item in enumerate(chosen):
        # Seats 0 and 2 call (right, except on irrelevance, where any call is wrong); seat 1 never calls.
        calls = reference_calls(item) or [call(item.tools[0]["function"]["name"], weight=70.0, height=1.8)]
        answers = [seat(0, calls), seat(1, None, "no"), seat(2, calls)]
        records.append(ItemRecord(index=n, line=n + 1, question=item.question, reference=item.reference,
                                  wall_ms=1000, answers=answers, item_id=item.id, category=item.category))
    report = score_calls(records, chosen, "c", "bfcl")
    assert report.categories == ["simple_python", "parallel", "irrelevance"]
    first, second, _ = report.members
    assert [c.correct for c in first.categories] == [1, 1, 0, 2] and [c.correct for c in second.categories] == [
        0, 0, 1, 1]
    council = report.councils[0]
    assert council.name == "council (set)" and [c.correct for c in council.categories] == [1, 1, 0, 2]
    assert [c.correct for c in report.oracle.categories] == [1, 1, 1, 3]
    assert council.overall().tokens_per_item == 30 and first.overall().invalid_calls == 0


def test_a_cascade_answers_from_its_first_seats_where_they_agree_and_asks_every_seat_otherwise(
        items: dict[str, BfclItem]) -> None:
    item = items["simple_python_0"]
    right = reference_calls(item)
    wrong = [call("calculate_triangle_area", base=1, height=1)]
    bad = [call("calculate_triangle_area", base="ten", height=5)]  # fails the schema: abstains

    def record(n: int, *answers: MemberAnswer) -> ItemRecord:
        return ItemRecord(index=n, line=n + 1, question=item.question, reference=item.reference, wall_ms=1000,
                          answers=list(answers), item_id=item.id, category=item.category)

    records = [
        record(0, seat(0, wrong), seat(1, wrong), seat(2, right), seat(3, right), seat(4, right)),  # agree: wrong
        record(1, seat(0, right), seat(1, wrong), seat(2, wrong), seat(3, wrong), seat(4, right)),  # split: all vote
        # one abstains: no agreement (before, the one seat that voted decided alone), so every seat votes
        record(2, seat(0, bad), seat(1, right), seat(2, wrong), seat(3, right), seat(4, right)),
        record(3, seat(0, bad), seat(1, bad), seat(2, right), seat(3, right), seat(4, wrong)),  # none votes: all
    ]
    row = cascade_row(records, {item.id: item}, "set", first=2)
    assert row.hits == [False, False, True, True]
    # Tokens only of the seats asked: 2, 5, 5 and 5 seats of 10 tokens each.
    assert row.overall().tokens_per_item == (20 + 50 + 50 + 50) / 4
    assert cascade_row(records, {item.id: item}, "set", first=5).hits == [True, False, True, True]  # all first


def test_an_item_no_member_answered_counts_wrong_for_every_row(items: dict[str, BfclItem]) -> None:
    chosen = [items["simple_python_0"], items["parallel_0"]]
    records = [ItemRecord(index=n, line=n + 1, question=item.question, reference=item.reference, wall_ms=1000,
                          answers=[seat(0, reference_calls(item)), seat(1, reference_calls(item))] if n == 0 else [],
                          error=None if n == 0 else "503: no member can take it", item_id=item.id,
                          category=item.category) for n, item in enumerate(chosen)]
    report = score_calls(records, chosen, "c", "bfcl", seats=[("c/0", "m"), ("c/1", "m")])
    assert report.unanswered == 1 and [m.name for m in report.members] == ["c/0", "c/1"]
    assert all(m.hits == [True, False] for m in report.members) and report.councils[0].hits == [True, False]
    assert report.oracle.hits == [True, False]
    # None answered: the seats come from the policy.
    report = score_calls([r.model_copy(update={"answers": []}) for r in records], chosen, "c", "bfcl",
                         seats=[("c/0", "m"), ("c/1", "m")])
    assert report.unanswered == 2 and [m.hits for m in report.members] == [[False, False]] * 2


def test_the_council_rows_replay_the_policys_vote_and_tool_choice(items: dict[str, BfclItem]) -> None:
    # The "council set" / "council per_argument" rows always decided by majority with the default tie-break and no
    # tool_choice, whatever the policy said.
    item = items["simple_python_0"]
    right = reference_calls(item)
    wrong = [call("calculate_triangle_area", base=10, height=6)]
    record = ItemRecord(index=0, line=1, question=item.question, reference=item.reference, wall_ms=1.0,
                        item_id=item.id, category=item.category,
                        answers=[seat(0, wrong), seat(1, wrong), seat(2, right, weight=3.0)])

    def rows(**kwargs: Any) -> dict[str, bool]:
        report = score_calls([record], [item], "c", "d", recover=False, **kwargs)
        return {row.name: row.hits[0] for row in report.councils if "council " in row.name.removeprefix("council (")}

    both = {"council (council set)", "council (council per_argument)"}
    assert rows() == dict.fromkeys(both, False)  # majority: the two wrong seats
    assert rows(vote=VoteConfig(strategy="weighted")) == dict.fromkeys(both, True)  # weight 3 against 2
    # A tie (1 against 1; the right seat answered in 50 ms, the other in 100) broken as the policy says.
    faster = seat(1, right).model_copy(update={"latency_ms": 50})
    tie = record.model_copy(update={"answers": [seat(0, wrong), faster]})
    by_latency = score_calls([tie], [item], "c", "d", recover=False, vote=VoteConfig(tie_break=["latency", "order"]))
    assert [r.hits[0] for r in by_latency.councils[2:]] == [True, True]
    by_order = score_calls([tie], [item], "c", "d", recover=False, vote=VoteConfig(tie_break=["order"]))
    assert [r.hits[0] for r in by_order.councils[2:]] == [False, False]
    # tool_choice required: a seat that calls nothing abstains, so "no call" cannot win.
    no_call = record.model_copy(update={"answers": [seat(0, None, "no"), seat(1, None, "no"), seat(2, right)]})
    assert not score_calls([no_call], [item], "c", "d", recover=False).councils[2].hits[0]
    required = score_calls([no_call], [item], "c", "d", recover=False, tool_choice="required")
    assert [r.hits[0] for r in required.councils[2:]] == [True, True]
    assert required.vote[0].startswith("council set / council per_argument: strategy majority, tie_break weight, "
                                       "latency, order, tool_choice required")


def test_tool_choice_none_replays_a_text_vote_that_answers_without_calls(items: dict[str, BfclItem]) -> None:
    """`--tool-choice none` asks the members for text: the council rows replay the live council, which votes on the
    text and answers with no call, whatever calls the records hold (here, calls made anyway): right on irrelevance
    items, wrong where a call was wanted, and undecided where every reply abstains."""
    wanted, irrelevant = items["simple_python_0"], items["irrelevance_0"]
    stray = [call(irrelevant.tools[0]["function"]["name"], weight=1.0, height=2.0)]
    chosen = [wanted, irrelevant, wanted]
    texts = [["5", "5", "7"], ["5", "5", "7"], ["no idea", "none", "?"]]  # the last item: every reply abstains
    records = [ItemRecord(index=n, line=n + 1, question=item.question, reference=item.reference, wall_ms=1.0,
                          item_id=item.id, category=item.category,
                          answers=[seat(0, reference_calls(item) if item is wanted else stray, said[0]),
                                   seat(1, reference_calls(item) if item is wanted else stray, said[1]),
                                   seat(2, None, said[2]).model_copy(update={"status": "timeout"})])
               for n, (item, said) in enumerate(zip(chosen, texts, strict=True))]
    vote = VoteConfig(extract="number")

    def council_rows(tool_choice: str | None) -> list[CallsRow]:
        report = score_calls(records, chosen, "c", "d", recover=False, vote=vote, tool_choice=tool_choice)
        rows = [r for r in report.councils if r.name in ("council (council set)", "council (council per_argument)")]
        assert len(rows) == 2
        return rows

    # The recorded calls decide under `auto`: right where a call was wanted, wrong on the irrelevance item.
    assert [row.hits for row in council_rows(None)] == [[True, False, True]] * 2
    for row in council_rows("none"):
        assert row.hits == [False, True, False]  # no call: the text vote's answer ("5") carries none
        assert row.overall().undecided == 1  # the item whose replies all abstain
        assert row.overall().invalid_calls == 0
    report = score_calls(records, chosen, "c", "d", recover=False, vote=vote, tool_choice="none")
    assert report.vote[0].startswith("council set / council per_argument: strategy majority, tie_break weight, "
                                      "latency, order, tool_choice none")


@pytest.mark.anyio
async def test_a_judges_recorded_reply_replays_the_live_councils_pick(items: dict[str, BfclItem]) -> None:
    """`vote.strategy: judge` replays offline from the judge's recorded reply: the same prompt the live judge read,
    the same pick, the same calls; without its reply, majority decides, as live when the judge names nothing."""
    from council.evaluation.calls import council_voter, judge_prompt_for
    from council.evaluation.record import engine_asker
    from council.voting.request import last_user_text
    from tests.voting.fakes import Say, council

    item = items["simple_python_0"]  # calculate_triangle_area(base=10, height=5)
    right, wrong = reference_calls(item), [call("calculate_triangle_area", base=10, height=6)]
    asked: list[str] = []

    def says(calls: list[dict[str, Any]]) -> Any:
        def script(payload: Any) -> Say:
            prompt = last_user_text(payload["messages"])
            if prompt.startswith("Several assistants answered"):
                asked.append(prompt)
                return Say("3")  # the third answer: seat 2's, outvoted two to one
            return Say("", message={"role": "assistant", "content": None, "tool_calls": calls})
        return script

    engine, _ = council({"vote": {"strategy": "judge", "judge": 2}}, says(wrong), says(wrong), says(right))
    answers, error = await engine_asker(engine)(item)
    assert error is None and len(asked) == 1
    prompt = judge_prompt_for(answers, item)
    assert prompt == asked[0]
    live = await engine.ask(item_request(item))
    assert grade(item, live.tool_calls).valid  # the judge's pick, against the majority

    def replayed(judged: dict[str, str]) -> list[dict[str, Any]]:
        voter = council_voter("set", "judge", judged=judged)
        assert voter is not None
        return voter(answers, item) or []

    assert grade(item, replayed({prompt: "3"})).valid
    assert not grade(item, replayed({})).valid  # no reply recorded: majority
    assert not grade(item, replayed({prompt: "none of them"})).valid  # it named no answer: majority
    assert judge_prompt_for([a for a in answers if a.member != answers[2].member], item) is None  # the rest agree


async def replayed_hits(engine: Any, item: BfclItem) -> dict[str, bool]:
    """The item asked of `engine` as `council eval` records it, then re-scored offline: each council row's hit."""
    from council.evaluation.record import engine_asker

    answers, error = await engine_asker(engine)(item)
    assert error is None
    record = ItemRecord(index=0, line=1, question=item.question, reference=item.reference, wall_ms=1.0,
                        item_id=item.id, category=item.category, answers=answers)
    report = score_calls([record], [item], "c", "d", vote=VoteConfig(tools="set"))
    return {row.name: row.hits[0] for row in report.councils}


def item_request(item: BfclItem) -> Any:
    from council.evaluation.record import item_body
    from council.voting.request import CouncilRequest

    return CouncilRequest.of(item_body(item), early_stop=False)


def test_an_item_below_the_quorum_is_decided_by_no_call_vote(items: dict[str, BfclItem]) -> None:
    """As live (`quorum_not_met`): one seat of three answered, the quorum a majority; the replay voted its call."""
    item = items["simple_python_0"]
    failed = MemberAnswer(member="c/1", model="m", status="timeout", completion_tokens=0, latency_ms=100)
    record = ItemRecord(index=0, line=1, question=item.question, reference=item.reference, wall_ms=1.0,
                        item_id=item.id, category=item.category, answers=[
                            seat(0, reference_calls(item)), failed, failed.model_copy(update={"member": "c/2"})])
    for quorum, decided in (("majority", False), (1, True)):
        report = score_calls([record], [item], "c", "d", recover=False, quorum=quorum)
        assert [row.hits[0] for row in report.councils] == [decided] * len(report.councils), (quorum, report.councils)


@pytest.mark.anyio
async def test_a_call_written_as_text_in_a_reply_cut_at_its_end_votes_offline_as_live(
        items: dict[str, BfclItem]) -> None:
    """A seat that wrote its call whole as text and hit max_tokens right after it: the live engine recovers the
    call and counts it; the replay made it a native call first, and a native call cut off by max_tokens abstains,
    so the "council set" rows scored a right council wrong."""
    from tests.voting.fakes import Say, council

    item = items["simple_python_0"]  # calculate_triangle_area(base=10, height=5)
    right = json.dumps({"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}})
    wrong = [call("calculate_triangle_area", base=10, height=6)]
    engine, _ = council({"vote": {"strategy": "majority", "tools": "set"}},
                        Say("", message={"role": "assistant", "content": None, "tool_calls": wrong}),
                        Say(right, finish_reason="length"), Say(right))
    live = await engine.ask(item_request(item))
    assert grade(item, live.tool_calls).valid
    replayed = await replayed_hits(engine, item)
    assert replayed["council (council set)"] and replayed["council (council per_argument)"], replayed


@pytest.mark.anyio
async def test_a_default_left_out_and_a_reply_cut_off_before_its_calls_vote_offline_as_live(
        items: dict[str, BfclItem]) -> None:
    """Seats that differ only by an argument equal to its declared default make one call; seats cut off by
    max_tokens while still explaining abstain rather than voting "no call". Live and replayed alike, by the
    council's own vote and the evaluation's stand-ins."""
    from tests.voting.fakes import Say, council

    item = items["simple_python_50"]  # pressure: an integer, `default: 1`; the reference allows it or nothing
    given = {"substance": "ice", "mass": 1, "initial_temperature": 0, "final_temperature": 100}

    def native(**args: Any) -> Say:
        return Say("", message={"role": "assistant", "content": None,
                                "tool_calls": [call("entropy_change_calculate", **args)]})

    cut = Say("To work out the entropy change of melting ice, I first need the heat absorbed, which",
              finish_reason="length")
    engine, _ = council({"vote": {"strategy": "majority", "tools": "set"}}, cut, cut, cut,
                        native(**{**given, "mass": 2}), native(**given, pressure=1), native(**given))
    live = await engine.ask(item_request(item))
    assert live.council_json()["votes"] == {
        "entropy_change_calculate(" + json.dumps(given, sort_keys=True, separators=(",", ":")) + ")": 2.0,
        "entropy_change_calculate(" + json.dumps({**given, "mass": 2}, sort_keys=True, separators=(",", ":"))
        + ")": 1.0}
    assert grade(item, live.tool_calls).valid
    replayed = await replayed_hits(engine, item)
    assert all(replayed.values()), replayed
