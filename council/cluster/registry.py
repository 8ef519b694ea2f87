"""The member registry: GPU hosts publish their ready members with a heartbeat; routers follow it and call a
member on the host that runs it, through the host's `/internal/members/...` endpoint and the cluster key.

A host re-publishes every `heartbeat` with a TTL of three beats, so a host that dies leaves the votes within
three heartbeats. A router keeps the last registry it read: during a Redis outage it answers with what was
known.

Each entry is signed with the cluster key (HMAC-SHA256 over the host and the entry, the store's time it is good
`until` among its fields) and a router keeps only the entries it can verify whose time has not passed: it sends the
cluster key, and its users' prompts, to the URLs it reads here, so whoever can write to Redis without holding the
key must not be able to list a URL of their own, nor put back an entry of a host that has left.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from council.cluster.store import StateError, StateStore, pause
from council.members.pidfiles import alive, proc_start_time
from council.members.process import STUCK_AFTER_S, MemberProcess
from council.voting.client import CallOutcome, Endpoint, Unaccounted

log = logging.getLogger("council.cluster.registry")


def host_instance(run_dir: Path, advertise_url: str) -> str:
    """This host's instance id at `advertise_url`, kept in its run folder with the process holding it: a host
    restarted (by systemd, after a crash) is the same instance, so it replaces its own live entry at once rather
    than waiting for it to lapse; a second host sharing the folder (and the URL: the misconfiguration this guards
    against) finds the id's process alive and takes a new one. A new id where the folder cannot keep one."""
    path = run_dir / f"registry-{hashlib.sha256(advertise_url.encode()).hexdigest()[:16]}"
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        found, pid, start = path.read_text().split()
        # Its process gone (or this one: a second call): ours. A recycled PID is told apart by its start time.
        if re.fullmatch(r"[0-9a-f]{32}", found) and (int(pid) == os.getpid() or not alive(int(pid), start)):
            _keep(path, found)
            return found
    made = uuid.uuid4().hex
    _keep(path, made)
    return made


def _keep(path: Path, instance: str) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{instance} {os.getpid()} {proc_start_time(os.getpid())}\n")


def sign(key: str, host: str, entry: dict[str, Any]) -> str:
    """The entry's signature: HMAC-SHA256 under the cluster key of the host it is listed under and its fields
    (canonical JSON, without `sig` itself)."""
    body = json.dumps([host, {k: v for k, v in entry.items() if k != "sig"}], sort_keys=True, separators=(",", ":"))
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


def verified(key: str | None, hosts: dict[str, list[dict[str, Any]]], now_ms: int) -> dict[str, list[dict[str, Any]]]:
    """The entries signed with `key` that are good until after `now_ms` (the store's clock); none without a key: a
    router without it calls no host anyway. The signed time is what keeps an old entry from being put back (the
    heartbeat's deadline in the store is unsigned, anyone who can write there can set it)."""
    if key is None:
        return {}
    kept = {host: [e for e in entries if isinstance(e, dict) and isinstance(e.get("sig"), str)
                   and isinstance(e.get("until"), int) and e["until"] > now_ms
                   and hmac.compare_digest(e["sig"].encode(), sign(key, host, e).encode())]
            for host, entries in hosts.items() if isinstance(entries, list)}
    return {host: entries for host, entries in kept.items() if entries}


class HostSession:
    """The HTTP session to one host, and how many calls are in it: a host that left the registry has its session
    closed once its last call ends (a call it was still answering, a drain on its way out, is not cut off)."""

    def __init__(self, shunned_for: float) -> None:
        # Idle connections go before the host's uvicorn closes them (its keep-alive: 5 s).
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=4.0),
                                          timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        self.calls = 0
        self.left = False  # the host is no longer listed: closed once idle
        self.shunned_for = shunned_for
        self.unreachable_until = 0.0  # (monotonic) a call found no way to the host: others are asked first

    @property
    def unreachable(self) -> bool:
        return time.monotonic() < self.unreachable_until

    @contextlib.asynccontextmanager
    async def call(self, patience: float | None = None) -> AsyncIterator[CallOutcome]:
        """Held by each call through this session (the `Endpoint.request` of the host's members)."""
        self.calls += 1
        try:
            yield Unaccounted()  # the host's own watchdog counts its members' outcomes
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError):
            # Listed, but not reached at the URL it advertises (a wrong advertise_url, a firewall) or silent: its
            # heartbeat keeps it listed, so without this every call for its seats went to it and failed.
            self.unreachable_until = time.monotonic() + self.shunned_for
            raise
        finally:
            self.calls -= 1
            if self.left and self.calls == 0:
                await self.http.close()


