"""POST /v1/responses and /v1/responses/input_tokens (the OpenAI Responses API; README "Agents"): a council is
asked as `routes.chat` asks it, from the request translated to chat (`server.apis.responses`), and answers with a
Response object (plus the `council` object) or its event stream; a model is relayed to llama-server, which serves
the Responses API itself, with its stream completed as the SDKs read it.

Responses are stored (input and output items, keyed by response id, in the state store beside the ballots: the
last `server.ballots`, shared through Redis) unless `store: false`, so `previous_response_id` continues a
conversation on councils and models alike; an unknown id is a 400."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from council.cluster.store import StateError
from council.errors import CouncilError
from council.server.apis.responses import (
    REQUEST_SCHEMA,
    EventNumbers,
    ResponsesRequest,
    StreamFixer,
    complete_response,
    events_of,
    for_model,
    input_items,
    item_events,
    new_id,
    output_items,
    response_object,
    to_chat,
    usage,
    validate_responses,
)
from council.server.auth import Principal, may_read
from council.server.deps import current_router, require
from council.server.errors import ApiError, error_response
from council.server.limits import Admission
from council.server.requests import BadRequest
from council.server.router import Router
from council.server.routes.chat import (
    CLIENT_GONE,
    _json,
    _measured,
    _passthrough,
    _target,
    as_council_request,
    ask_council,
    check_media,
    council_stream,
    read_body,
    relay_whole,
)
from council.server.routes.passthrough import KEEPALIVE, HeldStream, counted_tokens
from council.voting.engine import CouncilAnswer, CouncilEngine, member_payload
from council.voting.request import CouncilRequest

routes = APIRouter()
ROUTE = "responses"  # the metrics' route label (input_tokens: `input_tokens`)
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]


async def _read(request: Request, router: Router,
                who: Principal) -> tuple[dict[str, Any], ResponsesRequest, CouncilEngine | None, list[dict[str, Any]]]:
    """A Responses request's body, validated; the council its `model` names (None: a model); and the stored
    conversation it continues (`previous_response_id`)."""
    _, body = await read_body(request, router)
    ask = validate_responses(body)
    engine = _target(router, ask.model)
    return body, ask, engine, await _history(router, ask, who)


async def _history(router: Router, request: ResponsesRequest, who: Principal) -> list[dict[str, Any]]:
    """The stored conversation `previous_response_id` continues (its input and output items), or a 400. Another
    key's conversation is not this caller's to continue (it would read it back): unknown, as its ballots are."""
    if request.previous_response_id is None:
        return []
    found = await router.state.get_response(request.previous_response_id)
    if found is None or not may_read(who, found):
        raise BadRequest(f"previous_response_id {request.previous_response_id!r} is unknown: council keeps the "
                         f"last {router.policy.server.ballots} responses, and none sent with `store: false`",
                         "previous_response_not_found")
    return list(found.get("items") or [])


async def _store(router: Router, request: ResponsesRequest, owner: str | None, response_id: str,
                 inputs: list[dict[str, Any]], output: list[dict[str, Any]]) -> None:
    """Keep the conversation so far for `previous_response_id`, as the `owner` key's (an unreachable store loses
    only that)."""
    if request.stored:
        with contextlib.suppress(StateError):
            await router.state.put_response(response_id, {"items": [*inputs, *output], "owner": owner},
                                            router.policy.server.ballots)


def _answered(answer: CouncilAnswer, request: ResponsesRequest, response_id: str, created: int) -> dict[str, Any]:
    """The council's answer as a Response object; `council.ballot_id` is its ballot's id (`/v1/ballots/{id}`), as
    in a Messages answer's `council` object. Its
    `usage` is one model's view (an agent such as Codex compacts its context by it), `council.usage` every
    request's tokens, what the answer cost."""
    incomplete = answer.finish_reason == "length"
    return response_object(response_id, request, created, "incomplete" if incomplete else "completed",
                           output_items(answer.message, incomplete), usage(*answer.context_usage()),
                           council={"ballot_id": answer.id, **answer.council_json(), "usage": answer.usage()})


