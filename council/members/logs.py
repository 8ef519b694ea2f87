"""Member logs: a bounded file per member, and the line of it that says why a process ended."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterable
from pathlib import Path

from council.members.pidfiles import alive, proc_start_time

_LOG_PREFIX = re.compile(r"^[\d.]+ [A-Z] ")  # llama.cpp's `0.00.041.745 E ` timestamp and level
_ERROR_LEVEL = re.compile(r"^[\d.]+ E ")  # an error line, whatever its words ("invalid magic characters")


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
            # Moved away already (logrotate, a cleanup): the next file starts at the path all the same.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self.file = self.path.open("ab")

    def close(self) -> None:
        self.file.close()


class LineCutter:
    """Splits a byte stream into text lines, each cut to `limit` bytes with a marker saying how much was cut.

    Memory stays bounded whatever the process writes: llama-server `--verbose` logs whole request bodies on one
    line, and a line-reading StreamReader raises past its 64 KiB limit instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = bytearray()  # the current line up to `limit` bytes
        self._cut = 0  # bytes of the current line past `limit`, dropped

    def feed(self, data: bytes) -> list[str]:
        """The lines `data` completes."""
        done: list[str] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            room = max(0, self.limit - len(self._head))
            self._head += piece[:room]
            self._cut += max(0, len(piece) - room)
            if end < 0:
                return done
            done.append(self._finish())
            start = end + 1

    def close(self) -> list[str]:
        """The last line, if the stream ended without a newline."""
        return [self._finish()] if self._head or self._cut else []

    def _finish(self) -> str:
        text = self._head.decode(errors="replace").rstrip()
        if self._cut:
            text += f" ... [{self._cut} more bytes cut]"
        self._head.clear()
        self._cut = 0
        return text


def signal_name(number: int) -> str:
    """`SIGKILL`, or `signal 40` for one Python has no name for (a real-time signal: `Signals(40)` raises)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# llama-server's generic lines after the one that says why: they name the model (a long path), not the cause.
_ECHO = re.compile(r"failed to (load|create) (model|context)|exiting due to|trying to fit params", re.I)


def exit_reason(log_tail: Iterable[str], code: int | None) -> str:
    """How the process ended, with the log line that says why (an error line, else the last one)."""
    lines = list(log_tail)
    tail = [_LOG_PREFIX.sub("", ln).strip() for ln in lines]
    telling = [ln for raw, ln in zip(lines, tail, strict=True) if _ERROR_LEVEL.match(raw)
               or any(w in ln.lower() for w in ("error", "failed", "abort", "exception"))]
    how = f"killed by {signal_name(-code)}" if code is not None and code < 0 else f"exited with code {code}"
    if telling:
        # The last few error lines go from the cause to generic echoes of it ("failed to load model '<path>'",
        # "exiting due to ..."): the first that is not an echo names the cause, else the longest says most.
        last = telling[-6:]
        causes = [ln for ln in last if not _ECHO.search(ln)]
        return f"{how}: {causes[0] if causes else max(last, key=len)}"
    return f"{how}: {tail[-1]}" if tail and code is not None and code > 0 else how


UP_LOGS_KEPT = 8  # `council up` runs whose log folders are kept once their router has ended
UP_MARKER = ".council-up"  # in an `up` run's log folder: its PID and start time (`mark_up_logs`)


def prune_up_logs(logs: Path, keep: int = UP_LOGS_KEPT) -> list[Path]:
    """Remove the log folders of ended `council up` runs (those `mark_up_logs` marked, whose process is gone) but
    the `keep` newest: each run made one, and none was ever removed (the cache grew with every start). `serve`'s
    folders are named by port, so reused, and unmarked (`scale-up-8080` looks like an `up` run's by its name).
    Folders of runs still going, and anything that cannot be read or removed, are left."""
    import shutil

    ended: list[tuple[float, Path]] = []
    with contextlib.suppress(OSError):
        for folder in logs.iterdir():
            try:
                pid, _, started = (folder / UP_MARKER).read_text().strip().partition(" ")
                if not alive(int(pid), started):  # (its start time too: a recycled PID is not the run)
                    ended.append((folder.stat().st_mtime, folder))
            except (OSError, ValueError):
                continue  # no marker: not an `up` run's folder
    ended.sort(reverse=True)
    removed = [folder for _, folder in ended[keep:]]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def mark_up_logs(folder: Path) -> None:
    """Mark `folder` as this `up` run's log folder (`prune_up_logs` removes only such folders); best effort."""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / UP_MARKER).write_text(f"{os.getpid()} {proc_start_time(os.getpid())}\n")
