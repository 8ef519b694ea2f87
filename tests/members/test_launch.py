"""The llama-server command line built from a policy: argument lists, the right spellings, no shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.members.launch import API_KEY_ENV, LaunchError, build_launch, default_threads
from council.policy.schema import COUNCIL_FLAGS, KEY_FLAGS, ModelConfig, Policy, owned_flag

SERVER = LlamaServerInfo(path=Path("/opt/llama-server"), build=11434, version="",
                         spec_types=("none", "draft-simple", "draft-mtp", "ngram-mod"))
OLD_FORK = LlamaServerInfo(path=Path("/opt/old"), build=1, version="", spec_types=("none", "mtp"))


def argv_of(model: ModelConfig, server: LlamaServerInfo = SERVER, members: int = 1, **extra: ModelConfig) -> list[str]:
    policy = Policy(models={"m": model, **extra})
    spec = build_launch(key="c/0", model_name="m", policy=policy, server=server, port=4321, members=members,
                        threads=1, gpu="GPU-abc")
    assert spec.env == {"CUDA_VISIBLE_DEVICES": "GPU-abc"}
    assert all(isinstance(a, str) for a in spec.argv)
    return list(spec.argv)


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_secure_defaults_and_policy_values() -> None:
    argv = argv_of(ModelConfig(path=Path("/m.gguf"), ctx_size=8192, cache_type_k="q4_0", cache_type_v="q4_0",
                               flash_attn=True, kv_unified=True, args=["--seed", "1"]))
    assert argv[0] == "/opt/llama-server"
    assert value(argv, "--host") == "127.0.0.1"
    assert value(argv, "--port") == "4321"
    assert value(argv, "--ctx-size") == "8192" and value(argv, "--parallel") == "1"
    assert value(argv, "--cache-type-k") == "q4_0" and value(argv, "--cache-type-v") == "q4_0"
    assert value(argv, "--flash-attn") == "on" and "--kv-unified" in argv
    assert value(argv, "--gpu-layers") == "all" and value(argv, "--threads") == "1"
    assert "--metrics" in argv and "--no-webui" in argv and "--jinja" in argv
    assert value(argv, "--fit") == "off"  # the plan sized it; llama-server must not re-fit at launch
    assert value(argv, "--cache-ram") == "0"
    assert argv[-2:] == ["--seed", "1"]  # the policy's extra args come last, verbatim


def test_the_key_is_in_the_environment_never_the_argument_list() -> None:
    """Before, `--api-key KEY` was in argv: /proc/PID/cmdline is readable by every local user."""
    policy = Policy(models={"m": ModelConfig(path=Path("/m.gguf"), args=["--seed", "1"])})
    spec = build_launch(key="k", model_name="m", policy=policy, server=SERVER, port=1, gpu="0")
    assert "--api-key" not in spec.argv and spec.api_key not in " ".join(spec.argv)
    assert len(spec.api_key) >= 24 and spec.api_key not in repr(spec) and API_KEY_ENV not in spec.env
    environ = spec.environ({"PATH": "/bin", API_KEY_ENV: "the router's own"})
    assert environ == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0", API_KEY_ENV: spec.api_key}


def test_the_flags_a_policy_may_not_pass_are_those_launch_sets_and_the_key_ones() -> None:
    """The policy refuses `args` that spell these (`schema.owned_flag`): each is in every argument list council
    builds, but the key flags, whose value goes in the environment."""
    argv = argv_of(ModelConfig(path=Path("/m.gguf"), draft={"type": "mtp", "n_max": 2}))
    assert all(flag in argv for flag in COUNCIL_FLAGS)
    assert not any(flag in argv for flag in KEY_FLAGS)
    assert {owned_flag(a) for a in argv if a.startswith("-")} - {None} == set(COUNCIL_FLAGS)


def test_every_start_gets_its_own_key() -> None:
    policy = Policy(models={"m": ModelConfig(path=Path("/m.gguf"))})
    keys = {build_launch(key="k", model_name="m", policy=policy, server=SERVER, port=1).api_key for _ in range(5)}
    assert len(keys) == 5


def test_mtp_spelling_follows_the_build() -> None:
    mtp = ModelConfig(path=Path("/q.gguf"), draft={"type": "mtp", "n_max": 2})
    argv = argv_of(mtp)
    assert argv[argv.index("--spec-type"):argv.index("--spec-type") + 4] == [
        "--spec-type", "draft-mtp", "--spec-draft-n-max", "2"]
    assert value(argv_of(mtp, OLD_FORK), "--spec-type") == "mtp"


def test_draft_model_and_ngram() -> None:
    argv = argv_of(ModelConfig(path=Path("/big.gguf"), draft={"type": "model", "model": "d", "n_max": 4}),
                   d=ModelConfig(path=Path("/draft.gguf")))
    assert value(argv, "--spec-type") == "draft-simple"
    assert value(argv, "--spec-draft-model") == "/draft.gguf"
    assert value(argv, "--spec-draft-n-max") == "4"
    argv = argv_of(ModelConfig(path=Path("/m.gguf"), draft={"type": "ngram-mod", "n_max": 16}))
    assert value(argv, "--spec-type") == "ngram-mod" and value(argv, "--spec-ngram-mod-n-max") == "16"


def test_unsupported_draft_type_is_refused() -> None:
    with pytest.raises(LaunchError, match="no spec type for draft 'ngram-mod'"):
        argv_of(ModelConfig(path=Path("/m.gguf"), draft={"type": "ngram-mod"}), OLD_FORK)


def test_shared_process_gets_a_slot_and_full_context_per_member() -> None:
    argv = argv_of(ModelConfig(path=Path("/m.gguf"), ctx_size=2048, parallel=1, share=True), members=3)
    assert value(argv, "--parallel") == "3" and value(argv, "--ctx-size") == "6144"


def test_threads_split_the_cores() -> None:
    import os

    cores = os.cpu_count() or 1
    assert default_threads(1) == cores
    assert default_threads(cores * 4) == 1
