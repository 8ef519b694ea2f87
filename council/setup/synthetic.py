"""Tiny synthetic Qwen3.5 GGUF models with (or without) an MTP block, for tests without a GPU.

The model is built so its output is known in advance: every lowercase letter predicts the
next one (``a → b → … → z → a``) and every other token predicts ``a``, so greedy
generation after any chat prompt is ``abcdefghijklmnopqrstuvwxyzabcd…`` and never emits
an end-of-generation token. The trunk layers carry small random weights (fixed seed) so
llama.cpp really computes the Gated DeltaNet and attention paths, but the residual stream
dominates and the argmax never changes.

The MTP (NextN) block sees ``concat(enorm(embedding(x)), hnorm(h))``; ``eh_proj = [I | 0]``
keeps only the embedding of the token it drafts from, so by default it predicts exactly what
the trunk predicts (draft acceptance ~100%). With ``disagree_every=K`` a separate
``nextn.shared_head_head`` drafts the letter after next whenever the input byte is a
multiple of K, so those drafts are rejected and the acceptance drops by a known amount.
Because the walk is periodic the figure depends on how draft steps line up with K, not
simply 1 - 1/K. Measured with ``--spec-draft-n-max 2``, greedy, 32 tokens (b11434):
K=0 20/20, K=2 15/30 (exactly 50%: the second draft is always wrong), K=3 20/21,
K=4 16/28, K=5 18/24.

Usage: ``python -m council.synthetic OUT.gguf [--no-mtp] [--seed N] [--disagree-every K]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

ARCH = "qwen35"

# Letters the model walks through; all other tokens lead back to the first one.
WALK = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]

# A few real BPE merges so that `tokenizer.ggml.merges` is non-empty and exercised.
MERGES = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "e r", "Ġt he"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Scale of the random layer weights: small enough that the residual (one-hot embedding)
# keeps the argmax, large enough that the layers' outputs are not trivially zero.
NOISE = 0.02
# Weight of the output head on the one-hot direction. After the final RMS norm a one-hot
# residual has magnitude sqrt(n_embd) ≈ 11, so the chosen token's logit is ~ 23 and every
# other logit is ~ 0: sampling is effectively greedy even at temperature 1.
HEAD_GAIN = 2.0


@dataclass(frozen=True)
class Qwen35Shape:
    """Hyperparameters of the synthetic model (defaults verified against llama.cpp b11434)."""

    n_embd: int = 128
    n_trunk_layers: int = 4  # Gated DeltaNet + full-attention layers, MTP block not included
    full_attention_interval: int = 4  # every 4th trunk layer is full attention
    n_head: int = 2
    n_head_kv: int = 1
    head_dim: int = 32
    n_ff: int = 256
    ssm_state: int = 16
    ssm_group: int = 2
    ssm_time_step_rank: int = 2
    ssm_conv: int = 4
    ssm_inner: int = 32
    context_length: int = 4096
    rope_sections: tuple[int, int, int, int] = (2, 1, 1, 0)
    rms_eps: float = 1e-6

    def __post_init__(self) -> None:
        # llama.cpp asserts these relations when it builds the DeltaNet graph.
        if self.ssm_inner != self.ssm_state * self.ssm_time_step_rank:
            raise ValueError("ssm_inner must equal ssm_state * ssm_time_step_rank")
        if self.ssm_time_step_rank % self.ssm_group:
            raise ValueError("ssm_time_step_rank must be a multiple of ssm_group")
        if self.n_head % self.n_head_kv:
            raise ValueError("n_head must be a multiple of n_head_kv")
        if sum(self.rope_sections) <= 0:
            raise ValueError("rope_sections must sum to more than 0")
        if self.n_embd < len(WALK) + 1:
            raise ValueError(f"n_embd must be at least {len(WALK) + 1} for the one-hot embeddings")

    @property
    def n_vocab(self) -> int:
        """256 byte tokens, one token per merge, and the control tokens."""
        return 256 + len(MERGES) + len(SPECIALS)

    @property
    def ssm_conv_dim(self) -> int:
        """Channels of the DeltaNet short convolution: q and k (per group) plus v."""
        return 2 * self.ssm_group * self.ssm_state + self.ssm_inner

    def is_full_attention(self, il: int) -> bool:
        """Whether trunk layer `il` is full attention (as llama.cpp derives it)."""
        return (il + 1) % self.full_attention_interval == 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map, as llama.cpp's BPE expects."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab() -> tuple[list[str], list[int]]:
    """Token strings and types: token id == byte value for the first 256 tokens."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [gguf.TokenType.NORMAL] * (256 + len(MERGES)) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    return tokens, [int(t) for t in types]


