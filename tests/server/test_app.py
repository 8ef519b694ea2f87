"""The app in process (httpx.ASGITransport): what needs no real member — validation, auth, errors, keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.policy.loading import load_policy
from council.policy.schema import ApiKey
from council.server.app import create_app
from council.server.auth import KeyRing
from council.server.router import Router
from council.voting.assembly import assemble
from tests.policies import policy_yaml

pytestmark = pytest.mark.anyio
KEY = "in-process-key-0123456789"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app around a router whose members are planned but never started (no llama-server runs)."""
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}, {"model": "m"}]}},
                                memory="1GiB", server={"api_keys": [{"name": "app", "sha256": digest}]}))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    router = Router(policy_path=path, loaded=load_policy(path), server=server, run_dir=tmp_path / "run")
    router.assembly = assemble(router.plan, server, router.life_config, ballots=router.ballots)
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


async def post(client: httpx.AsyncClient, body: object, **headers: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", content=json.dumps(body), headers=headers)


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"model": "c", "messages": [{"role": "user", "content": {"a": 1}}]}, "invalid_message", "messages.0.content"),
    ({"model": "c", "messages": [{"role": "user", "content": None}]}, "invalid_message", "needs `content`"),
    ({"model": "c", "messages": [{"role": "tool", "content": "42"}]}, "invalid_message", "tool_call_id"),
    ({"model": "c", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "invalid_message", "text parts only"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "invalid_temperature",
     "temperature"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "invalid_max_tokens",
     "max_tokens"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": "all"}, "invalid_tools", "tools"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}, "invalid_stop", "stop"),
    ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "missing_model", "`model` is required"),
])
async def test_bad_fields_are_400_naming_the_field(client: httpx.AsyncClient, body: object, code: str,
                                                   says: str) -> None:
    reply = await post(client, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and says in error["message"] and error["type"] == "invalid_request_error"


async def test_a_valid_request_with_unknown_fields_reaches_the_council(client: httpx.AsyncClient) -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}], "mirostat": 2, "cache_prompt": True,
            "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "add"}}, "stop": ["\n"],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}
    reply = await post(client, body)
    # Past validation: the council has no ready member here, so it cannot reach its quorum.
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "quorum_not_met"


async def test_auth_errors_and_deep_json(client: httpx.AsyncClient) -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
    missing = await client.post("/v1/chat/completions", json=body, headers={"Authorization": ""})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    forbidden = await client.get("/admin/members")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_scope"
    deep = await client.post("/v1/chat/completions", content=b"[" * 50_000 + b"]" * 50_000)
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"


def test_key_ring_update_keeps_the_state_of_keys_that_stay() -> None:
    def key(name: str, secret: str, **limits: float) -> ApiKey:
        return ApiKey(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), **limits)  # type: ignore[arg-type]

    ring = KeyRing([key("a", "sa", rate_limit=1.0), key("b", "sb")])
    a = ring.principal("Bearer sa", "chat")
    a.in_flight = 3
    assert a.take() is None and a.take() is not None  # the bucket is spent
    ring.update([key("a", "sa", rate_limit=1.0), key("b", "new-secret")])
    assert ring.principal("Bearer sa", "chat") is a and a.in_flight == 3 and a.take() is not None
    with pytest.raises(Exception, match="invalid API key"):
        ring.principal("Bearer sb", "chat")  # a changed secret is a new key
    assert ring.principal("Bearer new-secret", "chat").in_flight == 0
