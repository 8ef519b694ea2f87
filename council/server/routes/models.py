"""The councils and models this router answers, and recent ballots."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from council.cluster.store import StateError
from council.server.auth import Principal, may_read
from council.server.deps import current_router, require
from council.server.errors import ApiError, anthropic_client
from council.server.router import Router

routes = APIRouter()
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]


def _entries(router: Router, anthropic: bool) -> list[dict[str, Any]]:
    """Every council and model, in OpenAI's shape or (`anthropic`) in Anthropic's, with council's own `kind` and
    `members` either way."""
    listed: list[tuple[str, dict[str, Any]]] = [(name, {"kind": "council", "members": [m.name for m in engine.seats]})
                                                for name, engine in router.engines.items()]
    listed += [(name, {"kind": "model"}) for name in router.policy.models]
    if anthropic:
        return [{"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z", **own}
                for name, own in listed]
    return [{"id": name, "object": "model", "created": 0, "owned_by": "council", **own} for name, own in listed]


@routes.get("/v1/models")
async def models(request: Request, router: Current, _: Chat) -> dict[str, Any]:
    """OpenAI's list, or Anthropic's (`data`, `has_more`, `first_id`, `last_id`) for its clients."""
    if anthropic_client(request):
        data = _entries(router, True)
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
    return {"object": "list", "data": _entries(router, False)}


# `:path`: policy names may hold a `/` (`org/m`), which a plain parameter does not match
@routes.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request, router: Current, _: Chat) -> dict[str, Any]:
    found = next((m for m in _entries(router, anthropic_client(request)) if m["id"] == model_id), None)
    if found is None:
        known = sorted([*router.engines, *router.policy.models])
        raise ApiError(404, f"unknown model {model_id!r}; known: {', '.join(known)}", "model_not_found")
    return found


@routes.get("/v1/ballots/{ballot_id}")
async def ballot(ballot_id: str, router: Current, who: Chat) -> dict[str, Any]:
    """The ballot, to the key that asked it (or the admin scope); anyone else's is answered as unknown, so its
    existence is not told either."""
    try:
        found = await router.ballot(ballot_id)
    except StateError as exc:
        raise ApiError(503, f"ballot {ballot_id!r} is not on this router and {exc}", "state_unavailable") from None
    if found is None or not may_read(who, found):
        raise ApiError(404, f"no recent ballot {ballot_id!r} (the router keeps the last {router.ballots.capacity})",
                       "ballot_not_found")
    return found
