"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.router import Router

routes = APIRouter()


@routes.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@routes.get("/readyz", response_model=None)
async def readyz(router: Annotated[Router, Depends(current_router)]) -> Response:
    ready, reasons = router.readiness()
    return JSONResponse({"ready": ready, "reasons": reasons}, status_code=200 if ready else 503)


@routes.get("/metrics")
async def prometheus(router: Annotated[Router, Depends(current_router)],
                     _: Annotated[Principal, Depends(require("chat"))]) -> Response:
    return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)
