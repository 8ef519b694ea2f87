"""The watchdog counts what the member answered, not whether the call raised: a stub llama-server (started
as a member through the supervisor) answers 500 to every completion while its `/health` stays 200, which a
real llama-server cannot be made to do. Council calls (one completion, `n` streamed choices) and passthrough
(relay, stream) are all counted; a 4xx and a cancelled request are not."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from council.members.launch import LaunchSpec
from council.members.process import LINE_LIMIT, LifeConfig, MemberProcess, ProcessRecipe
from council.members.states import State, StateChange
from council.members.supervisor import Supervisor
from council.voting.assembly import process_endpoint
from council.voting.client import HttpMemberClient, MemberFailed
from tests.servers import until

pytestmark = pytest.mark.anyio
STUB = Path(__file__).with_name("stub_llama_server.py")
FAST = {"backoff_base": 0.2, "backoff_cap": 1.0, "watch_interval": 0.1, "poll_interval": 0.05}


@contextlib.asynccontextmanager
async def running_stub(tmp_path: Path, **config: float) -> AsyncIterator[tuple[MemberProcess, HttpMemberClient]]:
    """One stub member, ready, and the client passthrough uses to reach it (council calls use the same, with
    their council's patience)."""
    model = tmp_path / "stub.gguf"
    model.write_bytes(b"GGUF")

    def spec(port: int) -> LaunchSpec:
        argv = (sys.executable, str(STUB), "--port", str(port), "--model-path", str(model))
        return LaunchSpec(key="stub", model="stub", model_path=model, argv=argv, env={}, port=port, api_key="k")

    life = LifeConfig(run_dir=tmp_path / "run", **{**FAST, **config})
    supervisor = Supervisor(life, [ProcessRecipe("stub", spec, ("c/0",))])
    await supervisor.start()
    try:
        process = supervisor.processes["stub"]
        await until(lambda: process.ready, 30, f"the stub to be ready ({process.reason})")
        yield process, HttpMemberClient(endpoint=lambda: process_endpoint(process), target=process.name)
    finally:
        await supervisor.stop()


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[tuple[MemberProcess, HttpMemberClient]]:
    async with running_stub(tmp_path) as made:
        yield made


def ask(mode: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "go"}], "stub": mode}


def body(mode: str, stream: bool = False) -> bytes:
    return httpx.Request("POST", "/", json={**ask(mode), "stream": stream}).content


async def probes(process: MemberProcess) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"{process.spec.url}/stub/health")).json()["probes"])


async def watchdog_looked(process: MemberProcess) -> None:
    """Until the watchdog has run twice more (it probes /health after checking the failure streak)."""
    start = await probes(process)
    deadline = asyncio.get_running_loop().time() + 10
    while await probes(process) < start + 2:
        assert asyncio.get_running_loop().time() < deadline, "the watchdog stopped probing"
        await asyncio.sleep(0.05)


async def test_three_500s_restart_a_member_whose_health_is_fine(
    stub: tuple[MemberProcess, HttpMemberClient],
) -> None:
    """Before, a 5xx returned normally through the request accounting and counted as a success."""
    process, client = stub
    first_pid = process.pid
    for streak in (1, 2, 3):
        reply = await client.complete(ask("500"))
        assert reply.status == "error" and reply.http_status == 500
        assert process.request_failures == streak  # nothing awaited since: the watchdog has not run
    await until(lambda: process.restarts == 1 and process.ready, 30, "the watchdog to restart the stub")
    assert process.pid != first_pid
    after = [c for c in process.history if c.old is State.READY]
    assert after and after[0].new is State.BACKOFF
    assert "watchdog: 3 requests failed in a row (last: member answered 500)" in after[0].reason
    assert [c.new for c in process.history][-3:] == [State.STARTING, State.WARMING, State.READY]


async def test_400s_neither_count_nor_reset_the_streak(stub: tuple[MemberProcess, HttpMemberClient]) -> None:
    process, client = stub
    pid = process.pid
    for _ in range(3):
        assert (await client.complete(ask("400"))).http_status == 400
    assert process.request_failures == 0
    await watchdog_looked(process)
    assert process.restarts == 0 and process.pid == pid and process.ready
    await client.complete(ask("500"))
    await client.complete(ask("500"))
    assert (await client.complete(ask("400"))).rejected
    assert process.request_failures == 2  # a 4xx did not end the streak
    assert (await client.complete(ask("501"))).http_status == 501  # "not supported": no restart fixes it
    assert process.request_failures == 2
    assert (await client.complete(ask("ok"))).status == "ok"
    assert process.request_failures == 0  # a readable answer did
    await watchdog_looked(process)
    assert process.restarts == 0 and process.pid == pid


