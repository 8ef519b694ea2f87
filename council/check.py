"""`council check`: what a policy needs from this machine — model files, spec types, MTP heads, vocabularies."""

from __future__ import annotations

from council.gguf_meta import GgufError, GgufInfo, read_gguf
from council.llama import LlamaServerInfo
from council.policy import ModelConfig
from council.policy_file import LoadedPolicy, Problem

# llama.cpp's own draft/target compatibility rule (common/speculative.cpp).
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


def spec_type_for(draft_type: str, server: LlamaServerInfo) -> str | None:
    """The `--spec-type` value this build needs for a policy draft type, or None if it has none."""
    if draft_type == "mtp":
        return server.mtp_spelling
    wanted = "draft-simple" if draft_type == "model" else draft_type
    return wanted if wanted in server.spec_types else None


def vocab_mismatch(target: GgufInfo, draft: GgufInfo) -> str | None:
    """Why llama-server would refuse `draft` as a draft model for `target`, or None if it would accept it."""
    meta_t, meta_d = target.metadata, draft.metadata
    if meta_t.get("tokenizer.ggml.model") != meta_d.get("tokenizer.ggml.model"):
        return (f"tokenizer {meta_d.get('tokenizer.ggml.model')!r} differs from the target's "
                f"{meta_t.get('tokenizer.ggml.model')!r}")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if meta_t.get(key) != meta_d.get(key):
            return f"{key.rsplit('.', 1)[-1]} {meta_d.get(key)} differs from the target's {meta_t.get(key)}"
    tokens_t, tokens_d = meta_t.get("tokenizer.ggml.tokens"), meta_d.get("tokenizer.ggml.tokens")
    if not isinstance(tokens_t, list) or not isinstance(tokens_d, list):
        return None
    if abs(len(tokens_t) - len(tokens_d)) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"vocabulary of {len(tokens_d)} tokens vs the target's {len(tokens_t)}"
    for i in range(VOCAB_CHECK_START_TOKEN_ID, min(len(tokens_t), len(tokens_d))):
        if tokens_t[i] != tokens_d[i]:
            return f"token {i} is {tokens_d[i]!r}, the target's is {tokens_t[i]!r}"
    return None


def _read(model: ModelConfig, *, keep_arrays: bool = False) -> GgufInfo | str:
    if model.path is None:
        return "a remote model has no GGUF here"
    try:
        return read_gguf(model.path, keep_arrays=keep_arrays)
    except GgufError as exc:
        return str(exc)


def environment_problems(loaded: LoadedPolicy, server: LlamaServerInfo | None) -> list[Problem]:
    """Problems only this machine can reveal; `server` None skips the spec-type checks (nothing to ask)."""
    policy = loaded.policy
    problems: list[Problem] = []
    infos: dict[str, GgufInfo] = {}
    for name, model in policy.models.items():
        base = ("models", name)
        if model.path is None:  # remote: nothing on this machine to check
            continue
        if not model.path.exists():
            if model.memory is None:
                problems.append(loaded.problem((*base, "path"),
                                               f"{model.path} does not exist (and no `memory:` is given to plan with)"))
            continue
        info = _read(model)
        if isinstance(info, str):
            problems.append(loaded.problem((*base, "path"), info))
            continue
        infos[name] = info
        if model.draft.type == "mtp" and int(info.arch_key("nextn_predict_layers", 0) or 0) < 1:
            problems.append(loaded.problem((*base, "draft", "type"),
                                           f"draft type mtp needs a model with an MTP head; {model.path.name} "
                                           f"({info.arch}) has no {info.arch}.nextn_predict_layers"))
    if server is not None:
        for name, model in policy.models.items():
            if model.draft.type != "none" and spec_type_for(model.draft.type, server) is None:
                problems.append(loaded.problem(
                    ("models", name, "draft", "type"),
                    f"the installed llama-server (build {server.build}) does not support draft type "
                    f"{model.draft.type!r}; it knows: {', '.join(server.spec_types)}"))
    for name, model in policy.models.items():
        if model.draft.type != "model" or model.draft.model is None:
            continue
        draft_name = model.draft.model
        if name not in infos or draft_name not in infos:
            continue
        target, draft = _read(model, keep_arrays=True), _read(policy.models[draft_name], keep_arrays=True)
        if isinstance(target, GgufInfo) and isinstance(draft, GgufInfo):
            reason = vocab_mismatch(target, draft)
            if reason:
                problems.append(loaded.problem(("models", name, "draft", "model"),
                                               f"{draft_name!r} cannot draft for {name!r}: {reason}"))
    return problems
