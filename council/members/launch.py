"""The llama-server command line for one member process, built from the policy as an argument list."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from council.errors import CouncilError
from council.members.binary import LlamaServerInfo
from council.policy.schema import ModelConfig, Policy

# llama-server reads its `--api-key` from this variable too (common/arg.cpp). The key goes there, not in the
# argument list: /proc/PID/cmdline is readable by every local user, /proc/PID/environ by the process's owner only.
API_KEY_ENV = "LLAMA_API_KEY"


class LaunchError(CouncilError, ValueError):
    """The policy asks for something the installed llama-server cannot do."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start (and recognise) one member process."""

    key: str  # the plan's process key: `trio/0` (or the entry's `name`), `trio:qwen` for a shared model
    model: str
    model_path: Path
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int
    api_key: str = field(repr=False)
    chat: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """The process's whole environment: `base` (the router's), the spec's `env` and the API key (kept out of
        `env`, which is printed and compared, as `api_key` is kept out of the repr)."""
        return {**base, **self.env, API_KEY_ENV: self.api_key}


def default_threads(processes_on_cpu: int) -> int:
    """Members sharing the CPU split its cores: with more threads than cores they fight (measured 3x slower)."""
    return max(1, (os.cpu_count() or 1) // max(1, processes_on_cpu))


# The flags that set each `--spec-type`'s draft length in llama-server build 11434 (common/arg.cpp; the length
# each one drafts: common/speculative.cpp `common_speculative_n_max`). `draft-*` types share the draft flags, as
# did `mtp` (draft-mtp's name before llama.cpp PR 22673 renamed it); the n-gram lookups draft the m-gram they
# copy, with no smallest length. ngram-cache drafts 8 whatever is passed (`schema.FIXED_DRAFT_LENGTHS`).
_DRAFT_FLAGS = ("--spec-draft-n-max", "--spec-draft-n-min")
DRAFT_LENGTH_FLAGS: dict[str, tuple[str, str | None]] = {
    "mtp": _DRAFT_FLAGS,
    "ngram-mod": ("--spec-ngram-mod-n-max", "--spec-ngram-mod-n-min"),
    "ngram-simple": ("--spec-ngram-simple-size-m", None),
    "ngram-map-k": ("--spec-ngram-map-k-size-m", None),
    "ngram-map-k4v": ("--spec-ngram-map-k4v-size-m", None),
}
# ngram-simple drafts only when the m-gram it copies is at least as long as the n-gram it looked up
# (common/ngram-map.cpp `common_ngram_simple_draft`), whose default length is 12: below that, the lookup shrinks
# to n, or every n under 12 would draft nothing.
NGRAM_SIMPLE_LOOKUP = 12


def draft_length_args(spec: str, n: int, n_min: int | None) -> list[str]:
    """The flags that make `spec` draft at most n tokens (and at least `n_min` where it has a minimum)."""
    flags = _DRAFT_FLAGS if spec.startswith("draft-") else DRAFT_LENGTH_FLAGS.get(spec)
    if flags is None:
        return []
    n_max_flag, n_min_flag = flags
    args = [n_max_flag, str(n)]
    if n_min is not None and n_min_flag is not None:
        args += [n_min_flag, str(n_min)]
    if spec == "ngram-simple":
        args += ["--spec-ngram-simple-size-n", str(min(n, NGRAM_SIMPLE_LOOKUP))]
    return args


def draft_args(model: ModelConfig, policy: Policy, server: LlamaServerInfo) -> list[str]:
    draft = model.draft
    if draft.type == "none" or draft.n == 0:
        return []
    spec = draft.spec_type(server.spec_types)
    if spec is None:
        raise LaunchError(f"llama-server build {server.build} has no spec type for draft {draft.type!r}")
    args = ["--spec-type", spec]
    if draft.type == "model" and draft.model:
        draft_path = policy.models[draft.model].path
        if draft_path is None:
            raise LaunchError(f"draft model {draft.model!r} is remote; a draft model must be a local GGUF")
        args += ["--spec-draft-model", str(draft_path)]
    return args + draft_length_args(spec, draft.n, draft.n_min)


def build_launch(
    *,
    key: str,
    model_name: str,
    policy: Policy,
    server: LlamaServerInfo,
    port: int,
    members: int = 1,
    threads: int | None = None,
    gpu: str | None = None,
    chat: bool = True,
) -> LaunchSpec:
    """The argument list (never a shell string) and environment for one member process; `members` is the number
    of seats it serves (a shared model's process: one slot and one context each).

    Members bind to 127.0.0.1 with a fresh random API key, passed in the environment (`LaunchSpec.environ`);
    `gpu` (an NVML index or UUID) becomes CUDA_VISIBLE_DEVICES, and None hides every GPU (a member planned on
    host memory).
    """
    model = policy.models[model_name].for_members(members)
    if model.path is None:
        raise LaunchError(f"model {model_name!r} is remote: it has no process to launch")
    api_key = secrets.token_urlsafe(24)
    fa = "auto" if model.flash_attn == "auto" else ("on" if model.flash_attn else "off")
    argv = [
        str(server.path),
        "--model", str(model.path),
        # Responses name the policy's model, not a file path on this machine (passthrough relays them).
        "--alias", model_name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(model.ctx_size),
        "--parallel", str(model.parallel),
        "--cache-type-k", model.cache_type_k,
        "--cache-type-v", model.cache_type_v,
        "--gpu-layers", str(model.gpu_layers),
        "--flash-attn", fa,
        "--kv-unified" if model.kv_unified else "--no-kv-unified",
        "--batch-size", str(model.batch_size),
        "--ubatch-size", str(model.ubatch_size),
        "--threads", str(model.threads or threads or default_threads(1)),
        # The planner sized this process: llama-server must not shrink context or offload to whatever
        # happens to be free at launch.
        "--fit", "off",
        "--cache-ram", str(model.cache_ram >> 20),
        # The supervisor's warm-up is a real completion; llama-server's own empty-batch warm-up would
        # only delay /health (~0.15 s per small model on 2 cores).
        "--no-warmup",
        "--metrics",
        "--no-webui",
        # A chat template needs jinja; a base model (no template) is served for /completion only.
        "--jinja" if chat else "--no-jinja",
        *draft_args(model, policy, server),
        *model.args,
    ]
    env = {"CUDA_VISIBLE_DEVICES": gpu if gpu is not None else ""}
    return LaunchSpec(key=key, model=model_name, model_path=model.path, argv=tuple(argv), env=env, port=port,
                      api_key=api_key, chat=chat)
