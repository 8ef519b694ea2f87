"""The supervisor: starts, stops, adds and removes member processes; each `MemberProcess` runs its own life."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import httpx

from council.errors import CouncilError
from council.members.pidfiles import PidFiles
from council.members.process import LifeConfig, Listener, LogListener, MemberProcess, ProcessRecipe
from council.members.states import State


class DuplicateProcess(CouncilError, ValueError):
    """A recipe for a process name the supervisor already holds: taking it would drop the process there was."""


class Supervisor:
    """Runs a set of member processes; `processes` (by name) is the live view the API and the councils read."""

    def __init__(self, config: LifeConfig, recipes: Iterable[ProcessRecipe] = (),
                 listeners: list[Listener] | None = None) -> None:
        self.config = config
        self.listeners = listeners if listeners is not None else []  # given to every process, also later ones
        self.log_listeners: list[LogListener] = []  # shared with every process: each line of member output
        self.pids = PidFiles(config.run_dir / "pids")
        # Health probes, /props, warm-ups and scrapes; the hot path has each process's own aiohttp session.
        self._control = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0))
        self.processes: dict[str, MemberProcess] = {}
        for recipe in recipes:
            self._make(recipe)
        self._started = False

    def _make(self, recipe: ProcessRecipe) -> MemberProcess:
        if recipe.name in self.processes:  # overwritten, the old process would never start, or run unsupervised
            raise DuplicateProcess(f"process {recipe.name!r} is already supervised (serving seats "
                                   f"{', '.join(self.processes[recipe.name].seats)}); it cannot also serve "
                                   f"{', '.join(recipe.seats)}")
        process = MemberProcess(recipe, self.config, pids=self.pids, control=self._control, listeners=self.listeners,
                                log_listeners=self.log_listeners)
        self.processes[recipe.name] = process
        return process

    async def start(self) -> None:
        """Start every process concurrently; one that fails to load does not hold up the others. Processes a
        SIGKILLed router of this host left behind are killed first (those of live routers never are)."""
        self.pids.kill_stale()
        self._started = True
        for process in self.processes.values():
            process.start()

    async def wait_settled(self, timeout: float) -> bool:
        """Until every process is ready or failed (True), or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.state in (State.READY, State.FAILED) for m in self.processes.values()):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Drain every process at once (in-flight requests finish, up to the deadline), then stop them all."""
        for process in self.processes.values():
            process.begin_drain("router stopping")
        await asyncio.gather(*(p.stop("router stopping") for p in self.processes.values()))
        await self._control.aclose()

    def add(self, recipe: ProcessRecipe) -> MemberProcess:
        """One more process (a reload that added or changed it), started at once if the supervisor runs."""
        process = self._make(recipe)
        if self._started:
            process.start()
        return process

    def replace_recipe(self, recipe: ProcessRecipe) -> None:
        self.processes[recipe.name].replace_recipe(recipe)

    async def remove(self, name: str, reason: str) -> None:
        """Drain one process, stop it and forget it."""
        await self.processes[name].stop(reason)
        del self.processes[name]