@routes.post("/v1/responses", response_model=None, openapi_extra={"requestBody": REQUEST_SCHEMA})
async def create_response(request: Request, router: Current, who: Chat) -> Response:
    started = time.perf_counter()
    body, ask, engine, history = await _read(request, router, who)
    inputs = [*history, *input_items(body)]
    if engine is None:  # a council is checked as chat (as_council_request)
        check_media(router, ask.model, ask.has_media, body, history)
        return await _relay(request, router, ask, body, history, inputs, who, started)
    council = as_council_request(router, to_chat(ask, body, history), owner=who.name)
    admission = await router.limits.admit(who, ask.model)
    if ask.stream:
        return _stream_council(router, engine, council, ask, inputs, admission, started)
    async with admission:
        done = await ask_council(request, router, engine, council, started, ROUTE)
        if done is None:
            return Response(status_code=CLIENT_GONE)
        answer, waited = done
        doc = _answered(answer, ask, new_id("resp"), int(time.time()))
        await _store(router, ask, who.name, doc["id"], inputs, doc["output"])
        return _measured(router, _json(doc), ask.model, started, waited, ROUTE)


def _stream_council(router: Router, engine: CouncilEngine, council: CouncilRequest, ask: ResponsesRequest,
                    inputs: list[dict[str, Any]], admission: Admission, started: float) -> HeldStream:
    """`response.created` and `response.in_progress` at once, keep-alive comments while members work, then the
    answer's items as Responses events and `response.completed` (`response.incomplete` when cut off) with usage
    and the `council` object; a failure is an `error` event and `response.failed`."""
    number = EventNumbers()
    response_id, created = new_id("resp"), int(time.time())
    opening = response_object(response_id, ask, created, "in_progress", [])

    def failed(exc: CouncilError, _status: int, code: str) -> bytes:
        doc = response_object(response_id, ask, created, "failed", [], error={"code": code, "message": str(exc)})
        return number({"type": "error", "code": code, "message": str(exc), "param": None}) + number(
            {"type": "response.failed", "response": doc})

    async def answered(answer: CouncilAnswer, overhead_ms: float) -> AsyncIterator[bytes]:
        doc = _answered(answer, ask, response_id, created)
        doc["council"]["overhead_ms"] = overhead_ms
        await _store(router, ask, council.owner, response_id, inputs, doc["output"])
        ending = "response.incomplete" if doc["status"] == "incomplete" else "response.completed"
        yield b"".join(number(e) for e in [*item_events(doc["output"]), {"type": ending, "response": doc}])

    return council_stream(router, engine, council, admission, started, route=ROUTE, keepalive=KEEPALIVE,
                          opening=number({"type": "response.created", "response": opening})
                          + number({"type": "response.in_progress", "response": opening}),
                          failed=failed, answered=answered)


async def _relay(request: Request, router: Router, ask: ResponsesRequest, body: dict[str, Any],
                 history: list[dict[str, Any]], inputs: list[dict[str, Any]], who: Principal,
                 started: float) -> Response:
    """A model: llama-server answers the Responses API itself (the conversation so far sent as input); its
    answer is completed where the SDKs need more than it writes, and stored."""
    payload = json.dumps(for_model(body, history)).encode()
    admission = await router.limits.admit(who, ask.model)
    if not ask.stream:
        async with admission:
            relayed = await relay_whole(request, router, ask.model, payload, "/v1/responses", admission, started,
                                        ROUTE)
            if relayed is None:
                return Response(status_code=CLIENT_GONE)
            response, waited = relayed
            if 200 <= response.status_code < 300:  # else the process's own error, in OpenAI's shape
                response = await _completed(router, ask, who.name, inputs, bytes(response.body))
            return _measured(router, response, ask.model, started, waited, ROUTE)
    response = await _passthrough(request, router, ask.model, payload, "/v1/responses", admission, started,
                                  stream=True, route=ROUTE)
    if 200 <= response.status_code < 300:
        response.body_iterator = _fixed(router, ask, who.name, inputs, response.body_iterator)
    return response


