"""A member's draft length reaches llama-server for every draft type whose length it can set, and a type whose length
it cannot set is refused where a length would be adapted or tuned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.launch import build_launch, draft_args
from council.members.metrics import MemberStats, parse_member_metrics
from council.policy.schema import ModelConfig, Policy
from council.setup.catalog import by_name
from tests.conftest import run_cli
from tests.policies import policy_yaml
from tests.servers import RunningServer

SERVER = LlamaServerInfo(path=Path("/opt/llama-server"), build=11434, version="",
                         spec_types=("none", "draft-simple", "draft-mtp", "ngram-simple", "ngram-map-k",
                                     "ngram-map-k4v", "ngram-mod", "ngram-cache"))
OLD_FORK = LlamaServerInfo(path=Path("/opt/old"), build=1, version="", spec_types=("none", "mtp"))


def spec_args(draft: dict[str, object], server: LlamaServerInfo = SERVER) -> list[str]:
    policy = Policy(models={"m": ModelConfig(path=Path("/m.gguf"), draft=draft)})
    argv = list(build_launch(key="k", model_name="m", policy=policy, server=server, port=1).argv)
    return argv[argv.index("--spec-type"):] if "--spec-type" in argv else []


@pytest.mark.parametrize(("draft_type", "server", "expected"), [
    ("mtp", SERVER, ["draft-mtp", "--spec-draft-n-max", "5", "--spec-draft-n-min", "2"]),
    # draft-mtp's name before llama.cpp renamed it (PR 22673), with the same flags
    ("mtp", OLD_FORK, ["mtp", "--spec-draft-n-max", "5", "--spec-draft-n-min", "2"]),
    ("ngram-mod", SERVER, ["ngram-mod", "--spec-ngram-mod-n-max", "5", "--spec-ngram-mod-n-min", "2"]),
    # the n-gram lookups draft the m-gram they copy, and have no smallest length
    ("ngram-simple", SERVER, ["ngram-simple", "--spec-ngram-simple-size-m", "5", "--spec-ngram-simple-size-n", "5"]),
    ("ngram-map-k", SERVER, ["ngram-map-k", "--spec-ngram-map-k-size-m", "5"]),
    ("ngram-map-k4v", SERVER, ["ngram-map-k4v", "--spec-ngram-map-k4v-size-m", "5"]),
    ("ngram-cache", SERVER, ["ngram-cache"]),  # a fixed 8: no flag to pass
])
def test_each_draft_type_gets_its_own_length_flag(draft_type: str, server: LlamaServerInfo,
                                                  expected: list[str]) -> None:
    assert spec_args({"type": draft_type, "n_max": 5, "n_min": 2}, server) == ["--spec-type", *expected]


def test_ngram_simple_looks_up_no_more_than_it_drafts() -> None:
    """It drafts only when the copied m-gram is as long as the looked-up n-gram (default 12)."""
    assert spec_args({"type": "ngram-simple", "n_max": 20})[-2:] == ["--spec-ngram-simple-size-n", "12"]
    assert spec_args({"type": "ngram-simple", "n_max": 0}) == []


def test_auto_and_tune_refuse_a_draft_length_the_server_ignores(tmp_path: Path) -> None:
    smol = by_name("smollm2-135m")
    assert smol is not None
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"m": {"path": smol.path, "draft": {"type": "ngram-cache", "n_max": "auto"}}},
                                  {"c": {"members": [{"model": "m"}]}}))
    result = run_cli("check", str(policy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{policy}:10: models.m.draft: `n_max: auto` cannot change ngram-cache's draft length: llama-server drafts "
        "8 tokens with it whatever is asked (0 turns it off)"]
    policy.write_text(policy.read_text().replace("n_max: auto", "n_max: 3"))
    result = run_cli("tune", str(policy), "m")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: models.m.draft: llama-server drafts 8 tokens with ngram-cache whatever "
                                     "is asked, so there is no draft length to tune")


COPY = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(6))


@pytest.mark.parametrize(("draft_type", "lookup"), [
    ("ngram-simple", []),
    # a shorter key than the default 12, so this short reply already repeats one
    ("ngram-map-k", ["--spec-ngram-map-k-size-n", "3"]),
    ("ngram-map-k4v", ["--spec-ngram-map-k4v-size-n", "3"]),
])
def test_the_real_server_drafts_the_policys_length(start_server: Callable[..., RunningServer],
                                                   llama_server_bin: LlamaServerInfo, draft_type: str,
                                                   lookup: list[str]) -> None:
    """llama-server counts accepted tokens per draft position up to the length it drafts: n = 3 gives 3."""
    smol = by_name("smollm2-135m")
    assert smol is not None and smol.path.is_file()
    model = ModelConfig(path=smol.path, draft={"type": draft_type, "n_max": 3})
    server = start_server(smol.path, *draft_args(model, Policy(models={"m": model}), llama_server_bin), *lookup,
                          ctx=1024)
    with httpx.Client(timeout=300) as client:
        reply = client.post(f"{server.url}/completion", headers=server.headers,
                            json={"prompt": f"Repeat this code exactly:\n\n{COPY}\n\nHere it is again:\n\n",
                                  "n_predict": 48, "temperature": 0})
        reply.raise_for_status()
        stats = parse_member_metrics(client.get(f"{server.url}/metrics", headers=server.headers).text, MemberStats())
    assert stats.draft_steps > 0, server.log()[-2000:]
    assert len(stats.draft_per_pos) == 3 and stats.draft_tokens <= 3 * stats.draft_steps
