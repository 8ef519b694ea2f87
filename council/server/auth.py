"""API keys: who is calling, with which scopes and per-key limits (a FastAPI dependency in `server.deps`)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from council.errors import CouncilError
from council.policy.schema import ApiKey


class AuthError(CouncilError):
    """The caller is not allowed; `code` says how (the HTTP layer maps kinds to 401 and 403)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class MissingKey(AuthError):
    """No key, or a key that is not one of the configured ones."""


class Forbidden(AuthError):
    """A valid key without the scope this endpoint needs."""


@dataclass
class Principal:
    """Who is calling: a configured key, or `anonymous` when the router runs without keys (loopback only)."""

    name: str
    scopes: frozenset[str]
    rate_limit: float | None = None
    max_concurrency: int | None = None
    in_flight: int = 0
    # Token bucket: `tokens` refill at `rate_limit` per second up to one second's worth (at least 1).
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)

    def take(self) -> float | None:
        """Spend one request from the bucket; None if allowed, else seconds until the next one is."""
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        capacity = max(1.0, self.rate_limit)
        self.tokens = min(capacity, self.tokens + (now - self.refilled) * self.rate_limit)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate_limit


# A key guards a router bound beyond loopback only if nobody can guess it: the shipped examples' placeholders,
# and anything shorter than this, are refused there (`serve` and a reload). 16 characters is a floor, not a goal.
MIN_SECRET_CHARS = 16
PLACEHOLDERS = ("change-me", "changeme", "change_me")
# A `sha256:` key's length is unknown, but the digest of a bare placeholder, or of a word anyone would try first,
# is recognisable; so is the empty string's (`printf %s $KEY | sha256sum` with $KEY unset), which no token matches.
_PLACEHOLDER_DIGESTS = {hashlib.sha256(p.encode()).digest() for p in (
    *PLACEHOLDERS, "test", "password", "secret", "admin", "key", "apikey", "api-key", "council", "token")}
_EMPTY_DIGEST = hashlib.sha256(b"").digest()
MAKE_A_KEY = ("make one with `openssl rand -hex 32` "
              "(or `python3 -c 'import secrets; print(secrets.token_hex(32))'`)")


def env_secret(name: str) -> str | None:
    """A key from the environment without its surrounding whitespace, or None if unset or blank: a Secret mounted
    from a file (`kubectl create secret --from-file`) often ends in a newline, which no `Authorization` header
    carries: such a key matched no client, and a cluster key signed entries no peer without it could verify."""
    return (os.environ.get(name) or "").strip() or None


def weak_secret(secret: str) -> str | None:
    """Why `secret` is too weak to guard a router bound beyond loopback, or None."""
    if any(p in secret.lower() for p in PLACEHOLDERS):
        return "is a placeholder"
    if len(secret) < MIN_SECRET_CHARS:
        return f"has {len(secret)} characters, fewer than {MIN_SECRET_CHARS}"
    return None


def may_read(who: Principal, ballot: Mapping[str, Any]) -> bool:
    """Whether `who` may read a ballot: the admin scope reads every one, a chat-scope key only those of its own
    requests (their answers and tool calls are another caller's data). Keys are told apart by name; a ballot
    without an owner (made by an older router) is the admins' alone."""
    return "admin" in who.scopes or ballot.get("owner") == who.name


def is_loopback(host: str) -> bool:
    # Not "": uvicorn and asyncio bind an empty host to every interface.
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyRing:
    """Resolves bearer tokens to principals; keys are compared as SHA-256 digests in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._digests: list[tuple[bytes, Principal]] = []
        self.missing_env: list[str] = []
        self.anonymous = Principal(name="anonymous", scopes=frozenset({"chat", "admin"}))
        self.update(keys)

    def update(self, keys: list[ApiKey]) -> None:
        """Take a reloaded key list. A key that stays (same name and secret) keeps its principal: its token
        bucket and in-flight count carry on, so a reload neither refills a bucket nor loses requests."""
        old = {(p.name, d): p for d, p in self._digests}
        self._digests = []
        self.missing_env = []
        self.weak: list[str] = []  # keys too weak for a public bind (`serve` and a reload refuse them there)
        for key in keys:
            if key.env is not None:
                secret = env_secret(key.env)
                if secret is None:
                    self.missing_env.append(f"{key.name}: ${key.env} is not set")
                    continue
                digest = hashlib.sha256(secret.encode()).digest()
                if (why := weak_secret(secret)) is not None:
                    self.weak.append(f"${key.env} (API key {key.name}) {why}")
            else:
                digest = bytes.fromhex(key.sha256 or "")
                if digest == _EMPTY_DIGEST:
                    self.weak.append(f"API key {key.name} is the sha256 of nothing (`printf %s $KEY | sha256sum` "
                                     "with $KEY unset): no client can send it")
                elif digest in _PLACEHOLDER_DIGESTS:
                    self.weak.append(f"API key {key.name} is the sha256 of a placeholder or a common word")
            principal = old.get((key.name, digest))
            if principal is None:
                principal = Principal(name=key.name, scopes=frozenset(key.scopes), rate_limit=key.rate_limit,
                                      max_concurrency=key.max_concurrency, tokens=max(1.0, key.rate_limit or 1.0))
            else:
                principal.scopes = frozenset(key.scopes)
                principal.max_concurrency = key.max_concurrency
                if principal.rate_limit != key.rate_limit:
                    principal.rate_limit = key.rate_limit
                    principal.tokens = min(principal.tokens, max(1.0, key.rate_limit or 1.0))
            self._digests.append((digest, principal))
        self.enabled = bool(keys)

    def holds(self, who: Principal) -> bool:
        """Whether `who` still opens this router with the chat scope: a reload may have removed its key, its chat
        scope, or every key (a key kept as it was keeps its principal, whose scopes a reload updates in place)."""
        if not self.enabled:
            return who is self.anonymous
        return "chat" in who.scopes and any(p is who for _, p in self._digests)

    def principal(self, authorization: str | None, scope: str) -> Principal:
        if not self.enabled:
            return self.anonymous
        if not authorization or not authorization.lower().startswith("bearer "):
            raise MissingKey("missing API key: send `Authorization: Bearer KEY` (or `x-api-key: KEY`)",
                             "missing_api_key")
        token = authorization[7:].strip()
        if not token:  # `Bearer ` and a space of any kind: the sha256 of nothing, which a `sha256:` key may be
            raise MissingKey("missing API key: send `Authorization: Bearer KEY` (or `x-api-key: KEY`)",
                             "missing_api_key")
        digest = hashlib.sha256(token.encode()).digest()
        found = next((p for d, p in self._digests if hmac.compare_digest(d, digest)), None)
        if found is None:
            raise MissingKey("invalid API key", "invalid_api_key")
        if scope not in found.scopes:
            raise Forbidden(f"this key ({found.name}) lacks the `{scope}` scope", "insufficient_scope")
        return found
