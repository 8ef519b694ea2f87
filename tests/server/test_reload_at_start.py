"""A reload of a policy that changes a setting the router reads only when it starts (README: "`council serve`",
`POST /admin/reload`): refused with a 400 naming each such field, and the old policy keeps running. Before, the
reload answered `reloaded: true` and the router went on with the old store, registry, address and heartbeat, with
nothing telling the operator. `server.ballots` is taken live instead."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import yaml

from council.policy.schema import ApiKey
from council.server.app import create_app
from council.server.router import Router
from tests.server.test_app import _router

pytestmark = pytest.mark.anyio
OPS = "ops-key-0123456789abcdef"


def _admin(router: Router) -> httpx.AsyncClient:
    router.keys.update([*router.policy.server.api_keys, ApiKey(
        name="ops", sha256=hashlib.sha256(OPS.encode()).hexdigest(), scopes=["chat", "admin"])])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(router)), base_url="http://council",
                             headers={"Authorization": f"Bearer {OPS}"})


def _edit(path: Path, state: str | None = None, **server: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["server"] = {**doc.get("server", {}), **server}
    if state is not None:
        doc["state"] = state
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


async def test_a_reload_that_changes_what_is_read_at_start_is_refused_field_by_field(tmp_path: Path) -> None:
    router = _router(tmp_path)
    before = router.loaded
    _edit(router.policy_path, state="redis://127.0.0.1:6379/15", heartbeat="5s", cluster_key_env="OTHER_KEY",
          advertise_url="http://gpu-a:8080", host="10.0.0.1", port=9000, max_queue=3)
    async with _admin(router) as http:
        refused = await http.post("/admin/reload")
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"]["code"] == "invalid_policy"
    assert body["error"]["message"] == "the new policy is refused; the old one keeps running"
    named = [problem.split(": ")[1] for problem in body["problems"]]
    assert named == ["state", "server.host", "server.port", "server.advertise_url", "server.cluster_key_env",
                     "server.heartbeat"], body["problems"]
    assert all(p.startswith(f"{router.policy_path}:") and p.endswith("read only when the router starts: restart it "
                                                                     "to change this") for p in body["problems"])
    assert "6379" not in refused.text  # a state URL may hold a password: not repeated
    assert router.loaded is before and router.limits.max_queue == 32  # nothing of the new policy was taken


async def test_a_reload_that_changes_only_live_settings_goes_through(tmp_path: Path) -> None:
    router = _router(tmp_path)
    _edit(router.policy_path, max_queue=3, ballots=2, history="20s")
    async with _admin(router) as http:
        reloaded = await http.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["reloaded"] is True
    assert router.limits.max_queue == 3 and router.history.step == 20.0
    for n in range(3):
        router.ballots.put(f"b{n}", {})
    assert len(router.ballots) == 2 and router.ballots.get("b0") is None  # the new `server.ballots`, at once
