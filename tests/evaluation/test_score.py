"""`council eval`'s scoring from recorded answers (in-process, no model asked): a council of samples is compared
with its greedy seat and the samples' mean, not with the luckiest sample; replies cut off by max_tokens abstain
offline as they do live, old records included."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from council.evaluation.record import ItemRecord, MemberAnswer, _from_outcomes
from council.evaluation.report import print_report
from council.evaluation.score import EvalReport, Rule, council_answer, score, score_members
from council.policy.schema import CouncilConfig
from council.voting.client import MemberReply
from council.voting.request import CouncilRequest
from tests.conftest import run_cli
from tests.voting.fakes import Say, council

SAMPLES = CouncilConfig.model_validate({
    "members": [{"model": "q", "sampling": {"temperature": 0, "max_tokens": 400}},
                {"model": "q", "samples": 4, "sampling": {"temperature": 0.8, "seed": 1, "max_tokens": 400}}],
    "vote": {"strategy": "majority", "extract": "number"}, "quorum": 1})
SEATS = ["sc/0", "sc/1#0", "sc/1#1", "sc/1#2", "sc/1#3"]


def records(grid: list[str], seats: list[str], models: list[str] | None = None) -> list[ItemRecord]:
    """One item per row of `grid`: seat k answers right (`1`) or wrong (`0`); the reference is 7."""
    return [ItemRecord(index=i, line=i + 1, question=f"q{i}", reference="7", wall_ms=1.0, answers=[
        MemberAnswer(member=name, model=(models or ["q"] * len(seats))[k], status="ok",
                     text="The answer is 7." if row[k] == "1" else "The answer is 8.", completion_tokens=10)
        for k, name in enumerate(seats)]) for i, row in enumerate(grid)]


def printed(report: EvalReport) -> str:
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=300, color_system=None))
    return buffer.getvalue()


def test_a_council_of_samples_is_compared_with_its_greedy_seat_and_the_samples_mean() -> None:
    # Ten items. The greedy seat is right on 5; one sample is lucky (9 of 10), the others right on 6, 5 and 4;
    # the majority of five is right on 6.
    grid = ["11111", "11110", "11100", "01101", "01100", "01111", "01000", "01010", "10010", "11001"]
    report = score(records(grid, SEATS), "sc", SAMPLES, "data.jsonl")
    accuracy = {m.name: m.accuracy for m in report.members}
    assert accuracy == {"sc/0": 0.5, "sc/1#0": 0.9, "sc/1#1": 0.6, "sc/1#2": 0.5, "sc/1#3": 0.4}
    majority = next(s for s in report.strategies if (s.strategy, s.extract) == ("majority", "number"))
    assert majority.accuracy == pytest.approx(0.6)
    assert report.greedy_member == "sc/0"
    assert report.samples_mean == pytest.approx((0.9 + 0.6 + 0.5 + 0.4) / 4)
    assert report.best_member == "sc/1#0"  # kept for compatibility, named as chosen in hindsight
    text = printed(report)
    assert "vs greedy seat" in text and "vs samples' mean" in text and "vs best member in hindsight" in text
    assert "vs best member " not in text.replace("vs best member in hindsight", "")  # never unlabelled
    row = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("majority") and "number" in line)
    assert "+10.0 pts" in row and "0.0 pts" in row and "-30.0 pts" in row  # vs greedy, vs mean, vs the lucky one
    assert "greedy seat sc/0: 50.0%" in text and "samples' mean: 60.0%" in text
    doc = json.loads(report.model_dump_json())
    assert doc["greedy_member"] == "sc/0" and doc["samples_mean"] == pytest.approx(0.6)
    schema = EvalReport.model_json_schema()["properties"]  # `council eval-schema`
    assert {"greedy_member", "samples_mean", "best_member_held_out"} <= set(schema)


def test_a_council_of_different_models_picks_its_best_member_on_held_out_items() -> None:
    config = CouncilConfig.model_validate({"members": [{"model": "a"}, {"model": "b"}], "vote": {"extract": "number"}})
    # Member b is best on the even items (picked there, scored on the odd ones: 1 of 2 right); member a is best
    # on the odd items (scored on the even ones: 0 of 2 right). Held out: 1 of 4.
    grid = ["01", "10", "01", "11"]
    report = score(records(grid, ["c/0", "c/1"], ["a", "b"]), "c", config, "data.jsonl")
    assert report.greedy_member is None and report.samples_mean is None
    assert report.best_member == "c/1" and report.best_member_held_out == pytest.approx(0.25)
    text = printed(report)
    assert "vs best member held out" in text and "vs best member in hindsight" in text
    assert "vs greedy seat" not in text


def test_recorded_replies_cut_off_by_max_tokens_abstain_offline() -> None:
    config = CouncilConfig.model_validate({
        "members": [{"model": "q", "sampling": {"max_tokens": 12}} for _ in range(3)],
        "vote": {"strategy": "majority", "extract": "number"}, "quorum": 1})

    def answer(name: str, text: str, tokens: int, finish: str | None) -> MemberAnswer:
        return MemberAnswer(member=name, model="q", status="ok", text=text, completion_tokens=tokens,
                            finish_reason=finish)

    # An old record (no finish_reason) that used all 12 tokens, a new one that says `length`, and a finished
    # reply: the two cut ones' last numbers ("1") no longer outvote the finished "391".
    old = ItemRecord(index=0, line=1, question="17*23?", reference="391", wall_ms=1.0, answers=[
        answer("c/0", "17*20 = 320\n1", 12, None), answer("c/1", "17*20 = 340\n1", 12, "length"),
        answer("c/2", "The answer is 391.", 8, "stop")])
    assert council_answer(old.answers, Rule("majority", "number")) == "1"  # without the cap known, old c/0 votes
    report = score([old], "c", config, "data.jsonl")
    assert report.records[0].answers[0].cut_off and report.records[0].answers[1].cut_off
    majority = next(s for s in report.strategies if (s.strategy, s.extract) == ("majority", "number"))
    assert majority.correct == 1
    assert [m.correct for m in score_members(report.records, "number")] == [0, 0, 1]
    # A cut reply that stated its answer still votes; a reply that stopped below the cap is not cut.
    stated = answer("c/0", "The answer is 391. Check: 17", 12, "length")
    short = answer("c/1", "17*20 = 340\n391", 11, None).model_copy(update={"max_tokens": 12})
    assert not short.cut_off
    assert council_answer([stated, short], Rule("majority", "number")) == "391"
    # Old records load: the new fields are optional.
    line = '{"member": "c/0", "model": "q", "status": "ok", "text": "1", "completion_tokens": 12}'
    loaded = MemberAnswer.model_validate_json(line)
    assert loaded.finish_reason is None and loaded.max_tokens is None and not loaded.cut_off


def test_every_plan_is_replayed_and_the_pareto_front_marked() -> None:
    grid = ["11111", "11110", "11100", "01101", "01100", "01111", "01000", "01010", "10010", "11001"]
    report = score(records(grid, SEATS), "sc", SAMPLES, "data.jsonl")
    plans = {p.name: p for p in report.plans}
    # No logprobs recorded: one vote (the council's own, majority); every member, early stop, 4 x 3 x 7 cascades.
    assert len(plans) == 2 + 4 * 3 * 7 and {p.vote for p in report.plans} == {"majority"}
    every = plans["every member (majority)"]
    assert every.accuracy == report.council_accuracy == pytest.approx(0.6) and every.tokens_per_item == 50
    alone = plans["first 1, then 1, agreement 1 (majority)"]  # the greedy seat alone, always "agreeing"
    assert (alone.accuracy, alone.tokens_per_item, alone.members_per_item, alone.token_share) == (0.5, 10, 1, 0.2)
    for p in report.plans:
        beaten = any(q.tokens_per_item <= p.tokens_per_item and q.accuracy >= p.accuracy
                     and (q.tokens_per_item, q.accuracy) != (p.tokens_per_item, p.accuracy) for q in report.plans)
        twin = any(q is not p and q.pareto and (q.tokens_per_item, q.accuracy) == (p.tokens_per_item, p.accuracy)
                   for q in report.plans)
        assert p.pareto == (not beaten and not twin), p.name  # one plan stands for equal ones
        assert p.keeps_accuracy == (p.accuracy >= every.accuracy)
    assert not alone.keeps_accuracy and plans["first 1, then 1, agreement 0.55 (majority)"].pareto  # its twin
    # Each item: the council's answer, the winner's share of the votes, right or wrong.
    items = report.items_scored
    assert [(i.answer, i.agreement, i.correct, i.right_seats) for i in items[:3]] == [
        ("7", 1.0, True, 5), ("7", 0.8, True, 4), ("7", 0.6, True, 3)]
    assert (items[6].answer, items[6].agreement, items[6].correct, items[6].right_seats) == ("8", 0.8, False, 1)
    assert sum(i.correct for i in items) / len(items) == report.council_accuracy


def test_an_item_no_member_answered_is_scored_wrong_for_every_member_and_the_council() -> None:
    # Item 1 was refused for every seat (longer than ctx_size: `answers=[]`); the others are right for all.
    recorded = records(["11111", "11111", "11111"], SEATS)
    recorded[1] = recorded[1].model_copy(update={"answers": [], "error": "the prompt is longer than ctx_size"})
    report = score(recorded, "sc", SAMPLES, "data.jsonl")
    assert report.items == 3 and report.unanswered == 1
    assert [(m.name, m.correct, m.answered) for m in report.members] == [(name, 2, 2) for name in SEATS]
    assert report.council_accuracy == pytest.approx(2 / 3) and report.oracle == pytest.approx(2 / 3)
    assert [i.correct for i in report.items_scored] == [True, False, True]
    assert all(len(row.answers) == len(SEATS) for row in report.records)  # the item is kept, every seat failed
    assert {a.status for a in report.records[1].answers} == {"error"}
    assert "1 of 3 items got no answer from any member" in printed(report)
    assert "the prompt is longer than ctx_size" in printed(report)
    # No item answered at all (a router that could not be reached): the policy names the seats.
    nothing = [r.model_copy(update={"answers": []}) for r in recorded]
    report = score(nothing, "sc", SAMPLES, "data.jsonl")
    assert report.unanswered == 3 and [m.name for m in report.members] == SEATS
    assert report.council_accuracy == 0.0 and all(m.correct == 0 for m in report.members)


def test_an_abstention_is_never_right_even_where_the_reference_reads_as_nothing() -> None:
    # Multiple-choice references under `extract: number` read as None, as does every "I do not know": each member,
    # the oracle, the held-out best member, every item's right seats and leave-one-out said 100% (None == None)
    # while the council said 0%.
    answers = ["I do not know.", "No idea.", "The answer is 7."]
    recorded = [ItemRecord(index=i, line=i + 1, question=f"q{i}", reference="B", wall_ms=1.0, answers=[
        MemberAnswer(member=f"c/{k}", model="q", status="ok", text=text, completion_tokens=5)
        for k, text in enumerate(answers)]) for i in range(2)]
    config = CouncilConfig.model_validate({"members": [{"model": "q"}] * 3, "vote": {"extract": "number"}})
    report = score(recorded, "c", config, "data.jsonl")
    assert [m.correct for m in report.members] == [0, 0, 0]
    assert report.oracle == 0.0 and report.best_member_held_out == 0.0 and report.council_accuracy == 0.0
    assert [i.right_seats for i in report.items_scored] == [0, 0] and not any(i.correct for i in report.items_scored)
    assert [row.accuracy_without for row in report.leave_one_out] == [0.0, 0.0, 0.0]
    assert all(s.correct == 0 for s in report.strategies if s.extract == "number")
    assert all(p.correct == 0 for p in report.plans) and all(s.accuracy == 0.0 for s in report.spend)


@dataclass(frozen=True)
class Timed(Say):
    """A scripted reply with a fixed latency (ms) and mean token logprob."""

    latency: float = 0.0
    logprob: float = 0.0

    def reply(self, latency_ms: float) -> MemberReply:
        return dataclasses.replace(super().reply(latency_ms), latency_ms=self.latency, logprob=self.logprob)


@pytest.mark.parametrize(("tie_break", "seats"), [
    (["logprob", "order"], [Timed("1", latency=50.0, logprob=-2.0), Timed("2", latency=50.0, logprob=-0.1)]),
    (["latency", "order"], [Timed("1", latency=1000.4, logprob=-1.0), Timed("2", latency=1000.0, logprob=-1.0)]),
], ids=["logprob", "latency within a millisecond"])
def test_a_tie_is_replayed_as_the_live_council_broke_it(tmp_path: Path, tie_break: list[str],
                                                        seats: list[Timed]) -> None:
    # The records and the ballot record kept no logprob and whole milliseconds: `council eval` and `council tally`
    # broke these ties by `order` ("1") where the live council answered "2".
    engine, _ = council({"vote": {"strategy": "majority", "extract": "number", "tie_break": tie_break}}, *seats)
    live = asyncio.run(engine.ask(CouncilRequest.of({"messages": [{"role": "user", "content": "q"}]},
                                                    early_stop=False)))
    assert (live.decision.answer, live.decision.tie_broken_by) == ("2", tie_break[0])
    vote = engine.config.vote
    rule = Rule(vote.strategy, vote.extract, tie_break=tuple(vote.tie_break))
    answers = [MemberAnswer.model_validate_json(a.model_dump_json()) for a in _from_outcomes(live.outcomes)]
    assert council_answer(answers, rule) == "2"  # as `council eval` re-scores a recording
    ballot = tmp_path / "ballot.json"
    ballot.write_text(json.dumps(engine.ballots.get(live.id)))
    tallied = run_cli("tally", str(ballot))
    assert tallied.returncode == 0, tallied.stderr
    assert (json.loads(tallied.stdout)["answer"], tallied.stderr) == ("2", "")


def test_a_tie_a_record_cannot_replay_is_said_so() -> None:
    # Records made before `logprob` was kept: the tie goes past `logprob` to `order`, and the report says so.
    def item(index: int, **logprobs: float) -> ItemRecord:
        return ItemRecord(index=index, line=index + 1, question="q", reference="2", wall_ms=1.0, answers=[
            MemberAnswer(member=f"c/{k}", model="m", status="ok", text=text, **logprobs)
            for k, text in enumerate(("1", "2"))])

    config = CouncilConfig.model_validate({"members": [{"model": "m"}] * 2,
                                           "vote": {"extract": "number", "tie_break": ["logprob", "order"]}})
    old = score([item(0), item(1)], "c", config, "d.jsonl")
    assert old.notes == ["2 of 2 items tied under the council's vote and reached tie_break `logprob` in records made "
                         "before logprobs were recorded: the replay broke those ties by the next rule, the live "
                         "council may have answered otherwise"]
    assert "note: 2 of 2 items tied" in printed(old)
    assert score([item(0, logprob=-1.0)], "c", config, "d.jsonl").notes == []  # recorded: nothing to say


def test_an_item_below_the_quorum_is_decided_by_no_rule_as_live() -> None:
    """The live council refuses an item fewer seats answered than its quorum (`quorum_not_met`, never a guess);
    the replay decided it from the one answer there was, so `council eval` counted it right for every strategy,
    plan and item score."""
    from council.evaluation.dataset import Item
    from council.evaluation.record import engine_asker

    config = {"members": [{}, {}, {}], "vote": {"strategy": "majority", "extract": "number"}, "quorum": "majority"}
    engine, _ = council(config, Say(text="The answer is 5."), Say(status="timeout"), Say(status="error"))
    item = Item(index=0, line=1, messages=[{"role": "user", "content": "q"}], reference="5")
    answers, error = asyncio.run(engine_asker(engine)(item))
    assert error is not None and "the quorum is 2" in error
    below = ItemRecord(index=0, line=1, question="q", reference="5", wall_ms=1, answers=answers, error=error)
    full = below.model_copy(update={"index": 1, "answers": [a.model_copy(update={"status": "ok",
                                                                                  "text": "The answer is 5."})
                                                           for a in answers]})
    policy = CouncilConfig.model_validate({**config, "members": [{"model": "m"}] * 3})
    report = score([below, full], "c", policy, "d")
    assert [i.correct for i in report.items_scored] == [False, True] and report.council_accuracy == 0.5
    assert max(s.correct for s in report.strategies) == 1, report.strategies  # `full` only, under any rule
    # A cascade whose first stage is the one seat that answered decides there, live too (a quorum of the one asked).
    assert {(p.name.startswith("first 1,"), p.correct) for p in report.plans} == {(True, 2), (False, 1)}
    # A quorum of one (the default) decides it from the one answer, live and offline.
    one = CouncilConfig.model_validate({**config, "members": [{"model": "m"}] * 3, "quorum": 1})
    assert score([below, full], "c", one, "d").council_accuracy == 1.0


def test_a_cascade_stage_with_a_silent_seat_asks_the_next_offline_as_live() -> None:
    """The first stage's second seat writes no number (it abstains): the live council asks the next stage, and so
    does the replay of the same answers (before, the one vote cast counted as a unanimous stage of two)."""
    from council.evaluation.dataset import Item
    from council.evaluation.record import engine_asker

    config = {"members": [{}, {}, {}, {}], "vote": {"strategy": "majority", "extract": "number",
                                                    "cascade": {"first": 2}}}
    engine, clients = council(config, Say(text="It is 4."), Say(text="I cannot tell."), Say(text="5"), Say(text="5"))
    item = Item(index=0, line=1, messages=[{"role": "user", "content": "q"}], reference="5")
    answers, error = asyncio.run(engine_asker(engine)(item))
    assert error is None and len(clients[2].sent) == 1  # live: stage 2 asked
    everyone = [a.model_copy(update={"status": "ok"}) for a in answers]  # as recorded without early stop
    record = ItemRecord(index=0, line=1, question="q", reference="5", wall_ms=1, answers=everyone)
    report = score([record], "c", CouncilConfig.model_validate({**config, "members": [{"model": "m"}] * 4}), "d")
    policy = next(s for s in report.spend if s.name.startswith("cascade (policy)"))
    assert policy.members_per_item == 4 and policy.accuracy == 1.0
