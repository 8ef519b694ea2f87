"""Draft length as arithmetic: expected tokens per step from acceptance counters, a step cost model, the n
that maximises tokens per second, and a tuner with hysteresis that says when another n is clearly better.

Nothing here starts a process or knows a council: `council tune` measures, `voting.draft_control` acts.

One decode step with a draft of length n verifies the draft and keeps 1 + (the accepted prefix) tokens. With
`a_i` the share of draft steps whose token at position i was accepted (llama-server's
`llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position=i}` ÷ `..._num_drafts_total`; an accepted
position implies every earlier one was), the expected tokens per step at n are `1 + a_0 + … + a_{n-1}`, and
the speed is that divided by the time of a step at n (the cost model). Positions the current process does not
draft (i ≥ its n) are extrapolated with the conditional acceptance of its last measured position.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

# Relative cost of one more drafted token in a step (time of a step at n ÷ time of a plain step ≈ 1 + c·n),
# used when `council tune` measured none. MTP and draft models: from the seed model card's sweep (Qwen3.5-4B
# on a 3090 Ti: 207 tok/s plain; n=1..4 at their acceptance imply steps 1.66, 2.11, 2.56, 2.98× a plain one).
# n-gram drafts cost no model call, only the wider verification batch.
DEFAULT_DRAFT_COST = {"mtp": 0.5, "model": 0.5}
DEFAULT_NGRAM_COST = 0.1


def default_cost_per_token(draft_type: str) -> float:
    return DEFAULT_DRAFT_COST.get(draft_type, DEFAULT_NGRAM_COST)


@dataclass(frozen=True)
class DraftCounters:
    """A member's cumulative `llamacpp:spec_decode_*` counters (they restart at 0 with its process)."""

    drafts: int = 0  # draft steps (`num_drafts_total`)
    drafted: int = 0  # drafted tokens
    accepted: int = 0  # accepted tokens
    per_pos: tuple[int, ...] = ()  # accepted tokens at each draft position

    def __sub__(self, other: DraftCounters) -> DraftCounters:
        width = max(len(self.per_pos), len(other.per_pos))
        mine = self.per_pos + (0,) * (width - len(self.per_pos))
        theirs = other.per_pos + (0,) * (width - len(other.per_pos))
        return DraftCounters(self.drafts - other.drafts, self.drafted - other.drafted,
                             self.accepted - other.accepted, tuple(a - b for a, b in zip(mine, theirs, strict=True)))

    def __add__(self, other: DraftCounters) -> DraftCounters:
        width = max(len(self.per_pos), len(other.per_pos))
        mine = self.per_pos + (0,) * (width - len(self.per_pos))
        theirs = other.per_pos + (0,) * (width - len(other.per_pos))
        return DraftCounters(self.drafts + other.drafts, self.drafted + other.drafted,
                             self.accepted + other.accepted, tuple(a + b for a, b in zip(mine, theirs, strict=True)))

    def restarted_since(self, earlier: DraftCounters) -> bool:
        return self.drafts < earlier.drafts or self.accepted < earlier.accepted

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def acceptance_curve(counters: DraftCounters, n_current: int, n_limit: int) -> list[float]:
    """`a_i` for i in 0..n_limit-1: measured for positions the member drafts (i < n_current), extrapolated
    beyond with the conditional acceptance of the last measured position (capped at 1)."""
    if counters.drafts <= 0 or n_current <= 0:
        raise ValueError("no draft steps to learn acceptance from")
    measured = [min(1.0, c / counters.drafts) for c in counters.per_pos[:n_current]]
    if not measured:  # a build without the per-position counter: spread the mean acceptance geometrically
        mean = min(float(n_current), counters.accepted / counters.drafts)  # tokens accepted per draft step
        measured = _geometric_prefix(mean, n_current)
    measured += [0.0] * (n_current - len(measured))
    # P(position i accepted | position i-1 accepted) at the last measured position; a_0 alone is its own.
    ratio = min(1.0, measured[-1] / measured[-2] if len(measured) >= 2 and measured[-2] > 0 else measured[-1])
    curve = list(measured[:n_limit])
    while len(curve) < n_limit:
        curve.append(curve[-1] * ratio)
    return curve


