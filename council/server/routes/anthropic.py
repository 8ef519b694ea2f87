"""POST /v1/messages and /v1/messages/count_tokens, the Anthropic Messages API (Claude Code, the `anthropic` SDK):
a council is asked as chat completions ask it (the request translated by `apis.anthropic`, validated as a chat
request, the same vote, limits, metrics and cancellation), a model is relayed to its process, which answers this
API itself. Errors come in Anthropic's shape (`errors.shaped_error`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from council.errors import CouncilError
from council.server.apis import anthropic
from council.server.apis.anthropic import CountTokensRequest, MessagesRequest
from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.errors import ApiError
from council.server.limits import Admission
from council.server.router import Router
from council.server.routes.chat import (
    CLIENT_GONE,
    _json,
    _measured,
    _target,
    as_council_request,
    ask_council,
    check_media,
    council_stream,
    read_body,
    relay_stream,
    relay_whole,
)
from council.server.routes.passthrough import HeldStream, counted_tokens, relay
from council.voting.client import HttpMemberClient, MemberUnavailable, Relayed
from council.voting.engine import CouncilAnswer, CouncilEngine, Seat
from council.voting.request import CouncilRequest, dumps

ROUTE = "messages"  # the metrics' route label (count_tokens: `count_tokens`)
routes = APIRouter()
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]


@routes.post("/v1/messages", response_model=None)
async def messages(request: Request, router: Current, who: Chat) -> Response:
    started = time.perf_counter()
    raw, body = await read_body(request, router)
    asked = anthropic.validate(body, MessagesRequest)
    engine = _target(router, asked.model)
    check_media(router, asked.model, asked.has_media, body)
    if engine is None:
        if (relayed := anthropic.for_model(body)) is not None:
            raw = dumps(relayed)
        admission = await router.limits.admit(who, asked.model)
        return await _relay_model(request, router, asked.model, raw, admission, started, stream=bool(asked.stream))
    council = as_council_request(router, anthropic.to_chat(asked, body), owner=who.name)
    admission = await router.limits.admit(who, asked.model)
    if asked.stream:
        return _stream(router, engine, council, admission, started)
    async with admission:
        done = await ask_council(request, router, engine, council, started, ROUTE)
        if done is None:
            return Response(status_code=CLIENT_GONE)
        answer, waited = done
        return _measured(router, _json(anthropic.message_body(answer)), asked.model, started, waited, ROUTE)


def _stream(router: Router, engine: CouncilEngine, council: CouncilRequest, admission: Admission,
            started: float) -> HeldStream:
    """`message_start` at once, `ping` events while the members work, then the answer's events (with the router's
    own time, `overhead_ms`, in the `council` object of `message_delta`), or an `error` event."""

    async def answered(answer: CouncilAnswer, overhead_ms: float) -> AsyncIterator[bytes]:
        for event in anthropic.stream_answer(answer, overhead_ms=overhead_ms):
            yield event

    return council_stream(router, engine, council, admission, started, route=ROUTE, keepalive=anthropic.PING,
                          opening=anthropic.stream_start(f"msg_{uuid.uuid4().hex}", engine.name),
                          failed=lambda exc, status, code: anthropic.stream_error(status, str(exc), code),
                          answered=answered)


# ---- a model: relayed to its process, which answers the Messages API itself --------------------------------------


async def _relay_model(request: Request, router: Router, model: str, raw: bytes, admission: Admission,
                       started: float, stream: bool) -> Response:
    if stream:
        response = await relay_stream(request, router, model, raw, "/v1/messages", admission, started, ROUTE)
        if isinstance(response, StreamingResponse):  # else the client went away first
            response.body_iterator = (_normalised(response.body_iterator) if response.status_code < 400
                                      else _error_body(response.status_code, response.body_iterator))
        return response
    async with admission:
        relayed = await relay_whole(request, router, model, raw, "/v1/messages", admission, started, ROUTE)
        if relayed is None:
            return Response(status_code=CLIENT_GONE)
        response, waited = relayed
        if response.status_code >= 400:
            response = JSONResponse(anthropic.from_openai_error(response.status_code, bytes(response.body)),
                                    status_code=response.status_code)
        elif (said := anthropic.stop_sequence_said(bytes(response.body))) != response.body:
            response = Response(content=said, status_code=response.status_code, media_type=response.media_type)
        return _measured(router, response, model, started, waited, ROUTE)


async def _normalised(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """A model's Messages stream, event by event, its `error` events in Anthropic's shape. Closing this closes the
    relay's own stream at once (a client that went away frees the process's slot now, not at garbage collection)."""
    pending = b""
    try:
        async for chunk in chunks:
            pending += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            if b"\n\n" not in pending:
                continue
            complete, _, pending = pending.rpartition(b"\n\n")
            if b"event: error" in complete or b'data: {"error"' in complete:
                complete = b"".join(anthropic.normalise_event(e + b"\n\n") for e in complete.split(b"\n\n"))
            else:
                complete = anthropic.stop_sequence_said(complete) + b"\n\n"
            yield complete
        if pending:
            yield pending
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def _error_body(status: int, chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """A model's error answer to a streamed request (a JSON body, not a stream) in Anthropic's shape."""
    try:
        raw = b"".join([c if isinstance(c, bytes) else str(c).encode() async for c in chunks])
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield json.dumps(anthropic.from_openai_error(status, raw)).encode()


# ---- count_tokens ---------------------------------------------------------------------------------------------


@routes.post("/v1/messages/count_tokens", response_model=None)
async def count_tokens(request: Request, router: Current, who: Chat) -> Response:
    """A model's own count; a council's members' tokenizers differ, so the largest of its processes' counts (each
    with the member's own system prompt, as it is sent)."""
    started = time.perf_counter()
    raw, body = await read_body(request, router)
    asked = anthropic.validate(body, CountTokensRequest)
    engine = _target(router, asked.model)
    # A council's members also read their tool instructions: checked (as chat) before admission.
    instructions = None if engine is None else engine.tool_texts(
        as_council_request(router, anthropic.count_to_chat(asked), checked=False))
    if engine is None:  # as /v1/responses/input_tokens refuses it: the process could not read the image either
        check_media(router, asked.model, asked.has_media, body)
    async with await router.limits.admit(who, asked.model) as admission:
        waiting = time.perf_counter()
        if engine is None:
            response = await relay(router, asked.model, raw, "/v1/messages/count_tokens", False, admission)
            if response.status_code >= 400:
                response = JSONResponse(anthropic.from_openai_error(response.status_code, bytes(response.body)),
                                        status_code=response.status_code)
        else:
            response = JSONResponse({"input_tokens": await _council_count(engine, body, instructions)})
        return _measured(router, response, asked.model, started, time.perf_counter() - waiting, "count_tokens")


async def _council_count(engine: CouncilEngine, body: dict[str, Any],
                         instructions: Callable[[Seat], str | None]) -> int:
    """The largest count among the council's processes, each of the request with what the council and the
    member add to its system prompt (the seat's tool instructions, then the member's own `system`)."""
    asks: dict[tuple[object, str | None], Any] = {}
    for seat in engine.seats:
        client = seat.client
        if isinstance(client, HttpMemberClient):  # a `remote:` model has no tokenizer here
            own = "\n\n".join(t for t in (instructions(seat), seat.sampling.system) if t) or None
            key = (client.target or id(client), own)
            if key not in asks:
                payload = json.dumps(anthropic.with_own_system(body, own)).encode()
                asks[key] = client.relay(payload, "/v1/messages/count_tokens")
    if not asks:
        raise ApiError(400, f"council {engine.name} has only remote members: no tokenizer here to count with",
                       "count_unavailable")
    results: list[Relayed | BaseException] = await asyncio.gather(*asks.values(), return_exceptions=True)
    counts: list[int] = []
    for result in results:
        if isinstance(result, CouncilError):
            continue  # a process not ready now: the others count
        if isinstance(result, BaseException):
            raise result
        if result.status >= 400:
            error = anthropic.from_openai_error(result.status, result.body)["error"]
            raise ApiError(result.status if result.status < 500 else 502, error["message"], "rejected_by_members")
        counts.append(counted_tokens(result.status, result.body))
    if not counts:
        raise MemberUnavailable(f"council {engine.name}: no member is ready to count tokens")
    return max(counts)
