"""The HTTP API (README: "`council serve`"), assembled from its route modules: OpenAI-compatible chat completions where
`model` names a council or a model, plus ballots, health, readiness, Prometheus metrics, admin, the live event
stream and the dashboard (`/ui`)."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from council import __version__
from council.server.errors import STARTED, install_error_handlers
from council.server.router import Router
from council.server.routes import admin, anthropic, chat, events, health, internal, models, responses, ui


class _Arrival:
    """Notes when each HTTP request arrived, in its scope's state, so an error response can carry the router's own
    time too (`errors.finish_error`). Plain ASGI: one dict write per request. It also makes a trailing-slash
    redirect relative (`_relative_redirects`), in the same layer: a second middleware costs every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[STARTED] = time.perf_counter()
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                send = _relative_redirects(send)
        await self.app(scope, receive, send)


def _relative_redirects(send: Send) -> Send:
    """Starlette answers a path with a trailing slash (`/healthz/`) with a redirect to the path without it, as an
    absolute URL built from the request's Host header: a caller could make the router send clients to any host
    (`Host: evil.example` gave `Location: http://evil.example/healthz`). A relative Location (RFC 9110) goes to the
    same place on the host the client asked. Only such paths are watched: no route here ends with a slash, so no
    other request is redirected."""

    async def relative(message: Message) -> None:
        if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
            headers = []
            for name, value in message.get("headers", []):
                if name.lower() == b"location":
                    parts = urlsplit(value.decode("latin-1"))
                    value = urlunsplit(("", "", parts.path or "/", parts.query, "")).encode("latin-1")
                headers.append((name, value))
            message = {**message, "headers": headers}
        await send(message)

    return relative


# FastAPI's own OpenTelemetry support (newer releases) asks the global providers whether anyone listens on every
# request, ~10 us each time (bench/hotpath.py); council configures none, so it is off where FastAPI has it.
_TELEMETRY = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
              if "telemetry" in inspect.signature(FastAPI).parameters else {})


def create_app(router: Router) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(title="council", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible router over councils of small local models.",
                  **_TELEMETRY)  # type: ignore[arg-type]
    app.state.router = router
    install_error_handlers(app)
    app.add_middleware(_Arrival)
    # The chat routes run as plain Starlette routes, ahead of the FastAPI routes that document them (OpenAPI) and
    # so never run: FastAPI's own handling of a request (exit stacks, dependency solving, response checks) cost
    # several times what the route's matching and call do (bench/hotpath.py). The handlers take the request
    # alone and check the caller themselves (`deps.caller`).
    for path, endpoint in chat.PLAIN:
        app.router.add_route(path, endpoint, methods=["POST"], include_in_schema=False)
    for module in (chat, anthropic, responses, models, health, admin, events, internal, ui):
        app.include_router(module.routes)
    return app
