"""The councils and models this router answers, and recent ballots."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from council.cluster.store import StateError
from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.errors import ApiError
from council.server.router import Router

routes = APIRouter()
Chat = Annotated[Principal, Depends(require("chat"))]


@routes.get("/v1/models")
async def models(router: Annotated[Router, Depends(current_router)], _: Chat) -> dict[str, Any]:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "council", "kind": "council",
             "members": [m.name for m in engine.seats]} for name, engine in router.engines.items()]
    data += [{"id": name, "object": "model", "created": 0, "owned_by": "council", "kind": "model"}
             for name in router.policy.models]
    return {"object": "list", "data": data}


@routes.get("/v1/ballots/{ballot_id}")
async def ballot(ballot_id: str, router: Annotated[Router, Depends(current_router)], _: Chat) -> dict[str, Any]:
    try:
        found = await router.ballot(ballot_id)
    except StateError as exc:
        raise ApiError(503, f"ballot {ballot_id!r} is not on this router and {exc}", "state_unavailable") from None
    if found is None:
        raise ApiError(404, f"no recent ballot {ballot_id!r} (the router keeps the last {router.ballots.capacity})",
                       "ballot_not_found")
    return found
