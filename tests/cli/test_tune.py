"""`council tune` with the real llama-server: the synthetic MTP model's designed acceptance, and ngram-mod on Qwen."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from council.members.binary import LlamaServerInfo
from council.paths import council_home
from council.policy.editing import EditError, set_value, set_values
from council.policy.loading import load_policy
from council.policy.schema import Policy
from council.setup.synthetic import write_qwen35
from tests.conftest import run_cli
from tests.servers import hup_as_from_a_terminal

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


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_a_sweep_stopped_by_a_signal_leaves_no_process_or_folder(llama_server_bin: LlamaServerInfo, tmp_path: Path,
                                                                 stop: str) -> None:
    """SIGTERM or SIGHUP killed `tune` on the spot: its llama-server died with it, but its run folder (the member's
    log, a pid record) stayed in /tmp. They now end the sweep as Ctrl-C does (exit 130), the folder removed."""
    import os
    import signal
    import sys
    import time

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=write_qwen35(tmp_path / "m.gguf")))
    temp = tmp_path / "tmp"
    temp.mkdir()
    # Twelve lengths, a process each, so that the signal lands mid-sweep. Twice, in loaded CI runs, it landed in a
    # finalizer and was lost (exit 0, every row measured): the next test provokes that on purpose.
    proc = subprocess.Popen([sys.executable, "-m", "council", "tune", str(policy), "syn", "--n",
                             "0,1,2,3,4,5,6,7,8,9,10,11",
                             "--tokens", "100000", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": str(temp)}, preexec_fn=hup_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 60
        while not list(temp.glob("council-tune-*/*")):  # the sweep's process is starting
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(getattr(signal, stop))
        out, errors = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, out, errors)
    assert list(temp.iterdir()) == [] and "Traceback" not in errors, errors
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "m.gguf")], capture_output=True, text=True).stdout
    assert left == "", left


_FINALIZER_SIGNAL = """
import asyncio, os, signal, time
from council.cli.console import run_stoppable

class Dropped:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # a Python handler would run here, inside the finalizer
            time.sleep(0.0001)

async def main():
    try:
        for _ in range(50):
            Dropped()
            await asyncio.sleep(0.01)
        return "ran to the end"
    finally:
        print("cleaned up")

try:
    print(run_stoppable(main()))
except KeyboardInterrupt:
    print("interrupted")
