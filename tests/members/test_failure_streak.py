"""The failure streak against a stub llama-server (started as a member through the supervisor): starts that fail
are a process that exits at once with an error, which a real llama-server cannot be made to do on cue."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from council.members.launch import LaunchSpec
from council.members.process import LifeConfig, ProcessRecipe
from council.members.states import State
from council.members.supervisor import Supervisor
from tests.servers import until

pytestmark = pytest.mark.anyio
STUB = Path(__file__).with_name("stub_llama_server.py")


def recipe(model: Path, failing: set[int], starts: list[int]) -> ProcessRecipe:
    """The stub, except that the starts numbered in `failing` (1 is the first) exit with an error at once."""

    def spec(port: int) -> LaunchSpec:
        if port:  # port 0 is the spec the process is built with, no start
            starts.append(port)
        if len(starts) in failing:
            argv: tuple[str, ...] = (sys.executable, "-c", "import sys; print('fails on purpose'); sys.exit(1)")
        else:
            argv = (sys.executable, str(STUB), "--port", str(port), "--model-path", str(model))
        return LaunchSpec(key="stub", model="stub", model_path=model, argv=argv, env={}, port=port, api_key="k")

    return ProcessRecipe("stub", spec, ("c/0",))


async def test_a_planned_restart_after_a_stable_run_forgets_the_boot_streak(tmp_path: Path) -> None:
    """Before, the planned branch skipped the `stable_after` reset: 3 failed starts at boot, hours of serving, then
    one failed start after a draft-length restart made the process `failed` at once, never to start again."""
    model = tmp_path / "stub.gguf"
    model.write_bytes(b"GGUF")
    starts: list[int] = []
    life = LifeConfig(run_dir=tmp_path / "run", backoff_base=0.05, backoff_cap=0.1, stable_after=0.3,
                      poll_interval=0.05, watch_interval=0.05)
    supervisor = Supervisor(life, [recipe(model, {1, 2, 3, 5}, starts)])
    process = supervisor.processes["stub"]
    await supervisor.start()
    try:
        await until(lambda: process.ready, 30, f"the stub to be ready ({process.reason})")
        assert process.failures_in_row == 3 and len(starts) == 4
        await asyncio.sleep(0.6)  # ready twice `stable_after`
        assert await process.restart_planned(recipe(model, {1, 2, 3, 5}, starts), "draft length 2 -> 3")
        await until(lambda: process.state is State.FAILED or (len(starts) >= 6 and process.ready), 30,
                    "the start after the planned restart's failed one")
        assert process.state is State.READY, process.reason
        assert len(starts) == 6
        assert process.failures_in_row == 1  # start 5's failure, a streak of its own
    finally:
        await supervisor.stop()
