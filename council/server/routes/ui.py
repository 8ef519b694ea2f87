"""GET /ui: the dashboard, one page of static files shipped with the package (no build step, no network).

The page holds no data: it reads `GET /admin/events` (and the chat API) with the key the operator gives it.
`GET /ui/auth` tells it, without a key, whether to ask for one.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from council.server.deps import current_router
from council.server.errors import ApiError
from council.server.router import Router

routes = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = resources.files("council.server") / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Same-origin only: the page may load nothing from elsewhere (it must work offline anyway).
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")


def _asset(name: str) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    path = STATIC / name
    if "/" in name or name.startswith(".") or suffix not in TYPES or not path.is_file():
        raise ApiError(404, f"no dashboard file {name!r}", "not_found")
    return Response(path.read_bytes(), media_type=TYPES[suffix],
                    headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                             "X-Content-Type-Options": "nosniff"})


@routes.get("")
async def page() -> Response:
    return _asset("index.html")


@routes.get("/auth")
async def auth(router: Annotated[Router, Depends(current_router)]) -> dict[str, bool]:
    return {"keys": router.keys.enabled}


@routes.get("/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
