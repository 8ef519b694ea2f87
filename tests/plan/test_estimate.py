"""Memory estimates of member processes: formulas on real GGUF headers, and real llama-server RSS."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.estimate import Case, evaluate, measure
from council.members.binary import LlamaServerInfo
from council.plan.estimate import (
    GPU_CONTEXT_BYTES,
    EstimateError,
    MemoryEstimate,
    compute_buffer_bytes,
    context_params,
    estimate_member_bytes,
    estimate_parts,
    kv_cache_bytes,
    model_shape,
    placement,
    recurrent_state_bytes,
)
from council.plan.gguf import GgufInfo, Tensor, read_gguf
from council.policy.schema import DraftConfig, ModelConfig
from council.setup.catalog import by_name
from council.setup.synthetic import Qwen35Shape, write_qwen35

MIB = 1 << 20
COMPONENTS = ["weights", "kv", "recurrent", "mtp", "compute", "overhead"]


def _model(name: str) -> Path:
    source = by_name(name)
    assert source is not None
    if not source.path.is_file():
        pytest.fail(f"{source.path} is missing: run `council setup --models all` first")
    return source.path


@pytest.fixture(scope="module")
def smol() -> GgufInfo:
    return read_gguf(_model("smollm2-135m"))


@pytest.fixture(scope="module")
def gemma() -> GgufInfo:
    return read_gguf(_model("gemma3-270m"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("estimate")
    wide = Qwen35Shape(n_embd=256, n_ff=512, ssm_state=64, ssm_group=2, ssm_time_step_rank=16, ssm_inner=1024)
    return {
        "mtp": write_qwen35(root / "mtp.gguf"),
        "wide": write_qwen35(root / "wide.gguf", shape=wide),
    }


def config(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig(path=path, **kw)


# --- formulas on real GGUF metadata ---------------------------------------------------------------


def test_breakdown_has_exactly_the_six_components(smol: GgufInfo) -> None:
    est = estimate_member_bytes(config(smol.path), smol, device="cpu")
    assert isinstance(est, MemoryEstimate)
    assert list(est.breakdown()) == COMPONENTS
    assert est.total == sum(est.breakdown().values())


def test_smollm2_kv_rounds_context_up_to_256(smol: GgufInfo) -> None:
    # 30 layers x 3 KV heads x 64 dims x (K + V) x f16, over 1000 -> 1024 cells.
    est = estimate_member_bytes(config(smol.path, ctx_size=1000), smol, device="cpu")
    assert est.kv == 1024 * 30 * 3 * 64 * 2 * 2 == 22.5 * MIB
    assert est.kv == estimate_member_bytes(config(smol.path, ctx_size=1024), smol, device="cpu").kv


@pytest.mark.parametrize(("kv_type", "num", "den"), [("q8_0", 34, 32), ("q4_0", 18, 32), ("q4_1", 20, 32),
                                                      ("q5_0", 22, 32), ("q5_1", 24, 32), ("f32", 4, 1)])
def test_quantized_kv_is_its_block_size_per_32_values(smol: GgufInfo, kv_type: str, num: int, den: int) -> None:
    f16 = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="cpu").kv
    quant = estimate_member_bytes(config(smol.path, ctx_size=4096, cache_type_k=kv_type, cache_type_v=kv_type),
                                  smol, device="cpu").kv
    assert quant * 2 * den == f16 * num  # f16 is 2 bytes per value


def test_parallel_sequences_pad_each_stream_unless_unified(smol: GgufInfo) -> None:
    shape = model_shape(smol)
    ctx = context_params(config(smol.path, ctx_size=4096), shape, parallel=3)
    # 4096 / 3 = 1365 -> 1536 cells per sequence -> 4608 cells in total (llama-context.cpp).
    assert (ctx.n_ctx_seq, ctx.n_stream, ctx.n_ctx) == (1536, 3, 4608)
    unified = context_params(config(smol.path, ctx_size=4096, kv_unified=True), shape, parallel=3)
    assert (unified.n_ctx_seq, unified.n_stream) == (4096, 1)
    one = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="cpu").kv
    three = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="cpu", parallel=3).kv
    assert three == one * 4608 // 4096
    assert estimate_member_bytes(config(smol.path, ctx_size=4096, parallel=3), smol, device="cpu").kv == three


def test_gemma3_sliding_window_layers_hold_window_plus_ubatch(gemma: GgufInfo) -> None:
    shape = model_shape(gemma)
    # Pattern 6: layers 5, 11, 17 are global, the other 15 slide over 512 tokens.
    assert sorted(set(range(18)) - shape.swa_layers) == [5, 11, 17]
    assert shape.n_swa == 512
    ctx = context_params(config(gemma.path, ctx_size=4096), shape)
    per_cell = 256 * 1 * 2 * 2  # key/value length 256, 1 KV head, K + V, f16
    # Global layers: 4096 cells; SWA layers: 512 + ubatch 512 = 1024 cells (llama-kv-cache-iswa.cpp).
    assert kv_cache_bytes(shape, ctx, range(18), "f16", "f16") == (3 * 4096 + 15 * 1024) * per_cell == 27 * MIB
    small = context_params(config(gemma.path, ctx_size=512), shape)
    assert kv_cache_bytes(shape, small, range(18), "f16", "f16") == 18 * 512 * per_cell


@pytest.mark.parametrize(("name", "ctx", "ubatch", "logged_mib"), [
    # `sched_reserve: CPU compute buffer size` logged by llama-server b11434 (CPU, flash attention auto=on).
    ("smollm2-135m", 512, 512, 15.14), ("smollm2-135m", 4096, 512, 18.64), ("smollm2-135m", 4096, 64, 2.33),
    ("qwen2.5-coder-0.5b", 512, 512, 37.77), ("qwen2.5-coder-0.5b", 4096, 128, 10.32),
    ("gemma3-270m", 512, 512, 19.28), ("gemma3-270m", 4096, 512, 23.28),
])
def test_compute_buffer_matches_logged_size(name: str, ctx: int, ubatch: int, logged_mib: float) -> None:
    gguf = read_gguf(_model(name))
    shape = model_shape(gguf)
    cparams = context_params(config(gguf.path, ctx_size=ctx, ubatch_size=ubatch), shape)
    assert compute_buffer_bytes(shape, cparams) / MIB == pytest.approx(logged_mib, abs=0.06)


def test_hybrid_qwen35_counts_attention_and_recurrent_layers(synthetic: dict[str, Path]) -> None:
    gguf = read_gguf(synthetic["mtp"])
    shape = model_shape(gguf)
    # 4 trunk layers (every 4th is full attention) + 1 MTP block, which is neither.
    assert (shape.n_layer_all, shape.n_nextn, shape.n_layer) == (5, 1, 4)
    assert shape.recurrent_layers == {0, 1, 2}
    assert [il for il in range(5) if shape.has_kv(il)] == [3, 4]
    for n_max in (1, 2, 3):
        model = config(gguf.path, ctx_size=4096, draft=DraftConfig(type="mtp", n_max=n_max))
        parts = estimate_parts(model, gguf, device="cpu")
        # 3 DeltaNet layers x (1 + n_max) rows x [(4-1)(32 + 2*2*16) + 16*32] floats.
        assert parts["recurrent"] == 3 * (1 + n_max) * (3 * (32 + 2 * 2 * 16) + 16 * 32) * 4
        # Trunk KV: the one attention layer; the MTP context caches the NextN block at f16.
        assert parts["kv"] == parts["mtp_kv"] == 4096 * 1 * 32 * 2 * 2
    plain = estimate_parts(config(gguf.path, ctx_size=4096), gguf, device="cpu")
    assert plain["recurrent"] == 3 * 1 * (3 * 96 + 512) * 4
    assert "mtp_kv" not in plain


def test_mtp_weights_only_load_with_mtp(synthetic: dict[str, Path]) -> None:
    gguf = read_gguf(synthetic["mtp"])
    nextn = sum(t.n_bytes for t in gguf.tensors.values() if t.name.startswith("blk.4."))
    with_mtp = estimate_member_bytes(config(gguf.path, draft=DraftConfig(type="mtp", n_max=2)), gguf, device="cpu")
    without = estimate_member_bytes(config(gguf.path), gguf, device="cpu")
    assert without.weights == with_mtp.weights == gguf.tensor_bytes - nextn
    assert without.mtp == 0
    assert with_mtp.mtp > nextn


def test_mtp_without_nextn_block_is_an_error(smol: GgufInfo) -> None:
    with pytest.raises(EstimateError, match="MTP block"):
        estimate_member_bytes(config(smol.path, draft=DraftConfig(type="mtp")), smol)


def test_gpu_counts_offloaded_layers_only(smol: GgufInfo) -> None:
    shape = model_shape(smol)
    assert placement(config(smol.path, gpu_layers=0), shape, "gpu").layers == frozenset()
    assert not placement(config(smol.path, gpu_layers=0), shape, "gpu").output
    # -ngl 1 offloads the output layer only; -ngl 11 the output layer and the last 10 blocks.
    one = placement(config(smol.path, gpu_layers=1), shape, "gpu")
    assert one.output and one.layers == frozenset()
    assert placement(config(smol.path, gpu_layers=11), shape, "gpu").layers == frozenset(range(20, 30))
    full = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="gpu")
    part = estimate_member_bytes(config(smol.path, ctx_size=4096, gpu_layers=11), smol, device="gpu")
    assert part.kv * 3 == full.kv
    assert full.overhead == GPU_CONTEXT_BYTES
    # The LM head is tied to token_embd: the GPU gets its own copy, the CPU-side input layer keeps one.
    assert full.weights == smol.tensor_bytes
    cpu = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="cpu")
    assert cpu.weights == smol.tensor_bytes
    none = estimate_member_bytes(config(smol.path, gpu_layers=0), smol, device="gpu")
    assert none.weights == none.kv == 0


def test_no_kv_offload_keeps_caches_on_the_host(smol: GgufInfo) -> None:
    est = estimate_member_bytes(config(smol.path, args=["--no-kv-offload"]), smol, device="gpu")
    assert est.kv == 0


def test_quantized_v_without_flash_attention_cannot_start(smol: GgufInfo) -> None:
    with pytest.raises(EstimateError, match="flash attention"):
        estimate_member_bytes(config(smol.path, cache_type_v="q8_0", flash_attn=False), smol)
    # K alone may be quantized without it.
    estimate_member_bytes(config(smol.path, cache_type_k="q8_0", flash_attn=False), smol)


def test_flash_attention_off_grows_compute_and_pads_nothing_here(smol: GgufInfo) -> None:
    on = estimate_member_bytes(config(smol.path, ctx_size=4096), smol, device="cpu")
    off = estimate_member_bytes(config(smol.path, ctx_size=4096, flash_attn=False), smol, device="cpu")
    assert off.kv == on.kv
    # Logged by llama-server with -fa off: 87.51 MiB (KQ scores of 4096 x 512 x 9 heads).
    assert off.compute - on.compute == pytest.approx((87.51 - 18.64) * MIB, rel=0.03)


def test_draft_model_adds_its_weights_kv_and_compute(smol: GgufInfo) -> None:
    qwen = read_gguf(_model("qwen2.5-coder-0.5b"))
    target = config(qwen.path, ctx_size=2048, draft=DraftConfig(type="model", model="smol", n_max=4))
    draft_cfg = config(smol.path, ctx_size=512)
    alone = estimate_member_bytes(config(qwen.path, ctx_size=2048), qwen, device="gpu")
    both = estimate_member_bytes(target, qwen, device="gpu", draft=(draft_cfg, smol))
    assert both.weights == alone.weights + smol.tensor_bytes
    # The draft context uses the target's context size (no separate -c for it in llama-server).
    assert both.kv == alone.kv + 2048 * 30 * 3 * 64 * 2 * 2
    assert both.compute > alone.compute
    with pytest.raises(EstimateError, match="draft model"):
        estimate_member_bytes(target, qwen)


def _fake(metadata: dict[str, object], tensors: dict[str, Tensor] | None = None) -> GgufInfo:
    return GgufInfo(path=Path("mystery.gguf"), version=3, metadata=metadata, tensors=tensors or {}, file_bytes=0)


def test_unknown_arch_falls_back_to_generic_transformer_rules() -> None:
    tensors = {"blk.0.attn_q.weight": Tensor("blk.0.attn_q.weight", (256, 256), 1, 256 * 256 * 2),
               "token_embd.weight": Tensor("token_embd.weight", (256, 1000), 1, 256 * 1000 * 2)}
    gguf = _fake({"general.architecture": "mystery", "mystery.block_count": 2, "mystery.embedding_length": 256,
                  "mystery.attention.head_count": 4, "mystery.attention.sliding_window": 128}, tensors)
    shape = model_shape(gguf)
    assert not shape.known
    assert shape.n_ff == 4 * 256 and shape.n_vocab == 1000 and shape.head_k == 64
    # An unknown sliding-window layout counts every layer as full attention (an over-estimate).
    assert shape.swa_layers == frozenset()
    est = estimate_member_bytes(config(Path("mystery.gguf"), ctx_size=512), gguf, device="cpu")
    assert est.kv == 2 * 512 * 4 * 64 * 2 * 2
    assert est.weights == sum(t.n_bytes for t in tensors.values())


@pytest.mark.parametrize("missing", ["block_count", "embedding_length", "attention.head_count"])
def test_missing_required_key_is_a_clear_error(missing: str) -> None:
    metadata = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
                "llama.attention.head_count": 2}
    del metadata[f"llama.{missing}"]
    with pytest.raises(EstimateError, match=f"llama.{missing}"):
        estimate_member_bytes(config(Path("x.gguf")), _fake(metadata))
    with pytest.raises(EstimateError, match="architecture"):
        estimate_member_bytes(config(Path("x.gguf")), _fake({}))


def test_recurrent_state_needs_recurrent_layers(smol: GgufInfo) -> None:
    shape = model_shape(smol)
    assert recurrent_state_bytes(shape, context_params(config(smol.path), shape), range(30)) == 0


# --- real llama-server processes ------------------------------------------------------------------


@pytest.mark.slow
def test_estimate_within_15_percent_of_real_rss(llama_server_bin: LlamaServerInfo, synthetic: dict[str, Path],
                                               tmp_path: Path) -> None:
    smol, gemma = _model("smollm2-135m"), _model("gemma3-270m")
    cases = [
        Case("smollm2 c512", smol, 512), Case("smollm2 c4096 q8_0", smol, 4096, "q8_0"),
        Case("gemma3 c2048", gemma, 2048),
        Case("synthetic mtp n1", synthetic["mtp"], 4096, n_max=1),
        Case("synthetic mtp n3", synthetic["mtp"], 4096, n_max=3),
    ]
    errors = {}
    for case in cases:
        result = evaluate(case, measure(llama_server_bin.path, case, tmp_path))
        errors[case.name] = round(result.error, 1)
        # Exact arithmetic for allocations (the log rounds to 0.01 MiB); compute buffers are fits.
        for kind, (est, logged) in result.per_buffer.items():
            tolerance = max(0.6 * MIB, 0.25 * logged) if "compute" in kind else 0.02 * MIB
            assert abs(est - logged) <= tolerance, (case.name, kind, est / MIB, logged / MIB)
    assert all(abs(e) <= 15 for e in errors.values()), errors


@pytest.mark.slow
def test_recurrent_growth_with_n_max_matches_the_server(llama_server_bin: LlamaServerInfo,
                                                        synthetic: dict[str, Path], tmp_path: Path) -> None:
    """From n_max 1 to 3 the estimate grows by exactly the RS buffer growth the server logs."""
    for name, tolerance in (("wide", 0.03 * MIB), ("mtp", 0.011 * MIB)):
        path = synthetic[name]
        runs = {n: evaluate(case, measure(llama_server_bin.path, case, tmp_path))
                for n in (1, 3) for case in [Case(f"{name} n{n}", path, 1024, n_max=n)]}
        logged = runs[3].measured.logged["rs"] - runs[1].measured.logged["rs"]
        est_recurrent = runs[3].estimate["recurrent"] - runs[1].estimate["recurrent"]
        est_total = runs[3].total - runs[1].total
        assert est_recurrent > 0
        assert abs(est_recurrent - logged) <= tolerance, (name, est_recurrent, logged)
        # Nothing else in the estimate depends on n_max but a few logits rows (n_vocab floats each).
        assert 0 <= est_total - est_recurrent <= 2 * 267 * 4 * 4


# --- GPU: numbers recorded on an H100 (see council/estimate.py GPU_CONTEXT_BYTES) ----------------

HD128 = Qwen35Shape(n_embd=256, n_ff=768, n_head=4, n_head_kv=2, head_dim=128, ssm_state=64, ssm_group=2,
                    ssm_time_step_rank=8, ssm_inner=512)

# A CUDA build of llama-server b11434 (sm_90), `--fit off -ngl 999 -c 4096` unless said otherwise, on an
# NVIDIA H100 80GB HBM3 (driver 580.159.04, CUDA 13.0): the CUDA0 buffers it logged (MiB) and
# nvidia-smi's used memory of the process after two completions (MiB).
H100_RUNS = [
    ("hd128 np1", "hd128", {}, {"model": 16.60, "kv": 4.00, "rs": 0.40, "compute": 10.52}, 728),
    ("hd128 mtp2", "hd128", {"draft": DraftConfig(type="mtp", n_max=2)},
     {"model": 21.36, "kv": 4.00, "rs": 1.20, "compute": 10.52, "mtp_kv": 4.00, "mtp_compute": 9.02}, 852),
    ("hd128 fa off", "hd128", {"flash_attn": False}, {"model": 16.60, "kv": 4.00, "rs": 0.40, "compute": 46.02}, 758),
    ("hd128 ngl3", "hd128", {"gpu_layers": 3}, {"model": 4.51, "kv": 4.00, "rs": 0.0, "compute": 11.75}, 718),
    ("hd128 ngl0", "hd128", {"gpu_layers": 0}, {"model": 0.0, "kv": 0.0, "rs": 0.0, "compute": 14.25}, 710),
    ("hd128 q8_0 np4 unified", "hd128",
     {"cache_type_k": "q8_0", "cache_type_v": "q8_0", "parallel": 4, "kv_unified": True},
     {"model": 16.60, "kv": 2.13, "rs": 1.61, "compute": 15.10}, 732),
    # Head size 32 has no CUDA flash-attention kernel: `-fa auto` runs without it.
    ("synthetic fa off", "mtp", {"flash_attn": False}, {"model": 2.00, "kv": 0.50, "rs": 0.01, "compute": 25.50}, 716),
    ("synthetic mtp1 np4 unified", "mtp",
     {"draft": DraftConfig(type="mtp", n_max=1), "parallel": 4, "kv_unified": True},
     {"model": 2.63, "kv": 0.50, "rs": 0.07, "compute": 25.50, "mtp_kv": 0.50, "mtp_compute": 24.89}, 840),
]


@pytest.mark.parametrize(("name", "model", "kw", "logged", "used_mib"), H100_RUNS, ids=[r[0] for r in H100_RUNS])
def test_gpu_estimate_matches_h100_measurement(synthetic: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                               name: str, model: str, kw: dict, logged: dict[str, float],
                                               used_mib: float) -> None:
    path = synthetic["mtp"] if model == "mtp" else write_qwen35(tmp_path_factory.mktemp("hd128") / "m.gguf",
                                                                   shape=HD128)
    gguf = read_gguf(path)
    parts = estimate_parts(config(path, ctx_size=4096, **kw), gguf, device="gpu")
    exact = {"model": parts["weights"] + parts.get("mtp_weights", 0), "kv": parts["kv"], "rs": parts["recurrent"],
             "mtp_kv": parts.get("mtp_kv", 0)}
    for kind, value in exact.items():
        assert value / MIB == pytest.approx(logged.get(kind, 0.0), abs=0.011), kind
    # Compute buffers are fits: within 1 MiB or 10%, except the op-offload allowance at partial offload.
    loose = 0.3 if kw.get("gpu_layers") == 3 else 0.1
    assert parts["compute"] / MIB == pytest.approx(logged["compute"], rel=loose, abs=1.0)
    total = estimate_member_bytes(config(path, ctx_size=4096, **kw), gguf, device="gpu").total / MIB
    assert used_mib <= total <= used_mib * 1.03
