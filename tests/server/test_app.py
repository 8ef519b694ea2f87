"""The app in process (httpx.ASGITransport): what needs no real member — validation, auth, errors, keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.policy.loading import load_policy
from council.policy.schema import ApiKey
from council.server.app import create_app
from council.server.auth import KeyRing
from council.server.router import Router, open_router
from council.voting.assembly import assemble
from tests.policies import policy_yaml

pytestmark = pytest.mark.anyio
KEY = "in-process-key-0123456789"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app around a router whose members are planned but never started (no llama-server runs)."""
    transport = httpx.ASGITransport(app=create_app(_router(tmp_path)))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


def _router(tmp_path: Path, members: list[dict[str, Any]] | None = None) -> Router:
    """A router for council `c`: two members of model `m`, or `members` (of models `m` and `n`), from a synthetic
    GGUF (a reload checks that the files this host runs are there); no process starts unless the test starts
    the supervisor, and then the binary is /bin/false."""
    from council.setup.synthetic import write_qwen35

    digest = hashlib.sha256(KEY.encode()).hexdigest()
    path = tmp_path / "policy.yaml"
    if not (tmp_path / "m.gguf").exists():
        write_qwen35(tmp_path / "m.gguf")
    absent = {"path": tmp_path / "m.gguf", "memory": "100MiB"}
    path.write_text(policy_yaml({"m": absent, **({"n": absent} if members else {})},
                                {"c": {"members": members or [{"model": "m"}, {"model": "m"}]}},
                                memory="1GiB", server={"api_keys": [{"name": "app", "sha256": digest}]}))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)
    return router


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
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objekt"}}}]}, "invalid_tools", "`parameters` of f is not a valid JSON"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"a": {"$ref": "http://169.254.169.254/s.json"}}}}}]},
     "invalid_tools", "remote schemas are never fetched"),
    # a $ref that resolves, but to no schema, or back to itself: checking a call raised (500) or never ended
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"a": {"$ref": "#/properties/b/type"}, "b": {"type": "string"}}}}}]},
     "invalid_tools", "$ref '#/properties/b/type' points at 'string', not a schema"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"$defs": {"x": {"$ref": "#/$defs/x"}},
                                    "properties": {"a": {"$ref": "#/$defs/x"}}}}}]},
     "invalid_tools", "$ref '#/$defs/x' leads back to where it is"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "$schema": 5}}}]},
     "invalid_tools", "`parameters` of f is not a valid JSON Schema: $schema must be a string"),
    # a call's arguments are an object: under a schema of another type every call would fail it
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "string"}}}]},
     "invalid_tools", "`type` 'string' admits no JSON object, and a call's arguments always are one"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": ["array", "null"]}}}]}, "invalid_tools", "admits no JSON object"),
    # which tool a call names must be one (Anthropic and Gemini refuse this too)
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "f"}},
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
     "invalid_tools", "`tools` declares function 'f' twice: each function needs a name of its own"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}, "invalid_stop", "stop"),
    ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "missing_model", "`model` is required"),
    # fields that begin like a union's branch name (`str`) are named all the same
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "invalid_stream",
     "stream: Input should be a valid boolean"),
    ({"model": "c", "messages": [{"role": "user", "content": "x"}], "stream_options": "x"}, "invalid_stream_options",
     "stream_options: Input should be a valid dictionary"),
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


@pytest.mark.parametrize("path", ["/healthz/", "/v1/chat/completions/?stream=1", "/ui/"])
async def test_a_trailing_slash_redirects_on_the_host_asked_never_to_the_one_a_header_names(
        client: httpx.AsyncClient, path: str) -> None:
    """Starlette built the redirect from the Host header: `Host: evil.example` sent the client to that host."""
    got = await client.get(path, headers={"Host": "evil.example"})
    assert got.status_code == 307 and got.headers["location"] == path.replace("/?", "?").rstrip("/")
    same = await client.get(path.split("?")[0], headers={"Host": "evil.example"}, follow_redirects=True)
    assert same.url.host == "council" and same.status_code in (200, 405)


