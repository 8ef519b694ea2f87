"""The installed llama-server: where it is, which build, which speculative-decoding types it accepts."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from council.errors import CouncilError
from council.paths import bin_dir
from council.policy.schema import MTP_SPELLINGS


class LlamaServerError(CouncilError, RuntimeError):
    """The llama-server binary is missing or does not answer `--help` / `--version`."""


class LlamaServerVariableError(LlamaServerError):
    """`$LLAMA_SERVER` names no usable llama-server. Bad input, not a reason to look on: quietly taking the cached
    build instead ran another build than the one asked for (a typo, or a fork that moved)."""


@dataclass(frozen=True)
class LlamaServerInfo:
    path: Path
    build: int | None
    version: str
    spec_types: tuple[str, ...]

    @property
    def mtp_spelling(self) -> str | None:
        """The `--spec-type` value this build uses for MTP, or None if it has none."""
        return next((s for s in MTP_SPELLINGS if s in self.spec_types), None)


def cached_binary() -> Path:
    return bin_dir() / "llama-server"


def _run(path: Path, flag: str, timeout: float = 30) -> str:
    """`path flag`'s output. In a session of its own, killed whole past `timeout`: a wrapper script's child (a
    llama-server it runs without `exec`) would outlive the wrapper alone."""
    try:
        proc = subprocess.Popen([str(path), flag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise LlamaServerError(f"{path}: cannot run `{flag}`: {exc}") from exc
    try:
        out, errors = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise LlamaServerError(f"{path}: cannot run `{flag}`: {exc}") from exc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind once it answered
    return out + errors


def parse_spec_types(help_text: str) -> tuple[str, ...]:
    """The values listed for `--spec-type` in `llama-server --help`."""
    match = re.search(r"--spec-type\s+\[?([a-z0-9_,\-\s|]+?)\]?\s{2,}", help_text)
    if match is None:
        match = re.search(r"--spec-type\s+(\S+)", help_text)
        if match is None:
            return ()
    raw = match.group(1)
    return tuple(v for v in re.split(r"[,|\s]+", raw.strip("[]")) if v)


def parse_build(version_text: str) -> int | None:
    """Upstream prints `version: 0.6.0-dev (build 11434, ...)`; older builds `version: 11434 (abc123)`."""
    match = re.search(r"\bbuild (\d+)", version_text) or re.search(r"version:\s*(\d+)\s*\(", version_text)
    return int(match.group(1)) if match else None


@functools.cache
def inspect_binary(path: Path) -> LlamaServerInfo:
    """Ask a llama-server binary for its build and spec types (cached per path for this process)."""
    if not path.is_file() or not os.access(path, os.X_OK):
        raise LlamaServerError(f"{path}: not an executable file")
    help_text = _run(path, "--help")
    if "--spec-type" not in help_text and "--port" not in help_text:
        raise LlamaServerError(f"{path}: `--help` does not look like llama-server's")
    version_text = _run(path, "--version")
    first = next((ln for ln in version_text.splitlines() if ln.startswith("version:")), "").strip()
    return LlamaServerInfo(
        path=path, build=parse_build(version_text), version=first, spec_types=parse_spec_types(help_text)
    )


def candidate_binaries() -> list[tuple[str, Path]]:
    """Where to look, in order, with where each came from: `$LLAMA_SERVER`, council's cache, then `PATH`."""
    found: list[tuple[str, Path]] = []
    env = os.environ.get("LLAMA_SERVER")
    if env:
        found.append(("$LLAMA_SERVER", Path(env).expanduser()))
    found.append(("cache", cached_binary()))
    on_path = shutil.which("llama-server")
    if on_path:
        found.append(("PATH", Path(on_path)))
    return found


def find_llama_server(*, require_mtp: bool = True) -> LlamaServerInfo | None:
    """The first usable llama-server; with `require_mtp`, only one whose `--help` lists an MTP type. A set
    `$LLAMA_SERVER` is the only one looked at: LlamaServerVariableError when it is not usable."""
    for origin, path in candidate_binaries():
        resolved = path.resolve()
        try:
            info = inspect_binary(resolved)
        except LlamaServerError as exc:
            if origin == "$LLAMA_SERVER":
                raise LlamaServerVariableError(_named(str(exc).removeprefix(f"{resolved}: "))) from None
            continue
        if not require_mtp or info.mtp_spelling is not None:
            return info
        if origin == "$LLAMA_SERVER":
            raise LlamaServerVariableError(_named("its `--help` lists no MTP spec type (draft-mtp)"))
    return None


def _named(why: str) -> str:
    return f"LLAMA_SERVER={os.environ.get('LLAMA_SERVER', '')}: {why} (point it at a llama-server, or unset it)"
