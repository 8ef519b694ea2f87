"""The draft-length arithmetic and the tuner's hysteresis, without a server."""

from __future__ import annotations

import pytest

from council.members.draft_tuning import (
    DraftCounters,
    DraftTuner,
    StepCost,
    TunerSettings,
    acceptance_curve,
    best_n,
    expected_tokens,
    predicted_speed,
    recommend,
)
from council.members.metrics import MemberStats, parse_member_metrics

# What llama-server b11434 printed after one 64-token request on the synthetic MTP model at n_max 3.
METRICS = """\
llamacpp:tokens_predicted_total 64
llamacpp:spec_decode_num_draft_tokens_total 47
llamacpp:spec_decode_num_accepted_tokens_total 47
llamacpp:spec_decode_num_drafts_total 16
llamacpp:predicted_tokens_seconds 1388.34
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 16
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 16
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="2"} 15
"""


def test_metrics_give_the_per_position_counters() -> None:
    stats = parse_member_metrics(METRICS, MemberStats())
    assert stats.counters() == DraftCounters(drafts=16, drafted=47, accepted=47, per_pos=(16, 16, 15))


def test_figures_that_are_not_finite_are_not_read() -> None:
    """A member (or a proxy before it) whose /metrics said +Inf: int() of it raised OverflowError out of the
    watchdog's scrape, and both members of a council went `failed` for good; a +Inf tok/s reached the dashboard's
    stream as `Infinity`. Such a figure is skipped; the others still count."""
    odd = (METRICS.replace("spec_decode_num_draft_tokens_total 47", "spec_decode_num_draft_tokens_total +Inf")
           .replace("predicted_tokens_seconds 1388.34", "predicted_tokens_seconds NaN")
           .replace('position="2"} 15', 'position="2"} -Inf'))
    stats = parse_member_metrics(odd, MemberStats(tokens_per_second=12.5))
    assert stats.tokens_per_second == 12.5 and stats.counters() == DraftCounters()  # no draft token count: none
    stats = parse_member_metrics(METRICS.replace('position="2"} 15', 'position="2"} +Inf'), MemberStats())
    assert stats.counters() == DraftCounters(drafts=16, drafted=47, accepted=47, per_pos=(16, 16))


def test_expected_tokens_from_per_position_counts() -> None:
    # 10 draft steps at n=3: position 0 accepted 8 times, position 1 6 times, position 2 3 times.
    counters = DraftCounters(drafts=10, drafted=30, accepted=17, per_pos=(8, 6, 3))
    curve = acceptance_curve(counters, n_current=3, n_limit=5)
    assert curve[:3] == pytest.approx([0.8, 0.6, 0.3])
    # Beyond n=3: the conditional acceptance of the last position (0.3 / 0.6 = 0.5) carries on.
    assert curve[3:] == pytest.approx([0.15, 0.075])
    assert expected_tokens(curve, 0) == 1
    assert expected_tokens(curve, 2) == pytest.approx(2.4)
    assert expected_tokens(curve, 3) == pytest.approx(1 + 17 / 10)  # = 1 + accepted per step


def test_extrapolation_from_one_position_and_without_per_position_counts() -> None:
    assert acceptance_curve(DraftCounters(10, 10, 9, (9,)), 1, 3) == pytest.approx([0.9, 0.81, 0.729])
    # An old build without the per-position counter: the mean spreads geometrically (r + r^2 = 1.5 -> r ~0.82).
    curve = acceptance_curve(DraftCounters(10, 20, 15, ()), 2, 2)
    assert sum(curve) == pytest.approx(1.5, abs=1e-6)
    with pytest.raises(ValueError):
        acceptance_curve(DraftCounters(), 2, 4)


def test_step_cost_interpolates_and_extends() -> None:
    default = StepCost(per_token=0.5)
    assert default(0) == 1 and default(4) == 3
    cost = StepCost.from_seconds({0: 0.010, 2: 0.014, 4: 0.020})
    assert cost(0) == 1 and cost(2) == pytest.approx(1.4)
    assert cost(3) == pytest.approx(1.7)  # between 2 and 4
    assert cost(6) == pytest.approx(2.6)  # the last slope (0.3 per n) carried on
    # No plain run measured: anchored with the default slope at the smallest n.
    assert StepCost.from_seconds({2: 0.02}, per_token=0.5)(2) == pytest.approx(2.0)


def test_the_choice_maximises_speed_not_acceptance() -> None:
    perfect = [1.0] * 8  # every draft accepted
    cheap, dear = StepCost(per_token=0.1), StepCost(per_token=1.5)
    assert best_n(perfect, cheap, range(9)) == 8
    # Drafting costs more than a token is worth: no speculation (342 -> 128 tok/s at 96.6% on a small model).
    assert best_n([0.966] * 8, dear, range(9)) == 0
    # The card's shape: acceptance falling with position, steps growing: the peak is in between.
    card = [0.99, 0.97, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01]
    speeds = {n: predicted_speed(card, StepCost(per_token=0.3), n) for n in range(9)}
    assert best_n(card, StepCost(per_token=0.3), range(9)) == max(speeds, key=speeds.__getitem__) == 2
    # Measured steps decide: a flat cost up to n=4 makes 4 the winner on the same curve.
    flat = StepCost({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 3.0})
    assert best_n(card, flat, range(6)) == 4


