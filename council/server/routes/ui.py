"""GET /ui: the dashboard, one page of static files shipped with the package (no build step, no network).

The page holds no data: it reads `GET /admin/events`, `GET /admin/history` (and the chat API) with the key the
operator gives it. `GET /ui/auth` tells it, without a key, whether to ask for one. `GET /ui/vendor/NAME` serves
the one library it uses, uPlot (package data in `council/assets/uplot`, with its license), and `GET /ui/shared/NAME`
what it shares with the `council eval --html` page (`council/assets/palette.js`: the colours).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from council.server.deps import current_router
from council.server.errors import ApiError
from council.server.router import Router

routes = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = resources.files("council.server") / "static"
VENDOR = resources.files("council") / "assets" / "uplot"
SHARED = resources.files("council") / "assets"  # its files only: uplot/ is a folder, not served from here
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", "": "text/plain; charset=utf-8"}
# Same-origin only: the page may load nothing from elsewhere (it must work offline anyway).
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'")


def _asset(name: str, request: Request, folder: Traversable = STATIC) -> Response:
    suffix = name[name.rfind("."):] if "." in name else ""
    path = folder / name
    if "/" in name or name.startswith(".") or suffix not in TYPES or not path.is_file():
        raise ApiError(404, f"no dashboard file {name!r}", "not_found")
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
               "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):  # the page's weight is mostly uPlot: ~3x smaller
        return Response(_gzipped(path), media_type=TYPES[suffix], headers={**headers, "Content-Encoding": "gzip"})
    return Response(path.read_bytes(), media_type=TYPES[suffix], headers=headers)


@functools.cache
def _gzipped(path: Traversable) -> bytes:
    """Package data does not change while the router runs: each file is compressed once."""
    return gzip.compress(path.read_bytes(), mtime=0)


@routes.get("")
async def page(request: Request) -> Response:
    return _asset("index.html", request)


@routes.get("/auth")
async def auth(router: Annotated[Router, Depends(current_router)]) -> dict[str, bool]:
    return {"keys": router.keys.enabled}


@routes.get("/vendor/{name}")
async def vendor(name: str, request: Request) -> Response:
    return _asset(name, request, VENDOR)


@routes.get("/shared/{name}")
async def shared(name: str, request: Request) -> Response:
    return _asset(name, request, SHARED)


@routes.get("/{name}")
async def asset(name: str, request: Request) -> Response:
    return _asset(name, request)
