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
