"""Where council keeps what it installs: one cache folder, `~/.cache/council` or `$COUNCIL_HOME`; and how a
command writes a file of its own (whole or not at all)."""

from __future__ import annotations

import os
import tempfile
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


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: into a file beside it, then moved over it, so that a failure
    half way (a full disk) leaves what was there. The file gets the mode a plain write gives it (the old file's,
    else 0666 less the umask: mkstemp's 0600 would hide a report from its readers)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(name, mode)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (spelled alike once resolved, or one file through a link)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:  # a name too long, a folder that cannot be searched: none the other can be either
        return False


def unwritable(target: Path) -> str | None:
    """Why no file can be written at `target` (checked before a long run that ends by writing it), or None."""
    try:
        if target.is_dir():
            return "is a folder"
        folder = target.resolve().parent
        if not folder.is_dir():
            return f"no such folder {target.parent}"
        if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
            return "not writable"
    except OSError as exc:  # a name too long, a folder that cannot be searched: `Path.exists` raises on those
        return str(exc.strerror or exc)
    return None
