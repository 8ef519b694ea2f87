"""The dashboard's last hour: a few series the router samples every `step` seconds into fixed-size rings (no
store: one process's memory, bounded by `window / step` points per series and `MAX_SERIES` series per chart).

Charts and their series, one value per point (None where there is nothing to show):
- `tokens_per_second`, `draft_acceptance`: per process — decode tok/s as its `/metrics` last said, and the
  share of draft tokens accepted during the step;
- `requests`: `in flight` and `waiting` (for a slot), summed over the processes at the moment of the point;
- `agreement`, `latency`: per council — the mean winning share and seconds of the answers given during the step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from council.members.process import MemberProcess

Point = dict[str, dict[str, float | None]]  # chart -> series -> value
CHARTS = ("tokens_per_second", "draft_acceptance", "requests", "agreement", "latency")
COUNCIL_CHARTS = ("agreement", "latency")  # what the chat scope sees (it sees the ballots too)
MAX_SERIES = 64  # per chart: a policy reloaded again and again must not grow the page without bound


@dataclass
class _Answers:
    count: int = 0
    agreement: float = 0.0
    seconds: float = 0.0
    timed: int = 0


class History:
    def __init__(self, step: float = 10.0, window: float = 3600.0) -> None:
        self.step, self.window = step, window
        self.times: deque[float] = deque(maxlen=self.capacity)
        self.charts: dict[str, dict[str, deque[float | None]]] = {c: {} for c in CHARTS}
        self._answers: dict[str, _Answers] = {}
        self._drafts: dict[str, tuple[int | None, int, int]] = {}  # process -> (pid, drafted, accepted) last seen

    @property
    def capacity(self) -> int:
        return max(1, math.ceil(self.window / self.step))

    def resize(self, step: float) -> None:
        """A reload changed the step: keep the newest points that still fit the window."""
        if step == self.step:
            return
        self.step = step
        self.times = deque(self.times, maxlen=self.capacity)
        for series in self.charts.values():
            for name, values in series.items():
                series[name] = deque(values, maxlen=self.capacity)

    def answered(self, council: str, agreement: float, seconds: float | None) -> None:
        """One council answer, counted in the next point."""
        answers = self._answers.setdefault(council, _Answers())
        answers.count += 1
        answers.agreement += agreement
        if seconds is not None:
            answers.seconds += seconds
            answers.timed += 1

    def sample(self, at: float, processes: list[MemberProcess], councils: list[str]) -> Point:
        """Take one point from the processes and the answers since the last point, and add it."""
        point: Point = {c: {} for c in CHARTS}
        in_flight = waiting = 0
        for process in processes:
            shown = process.snapshot()
            point["tokens_per_second"][process.name] = _number(shown.get("tokens_per_second"))
            point["draft_acceptance"][process.name] = self._acceptance(process)
            in_flight += int(shown.get("in_flight") or 0)
            waiting += int(shown.get("waiting") or 0)
        point["requests"] = {"in flight": float(in_flight), "waiting": float(waiting)}
        for council in councils:
            answers = self._answers.pop(council, None)
            point["agreement"][council] = answers.agreement / answers.count if answers else None
            point["latency"][council] = answers.seconds / answers.timed if answers and answers.timed else None
        self._answers.clear()  # answers of councils no longer in the policy
        return self.add(at, point)

    def _acceptance(self, process: MemberProcess) -> float | None:
        """Accepted / drafted tokens since the last point (the counters start again with a new PID)."""
        stats = process.stats
        drafted, accepted = ((stats.draft_tokens, stats.draft_accepted) if stats.draft_tokens
                             else (stats.timings_draft_tokens, stats.timings_draft_accepted))
        pid, before_drafted, before_accepted = self._drafts.get(process.name, (None, 0, 0))
        if pid != process.pid or drafted < before_drafted:
            before_drafted = before_accepted = 0
        self._drafts[process.name] = (process.pid, drafted, accepted)
        return (accepted - before_accepted) / (drafted - before_drafted) if drafted > before_drafted else None

    def add(self, at: float, point: Point) -> Point:
        """Append a point: series missing from it get None, new ones start with None for the older points, and
        a series with nothing in the whole window is dropped. A chart at MAX_SERIES makes room for a new series
        by dropping the one silent longest (a process reloaded away), never one with a value now. Returns the
        point as kept (what the `history` event carries: the page follows the same series as /admin/history)."""
        self.times.append(at)
        size = len(self.times)
        for chart, values in point.items():
            series = self.charts.setdefault(chart, {})
            for name, value in values.items():
                if name in series or value is None:
                    continue
                if len(series) >= MAX_SERIES and (stale := _silent_longest(series, values)) is not None:
                    del series[stale]  # before: the cap kept it, and left out the processes running now
                if len(series) < MAX_SERIES:
                    series[name] = deque([None] * (size - 1), maxlen=self.capacity)
        for chart, series in self.charts.items():
            given = point.get(chart, {})
            for name in list(series):
                series[name].append(given.get(name))
                if all(v is None for v in series[name]):
                    del series[name]
        self._drafts = {k: v for k, v in self._drafts.items() if k in point.get("draft_acceptance", {})}
        return {chart: {name: v for name, v in values.items() if v is None or name in self.charts.get(chart, {})}
                for chart, values in point.items()}

    def to_json(self, charts: tuple[str, ...] = CHARTS) -> dict[str, Any]:
        return {"step": self.step, "window": self.window, "times": list(self.times),
                "charts": {c: {name: list(v) for name, v in self.charts.get(c, {}).items()} for c in charts}}


def _silent_longest(series: dict[str, deque[float | None]], now: dict[str, float | None]) -> str | None:
    """The series whose last value is the oldest, of those with none in the point being added; None if all have."""
    def last(name: str) -> int:
        values = series[name]
        return next((i for i in range(len(values) - 1, -1, -1) if values[i] is not None), -1)

    silent = [name for name in series if now.get(name) is None]
    return min(silent, key=last) if silent else None


def point_json(at: float, point: Point, charts: tuple[str, ...] = CHARTS) -> dict[str, Any]:
    """One point as the `history` event carries it."""
    return {"time": at, "charts": {c: point.get(c, {}) for c in charts}}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
