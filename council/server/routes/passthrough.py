"""Relaying a request to one process that serves a model (`model` names a model, not a council), here or, for a
`--role router`, on the host the registry lists. With `recover_tool_calls` on the model, a reply with `tools` whose
text is nothing but valid calls is returned as those calls (README "Agents" / "Tool calls")."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from council.server.errors import CLIENT_GONE, ApiError, internal_error
from council.server.limits import Admission
from council.server.router import Router
from council.voting.client import HttpMemberClient, MemberFailed
from council.voting.recovery import could_be_calls
from council.voting.tools import Toolbox, recovered_calls

# How often a stream whose answer is held back (a council voting, a reply that may be calls) sends a comment: a
# proxy or client that times out an idle connection keeps it, and SDKs skip comments.
KEEPALIVE_S = 2.0
KEEPALIVE = b": keep-alive\n\n"

log = logging.getLogger("council.server.passthrough")


class HeldStream(StreamingResponse):
    """A stream whose body holds what its request took (its admission, a member's request) and gives it back in its
    `finally`, which runs only once the body has started: Starlette cancels the response's task wherever it waits,
    the head's `send` among them (a client gone while the write is paused), and a body that never started held all
    of it for good (a generator never started has nothing to run when collected). `end` gives it back however the
    response ended; the body calls it too, and only the first call acts."""

    def __init__(self, content: AsyncIterator[bytes], end: Callable[[], Awaitable[None]], *, status_code: int = 200,
                 media_type: str = "text/event-stream") -> None:
        super().__init__(content, status_code=status_code, media_type=media_type)
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.end()


def once(act: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`act` done by the first call alone: a held stream's body and its response both end it."""
    acted = False

    async def first() -> None:
        nonlocal acted
        if not acted:
            acted = True
            await act()

    return first


async def relay(router: Router, model: str, payload: bytes, path: str, stream: bool,
                admission: Admission, ended: Callable[[int], None] | None = None, width: int = 1) -> Response:
    """Send `payload` to the least busy ready process serving `model`, through the same client (slots, rate
    limit, watchdog accounting) its council calls use; token by token when streaming (then `ended` is told the
    status once the stream is over)."""
    client = router.passthrough_client(model)
    if client is None:
        if router.policy.models[model].remote is not None:
            raise ApiError(400, f"{model} is a remote model: call its provider directly", "remote_model")
        raise ApiError(503, f"no ready member serves {model}", "no_ready_member")

    def done(status: int) -> None:
        admission.release()
        if ended is not None:
            ended(status)

    recover = router.policy.models[model].recover_tool_calls and path == "/v1/chat/completions"
    return await relay_through(client, payload, path, stream, done, width,
                               toolbox=_toolbox(payload) if recover else None)


def _toolbox(payload: bytes) -> Toolbox | None:
    """The request's declared tools, when a reply may be calls written as text."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    tools = body.get("tools") if isinstance(body, dict) else None
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    # `tool_choice` as the council reads it: a named function (or `required`) holds the recovered calls to it.
    return Toolbox(tools, body.get("tool_choice"), parallel=body.get("parallel_tool_calls") is not False) or None


async def relay_through(client: HttpMemberClient, payload: bytes, path: str, stream: bool,
                        done: Callable[[int], None] = lambda _status: None, width: int = 1,
                        toolbox: Toolbox | None = None) -> Response:
    """One call relayed as it came back: whole, or (streaming) chunk by chunk, holding the process's slot and
    its accounting until the last chunk; `done` is told the status once the stream is over. With a `toolbox`,
    calls written as text become tool calls (a stream of one choice is held back while it may be calls)."""
    if not stream:
        relayed = await client.relay(payload, path, width)
        body = relayed.body
        if toolbox is not None and 200 <= relayed.status < 300:
            body = _recover_body(body, toolbox)
        return Response(content=body, status_code=relayed.status, media_type=relayed.content_type)
    opened = client.stream(payload, path, width)
    head, chunks = await opened.__aenter__()
    if toolbox is not None and width == 1 and 200 <= head.status < 300:
        chunks = _recovering(chunks, toolbox)

    status = CLIENT_GONE  # what the metrics count until the stream ends otherwise: the client went away

    @once
    async def end() -> None:
        try:
            await opened.__aexit__(None, None, None)
        finally:  # also when the close itself is cancelled (the client went away)
            done(status)

    async def body() -> AsyncIterator[bytes]:
        nonlocal status
        try:
            async for chunk in chunks:
                yield chunk
            status = head.status  # the member's, the stream having ended well
        except MemberFailed as exc:  # the headers are gone: the error comes as an event the SDKs raise
            status = 502
            log.warning("%s", exc)
            yield _sse({"error": {"message": str(exc), "type": "server_error", "code": "member_failed"}})
        except Exception as exc:  # the router's own fault (reading the member's stream): a 500, said as an event
            status = 500
            log.exception("relaying a stream failed")
            yield _sse({"error": {"message": internal_error(exc), "type": "server_error", "code": "internal_error"}})
        finally:
            await end()

    return HeldStream(body(), end, status_code=head.status, media_type=head.content_type)


def _recover_body(body: bytes, toolbox: Toolbox) -> bytes:
    """A chat completion whose choices' texts are nothing but valid calls, with those calls as `tool_calls`."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    changed = False
    for choice in (doc.get("choices") or []) if isinstance(doc, dict) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or message.get("tool_calls"):
            continue
        calls = recovered_calls(message.get("content"), toolbox)
        if calls:
            choice["message"] = {**{k: v for k, v in message.items() if k != "content"}, "content": None,
                                 "tool_calls": [c.openai() for c in calls]}
            choice["finish_reason"] = "tool_calls"
            changed = True
    return json.dumps(doc).encode() if changed else body


def _data(event: bytes) -> Any:
    """The JSON of one server-sent event's `data:` line (None for `[DONE]`, comments and anything else)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:])
            except ValueError:
                return None
    return None


async def _recovering(chunks: AsyncIterator[bytes], toolbox: Toolbox,
                      keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[bytes]:
    """A one-choice chat stream, held back while its text may still be nothing but calls: relayed as it came once
    it cannot be (or it makes calls of its own), or, when it ends as valid calls, replayed as OpenAI's tool-call
    chunks (the calls, then its own chunks without their text, closing with `finish_reason: tool_calls`). While it
    is held, a keep-alive comment goes out every `keepalive_s`, as a council's held stream sends them."""
    held: list[bytes] = []
    pending = b""
    text = ""
    holding = True
    quiet_since = time.monotonic()
    async for chunk in chunks:
        if not holding:
            yield chunk
            continue
        if time.monotonic() - quiet_since >= keepalive_s:
            yield KEEPALIVE
            quiet_since = time.monotonic()
        pending += chunk
        while holding and b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            held.append(event + b"\n\n")
            data = _data(event)
            for choice in (data.get("choices") or []) if isinstance(data, dict) else []:
                delta = choice.get("delta") or {}
                if delta.get("tool_calls"):
                    holding = False  # the server's own calls
                text += delta.get("content") or ""
            if not could_be_calls(text):
                holding = False
        if not holding:
            yield b"".join(held) + pending
            held, pending = [], b""
    if not holding:
        return
    calls = recovered_calls(text, toolbox)
    if not calls:
        yield b"".join(held) + pending
        return
    events = [_data(e) for e in held]
    first = next((d for d in events if isinstance(d, dict) and d.get("choices")), None)
    if first is None:
        yield b"".join(held) + pending
        return
    head = {k: v for k, v in first.items() if k not in ("choices", "usage", "timings")}
    deltas = [{"index": i, **c.openai()} for i, c in enumerate(calls)]
    yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None,
                                                            "tool_calls": deltas}, "finish_reason": None}]})
    for raw, data in zip(held, events, strict=True):
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            yield raw  # `[DONE]`, a comment, usage
            continue
        # Each held chunk less the text the calls replaced: its other fields (`reasoning_content`, logprobs) are
        # what the non-streamed reply keeps, and an SDK rebuilds that message from them.
        kept = []
        for c in choices:
            delta = {k: v for k, v in (c.get("delta") or {}).items() if k not in ("role", "content")}
            finish = "tool_calls" if c.get("finish_reason") else None
            if delta or finish or c.get("logprobs"):
                kept.append({**c, "delta": delta, "finish_reason": finish})
        if kept:
            yield _sse({**data, "choices": kept})
    if pending:
        yield pending


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def counted_tokens(status: int, body: bytes) -> int:
    """A process's answer to a count request (`/v1/messages/count_tokens`, `/v1/responses/input_tokens`): its
    `input_tokens`; anything else is an ApiError (`count_failed`: 400 where the process refused the input, else
    502: the member failed), never a 500."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not 200 <= status < 300 or not isinstance(doc, dict) or not isinstance(doc.get("input_tokens"), int):
        error = doc.get("error") if isinstance(doc, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        said = message or (f"it answered {status} without `input_tokens`" if 200 <= status < 300 else status)
        raise ApiError(400 if 400 <= status < 500 else 502, f"a member could not count the input: {said}",
                       "count_failed")
    return int(doc["input_tokens"])
