"""The dashboard's last hour (council.server.history), in process: the rings' bounds, aligned series, answers per
step, draft acceptance per step across a restart. The real thing, in a browser: tests/server/test_ui.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from council.members.metrics import MemberStats
from council.server.history import CHARTS, MAX_SERIES, History, point_json


def test_the_rings_hold_one_window_and_no_more() -> None:
    history = History(step=10, window=60)
    assert history.capacity == 6
    for i in range(20):
        history.add(float(i), {"agreement": {"a": float(i)}})
    data = history.to_json()
    assert data["times"] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]
    assert data["charts"]["agreement"] == {"a": [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]}
    assert set(data["charts"]) == set(CHARTS)


def test_series_stay_aligned_and_go_when_the_window_has_nothing_of_them() -> None:
    history = History(step=1, window=3)
    history.add(1.0, {"latency": {"a": 0.5}})
    history.add(2.0, {"latency": {"a": None, "b": 2.0}})  # b starts late: None before it
    assert history.to_json()["charts"]["latency"] == {"a": [0.5, None], "b": [None, 2.0]}
    history.add(3.0, {"latency": {"c": None}})  # c has never had a value: no series for it
    assert history.to_json()["charts"]["latency"] == {"a": [0.5, None, None], "b": [None, 2.0, None]}
    history.add(4.0, {})  # a's only value left the window
    assert history.to_json()["charts"]["latency"] == {"b": [2.0, None, None]}
    history.add(5.0, {})
    assert history.to_json()["charts"]["latency"] == {} and history.to_json()["times"] == [3.0, 4.0, 5.0]


def test_a_chart_holds_at_most_max_series() -> None:
    history = History(step=1, window=10)
    kept = history.add(1.0, {"tokens_per_second": {f"p{i}": 1.0 for i in range(MAX_SERIES + 5)}})
    assert len(history.to_json()["charts"]["tokens_per_second"]) == MAX_SERIES
    assert kept["tokens_per_second"].keys() == history.to_json()["charts"]["tokens_per_second"].keys()


def test_a_full_chart_makes_room_for_the_processes_running_now() -> None:
    """The cap kept the series of processes reloaded away (until silent for the whole window, an hour) and left out
    the processes running now; the `history` event carried them all the same, so a live page drew 70 series and
    a reloaded one 64, without the current processes. Now the longest silent go first, and the event carries what
    was kept."""
    history = History(step=1, window=3600)
    history.add(1.0, {"tokens_per_second": {f"old{i}": 1.0 for i in range(MAX_SERIES)}})
    history.add(2.0, {"tokens_per_second": {f"old{i}": 1.0 for i in range(10)}})  # 54 left since
    kept = history.add(3.0, {"tokens_per_second": {**{f"old{i}": 2.0 for i in range(5)},
                                                   **{f"new{i}": 3.0 for i in range(6)}}})
    shown = history.to_json()["charts"]["tokens_per_second"]
    assert len(shown) == MAX_SERIES and all(f"new{i}" in shown for i in range(6))
    assert all(f"old{i}" in shown for i in range(10))  # heard from later than the ones that made room
    assert kept["tokens_per_second"] == {**{f"old{i}": 2.0 for i in range(5)}, **{f"new{i}": 3.0 for i in range(6)}}
    full = History(step=1, window=3600)
    full.add(1.0, {"tokens_per_second": {f"p{i}": 1.0 for i in range(MAX_SERIES)}})
    kept = full.add(2.0, {"tokens_per_second": {**{f"p{i}": 1.0 for i in range(MAX_SERIES)}, "late": 1.0}})
    assert "late" not in kept["tokens_per_second"]  # every series has a value now: none is dropped for it


def test_a_shorter_step_keeps_the_newest_points_that_fit() -> None:
    history = History(step=10, window=40)
    for i in range(4):
        history.add(float(i), {"agreement": {"a": 1.0}})
    history.resize(20)
    assert history.capacity == 2 and history.to_json()["times"] == [2.0, 3.0]
    history.add(4.0, {"agreement": {"a": 0.5}})
    assert history.to_json()["charts"]["agreement"]["a"] == [1.0, 0.5]


@dataclass
class FakeProcess:
    """Only what the history reads of a MemberProcess (a real one needs a llama-server; test_ui has those)."""

    name: str
    pid: int | None
    stats: MemberStats = field(default_factory=MemberStats)
    in_flight: int = 0
    waiting: int = 0

    def snapshot(self) -> dict[str, object]:
        return {"tokens_per_second": self.stats.tokens_per_second, "in_flight": self.in_flight,
                "waiting": self.waiting}


def test_a_point_per_step_from_processes_and_answers() -> None:
    history = History(step=1, window=60)
    a = FakeProcess("c/0", pid=100, stats=MemberStats(tokens_per_second=12.5, draft_tokens=10, draft_accepted=8),
                    in_flight=2, waiting=1)
    b = FakeProcess("c/1", pid=101, in_flight=1)
    history.answered("c", 1.0, 0.2)
    history.answered("c", 0.5, 0.4)
    history.answered("gone", 1.0, 0.1)  # a council no longer in the policy: not drawn, not kept
    point = history.sample(1.0, [a, b], ["c", "d"])  # type: ignore[list-item]
    assert point["tokens_per_second"] == {"c/0": 12.5, "c/1": None}
    assert point["draft_acceptance"] == {"c/0": 0.8, "c/1": None}
    assert point["requests"] == {"in flight": 3.0, "waiting": 1.0}
    assert point["agreement"] == {"c": 0.75, "d": None} and point["latency"] == {"c": pytest.approx(0.3), "d": None}
    assert point_json(1.0, point)["charts"]["agreement"] == {"c": 0.75, "d": None}

    a.stats.draft_tokens, a.stats.draft_accepted = 20, 13  # 10 more drafted, 5 accepted in this step
    point = history.sample(2.0, [a, b], ["c"])  # type: ignore[list-item]
    assert point["draft_acceptance"]["c/0"] == 0.5 and point["agreement"] == {"c": None}
    point = history.sample(3.0, [a, b], ["c"])  # type: ignore[list-item]
    assert point["draft_acceptance"]["c/0"] is None  # nothing drafted in this step

    a.pid, a.stats = 200, MemberStats(draft_tokens=4, draft_accepted=1)  # killed and restarted: counters from 0
    point = history.sample(4.0, [a, b], ["c"])  # type: ignore[list-item]
    assert point["draft_acceptance"]["c/0"] == 0.25
    data = history.to_json(("agreement",))
    assert list(data["charts"]) == ["agreement"] and data["times"] == [1.0, 2.0, 3.0, 4.0]
    assert data["charts"]["agreement"] == {"c": [0.75, None, None, None]}
