"""bench/agents.py's paired difference (the numbers #20's goal is judged by)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bench.agents import paired


def _row(*hits: bool) -> Any:
    return SimpleNamespace(hits=list(hits))


def test_the_paired_interval_of_one_item_is_every_difference_not_zero_wide() -> None:
    """A category slice of one item had an interval of zero width around its one difference ([+100, +100]): a
    certainty it does not have."""
    assert paired(_row(True), _row(False)) == {"points": 100.0, "low": -100.0, "high": 100.0, "items": 1}
    assert paired(_row(), _row())["items"] == 0


def test_the_paired_interval_is_the_normal_approximation() -> None:
    council, seat = _row(True, True, True, False), _row(True, False, False, False)
    found = paired(council, seat)  # differences 0, 1, 1, 0: mean 0.5, sd 0.577, half 1.96 * 0.577 / 2 = 0.566
    assert found["points"] == 50.0 and found["items"] == 4
    assert round(found["low"], 1) == -6.6 and round(found["high"], 1) == 106.6
    assert paired(council, seat, keep=[1, 2])["points"] == 100.0
