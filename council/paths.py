"""Where council keeps what it installs: one cache folder, `~/.cache/council` or `$COUNCIL_HOME`."""

from __future__ import annotations

import os
from pathlib import Path


def council_home() -> Path:
    """The cache root; `COUNCIL_HOME` overrides the default so tests and CI can point elsewhere."""
    raw = os.environ.get("COUNCIL_HOME") or "~/.cache/council"
    return Path(os.path.expandvars(raw)).expanduser()


def models_dir() -> Path:
    return council_home() / "models"


def bin_dir() -> Path:
    return council_home() / "bin"


def downloads_dir() -> Path:
    return council_home() / "downloads"


def build_dir() -> Path:
    return council_home() / "build"
