"""POST /v1/chat/completions (a council answers by vote, a model is relayed) and POST /v1/completions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from council.errors import CouncilError
from council.server.deps import caller
from council.server.errors import (
    CLIENT_GONE,
    MODEL,
    OVERHEAD_HEADER,
    TYPES,
    WAITED,
    ApiError,
    internal_error,
    status_of,
)
from council.server.limits import Admission
from council.server.requests import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    ToolChoiceFunction,
    parse_json,
    validate_body,
)
from council.server.router import Router
from council.server.routes.passthrough import KEEPALIVE, KEEPALIVE_S, HeldStream, once, relay
from council.voting.engine import CouncilAnswer, CouncilEngine
from council.voting.request import CouncilRequest, dumps, for_members

WATCH_AFTER_S = 0.2  # a non-streamed council request watches for its client's disconnect after this long
T = TypeVar("T")
routes = APIRouter()
log = logging.getLogger("council.server.chat")

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


async def read_body(request: Request, router: Router) -> tuple[bytes, Any]:
    """The raw body and its JSON, within `server.max_body`. From here on the request is counted (its metrics'
    `model`) under the council or model its `model` names, a refusal of its other fields included, where this
    router serves one by that name; any other name is `-`, as a body that cannot be read is, so clients cannot
    add label values."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BadRequest(f"a body sent with Content-Encoding {encoding!r} cannot be read here: send plain JSON",
                         "unsupported_encoding")
    raw = await read_raw(request, router.policy.server.max_body, router.policy.server.body_timeout)
    body = parse_json(raw)
    named = body.get("model") if isinstance(body, dict) else None
    if isinstance(named, str) and (named in router.engines or named in router.policy.models):
        setattr(request.state, MODEL, named)
    return raw, body


