"""requirements.lock: what `./dev` installs, so a fresh machine gets the versions the tests passed with
(README: "Two commands")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, tuple[Version, list[str]]]:
    """Each locked package: its version and its hashes."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=\S)", text):
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", block):
            pins[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in (*project["dependencies"], *extras["test"], *extras["remote"])]


def test_every_dependency_is_locked_within_its_range_with_hashes() -> None:
    pins = _pins()
    assert len(pins) > 50
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: refresh it (README: Two commands)"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (name, str(version))
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []


def test_litellm_excludes_the_compromised_release() -> None:
    for requirement in _declared():
        if canonicalize_name(requirement.name) == "litellm":
            assert not requirement.specifier.contains("1.107.0")
    assert _pins()["litellm"][0] != Version("1.107.0")


def test_dev_installs_from_the_lock_and_reinstalls_when_it_changes() -> None:
    dev = (ROOT / "dev").read_text()
    assert "--require-hashes -r requirements.lock" in dev
    assert "requirements.lock -nt .venv/.installed" in dev and "pyproject.toml -nt .venv/.installed" in dev
