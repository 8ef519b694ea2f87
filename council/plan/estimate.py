"""How much memory one llama-server process takes, known before it is launched.

The planner packs processes into fixed GPU-memory slots, so it needs each process's footprint from its
`ModelConfig` and the GGUF header alone. Every rule below follows llama.cpp build 11434 (the build
`council setup` installs); the source file that holds each rule is cited next to it. What llama.cpp
allocates is exact arithmetic (weights, KV cache, recurrent state); the compute buffer is a fit of the
graph allocator's peak (exact to 0.1 MiB for llama, qwen2 and gemma3; within ~12% for qwen35 shapes);
the per-process overhead is measured: on the CPU by `bench/estimate.py`, on a GPU once on an H100.

    device="cpu"  everything in host memory: the resident set (RSS) of a CPU-only llama-server once it
                  has served a request (compute buffer touched), without the prompt cache
                  (`--cache-ram`) and context checkpoints (`--ctx-checkpoints`) that grow later.
    device="gpu"  what sits in GPU memory (nvidia-smi's per-process used memory) with `gpu_layers`
                  offloaded: weights of those layers (plus the output layer), their KV cache and
                  recurrent state, the compute buffer, and the CUDA context, cuBLAS and pool of the
                  process. Host-side buffers (token embeddings, logits, graph metadata) are not counted.
                  Even with gpu_layers=0 a process that sees the GPU takes ~700 MiB there (its context
                  and op-offload compute buffer): hide the GPU from CPU-only members.

Unknown architectures fall back to generic transformer rules on the keys present (see `model_shape`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from council.errors import CouncilError
from council.plan.gguf import ArrayInfo, GgufInfo, read_gguf
from council.policy.schema import ModelConfig

MIB = 1 << 20

# Bytes per block and elements per block of each KV cache type (ggml's type traits).
KV_TYPE_SIZE: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "q4_1": (20, 32),
    "iq4_nl": (18, 32),
    "q5_0": (22, 32),
    "q5_1": (24, 32),
}

# llama-context.cpp pads n_ctx (and n_ctx_seq) to a multiple of 256; llama-kv-cache-iswa.cpp pads the
# SWA cache the same way.
CTX_PAD = 256

# Speculative types that keep per-draft-token rollback snapshots of the recurrent state
# (common.h `need_n_rs_seq`); `mtp` is the policy's spelling of `draft-mtp`.
ROLLBACK_SPEC_TYPES = frozenset({"mtp", "draft-mtp", "eagle3", "draft-eagle3", "dflash", "draft-dflash",
                                 "dspark", "draft-dspark"})
MTP_SPEC_TYPES = frozenset({"mtp", "draft-mtp"})

# Hybrid architectures whose trunk alternates recurrent (Gated DeltaNet) and full-attention layers by
# `full_attention_interval` (models/qwen35.cpp `load_arch_hparams`).
INTERVAL_HYBRID_ARCHS = frozenset({"qwen35", "qwen35moe", "qwen3next"})
# llama-arch.cpp `llm_arch_supports_rs_rollback`: only these keep the extra n_max snapshot rows.
RS_ROLLBACK_ARCHS = frozenset({"qwen35", "qwen35moe", "kimi-k3", "glm5-next", "nemotron_h", "nemotron_h_moe",
                               "lfm2", "lfm2moe", "bailingmoe3", "deepseek4", "qwen4exp"})
# llama-context.cpp `graph_max_nodes`: these archs size the graph by 40 nodes per token.
WIDE_GRAPH_ARCHS = frozenset({"qwen3next", "kimi-linear", "bailingmoe3", "qwen35", "qwen35moe", "qwen4exp",
                              "deepseek4", "minimax-01", "minimax-m3", "hy_v4", "nanbeige"})

# Sliding-window layout per architecture when the GGUF has no `attention.sliding_window_pattern`:
# (pattern, dense_first, default window) from each models/<arch>.cpp `load_swa_pattern` call.
SWA_DEFAULTS: dict[str, tuple[int, bool, int]] = {
    "gemma2": (2, False, 4096),
    "gemma3": (6, False, 0),
    "gemma3n": (5, False, 0),
    "cohere2": (4, False, 0),
    "gpt-oss": (2, False, 0),
    "llama4": (4, False, 8192),
    "exaone4": (4, False, 4096),
    "olmo2": (4, False, 0),
}

# --- Constants fitted from measurement (bench/estimate.py: least squares over the cases whose compute
# buffer the request touched whole; llama-server b11434 CPU build, `--fit off`, glibc malloc) ---

# Base RSS of a CPU llama-server: binary, libc/libstdc++/OpenMP, HTTP threads, heap after loading.
CPU_BASE_BYTES = 16 * MIB
# Heap kept per vocabulary token (strings, token<->id maps, piece cache) and per BPE merge (rank map).
CPU_BYTES_PER_TOKEN = 165
CPU_BYTES_PER_MERGE = 120
# Graph metadata per node of `graph_max_nodes`, per llama_context (scheduler arrays, graph copies).
CPU_BYTES_PER_GRAPH_NODE = 1_250
# Fixed host cost of a second (MTP or draft-model) context beyond its graph: sampler, backend, batch.
CPU_SPEC_CONTEXT_BYTES = 3 * MIB

# GPU memory of one llama-server process beyond its logged CUDA buffers, after its first request:
# CUDA context (527 MiB bare on this driver), cuBLAS handle (68 MiB) and what the first batch loads
# (~100 MiB: cuBLAS kernels and workspace, ggml's CUDA pool). Measured once with a CUDA build of b11434
# (sm_90) on an NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 13.0, with small synthetic qwen35 models
# (nvidia-smi per-process used memory minus the logged CUDA0 buffers: 691..700 MiB over 6 configs).
# Larger quantized models may grow ggml's pool further (dequantization scratch for cuBLAS): re-measure.
GPU_CONTEXT_BYTES = 700 * MIB
# A second llama_context (MTP head or draft model) in the same process: +102..110 MiB measured.
GPU_SPEC_CONTEXT_BYTES = 110 * MIB
# Head sizes the CUDA flash-attention kernels support (ggml-cuda/fattn.cu); with `-fa auto` any other
# head size runs without flash attention on a GPU (e.g. the synthetic model's 32).
CUDA_FA_HEAD_SIZES = frozenset({40, 64, 72, 80, 96, 112, 128, 192, 256, 320, 512, 576})


MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: its loader refuses a model with more


class EstimateError(CouncilError, ValueError):
    """The GGUF header lacks a key the estimate needs, or the configuration cannot start."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one member process needs, by component; `mtp` is everything the MTP head adds."""

    weights: int
    kv: int
    recurrent: int
    mtp: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(self.breakdown().values())

    def breakdown(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class Shape:
    """The hyperparameters the estimate uses, as llama.cpp's `llama_hparams` derives them."""

    arch: str
    known: bool  # False: generic transformer rules on whatever keys are present
    n_layer_all: int  # `block_count`, MTP (NextN) blocks included
    n_nextn: int
    n_embd: int
    n_ff: int
    n_vocab: int
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer; 0 means no KV cache in that layer
    head_k: int
    head_v: int
    n_swa: int
    swa_layers: frozenset[int]
    recurrent_layers: frozenset[int]
    ssm_conv: int
    ssm_inner: int
    ssm_state: int
    ssm_group: int
    n_tensors: int
    n_merges: int  # BPE merges (`tokenizer.ggml.merges`): heap the tokenizer keeps

    @property
    def n_layer(self) -> int:
        """Trunk layers (llama_hparams::n_layer): the MTP blocks come after them."""
        return self.n_layer_all - self.n_nextn

    def has_kv(self, il: int) -> bool:
        return il not in self.recurrent_layers and self.n_head_kv[il] > 0

    def kv_row_elems(self, il: int) -> tuple[int, int]:
        return self.head_k * self.n_head_kv[il], self.head_v * self.n_head_kv[il]


@dataclass(frozen=True)
class Context:
    """llama_context's cparams for one process (llama-context.cpp constructor)."""

    n_seq: int
    n_ctx: int  # total KV cells over all sequences
    n_ctx_seq: int  # cells per stream
    n_stream: int
    unified: bool
    n_batch: int
    n_ubatch: int
    n_outputs_max: int
    n_rs_seq: int
    flash_attn: bool


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _is_count(value: Any, minimum: int) -> bool:
    # A GGUF bool reads as a Python bool, an int to isinstance; llama.cpp takes neither it nor a float as a count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _describe(value: Any) -> str:
    if isinstance(value, ArrayInfo | list):
        return f"an array of {_array_length(value)} values"
    return repr(value)


def _count(gguf: GgufInfo, suffix: str, value: Any, minimum: int = 0) -> int:
    """A header value that must be one integer of at least `minimum`: an EstimateError naming the file and key
    otherwise (`block_count: 0` or an array would surface later as an IndexError or TypeError)."""
    if not _is_count(value, minimum):
        raise EstimateError(f"{gguf.path.name}: GGUF key `{gguf.arch}.{suffix}` is {_describe(value)}; "
                            f"expected an integer of at least {minimum}")
    return int(value)


def _optional_count(gguf: GgufInfo, suffix: str, default: int) -> int:
    """An optional count; absent or 0 (llama.cpp's "not set") gives `default`."""
    value = gguf.arch_key(suffix)
    if value is None:
        return default
    return _count(gguf, suffix, value) or default


def _per_layer(gguf: GgufInfo, suffix: str, value: Any, n_layer: int, minimum: int = 0) -> tuple[int, ...]:
    """A hyperparameter that may be one number or one per layer (e.g. `head_count_kv` arrays)."""
    name = f"{gguf.path.name}: GGUF key `{gguf.arch}.{suffix}`"
    if isinstance(value, list):
        if len(value) < n_layer:
            raise EstimateError(f"{name} lists {len(value)} values for {n_layer} layers")
        if not all(_is_count(v, 0) for v in value[:n_layer]):
            raise EstimateError(f"{name} holds a value that is not a whole number of at least 0")
        return tuple(int(v) for v in value[:n_layer])
    if isinstance(value, ArrayInfo):
        raise EstimateError(f"{name} is an array too long to read from the header")
    return (_count(gguf, suffix, value, minimum),) * n_layer


def _required(gguf: GgufInfo, suffix: str) -> Any:
    value = gguf.arch_key(suffix)
    if value is None:
        raise EstimateError(f"{gguf.path.name}: GGUF key `{gguf.arch}.{suffix}` is missing; cannot estimate memory")
    return value


def _tensor_dim(gguf: GgufInfo, name: str, dim: int) -> int | None:
    tensor = gguf.tensors.get(name)
    return tensor.shape[dim] if tensor is not None and len(tensor.shape) > dim else None


def _array_length(value: Any) -> int:
    if isinstance(value, ArrayInfo):
        return value.length
    return len(value) if isinstance(value, list) else 0


def _layer_set(flags: Any, n_layer: int) -> frozenset[int] | None:
    if isinstance(flags, list) and len(flags) >= n_layer:
        return frozenset(i for i in range(n_layer) if flags[i])
    return None


def _swa_layers(gguf: GgufInfo, n_layer: int, n_layer_all: int) -> tuple[int, frozenset[int]]:
    """Window size and sliding-window layers (llama-hparams.cpp `set_swa_pattern`)."""
    arch = gguf.arch
    default = SWA_DEFAULTS.get(arch)
    n_swa = _optional_count(gguf, "attention.sliding_window", default[2] if default else 0)
    if n_swa <= 0:
        return 0, frozenset()
    pattern = gguf.arch_key("attention.sliding_window_pattern")
    explicit = _layer_set(pattern, n_layer_all)
    if explicit is not None:
        return n_swa, frozenset(i for i in explicit if i < n_layer)
    if default is None and not isinstance(pattern, int):
        # Unknown layout: counting every layer as full attention can only over-estimate.
        return 0, frozenset()
    n_pattern = int(pattern) if isinstance(pattern, int) else default[0] if default else 0
    dense_first = default[1] if default else False
    if dense_first:
        layers = (il for il in range(n_layer) if n_pattern == 0 or il % n_pattern != 0)
    else:
        layers = (il for il in range(n_layer) if n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return n_swa, frozenset(layers)


def _recurrent_layers(gguf: GgufInfo, n_layer: int, n_layer_all: int) -> frozenset[int]:
    """Trunk layers with recurrent state instead of KV (models/qwen35.cpp; MTP blocks never are)."""
    explicit = _layer_set(gguf.arch_key("attention.recurrent_layers"), n_layer_all)
    if explicit is not None:
        return frozenset(i for i in explicit if i < n_layer)
    if gguf.arch in INTERVAL_HYBRID_ARCHS:
        interval = _optional_count(gguf, "full_attention_interval", 4)
        return frozenset(il for il in range(n_layer) if (il + 1) % interval != 0)
    return frozenset()


def model_shape(gguf: GgufInfo) -> Shape:
    """Read the hyperparameters from the header.

    Known architectures follow their llama.cpp loader; any other falls back to generic transformer
    rules on the keys present (every layer full attention with KV, no recurrent state), which can only
    over-estimate. A missing `block_count`, `embedding_length` or `attention.head_count`, or one that is not a
    positive integer (a count that is 0, an array, a float), raises EstimateError naming the file and the key,
    never KeyError, IndexError or TypeError.
    """
    if not gguf.arch:
        raise EstimateError(f"{gguf.path.name}: GGUF has no general.architecture")
    n_layer_all = _count(gguf, "block_count", _required(gguf, "block_count"), 1)
    if n_layer_all > MAX_LAYERS:  # a corrupt count: per-layer tuples of 2^31 entries took gigabytes, then died
        raise EstimateError(f"{gguf.path.name}: GGUF key `{gguf.arch}.block_count` is {n_layer_all}; llama.cpp "
                            f"loads at most {MAX_LAYERS} layers (a corrupt or foreign file)")
    n_embd = _count(gguf, "embedding_length", _required(gguf, "embedding_length"), 1)
    n_nextn = _optional_count(gguf, "nextn_predict_layers", 0)
    if n_nextn >= n_layer_all:
        raise EstimateError(f"{gguf.path.name}: {n_nextn} MTP layers (`{gguf.arch}.nextn_predict_layers`) leave "
                            f"none of the {n_layer_all} blocks for the model itself")
    n_layer = n_layer_all - n_nextn
    n_head = _per_layer(gguf, "attention.head_count", _required(gguf, "attention.head_count"), n_layer_all, 1)
    n_head_kv = _per_layer(gguf, "attention.head_count_kv", gguf.arch_key("attention.head_count_kv", n_head[0]),
                           n_layer_all)
    head_default = n_embd // max(n_head[0], 1)
    head_k = _optional_count(gguf, "attention.key_length", head_default)
    head_v = _optional_count(gguf, "attention.value_length", head_default)
    n_ff_raw = gguf.arch_key("feed_forward_length")
    if isinstance(n_ff_raw, list | ArrayInfo):
        n_ff = max(_per_layer(gguf, "feed_forward_length", n_ff_raw, _array_length(n_ff_raw)), default=0)
    elif n_ff_raw is not None:
        n_ff = _count(gguf, "feed_forward_length", n_ff_raw)
    else:
        # MoE or unusual files: the up projection's width, else the usual 4x.
        n_ff = _tensor_dim(gguf, "blk.0.ffn_up.weight", 1) or 4 * n_embd
    n_vocab = gguf.vocab_size or _optional_count(gguf, "vocab_size", 0)
    if n_vocab == 0:
        n_vocab = _tensor_dim(gguf, "token_embd.weight", 1) or 0
    n_swa, swa_layers = _swa_layers(gguf, n_layer, n_layer_all)
    recurrent = _recurrent_layers(gguf, n_layer, n_layer_all)
    # Recurrent layers need the SSM sizes, as llama.cpp's loader does (no silent zero-size state).
    ssm = {key: _count(gguf, f"ssm.{key}", _required(gguf, f"ssm.{key}")) if recurrent
           else _optional_count(gguf, f"ssm.{key}", 0)
           for key in ("conv_kernel", "inner_size", "state_size", "group_count")}
    return Shape(
        arch=gguf.arch,
        known=gguf.arch in KNOWN_ARCHS,
        n_layer_all=n_layer_all,
        n_nextn=n_nextn,
        n_embd=n_embd,
        n_ff=n_ff,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_k=head_k,
        head_v=head_v,
        n_swa=n_swa,
        swa_layers=swa_layers,
        recurrent_layers=recurrent,
        ssm_conv=ssm["conv_kernel"],
        ssm_inner=ssm["inner_size"],
        ssm_state=ssm["state_size"],
        ssm_group=ssm["group_count"],
        n_tensors=len(gguf.tensors),
        n_merges=_array_length(gguf.metadata.get("tokenizer.ggml.merges")),
    )


def read_model_header(path: Path | str, *, keep_arrays: bool = False) -> GgufInfo:
    """`read_gguf`, refused (EstimateError) where `model_shape` cannot read the model from it, so `council check`
    says what `council plan` would."""
    info = read_gguf(path, keep_arrays=keep_arrays)
    model_shape(info)
    return info


# Architectures whose memory layout the rules above describe exactly.
KNOWN_ARCHS = frozenset({"llama", "qwen2", "qwen3", "mistral3", "gemma", "granite", "smollm3",
                         *SWA_DEFAULTS, *INTERVAL_HYBRID_ARCHS})


def _arg_value(args: Iterable[str], *names: str) -> str | None:
    """The value of the last `--flag VALUE` or `--flag=VALUE` among `names` in extra server args."""
    found = None
    items = list(args)
    for i, arg in enumerate(items):
        for name in names:
            if arg == name and i + 1 < len(items):
                found = items[i + 1]
            elif arg.startswith(name + "="):
                found = arg.split("=", 1)[1]
    return found


def _has_flag(args: Iterable[str], *names: str) -> bool:
    return any(arg in names for arg in args)


def _flash_attention(model: ModelConfig, shape: Shape, device: Literal["cpu", "gpu"]) -> bool:
    """Whether flash attention runs: `-fa auto` turns it on where the device supports the op
    (llama-context.cpp `resolve_fused_ops`) and always for a quantized V cache (llama.cpp requires it)."""
    quantized_v = KV_TYPE_SIZE[model.cache_type_v][1] > 1
    if model.flash_attn is False:
        if quantized_v:
            # llama-context.cpp refuses this combination at startup.
            raise EstimateError(f"cache_type_v {model.cache_type_v} needs flash attention (flash_attn is off)")
        return False
    if model.flash_attn is True or quantized_v or device == "cpu":
        return True
    return shape.head_k in CUDA_FA_HEAD_SIZES


def context_params(model: ModelConfig, shape: Shape, parallel: int | None = None,
                   device: Literal["cpu", "gpu"] = "cpu") -> Context:
    """cparams as llama-context.cpp computes them, and what llama-server passes in."""
    n_seq = max(1, parallel if parallel is not None else model.parallel)
    # llama-context.cpp: n_ctx is padded to 256; without a unified cache each sequence gets its own
    # stream of n_ctx/n_seq cells, itself padded to 256, so the total can grow past -c.
    n_ctx = _pad(model.ctx_size, CTX_PAD)
    if model.kv_unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq, CTX_PAD)
        n_ctx, n_stream = n_ctx_seq * n_seq, n_seq
    # Causal attention caps the batch at the context (llama-context.cpp).
    n_batch = min(n_ctx, model.batch_size)
    n_ubatch = min(n_batch, model.ubatch_size)
    draft_type = model.draft.type
    n_draft = model.draft.n if draft_type != "none" else 0
    # server-context.cpp `server_output_limits`: one output per sequence plus one per draft token.
    n_outputs_max = max(1, min(n_batch, n_seq * (1 + n_draft)))
    n_rs_seq = model.draft.n if draft_type in ROLLBACK_SPEC_TYPES and shape.arch in RS_ROLLBACK_ARCHS else 0
    return Context(n_seq=n_seq, n_ctx=n_ctx, n_ctx_seq=n_ctx_seq, n_stream=n_stream, unified=model.kv_unified,
                   n_batch=n_batch, n_ubatch=n_ubatch, n_outputs_max=n_outputs_max, n_rs_seq=n_rs_seq,
                   flash_attn=_flash_attention(model, shape, device))


@dataclass(frozen=True)
class Placement:
    """Which layers' memory is counted: all of them on the CPU, the offloaded ones on a GPU."""

    layers: frozenset[int]  # block indices counted
    output: bool  # the output layer (norm, LM head)
    inputs: bool  # the token embeddings (always on the CPU: llama-model.cpp keeps the input layer there)


def placement(model: ModelConfig, shape: Shape, device: Literal["cpu", "gpu"]) -> Placement:
    """llama-model.cpp `load_tensors`: with -ngl N the output layer and the last N-1 blocks are offloaded."""
    everything = frozenset(range(shape.n_layer_all))
    if device == "cpu":
        return Placement(layers=everything, output=True, inputs=True)
    n_gpu = shape.n_layer_all + 1 if model.gpu_layers == "all" else min(model.gpu_layers, shape.n_layer_all + 1)
    start = shape.n_layer_all + 1 - n_gpu
    return Placement(layers=frozenset(il for il in everything if il >= start), output=n_gpu >= 1, inputs=False)


_BLOCK = re.compile(r"^blk\.(\d+)\.")
_INPUT_TENSORS = ("token_embd.", "token_types.", "position_embd.", "per_layer_token_embd.")


def _kv_row_bytes(n_elems: int, kv_type: str) -> int:
    size, block = KV_TYPE_SIZE[kv_type]
    if n_elems % block:
        raise EstimateError(f"KV rows of {n_elems} values do not divide into {kv_type} blocks of {block}")
    return n_elems // block * size


def weight_bytes(gguf: GgufInfo, shape: Shape, where: Placement, *, mtp: bool) -> tuple[int, int]:
    """(trunk weights, MTP-block weights) counted in `where`.

    models/qwen35.cpp loads the NextN blocks only when an MTP context is requested (TENSOR_SKIP
    otherwise). llama-model-loader.cpp gives a tied LM head (no `output.weight`) its own copy of
    `token_embd` only when the output layer sits on another device than the CPU-resident input layer.
    """
    trunk = nextn = 0
    for tensor in gguf.tensors.values():
        block = _BLOCK.match(tensor.name)
        if block is not None:
            il = int(block.group(1))
            if il not in where.layers:
                continue
            if il >= shape.n_layer:
                nextn += tensor.n_bytes if mtp else 0
            else:
                trunk += tensor.n_bytes
        elif tensor.name.startswith(_INPUT_TENSORS):
            trunk += tensor.n_bytes if where.inputs else 0
        elif where.output:
            trunk += tensor.n_bytes
    embd = gguf.tensors.get("token_embd.weight")
    if where.output and not where.inputs and "output.weight" not in gguf.tensors and embd is not None:
        trunk += embd.n_bytes
    return trunk, nextn


def _swa_cells(shape: Shape, ctx: Context, swa_full: bool) -> int:
    """llama-kv-cache-iswa.cpp: the SWA cache holds the window plus one ubatch, padded to 256."""
    if swa_full:
        return ctx.n_ctx_seq * ctx.n_stream
    per_stream = min(ctx.n_ctx_seq, shape.n_swa * (ctx.n_seq if ctx.unified else 1) + ctx.n_ubatch)
    return _pad(per_stream, CTX_PAD) * ctx.n_stream


def kv_cache_bytes(shape: Shape, ctx: Context, layers: Iterable[int], type_k: str, type_v: str, *,
                   swa_full: bool = False) -> int:
    """llama-kv-cache.cpp: per layer a K and a V tensor of (row, cells, streams).

    Cells are n_ctx_seq per stream (n_ctx in total), or the SWA size for sliding-window layers. Without
    flash attention V is stored transposed, padded to the widest layer's row ([TAG_V_CACHE_VARIABLE]).
    """
    counted = [il for il in layers if shape.has_kv(il)]
    v_max = max((shape.kv_row_elems(il)[1] for il in range(shape.n_layer_all) if shape.has_kv(il)), default=0)
    total = 0
    for il in counted:
        cells = _swa_cells(shape, ctx, swa_full) if il in shape.swa_layers else ctx.n_ctx_seq * ctx.n_stream
        k_elems, v_elems = shape.kv_row_elems(il)
        if not ctx.flash_attn:
            v_elems = v_max
        total += cells * (_kv_row_bytes(k_elems, type_k) + _kv_row_bytes(v_elems, type_v))
    return total


def recurrent_state_bytes(shape: Shape, ctx: Context, layers: Iterable[int]) -> int:
    """llama-memory-recurrent.cpp: per recurrent layer, F32 rows of conv state (r) and SSM state (s).

    Rows = n_seq * (1 + n_rs_seq): MTP keeps one rollback snapshot per draft token.
    n_embd_r = (d_conv - 1) * (d_inner + 2 * n_group * d_state), n_embd_s = d_state * d_inner
    (llama-hparams.cpp).
    """
    n_layers = sum(1 for il in layers if il in shape.recurrent_layers)
    if n_layers == 0:
        return 0
    n_embd_r = max(shape.ssm_conv - 1, 0) * (shape.ssm_inner + 2 * shape.ssm_group * shape.ssm_state)
    n_embd_s = shape.ssm_state * shape.ssm_inner
    rows = ctx.n_seq * (1 + ctx.n_rs_seq)
    return n_layers * rows * (n_embd_r + n_embd_s) * 4


def _mask_bytes(shape: Shape, ctx: Context, swa_full: bool) -> int:
    """KQ masks of the worst-case ubatch: one over all cells, one over the SWA cells if any.

    llama-graph.cpp: [n_kv per stream, n_ubatch] in F16 with flash attention, F32 without.
    """
    elem = 2 if ctx.flash_attn else 4
    total = ctx.n_ctx_seq * ctx.n_ubatch * elem
    if shape.swa_layers:
        total += _swa_cells(shape, ctx, swa_full) // ctx.n_stream * ctx.n_ubatch * elem
    return total


def compute_buffer_bytes(shape: Shape, ctx: Context, *, swa_full: bool = False) -> int:
    """Size of the compute buffer llama-context.cpp `sched_reserve` allocates for the worst-case ubatch.

    ggml-alloc reuses memory between ops, so the buffer is the peak of the live activations, not their
    sum: the largest of the phases below, in floats per token of the ubatch, plus the KQ masks, which
    stay live until the last attention layer. Fitted against the logged `compute buffer size`:
    - FFN: 3 * n_ff + 5 * n_embd, exact (to 0.05 MiB) for llama, qwen2, gemma3 at ubatch 64..512;
    - attention: 5 * n_head * head_dim + 2 * n_embd (gated-query qwen35 shapes, where it can dominate);
    - Gated DeltaNet (recurrent layers): 4 * n_embd + 1.5 * conv channels + d_inner
      + 0.7 * d_state * d_inner / 64, a least-squares fit over eight synthetic qwen35 shapes (+-12%;
      the chunked kernel's 64-token chunk state is the last term); check it on a real Qwen3.5 GGUF;
    - LM head: n_vocab logits per output (server: one per sequence and draft token).
    Without flash attention the KQ scores (n_kv x n_ubatch x n_head, F32) dominate at long contexts.
    """
    n_tokens = ctx.n_ubatch
    n_q = shape.head_k * max(shape.n_head)
    per_token = max(3 * shape.n_ff + 5 * shape.n_embd, 5 * n_q + 2 * shape.n_embd)
    if shape.recurrent_layers:
        conv_channels = shape.ssm_inner + 2 * shape.ssm_group * shape.ssm_state
        delta_net = (4 * shape.n_embd + 1.5 * conv_channels + shape.ssm_inner
                     + 0.7 * shape.ssm_state * shape.ssm_inner / 64)
        per_token = max(per_token, round(delta_net))
    peak = n_tokens * per_token * 4
    n_outputs = min(n_tokens, ctx.n_outputs_max)
    peak = max(peak, (2 * n_tokens * shape.n_embd + n_outputs * shape.n_vocab) * 4)
    if not ctx.flash_attn:
        n_kv = shape.head_k * max(shape.n_head_kv)
        scores = ctx.n_ctx_seq * n_tokens * 4 * max(shape.n_head)
        peak = max(peak, scores + n_tokens * 4 * (2 * shape.n_embd + 4 * n_q + 2 * n_kv))
    return peak + _mask_bytes(shape, ctx, swa_full)


def mtp_compute_bytes(shape: Shape, ctx: Context) -> int:
    """Compute buffer of the MTP draft context: one attention + FFN block over one ubatch.

    The KQ mask plus the larger of the FFN step (3 * n_ff + n_embd floats per token) and the attention
    step (4.5 * n_head * head_dim + 2 * n_embd). Fitted on synthetic qwen35 shapes: exact at a 512
    context; at 4096 ggml-alloc sometimes fits the FFN beside the mask and the logged buffer is up to
    2 MiB smaller.
    """
    n_tokens = ctx.n_ubatch
    n_q = shape.head_k * max(shape.n_head)
    mask = ctx.n_ctx_seq * n_tokens * (2 if ctx.flash_attn else 4)
    per_token = max(3 * shape.n_ff + shape.n_embd, (9 * n_q) // 2 + 2 * shape.n_embd)
    # Without flash attention the KQ scores (F32, every head) are live too: 24.89 MiB logged on CUDA
    # for the synthetic model at 4096 cells, 25.75 estimated.
    scores = 0 if ctx.flash_attn else ctx.n_ctx_seq * n_tokens * 4 * max(shape.n_head)
    return mask + scores + n_tokens * per_token * 4


def output_buffer_bytes(shape: Shape, ctx: Context, *, mtp: bool) -> int:
    """llama-context.cpp `output_reserve`: logits for every output, grown to n_outputs_max on decode.

    With MTP the target context also keeps the last hidden state of every batch token (embd_nextn,
    unmasked) and the draft context samples on the backend (logits, probabilities, candidates per
    sequence). Host memory (pinned when a GPU holds the output layer).
    """
    total = shape.n_vocab * ctx.n_outputs_max * 4
    if mtp:
        total += shape.n_embd * ctx.n_batch * 4
        total += ctx.n_seq * (4 * shape.n_vocab * 4 + shape.n_embd * 4)
    return total


def graph_nodes(shape: Shape, ctx: Context) -> int:
    """llama-context.cpp `graph_max_nodes`: the size of each context's graph metadata."""
    if shape.arch in WIDE_GRAPH_ARCHS:
        return max(ctx.n_ubatch * 40, 32 * shape.n_tensors)
    return max(1024, 8 * shape.n_tensors)


def _gpu_compute_extra(gguf: GgufInfo, shape: Shape, ctx: Context, where: Placement, model: ModelConfig) -> int:
    """What the CUDA compute buffer holds beyond the CPU graph's peak (measured on an H100, see tests):

    - a quantized KV cache under flash attention is converted to F16 for the kernel: one layer's K and
      V over all cells (15.10 vs 10.52 MiB logged with q8_0, 4 MiB estimated);
    - with blocks left on the CPU, ggml's op offload copies their weights to the GPU for large batches
      (llama-context.cpp `op_offload`): one CPU-resident block (3.7 MiB logged at -ngl 0, 4 estimated).
    """
    extra = 0
    if ctx.flash_attn and (KV_TYPE_SIZE[model.cache_type_k][1] > 1 or KV_TYPE_SIZE[model.cache_type_v][1] > 1):
        widest = max((sum(shape.kv_row_elems(il)) for il in range(shape.n_layer) if shape.has_kv(il)), default=0)
        extra += ctx.n_ctx_seq * widest * 2
    on_cpu = [il for il in range(shape.n_layer) if il not in where.layers]
    if on_cpu:
        per_block: dict[int, int] = {}
        for tensor in gguf.tensors.values():
            block = _BLOCK.match(tensor.name)
            if block is not None and int(block.group(1)) in on_cpu:
                per_block[int(block.group(1))] = per_block.get(int(block.group(1)), 0) + tensor.n_bytes
        extra += max(per_block.values(), default=0)
    return extra


def _context_overhead(shape: Shape, ctx: Context) -> int:
    """Host memory of one llama_context beyond its buffers: graph metadata sized by `graph_max_nodes`."""
    return graph_nodes(shape, ctx) * CPU_BYTES_PER_GRAPH_NODE


def _vocab_overhead(shape: Shape) -> int:
    """Host heap the tokenizer keeps (llama-vocab.cpp: token strings and maps, BPE merge ranks)."""
    return shape.n_vocab * CPU_BYTES_PER_TOKEN + shape.n_merges * CPU_BYTES_PER_MERGE


def estimate_parts(
    model: ModelConfig,
    gguf: GgufInfo,
    *,
    device: Literal["cpu", "gpu"] = "gpu",
    draft: tuple[ModelConfig, GgufInfo] | None = None,
    parallel: int | None = None,
) -> dict[str, int]:
    """Every buffer the estimate counts, one per llama.cpp allocation (the bench compares them to the
    sizes llama-server logs); `estimate_member_bytes` sums them into components."""
    shape = model_shape(gguf)
    ctx = context_params(model, shape, parallel, device)
    where = placement(model, shape, device)
    mtp_on = model.draft.type in MTP_SPEC_TYPES and model.draft.n > 0
    if mtp_on and shape.n_nextn == 0:
        raise EstimateError(f"{gguf.path.name}: draft type mtp needs an MTP block, the GGUF has none")
    if model.draft.type == "model" and draft is None:
        raise EstimateError("draft type `model` needs the draft model's config and GGUF (`draft=`)")
    swa_full = _has_flag(model.args, "--swa-full")
    kv_offload = not _has_flag(model.args, "-nkvo", "--no-kv-offload")
    # With --no-kv-offload the caches stay in host memory whatever -ngl says.
    state_layers = where.layers if device == "cpu" or kv_offload else frozenset()
    trunk = frozenset(il for il in state_layers if il < shape.n_layer)
    on_cpu = device == "cpu"

    weights, nextn_weights = weight_bytes(gguf, shape, where, mtp=mtp_on)
    parts = {
        "weights": weights,
        "kv": kv_cache_bytes(shape, ctx, trunk, model.cache_type_k, model.cache_type_v, swa_full=swa_full),
        "recurrent": recurrent_state_bytes(shape, ctx, trunk),
        "compute": compute_buffer_bytes(shape, ctx, swa_full=swa_full)
                   + (0 if on_cpu else _gpu_compute_extra(gguf, shape, ctx, where, model)),
        "output": output_buffer_bytes(shape, ctx, mtp=False) if on_cpu else 0,
        "overhead": (CPU_BASE_BYTES + _vocab_overhead(shape) + _context_overhead(shape, ctx)
                     if on_cpu else GPU_CONTEXT_BYTES),
    }
    if mtp_on:
        # The MTP context caches only the NextN blocks (llama-model.cpp `create_memory`, filter
        # il >= n_layer), at --spec-draft-type-k/v (default f16) and the target's context size.
        type_k = _arg_value(model.args, "-ctkd", "--spec-draft-type-k", "--cache-type-k-draft") or "f16"
        type_v = _arg_value(model.args, "-ctvd", "--spec-draft-type-v", "--cache-type-v-draft") or "f16"
        if type_k not in KV_TYPE_SIZE or type_v not in KV_TYPE_SIZE:
            raise EstimateError(f"unknown draft KV cache type {type_k!r}/{type_v!r}")
        nextn_layers = frozenset(il for il in state_layers if il >= shape.n_layer)
        parts["mtp_weights"] = nextn_weights
        parts["mtp_kv"] = kv_cache_bytes(shape, ctx, nextn_layers, type_k, type_v)
        parts["mtp_compute"] = mtp_compute_bytes(shape, ctx) if nextn_layers or on_cpu else 0
        if on_cpu:
            parts["mtp_output"] = output_buffer_bytes(shape, ctx, mtp=True) - parts["output"]
            parts["mtp_overhead"] = CPU_SPEC_CONTEXT_BYTES + _context_overhead(shape, ctx)
        else:
            parts["mtp_overhead"] = GPU_SPEC_CONTEXT_BYTES
    if draft is not None:
        parts.update(_draft_parts(draft, ctx, device))
    return parts


def _draft_parts(draft: tuple[ModelConfig, GgufInfo], ctx: Context, device: Literal["cpu", "gpu"]) -> dict[str, int]:
    """A separate draft model (`draft.type: model`): its weights, KV and compute in the same process.

    speculative.cpp `common_base_params_to_speculative`: the draft context copies the target's context
    size, sequences and batch sizes; only its model, offload (-ngld) and cache types (-ctkd/-ctvd, taken
    from the draft model's own config) differ. It keeps one output per sequence.
    """
    config, gguf = draft
    shape = model_shape(gguf)
    dctx = Context(n_seq=ctx.n_seq, n_ctx=ctx.n_ctx, n_ctx_seq=ctx.n_ctx_seq, n_stream=ctx.n_stream,
                   unified=ctx.unified, n_batch=ctx.n_batch, n_ubatch=ctx.n_ubatch, n_outputs_max=ctx.n_seq,
                   n_rs_seq=0, flash_attn=ctx.flash_attn)
    where = placement(config, shape, device)
    weights, _ = weight_bytes(gguf, shape, where, mtp=False)
    on_cpu = device == "cpu"
    return {
        "draft_weights": weights,
        "draft_kv": kv_cache_bytes(shape, dctx, where.layers, config.cache_type_k, config.cache_type_v),
        "draft_recurrent": recurrent_state_bytes(shape, dctx, where.layers),
        "draft_compute": compute_buffer_bytes(shape, dctx),
        "draft_output": output_buffer_bytes(shape, dctx, mtp=False) if on_cpu else 0,
        "draft_overhead": (_vocab_overhead(shape) + _context_overhead(shape, dctx) + CPU_SPEC_CONTEXT_BYTES
                           if on_cpu else GPU_SPEC_CONTEXT_BYTES),
    }


# Which component each part of `estimate_parts` belongs to.
COMPONENT_OF = {
    "weights": "weights", "draft_weights": "weights",
    "kv": "kv", "draft_kv": "kv",
    "recurrent": "recurrent", "draft_recurrent": "recurrent",
    "compute": "compute", "output": "compute", "draft_compute": "compute", "draft_output": "compute",
    "mtp_weights": "mtp", "mtp_kv": "mtp", "mtp_compute": "mtp", "mtp_output": "mtp", "mtp_overhead": "mtp",
    "overhead": "overhead", "draft_overhead": "overhead",
}


def estimate_member_bytes(
    model: ModelConfig,
    gguf: GgufInfo,
    *,
    device: Literal["cpu", "gpu"] = "gpu",
    draft: tuple[ModelConfig, GgufInfo] | None = None,
    parallel: int | None = None,
) -> MemoryEstimate:
    """Bytes one llama-server process serving `model` takes on `device` (see the module docstring).

    `parallel` overrides `model.parallel` when several members share one process (one slot each).
    `draft` is the draft model's config and header when `model.draft.type` is `model`; its weights, KV
    and compute add to those components. `mtp` is all the MTP head adds: NextN weights, its own KV
    cache and compute buffer (and on the CPU its host buffers and context). The `memory:` override is
    the planner's business, not this function's.
    """
    sums = {f.name: 0 for f in fields(MemoryEstimate)}
    for part, size in estimate_parts(model, gguf, device=device, draft=draft, parallel=parallel).items():
        sums[COMPONENT_OF[part]] += size
    return MemoryEstimate(**sums)