async def test_unreadable_bodies_fail_for_council_calls_and_passthrough(
    stub: tuple[MemberProcess, HttpMemberClient],
) -> None:
    process, client = stub
    failures = process.request_failures

    async def counted(expected: int) -> None:
        nonlocal failures
        failures += expected
        assert process.request_failures == failures

    assert (await client.complete(ask("garbage"))).error == "member answered with invalid JSON"
    await counted(1)
    assert (await client.relay(body("garbage"), "/v1/chat/completions")).status == 200
    await counted(1)
    # A grouped council call whose stream is cut off: each choice reports the error, the member one failure.
    replies = [reply async for _, reply in client.choices(ask("broken"), 2)]
    assert len(replies) == 2 and all(r.status == "error" for r in replies)
    await until(lambda: process.request_failures >= failures + 1 or process.state is not State.READY, 10,
                "the broken stream to count")
    await until(lambda: process.restarts == 1 and process.ready, 30, "the watchdog to restart the stub")
    failures = 0
    assert process.request_failures == 0  # a new process starts a new streak
    # A passthrough stream that breaks after its head.
    with pytest.raises(MemberFailed, match="ClientPayloadError"):
        async with client.stream(body("broken", stream=True), "/v1/chat/completions") as (head, chunks):
            assert head.status == 200
            async for _ in chunks:
                pass
    await counted(1)
    assert (await client.relay(body("ok"), "/v1/chat/completions")).status == 200
    await counted(-1)  # a readable relay ends the streak


async def test_json_that_is_no_chat_completion_is_the_members_failure(
    stub: tuple[MemberProcess, HttpMemberClient],
) -> None:
    """`{}` and a 200 error read as one empty choice: an `ok` seat that abstained (where every seat did, a 502
    that SDKs do not retry, for members that had all failed), and the watchdog told of a success. A number as the
    content failed the whole vote with a 500."""
    process, client = stub
    for mode, why in (("empty", "no choices"), ("error200", "no choices"),
                      ("number", "its message's content is int, not text"),
                      ("calls", "its message's tool_calls are not a list of calls")):
        reply = await client.complete(ask(mode))
        assert (reply.status, reply.error) == ("error", f"member answered with no chat completion: {why}"), mode
        assert process.request_failures == 1, mode  # counted as the member's failure
        assert (await client.complete(ask("ok"))).status == "ok"  # (a readable answer ends the streak)
        assert process.request_failures == 0


async def test_passthrough_and_grouped_calls_count_500s(stub: tuple[MemberProcess, HttpMemberClient]) -> None:
    process, client = stub
    assert (await client.relay(body("500"), "/v1/chat/completions")).status == 500
    assert process.request_failures == 1
    async with client.stream(body("500", stream=True), "/v1/chat/completions") as (head, chunks):
        assert head.status == 500
        assert b"stub says 500" in b"".join([c async for c in chunks])
    assert process.request_failures == 2
    replies = [reply async for _, reply in client.choices(ask("500"), 2)]
    assert [r.http_status for r in replies] == [500, 500]
    await until(lambda: process.restarts == 1 and process.ready, 30, "the watchdog to restart the stub")
    # Streams read to their end are successes: ones on a healthy member end a streak.
    assert (await client.relay(body("500"), "/v1/chat/completions")).status == 500
    async with client.stream(body("ok", stream=True), "/v1/chat/completions") as (head, chunks):
        assert head.status == 200 and b"[DONE]" in b"".join([c async for c in chunks])
    assert process.request_failures == 0
    replies = [reply async for _, reply in client.choices(ask("ok"), 3)]
    assert [r.text for r in replies] == ["ok"] * 3 and process.request_failures == 0


