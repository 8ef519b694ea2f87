"""What route handlers ask FastAPI for: the running router, and the caller with a scope (auth)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from council.server.auth import Principal
from council.server.router import Router

# Both are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
# request (measured with bench/overhead.py: passthrough's added p50 1.18 -> 0.87 ms).


async def current_router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def caller(request: Request, scope: str) -> tuple[Router, Principal]:
    """The running router and the caller with `scope`, for the chat routes, which call this first thing rather
    than declaring dependencies: FastAPI's dependency solving is a measurable share of a passthrough's time
    (bench/hotpath.py). Same checks, same errors."""
    router: Router = request.app.state.router
    return router, router.keys.principal(authorization(request), scope)


def authorization(request: Request) -> str | None:
    """The key as `Authorization: Bearer KEY`, or as `x-api-key: KEY` (Anthropic's clients; Claude Code sends
    either) made into one."""
    headers = request.headers
    sent = headers.get("authorization")
    # An empty `Authorization` beside a key in `x-api-key` (a client that fills both headers) is no key sent there.
    if (sent is None or not sent.strip()) and (key := headers.get("x-api-key")):
        return f"Bearer {key}"
    return sent


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that resolves the caller's key (`authorization`) and checks it has `scope` (`chat` or
    `admin`)."""

    async def principal(request: Request) -> Principal:
        return (await current_router(request)).keys.principal(authorization(request), scope)

    return principal
