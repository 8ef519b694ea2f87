"""Voting: order independence, weight scaling, early stops that never change the winner, declared tie-breaks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from council.voting.vote import (
    Ballot,
    VoteError,
    decide,
    is_decided,
    judge_pick,
    judge_prompt,
    seat_value,
    similarity,
    stop_after,
)

ANSWERS = st.sampled_from(["1", "2", "3", None])
RULES = st.permutations(["weight", "latency", "order"])


@st.composite
def councils(draw: st.DrawFn) -> list[Ballot]:
    n = draw(st.integers(min_value=1, max_value=7))
    return [
        Ballot(member=f"m{i}", order=i, answer=draw(ANSWERS), text=f"reply {i}",
               weight=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
               latency_ms=draw(st.sampled_from([None, 100.0, 200.0, 300.0])))
        for i in range(n)
    ]


def _decide_or_none(ballots: list[Ballot], strategy: str, rules: list[str]) -> tuple[str, str | None] | None:
    try:
        d = decide(ballots, strategy, rules)
    except VoteError:
        return None
    return d.answer, d.tie_broken_by


@settings(max_examples=300, deadline=None)
@given(councils(), st.sampled_from(["majority", "weighted", "similarity"]), RULES, st.randoms())
def test_decision_never_depends_on_arrival_order(ballots: list[Ballot], strategy: str, rules: list[str],
                                                rnd: object) -> None:
    shuffled = list(ballots)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert _decide_or_none(shuffled, strategy, rules) == _decide_or_none(ballots, strategy, rules)


@settings(max_examples=300, deadline=None)
@given(councils(), st.sampled_from([0.001, 0.1, 3.0, 7.0, 1000.0]), RULES)
def test_weights_scale_invariantly(ballots: list[Ballot], factor: float, rules: list[str]) -> None:
    scaled = [Ballot(b.member, b.order, b.answer, b.text, b.weight * factor, b.latency_ms) for b in ballots]
    before, after = _decide_or_none(ballots, "weighted", rules), _decide_or_none(scaled, "weighted", rules)
    assert before == after
    if before is not None:
        agreement = decide(ballots, "weighted", rules).agreement
        assert agreement == pytest.approx(decide(scaled, "weighted", rules).agreement)


@settings(max_examples=400, deadline=None)
@given(councils(), st.sampled_from(["majority", "weighted"]), RULES, st.randoms())
def test_early_stop_never_changes_the_winner(ballots: list[Ballot], strategy: str, rules: list[str],
                                            rnd: object) -> None:
    arrival = list(ballots)
    rnd.shuffle(arrival)  # type: ignore[attr-defined]
    final = _decide_or_none(ballots, strategy, rules)
    for k in range(1, len(arrival) + 1):
        seen, pending = arrival[:k], arrival[k:]
        pending_weight = sum(seat_value(strategy, b.weight) for b in pending)
        if stop_after(seen, pending_weight, 1, strategy) == "early":
            early = decide(seen, strategy, rules)
            assert final is not None and early.answer == final[0]
            break


def test_majority_with_agreement_and_votes() -> None:
    ballots = [Ballot("a", 0, "42"), Ballot("b", 1, "42"), Ballot("c", 2, "41"), Ballot("d", 3, None)]
    d = decide(ballots, "majority")
    assert (d.answer, d.votes, d.winner_members, d.tie_broken_by) == ("42", {"42": 2.0, "41": 1.0}, ("a", "b"), None)
    assert d.agreement == pytest.approx(2 / 3)  # the abstention casts no vote


def test_weighted_lets_a_heavy_member_win() -> None:
    ballots = [Ballot("big", 0, "7", weight=3.0), Ballot("s1", 1, "8"), Ballot("s2", 2, "8")]
    assert decide(ballots, "majority").answer == "8"
    assert decide(ballots, "weighted").answer == "7"


@pytest.mark.parametrize(
    ("rules", "winner", "rule"),
    [
        (["weight"], "x", "weight"),  # x's voter weighs 2
        (["latency"], "y", "latency"),  # y answered faster
        (["order"], "y", "order"),  # y's voter comes first in the council
        ([], "y", "order"),  # order is always the last resort
    ],
)
def test_ties_resolved_by_the_declared_order(rules: list[str], winner: str, rule: str) -> None:
    ballots = [Ballot("first", 0, "y", weight=1.0, latency_ms=50), Ballot("second", 1, "x", weight=2.0, latency_ms=90)]
    d = decide(ballots, "majority", rules)
    assert (d.answer, d.tie_broken_by) == (winner, rule)


def test_all_abstain_is_an_error_not_a_guess() -> None:
    with pytest.raises(VoteError, match="every seat abstained"):
        decide([Ballot("a", 0, None), Ballot("b", 1, None)])


def test_is_decided_is_strict() -> None:
    two_of_three = [Ballot("a", 0, "1"), Ballot("b", 1, "1")]
    assert is_decided(two_of_three, 1.0, "majority")  # 2 > 0 + 1
    assert not is_decided([Ballot("a", 0, "1")], 1.0, "majority")  # 1 vs a possible 1: a tie is not decided
    assert not is_decided([Ballot("a", 0, "1"), Ballot("b", 1, "2")], 1.0, "majority")
    assert not is_decided(two_of_three, 0.0, "similarity")  # similarity waits for everyone


def test_similarity_picks_the_medoid_of_the_heaviest_cluster() -> None:
    texts = ["the capital of france is paris", "paris is the capital of france", "the capital of france is paris .",
             "i think it is lyon"]
    ballots = [Ballot(f"m{i}", i, t, text=t.capitalize()) for i, t in enumerate(texts)]
    d = decide(ballots, "similarity")
    assert d.winner_members == ("m0", "m1", "m2") or d.winner_members == ("m0", "m2")
    assert d.answer in texts[:3] and "lyon" not in d.answer
    assert d.votes[d.answer] >= 2


def test_similarity_compares_each_pair_of_replies_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each medoid compared every pair of its cluster, each reply with itself too, and the winner's medoid was
    found twice: 170 comparisons for nine alike replies, where the 36 pairs decide the same."""
    from council.voting import vote

    compared: list[frozenset[int]] = []
    real = vote.similarity

    def counting(a: list[str], b: list[str]) -> float:
        compared.append(frozenset((id(a), id(b))))
        return real(a, b)

    monkeypatch.setattr(vote, "similarity", counting)
    texts = [f"the answer is {'forty two' if i % 3 else 'forty-two'} and that is final {i}" for i in range(9)]
    decision = decide([Ballot(f"m{i}", i, t, text=t) for i, t in enumerate(texts)], "similarity")
    assert len(decision.winner_members) == 9 and decision.answer in texts
    assert len(compared) == len(set(compared)) <= 9 * 8 // 2
    assert all(len(pair) == 2 for pair in compared)  # a reply against itself is 1.0 without reading it


