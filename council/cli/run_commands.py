"""`council up` and `council serve`: members under supervision, with or without the HTTP API."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

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
    plan_or_exit,
    stopping_signals,
)


@app.command()
def up(policy: Annotated[str, typer.Argument(help="The policy file (YAML).")]) -> None:
    """Launch and supervise every council's llama-server processes in the foreground until Ctrl-C or SIGTERM,
    then stop them all."""
    import asyncio
    import os

    from council.members.logs import mark_up_logs, prune_up_logs
    from council.members.process import LifeConfig
    from council.paths import council_home
    from council.voting.assembly import assemble

    _stop_on_sigterm()
    loaded = load_or_exit(policy)
    server = llama_server_or_exit()
    machine_fits_or_exit(loaded, server)
    plan_result = plan_or_exit(loaded)
    for council_name, reason in plan_result.refused.items():
        err.print(f"[yellow]warning:[/yellow] council {council_name} is not started: {reason}")
    if not plan_result.placements():
        raise fail("no council fits: nothing to start (see `council plan`)", 3)
    prune_up_logs(council_home() / "run" / "logs")
    life = LifeConfig(run_dir=council_home() / "run", instance=f"{Path(policy).stem}-up-{os.getpid()}")
    mark_up_logs(life.log_dir)
    supervisor = assemble(plan_result, server, life, listeners=[_change_line]).supervisor
    failed = asyncio.run(_run_until_signalled(supervisor))
    if failed:
        raise fail(f"every process failed, and none restarts: {', '.join(failed)} (their reasons above)", 1)


def _stop_on_sigterm() -> None:
    """SIGTERM before the command's own handlers (uvicorn's, the supervisor loop's) are in place, while the policy
    is read and checked and no member runs yet: exit 0, as after (Python's default was death by the signal, 143)."""
    import signal

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    for sig in stopping_signals():
        signal.signal(sig, stop)


def _change_line(change: Any) -> None:
    """One line per process state change (the log of `council up` and `council serve`)."""
    out.print(f"{time.strftime('%H:%M:%S')} {change.member}: {change.old} → {change.new}"
              + (f" ({change.reason})" if change.reason else ""), highlight=False)


async def _run_until_signalled(supervisor: Any) -> list[str]:
    """Start, report every state change on one line, and stop cleanly on SIGINT or SIGTERM, or once every process
    is `failed` (a failed process is never restarted: nothing would ever run): then the failed processes' names."""
    import asyncio
    import signal

    from rich.live import Live

    from council.members.states import State

    processes = list(supervisor.processes.values())
    all_failed = asyncio.Event()

    def on_change(change: Any) -> None:
        if change.new is State.FAILED and all(m.state is State.FAILED for m in processes):
            all_failed.set()

    for process in processes:
        process.listeners.append(on_change)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, *stopping_signals()):  # SIGHUP: a closed terminal (not under nohup)
        loop.add_signal_handler(sig, stop.set)
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
    gave_up = asyncio.create_task(all_failed.wait())
    done, _ = await asyncio.wait({settled, waiter, gave_up}, return_when=asyncio.FIRST_COMPLETED)
    if settled in done and not all_failed.is_set():
        states = [m.state for m in supervisor.processes.values()]
        ready = sum(s == "ready" for s in states)
        out.print(f"{ready}/{len(states)} processes ready in {time.monotonic() - started:.1f}s; Ctrl-C stops them")
    await asyncio.wait({waiter, gave_up}, return_when=asyncio.FIRST_COMPLETED)
    failed = [m.name for m in processes] if all_failed.is_set() and not stop.is_set() else []
    for task in (settled, waiter, gave_up):
        task.cancel()
    out.print("stopping processes…")
    await supervisor.stop()
    if live is not None:
        refresher.cancel()
        live.update(_members_table(supervisor), refresh=True)
        live.stop()
    out.print("all processes stopped")
    return failed


