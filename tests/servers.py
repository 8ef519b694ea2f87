"""Start real llama-server processes for tests, and stop them without leaks."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def poll_ready(check: Callable[[], bool], proc: subprocess.Popen[bytes], deadline_s: float,
               exited: Callable[[int, float], Exception], timed_out: Callable[[], Exception]) -> None:
    """Poll `check` (transport errors count as not yet) until it holds; raise if `proc` dies or time runs out."""
    start = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            raise exited(code, time.monotonic() - start)
        try:
            if check():
                return
        except (httpx.TransportError, OSError):
            pass
        if time.monotonic() - start > deadline_s:
            raise timed_out()
        time.sleep(0.05)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `check` until it holds, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_for` for async tests: poll `predicate` without blocking the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """An aiohttp application (`aiohttp.web.Application`) served on a free local port: its base URL. For
    stand-ins of a member that show a fault a real llama-server cannot."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (an orphan's parent here, init in a container, may never reap
    it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    url: str
    api_key: str
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class ServerExited(RuntimeError):
    def __init__(self, code: int, log: str, seconds: float) -> None:
        super().__init__(f"llama-server exited with {code} after {seconds:.1f}s:\n{log[-3000:]}")
        self.code = code
        self.log = log
        self.seconds = seconds


def launch(binary: Path, model: Path, log_dir: Path, *extra: str, ctx: int = 512) -> RunningServer:
    """Spawn llama-server on a free loopback port with a random API key, in its environment as members get theirs
    (no waiting)."""
    port = free_port()
    key = secrets.token_hex(16)
    args = [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-c", str(ctx), "-t", "1", "-np", "1", "--metrics", *extra,
    ]
    log_path = log_dir / f"llama-server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "LLAMA_API_KEY": key})
    return RunningServer(proc=proc, url=f"http://127.0.0.1:{port}", api_key=key, log_path=log_path, args=args)


def wait_ready(server: RunningServer, deadline_s: float = 120.0) -> None:
    """Poll `/health` until 200; raise ServerExited if the process dies first."""
    with httpx.Client(timeout=2.0) as client:
        def timed_out() -> Exception:
            server.stop()
            return TimeoutError(f"llama-server not ready after {deadline_s}s:\n{server.log()[-3000:]}")

        poll_ready(lambda: client.get(f"{server.url}/health").status_code == 200, server.proc, deadline_s,
                   lambda code, secs: ServerExited(code, server.log(), secs), timed_out)


def start_redis(workdir: Path, deadline_s: float = 20.0,
                password: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a throwaway redis-server on a free port and wait until it answers PING; with `password`, it
    requires it (the URL returned carries it)."""
    import redis

    port = free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), *auth],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"

    def timed_out() -> Exception:
        proc.kill()
        return TimeoutError("redis-server did not answer PING")

    def pong() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    poll_ready(pong, proc, deadline_s, lambda code, _: RuntimeError(f"redis-server exited with {code}"), timed_out)
    return proc, url


@dataclass
class CouncilServer:
    """A real `council serve` process (uvicorn) on a free port."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    policy_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_council_serve(policy_text: str, workdir: Path, env: dict[str, str], deadline_s: float = 120.0,
                        ready_headers: dict[str, str] | None = None, ready_path: str = "/readyz",
                        args: tuple[str, ...] = ()) -> CouncilServer:
    """Write the policy, start `council serve` on a free port (with `args`, e.g. `("--role", "host")`) and poll
    `ready_path` (/readyz) until 200."""
    import sys

    port = free_port()
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text)
    log_path = workdir / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "council", "serve", str(policy), "--port", str(port), *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env}, preexec_fn=hup_as_from_a_terminal)
    server = CouncilServer(proc=proc, url=f"http://127.0.0.1:{port}", log_path=log_path, policy_path=policy)
    with httpx.Client(timeout=2.0) as client:
        def timed_out() -> Exception:
            server.stop()
            return TimeoutError(f"council serve not ready:\n{server.log()[-3000:]}")

        def exited(code: int, _: float) -> Exception:
            return RuntimeError(f"council serve exited with {code}:\n{server.log()[-3000:]}")

        poll_ready(lambda: client.get(f"{server.url}{ready_path}", headers=ready_headers).status_code == 200, proc,
                   deadline_s, exited, timed_out)
    return server


def hup_as_from_a_terminal() -> None:
    """preexec_fn: SIGHUP at its default in the child, as a command started from a terminal has it. The suite
    itself may run under `nohup` (SIGHUP ignored, inherited), and `council` keeps an ignored SIGHUP ignored."""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_DFL)