async def _completed(router: Router, ask: ResponsesRequest, owner: str, inputs: list[dict[str, Any]],
                     body: bytes) -> Response:
    """A process's Response object completed where the SDKs need more than it writes, and stored; a body that is
    no Response object is the member's failure (502), never the router's (a 500)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.setdefault("output", []), list):
        return error_response(502, f"model {ask.model} answered /v1/responses with something other than a Response "
                              "object", "member_error")
    complete_response(doc, ask)
    await _store(router, ask, owner, str(doc.get("id")), inputs, doc["output"])
    return JSONResponse(doc)


async def _fixed(router: Router, ask: ResponsesRequest, owner: str, inputs: list[dict[str, Any]],
                 chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """llama-server's Responses stream, event by event, as the SDKs read it (`StreamFixer`); the completed
    response is stored before it is sent."""
    fixer = StreamFixer(ask)
    pending = b""
    stored = False
    try:
        async for chunk in chunks:
            pending += chunk if isinstance(chunk, bytes) else str(chunk).encode()
            found, pending = events_of(pending)
            out: list[bytes] = []
            for data in found:
                out += fixer.fix(data)
                if fixer.final is not None and not stored:
                    stored = True
                    await _store(router, ask, owner, str(fixer.final.get("id")), inputs,
                                 fixer.final.get("output") or [])
            if out:
                yield b"".join(out)
        if fixer.final is None and not fixer.failed:  # the process's stream broke off
            yield b"".join(fixer.number(e) for e in fixer.failure("the member's stream ended before its response "
                                                                  "completed", "member_error"))
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


@routes.post("/v1/responses/input_tokens", response_model=None, openapi_extra={"requestBody": REQUEST_SCHEMA})
async def input_tokens(request: Request, router: Current, who: Chat) -> Response:
    """How many tokens the input is: a model's process counts it; a council's members' tokenizers (and their own
    system prompts) differ, so each distinct member is asked and the largest count is the answer."""
    started = time.perf_counter()
    body, ask, engine, history = await _read(request, router, who)
    if engine is None:
        check_media(router, ask.model, ask.has_media, body, history)
        payload = {k: v for k, v in for_model(body, history).items() if k not in ("stream", "stream_options")}
        return await _passthrough(request, router, ask.model, json.dumps(payload).encode(),
                                  "/v1/responses/input_tokens",
                                  await router.limits.admit(who, ask.model), started, route="input_tokens")
    # Checked before admission: a refused body holds no place in the limits.
    council = as_council_request(router, to_chat(ask, body, history), checked=False)  # counting needs no more
    admission = await router.limits.admit(who, ask.model)
    async with admission:
        asked = time.perf_counter()
        members = await _count(router, engine, council)
        waited = time.perf_counter() - asked
    doc = {"object": "response.input_tokens", "input_tokens": max(m["input_tokens"] for m in members),
           "council": {"council": engine.name, "members": members}}
    return _measured(router, JSONResponse(doc), ask.model, started, waited, "input_tokens")


async def _count(router: Router, engine: CouncilEngine, council: CouncilRequest) -> list[dict[str, Any]]:
    """Each seat's prompt length as a process of its model counts it (`/v1/chat/completions/input_tokens`, the
    body that seat is sent: its tool instructions and its own system prompt in it); seats with the same
    model and body are counted once. Remote members are left out."""
    asked: dict[tuple[str, bytes], asyncio.Future[int]] = {}
    seats: list[tuple[str, str, asyncio.Future[int]]] = []
    body_of = engine.seat_bodies(council, engine.toolbox(council))  # each with its member's tool instructions
    for seat in engine.seats:
        client = router.passthrough_client(seat.model)
        if client is None:
            continue
        payload = {k: v for k, v in member_payload(body_of(seat), seat.sampling).items()
                   if k not in ("stream", "stream_options")}
        raw = json.dumps(payload).encode()
        if (seat.model, raw) not in asked:
            counted = client.relay(raw, "/v1/chat/completions/input_tokens")
            asked[seat.model, raw] = asyncio.ensure_future(_tokens(counted))
        seats.append((seat.name, seat.model, asked[seat.model, raw]))
    if not seats:
        raise ApiError(503, f"no ready local member of {engine.name} can count tokens", "no_ready_member")
    await asyncio.gather(*asked.values())
    return [{"name": name, "model": model, "input_tokens": future.result()} for name, model, future in seats]


async def _tokens(relayed: Any) -> int:
    answer = await relayed
    return counted_tokens(answer.status, answer.body)
