"""A member of this host, for routers on other hosts (`state: redis://`); guarded by the shared cluster key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from council.server.deps import current_router
from council.server.errors import ApiError
from council.server.router import Router

routes = APIRouter(include_in_schema=False)


@routes.post("/internal/members/{process:path}/v1/chat/completions", response_model=None)
async def member_call(process: str, request: Request, router: Annotated[Router, Depends(current_router)]) -> Response:
    key = router.registry.cluster_key
    given = request.headers.get("authorization", "").encode()
    if key is None or not hmac.compare_digest(given, f"Bearer {key}".encode()):
        raise ApiError(401, "member calls need the cluster key (server.cluster_key_env)", "invalid_cluster_key")
    client = router.assembly.process_clients.get(process) if router.assembly is not None else None
    local = router.processes.get(process)
    if client is None or local is None or not local.ready:
        raise ApiError(503, f"member {process} is not ready on this host", "no_ready_member")
    relayed = await client.relay(await request.body(), "/v1/chat/completions")
    return Response(content=relayed.body, status_code=relayed.status, media_type=relayed.content_type)
