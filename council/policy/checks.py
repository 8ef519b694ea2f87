"""What a policy needs from this machine: model files, MTP heads, vocabularies, the llama-server's spec types.

The facts come in as arguments — GGUF headers read by `council.plan.gguf`, the binary's spec types from
`council.members.binary` — so the policy layer stays at the bottom of the data path and imports neither.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from council.errors import CouncilError
from council.policy.loading import LoadedPolicy, Problem
from council.policy.schema import ModelConfig

# llama.cpp's own draft/target compatibility rule (common/speculative.cpp).
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


class ServerFlags(Protocol):
    """What the installed llama-server accepts (`council.members.binary.LlamaServerInfo` is one)."""

    @property
    def build(self) -> int | None: ...

    @property
    def spec_types(self) -> tuple[str, ...]: ...


class ModelHeader(Protocol):
    """A GGUF header (`council.plan.gguf.GgufInfo` is one)."""

    @property
    def arch(self) -> str: ...

    @property
    def metadata(self) -> dict[str, Any]: ...

    def arch_key(self, suffix: str, default: Any = None) -> Any: ...


# Reads a header (`keep_arrays` keeps the vocabulary); raises a CouncilError that says why it cannot.
HeaderReader = Callable[..., ModelHeader]


def vocab_mismatch(target: ModelHeader, draft: ModelHeader) -> str | None:
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


def _read(read_header: HeaderReader, model: ModelConfig, *, keep_arrays: bool = False) -> ModelHeader | str:
    if model.path is None:
        return "a remote model has no GGUF here"
    try:
        return read_header(Path(model.path), keep_arrays=keep_arrays)
    except CouncilError as exc:
        return str(exc)


def path_problem(path: Path, *, missing: str | None = "") -> str | None:
    """Why a model's `path` names no file to read, or None. Not a regular file (a folder, a FIFO, whose open would
    wait for a writer forever) is one; so is a name the system refuses (too long), which `Path.exists` raises on.
    A file that does not exist is one too, said with `missing` after it; `missing=None`: no problem."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None if missing is None else f"{path} does not exist{missing}"
    except OSError as exc:
        return f"{path}: cannot read it: {exc.strerror or exc}"
    return None if stat.S_ISREG(st.st_mode) else f"{path} is not a file"


def file_problems(loaded: LoadedPolicy) -> list[Problem]:
    """Model files that are missing while no `memory:` says how much to plan for them, and paths that name no
    file at all (a folder, a FIFO, a name too long), which no `memory:` excuses."""
    problems = []
    models = loaded.policy.models
    for name, model in models.items():
        unplanned = None if model.memory is not None else " (and no `memory:` is given to plan with)"
        if model.path is not None and (problem := path_problem(model.path, missing=unplanned)) is not None:
            problems.append(loaded.problem(("models", name, "path"), problem))
        # A draft model's memory is planned in its target's process: from both files, or the target's `memory:`
        # (the draft's own says nothing of it). `plan` refused such a policy that `check` called valid.
        draft = models.get(model.draft.model or "") if model.draft.type == "model" else None
        # (Its own line says a draft file that is missing without a `memory:` of its own, or names no file.)
        if (draft is not None and draft.path is not None and draft.memory is not None and model.memory is None
                and model.path is not None and path_problem(model.path) is None
                and path_problem(draft.path, missing=None) is None and path_problem(draft.path) is not None):
            problems.append(loaded.problem(("models", name, "draft", "model"), (
                f"the draft model {model.draft.model}'s file {draft.path} is not there, and its memory is planned "
                f"in {name}'s process: set models.{name}.memory, or fetch the file")))
    return problems


def environment_problems(loaded: LoadedPolicy, server: ServerFlags | None,
                         read_header: HeaderReader) -> list[Problem]:
    """Problems only this machine can reveal; `server` None skips the spec-type checks (nothing to ask)."""
    policy = loaded.policy
    problems = file_problems(loaded)
    headers: dict[str, ModelHeader] = {}
    for name, model in policy.models.items():
        base = ("models", name)
        if model.path is None or path_problem(model.path) is not None:  # remote, or reported above
            continue
        header = _read(read_header, model)
        if isinstance(header, str):
            problems.append(loaded.problem((*base, "path"), header))
            continue
        headers[name] = header
        nextn = header.arch_key("nextn_predict_layers", 0)
        # Not int(): a malformed header (an array there) is a problem line, not a TypeError.
        if model.draft.type == "mtp" and not (isinstance(nextn, int) and nextn >= 1):
            problems.append(loaded.problem((*base, "draft", "type"),
                                           f"draft type mtp needs a model with an MTP head; {model.path.name} "
                                           f"({header.arch}) has no {header.arch}.nextn_predict_layers"))
    if server is not None:
        for name, model in policy.models.items():
            if model.draft.type != "none" and model.draft.spec_type(server.spec_types) is None:
                problems.append(loaded.problem(
                    ("models", name, "draft", "type"),
                    f"the installed llama-server (build {server.build}) does not support draft type "
                    f"{model.draft.type!r}; it knows: {', '.join(server.spec_types)}"))
    for name, model in policy.models.items():
        draft_name = model.draft.model
        if model.draft.type != "model" or draft_name is None or name not in headers or draft_name not in headers:
            continue
        target = _read(read_header, model, keep_arrays=True)
        draft = _read(read_header, policy.models[draft_name], keep_arrays=True)
        if not isinstance(target, str) and not isinstance(draft, str):
            reason = vocab_mismatch(target, draft)
            if reason:
                problems.append(loaded.problem(("models", name, "draft", "model"),
                                               f"{draft_name!r} cannot draft for {name!r}: {reason}"))
    return problems


def missing_run_files(loaded: LoadedPolicy, models: Collection[str] | None = None) -> list[Problem]:
    """The model files that processes of this host would run from (those of `models`, else every council's) and
    that are not there, `memory:` or not: `check` plans a missing file by its `memory:` (a policy written for
    another machine), but `up` and `serve` started processes that could never load, and a reload that accepted
    one stopped a council's working processes for them."""
    policy = loaded.policy
    used: set[str] = set(models or ())
    if models is None:
        for council in policy.councils.values():
            used |= {m.model for m in council.members}
            if council.fallback is not None and council.fallback.model is not None:
                used.add(council.fallback.model)
    used |= {policy.models[m].draft.model or "" for m in used if m in policy.models}
    problems = []
    for name in sorted(used & set(policy.models)):
        path = policy.models[name].path
        if path is not None and (why := path_problem(path, missing="")) is not None:
            problems.append(loaded.problem(("models", name, "path"), f"{why}: a process of this host runs it "
                                           "(`memory:` plans for it, but cannot start it)"))
    return problems
