"""Launch, warm up, watch, restart and stop member processes.

One asyncio task per member runs its life: spawn → /health 200 and our own /props → a real warm-up
completion → ready → watched (exit, health, failing or stuck requests) → backoff → spawn again, until it
fails too often in a row (then `failed`, with the tail of its log) or the supervisor stops it (drain,
SIGTERM to its process group, SIGKILL after a deadline). Members die with the router: each is started
with a parent-death signal, and pid files let the next run clean up after a router that was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from council.launch import LaunchSpec
from council.member import Member, State, StateChange, TransitionError
from council.metrics_text import parse_member_metrics

PR_SET_PDEATHSIG = 1
_LOG_PREFIX = re.compile(r"^[\d.]+ [A-Z] ")  # llama.cpp's `0.00.041.745 E ` timestamp and level


@dataclass(frozen=True)
class SupervisorConfig:
    run_dir: Path
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
    stuck_after: float = 300.0  # a request in flight this long means the member is stuck
    drain_timeout: float = 30.0
    stop_timeout: float = 10.0  # SIGTERM, then SIGKILL
    log_bytes: int = 4 << 20  # per log file; one rotated copy is kept


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


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a recycled PID from the process we started."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class PidFiles:
    """One small file per live member process, so a later run can kill what a SIGKILLed router left."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, pid: int, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": pid, "start": _proc_start_time(pid), "name": name}
        (self.folder / f"{pid}.json").write_text(json.dumps(record))

    def remove(self, pid: int) -> None:
        (self.folder / f"{pid}.json").unlink(missing_ok=True)

    def kill_stale(self) -> list[int]:
        """SIGKILL recorded processes that still run (same PID and start time); forget the records."""
        killed = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)
                continue
            if record.get("start") and _proc_start_time(pid) == record["start"]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
            path.unlink(missing_ok=True)
        return killed


class RotatingLog:
    """Bounded log file: past `limit` bytes it becomes `NAME.1` (replacing the older one)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        if self.file.tell() > self.limit:
            self.file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = self.path.open("ab")

    def close(self) -> None:
        self.file.close()


class StartFailed(RuntimeError):
    """This start did not reach `ready`; the message says why (with the log's last line)."""


@dataclass
class _Running:
    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None]
    log: RotatingLog
    request_starts: dict[int, float] = field(default_factory=dict)
    request_failures: int = 0