def _geometric_prefix(mean_accepted: float, n: int) -> list[float]:
    """`a_i = r^(i+1)` with `r + r² + … + rⁿ = mean_accepted` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        r = (lo + hi) / 2
        lo, hi = (r, hi) if sum(r ** (i + 1) for i in range(n)) < mean_accepted else (lo, r)
    return [lo ** (i + 1) for i in range(n)]


def expected_tokens(curve: Sequence[float], n: int) -> float:
    """Tokens one decode step yields at draft length n (n = 0: exactly 1)."""
    return 1.0 + sum(curve[:n])


@dataclass(frozen=True)
class StepCost:
    """The time of a decode step at draft length n, relative to a plain step (n = 0).

    `measured` holds what `council tune` found ({n: relative time}); between measured points it interpolates,
    past them it extends the last slope; with nothing measured it is `1 + per_token·n`."""

    measured: Mapping[int, float] = field(default_factory=dict)
    per_token: float = 0.5

    @classmethod
    def from_seconds(cls, seconds: Mapping[int, float], per_token: float = 0.5) -> StepCost:
        """From absolute step times; relative to n = 0 when it was measured, else to the smallest n."""
        if not seconds:
            return cls({}, per_token)
        base = seconds.get(0)
        if base is None:  # no plain run: anchor the smallest n with the default slope
            n0 = min(seconds)
            base = seconds[n0] / (1 + per_token * n0)
        return cls({n: s / base for n, s in sorted(seconds.items())}, per_token)

    def __call__(self, n: int) -> float:
        points = sorted(self.measured.items())
        if not points:
            return 1.0 + self.per_token * n
        if n in self.measured:
            return self.measured[n]
        below = [(k, v) for k, v in points if k < n]
        above = [(k, v) for k, v in points if k > n]
        if below and above:
            (k0, v0), (k1, v1) = below[-1], above[0]
            return v0 + (v1 - v0) * (n - k0) / (k1 - k0)
        if len(points) == 1:
            k0, v0 = points[0]
            return max(1e-9, v0 + self.per_token * (n - k0))
        # Outside the measured range: the slope of the two nearest points (never negative).
        (k0, v0), (k1, v1) = (points[-2], points[-1]) if below else (points[0], points[1])
        slope = max(0.0, (v1 - v0) / (k1 - k0))
        anchor_k, anchor_v = (k1, v1) if below else (k0, v0)
        return max(1e-9, anchor_v + slope * (n - anchor_k))


def predicted_speed(curve: Sequence[float], cost: StepCost, n: int) -> float:
    """Relative tokens per second at n (a plain step yields 1 token in time 1)."""
    return expected_tokens(curve, n) / cost(n)


def best_n(curve: Sequence[float], cost: StepCost, candidates: Sequence[int]) -> int:
    """The candidate with the highest predicted speed (the smaller n on a tie)."""
    return max(sorted(candidates), key=lambda n: (round(predicted_speed(curve, cost, n), 9), -n))


def recommend(rows: Sequence[Mapping[str, float]]) -> int:
    """From `council tune`'s measured rows ({"n", "tokens_per_second"}): the fastest n (smaller on a tie)."""
    return int(max(rows, key=lambda r: (r["tokens_per_second"], -r["n"]))["n"])


# ---- live adaptation: when to move ---------------------------------------------------------------------


@dataclass(frozen=True)
class TunerSettings:
    window: float = 60.0  # seconds of counters a decision looks at
    min_drafts: int = 200  # draft steps in the window before anything is concluded
    margin: float = 0.10  # the other n must be predicted this much faster (0.10: +10%)
    sustain: int = 3  # ... in this many evaluations in a row
    probe_after: float = 600.0  # at n = 0 nothing is measured: try n = 1 again after this long
    n_limit: int = 8  # the largest n considered (the model's limit)
    n_floor: int = 0  # the smallest n considered


@dataclass(frozen=True)
class Verdict:
    """What one evaluation concluded: `move_to` is set only when a change is due."""

    current: int
    best: int | None
    move_to: int | None
    reason: str
    speeds: dict[int, float] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # better n the budget does not allow, and why


