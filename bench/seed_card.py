"""The estimator's GPU memory for the seed model card's config, without the real GGUF.

The card (localweights/Qwen3.5-4B-MTP-IQ4_XS-GGUF) serves Qwen3.5-4B with its MTP (NextN) head, IQ4_XS,
2.5 GB file, NextN tensors at blk.32 (block_count 33, nextn_predict_layers 1), with

    llama-server -ngl 999 -fa on --spec-type draft-mtp --spec-draft-n-max 2 --ctx-size 8192
                 -ctk q4_0 -ctv q4_0 --parallel 1 --kv-unified

and reports "VRAM @ 8K ctx ~2.7 GB" (RTX 3090 Ti). We do not have the file, so this script builds the
`GgufInfo` that llama.cpp's converter and `llama-quantize ... IQ4_XS` would write for it: metadata keys
as conversion/qwen.py (b11434) writes them, and a tensor table with the names and shapes models/qwen35.cpp
loads (the same layout as council/synthetic.py) and the types llama-quant.cpp picks for IQ4_XS. Every
hyperparameter is printed with its source. The table's total is checked against the card's file sizes
(2.5 GB IQ4_XS, 8.1 GB bf16), which also settles the tied embeddings.

Usage: python bench/seed_card.py [--out PATH]    (writes bench/results/seed_card.json by default)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from council.plan.estimate import MemoryEstimate, estimate_member_bytes, estimate_parts
from council.plan.gguf import ArrayInfo, GgufInfo, Tensor, tensor_bytes
from council.policy.schema import DraftConfig, ModelConfig

ARCH = "qwen35"
MIB = 1 << 20
GIB = 1 << 30
GB = 10**9
RESULTS = Path(__file__).parent / "results" / "seed_card.json"

CARD_URL = "https://huggingface.co/localweights/Qwen3.5-4B-MTP-IQ4_XS-GGUF"
CARD_VRAM_GB = 2.7  # "VRAM @ 8K ctx ~2.7 GB" on an RTX 3090 Ti
CARD_FILE_GB = 2.5  # "Qwen3.5-4B-MTP-IQ4_XS.gguf 2.5 GB"
CARD_BF16_GB = 8.1  # "Qwen3.5-4B-MTP-bf16.gguf 8.1 GB"

F32 = GGMLQuantizationType.F32
BF16 = GGMLQuantizationType.BF16
IQ4_XS = GGMLQuantizationType.IQ4_XS
IQ4_NL = GGMLQuantizationType.IQ4_NL
Q5_K = GGMLQuantizationType.Q5_K
Q6_K = GGMLQuantizationType.Q6_K
LLAMA_FTYPE_MOSTLY_IQ4_XS = 30  # llama.h

# Sources, cited by label in the hyperparameter table.
SOURCES: dict[str, str] = {
    "cfg": "HF config.json of Qwen3_5ForCausalLM fine-tunes of Qwen3.5-4B (huggingface.co/halen214/st01, "
           "huggingface.co/coderofpears/ClankerCode-Checkpoint1): hidden 2560, ff 9216, head_dim 256, "
           "32 layer_types (3 linear_attention : 1 full_attention), linear_* heads 16 K / 32 V of 128, conv 4",
    "dump": "GGUF dump of a Qwen3.5-4B GGUF in github.com/quantumaikr/quant.cpp/issues/94: head_count 16, "
            "head_count_kv 4, key_length 256, ssm v_heads 32, k_heads 16, dims 128, conv 4, vocab 248320, "
            "rope.dimension_count 64, freq_base 1e7; attn_qkv [2560,8192], attn_q [2560,8192], ssm_out [4096,2560]",
    "moe": "huggingface.co/kshitijthakkar/qwen3.5-moe-4.7B-d4B README (backbone copied from Qwen/Qwen3.5-4B): "
           "hidden 2560, 32 layers, GQA 16Q/4KV, head_dim 256, vocab 248320",
    "card": f"the seed card, {CARD_URL}: NextN tensors at blk.32",
    "llama": "llama.cpp b11434 models/qwen35.cpp: 32 trunk layers with n_embd 2560 is LLM_TYPE_4B",
    "tied": "assumed: the MTPLX runtime for Qwen3.5-4B (huggingface.co/Youssofal/Qwen3.5-4B-MTPLX-Optimized-Speed) "
            "reuses the 'tied embedding' as draft head, and the card's bf16 file size matches tied only "
            "(bf16 check below)",
}
@dataclass(frozen=True)
class Hparams:
    """Qwen3.5-4B text model, as named in its HF config (text_config)."""

    hidden_size: int = 2560
    intermediate_size: int = 9216
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 256
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    full_attention_interval: int = 4
    vocab_size: int = 248320
    tie_word_embeddings: bool = True
    mtp_num_hidden_layers: int = 1
    max_position_embeddings: int = 262144
    partial_rotary_factor: float = 0.25
    rope_theta: float = 10_000_000.0
    rms_norm_eps: float = 1e-6

    @property
    def block_count(self) -> int:
        return self.num_hidden_layers + self.mtp_num_hidden_layers

    @property
    def key_dim(self) -> int:
        return self.linear_key_head_dim * self.linear_num_key_heads

    @property
    def value_dim(self) -> int:
        return self.linear_value_head_dim * self.linear_num_value_heads

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    def is_recurrent(self, il: int) -> bool:
        return il < self.num_hidden_layers and (il + 1) % self.full_attention_interval != 0


# Source labels (SOURCES) per hyperparameter, with a note; values come from Hparams.
HPARAM_SOURCES: dict[str, str] = {
    "hidden_size": "cfg, dump, moe",
    "intermediate_size": "cfg",
    "num_hidden_layers": "cfg, dump, moe, llama",
    "num_attention_heads": "dump, moe",
    "num_key_value_heads": "dump, moe",
    "head_dim": "cfg, dump, moe",
    "linear_num_key_heads": "cfg, dump",
    "linear_num_value_heads": "cfg, dump",
    "linear_key_head_dim": "cfg, dump",
    "linear_value_head_dim": "cfg, dump",
    "linear_conv_kernel_dim": "cfg, dump",
    "full_attention_interval": "cfg, dump",
    "vocab_size": "dump, moe (the card's '151,936 vocab' is Qwen3's figure and contradicts both)",
    "tie_word_embeddings": "tied",
    "mtp_num_hidden_layers": "card; Qwen3.5 configs carry mtp_num_hidden_layers 1",
    "max_position_embeddings": "cfg (not used by the estimate)",
    "partial_rotary_factor": "dump: 64 of 256 rotary dims (not used by the estimate)",
    "rope_theta": "dump (not used by the estimate)",
    "rms_norm_eps": "cfg (not used by the estimate)",
}


def metadata(hp: Hparams) -> dict[str, Any]:
    """The header conversion/qwen.py writes (b11434); ssm.* follow Qwen3NextModel.set_gguf_parameters."""
    n_vocab = hp.vocab_size  # the converter pads the token list to config.vocab_size
    recurrent = [hp.is_recurrent(il) for il in range(hp.block_count)]
    return {
        "general.architecture": ARCH,
        "general.file_type": LLAMA_FTYPE_MOSTLY_IQ4_XS,
        f"{ARCH}.context_length": hp.max_position_embeddings,
        f"{ARCH}.embedding_length": hp.hidden_size,
        f"{ARCH}.block_count": hp.block_count,  # _QwenMtpMixin: num_hidden_layers + mtp layers
        f"{ARCH}.nextn_predict_layers": hp.mtp_num_hidden_layers,
        f"{ARCH}.feed_forward_length": hp.intermediate_size,
        f"{ARCH}.attention.head_count": hp.num_attention_heads,
        f"{ARCH}.attention.head_count_kv": hp.num_key_value_heads,
        f"{ARCH}.attention.key_length": hp.head_dim,
        f"{ARCH}.attention.value_length": hp.head_dim,
        f"{ARCH}.attention.layer_norm_rms_epsilon": hp.rms_norm_eps,
        # Written when config.json has layer_types (it does); MTP blocks appended as non-recurrent. Same
        # layers as full_attention_interval gives, so an older converter without this key changes nothing.
        f"{ARCH}.attention.recurrent_layers": recurrent,
        f"{ARCH}.full_attention_interval": hp.full_attention_interval,
        f"{ARCH}.rope.dimension_count": int(hp.head_dim * hp.partial_rotary_factor),
        f"{ARCH}.rope.freq_base": hp.rope_theta,
        f"{ARCH}.rope.dimension_sections": [11, 11, 10, 0],  # _Qwen35MRopeMixin default
        f"{ARCH}.ssm.conv_kernel": hp.linear_conv_kernel_dim,
        f"{ARCH}.ssm.state_size": hp.linear_key_head_dim,
        f"{ARCH}.ssm.group_count": hp.linear_num_key_heads,
        f"{ARCH}.ssm.time_step_rank": hp.linear_num_value_heads,
        f"{ARCH}.ssm.inner_size": hp.value_dim,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen35",
        "tokenizer.ggml.tokens": ArrayInfo(8, n_vocab),  # string array
        "tokenizer.ggml.token_type": ArrayInfo(5, n_vocab),  # int32 array
        # tokenizer.ggml.merges left out: its length only feeds the CPU estimate.
    }


def tensor_shapes(hp: Hparams) -> list[tuple[str, tuple[int, ...]]]:
    """Names and ggml shapes (ne0 first) models/qwen35.cpp loads, in converter order (blk.0 .. blk.32)."""
    e, ff, v = hp.hidden_size, hp.intermediate_size, hp.vocab_size
    q_out = hp.head_dim * hp.num_attention_heads
    kv_out = hp.head_dim * hp.num_key_value_heads
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (e, v)), ("output_norm.weight", (e,))]
    if not hp.tie_word_embeddings:
        out.append(("output.weight", (e, v)))

    def attention(b: str) -> None:
        out.extend([
            (f"{b}.attn_q.weight", (e, 2 * q_out)),  # query and output gate interleaved
            (f"{b}.attn_k.weight", (e, kv_out)),
            (f"{b}.attn_v.weight", (e, kv_out)),
            (f"{b}.attn_output.weight", (q_out, e)),
            (f"{b}.attn_q_norm.weight", (hp.head_dim,)),
            (f"{b}.attn_k_norm.weight", (hp.head_dim,)),
        ])

    def norms_and_ffn(b: str) -> None:
        out.extend([
            (f"{b}.attn_norm.weight", (e,)),
            (f"{b}.post_attention_norm.weight", (e,)),
            (f"{b}.ffn_gate.weight", (e, ff)),
            (f"{b}.ffn_up.weight", (e, ff)),
            (f"{b}.ffn_down.weight", (ff, e)),
        ])

    rank = hp.linear_num_value_heads
    for il in range(hp.block_count):
        b = f"blk.{il}"
        norms_and_ffn(b)
        if il >= hp.num_hidden_layers:  # NextN (MTP) block: full attention plus the projection and norms
            attention(b)
            out.extend([
                (f"{b}.nextn.eh_proj.weight", (2 * e, e)),
                (f"{b}.nextn.enorm.weight", (e,)),
                (f"{b}.nextn.hnorm.weight", (e,)),
                (f"{b}.nextn.shared_head_norm.weight", (e,)),  # mtp.norm
            ])
        elif hp.is_recurrent(il):  # Gated DeltaNet
            out.extend([
                (f"{b}.attn_qkv.weight", (e, hp.conv_dim)),
                (f"{b}.attn_gate.weight", (e, hp.value_dim)),
                (f"{b}.ssm_conv1d.weight", (hp.linear_conv_kernel_dim, hp.conv_dim)),
                (f"{b}.ssm_dt.bias", (rank,)),
                (f"{b}.ssm_a", (rank,)),
                (f"{b}.ssm_beta.weight", (e, rank)),
                (f"{b}.ssm_alpha.weight", (e, rank)),
                (f"{b}.ssm_norm.weight", (hp.linear_value_head_dim,)),
                (f"{b}.ssm_out.weight", (hp.value_dim, e)),
            ])
        else:
            attention(b)
    return out


def source_type(name: str, shape: tuple[int, ...]) -> GGMLQuantizationType:
    """Type in the bf16 GGUF: 1D tensors, norms and ssm_conv1d F32 (conversion/base.py), the rest BF16."""
    if len(shape) < 2 or name.endswith("_norm.weight") or "ssm_conv1d" in name:
        return F32
    return BF16


def iq4_xs_types(hp: Hparams, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, GGMLQuantizationType]:
    """llama-quant.cpp (b11434) for `llama-quantize bf16.gguf out.gguf IQ4_XS`, no imatrix (the card's pipeline).

    - `tensor_allows_quantization`: only 2D tensors ending in `weight`, no `_norm.weight`, no `ssm_conv1d`;
    - tied embeddings (no output.weight): token_embd gets the output rule -> Q6_K;
    - attn_v and attn_qkv (`category_is_attn_v`) with n_gqa() = 16/4 >= 4 -> Q5_K;
    - ffn_down of the first n_layer_all/8 = 4 in file order, without imatrix -> Q5_K;
    - every other weight IQ4_XS (IQ4_NL where ne0 is not a multiple of 256: none here).
    """
    n_gqa = hp.num_attention_heads // hp.num_key_value_heads
    n_ffn_down = hp.block_count
    has_output = any(name == "output.weight" for name, _ in shapes)
    i_ffn_down = 0
    types: dict[str, GGMLQuantizationType] = {}
    for name, shape in shapes:
        quantize = (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
                    and "ssm_conv1d" not in name)
        if not quantize:
            types[name] = source_type(name, shape)
            continue
        new_type = IQ4_XS
        if name == "output.weight" or (not has_output and name == "token_embd.weight"):
            new_type = Q6_K
        elif ("attn_v.weight" in name or "attn_qkv.weight" in name) and n_gqa >= 4:
            new_type = Q5_K
        elif "ffn_down" in name:
            if i_ffn_down < n_ffn_down // 8:
                new_type = Q5_K
            i_ffn_down += 1
        if shape[0] % 256 and new_type == IQ4_XS:
            new_type = IQ4_NL
        types[name] = new_type
    return types


def build_gguf(hp: Hparams, *, bf16: bool = False) -> GgufInfo:
    shapes = tensor_shapes(hp)
    types = {n: source_type(n, s) for n, s in shapes} if bf16 else iq4_xs_types(hp, shapes)
    tensors = {name: Tensor(name, shape, int(types[name]), tensor_bytes(shape, int(types[name])))
               for name, shape in shapes}
    total = sum(t.n_bytes for t in tensors.values())
    return GgufInfo(path=Path("Qwen3.5-4B-MTP-IQ4_XS.gguf (synthetic header)"), version=3,
                    metadata=metadata(hp), tensors=tensors, file_bytes=total)


def seed_model(n_max: int = 2, kv: str = "q4_0") -> ModelConfig:
    """The card's llama-server flags as a council ModelConfig (ubatch/batch at llama-server's defaults)."""
    return ModelConfig.model_validate({
        "path": "~/.cache/council/models/Qwen3.5-4B-MTP-IQ4_XS.gguf",
        "ctx_size": 8192,
        "cache_type_k": kv,
        "cache_type_v": kv,
        "gpu_layers": "all",
        "flash_attn": True,
        "parallel": 1,
        "kv_unified": True,
        "draft": DraftConfig(type="mtp", n_max=n_max),
    })


def type_summary(gguf: GgufInfo) -> dict[str, dict[str, int]]:
    by_type: dict[str, dict[str, int]] = {}
    for t in gguf.tensors.values():
        entry = by_type.setdefault(GGMLQuantizationType(t.type).name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += t.n_bytes
    return dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]))


def estimate_row(gguf: GgufInfo, cache: str, n_max: int) -> dict[str, Any]:
    """One configuration: the estimator's components plus the totals the card could be quoting."""
    model = seed_model(n_max, cache)
    est: MemoryEstimate = estimate_member_bytes(model, gguf, device="gpu")
    parts = estimate_parts(model, gguf, device="gpu")
    no_ctx = est.total - est.overhead
    buffers = no_ctx - parts.get("mtp_overhead", 0)
    no_compute = buffers - parts["compute"] - parts.get("mtp_compute", 0)
    return {"cache": cache, "n_max": n_max, **est.breakdown(), "total": est.total,
            "total_without_cuda_context": no_ctx, "llama_cpp_buffers": buffers,
            "model_kv_rs_buffers": no_compute, "parts": parts}


