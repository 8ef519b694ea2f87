"""A member process's states and the one table of allowed edges (after llama-swap's `process.go`).

Every change goes through `MemberProcess.swap(expected, new)`: a compare-and-swap that checks the edge
against `VALID_TRANSITIONS` (the one place that says what may follow what), records it with a timestamp and
reason, and notifies listeners. A caller that loses the race learns the current state instead of guessing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from council.errors import CouncilError


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
    # A crash while draining (a planned restart) is a failure like one while ready: backoff, or, the last in a
    # row, failed at once (through backoff would announce a restart that never comes).
    State.DRAINING: frozenset({State.STOPPING, State.BACKOFF, State.FAILED}),
    State.BACKOFF: frozenset({State.STARTING, State.FAILED, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPING}),
}


def is_valid_transition(old: State, new: State) -> bool:
    return new in VALID_TRANSITIONS[old]


class TransitionError(CouncilError, RuntimeError):
    def __init__(self, name: str, expected: State, actual: State, new: State) -> None:
        super().__init__(f"{name}: cannot go {expected} -> {new}: state is {actual}")
        self.actual = actual


@dataclass(frozen=True)
class StateChange:
    member: str  # the process's name (`member` in events and their JSON)
    old: State
    new: State
    reason: str
    at: float  # time.time()

    def to_json(self) -> dict[str, object]:
        return {"member": self.member, "old": str(self.old), "new": str(self.new), "reason": self.reason,
                "at": self.at}
