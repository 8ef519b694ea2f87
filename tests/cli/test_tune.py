"""`council tune` with the real llama-server: the synthetic MTP model's designed acceptance, and ngram-mod on Qwen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.paths import council_home
from council.policy.editing import set_value
from council.policy.loading import load_policy
from council.setup.synthetic import write_qwen35
from tests.conftest import run_cli

POLICY = """\
# tuned by the test; this comment must survive --write
gpus: [{{name: cpu, memory: 8GiB}}]
models:
  syn:
    path: {path}   # the synthetic model
    ctx_size: 512
    draft: {{type: mtp, n_max: 3}}  # before tuning
councils:
  c: {{members: [{{model: syn}}]}}
"""


def tune(tmp_path: Path, policy: Path, *args: str) -> dict:
    out = tmp_path / "tune.json"
    result = run_cli("tune", str(policy), "syn", *args, "--json", str(out), "--threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decode tok/s" in result.stdout and "recommended: n_max" in result.stdout
    return json.loads(out.read_text())


def check_recommendation(doc: dict) -> None:
    """The recommendation is the n whose measured tokens per step ÷ step time is highest."""
    rows = [r for r in doc["rows"] if r["error"] is None]
    speed = {r["n"]: r["tokens_per_step"] / r["step_seconds"] for r in rows}
    assert doc["recommended"] == max(speed, key=speed.__getitem__)
    for r in rows:
        assert r["tokens_per_second"] == pytest.approx(speed[r["n"]], rel=1e-6)
        assert r["estimate_bytes"] > 0 and r["rss_bytes"] > 0


def test_tune_synthetic_mtp_matches_the_design(llama_server_bin: LlamaServerInfo, tmp_path: Path) -> None:
    perfect = write_qwen35(tmp_path / "k0.gguf")  # K=∞: the MTP head always agrees with the trunk
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=perfect))
    doc = tune(tmp_path, policy, "--n", "0,1,2,4", "--tokens", "64", "--write")
    rows = {r["n"]: r for r in doc["rows"]}
    assert rows[0]["acceptance"] is None and rows[0]["tokens_per_step"] == 1
    for n in (1, 2, 4):
        assert rows[n]["acceptance"] == pytest.approx(1.0)
        # A step yields 1 + n tokens (the last draft of a reply may be cut short by the token limit).
        assert rows[n]["tokens_per_step"] == pytest.approx(1 + n, rel=0.15)
    # Memory: the recurrent state grows with n; the estimate and RSS are reported per setting.
    assert rows[4]["estimate_bytes"] > rows[1]["estimate_bytes"] > rows[0]["estimate_bytes"]
    check_recommendation(doc)
    # --write kept the comments and wrote the best n and the measured step costs.
    text = policy.read_text()
    assert "# tuned by the test" in text and "# the synthetic model" in text and "# before tuning" in text
    draft = load_policy(policy).policy.models["syn"].draft
    assert draft.n_max == doc["recommended"]
    assert set(draft.step_cost) == {0, 1, 2, 4} and draft.step_cost[0] == 1.0

    # K=2: the head is right at position 0 and wrong at position 1, always: acceptance at n is exactly 1/n.
    policy.write_text(POLICY.format(path=write_qwen35(tmp_path / "k2.gguf", disagree_every=2)))
    doc = tune(tmp_path, policy, "--n", "0,1,2,3", "--tokens", "64")
    rows = {r["n"]: r for r in doc["rows"]}
    for n in (1, 2, 3):
        assert rows[n]["position_acceptance"][0] == pytest.approx(1.0, abs=0.02)
        assert rows[n]["position_acceptance"][1:] == [0.0] * (n - 1)
        assert rows[n]["acceptance"] == pytest.approx(1 / n, abs=0.02)
    check_recommendation(doc)


def test_tune_ngram_mod_on_copying_with_qwen(llama_server_bin: LlamaServerInfo, tmp_path: Path) -> None:
    model = council_home() / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not model.exists():
        pytest.skip(f"{model} is not installed (council setup)")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("ctx_size: 512", "ctx_size: 1024").format(path=model)
                      .replace("{type: mtp, n_max: 3}", "{type: ngram-mod, n_max: 8}"))
    code = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(6))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([f"Repeat this code exactly, with nothing before or after:\n\n{code}"]))
    doc = tune(tmp_path, policy, "--n", "0,8", "--tokens", "48", "--prompts", str(prompts))
    rows = {r["n"]: r for r in doc["rows"]}
    assert rows[8]["acceptance"] is not None and rows[8]["acceptance"] > 0.5
    assert rows[8]["tokens_per_step"] > 1.3  # copying: drafts from the prompt are accepted
    check_recommendation(doc)


def test_write_edits_keep_the_layout() -> None:
    text = "models:\n  m:\n    path: /m.gguf  # here\n    draft:\n      type: mtp   # head\n      n_max: auto\n"
    edited = set_value(set_value(text, ["models", "m", "draft", "auto", "start"], "2"),
                       ["models", "m", "draft", "step_cost"], "{0: 1.0, 2: 1.4}")
    assert edited == ("models:\n  m:\n    path: /m.gguf  # here\n    draft:\n      type: mtp   # head\n"
                      "      n_max: auto\n      auto: {start: 2}\n      step_cost: {0: 1.0, 2: 1.4}\n")
    assert set_value("a: {b: 1}  # c\n", ["a", "b"], "2") == "a: {b: 2}  # c\n"


@pytest.mark.parametrize(("content", "says"), [
    (None, ": no such file"),
    ('["one prompt",\n "two", oops]', ":2: not valid JSON (Expecting value)"),
    ('[1, 2]', ": a JSON prompts file must be a list of strings"),
    ("\n\n  \n", " holds no prompts"),
])
def test_a_bad_prompts_file_is_one_line_naming_it(tmp_path: Path, syn: Path, content: str | None, says: str) -> None:
    from council.cli.tune_command import _prompts

    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_text(content)
    with pytest.raises(ValueError) as caught:
        _prompts(str(prompts))
    assert str(caught.value) == f"{prompts}{says}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    # Found before any llama-server starts; a missing or broken file used to be a traceback.
    result = run_cli("tune", str(policy), "syn", "--prompts", str(prompts))
    assert result.returncode == 2 and result.stderr.strip() == f"error: {prompts}{says}", result.stderr
