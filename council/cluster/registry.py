"""The member registry: GPU hosts publish their ready members with a heartbeat; routers follow it and call a
member on the host that runs it, through the host's `/internal/members/...` endpoint and the cluster key.

A host re-publishes every `heartbeat` with a TTL of three beats, so a host that dies leaves the votes within
three heartbeats. A router keeps the last registry it read: during a Redis outage it answers with what was
known.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from council.cluster.store import StateError, StateStore, pause
from council.members.process import MemberProcess
from council.voting.client import Endpoint


class Registry:
    def __init__(self, state: StateStore, heartbeat: float, cluster_key: str | None) -> None:
        self.state = state
        self.heartbeat = heartbeat
        self.cluster_key = cluster_key
        self.hosts: dict[str, list[dict[str, Any]]] = {}  # host -> its ready members (last known)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._turn = 0  # round robin over the hosts serving a model

    async def publish_forever(self, advertise_url: str, processes: Callable[[], Iterable[MemberProcess]]) -> None:
        """Heartbeat: this host's ready processes, re-published before the last entry expires."""
        while True:
            entries = [{"process": p.name, "members": list(p.seats), "model": p.spec.model, "ready": True,
                        "url": f"{advertise_url}/internal/members/{p.name}"} for p in processes() if p.ready]
            with contextlib.suppress(StateError):
                await self.state.publish_members(advertise_url, entries, ttl=3 * self.heartbeat)
            await pause(self.heartbeat)

    async def follow_forever(self) -> None:
        while True:
            with contextlib.suppress(StateError):
                self.hosts = await self.state.members()
            await pause(self.heartbeat / 2)

    async def withdraw(self, advertise_url: str) -> None:
        """Leave the registry now (a clean stop need not wait for the heartbeat to lapse)."""
        with contextlib.suppress(StateError):
            await self.state.withdraw(advertise_url)

    def _session(self, host: str) -> aiohttp.ClientSession:
        session = self._sessions.get(host)
        if session is None or session.closed:
            # Idle connections go before the host's uvicorn closes them (its keep-alive: 5 s).
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=4.0),
                                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
            self._sessions[host] = session
        return session

    def endpoint(self, member: str) -> Endpoint | None:
        """The first live host (in name order) that lists `member` as ready; None without the cluster key."""
        if self.cluster_key is None:
            return None
        for host in sorted(self.hosts):
            for entry in self.hosts[host]:
                if member in entry.get("members", ()) and entry.get("ready"):
                    return Endpoint(name=str(entry.get("process", member)), url=str(entry["url"]),
                                    api_key=self.cluster_key, http=self._session(host))
        return None

    def model_endpoint(self, model: str) -> Endpoint | None:
        """A live host's ready process of `model`, taking turns among them (for a model's own requests)."""
        if self.cluster_key is None:
            return None
        found = [(host, entry) for host in sorted(self.hosts) for entry in self.hosts[host]
                 if entry.get("model") == model and entry.get("ready")]
        if not found:
            return None
        self._turn += 1
        host, entry = found[self._turn % len(found)]
        return Endpoint(name=str(entry.get("process", model)), url=str(entry["url"]), api_key=self.cluster_key,
                        http=self._session(host))

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