def run(out: Path) -> dict[str, Any]:
    hp = Hparams()
    gguf = build_gguf(hp)
    bf16 = build_gguf(hp, bf16=True)
    untied = build_gguf(Hparams(tie_word_embeddings=False), bf16=True)
    untied_q = build_gguf(Hparams(tie_word_embeddings=False))

    print(f"Seed card: Qwen3.5-4B + MTP, IQ4_XS ({CARD_URL})")
    print("\nHyperparameters (HF text_config name = value  [sources])")
    for key, source in HPARAM_SOURCES.items():
        print(f"  {key:24} = {getattr(hp, key)!s:10} [{source}]")
    print("  sources:")
    for label, text in SOURCES.items():
        print(f"    {label:5} {text}")
    print("\nGGUF header as built (conversion/qwen.py key mapping, b11434)")
    for key, value in gguf.metadata.items():
        shown = f"ArrayInfo(length={value.length})" if isinstance(value, ArrayInfo) else value
        if isinstance(value, list) and len(value) > 8:
            shown = f"[{sum(1 for v in value if v)} of {len(value)} true: layers with (il+1) % 4 != 0, MTP false]"
        print(f"  {key:42} {shown}")

    print("\nTensor table (llama-quant.cpp b11434 IQ4_XS mix, no imatrix)")
    for name, entry in type_summary(gguf).items():
        print(f"  {name:7} {entry['tensors']:4} tensors  {entry['bytes'] / MIB:9.1f} MiB")
    nextn = sum(t.n_bytes for n, t in gguf.tensors.items() if n.startswith(f"blk.{hp.num_hidden_layers}."))
    total = gguf.tensor_bytes
    print(f"  {len(gguf.tensors)} tensors: {total:,} bytes = {total / GB:.3f} GB = {total / GIB:.3f} GiB "
          f"(NextN block {nextn / MIB:.1f} MiB; the header, ~5 MB of vocabulary, not counted)")
    print(f"  card: IQ4_XS file {CARD_FILE_GB} GB; GNU `ls -h` rounds up, so {total / GIB:.3f} GiB shows as 2.5G")
    print(f"  bf16 check: tied {bf16.tensor_bytes / GIB:.2f} GiB ({bf16.tensor_bytes / GB:.2f} GB), untied "
          f"{untied.tensor_bytes / GIB:.2f} GiB ({untied.tensor_bytes / GB:.2f} GB); card: {CARD_BF16_GB} GB -> tied, "
          "and the card's 'GB' are GiB")
    print(f"  (untied, the IQ4_XS file would be {untied_q.tensor_bytes / GIB:.2f} GiB)")

    rows = [estimate_row(gguf, cache, n_max) for cache, n_max in
            [("q4_0", 1), ("q4_0", 2), ("q4_0", 3), ("q4_0", 4), ("f16", 2)]]

    card_gib = CARD_VRAM_GB * GIB
    card_gb = CARD_VRAM_GB * GB
    cols = ("weights", "kv", "recurrent", "mtp", "compute", "overhead")
    print("\nEstimate, device=gpu: -ngl 999 -fa on -c 8192 -np 1 --kv-unified, draft-mtp, ubatch 512 (GiB)")
    print("  total    nvidia-smi per-process figure; `overhead` is the ~700 MiB CUDA context measured on an H100")
    print("           (CUDA 13); a consumer card's context is smaller")
    print("  no-ctx   total minus `overhead`")
    print("  buffers  no-ctx minus the MTP context's fixed 110 MiB: the sum of llama.cpp's logged GPU buffers")
    print("  mdl+kv   buffers minus the compute buffers: model + KV + recurrent-state buffers only")
    header = " ".join(f"{c:>9}" for c in cols)
    print(f"  {'KV':4} {'n_max':>5} {header} {'total':>7} {'no-ctx':>7} {'buffers':>7} {'mdl+kv':>7}")
    for row in rows:
        cells = " ".join(f"{row[c] / GIB:9.3f}" for c in cols)
        print(f"  {row['cache']:4} {row['n_max']:>5} {cells} {row['total'] / GIB:7.3f} "
              f"{row['total_without_cuda_context'] / GIB:7.3f} {row['llama_cpp_buffers'] / GIB:7.3f} "
              f"{row['model_kv_rs_buffers'] / GIB:7.3f}")

    def vs(value: int, card: float) -> str:
        return f"{(value - card) / card:+4.0%}"

    for unit, scale, card in (("GiB", GIB, card_gib), ("GB", GB, card_gb)):
        print(f"\nTotals in {unit}, next to the card's ~{CARD_VRAM_GB} read as {CARD_VRAM_GB} {unit} "
              f"(= {card / GIB:.3f} GiB = {card / GB:.3f} GB)")
        print(f"  {'KV':4} {'n_max':>5} {'total':>13} {'no-ctx':>13} {'buffers':>13} {'mdl+kv':>13}")
        for row in rows:
            cells = " ".join(f"{row[k] / scale:6.3f} ({vs(row[k], card)})" for k in
                             ("total", "total_without_cuda_context", "llama_cpp_buffers", "model_kv_rs_buffers"))
            print(f"  {row['cache']:4} {row['n_max']:>5} {cells}")

    seed = next(r for r in rows if r["cache"] == "q4_0" and r["n_max"] == 2)
    consumer_ctx = 300 * MIB  # assumed CUDA context of a consumer card (RTX 3090 Ti), not measured here
    off_smi = (seed["total"] - card_gib) / GIB
    off_consumer = (seed["total"] - seed["overhead"] + consumer_ctx - card_gib) / GIB
    mdl_kv = vs(seed["model_kv_rs_buffers"], card_gib).strip()
    logged = vs(seed["llama_cpp_buffers"], card_gib).strip()
    print(f"""
Reading (card config: q4_0 KV, n_max 2): the card's units are GiB (its 2.5 and 8.1 'GB' files are
{total / GIB:.2f} and {bf16.tensor_bytes / GIB:.2f} GiB here), so its ~2.7 is most likely 2.7 GiB. The nvidia-smi-like
total is {off_smi:+.2f} GiB off it ({off_consumer:+.2f} GiB with an assumed ~300 MiB consumer-card context),
so the card does not report per-process memory with the CUDA context. It matches llama.cpp's own
buffers: model + KV + recurrent state {mdl_kv}, all logged buffers (with compute) {logged}. The card's
figure most likely excludes the CUDA context; the policy's `memory: 2.7GiB` leaves it out too.""")

    result = {
        "card": {"url": CARD_URL, "vram": CARD_VRAM_GB, "file": CARD_FILE_GB, "bf16_file": CARD_BF16_GB,
                 "units": "labelled GB; they match GiB (ls -h)", "gpu": "RTX 3090 Ti",
                 "args": "-ngl 999 -fa on --spec-type draft-mtp --spec-draft-n-max 2 --ctx-size 8192 "
                         "-ctk q4_0 -ctv q4_0 --parallel 1 --kv-unified"},
        "hyperparameters": {k: {"value": getattr(hp, k), "sources": s} for k, s in HPARAM_SOURCES.items()},
        "sources": SOURCES,
        "gguf_metadata": {k: (f"ArrayInfo(length={v.length})" if isinstance(v, ArrayInfo) else v)
                          for k, v in gguf.metadata.items()},
        "tensors": {"count": len(gguf.tensors), "bytes": total, "nextn_bytes": nextn,
                    "by_type": type_summary(gguf), "bf16_tied_bytes": bf16.tensor_bytes,
                    "bf16_untied_bytes": untied.tensor_bytes, "iq4_xs_untied_bytes": untied_q.tensor_bytes},
        "estimates": rows,
        "columns": {"total": "nvidia-smi-like, with the 700 MiB CUDA context measured on an H100 (CUDA 13)",
                    "total_without_cuda_context": "total - overhead",
                    "llama_cpp_buffers": "also without the MTP context's fixed 110 MiB (GPU_SPEC_CONTEXT_BYTES)",
                    "model_kv_rs_buffers": "llama_cpp_buffers without the compute buffers"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
