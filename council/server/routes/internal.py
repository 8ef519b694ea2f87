"""A process of this host, for routers on other hosts (`state: redis://`); guarded by the shared cluster key.
Council calls, a model's chat completions (streamed too), text completions, Anthropic messages, Responses and
their token counts all come through here."""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from council.server.deps import current_router
from council.server.errors import ApiError
from council.server.router import Router
from council.server.routes.passthrough import relay_through

routes = APIRouter(include_in_schema=False)
Current = Annotated[Router, Depends(current_router)]


# Process names hold a `/` (`trio/0`): the name is everything before the relayed path.
@routes.post("/internal/members/{process:path}/v1/chat/completions", response_model=None)
async def chat_call(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/chat/completions", request, router)


@routes.post("/internal/members/{process:path}/v1/completions", response_model=None)
async def completion_call(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/completions", request, router)


@routes.post("/internal/members/{process:path}/v1/messages", response_model=None)
async def messages_call(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/messages", request, router)


@routes.post("/internal/members/{process:path}/v1/messages/count_tokens", response_model=None)
async def count_tokens_call(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/messages/count_tokens", request, router)


# Responses to a model (llama-server serves them), and token counts for a council's `input_tokens`.
@routes.post("/internal/members/{process:path}/v1/responses", response_model=None)
async def responses_call(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/responses", request, router)


@routes.post("/internal/members/{process:path}/v1/responses/input_tokens", response_model=None)
async def responses_count(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/responses/input_tokens", request, router)


@routes.post("/internal/members/{process:path}/v1/chat/completions/input_tokens", response_model=None)
async def chat_count(process: str, request: Request, router: Current) -> Response:
    return await process_call(process, "/v1/chat/completions/input_tokens", request, router)


async def process_call(process: str, path: str, request: Request, router: Router) -> Response:
    key = router.registry.cluster_key
    given = request.headers.get("authorization", "").encode()
    if key is None or not hmac.compare_digest(given, f"Bearer {key}".encode()):
        raise ApiError(401, "member calls need the cluster key (server.cluster_key_env)", "invalid_cluster_key")
    client = router.assembly.ready_client(process) if router.assembly is not None else None
    if client is None:
        raise ApiError(503, f"member {process} is not ready on this host", "no_ready_member")
    raw = await request.body()
    try:
        doc = json.loads(raw)
        stream, n = doc.get("stream") is True, doc.get("n")
    except (ValueError, AttributeError):
        stream, n = False, None  # the process answers a broken body itself
    width = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
    return await relay_through(client, raw, path, stream, width=width)