async def test_an_empty_authorization_beside_x_api_key_and_bodies_that_are_not_utf8_json(
        client: httpx.AsyncClient) -> None:
    """An empty `Authorization` beside a valid `x-api-key` was 401 "missing API key: send ... (or `x-api-key`)";
    a gzip-encoded or latin-1 body was 400 "... surrogates not allowed" (orjson's words for any byte that is not
    UTF-8), which says nothing of the encoding."""
    import gzip

    body = json.dumps({"model": "c", "messages": [{"role": "user", "content": "x"}]}).encode()
    both = await client.post("/v1/chat/completions", content=body, headers={"Authorization": "", "x-api-key": KEY})
    assert both.status_code == 503 and both.json()["error"]["code"] == "quorum_not_met", both.text  # past the key
    zipped = await client.post("/v1/chat/completions", content=gzip.compress(body),
                               headers={"Content-Encoding": "gzip"})
    assert zipped.status_code == 400 and zipped.json()["error"]["code"] == "unsupported_encoding", zipped.text
    assert "Content-Encoding 'gzip'" in zipped.json()["error"]["message"]
    latin = await client.post("/v1/chat/completions", content=body.replace(b'"x"', b'"\xe9"'))
    assert latin.status_code == 400 and latin.json()["error"]["message"] == \
        "the body is not valid JSON: it is not UTF-8 text", latin.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
                                  "/v1/responses", "/v1/responses/input_tokens"])
@pytest.mark.parametrize("model", ["c", "m"])
async def test_a_body_nested_deeper_than_the_router_writes_is_refused_at_the_door(
        client: httpx.AsyncClient, path: str, model: str) -> None:
    """orjson reads 1024 levels but writes 254, and the router writes bodies again (to members, as ballots): a
    body nested between the two was a 500 (RecursionError) on the routes that rewrite it, or every seat failing
    to send it (503 quorum_not_met, which the SDKs retry). Now: 400 invalid_json past 250 levels, whatever the
    route; 250 levels pass the door."""
    def body(depth: int) -> bytes:
        asked = b'"input":"x"' if "responses" in path else b'"messages":[{"role":"user","content":"x"}]'
        return (b'{"model":"%s","max_tokens":5,%s,"extra":' % (model.encode(), asked) + b"[" * (depth - 1)
                + b"]" * (depth - 1) + b"}")

    for depth in (251, 300, 1000):
        reply = await client.post(path, content=body(depth))
        assert reply.status_code == 400, reply.text
        assert "nested too deeply" in reply.text and "250 levels" in reply.text, reply.text
    allowed = await client.post(path, content=body(250))
    assert "nested too deeply" not in allowed.text and allowed.status_code != 500, allowed.text


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