def test_recommend_is_the_fastest_measured_row() -> None:
    rows = [{"n": 0, "tokens_per_second": 207}, {"n": 1, "tokens_per_second": 250},
            {"n": 2, "tokens_per_second": 290}, {"n": 3, "tokens_per_second": 280}]
    assert recommend(rows) == 2
    assert recommend([{"n": 0, "tokens_per_second": 342}, {"n": 2, "tokens_per_second": 128}]) == 0


def feed(tuner: DraftTuner, per_step: tuple[float, ...], steps: int, now: float) -> None:
    """One window's worth of counters at the tuner's current n: `per_step[i]` of steps accept position i."""
    last = tuner._last or DraftCounters()
    n = tuner.n
    pos = tuple(round(per_step[i] * steps) for i in range(n))
    tuner.observe(last + DraftCounters(steps, steps * n, sum(pos), pos), now)


def test_tuner_waits_for_a_sample_and_a_sustained_winner() -> None:
    settings = TunerSettings(window=100, min_drafts=50, margin=0.1, sustain=3, n_limit=6)
    tuner = DraftTuner(3, StepCost(per_token=0.3), settings)
    tuner.observe(DraftCounters(), 0.0)
    feed(tuner, (0.1, 0.0, 0.0), 20, 1.0)
    verdict = tuner.evaluate(1.0)
    assert verdict.move_to is None and "20 of 50" in verdict.reason
    feed(tuner, (0.1, 0.0, 0.0), 40, 2.0)  # low acceptance: drafting does not pay
    first = tuner.evaluate(2.0)
    assert first.best == 0 and first.move_to is None and "(1/3)" in first.reason
    assert tuner.evaluate(3.0).move_to is None
    third = tuner.evaluate(4.0)
    assert third.move_to == 0 and third.reason.startswith("n 3 → 0")


def test_tuner_hysteresis_keeps_a_near_tie() -> None:
    # At n=2 with acceptance 0.6 per position and cost 0.3: n=2 ≈ 1.6/1.6 + ... ; no n is 10% better.
    tuner = DraftTuner(2, StepCost(per_token=0.3), TunerSettings(min_drafts=10, sustain=1, margin=0.5, n_limit=4))
    tuner.observe(DraftCounters(), 0.0)
    feed(tuner, (0.9, 0.8), 100, 1.0)
    verdict = tuner.evaluate(1.0)
    assert verdict.best != 2 and verdict.move_to is None and verdict.reason.startswith("keep n=2")


def test_tuner_moves_up_when_acceptance_recovers_and_respects_the_budget() -> None:
    settings = TunerSettings(min_drafts=10, sustain=1, n_limit=8, probe_after=30)
    tuner = DraftTuner(0, StepCost(per_token=0.3), settings)
    tuner.changed(0, 100.0)
    assert tuner.evaluate(110.0).move_to is None  # nothing measured at n=0 until the probe
    probe = tuner.evaluate(131.0)
    assert probe.move_to == 1 and probe.reason.startswith("probe")
    tuner.changed(1, 131.0)
    tuner.observe(DraftCounters(), 131.0)
    feed(tuner, (1.0,), 50, 132.0)  # every draft accepted again
    # Memory: n above 4 would overflow the member's slots.
    verdict = tuner.evaluate(132.0, allowed=lambda n: None if n <= 4 else f"n={n} needs 2 slots, has 1")
    assert verdict.move_to == 4
    assert set(verdict.refused) == {5, 6, 7, 8} and "2 slots" in verdict.refused[8]


def test_a_restarted_process_starts_a_new_baseline() -> None:
    tuner = DraftTuner(2, StepCost(), TunerSettings(min_drafts=1))
    tuner.observe(DraftCounters(100, 200, 150, (80, 70)), 0.0)
    tuner.observe(DraftCounters(3, 6, 6, (3, 3)), 1.0)  # counters went down: new process
    assert tuner.window_counters().drafts == 0
    tuner.observe(DraftCounters(13, 26, 26, (13, 13)), 2.0)
    assert tuner.window_counters() == DraftCounters(10, 20, 20, (10, 10))


def test_a_process_outside_the_tuners_range_is_moved_into_it() -> None:
    """A process running past `auto.limit` (or under `auto.floor`) was judged over a range without its own n:
    KeyError at every evaluation, which stopped live tuning for every member."""
    cost = StepCost({}, 0.1)
    above = DraftTuner(8, cost, TunerSettings(n_limit=2)).evaluate(0.0)
    below = DraftTuner(1, cost, TunerSettings(n_floor=3, n_limit=6)).evaluate(0.0)
    assert (above.move_to, below.move_to) == (2, 3), (above, below)
    assert above.reason == "n 8 is outside 0..2: n → 2"


def test_a_probe_the_budget_refuses_says_so() -> None:
    """At n=0 a probe at n=1 that the member's slots cannot hold was refused in silence: the status kept saying it
    waited for the probe, for good."""
    tuner = DraftTuner(0, StepCost({}, 0.1), TunerSettings(probe_after=10.0))
    tuner.changed(0, 0.0)
    early = tuner.evaluate(5.0, allowed=lambda n: "needs 2 slots, the process has 1")
    late = tuner.evaluate(20.0, allowed=lambda n: "needs 2 slots, the process has 1")
    assert early.move_to is None and "until the probe" in early.reason
    assert late.move_to is None and late.refused == {1: "needs 2 slots, the process has 1"}
    assert late.reason == "no speculation: the probe at n=1 is refused: needs 2 slots, the process has 1"
    assert tuner.evaluate(20.0).move_to == 1