def _next_letter(byte: int) -> int:
    """The walk: a letter predicts the following letter (z wraps to a), anything else predicts a."""
    if byte in WALK:
        return WALK[(WALK.index(byte) + 1) % len(WALK)]
    return WALK[0]


def _embeddings(shape: Qwen35Shape) -> np.ndarray:
    """One-hot rows: letter i → dimension i, every other token → the shared dimension len(WALK)."""
    emb = np.zeros((shape.n_vocab, shape.n_embd), dtype=np.float32)
    other = len(WALK)
    emb[:, other] = 1.0
    for i, byte in enumerate(WALK):
        emb[byte, other] = 0.0
        emb[byte, i] = 1.0
    return emb


def _head(shape: Qwen35Shape, disagree_every: int = 0) -> np.ndarray:
    """Output head (numpy shape (n_vocab, n_embd)): the logit of next(x) reads x's dimension.

    With disagree_every=K > 0, letters whose byte value is a multiple of K skip one letter.
    """
    head = np.zeros((shape.n_vocab, shape.n_embd), dtype=np.float32)
    for i, byte in enumerate(WALK):
        target = _next_letter(byte)
        if disagree_every > 0 and byte % disagree_every == 0:
            target = _next_letter(target)
        head[target, i] = HEAD_GAIN
    head[WALK[0], len(WALK)] = HEAD_GAIN
    return head


def _name(tensor: MODEL_TENSOR, il: int | None = None, suffix: str | None = "weight") -> str:
    base = TENSOR_NAMES[tensor].format(bid=il)
    return f"{base}.{suffix}" if suffix else base