print(signal.getsignal(signal.SIGTERM) is signal.default_int_handler)
"""


def test_a_stop_signal_that_lands_in_a_finalizer_still_stops_the_command() -> None:
    """The twice-seen CI failure above (`tune` measured every length and exited 0): SIGTERM's handler raised
    KeyboardInterrupt inside a finalizer, where Python prints "Exception ignored" and drops it. The event loop now
    takes the signal (`run_stoppable`): the coroutine is cancelled (its `finally` runs), KeyboardInterrupt follows,
    and the handler that was there before (`default_int_handler`, as `tune` sets it) is back afterwards."""
    import sys

    code = "import signal\nsignal.signal(signal.SIGTERM, signal.default_int_handler)\n" + _FINALIZER_SIGNAL
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["cleaned", "up", "interrupted", "True"], (done.stdout, done.stderr)
    assert done.returncode == 0  # the script's own end, after the interrupt was caught


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


def test_an_edit_through_an_alias_writes_this_places_own_copy() -> None:
    text = "a: {n: &n 4, d: &d {x: 1, y: 2}}\nb: {n: *n, d: *d}\n"
    assert set_values(text, [(["b", "n"], "2"), (["b", "d", "x"], "3")]) == (
        "a: {n: &n 4, d: &d {x: 1, y: 2}}\nb: {n: 2, d: {x: 3, y: 2}}\n")
    with pytest.raises(EditError, match=r"would also change b\.d\.y"):
        set_values(text, [(["a", "d", "y"], "5")])


@pytest.mark.parametrize(("content", "says"), [
    (None, ": no such file"),
    ('["one prompt",\n "two", oops]', ":2: not valid JSON (Expecting value)"),
    ('[1, 2]', ": a JSON prompts file must be a list of strings"),
    ("\n\n  \n", " holds no prompts"),
    ("[" * 100_000 + "]" * 100_000, ": not valid JSON (nested too deeply)"),  # was a RecursionError traceback
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


# --- which lengths tune measures and writes, with the sweep's measurements given ---------------------------------

SPEC_TYPES = ("none", "draft-simple", "draft-mtp", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod",
              "ngram-cache")


@dataclass
class TuneRun:
    code: int
    stdout: str
    stderr: str
    measured: list[int]


@pytest.fixture
def tune_given(monkeypatch: pytest.MonkeyPatch) -> Callable[..., TuneRun]:
    """`council tune POLICY syn ARGS` in process, each length's decode speed given (`speeds`, tokens/s) instead
    of measured by a llama-server (`during(n)` runs as n is "measured"): what the command does with the rows is
    real."""
    from council.cli import app
    from council.members import binary, sweep

    def run(policy: Path, speeds: dict[int, float | str], *args: str,
            during: Callable[[int], None] = lambda n: None) -> TuneRun:
        measured: list[int] = []

        async def measure(policy: Policy, model: str, n: int, *_: object, **__: object) -> sweep.SweepRow:
            measured.append(n)
            during(n)
            speed = speeds[n]
            if isinstance(speed, str):  # the length failed so
                return sweep.SweepRow(n, error=speed)
            return sweep.SweepRow(n, tokens=100, decode_seconds=100 / speed)

        monkeypatch.setattr(sweep, "measure", measure)
        monkeypatch.setattr(binary, "find_llama_server",
                            lambda **_: LlamaServerInfo(Path("/opt/llama-server"), 11434, "", SPEC_TYPES))
        result = CliRunner().invoke(app, ["tune", str(policy), "syn", *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return TuneRun(result.exit_code, result.stdout, result.stderr, measured)

    return run


def test_write_0_keeps_the_policys_n_min(tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun]) -> None:
    """No speculation fastest: `n_max: 0` is written beside `n_min: 1` (the schema refused that pair before)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn).replace("{type: mtp, n_max: 3}", "{type: mtp, n_max: 3, n_min: 1}"))
    run = tune_given(policy, {0: 50.0, 1: 40.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    assert "recommended: n_max 0" in run.stdout
    draft = load_policy(policy).policy.models["syn"].draft
    assert (draft.n_max, draft.n_min) == (0, 1)


def test_a_model_the_machine_cannot_draft_with_is_refused_before_the_sweep(
        tmp_path: Path, tune_given: Callable[..., TuneRun]) -> None:
    """An MTP draft on a model without an MTP head (`council check` refuses it): every length failed to start, and
    tune said "no speculation is fastest", exit 0, and `--write` turned speculation off in a policy still refused."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=write_qwen35(tmp_path / "plain.gguf", mtp=False)))
    before = policy.read_text()
    run = tune_given(policy, {0: 50.0, 1: "failed to create MTP context"}, "--n", "0,1", "--write")
    assert run.code == 2 and run.measured == [] and run.stdout == "", run
    assert "models.syn.draft.type: draft type mtp needs a model with an MTP head" in run.stderr, run.stderr
    assert policy.read_text() == before


def test_no_recommendation_where_every_draft_length_failed_or_none_was_given(
        tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun]) -> None:
    """Lengths that fail to run measure nothing: "no speculation is fastest" (and `--write` n_max 0) was a
    failure read as a result; `--n 0` alone compared nothing and wrote 0 all the same."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    before = policy.read_text()
    failed = tune_given(policy, {0: 50.0, 1: "exited with code 1", 2: "exited with code 1"}, "--n", "0,1,2", "--write")
    assert failed.code == 1 and failed.measured == [0, 1, 2], failed
    assert "no draft length produced tokens" in failed.stderr and "recommended" not in failed.stdout, failed
    alone = tune_given(policy, {0: 50.0}, "--n", "0", "--write")
    assert alone.code == 2 and alone.measured == [] and "no draft length to compare" in alone.stderr, alone
    assert policy.read_text() == before


def test_lengths_below_n_min_are_not_measured(tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn).replace("{type: mtp, n_max: 3}", "{type: mtp, n_max: 3, n_min: 3}"))
    run = tune_given(policy, {0: 10.0, 1: 90.0, 2: 80.0, 3: 30.0, 4: 20.0}, "--n", "0,1,2,3,4", "--write")
    assert run.code == 0, run.stderr
    assert run.measured == [0, 3, 4]
    assert "not measuring n = 1, 2: n_max is 0 (off) or at least n_min 3" in run.stdout
    assert load_policy(policy).policy.models["syn"].draft.n_max == 3


def test_auto_measures_and_writes_within_floor_and_limit(tmp_path: Path, syn: Path,
                                                         tune_given: Callable[..., TuneRun]) -> None:
    """Under `n_max: auto` only auto.floor..auto.limit are candidates: n = 8, fastest but past the limit, is not
    measured (auto.start 8 would not load), and n = 0 below the floor is measured only as the baseline."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn).replace(
        "{type: mtp, n_max: 3}", "{type: mtp, n_max: auto, auto: {floor: 2, start: 2, limit: 4}}"))
    speeds = {0: 100.0, 1: 20.0, 2: 30.0, 3: 40.0, 4: 50.0, 6: 60.0, 8: 70.0}
    run = tune_given(policy, speeds, "--write")  # the default lengths, 0,1,2,3,4,6,8
    assert run.code == 0, run.stderr
    assert run.measured == [0, 2, 3, 4]
    assert "not measuring n = 1, 6, 8: `n_max: auto` runs from auto.floor 2 to auto.limit 4" in run.stdout
    assert "recommended: n_max 4" in run.stdout
    draft = load_policy(policy).policy.models["syn"].draft
    assert draft.auto.start == 4 and set(draft.step_cost) == {0, 2, 3, 4}

    run = tune_given(policy, speeds, "--n", "0,6,8")
    assert run.code == 2 and run.measured == []
    assert run.stderr.strip() == ("error: --n 0,6,8: none of these lengths can be models.syn.draft's "
                                  "(`n_max: auto` runs from auto.floor 2 to auto.limit 4)")


def test_a_refused_edit_names_the_policy_not_a_temporary_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from council.cli.tune_command import _write

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=tmp_path / "m.gguf"))
    before = policy.read_text()
    with pytest.raises(typer.Exit):
        _write(policy, "syn", False, 33, {})
    said = capsys.readouterr().err
    assert f"{policy}:7: models.syn.draft.n_max: " in said and ".tune-tmp" not in said
    assert policy.read_text() == before and list(tmp_path.iterdir()) == [policy]


BLOCK_POLICY = """\
gpus: [{{name: cpu, memory: 8GiB}}]
councils:
  c: {{members: [{{model: syn}}]}}
models:
  syn:
    path: {path}
    ctx_size: 512
    draft:
      type: mtp
"""


@pytest.mark.parametrize(("draft", "written"), [
    # At the end of the file, comments after it: they were deleted, with the file's last newline.
    ("      n_max: 3\n      step_cost:\n        0: 1.0\n        3: 2.5\n# measured on the build box; keep them\n"
     "# unless a re-tune says otherwise\n",
     "      n_max: 2\n      step_cost:\n        0: 1.000\n        1: {c1}\n        2: {c2}\n"
     "# measured on the build box; keep them\n# unless a re-tune says otherwise\n"),
    # Another key after it: the edit was glued to it (`}n_max: 3`), refused as not YAML after the sweep.
    ("      step_cost:\n        0: 1.0\n        3: 2.5\n      # the length tune last picked:\n      n_max: 3\n",
     "      step_cost:\n        0: 1.000\n        1: {c1}\n        2: {c2}\n      # the length tune last picked:\n"
     "      n_max: 2\n"),
])
def test_write_keeps_a_block_step_cost_in_block_style_and_what_follows_it(
        tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun], draft: str, written: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BLOCK_POLICY.format(path=syn) + draft)
    run = tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    cost = load_policy(policy).policy.models["syn"].draft.step_cost
    assert policy.read_text() == BLOCK_POLICY.format(path=syn) + written.format(c1=f"{cost[1]:.3f}",
                                                                                c2=f"{cost[2]:.3f}")
    assert set(cost) == {0, 1, 2} and cost[0] == 1.0


SHARED_HEAD = """\
gpus: [{name: cpu, memory: 8GiB}]
councils:
  c: {members: [{model: syn}, {model: other}]}
models:
"""


@pytest.mark.parametrize("merging", ["    <<: *base\n    ctx_size: 1024\n", "    <<: *base\n"])
def test_write_through_a_merge_key_keeps_the_inherited_draft(tmp_path: Path, syn: Path, merging: str,
                                                             tune_given: Callable[..., TuneRun]) -> None:
    """`syn`'s draft comes from `<<: *base`: --write gives syn its own draft, the inherited one with the tuned values.
    It used to add `draft: {auto: {start: 2}, step_cost: ...}`, which replaced the whole merged draft (type none:
    no speculation), or, with the merge as the mapping's only key, wrote into the anchored model."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(SHARED_HEAD + f"""\
  other: &base
    path: {syn}
    ctx_size: 512
    draft: {{type: mtp, n_max: auto, auto: {{start: 1, floor: 1, limit: 4}}}}  # shared
  syn:
{merging}""")
    before = load_policy(policy).policy.models
    run = tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    after = load_policy(policy).policy.models
    tuned = after["syn"].draft
    assert tuned == before["syn"].draft.model_copy(update={"auto": before["syn"].draft.auto.model_copy(
        update={"start": 2}), "step_cost": tuned.step_cost})
    assert set(tuned.step_cost) == {0, 1, 2} and tuned.type == "mtp" and tuned.n_max == "auto"
    assert after["syn"].model_copy(update={"draft": None}) == before["syn"].model_copy(update={"draft": None})
    assert after["other"] == before["other"]
    assert "# shared" in policy.read_text()


@pytest.mark.parametrize(("models", "shared"), [
    # syn is the anchor `other` merges its draft from: editing syn's text would tune `other` too.
    ("  syn: &base\n    path: {syn}\n    draft: {{type: mtp, n_max: 3}}\n  other:\n    <<: *base\n",
     "models.other.draft.n_max"),
    # n_max itself anchored and used by `other`: the edit used to drop the anchor, a traceback after the sweep.
    ("  syn:\n    path: {syn}\n    draft: {{type: mtp, n_max: &n 3}}\n"
     "  other:\n    path: {syn}\n    draft: {{type: mtp, n_max: *n}}\n",
     "models.other.draft.n_max"),
])
def test_write_that_would_change_another_model_is_refused_before_the_sweep(
        tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun], models: str, shared: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(SHARED_HEAD + models.format(syn=syn))
    before = policy.read_text()
    run = tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 2 and run.measured == []
    assert run.stderr.strip() == (f"error: cannot --write models.syn.draft in {policy}: the edit would also change "
                                  f"{shared}, which shares text with what is edited (a YAML anchor or merge key); "
                                  "edit the policy by hand")
    assert policy.read_text() == before
    # Without --write, nothing is edited: the sweep runs.
    assert tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2").code == 0


def test_write_through_a_link_edits_the_linked_policy_and_keeps_its_mode(tmp_path: Path, syn: Path,
                                                                       tune_given: Callable[..., TuneRun]) -> None:
    """A policy reached through a symlink was replaced by a new file with the default mode (0644): the link became a
    copy, the real policy kept its old n_max, and the copy of a 0600 policy was readable by anyone."""
    (tmp_path / "checkout").mkdir()
    real = tmp_path / "checkout" / "policy.yaml"
    real.write_text(POLICY.format(path=syn))
    real.chmod(0o600)
    link = tmp_path / "policy.yaml"
    link.symlink_to(real)
    run = tune_given(link, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    assert link.is_symlink() and link.resolve() == real
    assert load_policy(real).policy.models["syn"].draft.n_max == 2
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkout", "policy.yaml", "policy.yaml"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root writes a file another user owns")
def test_write_as_root_keeps_the_policys_owner(tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun]) -> None:
    """`sudo council tune --write` replaced a service's 0640 policy with root's: its service could no longer read
    it (the next serve, reload or check failed)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    os.chown(policy, 1000, 1000)
    policy.chmod(0o640)
    run = tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    after = policy.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (1000, 1000, 0o640)
    assert load_policy(policy).policy.models["syn"].draft.n_max == 2


def test_json_into_a_missing_folder_is_refused_before_the_sweep(tmp_path: Path, syn: Path,
                                                                tune_given: Callable[..., TuneRun]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    out = tmp_path / "missing" / "tune.json"
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--json", str(out), "--write")
    assert run.code == 2 and run.measured == []
    assert run.stderr.strip() == f"error: {out}: no such folder {out.parent}"
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--json", str(tmp_path))
    assert run.code == 2 and run.stderr.strip() == f"error: {tmp_path}: is a folder" and run.measured == []
    long = tmp_path / ("x" * 300)  # `Path.exists` raised on it: a traceback, exit 1
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--json", str(long))
    assert run.code == 2 and run.stderr.strip() == f"error: {long}: File name too long" and run.measured == []


def test_json_that_cannot_be_written_after_the_sweep_costs_only_itself(tmp_path: Path, syn: Path,
                                                                      tune_given: Callable[..., TuneRun]) -> None:
    """The folder removed during the sweep: the recommendation is printed and written, then one line, exit 2."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "tune.json"
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--json", str(out), "--write",
                     during=lambda n: (tmp_path / "out").rmdir() if n == 2 else None)
    assert run.code == 2 and run.measured == [0, 2]
    assert "recommended: n_max 2" in run.stdout
    assert load_policy(policy).policy.models["syn"].draft.n_max == 2
    assert run.stderr.strip().splitlines()[-1] == f"error: cannot write {out}: No such file or directory"

    (tmp_path / "out").mkdir()
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--json", str(out))
    assert run.code == 0 and json.loads(out.read_text())["recommended"] == 2


# --- a policy --write cannot write -----------------------------------------------------------------------------------


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.fixture
def lock() -> Iterator[Callable[[Path, bool], None]]:
    """`lock(path, immutable)`: make a file or folder unwritable, for this user even as root: `chmod a-w` where that
    stops it, else `chattr +i`, which `immutable=True` asks for (a file whose mode says read-only can still be
    replaced by a rename). Skips where neither works; undone at teardown, so pytest can remove its folders."""
    undo: list[Callable[[], None]] = []

    def chattr(path: Path, flag: str) -> bool:
        return shutil.which("chattr") is not None and subprocess.run(
            ["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0

    def locked(path: Path, immutable: bool) -> None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not immutable:
            path.chmod(mode & ~0o222)
            undo.append(lambda: path.chmod(mode))
            if not path.is_dir() or not _can_create_in(path):
                return
        if not chattr(path, "+i"):
            pytest.skip("chmod does not stop this user and `chattr +i` is not available here")
        undo.append(lambda: chattr(path, "-i"))

    yield locked
    for step in reversed(undo):
        step()


@pytest.mark.parametrize("which", ["folder", "file"])
def test_write_to_a_policy_that_cannot_be_written_is_refused_before_the_sweep(
        tmp_path: Path, syn: Path, lock: Callable[[Path, bool], None], which: str) -> None:
    """Found after the sweep's minutes, it was a PermissionError traceback, exit 1; now one line, exit 2, before any
    llama-server starts (`council tune` without --write still runs: tests below)."""
    (tmp_path / "etc").mkdir()
    policy = tmp_path / "etc" / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    before = policy.read_bytes()
    lock(policy.parent if which == "folder" else policy, which == "file")
    result = run_cli("tune", str(policy), "syn", "--n", "0,1", "--write", env={"LLAMA_SERVER": "/nonexistent"})
    says = f"its folder {policy.parent} is not writable" if which == "folder" else "the file is not writable"
    assert result.returncode == 2 and result.stderr.strip() == f"error: cannot --write {policy}: {says}", result.stderr
    assert result.stdout == ""  # nothing was tuned
    assert policy.read_bytes() == before


@pytest.mark.parametrize("which", ["folder", "file"])
def test_a_policy_that_cannot_be_written_after_the_sweep_is_one_line_and_unchanged(
        tmp_path: Path, syn: Path, tune_given: Callable[..., TuneRun], lock: Callable[[Path, bool], None],
        which: str) -> None:
    """The folder (no temporary file can be made) or the file (the temporary file is made, then cannot replace it)
    made read-only during the sweep: a traceback, exit 1, that could leave `policy.yaml.tune-tmp` behind."""
    (tmp_path / "etc").mkdir()
    policy = tmp_path / "etc" / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    before = policy.read_bytes()
    run = tune_given(policy, {0: 10.0, 2: 20.0}, "--n", "0,2", "--write",
                     during=lambda n: lock(policy.parent if which == "folder" else policy, which == "file")
                     if n == 2 else None)
    assert run.code == 1 and run.measured == [0, 2]
    assert "recommended: n_max 2" in run.stdout
    assert re.fullmatch(rf"error: cannot write {re.escape(str(policy))}: (Permission denied|Operation not "
                        rf"permitted); {re.escape(str(policy))} is unchanged", run.stderr.splitlines()[-1]), run.stderr
    assert policy.read_bytes() == before
    assert [p.name for p in policy.parent.iterdir()] == ["policy.yaml"]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_write_keeps_the_policys_line_ends_and_byte_order_mark(tmp_path: Path, syn: Path, newline: str,
                                                               tune_given: Callable[..., TuneRun]) -> None:
    """A policy written on Windows (CRLF, a UTF-8 byte order mark) came back with LF line ends: every line of it
    changed, for the one value --write meant to change."""
    policy = tmp_path / "policy.yaml"
    text = "\ufeff# réglé à la main\n" + POLICY.format(path=syn)
    policy.write_bytes(text.replace("\n", newline).encode())
    run = tune_given(policy, {0: 10.0, 1: 15.0, 2: 30.0}, "--n", "0,1,2", "--write")
    assert run.code == 0, run.stderr
    draft = load_policy(policy).policy.models["syn"].draft
    assert draft.n_max == 2 and set(draft.step_cost) == {0, 1, 2}
    written = policy.read_bytes()
    assert written.startswith("\ufeff# réglé à la main".encode() + newline.encode())
    ends = written.count(newline.encode())
    assert ends == len(text.splitlines()) and written.count(b"\r") + written.count(b"\n") == ends * len(newline)
    cost = ", ".join(f"{k}: {v:.3f}" for k, v in draft.step_cost.items())
    assert written.decode() == text.replace("n_max: 3}", f"n_max: 2, step_cost: {{{cost}}}}}").replace("\n", newline)


@pytest.mark.parametrize("write", [[], ["--write"]], ids=["rows", "rows-and-write"])
def test_json_naming_the_policy_is_refused_before_any_sweep(tmp_path: Path, syn: Path, write: list[str]) -> None:
    """`--json POLICY` wrote the rows over the policy (with `--write`, then edited what was no policy any more)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(path=syn))
    before = policy.read_bytes()
    result = run_cli("tune", str(policy), "syn", "--json", str(policy), *write)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {policy}: is the policy: the rows would be written over it"
    assert policy.read_bytes() == before
