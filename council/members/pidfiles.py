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


def alive(pid: object, start: object) -> bool:
    """Whether `pid` is the process that started at `start` (`proc_start_time`), not a recycled PID."""
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
        """SIGKILL the process group of each recorded member whose owner router is gone: the member itself (same PID
        and start time), or what it started when it is gone itself (a wrapper script that ran llama-server without
        `exec`: its child outlives it in its group); forget records of members that are gone. Members of a live
        router are left alone. A record that cannot be read or forgotten (a stray folder, a read-only mount) is
        skipped, never a failed start."""
        killed = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                _forget(path)
                continue
            if alive(record.get("owner"), record.get("owner_start")):
                continue  # another live router's member: never ours to touch
            if alive(pid, record.get("start")) or (proc_start_time(pid) is None
                                                    and _group_outlived(pid, record.get("start"))):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
            _forget(path)
        return killed


def _forget(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _group_outlived(pgid: int, start: object) -> bool:
    """Whether process group `pgid`, whose leader (the recorded member, started at `start`) is gone, still holds
    what it started: a process of that group started within a minute after it. (No new process takes a PID that is
    a live group's id, and a group is named by its leader's PID.)"""
    if not isinstance(start, str) or not start.isdigit():
        return False
    window = 60 * os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and 0 <= int(fields[19]) - int(start) <= window:
            return True
    return False
