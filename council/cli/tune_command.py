"""`council tune POLICY MODEL`: sweep the draft length, print the card's table, recommend (and write) the best n."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from council.cli.console import (
    app,
    err,
    fail,
    llama_server_or_exit,
    load_or_exit,
    machine_fits_or_exit,
    out,
    run_stoppable,
    stopping_signals,
)
from council.paths import same_file, unwritable, write_whole

if TYPE_CHECKING:
    from council.policy.schema import DraftConfig


def _ns(text: str) -> list[int]:
    try:
        ns = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"--n takes draft lengths like 0,1,2,4, not {text!r}") from None
    if not ns or ns[0] < 0 or ns[-1] > 32:
        raise typer.BadParameter("draft lengths are 0 (no speculation) to 32")
    return ns


def _prompts(path: str | None) -> list[str] | None:
    """A prompts file: a JSON list of strings, or one prompt per paragraph (blank lines between). ValueError, its
    message `FILE: what is wrong`, for a file that cannot be used."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            # A file starting with `[` is taken for JSON: say where it stops being JSON.
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:  # nested deeper than the decoder's stack: bad input, as invalid JSON is
            raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
        if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise ValueError(f"{path}: a JSON prompts file must be a list of strings")
    else:
        prompts = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


@app.command()
def tune(
    policy: Annotated[str, typer.Argument(help="The policy file (YAML).")],
    model: Annotated[str, typer.Argument(help="A model of the policy with a `draft:`.")],
    n: Annotated[str, typer.Option("--n", help="Draft lengths to measure (0: no speculation).")] = "0,1,2,3,4,6,8",
    prompts: Annotated[str | None, typer.Option("--prompts", help="Prompts: a JSON list, or paragraphs.")] = None,
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="Tokens to decode per prompt.")] = 200,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the rows as JSON to this file.")] = None,
    write: Annotated[bool, typer.Option("--write", help="Write the best n and the step costs into the policy.")]
    = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Threads of the tuned process.")] = None,
) -> None:
    """Start MODEL's llama-server once per draft length, send the same prompts, print decode tok/s, acceptance,
    speed-up and memory per setting, and recommend the fastest n (exit 1 when no draft length ran)."""
    from council.members.sweep import PROMPTS, sweep
    from council.policy.schema import FIXED_DRAFT_LENGTHS

    loaded = load_or_exit(policy)
    ns = _ns(n)
    if model not in loaded.policy.models:
        raise fail(f"{policy} has no model {model!r} (it has: {', '.join(loaded.policy.models)})", 2)
    draft = loaded.policy.models[model].draft
    if draft.type == "none":  # before the banner: nothing is tuned
        raise fail(f"models.{model} has no draft (`draft: {{type: mtp|model|ngram-mod, ...}}`): no draft length "
                   "to tune", 2)
    if draft.type in FIXED_DRAFT_LENGTHS:
        raise fail(f"models.{model}.draft: llama-server drafts {FIXED_DRAFT_LENGTHS[draft.type]} tokens with "
                   f"{draft.type} whatever is asked, so there is no draft length to tune", 2)
    # Only lengths the policy can be set to are measured (and so recommended and written); n = 0 stays as the
    # baseline of the speed-up and the step costs.
    measured = [k for k in ns if k == 0 or draft.accepts_n(k)]
    if not any(draft.accepts_n(k) for k in measured):
        raise fail(f"--n {n}: none of these lengths can be models.{model}.draft's ({_lengths(draft)})", 2)
    if all(k == 0 for k in measured):  # it "recommended" 0 and --write turned speculation off, comparing nothing
        raise fail(f"--n {n}: no draft length to compare with no speculation (0); give some, e.g. --n 0,1,2,4", 2)
    try:
        chosen = _prompts(prompts) or list(PROMPTS)
        json_path = _json_target(json_out, Path(policy))
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if write:
        _check_writable(Path(policy), model, draft.is_auto)
    server = llama_server_or_exit()
    # Where this machine refuses the tuned model (an MTP draft on a model without an MTP head), every length failed
    # to start, and the sweep called that a measurement ("no speculation is fastest", exit 0, `--write` n_max 0).
    machine_fits_or_exit(loaded, server, model)
    # SIGTERM and SIGHUP end the sweep as Ctrl-C does: its process stops and its run folder (the member's log, a
    # pid record) goes; Python's default was death on the spot, the folder left in /tmp. Here until the sweep starts;
    # during it the event loop takes them (`run_stoppable`).
    for stop in stopping_signals():  # SIGTERM, and SIGHUP unless under nohup
        signal.signal(stop, signal.default_int_handler)
    out.print(f"tuning {model} ({draft.type}): n = {', '.join(map(str, measured))}, "
              f"{len(chosen)} prompts × {tokens} tokens", highlight=False)
    if skipped := [k for k in ns if k not in measured]:
        out.print(f"not measuring n = {', '.join(map(str, skipped))}: {_lengths(draft)}", highlight=False)
    try:
        result = run_stoppable(sweep(loaded.policy, model, measured, server, prompts=chosen, tokens=tokens,
                                     threads=threads, on_row=lambda r: err.print(
                                         f"  n={r.n}: " + (r.error or f"{r.tokens_per_second:.1f} tok/s"),
                                         highlight=False)))
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    doc = result.to_json()
    _print_table(doc)
    best = result.recommended
    drafted = [r for r in result.ok_rows if r.n > 0]
    if best is None or not drafted:
        if json_error := _save_json(json_path, doc):  # the rows' errors are worth keeping
            err.print(f"[red]error:[/red] {json_error}", highlight=False, soft_wrap=True)
        # Every draft length failing is no measurement that speculation loses: nothing is recommended or written.
        raise fail("no setting produced tokens" if best is None else
                   "no draft length produced tokens (their errors above): nothing to compare no speculation with", 1)
    row = next(r for r in doc["rows"] if r["n"] == best)
    speedup = f", {row['speedup']:.2f}× no speculation" if row["speedup"] else ""
    out.print(f"recommended: n_max {best} ({row['tokens_per_second']:.1f} tok/s{speedup})"
              + (" — no speculation is fastest" if best == 0 else ""), highlight=False)
    # After the recommendation, and not in the way of --write: a file that cannot be written (its folder removed
    # during the sweep) costs only itself.
    json_error = _save_json(json_path, doc)
    if write:
        try:
            _write(Path(policy), model, draft.is_auto, best, doc["step_cost"])
        except typer.Exit:
            if json_error:  # the rows were not kept either: both are said
                err.print(f"[red]error:[/red] {json_error}", highlight=False, soft_wrap=True)
            raise
    if json_error:
        raise fail(json_error, 2)