async def read_raw(request: Request, limit: int, within: float) -> bytes:
    """The raw body, 413 past `limit` bytes, 408 if it has not all arrived `within` seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
    try:
        async with asyncio.timeout(within):
            raw = await _body(request, limit, bool(declared))
    except TimeoutError:  # a body sent in part, then nothing: its socket and task were held for good
        raise ApiError(408, f"the request body did not arrive within {within:g} s (server.body_timeout)",
                       "body_timeout", {"Connection": "close"}) from None
    if len(raw) > limit:
        raise ApiError(413, f"request body over {limit} bytes", "body_too_large")
    return raw


async def _body(request: Request, limit: int, declared: bool) -> bytes:
    if declared:
        return await request.body()  # the server reads no more than it declared
    # Chunked: counted as it arrives, so a body without end is refused, not held in memory.
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:  # and the connection closes: the rest of the body is neither kept nor read
            raise ApiError(413, f"request body over {limit} bytes", "body_too_large", {"Connection": "close"})
        parts.append(part)
    return b"".join(parts)


def completion_body(answer: CouncilAnswer, created: int, logprobs: bool = False) -> dict[str, Any]:
    message = answer.message
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": answer.finish_reason}
    if logprobs and answer.logprobs is not None:
        choice["logprobs"] = answer.logprobs
    return {"id": answer.id, "object": "chat.completion", "created": created, "model": answer.council,
            "choices": [choice], "usage": answer.usage(), "council": answer.council_json()}


def _sse(data: Any) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def _json(doc: Any) -> Response:
    """A JSON response rendered by orjson (Starlette's JSONResponse renders with the standard library's json, and
    fails on a lone surrogate in a model's arguments), the standard library only for what orjson refuses."""
    return Response(dumps(doc), media_type="application/json")


def _target(router: Router, model: str) -> CouncilEngine | None:
    """The council engine `model` names, None for a model (passthrough), 404 for neither; a council of the policy
    that is not running here (refused at start: its slots leased elsewhere, Redis away, it does not fit) is 503
    with the reason `/readyz` gives, where it was 404 "unknown model", which clients never retry."""
    engine = router.engines.get(model)
    if engine is None and model in router.policy.councils:
        why = router.refused.get(model) or router.lost.get(model) or "it is not running on this router"
        raise ApiError(503, f"council {model} is not running: {why}", "council_not_running")
    if engine is None and model not in router.policy.models:
        known = sorted([*router.engines, *router.policy.models])
        raise ApiError(404, f"unknown model {model!r}; known: {', '.join(known)}", "model_not_found")
    return engine


def check_media(router: Router, model: str, has_media: bool, body: Any = None, history: Sequence[Any] = ()) -> None:
    """Image or audio parts go only where every model behind `model` can read them, and (unless
    `server.fetch_media`) only inline: the one rule and message of chat, messages and responses (each API's error
    envelope is `errors.shaped_error`'s). `body`: the request's JSON, where media given by URL is looked for;
    `history`: a stored conversation it continues, sent along (its media, once allowed, may not be now)."""
    lacking = router.text_only(model) if has_media else []
    if not lacking:
        if not router.policy.server.fetch_media and (has_media or history) and router.local_models(model) and (
                urls := [*(remote_media(body) if has_media else []), *remote_media(list(history))]):
            # llama-server fetches an image URL itself, from the member's host: a chat key could make it read
            # cloud metadata or an internal service. (A remote provider fetches it on its own side.)
            raise BadRequest(f"media given by URL ({urls[0][:100]}): a member would fetch it from its host, whatever "
                             "address a client names; send it inline (a `data:` URL), or set `server.fetch_media: "
                             "true`", "remote_media")
        return
    if model not in router.engines:
        who = "it has"
    else:
        who = f"its model {lacking[0]} has" if len(lacking) == 1 else f"its models {', '.join(lacking)} have"
    raise BadRequest(f"{model} is text-only: {who} no vision or audio projector (`--mmproj` in the model's `args`); "
                     "send text content", "unsupported_content")


def remote_media(body: Any) -> list[str]:
    """The media URLs in a request of any API that are not inline (`data:`): chat's and Responses' `image_url`,
    Anthropic's `{"type": "url"}` image source."""
    found: list[str] = []
    todo = [body]
    while todo:
        item = todo.pop()
        if isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, dict):
            url = item.get("image_url") if item.get("type") in ("image_url", "input_image") else None
            url = url.get("url") if isinstance(url, dict) else url
            source = item.get("source") if item.get("type") == "image" else None
            if isinstance(source, dict) and source.get("type") == "url":
                url = source.get("url")
            if isinstance(url, str) and not url.lstrip().lower().startswith("data:"):
                found.append(url)
            todo.extend(v for v in item.values() if isinstance(v, dict | list))
    return found


def _check_council_request(router: Router, chat: ChatRequest, body: Any) -> None:
    if chat.n not in (None, 1):
        raise BadRequest("`n` other than 1 is not supported: a council already asks several models", "invalid_n")
    check_media(router, chat.model, chat.has_media, body)


def as_council_request(router: Router, chat_body: dict[str, Any], *, checked: bool = True,
                       owner: str | None = None) -> CouncilRequest:
    """Another API's request translated to chat (`chat_body`): validated as chat and read as the vote needs it;
    `checked`: also refused where a council cannot answer it (`n`, media its members cannot read); `owner`: the
    caller's key name, which the ballot keeps."""
    chat = validate_body(chat_body, ChatRequest)
    assert isinstance(chat, ChatRequest)
    if checked:
        _check_council_request(router, chat, chat_body)
    return chat.council_request(chat_body, owner)


