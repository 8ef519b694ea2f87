"""One llama-server process and everything about it (after llama-swap's `Process`).

A `MemberProcess` owns its launch recipe, its state machine, the OS process, the task that runs its life,
its in-flight requests (and the outcomes their callers report), the semaphore of its `parallel` slots
and the HTTP session council calls use. Its life: spawn → /health 200 and our own /props → a real warm-up
completion → ready → watched (exit, health, failing or stuck requests) → backoff → spawn again, until it
fails too often in a row (then `failed`, with the telling line of its log) or it is stopped (drain, SIGTERM
to its process group, SIGKILL after a deadline). Members die with the router: each is started with a
parent-death signal, and pid files let the next run clean up after a router that was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import httpx

from council.errors import CouncilError
from council.members.launch import LaunchSpec
from council.members.logs import LineCutter, RotatingLog, exit_reason
from council.members.metrics import MemberStats, parse_member_metrics
from council.members.pidfiles import PidFiles
from council.members.states import State, StateChange, TransitionError, is_valid_transition

log = logging.getLogger("council.members.process")

PR_SET_PDEATHSIG = 1
# Seconds an idle connection to a member is kept: under llama-server's keep-alive (cpp-httplib: 5 s).
KEEP_ALIVE = 4.0
# The member's output is read in chunks of READ_CHUNK bytes; a line past LINE_LIMIT bytes is kept cut, with a
# marker, in the tail and for the listeners (the log file gets it whole).
READ_CHUNK = 64 << 10
LINE_LIMIT = 8 << 10
Listener = Callable[[StateChange], None]
LogListener = Callable[[str, str], None]  # (process name, log line)


# A request that got no byte from its member this long is stuck (`LifeConfig.stuck_after`); a router relaying to
# another host's member, which no local watchdog follows, gives up on it after as long.
STUCK_AFTER_S = 300.0


@dataclass(frozen=True)
class LifeConfig:
    """How members are started, watched and stopped (one value for all of a supervisor's members)."""

    run_dir: Path
    # Names this router's log folder, so two routers on one host never write the same member log.
    instance: str = ""
    load_timeout: float = 180.0
    warmup_timeout: float = 120.0
    poll_interval: float = 0.1  # while loading
    watch_interval: float = 1.0  # while ready
    metrics_interval: float = 5.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_failures: int = 4  # failed starts or crashes in a row before `failed`
    stable_after: float = 30.0  # ready this long: the failure streak is forgotten
    watchdog_failures: int = 3  # failed requests (or health probes) in a row while the process lives
    # A request that got no byte from the member this long (or as long as its caller gives it, if longer: a
    # council's timeout) means the member is stuck; a stream's every chunk counts.
    stuck_after: float = STUCK_AFTER_S
    drain_timeout: float = 30.0
    stop_timeout: float = 10.0  # SIGTERM, then SIGKILL
    log_bytes: int = 4 << 20  # per log file; one rotated copy is kept

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs" / self.instance if self.instance else self.run_dir / "logs"


@dataclass(frozen=True)
class ProcessRecipe:
    """What a plan asks for one process: its name, a launch spec per start (each start gets a fresh port and
    key), the council seats it serves and how many requests it takes at once (its `parallel` slots)."""

    name: str
    make_spec: Callable[[int], LaunchSpec]
    seats: tuple[str, ...]
    slots: int = 1
    # The draft length this recipe launches with (None: no draft or not tunable), and the recipe of the same
    # process at another draft length (a live retune, `draft: {n_max: auto}`).
    draft_n: int | None = None
    retune: Callable[[int], ProcessRecipe] | None = None


class Slots:
    """The process's `parallel` slots: at most `size` requests inside llama-server at once; `waiting` counts
    those held back by the router (more would only queue inside llama-server, out of a council's sight). A
    request with `n: K` (grouped samples) takes K slots at once, or waits until K are free.

    Waiters are served first come, first served, and a release wakes only those it lets in: under load (32
    clients on a 4-slot process) waking every waiter to re-check, as a condition's `notify_all` does, cost more
    than the request itself (bench/hotpath.py)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def hold(self, count: int = 1) -> _Held:
        """`count` slots for one call, taken on entry (waiting in turn while they are not free), freed on exit."""
        return _Held(self, min(count, self.size))  # a wider group than the process would wait forever

    def _release(self, count: int) -> None:
        self.free += count
        self._admit()

    def _admit(self) -> None:
        """Hand free slots to the waiters at the head of the queue, in order, while they fit."""
        while self._queue and self._queue[0][0] <= self.free:
            count, future = self._queue.popleft()
            if future.cancelled():
                continue
            self.free -= count
            future.set_result(None)


class _Held:
    """Slots held for one call (`Slots.hold`): a class, not a generator-based context manager, since every member
    call enters one (bench/hotpath.py --steps)."""

    __slots__ = ("_count", "_slots")

    def __init__(self, slots: Slots, count: int) -> None:
        self._slots, self._count = slots, count

    async def __aenter__(self) -> None:
        slots, count = self._slots, self._count
        if not slots._queue and slots.free >= count:
            slots.free -= count
            return
        entry = (count, asyncio.get_running_loop().create_future())
        slots._queue.append(entry)
        try:
            await entry[1]  # resolved once `_admit` has taken our slots for us
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                slots._release(count)  # handed over as we were cancelled: pass them on
            else:
                with contextlib.suppress(ValueError):  # `_admit` may have dropped it, cancelled
                    slots._queue.remove(entry)
                slots._admit()  # a wide request at the head may have held narrower ones back
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._slots._release(self._count)


class StartFailed(CouncilError, RuntimeError):
    """This start did not reach `ready`; the message says why (with the log's telling line)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when the router dies, even by SIGKILL (Linux prctl)."""

    def apply() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return apply


_WRAPPERS_SAID: set[str] = set()


def _say_if_wrapped(binary: str, pid: int | None) -> None:
    """Say once per binary when what was started holds llama-server as a child of its own (a `$LLAMA_SERVER` script
    that runs it without `exec`): the parent-death signal reaches only the process council started, so a router
    killed by SIGKILL leaves that child serving (the next council start on this cache kills it)."""
    if pid is None or binary in _WRAPPERS_SAID:
        return
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return  # not Linux, or gone: nothing to say
    if children:
        _WRAPPERS_SAID.add(binary)
        log.warning("%s runs llama-server as a child process (pid %s) rather than becoming it: if this router is "
                    "killed by SIGKILL, that child keeps serving until the next council start on this cache; end the "
                    "script with `exec llama-server ...`", binary, children[0])


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its kind and message (a state's reason is one line)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:299] + "…"


def _model_path(props: httpx.Response) -> str | None:
    """`/props`' `model_path`, or None when the body is not llama-server's (another program on the port)."""
    try:
        doc = props.json()
    except ValueError:
        return None
    path = doc.get("model_path") if isinstance(doc, dict) else None
    return path if isinstance(path, str) else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the whole process group: llama-server and anything it started


@dataclass
class _Running:
    """The OS process of the current start, with what the watchdog counts about it."""

    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None]
    log: RotatingLog
    requests: dict[int, RequestOutcome] = field(default_factory=dict)  # in flight, by id
    request_failures: int = 0
    last_failure: str = ""


class RequestOutcome:
    """What one request's caller reports about the member's part in it, for the watchdog: `succeeded()` (a
    readable answer: the failure streak ends), `failed(reason)` (a 5xx, an unreadable body, a broken stream)
    or nothing (a 4xx is the caller's fault; a request the router cancels says nothing about the member:
    neither counts nor resets the streak). An exception leaving the block unreported is a failure.

    `progressed()`, each time bytes of the answer arrive, tells the watchdog the member is not stuck: a request
    is stuck once it has had no byte for `patience` seconds, however long it has run. `held()`: the caller holds
    what arrived (a relay writing it to a client that reads slowly, or not at all) and asks the member for no more
    until its next `progressed()`: that time is the client's, not the member's silence."""

    __slots__ = ("last", "ok", "patience", "reason")

    def __init__(self, patience: float) -> None:
        self.ok: bool | None = None
        self.reason = ""
        self.patience = patience
        self.last = time.monotonic()

    def progressed(self) -> None:
        self.last = time.monotonic()  # per chunk: one timestamp (~0.1 us), no lock, no other state

    def held(self) -> None:
        self.last = math.inf  # never stuck while held

    def succeeded(self) -> None:
        self.ok, self.reason = True, ""

    def failed(self, reason: str) -> None:
        self.ok, self.reason = False, reason


class _Accounted:
    """One request's accounting on its process (`MemberProcess.request`): a class, not a generator-based context
    manager, since every member call enters one (bench/hotpath.py --steps)."""

    __slots__ = ("_outcome", "_patience", "_process", "_rid", "_running")

    def __init__(self, process: MemberProcess, patience: float | None) -> None:
        self._process = process
        self._patience = max(process.config.stuck_after, patience or 0.0)

    async def __aenter__(self) -> RequestOutcome:
        process = self._process
        self._running = running = process._running
        process._request_ids += 1
        self._rid = process._request_ids
        process.in_flight += 1
        self._outcome = outcome = RequestOutcome(self._patience)
        if running is not None:
            running.requests[self._rid] = outcome
        return outcome

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        outcome, running = self._outcome, self._running
        if isinstance(exc, Exception) and outcome.ok is None:
            outcome.failed(f"{type(exc).__name__}: {exc}"[:200])
        self._process.in_flight -= 1
        if running is not None:
            running.requests.pop(self._rid, None)
            if outcome.ok:
                running.request_failures = 0
            elif outcome.ok is not None:
                running.request_failures += 1
                running.last_failure = outcome.reason


class MemberProcess:
    """One member process. The supervisor starts, stops, adds and removes these; callers read `state` and
    ask `endpoint()` where to send a request."""

    def __init__(self, recipe: ProcessRecipe, config: LifeConfig, *, pids: PidFiles, control: httpx.AsyncClient,
                 listeners: list[Listener] | None = None, log_listeners: list[LogListener] | None = None) -> None:
        self.name = recipe.name
        self.recipe = recipe
        self.config = config
        self.spec: LaunchSpec = recipe.make_spec(0)
        self.seats = recipe.seats
        self.state = State.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.failures_in_row = 0
        self.reason = ""
        self.history: deque[StateChange] = deque(maxlen=64)
        self.log_tail: deque[str] = deque(maxlen=40)
        self.stats = MemberStats()
        self.tuning: dict[str, Any] = {}  # live draft tuning's view of this process (`n_max: auto`)
        self.in_flight = 0
        self.listeners: list[Listener] = list(listeners or [])
        # Called with each line of the process's output; the supervisor's list, so later additions reach it.
        self.log_listeners: list[LogListener] = log_listeners if log_listeners is not None else []
        self._failed_log_listeners: list[LogListener] = []  # noted in the tail once each
        # The process's `parallel` slots, shared by every caller (council seats and passthrough): more requests
        # would only queue inside llama-server, where a council's timeout could not see them.
        self.slots = Slots(recipe.slots)
        self._http: aiohttp.ClientSession | None = None
        self._pids = pids
        self._control = control
        self._running: _Running | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._planned: str | None = None  # a drained restart asked for (a new draft length), with its reason
        self._request_ids = 0

    # ---- state ----------------------------------------------------------------------------------------

    def swap(self, expected: State | tuple[State, ...], new: State, reason: str = "") -> StateChange:
        """Move to `new` if the state is (one of) `expected` and the edge is valid; else TransitionError."""
        # No lock: every caller runs on the event loop, and nothing here awaits.
        allowed = expected if isinstance(expected, tuple) else (expected,)
        old = self.state
        if old not in allowed or not is_valid_transition(old, new):
            raise TransitionError(self.name, allowed[0], old, new)
        self.state = new
        self.reason = reason
        change = StateChange(self.name, old, new, reason, time.time())
        self.history.append(change)
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                # A listener's fault (a console that went away, a hook's bug) is its own: raised here, it reached
                # whoever moved the state (start, the watchdog, stop) after the state had already moved.
                log.exception("member %s: a state listener failed on %s -> %s", self.name, old.value, new.value)
        return change

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def request_failures(self) -> int:
        """Requests that failed in a row on the current process (the watchdog restarts it at a threshold)."""
        return self._running.request_failures if self._running is not None else 0

    @property
    def log_path(self) -> Path:
        return self.config.log_dir / f"{self.name.replace('/', '_')}.log"

    def snapshot(self) -> dict[str, object]:
        """The process as `/admin/members` and `council up` show it; `members` (the API's key, kept) lists the
        seats it serves."""
        return {
            "name": self.name, "members": list(self.seats), "model": self.spec.model, "state": str(self.state),
            "reason": self.reason, "port": self.spec.port, "pid": self.pid, "restarts": self.restarts,
            "in_flight": self.in_flight, "waiting": self.slots.waiting, "slots": self.slots.size,
            "tokens_per_second": self.stats.tokens_per_second, "draft_acceptance": self.stats.draft_acceptance,
            "draft_n": self.recipe.draft_n, "draft_tuning": self.tuning or None,
            "since": self.history[-1].at if self.history else None,
            "history": [c.to_json() for c in list(self.history)[-8:]], "log": str(self.log_path),
        }

    # ---- the data plane --------------------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        """One small aiohttp pool per process for council and passthrough calls: aiohttp costs ~0.2 ms of CPU
        per call where httpx costs ~1.1 ms (measured against an instant upstream on this machine)."""
        if self._http is None or self._http.closed:
            size = 2 * self.recipe.slots + 2
            self._http = aiohttp.ClientSession(
                # Idle connections are let go before llama-server's keep-alive (5 s, cpp-httplib's) closes them, so
                # a call rarely meets one the member closed (`client._post` sends such a call once more).
                connector=aiohttp.TCPConnector(limit=size, limit_per_host=size, keepalive_timeout=KEEP_ALIVE),
                # No total timeout: the council's own deadline cancels calls; connecting must be quick.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    def request(self, patience: float | None = None) -> _Accounted:
        """Count a request in flight; the outcome its caller reports feeds the watchdog (failures in a row), and
        the progress it reports the stuck-request check: stuck after `stuck_after` seconds with no byte from the
        member, or `patience`, when longer (a council's call: the council's deadline cancels it anyway, and a
        member may read a long prompt for minutes before its first byte). The caller judges the answer
        (`RequestOutcome`): a 5xx returns normally, yet is the member's failure.

        A request the router cancels (an early stop, a council deadline, a client that went away) is neither a
        success nor a failure: the member did nothing wrong, and three early stops in a row must not restart
        a healthy member. Cancellation (and a closed generator) is a BaseException, not an Exception."""
        return _Accounted(self, patience)

    # ---- life -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._life(), name=f"member:{self.name}")

    def replace_recipe(self, recipe: ProcessRecipe) -> None:
        """The launch inputs for the next start (a reload that left this process running)."""
        self.recipe = recipe

    async def restart_planned(self, recipe: ProcessRecipe, reason: str) -> bool:
        """A restart on purpose with another recipe: ready → draining (no new requests), in-flight requests
        finish (up to the drain deadline), then stopping → stopped → starting with `recipe`. Not a failure:
        no backoff, and the failure streak is not counted up (it is forgotten, as after any restart, once the
        process was ready for `stable_after`). False (nothing done) unless the process is ready, or when it
        crashed while draining and failed."""
        running = self._running
        try:
            self.swap(State.READY, State.DRAINING, reason)
        except TransitionError:
            return False
        self.recipe = recipe
        deadline = time.monotonic() + self.config.drain_timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.state is not State.DRAINING or self._running is not running:
            # It crashed while draining: its restart already takes `recipe`; a planned one now would stop that
            # fresh process again for nothing.
            return self.state is not State.FAILED
        self._planned = reason
        return True

    def begin_drain(self, reason: str) -> None:
        self._stopping = True
        with contextlib.suppress(TransitionError):
            self.swap(State.READY, State.DRAINING, reason)

    async def stop(self, reason: str, drain: bool = True) -> None:
        """Drain in-flight requests (up to the deadline), then stop the process; nothing is left running."""
        self.begin_drain(reason)
        if drain:
            deadline = time.monotonic() + self.config.drain_timeout
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._terminate(reason)
        if self._http is not None:
            await self._http.close()

    async def _life(self) -> None:
        """The member's life until it is stopped or gives up. A fault no step expects (a bug of ours) must not end
        it silently, leaving the member `ready` or `starting` for good and never restarted: it stops the process
        and makes the member `failed`, the fault as the reason (its traceback in the router's log)."""
        try:
            await self._live()
        except Exception as exc:
            log.exception("member %s: its life ended on an unexpected fault", self.name)
            with contextlib.suppress(Exception):
                await self._terminate("unexpected fault", final=False)
            if self._stopping:
                return  # stop() is under way and takes it to `stopped`
            reason = f"council fault: {one_line(exc)}"
            if is_valid_transition(self.state, State.FAILED):
                self.swap(self.state, State.FAILED, reason)
            else:  # stopped, stopping or failed: no step that can raise leaves it there, but say so if one does
                log.error("member %s: left %s after the fault: %s", self.name, self.state.value, reason)

    async def _live(self) -> None:
        cfg = self.config
        while not self._stopping:
            attempt = f"attempt {self.failures_in_row + 1}"
            self.swap((State.STOPPED, State.BACKOFF, State.FAILED), State.STARTING, attempt)
            try:
                await self._start_once()
            except StartFailed as exc:
                if await self._after_failure(str(exc)):
                    return
                continue
            ready_at = time.monotonic()
            verdict = await self._watch()
            if self._stopping:
                return
            # Before the planned branch: a process that served for hours must not carry its boot streak into
            # a draft-length restart, where one failed start would then make it `failed` for good.
            if time.monotonic() - ready_at >= cfg.stable_after:
                self.failures_in_row = 0
            if self._planned is not None:  # drained on purpose: stop and start again at once
                self._planned = None
                await self._terminate(verdict, final=True)
                self.restarts += 1
                self.stats = MemberStats()
                continue
            await self._terminate(verdict, final=False)
            self.restarts += 1
            if await self._after_failure(verdict):
                return

    async def _after_failure(self, reason: str) -> bool:
        """Count the failure; go `failed` (True) past the cap, else wait out the backoff (False)."""
        self.failures_in_row += 1
        if self._stopping:
            return True
        if self.failures_in_row >= self.config.max_failures:
            self.swap(self.state, State.FAILED, f"gave up after {self.failures_in_row} failures in a row: {reason}")
            return True
        delay = min(self.config.backoff_cap, self.config.backoff_base * 2 ** (self.failures_in_row - 1))
        self.swap(self.state, State.BACKOFF, f"{reason}; restarting in {delay:.1f}s")
        await asyncio.sleep(delay)
        return False

    async def _start_once(self) -> None:
        """One start: spawn, healthy and ours, warm-up. Whatever goes wrong, the member's fault or one on our side
        (a binary gone, a full disk, a port answering something else), stops what was spawned and is this start's
        failure: escaping as anything else, it ended the life task and left the member `starting` for good."""
        try:
            spec = self.recipe.make_spec(free_port())
            self.spec = spec
            running = await self._spawn(spec)
            await self._wait_healthy(spec, running)
            self.swap(State.STARTING, State.WARMING, "health ok, model verified")
            await self._warm_up(spec, running)
        except Exception as exc:
            await self._terminate("start failed", final=False)
            raise StartFailed(str(exc) if isinstance(exc, StartFailed) else one_line(exc)) from None
        _say_if_wrapped(spec.argv[0], self.pid)
        self.swap(State.WARMING, State.READY, "warm-up completion succeeded")

    async def _spawn(self, spec: LaunchSpec) -> _Running:
        log = RotatingLog(self.log_path, self.config.log_bytes)
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=spec.environ(os.environ), start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except BaseException:
            log.close()
            raise
        self.pid = proc.pid
        reader = asyncio.create_task(self._read_log(proc, log))
        # Ours to stop from here on: the pid file comes after, so a failure to write it still finds the process.
        self._running = running = _Running(proc=proc, reader=reader, log=log)
        self._pids.add(proc.pid, self.name)
        return running

    async def _read_log(self, proc: asyncio.subprocess.Process, log: RotatingLog) -> None:
        """Copy the output to the log file (every byte) and each line, cut at LINE_LIMIT, to the tail and the
        listeners. Chunks, not `async for line`: a line over StreamReader's 64 KiB limit raised there, and the
        dead reader left the pipe undrained and the log silent. Nothing escapes: on a fault the pipe is still
        drained, or the member would block writing to it."""
        stdout = proc.stdout
        assert stdout is not None
        lines = LineCutter(LINE_LIMIT)
        writing = True  # to the log file; the tail and the listeners get every line whatever the file does
        try:
            while chunk := await stdout.read(READ_CHUNK):
                if writing:
                    try:
                        log.write(chunk)
                    except (OSError, ValueError) as exc:  # a full disk, its folder gone; ValueError: file closed
                        writing = False
                        self.log_tail.append(f"council: writing this log failed ({type(exc).__name__}: {exc}); "
                                             "later lines are kept in memory only")
                for text in lines.feed(chunk):
                    self._log_line(text)
            for text in lines.close():
                self._log_line(text)
        except Exception as exc:  # the router's own fault (a listener's stays in `_log_line`)
            self.log_tail.append(f"council: reading this log failed ({type(exc).__name__}: {exc})")
            with contextlib.suppress(Exception):  # drained, or the member blocks writing to the pipe
                while await stdout.read(READ_CHUNK):
                    pass

    def _log_line(self, text: str) -> None:
        if text:
            self.log_tail.append(text)
            for listener in list(self.log_listeners):
                try:
                    listener(self.name, text)
                except Exception as exc:
                    # One listener's fault is its own: raised into the reader it stopped the tail and every other
                    # listener (the dashboard's log) for the rest of the process's life. It keeps getting lines,
                    # since a fault may pass (it is the shared list of every process, not this one's to edit);
                    # noted once, not once per line.
                    if not any(failed is listener for failed in self._failed_log_listeners):
                        self._failed_log_listeners.append(listener)
                        self.log_tail.append(f"council: a log listener failed ({type(exc).__name__}: {exc}); "
                                             "the others still get every line")

    async def _reap_reader(self, running: _Running) -> None:
        """Let the log reader reach the end of the output (up to 5 s, then cancel it). Never raises but our own
        cancellation: from `_exited` it would end the watchdog loop, from `_terminate` a stop."""
        reader = running.reader
        if not reader.done():
            await asyncio.wait([reader], timeout=5)  # unlike wait_for, does not raise what the task raised
        if not reader.done():
            reader.cancel()  # a grandchild still holds the pipe open: the group is SIGKILLed by `_terminate`
        elif not reader.cancelled() and reader.exception() is not None:
            self.log_tail.append(f"council: the log reader failed: {reader.exception()!r}")

    async def _exited(self, running: _Running) -> str:
        await self._reap_reader(running)
        return exit_reason(self.log_tail, running.proc.returncode)

    async def _wait_healthy(self, spec: LaunchSpec, running: _Running) -> None:
        """/health 200 from *our* process: PID alive and /props naming our model file."""
        deadline = time.monotonic() + self.config.load_timeout
        headers = {"Authorization": f"Bearer {spec.api_key}"}
        proc = running.proc
        while True:
            if proc.returncode is not None:
                raise StartFailed(await self._exited(running))
            with contextlib.suppress(httpx.TransportError):
                health = await self._control.get(f"{spec.url}/health", timeout=2.0)
                if health.status_code == 200:
                    props = await self._control.get(f"{spec.url}/props", headers=headers, timeout=5.0)
                    path = _model_path(props) if props.status_code == 200 else None
                    if proc.returncode is None and path and Path(path).resolve() == spec.model_path.resolve():
                        return
                    raise StartFailed(f"port {spec.port} answers, but not as our member "
                                      f"(props status {props.status_code}, model_path {path!r})")
            if time.monotonic() > deadline:
                raise StartFailed(f"not healthy after {self.config.load_timeout:.0f}s")
            await asyncio.sleep(self.config.poll_interval)

    async def _warm_up(self, spec: LaunchSpec, running: _Running) -> None:
        """A real completion: some builds allocate MTP buffers on the first request and crash there.

        A raw two-token prompt through `/completion` exercises prompt processing and decoding (with the
        draft path) at the least cost; a chat template's system prompt would add hundreds of ms on a CPU.
        """
        headers = {"Authorization": f"Bearer {spec.api_key}"}
        url, body = f"{spec.url}/completion", {"prompt": "Hello", "n_predict": 4, "temperature": 0}
        try:
            reply = await self._control.post(url, json=body, headers=headers, timeout=self.config.warmup_timeout)
        except httpx.HTTPError as exc:
            if running.proc.returncode is not None:
                raise StartFailed(await self._exited(running)) from None
            raise StartFailed(f"warm-up completion failed: {type(exc).__name__}") from None
        if reply.status_code != 200:
            raise StartFailed(f"warm-up completion answered {reply.status_code}: {reply.text[:200]}")

    async def _watch(self) -> str:
        """While ready: return the reason the member must restart (exit, failing health, stuck requests)."""
        running = self._running
        assert running is not None
        # One wait for the exit, looked at every tick: a shielded wait per tick left its inner task behind at each
        # timeout, one more pending task every second per process for as long as it ran.
        exited = asyncio.ensure_future(running.proc.wait())
        try:
            return await self._watching(running, exited)
        finally:
            exited.cancel()

    async def _watching(self, running: _Running, exited: asyncio.Future[int]) -> str:
        """`_watch`'s loop, `exited` its one wait for the process's exit."""
        spec = self.spec
        health_failures = 0
        next_metrics = 0.0
        while not self._stopping:
            if self._planned is not None:
                return self._planned
            await asyncio.wait((exited,), timeout=self.config.watch_interval)
            if self._planned is not None:
                return self._planned
            if running.proc.returncode is not None:
                return await self._exited(running)
            if running.request_failures >= self.config.watchdog_failures:
                return f"watchdog: {running.request_failures} requests failed in a row (last: {running.last_failure})"
            now = time.monotonic()
            stuck = next((r for r in running.requests.values() if now - r.last > r.patience), None)
            if stuck is not None:
                return f"watchdog: a request has had no byte from the member for over {stuck.patience:g}s"
            try:
                ok = (await self._control.get(f"{spec.url}/health", timeout=2.0)).status_code == 200
            except httpx.HTTPError:
                ok = False
            health_failures = 0 if ok else health_failures + 1
            if health_failures >= self.config.watchdog_failures:
                return f"watchdog: /health failed {health_failures} times in a row"
            if now >= next_metrics:
                next_metrics = now + self.config.metrics_interval
                await self.scrape()
        return "router stopping"

    async def scrape(self) -> None:
        """Read the member's /metrics into `stats` (tok/s, draft acceptance)."""
        spec = self.spec
        with contextlib.suppress(httpx.HTTPError, ValueError, ArithmeticError):  # whatever it says, never the life
            reply = await self._control.get(f"{spec.url}/metrics", timeout=2.0,
                                            headers={"Authorization": f"Bearer {spec.api_key}"})
            if reply.status_code == 200:
                parse_member_metrics(reply.text, self.stats)

    async def _terminate(self, reason: str, final: bool = True) -> None:
        """SIGTERM the process group, SIGKILL after the deadline; reap it and its log reader."""
        # Cleared only once dead: a stop that cancels us halfway still finds the process to kill.
        running = self._running
        if final:
            with contextlib.suppress(TransitionError):
                self.swap(tuple(State), State.STOPPING, reason)
        if running is not None:
            proc = running.proc
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
                except TimeoutError:
                    _signal_group(proc.pid, signal.SIGKILL)
                    await proc.wait()
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers left in its group
            await self._reap_reader(running)
            self._running = None
            # Dead and reaped: a log or pid file that cannot be closed or removed (a full or read-only disk) must
            # not make the stop, or the failed start that called it, fail in turn.
            with contextlib.suppress(OSError):
                running.log.close()
            with contextlib.suppress(OSError):
                self._pids.remove(proc.pid)
        if final:
            with contextlib.suppress(TransitionError):
                self.swap(State.STOPPING, State.STOPPED, reason)
