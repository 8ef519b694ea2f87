"""A body refused after the route has read which council it names (a field the translation passes on that chat
refuses, a tool schema that is not one) gets its 400 and holds no place in the limits afterwards: the council's
queue and the key's requests in flight are back to zero. Before, `/v1/responses/input_tokens` took its place
first and never gave it back, so `max_queue` such requests locked the council out."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from council.server.app import create_app
from tests.server.test_app import KEY, _router

pytestmark = pytest.mark.anyio
BAD_TOOL = {"type": "function", "name": "f", "parameters": {"type": "nope"}}


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/v1/responses/input_tokens", {"model": "c", "input": "hi", "seed": "x"}, "invalid_seed"),
    ("/v1/responses/input_tokens", {"model": "c", "input": "hi", "tools": [BAD_TOOL]}, "invalid_tools"),
    ("/v1/responses", {"model": "c", "input": "hi", "seed": "x"}, "invalid_seed"),
    ("/v1/messages/count_tokens", {"model": "c", "messages": [{"role": "user", "content": "hi"}],
                                   "tools": [{"name": "f", "input_schema": {"type": "nope"}}]}, "invalid_tools"),
])
async def test_a_refused_body_holds_no_place(tmp_path: Path, path: str, body: dict[str, object], code: str) -> None:
    router = _router(tmp_path)
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        for _ in range(3):
            refused = await http.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert refused.status_code == 400, refused.text
            assert code in refused.text
    assert router.limits.queues.get("c", 0) == 0
    assert router.keys.principal(f"Bearer {KEY}", "chat").in_flight == 0


IMAGE = [{"type": "message", "role": "user", "content": [
    {"type": "input_text", "text": "what is this?"},
    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/input_tokens"])
async def test_an_image_to_a_text_only_model_is_refused_before_it_is_relayed(tmp_path: Path, path: str) -> None:
    """As chat and messages refuse it: the model has no vision projector (`--mmproj`)."""
    router = _router(tmp_path)
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        refused = await http.post(path, json={"model": "m", "input": IMAGE}, headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_content", refused.text
    assert router.limits.queues.get("m", 0) == 0
