"""A reload keeps the keys as `serve` demands them at start (README, "Auth"): a policy whose key variable is not
set, or one with no keys at all on a router bound beyond loopback, is refused and the old keys keep serving.
Before, the first dropped that key without a word and the second opened every route, admin included, to the
network. In-process: the refusal comes before any process is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from council.policy.loading import load_policy
from council.server.router import ReloadError
from tests.server.test_app import KEY, _router

pytestmark = pytest.mark.anyio


def _rewrite(router_path: Path, **server: object) -> None:
    doc = yaml.safe_load(router_path.read_text())
    doc["server"] = server
    router_path.write_text(yaml.safe_dump(doc))


async def test_a_reload_may_not_leave_a_public_router_without_keys(tmp_path: Path) -> None:
    router = _router(tmp_path)
    router.public = True
    _rewrite(router.policy_path)  # no api_keys
    with pytest.raises(ReloadError, match="bound beyond loopback"):
        await router.reload()
    assert router.keys.enabled and router.keys.principal(f"Bearer {KEY}", "chat").name == "app"


async def test_a_reload_whose_key_variable_is_unset_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COUNCIL_TEST_UNSET_KEY", raising=False)
    router = _router(tmp_path)
    _rewrite(router.policy_path, api_keys=[{"name": "ops", "env": "COUNCIL_TEST_UNSET_KEY"}])
    with pytest.raises(ReloadError, match="COUNCIL_TEST_UNSET_KEY is not set"):
        await router.reload()
    assert router.keys.principal(f"Bearer {KEY}", "chat").name == "app"


async def test_a_reload_may_not_give_a_public_router_a_placeholder_key(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, `COUNCIL_KEY_AGENTS=change-me` on 0.0.0.0 served, and a reload took such a key too."""
    monkeypatch.setenv("COUNCIL_TEST_WEAK_KEY", "change-me")
    router = _router(tmp_path)
    router.public = True
    _rewrite(router.policy_path, api_keys=[{"name": "ops", "env": "COUNCIL_TEST_WEAK_KEY"}])
    with pytest.raises(ReloadError, match=r"\$COUNCIL_TEST_WEAK_KEY \(API key ops\) is a placeholder, too weak"):
        await router.reload()
    assert router.keys.principal(f"Bearer {KEY}", "chat").name == "app"
    router.public = False  # on loopback the same policy is fine
    assert router._key_problems(load_policy(router.policy_path)) == []


async def test_a_key_the_reload_removes_is_refused_while_the_old_processes_drain(tmp_path: Path) -> None:
    """The keys were swapped only after the processes: a reload that restarted a busy member waited for it to
    drain (up to `drain_timeout`, then its stop), and the key it removed was honoured all that while (11 s in a
    review's run). The swap stands still here where a real one waits for a drain; a refused swap puts the keys
    back."""
    import asyncio
    import hashlib

    from council.server.auth import MissingKey

    other = "another-key-0123456789abcdef"
    router = _router(tmp_path)
    _rewrite(router.policy_path, api_keys=[{"name": "ops", "sha256": hashlib.sha256(other.encode()).hexdigest()}])
    draining, release = asyncio.Event(), asyncio.Event()
    swap = router.role.swap

    async def draining_swap(*args: object) -> object:
        draining.set()
        await release.wait()
        return await swap(*args)  # type: ignore[arg-type]

    router.role.swap = draining_swap  # type: ignore[method-assign]
    reload = asyncio.create_task(router.reload())
    await asyncio.wait_for(draining.wait(), 10)
    with pytest.raises(MissingKey, match="invalid API key"):
        router.keys.principal(f"Bearer {KEY}", "chat")
    assert router.keys.principal(f"Bearer {other}", "chat").name == "ops"
    release.set()
    await asyncio.wait_for(reload, 10)

    async def refused_swap(*args: object) -> object:
        raise ReloadError(["council c does not fit"])

    router.role.swap = refused_swap  # type: ignore[method-assign]
    _rewrite(router.policy_path, api_keys=[{"name": "app", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}])
    with pytest.raises(ReloadError):
        await router.reload()
    assert router.keys.principal(f"Bearer {other}", "chat").name == "ops"  # the refused reload changed nothing
    with pytest.raises(MissingKey):
        router.keys.principal(f"Bearer {KEY}", "chat")


async def test_a_reload_to_a_model_file_that_is_not_there_is_refused_though_memory_plans_it(tmp_path: Path) -> None:
    """`memory:` lets `check` plan a file that is not there (a policy written for another machine); a reload took
    it too, stopped the council's working processes, and started ones that could never load (503 from then on).
    The files this host runs must be there; the old processes keep serving."""
    router = _router(tmp_path)
    (tmp_path / "m.gguf").unlink()
    # A reload that leaves the process as it is (a key rotated, say) goes through: the running process has it.
    assert (await router.reload())["unchanged"] == ["c/0", "c/1"]
    doc = yaml.safe_load(router.policy_path.read_text())
    doc["models"]["m"]["ctx_size"] = 1024  # the processes would restart from the file
    router.policy_path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ReloadError) as refused:
        await router.reload()
    assert any(f"{tmp_path / 'm.gguf'} does not exist: a process of this host runs it" in line
               for line in refused.value.problems), refused.value.problems
