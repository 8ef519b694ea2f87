"""The HTTP API (README: "`council serve`"), assembled from its route modules: OpenAI-compatible chat completions where
`model` names a council or a model, plus ballots, health, readiness, Prometheus metrics, admin, the live event
stream and the dashboard (`/ui`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from council import __version__
from council.server.errors import install_error_handlers
from council.server.router import Router
from council.server.routes import admin, chat, events, health, internal, models, ui


def create_app(router: Router) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await router.start()
        try:
            yield
        finally:
            await router.stop()

    app = FastAPI(title="council", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible router over councils of small local models.")
    app.state.router = router
    install_error_handlers(app)
    for module in (chat, models, health, admin, events, internal, ui):
        app.include_router(module.routes)
    return app
