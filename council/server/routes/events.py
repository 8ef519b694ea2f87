"""GET /admin/events: the dashboard's one server-sent-events stream.

It opens with a `snapshot` (what the caller may see now), then carries `member` (a state change with the
member's snapshot), `ballot` (a council answer), `log` (a member's output line), `lease` (a council stopped
because another router holds its slots now) and `history` (a new point of the last hour's series) events as
they happen, and every few seconds a `members` refresh (tok/s, in-flight requests change without a state
change). The admin scope gets everything; the chat scope gets the councils, the ballots, without the
questions (other callers' prompts are not theirs to read; `/v1/ballots/{id}` has none either), and the
councils' series.

GET /admin/history: the last hour's series so far (`council.server.history`), for the same scopes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from council.server.auth import Principal
from council.server.deps import current_router, require
from council.server.events import Event
from council.server.history import CHARTS, COUNCIL_CHARTS
from council.server.router import Router

REFRESH_S = 5.0
routes = APIRouter(prefix="/admin")
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]


def sse(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def snapshot(router: Router, admin: bool) -> dict[str, Any]:
    ballots = list(router.events.recent_ballots)
    seen: dict[str, Any] = {
        "scopes": ["chat", "admin"] if admin else ["chat"],
        "councils": {name: [s.name for s in e.seats] for name, e in router.engines.items()},
        "models": sorted(router.policy.models),
        "ballots": ballots if admin else [_for_chat(b) for b in ballots],
    }
    if admin:
        seen["members"] = [m.snapshot() for m in router.processes.values()]
        seen["slots"] = router.plan.to_json()
        seen["lost"] = dict(router.lost)
    return seen


def _for_chat(ballot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ballot.items() if k != "question"}


def visible(event: Event, admin: bool) -> dict[str, Any] | None:
    if admin:
        return event.data
    if event.kind == "history":
        return {**event.data, "charts": {c: v for c, v in event.data["charts"].items() if c in COUNCIL_CHARTS}}
    return _for_chat(event.data) if event.kind == "ballot" else None


@routes.get("/history")
async def history(router: Current, who: Chat) -> dict[str, Any]:
    """The dashboard's time series: `times` (Unix seconds, one every `step`, up to `window` back) and, per chart,
    one list of values per series, aligned with `times` (null: nothing to show then)."""
    return router.history.to_json(CHARTS if "admin" in who.scopes else COUNCIL_CHARTS)


@routes.get("/events", include_in_schema=False)  # an endless stream: no place in the fuzzed OpenAPI document
async def events(router: Current, who: Chat) -> StreamingResponse:
    admin = "admin" in who.scopes

    async def stream() -> AsyncIterator[bytes]:
        with router.events.subscribe() as subscription:
            yield b"retry: 1000\n\n" + sse("snapshot", snapshot(router, admin))
            dropped, refresh_at = 0, time.monotonic() + REFRESH_S
            while not router.events.closed:  # a client that goes away cancels this generator
                event = await subscription.next(max(0.0, refresh_at - time.monotonic()))
                if subscription.dropped != dropped:  # this page fell behind: it must not trust its picture
                    dropped = subscription.dropped
                    yield sse("snapshot", {**snapshot(router, admin), "dropped": dropped})
                    continue
                if time.monotonic() >= refresh_at:  # also while log lines keep the stream busy
                    refresh_at = time.monotonic() + REFRESH_S
                    if admin:
                        yield sse("members", {"members": [m.snapshot() for m in router.processes.values()]})
                    else:
                        yield b": keep-alive\n\n"
                if event is None:
                    continue
                if event.kind == "close":
                    return
                data = visible(event, admin)
                if data is not None:
                    yield sse(event.kind, data, event.id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