class Supervisor:
    """Runs a set of members; `members` is the live view the API and the fan-out read."""

    def __init__(self, specs: dict[str, Callable[[int], LaunchSpec]], config: SupervisorConfig,
                 served: dict[str, tuple[str, ...]] | None = None,
                 listeners: list[Callable[[StateChange], None]] | None = None) -> None:
        self.config = config
        self._factories = specs
        self.listeners = listeners or []  # given to every member, also those a reload adds
        self.members: dict[str, Member] = {
            name: Member(name=name, spec=make(0), members=(served or {}).get(name, (name,)),
                         listeners=list(self.listeners))
            for name, make in specs.items()
        }
        self._running: dict[str, _Running] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._restart_reason: dict[str, str] = {}
        self.pids = PidFiles(config.run_dir / "pids")
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))
        self._request_ids = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every member concurrently; one that fails to load does not hold up the others."""
        self.pids.kill_stale()
        for name in self.members:
            self._tasks[name] = asyncio.create_task(self._life(name), name=f"member:{name}")

    async def wait_settled(self, timeout: float) -> bool:
        """Until every member is ready or failed (True), or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.state in (State.READY, State.FAILED) for m in self.members.values()):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Drain in-flight requests (up to a deadline), then stop every process; no orphan is left."""
        self._stopping = True
        for member in self.members.values():
            with contextlib.suppress(TransitionError):
                member.swap(State.READY, State.DRAINING, "router stopping")
        deadline = time.monotonic() + self.config.drain_timeout
        while any(m.in_flight for m in self.members.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await asyncio.gather(*(self._terminate(name, "router stopping") for name in list(self.members)))
        await self._client.aclose()

    def add(self, name: str, factory: Callable[[int], LaunchSpec], served: tuple[str, ...]) -> None:
        """Start one more member (a reload that added or changed it)."""
        self._factories[name] = factory
        self.members[name] = Member(name=name, spec=factory(0), members=served, listeners=list(self.listeners))
        self._tasks[name] = asyncio.create_task(self._life(name), name=f"member:{name}")

    def replace_factory(self, name: str, factory: Callable[[int], LaunchSpec]) -> None:
        """The launch inputs for this member's next start (a reload that left it running)."""
        self._factories[name] = factory

    async def remove(self, name: str, reason: str) -> None:
        """Drain one member (in-flight requests finish, up to the deadline), stop it and forget it."""
        member = self.members[name]
        with contextlib.suppress(TransitionError):
            member.swap(State.READY, State.DRAINING, reason)
        deadline = time.monotonic() + self.config.drain_timeout
        while member.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._terminate(name, reason)
        del self.members[name]
        del self._factories[name]

    async def restart(self, name: str, reason: str) -> None:
        """Kill a live member now; its life task restarts it after the usual backoff."""
        running = self._running.get(name)
        if running is not None and running.proc.returncode is None:
            self._restart_reason[name] = reason
            self._signal(running.proc.pid, signal.SIGKILL)

    # ---- request accounting (used by the fan-out) ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def request(self, name: str) -> AsyncIterator[Member]:
        """Count a request in flight; its outcome feeds the watchdog (failures in a row, stuck requests)."""
        member = self.members[name]
        running = self._running.get(name)
        self._request_ids += 1
        rid = self._request_ids
        member.in_flight += 1
        if running is not None:
            running.request_starts[rid] = time.monotonic()
        ok = False
        try:
            yield member
            ok = True
        finally:
            member.in_flight -= 1
            if running is not None:
                running.request_starts.pop(rid, None)
                running.request_failures = 0 if ok else running.request_failures + 1

    # ---- one member's life ---------------------------------------------------------------------------

    async def _life(self, name: str) -> None:
        member = self.members[name]
        cfg = self.config
        while not self._stopping:
            member.swap((State.STOPPED, State.BACKOFF, State.FAILED), State.STARTING,
                        f"attempt {member.failures_in_row + 1}")
            try:
                await self._start_once(name)
            except StartFailed as exc:
                if await self._after_failure(name, str(exc)):
                    return
                continue
            ready_at = time.monotonic()
            verdict = await self._watch(name)
            if self._stopping:
                return
            if time.monotonic() - ready_at >= cfg.stable_after:
                member.failures_in_row = 0
            await self._terminate(name, verdict, final=False)
            member.restarts += 1
            if await self._after_failure(name, verdict, was_ready=True):
                return

    async def _after_failure(self, name: str, reason: str, was_ready: bool = False) -> bool:
        """Count the failure; go `failed` (True) past the cap, else wait out the backoff (False)."""
        member = self.members[name]
        member.failures_in_row += 1
        if self._stopping:
            return True
        if member.failures_in_row >= self.config.max_failures:
            member.swap(member.state, State.FAILED, f"gave up after {member.failures_in_row} failures in a row: "
                                                    f"{reason}")
            return True
        delay = min(self.config.backoff_cap, self.config.backoff_base * 2 ** (member.failures_in_row - 1))
        member.swap(member.state, State.BACKOFF, f"{reason}; restarting in {delay:.1f}s")
        await asyncio.sleep(delay)
        return False

    async def _start_once(self, name: str) -> None:
        member = self.members[name]
        spec = self._factories[name](free_port())
        member.spec = spec
        await self._spawn(name, spec)
        running = self._running[name]
        try:
            await self._wait_healthy(name, spec, running.proc)
            member.swap(State.STARTING, State.WARMING, "health ok, model verified")
            await self._warm_up(name, spec, running.proc)
        except (StartFailed, httpx.HTTPError) as exc:
            await self._terminate(name, "start failed", final=False)
            raise StartFailed(str(exc) if isinstance(exc, StartFailed) else f"{type(exc).__name__}: {exc}") from None
        member.swap(State.WARMING, State.READY, "warm-up completion succeeded")

    async def _spawn(self, name: str, spec: LaunchSpec) -> None:
        member = self.members[name]
        log = RotatingLog(self.config.run_dir / "logs" / f"{name.replace('/', '_')}.log", self.config.log_bytes)
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **spec.env}, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        member.pid = proc.pid
        self.pids.add(proc.pid, name)
        reader = asyncio.create_task(self._read_log(member, proc, log))
        self._running[name] = _Running(proc=proc, reader=reader, log=log)

    @staticmethod
    async def _read_log(member: Member, proc: asyncio.subprocess.Process, log: RotatingLog) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            log.write(line)
            text = line.decode(errors="replace").rstrip()
            if text:
                member.log_tail.append(text)

    def _exit_reason(self, name: str, code: int | None) -> str:
        """How the process ended, with the log line that says why (an error line, else the last one)."""
        tail = [_LOG_PREFIX.sub("", ln).strip() for ln in self.members[name].log_tail]
        telling = [ln for ln in tail if any(w in ln.lower() for w in ("error", "failed", "abort", "exception"))]
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        if telling:
            # The last few error lines go from specific to generic ("exiting due to ..."): the longest says most.
            return f"{how}: {max(telling[-6:], key=len)}"
        return f"{how}: {tail[-1]}" if tail and code is not None and code > 0 else how

    async def _wait_healthy(self, name: str, spec: LaunchSpec, proc: asyncio.subprocess.Process) -> None:
        """/health 200 from *our* process: PID alive and /props naming our model file."""
        deadline = time.monotonic() + self.config.load_timeout
        headers = {"Authorization": f"Bearer {spec.api_key}"}
        while True:
            if proc.returncode is not None:
                await asyncio.wait_for(self._running[name].reader, 5)
                raise StartFailed(self._exit_reason(name, proc.returncode))
            with contextlib.suppress(httpx.TransportError):
                health = await self._client.get(f"{spec.url}/health", timeout=2.0)
                if health.status_code == 200:
                    props = await self._client.get(f"{spec.url}/props", headers=headers, timeout=5.0)
                    path = props.json().get("model_path") if props.status_code == 200 else None
                    if proc.returncode is None and path and Path(path).resolve() == spec.model_path.resolve():
                        return
                    raise StartFailed(f"port {spec.port} answers, but not as our member "
                                      f"(props status {props.status_code}, model_path {path!r})")
            if time.monotonic() > deadline:
                raise StartFailed(f"not healthy after {self.config.load_timeout:.0f}s")
            await asyncio.sleep(self.config.poll_interval)

    async def _warm_up(self, name: str, spec: LaunchSpec, proc: asyncio.subprocess.Process) -> None:
        """A real completion: some builds allocate MTP buffers on the first request and crash there.

        A raw two-token prompt through `/completion` exercises prompt processing and decoding (with the
        draft path) at the least cost; a chat template's system prompt would add hundreds of ms on a CPU.
        """
        headers = {"Authorization": f"Bearer {spec.api_key}"}
        url, body = f"{spec.url}/completion", {"prompt": "Hello", "n_predict": 4, "temperature": 0}
        try:
            reply = await self._client.post(url, json=body, headers=headers, timeout=self.config.warmup_timeout)
        except httpx.HTTPError as exc:
            if proc.returncode is not None:
                await asyncio.wait_for(self._running[name].reader, 5)
                raise StartFailed(self._exit_reason(name, proc.returncode)) from None
            raise StartFailed(f"warm-up completion failed: {type(exc).__name__}") from None
        if reply.status_code != 200:
            raise StartFailed(f"warm-up completion answered {reply.status_code}: {reply.text[:200]}")

    async def _watch(self, name: str) -> str:
        """While ready: return the reason the member must restart (exit, failing health, stuck requests)."""
        member = self.members[name]
        running = self._running[name]
        spec = member.spec
        health_failures = 0
        next_metrics = 0.0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.proc.wait()), self.config.watch_interval)
            if running.proc.returncode is not None:
                await asyncio.wait_for(running.reader, 5)
                return self._restart_reason.pop(name, None) or self._exit_reason(name, running.proc.returncode)
            if running.request_failures >= self.config.watchdog_failures:
                return f"watchdog: {running.request_failures} requests failed in a row"
            now = time.monotonic()
            if any(now - t > self.config.stuck_after for t in running.request_starts.values()):
                return f"watchdog: a request has been in flight over {self.config.stuck_after:.0f}s"
            try:
                ok = (await self._client.get(f"{spec.url}/health", timeout=2.0)).status_code == 200
            except httpx.HTTPError:
                ok = False
            health_failures = 0 if ok else health_failures + 1
            if health_failures >= self.config.watchdog_failures:
                return f"watchdog: /health failed {health_failures} times in a row"
            if now >= next_metrics:
                next_metrics = now + self.config.metrics_interval
                await self._scrape(member)
        return "router stopping"

    async def _scrape(self, member: Member) -> None:
        spec = member.spec
        with contextlib.suppress(httpx.HTTPError, ValueError):
            reply = await self._client.get(f"{spec.url}/metrics", timeout=2.0,
                                           headers={"Authorization": f"Bearer {spec.api_key}"})
            if reply.status_code == 200:
                parse_member_metrics(reply.text, member.stats)

    async def scrape_now(self, name: str) -> None:
        await self._scrape(self.members[name])

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the whole process group: llama-server and anything it started

    async def _terminate(self, name: str, reason: str, final: bool = True) -> None:
        """SIGTERM the process group, SIGKILL after the deadline; reap it and its log reader."""
        member = self.members[name]
        # Popped only once dead: a stop that cancels us halfway still finds the process to kill.
        running = self._running.get(name)
        if final:
            with contextlib.suppress(TransitionError):
                member.swap(tuple(State), State.STOPPING, reason)
        if running is not None:
            proc = running.proc
            if proc.returncode is None:
                self._signal(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
                except TimeoutError:
                    self._signal(proc.pid, signal.SIGKILL)
                    await proc.wait()
            self._signal(proc.pid, signal.SIGKILL)  # stragglers left in its group
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(running.reader, 5)
            running.log.close()
            self.pids.remove(proc.pid)
            self._running.pop(name, None)
        if final:
            with contextlib.suppress(TransitionError):
                member.swap(State.STOPPING, State.STOPPED, reason)