async def test_requests_the_router_cancels_are_neither(stub: tuple[MemberProcess, HttpMemberClient]) -> None:
    process, client = stub
    await client.complete(ask("500"))
    await client.complete(ask("500"))
    assert process.request_failures == 2
    for _ in range(3):  # a council deadline or a client that went away cancels the call
        call = asyncio.create_task(client.complete(ask("hang")))
        await until(lambda: process.in_flight == 1, 10, "the call to reach the stub")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert process.in_flight == 0 and process.request_failures == 2
    # An early stop closes a grouped call's stream after its first choice.
    choices = client.choices(ask("ok"), 2)
    assert (await anext(choices))[1].status == "ok"
    await choices.aclose()
    # A passthrough stream whose client left before the end.
    async with client.stream(body("ok", stream=True), "/v1/chat/completions") as (head, chunks):
        assert head.status == 200 and await anext(chunks)
    assert process.request_failures == 2
    await watchdog_looked(process)
    assert process.restarts == 0 and process.ready


async def crash_restart_and_stop(process: MemberProcess) -> None:
    """SIGKILL the member: the watchdog starts a new one; then a stop completes and leaves nothing behind."""
    first_pid = process.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    await until(lambda: process.restarts == 1 and process.ready, 30, "the watchdog to restart the stub")
    assert process.pid != first_pid
    after = [c for c in process.history if c.old is State.READY]
    assert after and after[0].reason.startswith("killed by SIGKILL")
    last_pid = process.pid
    await process.stop("test over")
    assert process.state is State.STOPPED and process._running is None
    assert not list((process.config.run_dir / "pids").glob("*.json"))
    with pytest.raises(ProcessLookupError):
        os.kill(last_pid, 0)  # reaped, not a zombie


async def test_an_output_line_over_64_kib_keeps_the_log_the_watchdog_and_stop_working(
    stub: tuple[MemberProcess, HttpMemberClient],
) -> None:
    """llama-server `--verbose` logs a whole request body on one line. Before, the log was read line by line with
    StreamReader's 64 KiB limit: such a line killed the reader (the log went silent), the next crash killed the
    watchdog loop (the member stayed `ready`, never restarted) and stop() raised."""
    process, client = stub
    assert (await client.complete(ask("long-log"))).status == "ok"
    await until(lambda: "after the long line" in process.log_tail, 10, "the line after the long one in the tail")
    long = [line for line in process.log_tail if line.startswith("request body: ")]
    cut = len("request body: ") + 200_000 - LINE_LIMIT
    assert long == ["request body: " + "x" * (LINE_LIMIT - len("request body: ")) + f" ... [{cut} more bytes cut]"]
    log = process.log_path.read_bytes()  # the file keeps the line whole
    assert b"request body: " + b"x" * 200_000 + b"\nafter the long line\n" in log
    await crash_restart_and_stop(process)


async def test_a_failing_log_listener_neither_blocks_the_member_nor_breaks_restart_or_stop(
    stub: tuple[MemberProcess, HttpMemberClient],
) -> None:
    """An in-process fault no server can cause: before, an exception in the log reader escaped the watchdog
    (the member stayed `ready` after a crash) and stop(); and after the first line a listener raised on, the
    tail and every other listener (the dashboard's log) got no line again: the file only."""
    process, client = stub
    heard: list[str] = []

    def broken(name: str, line: str) -> None:
        raise RuntimeError("listener broke")

    process.log_listeners.extend([broken, lambda name, line: heard.append(line)])
    # Output far past the pipe's buffer after the fault: it still reaches the file, so the pipe is drained.
    for _ in range(2):
        assert (await client.complete(ask("long-log"))).status == "ok"
    await until(lambda: process.log_path.read_bytes().count(b"after the long line") == 2, 10,
                "the output after the fault to reach the log file")
    await until(lambda: heard.count("after the long line") == 2, 10, "the other listener to get every line")
    assert list(process.log_tail).count("after the long line") == 2
    noted = [line for line in process.log_tail if "listener broke" in line]
    assert noted == ["council: a log listener failed (RuntimeError: listener broke); the others still get every "
                     "line"]  # once, not once per line
    assert (await client.complete(ask("ok"))).status == "ok"
    await crash_restart_and_stop(process)


