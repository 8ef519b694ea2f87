"""The operator's view: the slot plan, each member process, and policy reloads (the `admin` scope)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.router import Router

routes = APIRouter(prefix="/admin")
Admin = Annotated[Principal, Depends(require("admin"))]
Current = Annotated[Router, Depends(current_router)]


@routes.get("/slots")
async def admin_slots(router: Current, _: Admin) -> dict[str, Any]:
    return router.plan.to_json()


@routes.get("/members")
async def admin_members(router: Current, _: Admin) -> dict[str, Any]:
    return {"members": [m.snapshot() for m in router.processes.values()]}


@routes.post("/reload")
async def admin_reload(router: Current, _: Admin) -> dict[str, Any]:
    return {"reloaded": True, **await router.reload()}