def _members_table(supervisor: Any) -> Table:
    """The live view of `council up` on a terminal: one row per member process."""
    table = Table("process", "model", "state", "pid", "port", "restarts", "tok/s", "draft acc.", "reason",
                  title="council processes")
    for m in supervisor.processes.values():
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
    # The range server.port has: past it bind() raised OverflowError (a traceback), and 0 read as "the policy's".
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: the policy's server.port).")
                    ] = None,
    role: Annotated[str, typer.Option(help="both (members + API), host (members, published to the registry) "
                                           "or router (API over the registry's members); the last two need "
                                           "state: redis://...")] = "both",
    reuse_port: Annotated[bool, typer.Option("--reuse-port", help="Bind with SO_REUSEPORT, so several "
                                             "`--role router` processes share one port and the kernel spreads "
                                             "connections over them.")] = False,
) -> None:
    """`council up` plus the HTTP API: OpenAI-compatible /v1/chat/completions where `model` is a council."""
    import signal

    import uvicorn

    from council.members.process import LifeConfig
    from council.paths import council_home
    from council.server.app import create_app
    from council.server.auth import MAKE_A_KEY, KeyRing, env_secret, is_loopback, weak_secret
    from council.server.router import open_router

    _stop_on_sigterm()
    loaded = load_or_exit(policy)
    settings = loaded.policy.server
    # `--host ""` is every interface, not "use the policy's": it must meet the key check below.
    bind_host, bind_port = host if host is not None else settings.host, port if port is not None else settings.port
    if not is_loopback(bind_host) and not settings.api_keys:
        where = bind_host or '"" (every interface)'
        raise fail(f"refusing to serve on {where} without API keys: add server.api_keys to the policy "
                   "(or bind 127.0.0.1)", 2)
    keys = KeyRing(settings.api_keys)
    if keys.missing_env:
        raise fail("API key variables are not set: " + "; ".join(keys.missing_env), 2)
    if not is_loopback(bind_host):
        # Beyond loopback a guessable key (the examples' `change-me`) is no lock; the cluster key opens every
        # member's /internal endpoint here.
        weak = list(keys.weak)
        cluster_key = env_secret(settings.cluster_key_env)
        if cluster_key and (why := weak_secret(cluster_key)) is not None:
            weak.append(f"${settings.cluster_key_env} (the cluster key) {why}")
        if weak:
            where = bind_host or '"" (every interface)'
            raise fail(f"refusing to serve on {where} with keys too weak to be secret: {'; '.join(weak)}; "
                       f"{MAKE_A_KEY}", 2)
    if role not in ("both", "host", "router"):
        raise fail(f"--role must be both, host or router, not {role!r}", 2)
    if role != "both" and loaded.policy.state == "memory":
        raise fail(f"--role {role} shares members through the registry: set `state: redis://...`", 2)
    if role != "both" and env_secret(settings.cluster_key_env) is None:
        # Without it a host publishes entries no router trusts and a router calls no host: seats that never come,
        # and nothing said why.
        raise fail(f"--role {role} calls members across hosts with the cluster key: set ${settings.cluster_key_env}, "
                   f"the same on every host and router ({MAKE_A_KEY})", 2)
    if reuse_port and role != "router":
        # Routers hold no members, so any of them can take any connection; hosts and `both` run members.
        raise fail("--reuse-port is for --role router (several routers over the same hosts share one port)", 2)
    base = f"http://[{bind_host}]:{bind_port}" if ":" in bind_host else f"http://{bind_host}:{bind_port}"  # IPv6
    advertise = settings.advertise_url or base
    # Members run here and state is shared: the registry lists them under `advertise`, its key and the URL other
    # routers call. A wildcard there reaches no one, and every such host would overwrite the others' entry.
    if role != "router" and loaded.policy.state != "memory" and _wildcard(
            urlsplit(settings.advertise_url).hostname if settings.advertise_url else bind_host):
        raise fail(f"--role {role} publishes this host's members as {advertise}, which other routers cannot reach: "
                   "set server.advertise_url to how they reach this host (e.g. http://gpu-a:8080)", 2)
    server = llama_server_or_exit()
    if role != "router":  # a router launches nothing: its hosts check their own
        machine_fits_or_exit(loaded, server)
    try:  # bound before any member starts: a port already taken is one line, not members started for nothing
        sockets = [_listening_socket(bind_host, bind_port, reuse_port)]
    except OSError as exc:
        how = " with SO_REUSEPORT" if reuse_port else ""
        raise fail(f"cannot bind {bind_host}:{bind_port}{how}: {exc.strerror or exc}", 1) from None
    try:
        # The log folder is named for this router (policy and port), so two routers never share member logs.
        life = LifeConfig(run_dir=council_home() / "run", instance=f"{Path(policy).stem}-{bind_port}")
        router = open_router(Path(policy), loaded, server, life, role=role,  # type: ignore[arg-type]
                             advertise_url=advertise)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    router.public = not is_loopback(bind_host)
    for council_name, reason in router.refused.items():
        err.print(f"[yellow]warning:[/yellow] council {council_name} is not started: {reason}")
    router.listeners.append(_change_line)
    _log_draft_tuning()
    out.print(f"council serving on {base} (OpenAI base URL {base}/v1)")
    _CleanExitServer = _clean_exit_server(router.events.close)
    # uvloop and httptools by name (both come with uvicorn[standard]): "auto" would fall back to asyncio and h11,
    # slower per request, without a word.
    config = uvicorn.Config(create_app(router), host=bind_host, port=bind_port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=30, loop="uvloop",
                            http="httptools")
    server_ = _CleanExitServer(config)
    # SIGHUP (a closed terminal) stops as SIGTERM does: drained, members stopped, exit 0. Python's default was death
    # on the spot: requests cut, members left to their parent-death kill, a pid file behind. (A reload is
    # POST /admin/reload.)
    if signal.SIGHUP in stopping_signals():  # not under nohup
        signal.signal(signal.SIGHUP, lambda _sig, _frame: server_.handle_exit(signal.SIGTERM, None))
    server_.run(sockets=sockets)
    out.print("all processes stopped")


