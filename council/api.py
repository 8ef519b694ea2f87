"""The HTTP API (CONTRACT §3): OpenAI-compatible chat completions where `model` names a council or a
model, plus ballots, health, readiness, Prometheus metrics and admin endpoints.

Bodies are parsed by hand rather than through pydantic request models: every bad input gets a specific
4xx in the OpenAI error shape, and the hot path stays well under a millisecond of router time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from council.auth import AuthError, Principal
from council.fanout import CouncilAnswer, QuorumError
from council.member import State
from council.router import ReloadError, Router
from council.state import StateError

KEEPALIVE_S = 2.0
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 502: "server_error", 503: "server_error", 500: "server_error"}


# Documented for clients and fuzzers; the handler still checks every field itself (see `_validate`).
CHAT_REQUEST_SCHEMA: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "a council or model name (GET /v1/models)"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "developer"]},
                           "content": {"type": "string"}}}},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    }}}}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code}, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", "invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required: a council or model name (see GET /v1/models)", "missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list", "empty_messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a `role`", "invalid_message")
        if message["role"] not in ("system", "user", "assistant", "tool", "developer"):
            raise ApiError(400, f"messages[{i}].role {message['role']!r} is not a chat role", "invalid_message")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "`stream` must be true or false", "invalid_stream")
    if body.get("n", 1) != 1:
        raise ApiError(400, "`n` other than 1 is not supported: a council already asks several models", "invalid_n")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ApiError(400, "`max_tokens` must be a positive integer", "invalid_max_tokens")
    return body


def completion_body(answer: CouncilAnswer, created: int) -> dict[str, Any]:
    message = answer.message
    return {"id": answer.id, "object": "chat.completion", "created": created, "model": answer.council,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": answer.usage(), "council": answer.council_json()}


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(router: Router) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(title="council", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible router over councils of small local models.")
    metrics = router.metrics
    sharing: set[asyncio.Task[None]] = set()  # ballot copies on their way to Redis (kept from the GC)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.code,
                              {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); see the router's log", "internal_error")

    def principal(request: Request, scope: str) -> Principal:
        return router.keys.principal(request.headers.get("authorization"), scope)

    async def read_json(request: Request) -> Any:
        limit = router.policy.server.max_body
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None

    @app.post("/v1/chat/completions", response_model=None, openapi_extra={"requestBody": CHAT_REQUEST_SCHEMA})
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        who = principal(request, "chat")
        body = _validate(await read_json(request))
        model = body["model"]
        assert router.runtime is not None
        engine = router.runtime.engines.get(model)
        if engine is None and model not in router.policy.models:
            known = sorted([*router.runtime.engines, *router.policy.models])
            raise ApiError(404, f"unknown model {model!r}; known: {', '.join(known)}", "model_not_found")
        if (wait := await take(who)) is not None:
            metrics.rejected.labels("rate").inc()
            raise ApiError(429, f"rate limit of key {who.name} exceeded", "rate_limited",
                           {"Retry-After": str(max(1, math.ceil(wait)))})
        if who.max_concurrency is not None and who.in_flight >= who.max_concurrency:
            metrics.rejected.labels("concurrency").inc()
            raise ApiError(429, f"key {who.name} has {who.in_flight} requests in flight (its limit)",
                           "too_many_requests", {"Retry-After": "1"})
        queued = router.queues.get(model, 0)
        if queued >= router.policy.server.max_queue:
            metrics.rejected.labels("queue").inc()
            raise ApiError(429, f"{model}: {queued} requests already queued (max_queue)", "queue_full",
                           {"Retry-After": "1"})
        who.in_flight += 1
        router.queues[model] = queued + 1
        release = True
        try:
            if engine is not None:
                if body.get("stream"):
                    release = False
                    return StreamingResponse(stream_council(engine, body, who, model), media_type="text/event-stream")
                answer, waited = await ask_council(engine, body)
                response = JSONResponse(completion_body(answer, int(time.time())))
            else:
                response, waited = await passthrough(model, body)
                if isinstance(response, StreamingResponse):
                    release = False
                    response.background = None
                    return _release_after(response, who, model)
            overhead = time.perf_counter() - started - waited
            response.headers["x-council-overhead-ms"] = f"{overhead * 1000:.3f}"
            metrics.overhead.labels("chat").observe(overhead)
            metrics.requests.labels("chat", model, str(response.status_code)).inc()
            metrics.latency.labels("chat", model).observe(time.perf_counter() - started)
            return response
        finally:
            if release:
                who.in_flight -= 1
                router.queues[model] -= 1

    async def take(who: Principal) -> float | None:
        """The key's rate limit: shared by all routers through Redis, or this router's own bucket (also the
        fallback while Redis is away, so an outage never turns into unlimited or refused traffic)."""
        if who.rate_limit is None or not router.shared:
            return who.take()
        try:
            return await router.state.take(f"key:{who.name}", who.rate_limit, max(1.0, who.rate_limit))
        except StateError:
            return who.take()

    def _release_after(response: StreamingResponse, who: Principal, model: str) -> StreamingResponse:
        inner = response.body_iterator

        async def wrapped() -> AsyncIterator[bytes]:
            try:
                async for chunk in inner:
                    yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
            finally:
                who.in_flight -= 1
                router.queues[model] -= 1

        response.body_iterator = wrapped()
        return response

    async def ask_council(engine: Any, body: dict[str, Any]) -> tuple[CouncilAnswer, float]:
        start = time.perf_counter()
        try:
            answer = await engine.ask(body)
        except QuorumError as exc:
            raise ApiError(503, str(exc), "quorum_not_met") from None
        waited = time.perf_counter() - start
        record(answer)
        return answer, waited

    def record(answer: CouncilAnswer) -> None:
        doc = answer.council_json()
        if router.shared:  # so /v1/ballots/{id} works on every router; an outage only loses the copy
            task = asyncio.create_task(share_ballot(answer.id))
            sharing.add(task)
            task.add_done_callback(sharing.discard)
        metrics.answers.labels(answer.council, str(answer.early_stop).lower(), str(answer.degraded).lower()).inc()
        metrics.agreement.labels(answer.council).observe(answer.decision.agreement)
        winners = set(answer.decision.winner_members)
        for m in doc["members"]:
            metrics.votes.labels(answer.council, m["name"], m["status"], str(m["name"] in winners).lower()).inc()

    async def share_ballot(ballot_id: str) -> None:
        ballot = router.ballots.get(ballot_id)
        if ballot is not None:
            with contextlib.suppress(StateError):
                await router.state.put_ballot(ballot_id, ballot, router.policy.server.ballots)

    async def stream_council(engine: Any, body: dict[str, Any], who: Principal, model: str) -> AsyncIterator[bytes]:
        """Keep-alive comments while members work, then the winning answer, usage and the council object."""
        try:
            task = asyncio.create_task(engine.ask(body))
            while True:
                try:
                    answer = await asyncio.wait_for(asyncio.shield(task), KEEPALIVE_S)
                    break
                except TimeoutError:
                    yield b": keep-alive\n\n"
                except QuorumError as exc:
                    yield _sse({"error": {"message": str(exc), "type": "server_error", "code": "quorum_not_met"}})
                    yield b"data: [DONE]\n\n"
                    return
            record(answer)
            created = int(time.time())
            head = {"id": answer.id, "object": "chat.completion.chunk", "created": created, "model": answer.council}
            message = answer.message
            delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
            yield _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                        "usage": answer.usage(), "council": answer.council_json()})
            yield b"data: [DONE]\n\n"
            metrics.requests.labels("chat", model, "200").inc()
        finally:
            if not task.done():
                task.cancel()
            who.in_flight -= 1
            router.queues[model] -= 1

    async def passthrough(model: str, body: dict[str, Any]) -> tuple[Response, float]:
        """Relay to the least busy ready process serving `model` (token by token when streaming)."""
        candidates = [m for m in router.supervisor.members.values()
                      if m.spec.model == model and m.state is State.READY]
        if not candidates:
            if router.policy.models[model].remote is not None:
                raise ApiError(400, f"{model} is a remote model: call its provider directly", "remote_model")
            raise ApiError(503, f"no ready member serves {model}", "no_ready_member")
        member = min(candidates, key=lambda m: (m.in_flight, m.name))
        payload = json.dumps(body).encode()
        start = time.perf_counter()
        if not body.get("stream"):
            response = await forward(member, payload)
            return response, time.perf_counter() - start
        assert router.runtime is not None
        upstream = await _send(router.runtime.http.for_process(member.name), f"{member.spec.url}/v1/chat/completions",
                               payload, _member_headers(member), member)

        async def relay() -> AsyncIterator[bytes]:
            async with router.supervisor.request(member.name):
                try:
                    async for chunk in upstream.content.iter_any():
                        yield chunk
                finally:
                    upstream.release()

        return StreamingResponse(relay(), status_code=upstream.status,
                                 media_type=upstream.headers.get("content-type", "text/event-stream")), 0.0

    def _member_headers(member: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {member.spec.api_key}", "Content-Type": "application/json"}

    async def forward(member: Any, payload: bytes) -> Response:
        """One chat completion relayed to a local member, as its bytes (a passthrough, or a remote router's
        call to this host); counted for the member's watchdog."""
        assert router.runtime is not None
        session = router.runtime.http.for_process(member.name)
        async with router.supervisor.request(member.name):
            upstream = await _send(session, f"{member.spec.url}/v1/chat/completions", payload,
                                   _member_headers(member), member)
            try:
                content = await upstream.read()
            except aiohttp.ClientError as exc:
                raise ApiError(502, f"member {member.name} failed: {type(exc).__name__}", "member_error") from None
            finally:
                upstream.release()
        return Response(content=content, status_code=upstream.status,
                        media_type=upstream.headers.get("content-type", "application/json"))

    async def _send(session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str],
                    member: Any) -> aiohttp.ClientResponse:
        try:
            return await session.post(url, data=payload, headers=headers)
        except aiohttp.ClientError as exc:
            raise ApiError(502, f"member {member.name} failed: {type(exc).__name__}", "member_error") from None

    @app.post("/internal/members/{process:path}/v1/chat/completions", include_in_schema=False, response_model=None)
    async def member_call(process: str, request: Request) -> Response:
        """A member of this host, for routers on other hosts (state: redis); needs the shared cluster key."""
        import hmac

        given = request.headers.get("authorization", "").encode()
        if router.cluster_key is None or not hmac.compare_digest(given, f"Bearer {router.cluster_key}".encode()):
            raise ApiError(401, "member calls need the cluster key (server.cluster_key_env)", "invalid_cluster_key")
        member = router.supervisor.members.get(process)
        if member is None or member.state is not State.READY:
            raise ApiError(503, f"member {process} is not ready on this host", "no_ready_member")
        return await forward(member, await request.body())

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        principal(request, "chat")
        assert router.runtime is not None
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "council", "kind": "council",
                 "members": [m.name for m in engine.members]} for name, engine in router.runtime.engines.items()]
        data += [{"id": name, "object": "model", "created": 0, "owned_by": "council", "kind": "model"}
                 for name in router.policy.models]
        return {"object": "list", "data": data}

    @app.get("/v1/ballots/{ballot_id}")
    async def ballot(ballot_id: str, request: Request) -> dict[str, Any]:
        principal(request, "chat")
        found = router.ballots.get(ballot_id)
        if found is None and router.shared:
            try:
                found = await router.state.get_ballot(ballot_id)
            except StateError as exc:
                message = f"ballot {ballot_id!r} is not on this router and {exc}"
                raise ApiError(503, message, "state_unavailable") from None
        if found is None:
            raise ApiError(404, f"no recent ballot {ballot_id!r} (the router keeps the last "
                                f"{router.ballots.capacity})", "ballot_not_found")
        return found

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> Response:
        ready, reasons = router.readiness()
        return JSONResponse({"ready": ready, "reasons": reasons}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        principal(request, "chat")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/slots")
    async def admin_slots(request: Request) -> dict[str, Any]:
        principal(request, "admin")
        return router.plan.to_json()

    @app.get("/admin/members")
    async def admin_members(request: Request) -> dict[str, Any]:
        principal(request, "admin")
        return {"members": [m.snapshot() for m in router.supervisor.members.values()]}

    @app.post("/admin/reload", response_model=None)
    async def admin_reload(request: Request) -> Response:
        principal(request, "admin")
        try:
            changes = await router.reload()
        except ReloadError as exc:
            return error_response(400, "the new policy is refused; the old one keeps running", "invalid_policy",
                                  problems=exc.problems)
        return JSONResponse({"reloaded": True, **changes})

    return app