class _Tensors:
    """Collects named F32 tensors; numpy shapes are the reverse of ggml's {ne0, ne1}."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.items: list[tuple[str, np.ndarray]] = []

    def add(self, name: str, value: np.ndarray) -> None:
        self.items.append((name, np.ascontiguousarray(value, dtype=np.float32)))

    def noise(self, name: str, *numpy_shape: int) -> None:
        self.add(name, self.rng.normal(0.0, NOISE, size=numpy_shape))

    def ones(self, name: str, n: int) -> None:
        self.add(name, np.ones(n, dtype=np.float32))


def _add_norms_and_ffn(t: _Tensors, shape: Qwen35Shape, il: int) -> None:
    t.ones(_name(MODEL_TENSOR.ATTN_NORM, il), shape.n_embd)
    t.ones(_name(MODEL_TENSOR.ATTN_POST_NORM, il), shape.n_embd)
    t.noise(_name(MODEL_TENSOR.FFN_GATE, il), shape.n_ff, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.FFN_UP, il), shape.n_ff, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.FFN_DOWN, il), shape.n_embd, shape.n_ff)


def _add_full_attention(t: _Tensors, shape: Qwen35Shape, il: int) -> None:
    # attn_q outputs query and gate interleaved per head, hence the factor 2.
    t.noise(_name(MODEL_TENSOR.ATTN_Q, il), 2 * shape.n_head * shape.head_dim, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.ATTN_K, il), shape.n_head_kv * shape.head_dim, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.ATTN_V, il), shape.n_head_kv * shape.head_dim, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.ATTN_OUT, il), shape.n_embd, shape.n_head * shape.head_dim)
    t.ones(_name(MODEL_TENSOR.ATTN_Q_NORM, il), shape.head_dim)
    t.ones(_name(MODEL_TENSOR.ATTN_K_NORM, il), shape.head_dim)


def _add_delta_net(t: _Tensors, shape: Qwen35Shape, il: int) -> None:
    rank = shape.ssm_time_step_rank
    t.noise(_name(MODEL_TENSOR.ATTN_QKV, il), shape.ssm_conv_dim, shape.n_embd)
    # attn_gate is optional to the loader, but the server crashes at inference without it.
    t.noise(_name(MODEL_TENSOR.ATTN_GATE, il), shape.ssm_inner, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.SSM_CONV1D, il), shape.ssm_conv_dim, shape.ssm_conv)
    t.add(_name(MODEL_TENSOR.SSM_DT, il, "bias"), np.ones(rank))
    # Stored as -exp(A_log) under a name without ".weight", as the converter writes it.
    t.add(_name(MODEL_TENSOR.SSM_A, il, None), -np.exp(t.rng.normal(0.0, 0.1, size=rank)))
    t.noise(_name(MODEL_TENSOR.SSM_BETA, il), rank, shape.n_embd)
    t.noise(_name(MODEL_TENSOR.SSM_ALPHA, il), rank, shape.n_embd)
    t.ones(_name(MODEL_TENSOR.SSM_NORM, il), shape.ssm_state)
    t.noise(_name(MODEL_TENSOR.SSM_OUT, il), shape.n_embd, shape.ssm_inner)


def _add_mtp(t: _Tensors, shape: Qwen35Shape, il: int, disagree_every: int) -> None:
    _add_norms_and_ffn(t, shape, il)
    _add_full_attention(t, shape, il)
    # eh_proj = [I | 0]: keep the embedding half and drop the hidden state, so the block
    # predicts next(x) from the token x it is given, like the trunk does.
    eh = np.zeros((shape.n_embd, 2 * shape.n_embd), dtype=np.float32)
    eh[:, : shape.n_embd] = np.eye(shape.n_embd, dtype=np.float32)
    t.add(_name(MODEL_TENSOR.NEXTN_EH_PROJ, il), eh)
    t.ones(_name(MODEL_TENSOR.NEXTN_ENORM, il), shape.n_embd)
    t.ones(_name(MODEL_TENSOR.NEXTN_HNORM, il), shape.n_embd)
    if disagree_every > 0:
        # Without this tensor llama.cpp falls back to the trunk's `output`.
        t.add(_name(MODEL_TENSOR.NEXTN_SHARED_HEAD_HEAD, il), _head(shape, disagree_every))


def write_qwen35(
    path: Path,
    *,
    mtp: bool = True,
    seed: int = 0,
    shape: Qwen35Shape = Qwen35Shape(),  # frozen dataclass: safe as a default
    disagree_every: int = 0,
) -> Path:
    """Write a deterministic F32 qwen35 GGUF to `path` and return `path`.

    `mtp` adds the NextN block as the last block; `disagree_every=K` (needs `mtp`) makes the
    MTP head draft a wrong token after every byte divisible by K.
    """
    if disagree_every < 0:
        raise ValueError("disagree_every must be >= 0")
    if disagree_every and not mtp:
        raise ValueError("disagree_every needs the MTP block")
    path = Path(path)
    rng = np.random.default_rng(seed)
    block_count = shape.n_trunk_layers + (1 if mtp else 0)

    t = _Tensors(rng)
    t.add(_name(MODEL_TENSOR.TOKEN_EMBD), _embeddings(shape))
    t.ones(_name(MODEL_TENSOR.OUTPUT_NORM), shape.n_embd)
    t.add(_name(MODEL_TENSOR.OUTPUT), _head(shape))
    for il in range(shape.n_trunk_layers):
        _add_norms_and_ffn(t, shape, il)
        if shape.is_full_attention(il):
            _add_full_attention(t, shape, il)
        else:
            _add_delta_net(t, shape, il)
    if mtp:
        _add_mtp(t, shape, shape.n_trunk_layers, disagree_every)

    tokens, types = _vocab()
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name("council synthetic qwen35" + (" mtp" if mtp else ""))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(block_count)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    # Needed because head_dim differs from n_embd / n_head.
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_dimension_sections(list(shape.rope_sections))
    writer.add_full_attention_interval(shape.full_attention_interval)
    writer.add_ssm_conv_kernel(shape.ssm_conv)
    writer.add_ssm_state_size(shape.ssm_state)
    writer.add_ssm_group_count(shape.ssm_group)
    writer.add_ssm_time_step_rank(shape.ssm_time_step_rank)
    writer.add_ssm_inner_size(shape.ssm_inner)
    if mtp:
        # Without this key the last block would be loaded as a trunk (DeltaNet) layer.
        writer.add_nextn_predict_layers(1)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen35")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, value in t.items:
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: write one synthetic model."""
    parser = argparse.ArgumentParser(prog="python -m council.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--no-mtp", action="store_true", help="leave out the MTP (NextN) block")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random layer weights")
    parser.add_argument(
        "--disagree-every",
        type=int,
        default=0,
        metavar="K",
        help="MTP head drafts a wrong token after every byte divisible by K (0: never)",
    )
    args = parser.parse_args(argv)
    try:
        path = write_qwen35(args.out, mtp=not args.no_mtp, seed=args.seed, disagree_every=args.disagree_every)
    except ValueError as e:
        parser.error(str(e))
    print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