def _wildcard(host: str | None) -> bool:
    """An address that means every interface (0.0.0.0, ::, empty): no other machine reaches a host by it."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False  # a name


def _listening_socket(host: str, port: int, reuse_port: bool = False) -> Any:
    """The socket uvicorn listens on, bound here (uvicorn would bind only after the lifespan started the members).
    With `reuse_port`, SO_REUSEPORT (uvicorn's own bind has no such option): every process that binds this way, as
    the same user, shares the port; Linux hands each new connection to one of them."""
    import socket

    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this platform has no SO_REUSEPORT")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own bind does
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _log_draft_tuning() -> None:
    """Live draft tuning's decisions and refusals (`n_max: auto`), one line each, beside the state changes."""
    import logging

    class Line(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.print(f"{time.strftime('%H:%M:%S')} {record.getMessage()}", highlight=False)

    logger = logging.getLogger("council.draft")
    logger.setLevel(logging.INFO)
    logger.addHandler(Line())


def _clean_exit_server(on_exit: Callable[[], None]) -> type:
    import logging
    import signal
    import socket
    from types import FrameType

    import uvicorn

    from council.server.router import settle_memory

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown (exit -15); `serve` promises exit 0."""

        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            # A second Ctrl-C forces the exit: the app's lifespan, still waiting on uvicorn, is cancelled, and
            # starlette hands uvicorn that CancelledError's traceback, which it logged as an error. Asked for.
            logging.getLogger("uvicorn.error").addFilter(
                lambda record: not (self.force_exit and "CancelledError" in str(record.msg)))

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            settle_memory()  # start-up's objects (modules, the app, the router and its members) live as long

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True
                on_exit()  # open event streams end, so the graceful shutdown need not wait them out

    return Server