def _requests_total(text: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.labels["model"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "council_requests_total"}


async def test_errors_carry_the_routers_time_and_are_counted(client: httpx.AsyncClient) -> None:
    """README: every response carries `x-council-overhead-ms`, and `council_requests_total` counts every chat
    request, errors included (before: neither for errors)."""
    chat = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
    cases = [({**chat, "temperature": "hot"}, {}, 400), ({**chat, "model": "nope"}, {}, 404),
             (chat, {"Authorization": ""}, 401), (chat, {}, 503)]  # 503: no member of c is running here
    for body, headers, status in cases:
        reply = await post(client, body, **headers)
        assert reply.status_code == status, reply.text
        assert 0 <= float(reply.headers["x-council-overhead-ms"]) < 10_000, reply.headers
    streamed = await post(client, {**chat, "stream": True})  # the error arrives inside a 200 stream
    assert '"code":"quorum_not_met"' in streamed.text
    counted = _requests_total((await client.get("/metrics")).text)
    # A model name is a label once it is known to be one (an unknown name never becomes a label).
    assert counted == {("c", "400"): 1.0, ("-", "404"): 1.0, ("-", "401"): 1.0, ("c", "503"): 2.0}, counted


ASK = [{"role": "user", "content": "x"}]


BROKEN = {"type": "objekt"}
ANTHROPIC = {"model": "c", "max_tokens": 5, "messages": ASK}
RESPONSES = {"model": "c", "input": "x"}


@pytest.mark.parametrize(("path", "body", "code", "says", "not_said"), [
    ("/v1/messages", {**ANTHROPIC, "tools": [{"name": "f", "input_schema": BROKEN}]}, "invalid_tools",
     "tools.0: `input_schema` of f is not a valid JSON Schema", "function"),
    ("/v1/messages/count_tokens", {**ANTHROPIC, "tools": [{"name": "f", "input_schema": BROKEN}]}, "invalid_tools",
     "tools.0: `input_schema` of f is not a valid JSON Schema", "function"),
    ("/v1/responses", {**RESPONSES, "tools": [{"type": "function", "name": "f", "parameters": BROKEN}]},
     "invalid_tools", "tools.0: `parameters` of f is not a valid JSON Schema", "Value error"),
    ("/v1/responses", {**RESPONSES, "input": [{"type": "reasoning", "id": "r", "summary": []}]}, "empty_input",
     "input: no message a council can be asked", "messages"),
    ("/v1/responses", {**RESPONSES, "tool_choice": {"type": "web_search_preview"}}, "invalid_tool_choice",
     "tool_choice: type 'web_search_preview' is not supported", "ToolChoice"),
    ("/v1/responses", {**RESPONSES, "tools": [{"type": "function", "name": "f"}],
                       "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
     "invalid_tool_choice", "tool_choice.tools: List should have at least 1 item", "ToolChoice"),
    ("/v1/chat/completions", {"model": "c", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": "http://x/a.png"}]}]}, "invalid_message",
     "messages.0.content.0.image_url", "valid string"),
    ("/v1/chat/completions", {"model": "c", "messages": ASK, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": BROKEN}}]}, "invalid_tools",
     "tools.0.function: `parameters` of f is not a valid JSON Schema", "Value error"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("/") else "")
async def test_a_refusal_names_the_field_the_client_sent(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                                                         code: str, says: str, not_said: str) -> None:
    """Refusals named another API's field (Anthropic and Responses tools checked as chat's `tools.0.function`),
    a model class (`tool_choice.ToolChoiceAllowed.tools`), pydantic's `Value error, ` prefix, or the wrong union
    branch's problem (a string image_url: "Input should be a valid string")."""
    reply = await client.post(path, content=json.dumps(body))
    assert reply.status_code == 400, reply.text
    doc = reply.json()["error"]
    message = doc["message"]
    assert (doc.get("code") or doc.get("details", {}).get("error_code")) == code, doc
    assert says in message and not_said not in message, message


@pytest.mark.parametrize(("path", "route", "body"), [
    ("/v1/chat/completions", "chat", {"model": "c", "messages": ASK, "temperature": "hot"}),
    ("/v1/chat/completions", "chat", {"model": "m", "messages": []}),
    ("/v1/chat/completions", "chat", {"model": "c", "messages": ASK, "tool_choice": "required"}),
    ("/v1/completions", "completions", {"model": "m", "prompt": "x", "max_tokens": True}),
    ("/v1/completions", "completions", {"model": "c", "prompt": "x"}),  # a council: council_needs_chat
    ("/v1/messages", "messages", {"model": "c", "max_tokens": 0, "messages": ASK}),
    ("/v1/messages/count_tokens", "count_tokens", {"model": "m", "messages": "x"}),
    ("/v1/responses", "responses", {"model": "c", "input": 7}),
    ("/v1/responses/input_tokens", "input_tokens", {"model": "m", "input": 7}),
], ids=lambda v: v if isinstance(v, str) else "")
async def test_a_body_refused_for_a_field_is_counted_under_the_model_it_names(
        client: httpx.AsyncClient, path: str, route: str, body: dict[str, Any]) -> None:
    """README: `council_requests_total` counts a request under the council or model its body names where the
    router serves one, a refusal of another field included (before: all of these were `-`); any other name is
    `-`, so a client cannot make label values. Each API has its own route (completions and both Responses routes
    were counted as `chat`: an agent's Responses traffic could not be told from chat's)."""
    from prometheus_client.parser import text_string_to_metric_families

    named = await client.post(path, content=json.dumps(body))
    assert named.status_code == 400, named.text
    unknown = await client.post(path, content=json.dumps({**body, "model": "nope"}))
    assert unknown.status_code in (400, 404), unknown.text
    counted = {(s.labels["route"], s.labels["model"], s.labels["status"]): s.value
               for f in text_string_to_metric_families((await client.get("/metrics")).text)
               for s in f.samples if s.name == "council_requests_total"}
    assert counted == {(route, body["model"], "400"): 1.0, (route, "-", str(unknown.status_code)): 1.0}, counted


async def test_a_body_whose_model_cannot_be_read_is_counted_under_dash(client: httpx.AsyncClient) -> None:
    for raw in (b'{"model": "c", "messages": [', json.dumps({"model": ["c"], "messages": ASK}).encode(),
                json.dumps([{"model": "c"}]).encode()):
        reply = await client.post("/v1/chat/completions", content=raw)
        assert reply.status_code == 400, reply.text
    assert _requests_total((await client.get("/metrics")).text) == {("-", "400"): 3.0}


ASKED = [("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
         ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}),
         ("/v1/responses", {"input": "x"})]


def _leaving_client(app: Any, path: str, body: dict[str, object]) -> tuple[Any, Any]:
    """The app driven over raw ASGI by a client that sends `body` to `path`, then disconnects once the returned
    event is set: (that event, the app's task)."""
    import asyncio

    incoming = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    left = asyncio.Event()

    async def receive() -> dict[str, object]:
        if incoming:
            return incoming.pop(0)
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        pass

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("council", 80),
             "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {KEY}".encode())]}
    return left, asyncio.create_task(app(scope, receive, send))


@pytest.mark.parametrize(("path", "asked", "stream"), [(*a, s) for a in ASKED for s in (False, True)],
                         ids=[f"{a[0].rsplit('/', 1)[1]}-{'stream' if s else 'whole'}" for a in ASKED for s in (0, 1)])
async def test_a_disconnect_cancels_the_council_in_process(tmp_path: Path, path: str, asked: dict[str, object],
                                                           stream: bool) -> None:
    """The app driven over raw ASGI, its council's seats scripted to take 30 s: the client's disconnect closes
    every member request, whichever API asked, streamed or not (tests/server/test_chat_lifecycle.py shows the same
    with real processes)."""
    import asyncio
    import dataclasses

    from tests.servers import until
    from tests.voting.fakes import FakeClient, Say

    router = _router(tmp_path)
    engine = router.engines["c"]
    fakes = [FakeClient(Say("a", delay=30.0)) for _ in engine.seats]
    engine.seats = [dataclasses.replace(seat, client=fake) for seat, fake in zip(engine.seats, fakes, strict=True)]
    left, task = _leaving_client(create_app(router), path, {"model": "c", **asked, "stream": stream})
    await until(lambda: all(f.in_flight == 1 for f in fakes), 5, "every seat asked")
    left.set()
    await asyncio.wait_for(task, 5)
    await until(lambda: all(f.in_flight == 0 for f in fakes), 5, "every seat's request closed")
    assert [f.cancelled for f in fakes] == [1, 1]


class HeldMember:
    """A process's client whose answer (a stream's head) never comes: it records whether its request was closed."""

    def __init__(self) -> None:
        self.in_flight = self.cancelled = 0

    async def relay(self, body: bytes, path: str, width: int = 1) -> object:
        import asyncio

        self.in_flight += 1
        try:
            await asyncio.Event().wait()  # generating, for as long as nobody closes the request
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        raise AssertionError("unreachable")

    def stream(self, body: bytes, path: str, width: int = 1) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[object]:  # waiting for a slot, or reading a long prompt
            yield await self.relay(body, path, width)

        return opened()


RELAYED = [("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "chat"),
           ("/v1/completions", {"prompt": "x"}, "completions"),
           ("/v1/responses", {"input": "x"}, "responses"),
           ("/v1/messages", {"max_tokens": 16, "messages": [{"role": "user", "content": "x"}]}, "messages")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("path", "asked", "route"), RELAYED, ids=["chat", "completions", "responses", "messages"])
async def test_a_disconnect_closes_a_passthrough_before_its_answer(tmp_path: Path, path: str,
                                                                   asked: dict[str, object], route: str,
                                                                   stream: bool) -> None:
    """A model's non-streamed relay ignored its client leaving: the member generated on (its slot held) until it
    answered nobody. A streamed one did too until the member's head came (the stream's own watch on its client
    starts with its body): a client that timed out waiting for a slot kept its place in the queue and the key's
    limit, and the member served it in full, counted 200. The disconnect now closes the member's request, and the
    request counts as 499 (README)."""
    import asyncio

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tests.servers import until

    router = _router(tmp_path)
    member = HeldMember()
    router.passthrough_client = lambda model: member  # type: ignore[method-assign, assignment, return-value]
    left, task = _leaving_client(create_app(router), path, {"model": "m", **asked, "stream": stream})
    await until(lambda: member.in_flight == 1, 5, "the member asked")
    left.set()
    await asyncio.wait_for(task, 5)
    assert member.cancelled == 1 and member.in_flight == 0
    assert router.keys.principal(f"Bearer {KEY}", "chat").in_flight == 0  # its places in the limits are free
    metrics = text_string_to_metric_families(generate_latest(router.metrics.registry).decode())
    counted = {(s.labels["route"], s.labels["model"], s.labels["status"]): s.value for f in metrics
               for s in f.samples if s.name == "council_requests_total"}
    assert counted == {(route, "m", "499"): 1.0}, counted


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_n_choices_take_n_slots_and_n_rate_tokens_on_completions_as_on_chat(tmp_path: Path,
                                                                                  stream: bool) -> None:
    """`n: 8` is 8 completions: chat relayed it holding 8 of the process's slots and 8 of its rate limit's
    requests, /v1/completions one of each (so a rate limit or `parallel` was overrun 8 times over)."""
    import contextlib

    from council.voting.client import Relayed

    class Recorder:
        """A process's client that records the width each call holds (slots, rate)."""

        def __init__(self) -> None:
            self.widths: list[int] = []

        async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
            self.widths.append(width)
            return Relayed(200, "application/json", b"{}")

        @contextlib.asynccontextmanager
        async def stream(self, body: bytes, path: str, width: int = 1) -> AsyncIterator[tuple[Relayed, Any]]:
            self.widths.append(width)

            async def chunks() -> AsyncIterator[bytes]:
                yield b"data: [DONE]\n\n"

            yield Relayed(200, "text/event-stream", b""), chunks()

    router = _router(tmp_path)
    member = Recorder()
    router.passthrough_client = lambda model: member  # type: ignore[method-assign, assignment, return-value]
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        for path, asked in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                            ("/v1/completions", {"prompt": "x"})):
            for n in (8, None):
                body = {"model": "m", **asked, "stream": stream, **({"n": n} if n else {})}
                reply = await http.post(path, content=json.dumps(body))
                assert reply.status_code == 200, reply.text
        # A list of prompts is a task per prompt (and per choice) in llama-server; a list of token ids is one.
        for prompt in (["x", "y", "z"], [[1, 2], [3]], [1, 2, 3]):
            body = {"model": "m", "prompt": prompt, "n": 2, "stream": stream}
            assert (await http.post("/v1/completions", content=json.dumps(body))).status_code == 200
        # At most 128 completions a request: 300 prompts × n 2 took every slot of the process for minutes.
        body = {"model": "m", "prompt": ["x"] * 300, "n": 2, "stream": stream}
        wide = await http.post("/v1/completions", content=json.dumps(body))
        assert wide.status_code == 400 and wide.json()["error"]["code"] == "too_many_completions", wide.text
        assert "600 completions in one request" in wide.json()["error"]["message"]
        body = {"model": "m", "prompt": ["x"] * 64, "n": 2, "stream": stream}
        assert (await http.post("/v1/completions", content=json.dumps(body))).status_code == 200
    assert member.widths == [8, 1, 8, 1, 6, 4, 2, 128]


async def test_a_streamed_council_answer_rebuilds_the_non_streamed_message_with_the_sdk(tmp_path: Path) -> None:
    """The stream dropped the speaker's `reasoning_content`, so an openai SDK client's accumulated message lacked
    what the same request without `stream` returned; it now comes as a delta field, as llama-server streams it."""
    import dataclasses

    import openai

    from tests.voting.fakes import FakeClient, Say

    reasoned = Say("It is 7.", message={"role": "assistant", "content": "It is 7.", "reasoning_content": "6+1=7"})
    router = _router(tmp_path)
    engine = router.engines["c"]
    engine.seats = [dataclasses.replace(seat, client=FakeClient(reasoned)) for seat in engine.seats]
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council/v1") as http:
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url="http://council/v1", http_client=http)
        messages: list[Any] = [{"role": "user", "content": "6+1?"}]
        plain = (await sdk.chat.completions.create(model="c", messages=messages)).choices[0].message
        async with sdk.chat.completions.stream(model="c", messages=messages) as stream:
            streamed = (await stream.get_final_completion()).choices[0].message
    assert plain.model_dump(exclude_none=True) == {"role": "assistant", "content": "It is 7.",
                                                   "reasoning_content": "6+1=7"}
    assert streamed.model_dump(exclude_none=True, exclude={"parsed"}) == plain.model_dump(exclude_none=True)


WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_TOOL = {"type": "function", "function": WEATHER}
ANTHROPIC_TOOL = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
USER = [{"role": "user", "content": "x"}]
TOOLED = [("/v1/chat/completions", {"messages": USER, "tools": [CHAT_TOOL]}),
          ("/v1/messages", {"max_tokens": 16, "messages": USER, "tools": [ANTHROPIC_TOOL]}),
          ("/v1/responses", {"input": "x", "tools": [{"type": "function", **WEATHER}]})]
MIXED = [{"model": "m", "tool_instructions": "listed"}, {"model": "n"}]  # the council's: `brief`


@pytest.mark.parametrize(("path", "asked", "stream"), [(*a, s) for a in TOOLED for s in (False, True)],
                         ids=[f"{a[0].rsplit('/', 1)[1]}-{'stream' if s else 'whole'}" for a in TOOLED for s in (0, 1)])
async def test_each_seat_is_sent_its_members_tool_instructions_whichever_api_asks(
        tmp_path: Path, path: str, asked: dict[str, Any], stream: bool) -> None:
    """From the policy to the seats (`assemble`): the member with `tool_instructions: listed` is sent each tool's
    name and parameters, the other member the council's `brief` rules, through every API, streamed or not."""
    import dataclasses

    from council.voting.tools import tool_instructions
    from tests.voting.fakes import FakeClient, Say

    router = _router(tmp_path, MIXED)
    engine = router.engines["c"]
    assert [seat.tool_instructions for seat in engine.seats] == ["listed", None]
    fakes = [FakeClient(Say("No.")) for _ in engine.seats]
    engine.seats = [dataclasses.replace(seat, client=fake) for seat, fake in zip(engine.seats, fakes, strict=True)]
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        answer = await http.post(path, content=json.dumps({"model": "c", **asked, "stream": stream}))
    assert answer.status_code == 200, answer.text
    systems = [[m["content"] for m in fake.sent[0]["messages"] if m["role"] == "system"] for fake in fakes]
    assert systems == [[tool_instructions([CHAT_TOOL], "listed")], [tool_instructions([CHAT_TOOL], "brief")]]


@pytest.mark.parametrize(("path", "asked"), [
    ("/v1/messages/count_tokens", TOOLED[1][1]), ("/v1/responses/input_tokens", TOOLED[2][1])])
async def test_a_councils_token_count_reads_each_members_own_tool_instructions(
        tmp_path: Path, path: str, asked: dict[str, Any]) -> None:
    """The count routes ask each member's process with the prompt that member is sent: its own instructions."""
    import dataclasses

    from council.voting.client import HttpMemberClient, Relayed
    from council.voting.tools import tool_instructions

    class Counter(HttpMemberClient):
        """A process that counts a body's characters, and records what it was asked to count."""

        async def relay(self, body: bytes, path: str, width: int = 1) -> Relayed:
            counted.append(json.loads(body))
            return Relayed(200, "application/json", json.dumps({"input_tokens": len(body)}).encode())

    counted: list[dict[str, Any]] = []
    router = _router(tmp_path, MIXED)
    engine = router.engines["c"]
    counters = {seat.model: Counter(endpoint=lambda: None, target=seat.model) for seat in engine.seats}
    engine.seats = [dataclasses.replace(seat, client=counters[seat.model]) for seat in engine.seats]
    router.passthrough_client = counters.get  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        answer = await http.post(path, content=json.dumps({"model": "c", **asked}))
    assert answer.status_code == 200, answer.text
    texts = [body.get("system") or body["messages"][0]["content"] for body in counted]
    assert texts == [tool_instructions([CHAT_TOOL], "listed"), tool_instructions([CHAT_TOOL], "brief")]


async def test_the_dashboard_serves_its_vendored_charts_library_gzipped_with_its_license(
        client: httpx.AsyncClient) -> None:
    from importlib import resources
    vendored = resources.files("council") / "assets" / "uplot"
    script = await client.get("/ui/vendor/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"})
    assert script.status_code == 200 and script.headers["content-encoding"] == "gzip"
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (vendored / "uPlot.iife.min.js").read_bytes()  # httpx unpacks it
    assert int(script.headers["content-length"]) < len(script.content) / 2
    plain = await client.get("/ui/vendor/uPlot.min.css", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == (vendored / "uPlot.min.css").read_bytes()
    license_ = await client.get("/ui/vendor/LICENSE")
    assert license_.status_code == 200 and "MIT" in license_.text and "Leon Sorokin" in license_.text
    # The palette it shares with the `council eval --html` page: that file only, not the folder's others.
    palette = await client.get("/ui/shared/palette.js")
    assert palette.status_code == 200 and palette.headers["content-type"].startswith("text/javascript")
    assert palette.content == (resources.files("council") / "assets" / "palette.js").read_bytes()
    for missing in ("/ui/vendor/app.js", "/ui/vendor/..%2Fapp.js", "/ui/vendor/uPlot.esm.js", "/ui/LICENSE",
                    "/ui/shared/uplot", "/ui/shared/uplot%2FLICENSE", "/ui/shared/app.js"):
        assert (await client.get(missing)).status_code == 404, missing


async def test_history_needs_a_key_and_starts_empty(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/history", headers={"Authorization": ""})).status_code == 401
    history = (await client.get("/admin/history")).json()  # the `app` key: chat scope
    assert history == {"step": 10.0, "window": 3600.0, "times": [], "charts": {"agreement": {}, "latency": {}}}


async def test_a_policy_nested_too_deeply_is_a_refused_reload_not_a_500(tmp_path: Path) -> None:
    """PyYAML raises RecursionError, not a YAMLError, at some hundreds of levels: a 500 before; now a problem."""
    router = _router(tmp_path)
    ops = "ops-key-0123456789"
    router.keys.update([*router.policy.server.api_keys, ApiKey(
        name="ops", sha256=hashlib.sha256(ops.encode()).hexdigest(), scopes=["chat", "admin"])])
    before = router.loaded
    router.policy_path.write_text("version: 1\nmodels: " + "[" * 2000 + "]" * 2000 + "\n")
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {ops}"}) as http:
        refused = await http.post("/admin/reload")
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["error"]["code"] == "invalid_policy", body
    [problem] = body["problems"]
    assert problem.startswith(f"{router.policy_path}:2: (top): nested too deeply")
    assert router.loaded is before  # the old policy keeps serving


@pytest.mark.parametrize("model_path", ["FIFO", "'~nosuchuser-council/m.gguf'", "/" + "a" * 5000],
                         ids=["fifo", "user", "long"])
async def test_a_reload_the_loader_raised_on_is_refused_and_requests_go_on(tmp_path: Path, model_path: str) -> None:
    """A policy whose model path is a FIFO froze the router (its header was read on the event loop, and a FIFO's
    open waits for a writer); an unknown `~user` or a name too long was a 500. Each is a 400 now, the old policy
    serving, and the policy is read off the event loop."""
    import os

    router = _router(tmp_path)
    ops = "ops-key-0123456789"
    router.keys.update([*router.policy.server.api_keys, ApiKey(
        name="ops", sha256=hashlib.sha256(ops.encode()).hexdigest(), scopes=["chat", "admin"])])
    before = router.loaded
    if model_path == "FIFO":
        model_path = str(tmp_path / "fifo.gguf")
        os.mkfifo(model_path)
    text = router.policy_path.read_text()
    assert f"path: {tmp_path / 'm.gguf'}" in text
    router.policy_path.write_text(text.replace(f"path: {tmp_path / 'm.gguf'}", f"path: {model_path}"))
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council",
                                 headers={"Authorization": f"Bearer {ops}"}) as http:
        refused = await asyncio.wait_for(http.post("/admin/reload"), 30)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_policy" and "models.m.path" in refused.text, refused.text
    assert router.loaded is before


async def test_a_members_log_route_takes_its_name_encoded_segment_by_segment(tmp_path: Path) -> None:
    """The dashboard encodes each segment of a member's name (a council may be named with `#`, `?`, `%`, spaces);
    the server decodes the path before matching `{name:path}`, so the route finds the process by its own name."""
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"we#ird?c%20 x": {"members": [{"model": "m"}]}}, memory="1GiB"))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)
    [name] = router.processes
    assert name == "we#ird?c%20 x/0"
    encoded = "/".join(quote(segment, safe="") for segment in name.split("/"))  # as app.js's openLog does
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(router)),
                                 base_url="http://council") as http:  # no keys: the one caller is admin
        reply = await http.get(f"/admin/members/{encoded}/log")
        assert reply.status_code == 200, reply.text
        assert reply.json()["name"] == name
        # Unencoded, `#` ends the path and `?` starts a query: another member's log, or none.
        assert (await http.get(f"/admin/members/{name}/log")).status_code == 404


