"""Fetch packages from the package index with pip (its config, mirrors and HTTP cache apply)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from council.setup.install.children import owned
from council.setup.install.errors import SetupError


def _normalise(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "_", name).lower(), version


def downloaded_file(requirement: str, dest: Path) -> Path | None:
    """The wheel or sdist of `name==version` already in `dest`, if any."""
    name, version = _normalise(requirement)
    if not dest.is_dir():
        return None
    for path in dest.iterdir():
        stem = path.name.lower()
        if stem.startswith(f"{name}-{version}") and stem.endswith((".whl", ".tar.gz", ".zip")):
            return path
    return None


def pip_download(
    requirements: list[str],
    dest: Path,
    *,
    binary: bool = True,
    on_file: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Download `name==version` requirements (no dependencies) into `dest`; skip those already there."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if downloaded_file(r, dest) is None]
    if missing:
        # An sdist: only that package from source; its build requirements still come as wheels (with
        # `--no-binary=:all:` pip would compile CMake itself).
        names = ",".join(r.partition("==")[0] for r in missing)
        fmt = ["--only-binary=:all:"] if binary else [f"--no-binary={names}"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
               "--disable-pip-version-check", *fmt, "--dest", str(dest), *missing]
        # pip has no machine-readable progress: watch the folder fill to drive ours.
        with tempfile.TemporaryFile() as log, owned(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL) as proc:
            while proc.poll() is None:
                if on_file is not None:
                    on_file(sum(downloaded_file(r, dest) is not None for r in requirements))
                time.sleep(0.25)
            log.seek(0)
            output = log.read().decode(errors="replace")
        if proc.returncode != 0:
            raise SetupError(f"cannot download {', '.join(missing)} from the package index: {_pip_reason(output)}")
    found = {r: downloaded_file(r, dest) for r in requirements}
    lost = [r for r, p in found.items() if p is None]
    if lost:
        raise SetupError(f"pip reported success but {', '.join(lost)} is not in {dest}")
    if on_file is not None:
        on_file(len(requirements))
    return {r: p for r, p in found.items() if p is not None}


def _pip_reason(output: str) -> str:
    """The most telling line of pip's output, for a one-line error."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for marker in ("ERROR:", "error:"):
        errs = [ln for ln in lines if ln.startswith(marker)]
        if errs:
            return errs[0].removeprefix(marker).strip()
    return lines[-1] if lines else "pip failed without output"
