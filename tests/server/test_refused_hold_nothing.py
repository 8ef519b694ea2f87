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


CHAT_IMAGE = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                           {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]}]
MESSAGES_IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]}]
TEXT_ONLY = {"c": "c is text-only: its model m has no vision or audio projector (`--mmproj` in the model's `args`); "
                  "send text content",
             "m": "m is text-only: it has no vision or audio projector (`--mmproj` in the model's `args`); send text "
                  "content"}


@pytest.mark.parametrize(("path", "body", "target"), [
    *((path, body, target) for path, body in [("/v1/chat/completions", {"messages": CHAT_IMAGE}),
                                             ("/v1/messages", {"messages": MESSAGES_IMAGE, "max_tokens": 10}),
                                             ("/v1/responses", {"input": IMAGE})] for target in ("c", "m")),
    # Counting: a model's process is asked (a council's count asks its members as a chat body, unchecked).
    ("/v1/messages/count_tokens", {"messages": MESSAGES_IMAGE}, "m"),
    ("/v1/responses/input_tokens", {"input": IMAGE}, "m"),
])
async def test_media_a_model_cannot_read_is_refused_in_one_message_by_every_api(
        tmp_path: Path, path: str, body: dict[str, object], target: str) -> None:
    # The check was written three times, in four wordings ("no member has a vision projector" for a model, "send
    # text" or nothing said), and count_tokens relayed the image; one function now, each API keeping its own error
    # envelope.
    router = _router(tmp_path)
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        refused = await http.post(path, json={"model": target, **body}, headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 400, refused.text
    doc = refused.json()
    if path.startswith("/v1/messages"):
        assert doc == {"type": "error", "error": {"type": "invalid_request_error", "message": TEXT_ONLY[target],
                                                  "details": {"error_code": "unsupported_content"}}}
    else:
        assert doc["error"]["message"] == TEXT_ONLY[target] and doc["error"]["code"] == "unsupported_content"
    assert router.limits.queues.get(target, 0) == 0


URL_IMAGES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "{url}"}}]}]},
    "/v1/messages": {"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image", "source": {"type": "url", "url": "{url}"}}]}]},
    "/v1/responses": {"input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "what is this?"}, {"type": "input_image", "image_url": "{url}"}]}]},
}


@pytest.mark.parametrize("target", ["c", "m"])
@pytest.mark.parametrize("path", list(URL_IMAGES))
async def test_media_given_by_url_is_refused_unless_the_policy_fetches_it(
        tmp_path: Path, path: str, target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member with a projector fetches an image URL itself, from its host: any chat key could make a GPU host read
    cloud metadata (169.254.169.254) or an internal service. Media by URL is now 400 `remote_media` unless
    `server.fetch_media: true`; inline media (`data:`) goes as before."""
    import dataclasses
    import json

    router = _router(tmp_path)
    monkeypatch.setattr(router, "text_only", lambda target: [])  # as if every model had a projector
    transport = httpx.ASGITransport(app=create_app(router))

    def asked(url: str) -> dict[str, object]:
        return {"model": target, **json.loads(json.dumps(URL_IMAGES[path]).replace("{url}", url))}

    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        refused = await http.post(path, json=asked("http://169.254.169.254/latest/meta-data/"))
        assert refused.status_code == 400 and "remote_media" in refused.text, refused.text
        assert "169.254.169.254" in refused.text and "server.fetch_media" in refused.text
        inline = await http.post(path, json=asked("data:image/png;base64,iVBORw0KGgo="))
        assert "remote_media" not in inline.text and "unsupported_content" not in inline.text, inline.text
        server = router.policy.server.model_copy(update={"fetch_media": True})
        monkeypatch.setattr(router, "loaded", dataclasses.replace(
            router.loaded, policy=router.policy.model_copy(update={"server": server})))
        fetched = await http.post(path, json=asked("http://169.254.169.254/latest/meta-data/"))
        assert "remote_media" not in fetched.text, fetched.text
    assert router.limits.queues.get(target, 0) == 0


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/input_tokens"])
async def test_media_by_url_in_a_stored_conversation_is_refused_too(tmp_path: Path, path: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuing a stored conversation (`previous_response_id`) on a model sent its items along, and only the new
    input was searched for media URLs: an image URL stored when it was allowed (a council of remote members, or
    before a reload turned `fetch_media` off) reached a local member, which fetched it."""
    router = _router(tmp_path)
    monkeypatch.setattr(router, "text_only", lambda target: [])
    stored = [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": "http://169.254.169.254/latest/meta-data/"}]}]
    await router.state.put_response("resp_stored", {"items": stored, "owner": "app"}, 10)
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        refused = await http.post(path, json={"model": "m", "previous_response_id": "resp_stored",
                                              "input": "and now?"})
    assert refused.status_code == 400 and "remote_media" in refused.text, refused.text
    assert router.limits.queues.get("m", 0) == 0
