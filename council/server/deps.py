"""What route handlers ask FastAPI for: the running router, and the caller with a scope (auth)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from council.server.auth import Principal
from council.server.router import Router


def current_router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def require(scope: str) -> Callable[[Request], Principal]:
    """A dependency that resolves the caller's bearer key and checks it has `scope` (`chat` or `admin`)."""

    def principal(request: Request) -> Principal:
        return current_router(request).keys.principal(request.headers.get("authorization"), scope)

    return principal
