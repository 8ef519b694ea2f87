"""The HTTP API (CONTRACT §3), assembled from its route modules: OpenAI-compatible chat completions where
`model` names a council or a model, plus ballots, health, readiness, Prometheus metrics and admin."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from council import __version__
from council.server.errors import install_error_handlers
from council.server.router import Router
from council.server.routes import admin, chat, health, internal, models


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
    for module in (chat, models, health, admin, internal):
        app.include_router(module.routes)
    return app