class Registry:
    def __init__(self, state: StateStore, heartbeat: float, cluster_key: str | None,
                 stuck_after: float = STUCK_AFTER_S) -> None:
        self.state = state
        self.heartbeat = heartbeat
        self.cluster_key = cluster_key
        # A host that goes silent (frozen, cut off without a reset) is no process of ours for a watchdog to catch:
        # a call to it with no byte this long (or its council's timeout, where longer) fails instead of hanging.
        self.stuck_after = stuck_after
        self.hosts: dict[str, list[dict[str, Any]]] = {}  # host -> its ready members (last known)
        self._sessions: dict[str, HostSession] = {}  # hosts listed now (or called since the last refresh)
        self._leaving: set[HostSession] = set()  # of hosts that left, closed once their last call ends
        self._turn = 0  # round robin over the hosts serving a model
        self._mismatched: set[tuple[str, str]] = set()  # (host, seat) listed with another model: said once
        self._unsigned: set[str] = set()  # hosts listed with entries this router cannot verify: said once
        # Who publishes this host's entry (`host_instance`: the same across the host's restarts): another instance
        # at the same advertise URL is refused, not overwritten, and its entry is not this one's to withdraw.
        self.instance = uuid.uuid4().hex
        self._held_by: str | None = None  # the other instance holding our URL, while it does: said once
        self._epoch: str | None = None  # the registry's epoch at the last read (see `refresh`)
        self._carried: dict[str, list[dict[str, Any]]] = {}  # hosts listed before the store was emptied
        self._carried_until = 0  # store-clock ms: how long they are kept, unless they publish again

    async def publish_forever(self, advertise_url: str, processes: Callable[[], Iterable[MemberProcess]]) -> None:
        """Heartbeat: this host's ready processes, re-published before the last entry expires."""
        while True:
            with contextlib.suppress(StateError):
                ttl = 3 * self.heartbeat
                until = await self.state.clock_ms() + round(ttl * 1000)
                other = await self.state.publish_members(
                    advertise_url, self.entries(advertise_url, processes(), until), ttl=ttl, owner=self.instance)
                self._say_held(advertise_url, other)
            await pause(self.heartbeat)

    def _say_held(self, advertise_url: str, other: str | None) -> None:
        """Two hosts given one advertise URL replaced each other's entries at every heartbeat, and one's withdraw
        took the other's members out, with no word: now the first keeps it and the second says so, once."""
        if other is not None and self._held_by is None:
            log.warning("%s is listed by another host (instance %s): this host's members are not listed while that "
                        "entry is live. Two hosts given one server.advertise_url replace each other's members: give "
                        "each host its own", advertise_url, other)
        elif other is None and self._held_by is not None:
            log.warning("%s: the other host's entry lapsed; this host's members are listed", advertise_url)
        self._held_by = other

    def entries(self, advertise_url: str, processes: Iterable[MemberProcess], until_ms: int) -> list[dict[str, Any]]:
        """This host's registry entries: its ready processes, good until `until_ms` (the store's clock), each signed
        with the cluster key."""
        entries: list[dict[str, Any]] = [
            {"process": p.name, "members": list(p.seats), "model": p.spec.model, "ready": True,
             "url": f"{advertise_url}/internal/members/{p.name}", "until": until_ms} for p in processes if p.ready]
        if self.cluster_key is not None:
            for entry in entries:
                entry["sig"] = sign(self.cluster_key, advertise_url, entry)
        return entries

    async def follow_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    log.warning("the member registry is readable again")
                failing = False
            except StateError as exc:  # Redis away: the last registry read keeps answering
                if not failing:  # once per outage: a router that never reached it said nothing at all
                    log.warning("cannot read the member registry (%s); keeping the last one read", exc)
                failing = True
            except Exception:
                # Whatever is in Redis (anyone who reaches it can write there), the loop goes on: a task that died
                # here froze the router's registry, dead hosts listed and new ones never seen, with no word.
                log.exception("reading the member registry failed; keeping the last one read")
            await pause(self.heartbeat / 2)

    async def refresh(self) -> None:
        """Read the registry once, keeping the entries signed with our cluster key.

        A store emptied under the routers (Redis restarted without persistence, flushed, failed over to an empty
        replica) listed no host until each published again, up to a heartbeat later: every request in between was
        a 503. The registry's epoch tells that apart from hosts leaving (which leave it as it was): the hosts read
        before are carried until they are listed again, for three heartbeats from the moment the router finds the
        store emptied (their own signed deadlines may have passed while Redis was away: those copies were verified
        when read, and a host publishes again within a heartbeat of Redis' return)."""
        now = await self.state.clock_ms()
        listing = await self.state.members()
        hosts = verified(self.cluster_key, listing.hosts, now)
        if self._epoch is not None and listing.epoch != self._epoch:
            log.warning("the member registry was emptied (Redis restarted, flushed or replaced): the hosts it "
                        "listed are kept until they publish again, for up to three heartbeats")
            self._carried = {**self.hosts}
            self._carried_until = now + round(3 * self.heartbeat * 1000)
        self._epoch = listing.epoch
        self._carried = {host: entries for host, entries in self._carried.items()
                         if host not in hosts and now < self._carried_until}
        self.hosts = {**self._carried, **hosts}
        self._say_unsigned(listing.hosts, now)
        await self._drop_sessions(set(self._sessions) - set(self.hosts))

    def _say_unsigned(self, listed: dict[str, list[dict[str, Any]]], now_ms: int) -> None:
        """Say once per host that its current entries are not signed with this router's cluster key (another key
        on that host, or none here): they are never called, and a router whose every host differed answered 503
        with no word of why."""
        for host, entries in listed.items():
            current = [e for e in entries if isinstance(e, dict) and isinstance(e.get("until"), int)
                       and e["until"] > now_ms] if isinstance(entries, list) else []
            if current and host not in self.hosts and host not in self._unsigned:
                self._unsigned.add(host)
                log.warning("%s's registry entries are not signed with this router's cluster key (%s): its members "
                            "are not called; give every host and router the same key", host,
                            "none is set here" if self.cluster_key is None else "another key")

    async def _drop_sessions(self, hosts: set[str]) -> None:
        """The sessions of hosts that left: closed now if idle, else once their last call ends. One kept for every
        host ever seen held its connector (and any connection left open) for the router's life."""
        self._leaving = {s for s in self._leaving if not s.http.closed}
        for host in hosts:
            session = self._sessions.pop(host)
            session.left = True
            if session.calls == 0:
                await session.http.close()
            else:
                self._leaving.add(session)

    async def withdraw(self, advertise_url: str) -> None:
        """Leave the registry now (a clean stop need not wait for the heartbeat to lapse)."""
        with contextlib.suppress(StateError):
            await self.state.withdraw(advertise_url, owner=self.instance)

    def _endpoint(self, host: str, entry: dict[str, Any], name: str) -> Endpoint:
        session = self._sessions.get(host)
        if session is None or session.http.closed:
            session = self._sessions[host] = HostSession(shunned_for=3 * self.heartbeat)
        return Endpoint(name=str(entry.get("process", name)), url=str(entry["url"]), api_key=str(self.cluster_key),
                        http=session.http, request=session.call, silence=self.stuck_after)

    def endpoint(self, member: str, model: str | None = None) -> Endpoint | None:
        """The first live host (in name order) that lists `member` as ready, serving `model` where given (the
        router's policy's model for that seat: a host whose policy differs, in a rolling change say, would answer
        the seat with another model, counted ready and voting under this one's name), a host a call could not reach
        lately last; None without the cluster key."""
        if self.cluster_key is None:
            return None
        shunned = {h for h, s in self._sessions.items() if s.unreachable}
        for host in sorted(self.hosts, key=lambda h: (h in shunned, h)):
            for entry in self.hosts[host]:
                if member not in entry.get("members", ()) or not entry.get("ready"):
                    continue
                if model is not None and entry.get("model") != model:
                    if (host, member) not in self._mismatched:
                        self._mismatched.add((host, member))
                        log.warning("%s lists seat %s for model %r, where this router's policy has %r: not called",
                                    host, member, entry.get("model"), model)
                    continue
                return self._endpoint(host, entry, member)
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
        return self._endpoint(host, entry, model)

    async def aclose(self) -> None:
        for session in [*self._sessions.values(), *self._leaving]:
            await session.http.close()
        self._sessions.clear()
        self._leaving.clear()
