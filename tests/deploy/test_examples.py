"""The shipped keys are no keys: deploy/systemd/council.env.example and deploy/k8s/base/secret.yaml leave every
key empty (before: `change-me`, which `council serve --host 0.0.0.0` accepted), so following the README as
written gives exit 2 until real keys are set."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tests.conftest import run_cli
from tests.policies import policy_yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / "systemd/council.env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def test_the_examples_ship_no_key() -> None:
    env = _env_example()
    keys = {k: v for k, v in env.items() if "KEY" in k}
    assert set(keys) == {"COUNCIL_CLUSTER_KEY", "COUNCIL_KEY_AGENTS", "COUNCIL_ADMIN_KEY"} and not any(keys.values())
    assert "openssl rand -hex 32" in (DEPLOY / "systemd/council.env.example").read_text()
    (secret,) = yaml.safe_load_all((DEPLOY / "k8s/base/secret.yaml").read_text())
    assert secret["stringData"] and not any(secret["stringData"].values())


def test_serving_with_the_env_example_as_shipped_exits_2(tmp_path: Path) -> None:
    env = _env_example()
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml({"m": {"path": tmp_path / "absent.gguf", "memory": "100MiB"}},
                                {"c": {"members": [{"model": "m"}]}}, memory="1GiB",
                                server={"api_keys": [{"name": "agents", "env": "COUNCIL_KEY_AGENTS"}]}))
    base = {k: v for k, v in os.environ.items() if not k.startswith("COUNCIL_")}
    result = run_cli("serve", str(path), "--host", env["COUNCIL_HOST"], "--port", env["COUNCIL_PORT"], timeout=60,
                     env={**base, **env, "COUNCIL_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: API key variables are not set: agents: $COUNCIL_KEY_AGENTS is not set"
