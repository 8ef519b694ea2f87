"""The HTTP boundary of errors: every council error becomes the OpenAI error shape with a fitting status.

Lower layers raise their own `CouncilError`s and know nothing of HTTP; this table is the one place that
gives each kind its status and code (after httpx, whose one exception root is mapped at the boundary).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from council.cluster.store import StateError
from council.errors import CouncilError
from council.server.apis import anthropic
from council.server.auth import AuthError, Forbidden, MissingKey
from council.server.limits import Limited
from council.server.requests import BadRequest
from council.server.router import ReloadError
from council.voting.client import MemberFailed, MemberUnavailable
from council.voting.engine import NoValidAnswer, QuorumError, RequestRejected

OVERHEAD_HEADER = "x-council-overhead-ms"
CLIENT_GONE = 499  # what the metrics count for a client that went away before its answer (nginx's code)
# Keys in a request's ASGI scope state: when it arrived (`app`), the model it named once that is known, and
# how long it waited for members before it failed (`routes.chat`).
STARTED, MODEL, WAITED = "council_started", "council_model", "council_waited"
# The routes whose requests the metrics count (errors too), by the route label they are counted under.
COUNTED_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/messages": "messages",
                 "/v1/messages/count_tokens": "count_tokens", "/v1/responses": "responses",
                 "/v1/responses/input_tokens": "input_tokens"}

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 502: "server_error", 503: "server_error",
         500: "server_error"}


class ApiError(CouncilError):
    """An answer the HTTP layer itself decides (unknown model, body too large, ...)."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": {"message": message, "type": TYPES.get(status, "server_error"), "code": code}, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def anthropic_client(request: Request) -> bool:
    """A request in the Anthropic API's words: on its own routes, or sent with its `anthropic-version` header (the
    SDKs send it), or to `/v1/models` with an `x-api-key` alone."""
    headers, path = request.headers, request.url.path
    return (path in anthropic.PATHS or "anthropic-version" in headers
            or (path.startswith("/v1/models") and "x-api-key" in headers and "authorization" not in headers))


def shaped_error(request: Request, status: int, message: str, code: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> JSONResponse:
    """An error in the caller's API's shape: Anthropic's (`{"type": "error", "error": {"type", "message"}}`) for
    Anthropic clients, else OpenAI's; the same status either way."""
    if anthropic_client(request):
        return JSONResponse({**anthropic.error_body(status, message, code), **extra}, status_code=status,
                            headers=headers)
    return error_response(status, message, code, headers, **extra)


# Most specific kind first; a code of None means the error carries its own (`exc.code`).
STATUSES: tuple[tuple[type[CouncilError], int, str | None], ...] = (
    (BadRequest, 400, None),
    (RequestRejected, 400, "rejected_by_members"),
    (ReloadError, 400, "invalid_policy"),
    (MissingKey, 401, None),
    (Forbidden, 403, None),
    (AuthError, 401, None),
    (Limited, 429, None),
    (MemberFailed, 502, "member_error"),
    (NoValidAnswer, 502, "no_valid_answer"),
    (QuorumError, 503, "quorum_not_met"),
    (MemberUnavailable, 503, "no_ready_member"),
    (StateError, 503, "state_unavailable"),
)


def internal_error(exc: BaseException) -> str:
    """What a user is told of the router's own fault (a 500, or a stream's error event): its kind, not its text."""
    return f"internal error ({type(exc).__name__}); see the router's log"


def status_of(exc: CouncilError) -> tuple[int, str, dict[str, str]]:
    """Status, code and headers for a council error."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.headers
    status, code = next(((s, c or getattr(exc, "code", "error")) for kind, s, c in STATUSES if isinstance(exc, kind)),
                        (500, "internal_error"))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, Limited):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, NoValidAnswer) and not exc.retry:
        # The openai and anthropic SDKs retry a 5xx twice unless told: the same seats would answer alike.
        headers["x-should-retry"] = "false"
    return status, code, headers


def finish_error(request: Request, response: JSONResponse) -> JSONResponse:
    """An error response carries the router's own time too (`x-council-overhead-ms`: since the request arrived,
    less any wait for members), and one on a chat route is counted in the request metrics."""
    state = request.scope.get("state") or {}
    started = state.get(STARTED)
    if started is None:
        return response
    now = time.perf_counter()
    overhead = now - started - state.get(WAITED, 0.0)
    response.headers[OVERHEAD_HEADER] = f"{overhead * 1000:.3f}"
    router = getattr(request.app.state, "router", None)
    route = COUNTED_PATHS.get(request.scope.get("path", ""))
    if route is not None and router is not None:
        router.metrics.observe(route, state.get(MODEL, "-"), response.status_code, now - started, overhead)
    return response


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CouncilError)
    async def _council_error(request: Request, exc: CouncilError) -> JSONResponse:
        status, code, headers = status_of(exc)
        extra = {"problems": exc.problems} if isinstance(exc, ReloadError) else {}
        message = "the new policy is refused; the old one keeps running" if isinstance(exc, ReloadError) else str(exc)
        return finish_error(request, shaped_error(request, status, message, code, headers or None, **extra))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return finish_error(request, shaped_error(request, exc.status_code, str(exc.detail),
                                                  "not_found" if exc.status_code == 404 else "http_error"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return finish_error(request, shaped_error(request, 500, internal_error(exc), "internal_error"))