@routes.post("/v1/chat/completions", response_model=None, openapi_extra={"requestBody": CHAT_REQUEST_SCHEMA})
async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    router, who = caller(request, "chat")
    raw, body = await read_body(request, router)
    chat = validate_body(body, ChatRequest)
    assert isinstance(chat, ChatRequest)
    engine = _target(router, chat.model)
    if engine is not None:
        _check_council_request(router, chat, body)
    else:
        check_media(router, chat.model, chat.has_media, body)
    admission = await router.limits.admit(who, chat.model)
    if engine is None:
        if isinstance(chat.tool_choice, ToolChoiceFunction):
            # llama-server reads `tool_choice` only as a string (an object quietly becomes `auto`): the model gets
            # the named tool alone, required, as a council's members do. Any other body is relayed as it came.
            raw = dumps(for_members(body))
        return await _passthrough(request, router, chat.model, raw, "/v1/chat/completions", admission, started,
                                  stream=bool(chat.stream), width=chat.n or 1)
    # What the vote needs, once: question, options, members' payload, and whose ballot it will be.
    council = chat.council_request(body, who.name)
    if chat.stream:
        return stream_council(router, engine, council, admission, started)
    async with admission:
        asked = await ask_council(request, router, engine, council, started)
        if asked is None:
            return Response(status_code=CLIENT_GONE)
        answer, waited = asked
        response = _json(completion_body(answer, int(time.time()), logprobs=council.logprobs))
        return _measured(router, response, chat.model, started, waited)


