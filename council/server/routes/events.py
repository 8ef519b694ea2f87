"""GET /admin/events: the dashboard's one server-sent-events stream.

It opens with a `snapshot` (what the caller may see now), then carries `member` (a state change with the
member's snapshot), `ballot` (a council answer), `log` (a member's output line), `lease` (a council stopped
because another router holds its slots now) and `history` (a new point of the last hour's series) events as
they happen, a fresh `snapshot` after each reload (councils, slot plan and history step may be new), and every
few seconds a `members` refresh (tok/s, in-flight requests change without a state change). The admin scope
gets everything; the chat scope gets the councils, the ballots of its own key's requests (whole, with their
questions) and the councils' series. Other keys' ballots are not sent to it at all:
their questions, answers and tool calls are another caller's data, and `/v1/ballots/{id}` denies they exist, so
the stream does not list them either (the councils' charts already show how every council is doing).

GET /admin/history: the last hour's series so far (`council.server.history`), for the same scopes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from council.server.auth import Principal, may_read
from council.server.deps import current_router, require
from council.server.events import Event
from council.server.history import CHARTS, COUNCIL_CHARTS
from council.server.router import Router
from council.voting.request import dumps

REFRESH_S = 5.0
routes = APIRouter(prefix="/admin")
Chat = Annotated[Principal, Depends(require("chat"))]
Current = Annotated[Router, Depends(current_router)]


def sse(kind: str, data: Any, event_id: int | None = None) -> bytes:
    """One event, its data by orjson: a tenth of the standard library's time on a snapshot of large ballots, UTF-8
    where the standard library wrote six bytes a character, and null for a figure that is not finite (the standard
    library wrote `Infinity`, which no browser parses: the page reconnected every second, never updated)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + dumps(data) + b"\n\n"


def snapshot(router: Router, who: Principal) -> dict[str, Any]:
    admin = "admin" in who.scopes
    seen: dict[str, Any] = {
        "scopes": ["chat", "admin"] if admin else ["chat"],
        "councils": {name: [s.name for s in e.seats] for name, e in router.engines.items()},
        "models": sorted(router.policy.models),
        "ballots": [b for b in router.events.recent_ballots if may_read(who, b)],
        # The points a history ring holds: the page keeps no more `history` events than that while it cannot
        # read GET /admin/history.
        "history_capacity": router.history.capacity,
    }
    if admin:
        seen["members"] = [m.snapshot() for m in router.processes.values()]
        seen["slots"] = router.plan.to_json()
        seen["lost"] = dict(router.lost)
    return seen


def visible(event: Event, who: Principal) -> dict[str, Any] | None:
    """What of `event` `who` may see: all of it with the admin scope; with the chat scope, the councils' series
    and the ballots `may_read` allows it, nothing else."""
    if "admin" in who.scopes:
        return event.data
    if event.kind == "history":
        return {**event.data, "charts": {c: v for c, v in event.data["charts"].items() if c in COUNCIL_CHARTS}}
    return event.data if event.kind == "ballot" and may_read(who, event.data) else None


@routes.get("/history")
async def history(router: Current, who: Chat) -> dict[str, Any]:
    """The dashboard's time series: `times` (Unix seconds, one every `step`, up to `window` back) and, per chart,
    one list of values per series, aligned with `times` (null: nothing to show then)."""
    return router.history.to_json(CHARTS if "admin" in who.scopes else COUNCIL_CHARTS)


@routes.get("/events", include_in_schema=False)  # an endless stream: no place in the fuzzed OpenAPI document
async def events(router: Current, who: Chat) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        with router.events.subscribe() as subscription:
            yield b"retry: 1000\n\n" + sse("snapshot", snapshot(router, who))
            dropped, refresh_at = 0, time.monotonic() + REFRESH_S
            while not router.events.closed:  # a client that goes away cancels this generator
                event = await subscription.next(max(0.0, refresh_at - time.monotonic()))
                if not router.keys.holds(who):
                    return  # a reload took its key away: the page reconnects and is asked for a key again
                if subscription.dropped != dropped:  # this page fell behind: it must not trust its picture
                    dropped = subscription.dropped
                    yield sse("snapshot", {**snapshot(router, who), "dropped": dropped})
                    continue
                if time.monotonic() >= refresh_at:  # also while log lines keep the stream busy
                    refresh_at = time.monotonic() + REFRESH_S
                    if "admin" in who.scopes:  # as the reload left them
                        yield sse("members", {"members": [m.snapshot() for m in router.processes.values()]})
                    else:
                        yield b": keep-alive\n\n"
                if event is None:
                    continue
                if event.kind == "close":
                    return
                if event.kind == "reload":  # its councils, slot plan and history step are new: the page rebuilds
                    yield sse("snapshot", snapshot(router, who))
                    continue
                data = visible(event, who)
                if data is not None:
                    yield sse(event.kind, data, event.id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
