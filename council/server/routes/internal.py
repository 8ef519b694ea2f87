"""A process of this host, for routers on other hosts (`state: redis://`); guarded by the shared cluster key.
Council calls, a model's chat completions (streamed too), text completions, Anthropic messages, Responses and
their token counts all come through here."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from council.server.deps import current_router
from council.server.errors import ApiError
from council.server.requests import completion_width
from council.server.router import Router
from council.server.routes.chat import CLIENT_GONE, _unless_disconnected, read_raw
from council.server.routes.passthrough import relay_through

routes = APIRouter(include_in_schema=False)
Current = Annotated[Router, Depends(current_router)]
# A call's body may be this many times `server.max_body`: a council's call to a member is the body its client sent
# plus what the council adds (a member's system prompt, the tool instructions, which under `listed` write the
# tools out again), so a body the router's public route took can be larger here.
BODY_HEADROOM = 4


# Every path a process serves that a router on another host relays to it (messages, responses and token counts
# for models asked through those APIs, and for a council's `input_tokens`).
RELAYED = ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses",
           "/v1/responses/input_tokens", "/v1/chat/completions/input_tokens")


def _relaying(path: str) -> Callable[..., Awaitable[Response]]:
    async def call(process: str, request: Request, router: Current) -> Response:
        return await process_call(process, path, request, router)

    return call


for _path in RELAYED:
    # Process names hold a `/` (`trio/0`): the name is everything before the relayed path.
    routes.add_api_route(f"/internal/members/{{process:path}}{_path}", _relaying(_path), methods=["POST"],
                         response_model=None)


async def process_call(process: str, path: str, request: Request, router: Router) -> Response:
    key = router.registry.cluster_key
    given = request.headers.get("authorization", "").encode()
    if key is None or not hmac.compare_digest(given, f"Bearer {key}".encode()):
        raise ApiError(401, "member calls need the cluster key (server.cluster_key_env)", "invalid_cluster_key")
    client = router.assembly.ready_client(process) if router.assembly is not None else None
    if client is None:
        raise ApiError(503, f"member {process} is not ready on this host", "no_ready_member")
    raw = await read_raw(request, BODY_HEADROOM * router.policy.server.max_body, router.policy.server.body_timeout)
    try:
        doc = json.loads(raw)
        stream, n, prompt = doc.get("stream") is True, doc.get("n"), doc.get("prompt")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: JSON nested past the decoder's stack
        stream, n, prompt = False, None, None  # the process answers a broken body itself
    width = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
    if path == "/v1/completions":  # n tasks per prompt of a list, as the public route holds them
        width = completion_width(prompt, width)
    # Starlette cancels no plain route when its caller hangs up: a router that dropped the call (an early stop, a
    # client that left its council) would leave the member generating, its slot held, to the end; a stream's body
    # closes it once begun, so a stream is watched until the member's head.
    relayed = await _unless_disconnected(request, relay_through(client, raw, path, stream, width=width))
    return Response(status_code=CLIENT_GONE) if relayed is None else relayed