def _json_target(path: str | None, policy: Path) -> Path | None:
    """Where `--json` will write, checked before the sweep's minutes as `--prompts` is: ValueError, its message
    `PATH: what is wrong`, for a place no file can be written, or the policy (its rows were written over it)."""
    if path is None:
        return None
    target = Path(path)
    if same_file(target, policy):
        raise ValueError(f"{path}: is the policy: the rows would be written over it")
    if (why := unwritable(target)) is not None:
        raise ValueError(f"{path}: {why}")
    return target


def _save_json(target: Path | None, doc: dict[str, Any]) -> str | None:
    """Write the rows; the one-line reason when that fails."""
    if target is None:
        return None
    try:
        write_whole(target, json.dumps(doc, indent=2) + "\n")  # a failure half way keeps the last rows
    except OSError as exc:
        return f"cannot write {target}: {exc.strerror or exc}"
    return None


def _lengths(draft: DraftConfig) -> str:
    """Which draft lengths the policy's draft can take (`DraftConfig.accepts_n`), in words."""
    if draft.is_auto:
        return f"`n_max: auto` runs from auto.floor {draft.auto.floor} to auto.limit {draft.auto.limit}"
    if draft.n_min:
        return f"n_max is 0 (off) or at least n_min {draft.n_min}"
    return "n_max is 0 to 32"


def _print_table(doc: dict[str, Any]) -> None:
    from council.units import format_size

    table = Table("n", "decode tok/s", "acceptance", "accepted per position", "tokens/step", "step ms", "speed-up",
                  "memory (estimate)", "memory (RSS)", title=f"{doc['model']}: draft {doc['draft_type']}")
    for r in doc["rows"]:
        if r["error"]:
            table.add_row(str(r["n"]), f"[red]{r['error']}[/red]", *[""] * 7)
            continue
        acc = "—" if r["acceptance"] is None else f"{r['acceptance']:.1%}"
        pos = " ".join(f"{a:.2f}" for a in r["position_acceptance"]) or "—"
        table.add_row(str(r["n"]), f"{r['tokens_per_second']:.1f}", acc, pos, f"{r['tokens_per_step']:.2f}",
                      f"{r['step_seconds'] * 1000:.3f}", "—" if r["speedup"] is None else f"{r['speedup']:.2f}×",
                      "—" if r["estimate_bytes"] is None else format_size(r["estimate_bytes"]),
                      "—" if r["rss_bytes"] is None else format_size(r["rss_bytes"]))
    out.print(table)
    if doc["step_cost"]:
        out.print("step cost (time of a step ÷ a plain step): "
                  + ", ".join(f"n={k}: {v:.2f}" for k, v in doc["step_cost"].items()), highlight=False)


