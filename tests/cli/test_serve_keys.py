"""`council serve` bound beyond loopback refuses keys nobody needs to steal: the shipped examples' `change-me`
placeholders and keys shorter than 16 characters, API keys and the cluster key alike (exit 2, one line naming
the variable and how to make a key). Before, `COUNCIL_KEY_AGENTS=change-me council serve --host 0.0.0.0`
served, and `Bearer change-me` reloaded it. The check runs before llama-server is looked for: no member starts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from council.policy.schema import ApiKey
from council.server.auth import KeyRing, MissingKey, weak_secret
from tests.conftest import run_cli
from tests.policies import policy_yaml

GOOD = "3f1c9a7be25d4e60a8b1c2d3e4f50617"


def _policy(tmp_path: Path, key: dict[str, str]) -> Path:
    path = tmp_path / "pub.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}]}}, memory="1GiB",
                                server={"api_keys": [{"name": "agents", **key}]}))
    return path


def _serve(path: Path, host: str, env: dict[str, str], *extra: str) -> tuple[int, list[str]]:
    base = {k: v for k, v in os.environ.items() if k != "COUNCIL_CLUSTER_KEY"}
    result = run_cli("serve", str(path), "--host", host, "--port", "8080", *extra, timeout=60,
                     env={**base, "COUNCIL_HOME": str(path.parent), **env})
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.parametrize(("host", "key", "env", "says"), [
    ("0.0.0.0", {"env": "COUNCIL_KEY_AGENTS"}, {"COUNCIL_KEY_AGENTS": "change-me"},
     "$COUNCIL_KEY_AGENTS (API key agents) is a placeholder"),
    ("::", {"env": "COUNCIL_KEY_AGENTS"}, {"COUNCIL_KEY_AGENTS": "Change-Me-api-key-0123456789"},
     "$COUNCIL_KEY_AGENTS (API key agents) is a placeholder"),
    ("10.1.2.3", {"env": "COUNCIL_KEY_AGENTS"}, {"COUNCIL_KEY_AGENTS": "hunter2"},
     "$COUNCIL_KEY_AGENTS (API key agents) has 7 characters, fewer than 16"),
    ("", {"sha256": hashlib.sha256(b"changeme").hexdigest()}, {}, "API key agents is the sha256 of a placeholder"),
    # `printf %s $KEY | sha256sum` with $KEY unset, and the docs' own example's word: anyone's first guesses
    ("0.0.0.0", {"sha256": hashlib.sha256(b"").hexdigest()}, {}, "API key agents is the sha256 of nothing"),
    ("0.0.0.0", {"sha256": hashlib.sha256(b"test").hexdigest()}, {}, "the sha256 of a placeholder or a common word"),
    ("0.0.0.0", {"env": "COUNCIL_KEY_AGENTS"}, {"COUNCIL_KEY_AGENTS": GOOD, "COUNCIL_CLUSTER_KEY": "change-me"},
     "$COUNCIL_CLUSTER_KEY (the cluster key) is a placeholder"),
])
def test_a_public_bind_refuses_placeholder_and_short_keys(tmp_path: Path, host: str, key: dict[str, str],
                                                          env: dict[str, str], says: str) -> None:
    code, lines = _serve(_policy(tmp_path, key), host, env)
    assert code == 2 and len(lines) == 1, lines
    assert says in lines[0] and "too weak to be secret" in lines[0] and "openssl rand -hex 32" in lines[0]


@pytest.mark.parametrize(("host", "value"), [("127.0.0.1", "change-me"), ("0.0.0.0", GOOD)])
def test_loopback_takes_any_key_and_a_public_bind_a_real_one(tmp_path: Path, host: str, value: str) -> None:
    """Past the key check: `--role host` without shared state is the next refusal (nothing starts)."""
    code, lines = _serve(_policy(tmp_path, {"env": "COUNCIL_KEY_AGENTS"}), host,
                         {"COUNCIL_KEY_AGENTS": value, "COUNCIL_CLUSTER_KEY": GOOD}, "--role", "host")
    assert code == 2 and lines == ["error: --role host shares members through the registry: set "
                                   "`state: redis://...`"]


def test_the_rule() -> None:
    assert weak_secret("change-me") == weak_secret("CHANGEME-and-then-some-more") == "is a placeholder"
    assert weak_secret("x" * 15) == "has 15 characters, fewer than 16"
    assert weak_secret("x" * 16) is None and weak_secret(GOOD) is None
    ring = KeyRing([ApiKey(name="ok", sha256=hashlib.sha256(GOOD.encode()).hexdigest())])
    assert ring.weak == []  # a real key's digest says nothing of its length: only placeholders' are known
    # A token of nothing but spaces (any kind: U+00A0 too) was hashed as the empty string, which a `sha256:` key of
    # an unset variable matched: an anonymous client had that key's scopes on a public router.
    empty = KeyRing([ApiKey(name="unset", sha256=hashlib.sha256(b"").hexdigest(), scopes=["chat", "admin"])])
    for blank in ("Bearer \u00a0", "Bearer  ", "Bearer \t"):
        with pytest.raises(MissingKey, match="missing API key"):
            empty.principal(blank, "admin")


@pytest.mark.parametrize(("role", "env"), [("router", {}), ("host", {"COUNCIL_CLUSTER_KEY": ""})])
def test_a_host_or_router_without_the_cluster_key_is_refused(tmp_path: Path, role: str, env: dict[str, str]) -> None:
    """Before, it started: a host published entries no router trusts, a router called no host, and its councils
    waited for seats that never came, nothing saying why. On loopback too: it is not about being reachable."""
    path = tmp_path / "shared.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}]}}, memory="1GiB", state="redis://127.0.0.1:1/0"))
    code, lines = _serve(path, "127.0.0.1", env, "--role", role)
    assert code == 2 and lines == [f"error: --role {role} calls members across hosts with the cluster key: set "
                                   "$COUNCIL_CLUSTER_KEY, the same on every host and router (make one with "
                                   "`openssl rand -hex 32` (or `python3 -c 'import secrets; "
                                   "print(secrets.token_hex(32))'`))"]
