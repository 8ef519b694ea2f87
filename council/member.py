"""One member process as an explicit state machine (after llama-swap's `process.go`).

Every change goes through `Member.swap(expected, new)`: a compare-and-swap that checks the edge against
`VALID_TRANSITIONS` (the one place that says what may follow what), records it with a timestamp and
reason, and notifies listeners. A caller that loses the race learns the current state instead of guessing.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from council.launch import LaunchSpec


class State(enum.StrEnum):
    STOPPED = "stopped"  # not started yet, or stopped on purpose
    STARTING = "starting"  # process spawned, waiting for /health 200 and our own /props
    WARMING = "warming"  # healthy; a real warm-up completion is running
    READY = "ready"  # serving: health ok and a completion succeeded
    DRAINING = "draining"  # no new requests; in-flight ones finish before it stops
    BACKOFF = "backoff"  # crashed or judged stuck; waiting before the next start
    STOPPING = "stopping"  # SIGTERM sent, SIGKILL after a deadline
    FAILED = "failed"  # gave up: failed too often in a row, or cannot start at all


VALID_TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.WARMING, State.BACKOFF, State.FAILED, State.STOPPING}),
    State.WARMING: frozenset({State.READY, State.BACKOFF, State.FAILED, State.STOPPING}),
    State.READY: frozenset({State.DRAINING, State.BACKOFF, State.FAILED, State.STOPPING}),
    State.DRAINING: frozenset({State.STOPPING, State.BACKOFF}),
    State.BACKOFF: frozenset({State.STARTING, State.FAILED, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPING}),
}


def is_valid_transition(old: State, new: State) -> bool:
    return new in VALID_TRANSITIONS[old]


class TransitionError(RuntimeError):
    def __init__(self, name: str, expected: State, actual: State, new: State) -> None:
        super().__init__(f"{name}: cannot go {expected} -> {new}: state is {actual}")
        self.actual = actual


@dataclass(frozen=True)
class StateChange:
    member: str
    old: State
    new: State
    reason: str
    at: float  # time.time()


@dataclass
class MemberStats:
    """What the supervisor scrapes from the member's /metrics (and request timings as a fallback)."""

    tokens_per_second: float | None = None
    requests_total: int = 0
    draft_tokens: int = 0  # from /metrics (llamacpp:spec_decode_*), when the build exports them
    draft_accepted: int = 0
    timings_draft_tokens: int = 0  # summed from responses' `timings`, the fallback
    timings_draft_accepted: int = 0

    def add_timings(self, timings: dict[str, object]) -> None:
        """Count a response's `timings.draft_n` / `draft_n_accepted` (for builds without the counters)."""
        drafted, accepted = timings.get("draft_n"), timings.get("draft_n_accepted")
        if isinstance(drafted, int) and isinstance(accepted, int):
            self.timings_draft_tokens += drafted
            self.timings_draft_accepted += accepted

    @property
    def draft_acceptance(self) -> float | None:
        if self.draft_tokens:
            return self.draft_accepted / self.draft_tokens
        if self.timings_draft_tokens:
            return self.timings_draft_accepted / self.timings_draft_tokens
        return None


@dataclass
class Member:
    """A member process: its launch spec, state, history and counters. Shared by supervisor and callers."""

    name: str
    spec: LaunchSpec
    members: tuple[str, ...] = ()  # council members this process serves
    state: State = State.STOPPED
    pid: int | None = None
    restarts: int = 0
    failures_in_row: int = 0
    reason: str = ""
    history: deque[StateChange] = field(default_factory=lambda: deque(maxlen=64))
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    stats: MemberStats = field(default_factory=MemberStats)
    in_flight: int = 0
    listeners: list[Callable[[StateChange], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def swap(self, expected: State | tuple[State, ...], new: State, reason: str = "") -> StateChange:
        """Move to `new` if the state is (one of) `expected` and the edge is valid; else TransitionError."""
        allowed = expected if isinstance(expected, tuple) else (expected,)
        with self._lock:
            old = self.state
            if old not in allowed or not is_valid_transition(old, new):
                raise TransitionError(self.name, allowed[0], old, new)
            self.state = new
            self.reason = reason
            change = StateChange(self.name, old, new, reason, time.time())
            self.history.append(change)
        for listener in list(self.listeners):
            listener(change)
        return change

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def snapshot(self) -> dict[str, object]:
        """The member as `/admin/members` and `council up` show it."""
        return {
            "name": self.name, "members": list(self.members), "model": self.spec.model, "state": str(self.state),
            "reason": self.reason, "port": self.spec.port, "pid": self.pid, "restarts": self.restarts,
            "in_flight": self.in_flight, "tokens_per_second": self.stats.tokens_per_second,
            "draft_acceptance": self.stats.draft_acceptance,
            "since": self.history[-1].at if self.history else None,
        }