# What the check before the sweep writes: values no policy holds, so a place that shares text with the edited
# one (an anchor, a merge key) shows as changed whatever the sweep then recommends.
_PROBE_N = 987654321
_PROBE_COST = {str(_PROBE_N): 0.5}


def _edits(model: str, auto: bool, best: int, step_cost: dict[str, float]) -> list[tuple[list[str], str]]:
    """The edits `--write` makes: the best n (`auto.start` under `n_max: auto`) and the measured step costs."""
    base = ["models", model, "draft"]
    edits = [([*base, "auto", "start"] if auto else [*base, "n_max"], str(best))]
    if step_cost:
        edits.append(([*base, "step_cost"], "{" + ", ".join(f"{k}: {v:.3f}" for k, v in step_cost.items()) + "}"))
    return edits


def _check_writable(path: Path, model: str, auto: bool) -> None:
    """Refuse (exit 2) before the sweep a policy that `--write` could not edit to mean what was measured."""
    from council.policy.editing import EditError, set_values

    try:
        set_values(path.read_text(), _edits(model, auto, _PROBE_N, _PROBE_COST))
    except EditError as exc:
        raise fail(f"cannot --write models.{model}.draft in {path}: {exc}", 2) from None
    # The edit is written beside the policy (where a link points) and moved over it: a folder or a file that cannot
    # be written is found now, not after the sweep's minutes.
    real = path.resolve()
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise fail(f"cannot --write {path}: its folder {real.parent} is not writable", 2)
    if not os.access(real, os.W_OK):
        raise fail(f"cannot --write {path}: the file is not writable", 2)


def _read_policy(path: Path) -> tuple[str, str]:
    """The policy's text with LF line ends, as the loader and the editor read it, and the line end the file has
    (its most common one), to write it back with. A byte order mark stays in the text, so it is written back too."""
    with path.open(newline="") as file:  # the loader's encoding, line ends as they are
        raw = file.read()
    crlf = raw.count("\r\n")
    counts = {"\n": raw.count("\n") - crlf, "\r\n": crlf, "\r": raw.count("\r") - crlf}
    return raw.replace("\r\n", "\n").replace("\r", "\n"), max(counts, key=counts.__getitem__)


def _write(path: Path, model: str, auto: bool, best: int, step_cost: dict[str, float]) -> None:
    """Edit the policy text in place (comments kept): the best n (`auto.start` under `n_max: auto`) and the
    measured step costs, then check the edited file still loads."""
    from council.policy.editing import EditError, set_values
    from council.policy.loading import PolicyError, load_policy_text

    try:
        text, newline = _read_policy(path)
    except (OSError, UnicodeDecodeError) as exc:  # removed or changed during the sweep
        reason = getattr(exc, "strerror", None) or exc
        raise fail(f"cannot read {path} again: {reason}; nothing is written", 1) from None
    try:
        edited = set_values(text, _edits(model, auto, best, step_cost))
    except EditError as exc:
        raise fail(f"cannot edit {path}: {exc}", 2) from None
    try:
        # Checked as the text it is, under the policy's own name: its problems point into the real file.
        load_policy_text(edited, str(path))
    except PolicyError as exc:
        raise fail(f"the edited policy would not load ({'; '.join(exc.lines())}); {path} is unchanged", 2) from None
    # A linked policy (/etc/council/policy.yaml -> a checkout) is edited where it lives, not replaced by a copy, and
    # keeps its mode and owner: the temporary file is created with them, never readable by more than the policy
    # was (`sudo council tune --write` handed a service's 0640 policy to root, which its service could not read).
    real = path.resolve()
    tmp = real.with_name(real.name + ".tune-tmp")
    try:
        was = real.stat()
        mode = stat.S_IMODE(was.st_mode)
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", newline=newline) as file:
            os.fchmod(file.fileno(), mode)  # os.open's mode is narrowed by the umask
            if (was.st_uid, was.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root gives a file away; others write their own
                    os.fchown(file.fileno(), was.st_uid, was.st_gid)
            file.write(edited)
        tmp.replace(real)
    except OSError as exc:
        # Its folder made read-only during the sweep, a full disk: the policy is as it was, and says so in one line.
        raise fail(f"cannot write {path}: {exc.strerror or exc}; {path} is unchanged", 1) from None
    finally:
        with contextlib.suppress(OSError):  # never created, or its folder cannot be written
            tmp.unlink(missing_ok=True)
    where = "auto.start" if auto else "n_max"
    out.print(f"wrote {where}: {best} and step_cost to models.{model}.draft in {path}", highlight=False)