async def ask_council(request: Request, router: Router, engine: CouncilEngine, council: CouncilRequest,
                      started: float, route: str = "chat") -> tuple[CouncilAnswer, float] | None:
    """A non-streamed council answer, whatever API asked (chat, Anthropic, Responses): recorded by the router
    (metrics, history, ballot, events) with the seconds spent waiting on members; None when the client went away
    first (its members were cancelled, nobody reads an answer; counted as `CLIENT_GONE`)."""
    asked = time.perf_counter()
    try:
        answer = await _unless_disconnected(request, engine.ask(council))
    except CouncilError:
        setattr(request.state, WAITED, time.perf_counter() - asked)  # the error's overhead leaves it out
        raise
    waited = time.perf_counter() - asked
    if answer is None:
        router.metrics.observe(route, engine.name, CLIENT_GONE, time.perf_counter() - started, None)
        return None
    await router.answered(answer, council, waited)
    return answer, waited


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is read by now: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when the client disconnects first: `work` is then cancelled (a council's member
    requests close, so their llama-server slots free at once; a cancel is not the members' failure).

    Watching costs a task, so it starts only once `work` has run `WATCH_AFTER_S`: a quick answer pays for a timer
    alone, and a client that leaves a long one is noticed within that time."""
    current = asyncio.current_task()
    assert current is not None
    watch: asyncio.Task[None] | None = None
    finished = gone = False

    def client_gone(task: asyncio.Task[None]) -> None:
        nonlocal gone
        if not finished and not task.cancelled() and task.exception() is None:
            gone = True
            current.cancel()  # lands in `work`, which closes its member requests on the way out

    def start_watching() -> None:
        nonlocal watch
        watch = asyncio.ensure_future(_disconnected(request))
        watch.add_done_callback(client_gone)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:  # our own cancel, nobody else's (a shutdown goes on)
            return None
        raise
    finally:
        finished = True
        timer.cancel()
        if watch is not None:
            watch.cancel()


@routes.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    """Text completions (editor and agent clients call these), relayed to a model's member."""
    started = time.perf_counter()
    router, who = caller(request, "chat")
    raw, body = await read_body(request, router)
    completion = validate_body(body, CompletionRequest)
    if _target(router, completion.model) is not None:
        raise ApiError(400, f"{completion.model} is a council: councils answer chat completions "
                            "(POST /v1/chat/completions)", "council_needs_chat")
    admission = await router.limits.admit(who, completion.model)
    return await _passthrough(request, router, completion.model, raw, "/v1/completions", admission, started,
                              stream=bool(completion.stream), width=completion.width, route="completions")


async def _passthrough(request: Request, router: Router, model: str, raw: bytes, path: str, admission: Admission,
                       started: float, stream: bool = False, width: int = 1, route: str = "chat") -> Response:
    """Relay to the model, counted under `route`; `width` is the request's `n` (n choices hold n of the process's
    slots and count n against its rate limit)."""
    if stream:
        return await relay_stream(request, router, model, raw, path, admission, started, route, width)
    async with admission:
        relayed = await relay_whole(request, router, model, raw, path, admission, started, route, width)
        if relayed is None:
            return Response(status_code=CLIENT_GONE)
        response, waited = relayed
        return _measured(router, response, model, started, waited, route)


async def relay_stream(request: Request, router: Router, model: str, raw: bytes, path: str, admission: Admission,
                       started: float, route: str = "chat", width: int = 1) -> Response:
    """A streamed relay, whatever API asked: the member's stream, counted under `route` once it ends. A client
    that goes away before the member's head (while a slot is waited for, or the member reads a long prompt)
    closes the member's request, frees its places in the limits and is counted as `CLIENT_GONE`, as a whole
    relay's is: the stream's own watch on its client starts only with its body."""
    # A stream's headers leave when the member's do: they carry the router's time before it relayed.
    overhead = time.perf_counter() - started

    def ended(status: int) -> None:
        router.metrics.observe(route, model, status, time.perf_counter() - started, overhead)

    try:
        response = await _unless_disconnected(request, relay(router, model, raw, path, True, admission, ended, width))
    except BaseException:
        admission.release()
        raise
    if response is None:
        admission.release()
        ended(CLIENT_GONE)
        return Response(status_code=CLIENT_GONE)
    response.headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
    return response


async def relay_whole(request: Request, router: Router, model: str, raw: bytes, path: str, admission: Admission,
                      started: float, route: str = "chat", width: int = 1) -> tuple[Response, float] | None:
    """A non-streamed relay, whatever API asked: the member's response and the seconds spent waiting on it; None
    when the client went away first (the member's request is closed, freeing its slot; counted as `CLIENT_GONE`
    under `route`), as `ask_council` does for a council."""
    asked = time.perf_counter()
    response = await _unless_disconnected(request, relay(router, model, raw, path, False, admission, width=width))
    if response is None:
        router.metrics.observe(route, model, CLIENT_GONE, time.perf_counter() - started, None)
        return None
    return response, time.perf_counter() - asked


def _measured(router: Router, response: Response, model: str, started: float, waited: float,
              route: str = "chat") -> Response:
    """Stamp the router's own time on the response and count the request (under `route`, the metrics' label)."""
    now = time.perf_counter()
    overhead = now - started - waited
    response.headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
    router.metrics.observe(route, model, response.status_code, now - started, overhead)
    return response


def stream_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The council's message as OpenAI streams one: the role with the text (and the message's other fields, such
    as llama-server's `reasoning_content`, as delta fields ahead of it, where llama-server streams them), then for
    each tool call a delta that opens it (`index`, `id`, `type`, the function's name, empty arguments) and one
    with its arguments, so clients' accumulators (the openai SDK's stream helpers) rebuild the message the
    non-streamed answer has. The answer is whole once the vote is decided: cutting it finer would send more bytes
    and nothing sooner."""
    calls = message.get("tool_calls") or []
    content = message.get("content")
    first: dict[str, Any] = {"role": "assistant"}
    for key, value in message.items():  # the speaker's reasoning, say: the non-streamed message has it
        if key not in ("role", "content", "tool_calls") and value is not None:
            first[key] = value
    first["content"] = (content or None) if calls else content  # null stays null (a reply cut off while thinking)
    deltas = [first]
    for index, call in enumerate(calls):
        fn = call.get("function") or {}
        opening = {"index": index, "id": call.get("id"), "type": call.get("type") or "function",
                   "function": {"name": fn.get("name"), "arguments": ""}}
        if index == 0:
            first["tool_calls"] = [opening]  # as OpenAI does: the role and the first call open together
        else:
            deltas.append({"tool_calls": [opening]})
        arguments = fn.get("arguments")
        if arguments:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
    return deltas


def council_stream(router: Router, engine: CouncilEngine, council: CouncilRequest, admission: Admission,
                   started: float, *, keepalive: bytes, failed: Callable[[CouncilError, int, str], bytes],
                   answered: Callable[[CouncilAnswer, float], AsyncIterator[bytes]], opening: bytes = b"",
                   route: str = "chat") -> HeldStream:
    """A council's answer as a stream, whatever API asked: `opening` at once, `keepalive` every `KEEPALIVE_S`
    while members work, then `answered(answer, overhead_ms)`'s events (the router's own time: the headers left
    before the work was done), or one `failed(error, status, code)`. The router records the answer, the metrics
    count the request under `route`. A client that goes away closes the stream, which cancels the council's
    member requests and releases the admission (also where the body never started)."""
    asked = time.perf_counter()
    task: asyncio.Task[CouncilAnswer] | None = None
    status: int = CLIENT_GONE  # until the stream ends otherwise
    waited: float | None = None

    @once
    async def end() -> None:
        if task is not None and not task.done():
            task.cancel()
        admission.release()
        now = time.perf_counter()
        router.metrics.observe(route, engine.name, status, now - started,
                               None if waited is None else now - started - waited)

    async def body() -> AsyncIterator[bytes]:
        nonlocal task, status, waited
        task = asyncio.create_task(engine.ask(council))
        try:
            if opening:
                yield opening
            # `wait` only waits: the task's own exceptions (a TimeoutError among them) are read below, never taken
            # for the keep-alive's timeout.
            while not (await asyncio.wait((task,), timeout=KEEPALIVE_S))[0]:
                yield keepalive
            waited = time.perf_counter() - asked
            try:
                answer = task.result()
            except CouncilError as exc:
                status, code, _ = status_of(exc)
                yield failed(exc, status, code)
                return
            except Exception as exc:  # the router's own fault: the stream ends with the 500 a plain request gets
                log.exception("council %s failed", engine.name)
                status = 500
                yield failed(CouncilError(internal_error(exc)), status, "internal_error")
                return
            try:
                await router.answered(answer, council, waited)
                async for event in answered(answer, round((time.perf_counter() - started - waited) * 1000, 3)):
                    yield event
            except Exception as exc:  # writing the answer failed: the headers are gone, so end as an error event
                log.exception("writing council %s's answer failed", engine.name)
                status = 500
                yield failed(CouncilError(internal_error(exc)), status, "internal_error")
                return
            status = 200
        finally:
            await end()

    return HeldStream(body(), end)


def stream_council(router: Router, engine: CouncilEngine, council: CouncilRequest, admission: Admission,
                   started: float) -> HeldStream:
    """Chat's stream: keep-alive comments, then the winning answer's chunks, usage and the council object (with
    `overhead_ms`), or an error chunk; `[DONE]` either way."""

    def failed(exc: CouncilError, status: int, code: str) -> bytes:
        # The type the same error has unstreamed: a client tells its own mistakes (400s) from the server's by it.
        error = {"message": str(exc), "type": TYPES.get(status, "server_error"), "code": code}
        return _sse({"error": error}) + b"data: [DONE]\n\n"

    async def answered(answer: CouncilAnswer, overhead_ms: float) -> AsyncIterator[bytes]:
        head = {"id": answer.id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": answer.council}
        for n, delta in enumerate(stream_deltas(answer.message)):
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            if n == 0 and council.logprobs and answer.logprobs is not None:
                choice["logprobs"] = answer.logprobs
            yield _sse({**head, "choices": [choice]})
        yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
                    "usage": answer.usage(), "council": {**answer.council_json(), "overhead_ms": overhead_ms}})
        yield b"data: [DONE]\n\n"

    return council_stream(router, engine, council, admission, started, keepalive=KEEPALIVE,
                          failed=failed, answered=answered)


PLAIN = (("/v1/chat/completions", chat_completions), ("/v1/completions", completions))
