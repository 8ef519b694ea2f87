"""The operator's view: the slot plan, each member process (and its log's tail), and policy reloads (the
`admin` scope)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.errors import ApiError
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


@routes.get("/members/{name:path}/log")
async def admin_member_log(name: str, router: Current, _: Admin) -> dict[str, Any]:
    """The last lines of a member process's output (its full log is the file `log` in its snapshot)."""
    process = router.processes.get(name)
    if process is None:
        raise ApiError(404, f"no member process {name!r}", "member_not_found")
    return {"name": name, "log": str(process.log_path), "lines": list(process.log_tail)}


@routes.post("/reload")
async def admin_reload(router: Current, _: Admin) -> dict[str, Any]:
    return {"reloaded": True, **await router.reload()}
