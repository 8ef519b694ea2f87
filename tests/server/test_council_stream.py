"""A streamed council answer whose engine fails in a way no council error names (a bug, or a TimeoutError of its
own): the stream ends with the error event and `[DONE]` a client reads, counted as 500 — never keep-alives
without end, never a stream cut without a word. The fault is provoked in-process: a real council raises only its
own errors."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from council.server.routes import chat
from council.voting.engine import QuorumError, RequestRejected

pytestmark = pytest.mark.anyio


class Engine:
    name = "c"

    def __init__(self, fault: BaseException) -> None:
        self.fault = fault

    async def ask(self, council: Any) -> Any:
        raise self.fault


class Metrics:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def observe(self, route: str, model: str, status: int, seconds: float, overhead: float | None) -> None:
        self.statuses.append(status)


class Router:
    def __init__(self) -> None:
        self.metrics = Metrics()

    async def answered(self, *args: Any) -> None:
        raise AssertionError("a failed council is not an answer")


class Admission:
    released = 0

    def release(self) -> None:
        self.released += 1


async def _events(fault: BaseException) -> tuple[list[bytes], Router, Admission]:
    router, admission = Router(), Admission()
    stream = chat.stream_council(router, Engine(fault), None, admission, 0.0)  # type: ignore[arg-type]
    events: list[bytes] = []
    async for event in stream.body_iterator:
        events.append(event)
        assert len(events) < 10, f"the stream does not end: {events[:3]}"
    return events, router, admission


@pytest.mark.parametrize("fault", [TimeoutError(), ValueError("a bug")], ids=["TimeoutError", "ValueError"])
async def test_an_unexpected_fault_ends_the_stream_with_a_500_error_event(fault: BaseException) -> None:
    events, router, admission = await _events(fault)
    assert events[-1].endswith(b"data: [DONE]\n\n")
    error = json.loads(events[-1].split(b"\n\n")[0].removeprefix(b"data: "))["error"]
    assert error["code"] == "internal_error" and type(fault).__name__ in error["message"]
    assert router.metrics.statuses == [500] and admission.released == 1


async def test_a_council_error_keeps_its_own_status() -> None:
    events, router, _ = await _events(QuorumError("c", "2 of 3 members failed", []))
    error = json.loads(events[-1].split(b"\n\n")[0].removeprefix(b"data: "))["error"]
    assert error["code"] == "quorum_not_met" and router.metrics.statuses == [503]
    assert error["type"] == "server_error"


async def test_a_request_every_member_refused_is_the_clients_error_streamed_as_whole() -> None:
    """Streamed, it said `type: server_error` (unstreamed: 400 `invalid_request_error`), so a client that tells
    its own mistakes from the server's by `type` would retry a request that cannot succeed."""
    events, router, _ = await _events(RequestRejected("c", "m/0: 400 failed to parse grammar"))
    error = json.loads(events[-1].split(b"\n\n")[0].removeprefix(b"data: "))["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "rejected_by_members"
    assert router.metrics.statuses == [400]


class Answer:
    """A voted answer whose writing fails partway: its usage cannot be read (a bug in writing the last chunk)."""

    id, council, logprobs, finish_reason = "chatcmpl-x", "c", None, "stop"
    message: ClassVar[dict[str, str]] = {"role": "assistant", "content": "hi"}

    def usage(self) -> dict[str, int]:
        raise ValueError("a bug")


class Answering(Engine):
    async def ask(self, council: Any) -> Any:
        return Answer()


class Recording(Router):
    def __init__(self, fault: bool) -> None:
        super().__init__()
        self.fault = fault

    async def answered(self, *args: Any) -> None:
        if self.fault:
            raise ValueError("a bug")


@pytest.mark.parametrize("recording_fails", [True, False], ids=["recording", "writing"])
async def test_a_fault_writing_the_answer_ends_the_stream_with_a_500_error_event_counted_once(
        recording_fails: bool) -> None:
    """Once the vote was decided, a fault recording or writing the answer left the stream cut off without an error
    event or `[DONE]` (the openai SDK returned a completion with `finish_reason` None), counted as 499 and 500."""
    router, admission = Recording(recording_fails), Admission()
    council = type("Council", (), {"logprobs": False})()
    stream = chat.stream_council(router, Answering(ValueError()), council, admission, 0.0)  # type: ignore[arg-type]
    events = [event async for event in stream.body_iterator]
    assert events[-1].endswith(b"data: [DONE]\n\n")
    error = json.loads(events[-1].split(b"\n\n")[0].removeprefix(b"data: "))["error"]
    assert error["code"] == "internal_error" and "ValueError" in error["message"]
    if not recording_fails:  # the answer's first chunk had gone
        assert b'"content":"hi"' in events[0]
    assert router.metrics.statuses == [500] and admission.released == 1
