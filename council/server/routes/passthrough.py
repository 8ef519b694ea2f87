"""Relaying a request to one process that serves a model (`model` names a model, not a council), here or, for a
`--role router`, on the host the registry lists."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi.responses import Response, StreamingResponse

from council.server.errors import ApiError
from council.server.limits import Admission
from council.server.router import Router
from council.voting.client import HttpMemberClient


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

    return await relay_through(client, payload, path, stream, done, width)


async def relay_through(client: HttpMemberClient, payload: bytes, path: str, stream: bool,
                        done: Callable[[int], None] = lambda _status: None, width: int = 1) -> Response:
    """One call relayed as it came back: whole, or (streaming) chunk by chunk, holding the process's slot and
    its accounting until the last chunk; `done` is told the status once the stream is over."""
    if not stream:
        relayed = await client.relay(payload, path, width)
        return Response(content=relayed.body, status_code=relayed.status, media_type=relayed.content_type)
    opened = client.stream(payload, path, width)
    head, chunks = await opened.__aenter__()

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            try:
                await opened.__aexit__(None, None, None)
            finally:  # also when the close itself is cancelled (the client went away)
                done(head.status)

    return StreamingResponse(body(), status_code=head.status, media_type=head.content_type)
