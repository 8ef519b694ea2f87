"""The synthetic qwen35 GGUF: file format, and real llama-server runs with and without MTP."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import gguf
import httpx
import pytest

from council.setup.synthetic import Qwen35Shape, write_qwen35
from tests.servers import RunningServer, ServerExited

MTP_ARGS = ("--spec-type", "draft-mtp", "--spec-draft-n-max", "2")
MAX_TOKENS = 32
# The model walks the alphabet from "a" after any prompt (see council/synthetic.py).
WALK = ("abcdefghijklmnopqrstuvwxyz" * 2)[:MAX_TOKENS]
# K=2: the MTP head is wrong after every even byte. See test_disagreeing_mtp_head_lowers_acceptance.
DISAGREE_K = 2


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "mtp": write_qwen35(root / "mtp.gguf"),
        "mtp_k": write_qwen35(root / "mtp-k.gguf", disagree_every=DISAGREE_K),
        "no_mtp": write_qwen35(root / "no-mtp.gguf", mtp=False),
    }


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chat(server: RunningServer) -> dict:
    body = {
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=server.headers, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _metrics(server: RunningServer) -> dict[str, float]:
    resp = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    found = re.findall(r"^(llamacpp:[a-z_]+(?:\{[^}]*\})?) (\S+)$", resp.text, flags=re.MULTILINE)
    return {name: float(value) for name, value in found}


def _acceptance(reply: dict) -> tuple[int, int]:
    timings = reply["timings"]
    return int(timings["draft_n"]), int(timings["draft_n_accepted"])


def test_gguf_file_is_valid_small_and_deterministic(models: dict[str, Path], tmp_path: Path) -> None:
    path = models["mtp"]
    assert path.stat().st_size < 10 * 1024 * 1024
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == "qwen35"
    assert _field(reader, "qwen35.block_count") == 5
    assert _field(reader, "qwen35.nextn_predict_layers") == 1
    assert _field(reader, "qwen35.full_attention_interval") == 4
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tensors = {t.name: t for t in reader.tensors}
    # ggml order {ne0, ne1}: eh_proj maps concat(embedding, hidden) (2 * n_embd) to n_embd.
    assert list(tensors["blk.4.nextn.eh_proj.weight"].shape) == [256, 128]
    assert list(tensors["token_embd.weight"].shape) == [128, Qwen35Shape().n_vocab]
    assert "blk.0.ssm_a" in tensors and "blk.3.attn_q.weight" in tensors
    assert "blk.4.nextn.shared_head_head.weight" not in tensors  # falls back to `output`
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}

    again = write_qwen35(tmp_path / "again.gguf")
    assert _sha(again) == _sha(path)
    other = write_qwen35(tmp_path / "other.gguf", seed=1)
    assert other.stat().st_size == path.stat().st_size
    assert _sha(other) != _sha(path)


def test_gguf_without_mtp_and_with_disagreeing_head(models: dict[str, Path]) -> None:
    plain = gguf.GGUFReader(models["no_mtp"])
    assert _field(plain, "qwen35.block_count") == 4
    assert "qwen35.nextn_predict_layers" not in plain.fields
    assert not [t.name for t in plain.tensors if t.name.startswith("blk.4.") or ".nextn." in t.name]

    disagree = gguf.GGUFReader(models["mtp_k"])
    assert "blk.4.nextn.shared_head_head.weight" in {t.name for t in disagree.tensors}
    with pytest.raises(ValueError):
        write_qwen35(models["no_mtp"].with_name("bad.gguf"), mtp=False, disagree_every=2)
    with pytest.raises(ValueError):
        Qwen35Shape(ssm_inner=48)


def test_command_line_writes_a_model(tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "council.synthetic", str(out), "--no-mtp", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _sha(out) == _sha(write_qwen35(tmp_path / "api.gguf", mtp=False, seed=3))


def test_mtp_drafts_are_accepted(models: dict[str, Path], start_server) -> None:
    server = start_server(models["mtp"], *MTP_ARGS)
    reply = _chat(server)
    assert reply["choices"][0]["message"]["content"] == WALK
    draft_n, accepted = _acceptance(reply)
    assert draft_n > 0
    # The MTP head predicts exactly what the trunk predicts.
    assert accepted / draft_n >= 0.9, reply["timings"]

    metrics = _metrics(server)
    assert metrics["llamacpp:spec_decode_num_draft_tokens_total"] == draft_n
    assert metrics["llamacpp:spec_decode_num_accepted_tokens_total"] == accepted
    assert metrics["llamacpp:spec_decode_num_drafts_total"] > 0


def test_disagreeing_mtp_head_lowers_acceptance(models: dict[str, Path], start_server) -> None:
    agree = _chat(start_server(models["mtp"], *MTP_ARGS))
    server = start_server(models["mtp_k"], *MTP_ARGS)
    disagree = _chat(server)
    # Drafts never change what the target generates.
    assert disagree["choices"][0]["message"]["content"] == WALK
    n0, a0 = _acceptance(agree)
    nk, ak = _acceptance(disagree)
    assert nk > 0
    # Expected 50%: with greedy decoding and 2 drafts per step, each step starts from an odd
    # letter x (a, c, e, ...; z -> a keeps it odd). Draft 1 = next(x) is even and correct; the
    # MTP head then skips a letter after that even byte, so draft 2 is always rejected, and
    # the target's own token is odd again. 1 of 2 drafts is accepted in every step.
    # Measured on b11434: 15/30 at 32 tokens, 99/198 at 200 (100% for K=0: 20/20, 132/132).
    assert ak / nk < a0 / n0 - 0.3, (agree["timings"], disagree["timings"])
    assert abs(ak / nk - 0.5) <= 0.05, disagree["timings"]
    metrics = _metrics(server)
    steps = metrics["llamacpp:spec_decode_num_drafts_total"]
    assert steps > 0
    assert metrics['llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"}'] == steps
    assert metrics['llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"}'] == 0


def test_no_mtp_model_rejects_draft_mtp(models: dict[str, Path], start_server) -> None:
    with pytest.raises(ServerExited) as exc_info:
        start_server(models["no_mtp"], *MTP_ARGS)
    exited = exc_info.value
    assert exited.code != 0
    assert exited.seconds < 10
    assert "failed to create MTP context" in exited.log


def test_no_mtp_model_serves_without_speculation(models: dict[str, Path], start_server) -> None:
    reply = _chat(start_server(models["no_mtp"]))
    assert reply["choices"][0]["message"]["content"] == WALK
    assert reply["timings"].get("draft_n", 0) == 0
