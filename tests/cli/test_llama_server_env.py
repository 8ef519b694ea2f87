"""A `$LLAMA_SERVER` that names no llama-server is bad input for every command that runs one: one line naming the
variable and exit 2, never another build taken quietly instead (`council doctor` reports it as a failed check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from tests.conftest import run_cli
from tests.policies import policy_yaml

COMMANDS = {
    "check": ("check", "{policy}"),
    "up": ("up", "{policy}"),
    "serve": ("serve", "{policy}", "--port", "9"),
    "tune": ("tune", "{policy}", "syn", "--n", "0,1"),
    "eval": ("eval", "{policy}", "c", "{data}"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_llama_server_variable_is_one_line_and_exit_2(
    command: str, tmp_path: Path, syn: Path, llama_server_bin: LlamaServerInfo
) -> None:
    """Before, each of these took the cached build instead, without a word (`setup` alone refused)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").symlink_to(llama_server_bin.path)  # this COUNCIL_HOME's cached build
    policy, data = tmp_path / "policy.yaml", tmp_path / "items.jsonl"
    drafted = {"draft": {"type": "mtp", "n_max": 2}} if command == "tune" else {}  # a length to tune
    policy.write_text(policy_yaml({"syn": {"path": syn, "ctx_size": 512, **drafted}},
                                  {"c": {"members": [{"model": "syn"}]}}))
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    missing = tmp_path / "my-fork" / "llama-server"
    args = [a.format(policy=policy, data=data) for a in COMMANDS[command]]
    result = run_cli(*args, env={"LLAMA_SERVER": str(missing), "COUNCIL_HOME": str(tmp_path)}, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"error: LLAMA_SERVER={missing}: not an executable file (point it at a llama-server, or unset it)"]
