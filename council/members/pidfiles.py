"""Pid files: one small record per live member process, so a later run can kill what a SIGKILLed router left.

A record names the member's PID and start time and its owner router's PID and start time. A member is
stale only when its owner is gone: another router on the same host (same `COUNCIL_HOME`) keeps its members.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path


def proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a recycled PID from the process we started."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: object, start: object) -> bool:
    return isinstance(pid, int) and bool(start) and proc_start_time(pid) == start


class PidFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.owner = os.getpid()
        self.owner_start = proc_start_time(self.owner)

    def add(self, pid: int, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": pid, "start": proc_start_time(pid), "name": name,
                  "owner": self.owner, "owner_start": self.owner_start}
        (self.folder / f"{pid}.json").write_text(json.dumps(record))

    def remove(self, pid: int) -> None:
        (self.folder / f"{pid}.json").unlink(missing_ok=True)

    def kill_stale(self) -> list[int]:
        """SIGKILL recorded processes that still run (same PID and start time) and whose owner router is gone;
        forget records of processes that are gone. Members of a live router are left alone."""
        killed = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if not _alive(pid, record.get("start")):
                path.unlink(missing_ok=True)
                continue
            if _alive(record.get("owner"), record.get("owner_start")):
                continue  # another live router's member: never ours to touch
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            path.unlink(missing_ok=True)
        return killed
