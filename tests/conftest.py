from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from council.llama import LlamaServerInfo, find_llama_server
from tests.servers import RunningServer, launch, start_redis, wait_ready


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`pytest.mark.anyio`) run on asyncio, like the router."""
    return "asyncio"


@pytest.fixture(scope="session")
def llama_server_bin() -> LlamaServerInfo:
    info = find_llama_server()
    if info is None:
        pytest.fail("no llama-server with MTP support found: run `council setup` first")
    return info


@pytest.fixture
def start_server(llama_server_bin: LlamaServerInfo, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start a real llama-server on a model and wait until `/health` is 200; stopped at teardown."""
    started: list[RunningServer] = []

    def _start(model: Path, *extra: str, ctx: int = 512, wait: bool = True) -> RunningServer:
        server = launch(llama_server_bin.path, model, tmp_path, *extra, ctx=ctx)
        started.append(server)
        if wait:
            wait_ready(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own on a free port (not the machine's shared one)."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real `council` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "council", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, check=False)
