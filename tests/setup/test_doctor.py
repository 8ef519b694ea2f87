"""`council doctor --json` against the real installed cache, llama-server and a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

from council.setup.catalog import models_for
from tests.conftest import run_cli
from tests.servers import free_port


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
    assert isinstance(report["gpus"], list)  # empty without a GPU: a normal answer


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


def test_doctor_table_is_readable() -> None:
    result = run_cli("doctor")
    assert result.returncode == 0
    assert "healthy" in result.stdout
    assert "draft-mtp" in result.stdout