class DraftTuner:
    """Windowed counters of one member and the hysteresis that turns predictions into a decision.

    `observe(counters, now)` feeds the member's cumulative counters (a drop means its process restarted);
    `evaluate(now, allowed)` predicts the speed of every n and returns a `Verdict`; `changed(n, now)` says the
    member now runs n (the window starts over: the old counters describe another n)."""

    def __init__(self, n: int, cost: StepCost, settings: TunerSettings = TunerSettings()) -> None:
        self.n = n
        self.cost = cost
        self.settings = settings
        self._last: DraftCounters | None = None
        self._window: deque[tuple[float, DraftCounters]] = deque()
        self._streak: tuple[int, int] = (n, 0)  # (best n, evaluations in a row it won)
        self._since = 0.0

    def changed(self, n: int, now: float) -> None:
        self.n = n
        self._last = None
        self._window.clear()
        self._streak = (n, 0)
        self._since = now

    def observe(self, counters: DraftCounters, now: float) -> None:
        if self._last is None or counters.restarted_since(self._last):
            self._last = counters
            return
        delta = counters - self._last
        self._last = counters
        if delta.drafts > 0:
            self._window.append((now, delta))
        while self._window and self._window[0][0] < now - self.settings.window:
            self._window.popleft()

    def window_counters(self) -> DraftCounters:
        total = DraftCounters()
        for _, delta in self._window:
            total = total + delta
        return total

    def evaluate(self, now: float, allowed: Callable[[int], str | None] = lambda n: None) -> Verdict:
        """`allowed(n)` returns why n may not run (e.g. its memory overflows the member's slots), or None."""
        s = self.settings
        candidates = list(range(s.n_floor, s.n_limit + 1))
        if self.n > s.n_limit or 0 < self.n < s.n_floor:  # the range moved under a running process
            into = min(max(self.n, s.n_floor), s.n_limit)
            return Verdict(self.n, None, into, f"n {self.n} is outside {s.n_floor}..{s.n_limit}: n → {into}")
        if self.n == 0:
            if s.n_floor > 0:
                return Verdict(0, None, s.n_floor, f"n 0 is below the floor {s.n_floor}")
            waited = now - self._since
            if waited >= s.probe_after and s.n_limit >= 1:
                if (why := allowed(1)) is not None:  # said, where the status kept waiting for a probe that never ran
                    return Verdict(0, None, None, f"no speculation: the probe at n=1 is refused: {why}",
                                   refused={1: why})
                return Verdict(0, None, 1, f"probe: {waited:.0f}s without speculation, measuring acceptance at n=1")
            return Verdict(0, None, None, "no speculation: nothing to measure until the probe")
        window = self.window_counters()
        if window.drafts < s.min_drafts:
            self._streak = (self.n, 0)
            return Verdict(self.n, None, None, f"{window.drafts} of {s.min_drafts} draft steps in the window")
        curve = acceptance_curve(window, self.n, s.n_limit)
        speeds = {n: predicted_speed(curve, self.cost, n) for n in candidates}
        refused = {n: why for n in candidates if (why := allowed(n)) is not None and n != self.n}
        fitting = [n for n in candidates if n not in refused]
        best = best_n(curve, self.cost, fitting)
        refused = {n: why for n, why in refused.items() if speeds[n] > speeds[best]}
        gain = speeds[best] / speeds[self.n] - 1 if speeds[self.n] > 0 else math.inf
        summary = (f"acceptance {window.acceptance or 0:.2f} over {window.drafts} draft steps; "
                   f"predicted {speeds[best]:.2f} vs {speeds[self.n]:.2f} tokens per plain-step time")
        if best == self.n or gain < s.margin:
            self._streak = (self.n, 0)
            return Verdict(self.n, best, None, f"keep n={self.n}: {summary}", speeds, refused)
        count = self._streak[1] + 1 if self._streak[0] == best else 1
        self._streak = (best, count)
        if count < s.sustain:
            return Verdict(self.n, best, None, f"n={best} better ({count}/{s.sustain}): {summary}", speeds, refused)
        return Verdict(self.n, best, best, f"n {self.n} → {best}: {summary} (+{gain:.0%})", speeds, refused)
