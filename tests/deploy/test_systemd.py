"""deploy/systemd: `systemd-analyze verify` accepts the unit without a warning, and its hardening scores OK."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is missing (./dev test installs the systemd package)")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An offline root holding the unit, the executables it names, and the system's own units (the unit is
    checked against the targets it pulls in; the council venv need not be installed on this machine)."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(DEPLOY / "council.service", tmp_path / "etc/systemd/system/council.service")
    for exe in ("opt/council/bin/council", "opt/council/bin/python"):
        path = tmp_path / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "bin").mkdir()
    shutil.copy("/bin/sh", tmp_path / "bin/sh")
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    return tmp_path


def test_systemd_analyze_verify_passes_without_warnings(root: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "council.service"],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys or unparsable values: every line it prints is a problem.
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stderr + proc.stdout


def test_a_bad_directive_is_caught(root: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    unit = root / "etc/systemd/system/council.service"
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixed\nRestart=sometimes"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "council.service"],
                          capture_output=True, text=True, timeout=60)
    assert "restart specifier" in proc.stderr


def test_hardening_exposure_is_ok(root: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", "--threshold=30",
                           "council.service"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_the_unit_has_what_the_issue_asks_for() -> None:
    unit = (DEPLOY / "council.service").read_text()
    lines = {ln.strip() for ln in unit.splitlines()}
    for want in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=", "DevicePolicy=closed", "DeviceAllow=char-nvidia-frontend rw",
                 "DeviceAllow=char-nvidia-uvm rw", "KillMode=mixed", "Restart=on-failure", "DynamicUser=yes",
                 "StateDirectory=council", "TimeoutStartSec=15min"):
        assert want in lines, want
    assert any(ln.startswith("SystemCallFilter=@system-service") for ln in lines)
    assert "council serve /etc/council/policy.yaml" in unit
    env = (DEPLOY / "council.env.example").read_text()
    assert "COUNCIL_CLUSTER_KEY=" in env
