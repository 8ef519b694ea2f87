"""requirements.lock: what `./dev` installs, so a fresh machine gets the versions the tests passed with
(README: "Two commands"); requirements-runtime.lock: the same pins without the test tools, what the image installs
(deploy/docker/Dockerfile)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FULL, RUNTIME = "requirements.lock", "requirements-runtime.lock"


def _pins(lock: str = FULL) -> dict[str, tuple[Version, list[str]]]:
    """Each locked package: its version and its hashes."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    text = (ROOT / lock).read_text()
    for block in re.split(r"\n(?=\S)", text):
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", block):
            pins[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def _lock_markers(lock: str = FULL) -> dict[str, Marker]:
    """The environment marker of each locked package that only some Pythons install."""
    text = (ROOT / lock).read_text()
    return {canonicalize_name(m[1]): Marker(m[2])
            for m in re.finditer(r"^([A-Za-z0-9._-]+)==\S+ ; ([^\\\n]+?)\s*\\?$", text, re.M)}


def _declared(*, runtime: bool = False) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in (*project["dependencies"], *(() if runtime else (*extras["test"],
                                                                                      *extras["remote"])))]


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


# Every Python `requires-python = ">=3.11"` lets in that a marker can tell apart: Debian 12's 3.11.2 is below
# redis's `python_full_version < "3.11.3"`, and pip-compile only sees the interpreter it runs on.
SUPPORTED_PYTHONS = ("3.11.0", "3.11.2", "3.11.3", "3.11.4", "3.11.9", "3.12.0", "3.13.0", "3.14.0")


def _environments(extras: frozenset[str]) -> Iterator[dict[str, str]]:
    """Marker environments of the machines README names (Linux, CPython) on each supported Python."""
    for version in SUPPORTED_PYTHONS:
        for machine in ("x86_64", "aarch64"):
            for extra in extras or {""}:
                yield {**default_environment(), "python_full_version": version,
                       "python_version": ".".join(version.split(".")[:2]), "sys_platform": "linux",
                       "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
                       "platform_python_implementation": "CPython", "platform_machine": machine, "extra": extra}


@pytest.mark.parametrize("lock", [FULL, RUNTIME])
def test_every_dependency_of_a_locked_package_is_locked_for_every_supported_python(lock: str) -> None:
    """`pip install --require-hashes` refuses a dependency the lock does not pin: walk what the locked packages
    declare (their installed metadata, in the venv ./dev made from the lock) on every supported Python."""
    pins, markers = _pins(lock), _lock_markers(lock)
    todo = [(r, frozenset[str]()) for r in _declared(runtime=lock == RUNTIME)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, wanted_by = todo.pop()
        name = canonicalize_name(requirement.name)
        envs = [e for e in _environments(wanted_by)
                if requirement.marker is None or requirement.marker.evaluate(e)]
        if not envs:
            continue
        assert name in pins, f"{requirement} is not in requirements.lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (str(requirement), str(version))
        if name in markers:  # pip must install it wherever it is needed
            missed = sorted({e["python_full_version"] for e in envs if not markers[name].evaluate(e)})
            assert not missed, f"{name}'s marker in requirements.lock leaves it out on Python {missed}"
        extras = frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            # Locked for other Pythons only (pip skipped it here): nothing to read its dependencies from.
            assert name in markers, f"{name} is locked but not installed: run ./dev"
            continue
        assert Version(dist.version) == version, f"{name} {dist.version} is installed, the lock has {version}: ./dev"
        todo += [(Requirement(r), extras) for r in dist.requires or []]


def test_the_runtime_lock_is_the_full_locks_pins_without_the_test_tools() -> None:
    full, runtime = _pins(FULL), _pins(RUNTIME)
    assert {name: full.get(name) for name in runtime} == runtime  # same versions, same hashes
    assert _lock_markers(RUNTIME) == {name: m for name, m in _lock_markers(FULL).items() if name in runtime}
    assert {"pytest", "selenium", "litellm", "schemathesis"} & set(runtime) == set()  # not in the image