async def test_every_sdk_sees_a_tool_declared_twice_refused_as_invalid_tools(tmp_path: Path) -> None:
    """Two tools of one name: the openai SDK (chat and Responses) and the anthropic SDK each raise their own 400
    error naming the tool, before any seat is asked (the seats' processes are not even running here)."""
    import anthropic
    import httpx2
    import openai

    router = _router(tmp_path)
    app = create_app(router)
    twice = [CHAT_TOOL, {"type": "function", "function": {**WEATHER, "description": "another"}}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://council") as http, \
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://council") as http2:
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url="http://council/v1", http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError) as chat:
            await sdk.chat.completions.create(model="c", messages=USER, tools=twice)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as responses:
            await sdk.responses.create(model="c", input="x", tools=[{"type": "function", **t["function"]}
                                                                    for t in twice])  # type: ignore[misc]
        claude = anthropic.AsyncAnthropic(api_key=KEY, base_url="http://council", http_client=http2, max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as messages:
            await claude.messages.create(model="c", max_tokens=16, messages=USER,  # type: ignore[arg-type]
                                         tools=[ANTHROPIC_TOOL, {**ANTHROPIC_TOOL, "description": "another"}])
    for caught in (chat, responses):
        assert caught.value.code == "invalid_tools" and "declares function 'get_weather' twice" in caught.value.message
    error = messages.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "declares tool 'get_weather' twice" in error["message"]


async def test_a_council_that_is_not_running_is_503_with_its_reason_not_an_unknown_model(tmp_path: Path) -> None:
    """A council of the policy refused at start (here: it does not fit; also its slots leased by another router,
    or Redis away) answered 404 "unknown model", which clients never retry, while `/readyz` said why."""
    from council.setup.synthetic import write_qwen35

    path = tmp_path / "policy.yaml"
    model = write_qwen35(tmp_path / "m.gguf")
    path.write_text(policy_yaml({"m": {"path": model, "memory": "100MiB"}, "big": {"path": model, "memory": "5GiB"}},
                                {"c": {"members": [{"model": "m"}]}, "huge": {"members": [{"model": "big"}]}},
                                memory="1GiB"))
    server = LlamaServerInfo(path=Path("/bin/false"), build=1, version="", spec_types=("draft-mtp",))
    life = LifeConfig(run_dir=tmp_path / "run")
    router = open_router(path, load_policy(path), server, life)
    router.assembly = assemble(router.plan, server, life, ballots=router.ballots)
    assert "huge" in router.refused and "huge" not in router.engines
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://council") as http:
        for route, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                            ("/v1/messages", {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})):
            answer = await http.post(route, json={"model": "huge", **body})
            assert answer.status_code == 503, answer.text
            assert "council huge is not running: " in answer.text and "council_not_running" in answer.text
        unknown = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        assert (await http.post("/v1/chat/completions", json=unknown)).status_code == 404