def test_similarity_of_replies_that_loop_is_quick() -> None:
    """Small models loop until max_tokens. difflib's ratio, which the similarity vote used, took 0.4 s for one pair
    of 3,000-word replies of two words repeated (O(n*m) over the repeats), on the event loop: nine such replies
    held every request on the router for seconds. rapidfuzz compares a pair in well under a millisecond; the bound
    here is loose for busy cores and still 50x under what difflib took."""
    import time

    loops = [" ".join(["the", "answer"] * (1500 + i) + ["is", str(i % 2)]) for i in range(9)]
    started = time.process_time()
    decision = decide([Ballot(f"m{i}", i, t, text=t) for i, t in enumerate(loops)], "similarity")
    assert time.process_time() - started < 0.3
    assert len(decision.winner_members) == 9  # alike enough to be one cluster
    assert similarity(["a", "b", "c"], ["a", "b", "c"]) == 1.0 and similarity([], []) == 1.0
    assert similarity(["a", "b"], ["c", "d"]) == 0.0
    assert similarity(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == pytest.approx(0.75)


def test_judge_pick_and_its_fallback() -> None:
    ballots = [Ballot("a", 0, "12", text="It is 12."), Ballot("b", 1, "13", text="13"),
               Ballot("c", 2, "13", text="13!")]
    prompt, candidates = judge_prompt("What is 3*4?", ballots)
    assert "Answer 1:\nIt is 12." in prompt and "(1-3)" in prompt
    d = judge_pick("The best is answer 1.", candidates, ballots, ["order"])
    assert d is not None and d.answer == "12" and d.winner_members == ("a",)
    assert judge_pick("none of them", candidates, ballots, ["order"]) is None
    assert judge_pick("answer 9", candidates, ballots, ["order"]) is None


def test_every_permutation_of_a_three_way_tie_gives_one_winner() -> None:
    ballots = [Ballot("a", 0, "1", latency_ms=30), Ballot("b", 1, "2", latency_ms=10),
               Ballot("c", 2, "3", latency_ms=20)]
    winners = {decide(list(p), "majority", ["latency", "order"]).answer for p in itertools.permutations(ballots)}
    assert winners == {"2"}


def test_the_stop_rule_gates_on_quorum_then_early_stop_then_the_stage() -> None:
    """One rule for live councils and their offline replay: what a seat still out can add, and when to stop."""
    assert seat_value("majority", 3.0) == seat_value("judge", 3.0) == 1.0  # judge counts votes as majority does
    assert seat_value("weighted", 3.0) == seat_value("confidence", 3.0) == 3.0
    two = [Ballot("a", 0, "1"), Ballot("b", 1, "1")]
    assert stop_after(two, 1.0, 2, "majority") == "early"  # 2 > 0 + 1
    assert stop_after(two, 1.0, 3, "majority") is None  # below the quorum nothing stops
    assert stop_after(two, 1.0, 2, "majority", early_stop=False) is None  # evaluation waits for everyone
    assert stop_after(two, 2.0, 2, "majority") is None  # 2 votes out could still tie
    assert stop_after(two, 2.0, 2, "majority", stage_done=True, last_stage=False) == "stage"  # the stage agrees
    assert stop_after(two, 2.0, 2, "majority", stage_done=True, last_stage=True) is None  # no stage after it
    split = [Ballot("a", 0, "1"), Ballot("b", 1, "1"), Ballot("c", 2, "2")]
    assert stop_after(split, 2.0, 2, "majority", stage_done=True, last_stage=False) is None  # 2/3 < 1.0
    assert stop_after(split, 2.0, 2, "majority", stage_done=True, last_stage=False, agreement=0.6) == "stage"
    assert stop_after(two, 0.0, 2, "majority") is None  # nobody out: nothing to cut short
    # A seat of the stage that failed or abstained (`silent`) counts against agreement: 2 of 3 is not unanimous,
    # and is 0.6 of the votes the stage could cast; the weight of a silent seat counts under `weighted`.
    assert stop_after(two, 2.0, 2, "majority", stage_done=True, last_stage=False, silent=1.0) is None
    assert stop_after(two, 2.0, 2, "majority", stage_done=True, last_stage=False, silent=1.0,
                      agreement=0.6) == "stage"
    assert stop_after(two, 2.0, 2, "weighted", stage_done=True, last_stage=False, silent=2.0,
                      agreement=0.6) is None  # 2 of 4
