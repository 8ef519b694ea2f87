from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo, find_llama_server
from council.setup.synthetic import write_qwen35
from tests.servers import CouncilServer, RunningServer, launch, start_council_serve, start_redis, wait_ready


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
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic qwen35 model with an MTP head (a few MB): it answers `abcdef...` with known acceptance."""
    return write_qwen35(tmp_path_factory.mktemp("syn") / "syn.gguf")


@pytest.fixture
def serve(tmp_path: Path, llama_server_bin: LlamaServerInfo) -> Iterator[Callable[..., CouncilServer]]:
    """Start real `council serve` processes: `serve(policy_text)`. Each gets its own folder (and, unless `home`
    names a shared one, its own COUNCIL_HOME); all must stop with exit 0 and leave no member behind."""
    started: list[CouncilServer] = []

    def _serve(text: str, *, home: Path | None = None, env: dict[str, str] | None = None,
               ready_path: str = "/readyz", headers: dict[str, str] | None = None) -> CouncilServer:
        workdir = tmp_path / f"router{len(started)}"
        workdir.mkdir()
        full_env = {"COUNCIL_HOME": str(home or workdir), "LLAMA_SERVER": str(llama_server_bin.path), **(env or {})}
        server = start_council_serve(text, workdir, full_env, ready_path=ready_path, ready_headers=headers)
        started.append(server)
        return server

    yield _serve
    for server in started:
        assert server.stop() == 0, server.log()[-2000:]
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "members outlived `council serve`"


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