async def test_a_failing_state_listener_neither_breaks_the_change_nor_the_other_listeners(
    stub: tuple[MemberProcess, HttpMemberClient], caplog: pytest.LogCaptureFixture,
) -> None:
    """An in-process fault no server can cause: a state listener that raised (a console gone away under `council
    up | head`) reached whoever moved the state, after the state had moved: the watchdog's restart or stop broke
    halfway. Now the change goes on, the other listeners hear it, and the fault is logged."""
    process, _ = stub
    heard: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise BrokenPipeError("console gone")

    process.listeners.extend([broken, heard.append])
    before = list(process.history)
    await crash_restart_and_stop(process)  # a crash, the watchdog's restart and a stop: each change went on
    assert heard == [c for c in process.history if c not in before] and heard[-1].new is State.STOPPED
    failed = [r.getMessage() for r in caplog.records if "a state listener failed" in r.getMessage()]
    assert len(failed) == len(heard), failed


# The stub's `slow` answers take 2 s, twice the patience these watchdogs have.
IMPATIENT = {"stuck_after": 1.0}


async def test_long_streams_making_progress_are_not_taken_for_stuck(tmp_path: Path) -> None:
    """Before, a request in flight past `stuck_after` was stuck however it went: a long stream, tokens arriving all
    along (a long CPU answer), restarted the healthy member and cut every request on it. Now a stream's every
    chunk is progress: passthrough streams and a council's grouped samples alike."""
    async with running_stub(tmp_path, **IMPATIENT) as (process, client):
        pid = process.pid
        async with client.stream(body("slow", stream=True), "/v1/chat/completions") as (head, chunks):
            assert head.status == 200 and b"[DONE]" in b"".join([c async for c in chunks])
        replies = [reply async for _, reply in client.choices(ask("slow"), 2)]
        assert [r.text for r in replies] == ["ok" * 10] * 2
        assert process.restarts == 0 and process.pid == pid and process.ready


async def test_a_council_call_may_stay_silent_for_its_timeout_a_passthrough_call_for_stuck_after(
    tmp_path: Path,
) -> None:
    """A member reading a long prompt sends nothing until its first token, for minutes on a CPU. Before, a council
    whose `timeout` is longer than `stuck_after` had its members restarted under it; now its calls may stay silent
    as long as its timeout (its deadline cancels them anyway). A call with no deadline of its own (passthrough)
    is still stuck after `stuck_after` without a byte."""
    async with running_stub(tmp_path, **IMPATIENT) as (process, passthrough):
        council = HttpMemberClient(endpoint=passthrough.endpoint, target=process.name, patience=5.0)
        pid = process.pid
        assert (await council.complete(ask("slow"))).status == "ok"
        assert process.restarts == 0 and process.pid == pid
        with pytest.raises(MemberFailed):  # cut by the restart
            await passthrough.relay(body("slow"), "/v1/chat/completions")
        await until(lambda: process.restarts == 1 and process.ready, 30, "the watchdog to restart the stub")
        restart = next(c for c in process.history if c.old is State.READY)
        assert restart.reason.startswith("watchdog: a request has had no byte from the member for over 1s")


async def test_watching_a_ready_process_leaves_no_task_behind(tmp_path: Path) -> None:
    """The watch loop waited for the process's exit with a shielded wait per tick, whose inner task the tick's
    timeout left pending: one more task every `watch_interval` per process (every second by default) for as long as
    it ran, ~1 KB each, about 100 MB a process a day. The count now stays put however many ticks pass."""
    async with running_stub(tmp_path, watch_interval=0.02) as (process, _):
        await watchdog_looked(process)
        before = len(asyncio.all_tasks())
        start, deadline = await probes(process), asyncio.get_running_loop().time() + 30
        while await probes(process) < start + 25:  # 25 more ticks: the old loop left 25 tasks behind
            assert asyncio.get_running_loop().time() < deadline, "the watchdog stopped probing"
            await asyncio.sleep(0.02)
        assert len(asyncio.all_tasks()) <= before + 2, [t.get_coro() for t in asyncio.all_tasks()]
    waits = [t for t in asyncio.all_tasks() if "wait" in repr(t.get_coro()) and "Process" in repr(t.get_coro())]
    assert waits == [], waits  # a stopped process leaves none either


