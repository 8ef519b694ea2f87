"""POST /v1/chat/completions (a council answers by vote, a model is relayed) and POST /v1/completions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.errors import ApiError
from council.server.limits import Admission
from council.server.requests import BadRequest, ChatRequest, CompletionRequest, parse_json, validate_body
from council.server.router import Router
from council.server.routes.passthrough import relay
from council.voting.engine import CouncilAnswer, CouncilEngine, QuorumError, RequestRejected

KEEPALIVE_S = 2.0
routes = APIRouter()
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]

# Documented for clients and fuzzers; `ChatRequest` is what checks a body.
CHAT_REQUEST_SCHEMA: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "a council or model name (GET /v1/models)"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant", "tool", "developer"]},
                           "content": {"type": "string"}}}},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    }}}}}


async def read_body(request: Request, limit: int) -> tuple[bytes, Any]:
    """The raw body and its JSON, within `server.max_body`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
    return raw, parse_json(raw)


def completion_body(answer: CouncilAnswer, created: int, logprobs: bool = False) -> dict[str, Any]:
    message = answer.message
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": answer.finish_reason}
    if logprobs and answer.logprobs is not None:
        choice["logprobs"] = answer.logprobs
    return {"id": answer.id, "object": "chat.completion", "created": created, "model": answer.council,
            "choices": [choice], "usage": answer.usage(), "council": answer.council_json()}


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _target(router: Router, model: str) -> CouncilEngine | None:
    """The council engine `model` names, None for a model (passthrough), 404 for neither."""
    engine = router.engines.get(model)
    if engine is None and model not in router.policy.models:
        known = sorted([*router.engines, *router.policy.models])
        raise ApiError(404, f"unknown model {model!r}; known: {', '.join(known)}", "model_not_found")
    return engine


def _check_council_request(router: Router, chat: ChatRequest) -> None:
    if chat.n not in (None, 1):
        raise BadRequest("`n` other than 1 is not supported: a council already asks several models", "invalid_n")
    if chat.has_media and not router.accepts_media(chat.model):
        raise BadRequest(f"{chat.model} is text-only: its members have no vision or audio projector (`--mmproj`); "
                         "send text content", "unsupported_content")


@routes.post("/v1/chat/completions", response_model=None, openapi_extra={"requestBody": CHAT_REQUEST_SCHEMA})
async def chat_completions(request: Request, router: Current, who: Chat) -> Response:
    started = time.perf_counter()
    raw, body = await read_body(request, router.policy.server.max_body)
    chat = validate_body(body, ChatRequest)
    assert isinstance(chat, ChatRequest)
    engine = _target(router, chat.model)
    if engine is not None:
        _check_council_request(router, chat)
    elif chat.has_media and not router.accepts_media(chat.model):
        raise BadRequest(f"{chat.model} is text-only: it has no vision or audio projector (`--mmproj`)",
                         "unsupported_content")
    admission = await router.limits.admit(who, chat.model)
    early_stop = chat.council is None or chat.council.early_stop  # `council: {early_stop: false}` waits for all
    if engine is None:
        return await _passthrough(router, chat.model, raw, "/v1/chat/completions", admission, started,
                                  stream=bool(chat.stream))
    if chat.stream:
        return StreamingResponse(stream_council(router, engine, body, admission, early_stop),
                                 media_type="text/event-stream")
    async with admission:
        asked = time.perf_counter()
        answer = await engine.ask(body, early_stop=early_stop)
        waited = time.perf_counter() - asked
        router.answered(answer, body)
        response = JSONResponse(completion_body(answer, int(time.time()), logprobs=bool(chat.logprobs)))
        return _measured(router, response, chat.model, started, waited)


@routes.post("/v1/completions", response_model=None)
async def completions(request: Request, router: Current, who: Chat) -> Response:
    """Text completions (editor and agent clients call these), relayed to a model's member."""
    started = time.perf_counter()
    raw, body = await read_body(request, router.policy.server.max_body)
    completion = validate_body(body, CompletionRequest)
    if _target(router, completion.model) is not None:
        raise ApiError(400, f"{completion.model} is a council: councils answer chat completions "
                            "(POST /v1/chat/completions)", "council_needs_chat")
    admission = await router.limits.admit(who, completion.model)
    return await _passthrough(router, completion.model, raw, "/v1/completions", admission, started,
                              stream=bool(completion.stream))


async def _passthrough(router: Router, model: str, raw: bytes, path: str, admission: Admission, started: float,
                       stream: bool = False) -> Response:
    if stream:
        try:
            return await relay(router, model, raw, path, True, admission)
        except BaseException:
            admission.release()
            raise
    async with admission:
        asked = time.perf_counter()
        response = await relay(router, model, raw, path, False, admission)
        return _measured(router, response, model, started, time.perf_counter() - asked)


def _measured(router: Router, response: Response, model: str, started: float, waited: float) -> Response:
    """Stamp the router's own time on the response and count the request."""
    metrics = router.metrics
    overhead = time.perf_counter() - started - waited
    response.headers["x-council-overhead-ms"] = f"{overhead * 1000:.3f}"
    metrics.overhead.labels("chat").observe(overhead)
    metrics.requests.labels("chat", model, str(response.status_code)).inc()
    metrics.latency.labels("chat", model).observe(time.perf_counter() - started)
    return response


async def stream_council(router: Router, engine: CouncilEngine, body: dict[str, Any], admission: Admission,
                         early_stop: bool = True) -> AsyncIterator[bytes]:
    """Keep-alive comments while members work, then the winning answer, usage and the council object."""
    task = asyncio.create_task(engine.ask(body, early_stop=early_stop))
    try:
        while True:
            try:
                answer = await asyncio.wait_for(asyncio.shield(task), KEEPALIVE_S)
                break
            except TimeoutError:
                yield b": keep-alive\n\n"
            except (QuorumError, RequestRejected) as exc:
                code = "quorum_not_met" if isinstance(exc, QuorumError) else "rejected_by_members"
                yield _sse({"error": {"message": str(exc), "type": "server_error", "code": code}})
                yield b"data: [DONE]\n\n"
                return
        router.answered(answer, body)
        created = int(time.time())
        head = {"id": answer.id, "object": "chat.completion.chunk", "created": created, "model": answer.council}
        message = answer.message
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
        first: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if body.get("logprobs") and answer.logprobs is not None:
            first["logprobs"] = answer.logprobs
        yield _sse({**head, "choices": [first]})
        yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
                    "usage": answer.usage(), "council": answer.council_json()})
        yield b"data: [DONE]\n\n"
        router.metrics.requests.labels("chat", engine.name, "200").inc()
    finally:
        if not task.done():
            task.cancel()
        admission.release()
