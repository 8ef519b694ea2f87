"""One `council setup` at a time per cache: several (parallel CI jobs, worktrees, a user's second terminal) would
otherwise build llama-server in the same folder at once, each at full speed, and race on its files."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from council.setup.install.errors import SetupError


@contextmanager
def setup_lock(home: Path, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the cache's setup lock (`home/setup.lock`, an advisory `flock` the OS drops with the process, so a
    killed setup never leaves it held); `waiting` is called once if another setup holds it."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(home / "setup.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # COUNCIL_HOME a file, or on a read-only or foreign file system: say so in one line
        reason = "it is not a folder" if home.exists() and not home.is_dir() else exc.strerror or str(exc)
        raise SetupError(f"cannot use {home} as council's cache (COUNCIL_HOME): {reason}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