async def test_a_caller_that_holds_a_relayed_stream_is_not_the_members_silence(tmp_path: Path) -> None:
    """A client that stops reading a streamed passthrough stops the relay reading the member (back-pressure), and
    the watchdog took that silence for a stuck member: after `stuck_after` it restarted the process, cutting every
    request on it (any chat key could). Time the caller holds a chunk is not counted; a silent member still is."""
    async with running_stub(tmp_path, **IMPATIENT) as (process, client):
        pid = process.pid
        async with client.stream(body("slow", stream=True), "/v1/chat/completions") as (head, chunks):
            first = await anext(chunks)
            held = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() < held + 2 * IMPATIENT["stuck_after"]:
                await watchdog_looked(process)  # the watchdog looks on, past its patience
            rest = b"".join([c async for c in chunks])
        assert head.status == 200 and first.startswith(b"data: ") and rest.endswith(b"data: [DONE]\n\n")
        assert process.restarts == 0 and process.pid == pid and process.ready


async def test_a_log_moved_away_neither_silences_the_member_nor_loses_its_lines(tmp_path: Path) -> None:
    """logrotate (or a cleanup) moved a member's log: at the next rotation `os.replace` raised, and from then on
    nothing reached the tail, the dashboard's live log or any file for the rest of the process's life."""
    heard: list[str] = []
    async with running_stub(tmp_path, log_bytes=100_000) as (process, client):
        process.log_listeners.append(lambda _name, line: heard.append(line))
        moved = process.log_path.with_name("moved-by-logrotate.log")
        process.log_path.rename(moved)
        assert (await client.complete(ask("long-log"))).status == "ok"  # 200 KB: past log_bytes, a rotation
        await until(lambda: "after the long line" in heard, 10, "the line after the rotation to reach a listener")
        assert "after the long line" in process.log_tail
        await until(lambda: process.log_path.exists() and b"after the long line" in process.log_path.read_bytes(),
                    10, "a new log at the member's path")
        assert not [line for line in process.log_tail if "log failed" in line], list(process.log_tail)


async def test_a_log_file_that_cannot_be_written_still_leaves_every_line_in_the_tail(tmp_path: Path) -> None:
    """A log file fault (a full disk, here its file closed under it) stopped the tail and the listeners as well:
    "later lines go to the log file only", which could not be written either."""
    async with running_stub(tmp_path) as (process, client):
        assert process._running is not None
        process._running.log.file.close()
        assert (await client.complete(ask("long-log"))).status == "ok"
        await until(lambda: "after the long line" in process.log_tail, 10, "the line in the tail")
        assert any("writing this log failed (ValueError" in line for line in process.log_tail), list(process.log_tail)


@pytest.mark.parametrize("exec_", [False, True], ids=["child", "exec"])
async def test_a_wrapper_that_keeps_llama_server_as_its_child_is_said(
    tmp_path: Path, exec_: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """The parent-death signal reaches only the process council starts: a `$LLAMA_SERVER` script that runs
    llama-server without `exec` leaves it serving when the router is SIGKILLed (until the next council start on
    the cache kills it). Nothing can stop that from here, so the log says it once, with the fix."""
    import logging

    import council.members.process as process_module

    caplog.set_level(logging.WARNING, logger="council.members.process")
    process_module._WRAPPERS_SAID.clear()
    model = tmp_path / "stub.gguf"
    model.write_bytes(b"GGUF")

    def spec(port: int) -> LaunchSpec:
        run = f"{'exec ' if exec_ else ''}{sys.executable} {STUB} --port {port} --model-path {model}"
        argv = ("/bin/sh", "-c", run if exec_ else f"{run}; true")  # `; true`: the shell waits, it does not exec
        return LaunchSpec(key="stub", model="stub", model_path=model, argv=argv, env={}, port=port, api_key="k")

    supervisor = Supervisor(LifeConfig(run_dir=tmp_path / "run", **FAST), [ProcessRecipe("stub", spec, ("c/0",))])
    await supervisor.start()
    try:
        process = supervisor.processes["stub"]
        await until(lambda: process.ready, 30, f"the stub to be ready ({process.reason})")
    finally:
        await supervisor.stop()
    said = [r.getMessage() for r in caplog.records if "runs llama-server as a child process" in r.getMessage()]
    assert len(said) == (0 if exec_ else 1), said
    assert exec_ or "end the script with `exec llama-server ...`" in said[0]
