"""The command line's shared parts: the typer app, the consoles, and one-line failures with exit codes."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from council import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Answer with a council of small local models, by vote.")
# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


# The longest `--timeout`: a socket's timeout past what the platform's clock holds (`inf`, 1e300) raised
# OverflowError, a traceback; a week is longer than any answer is worth waiting for.
MAX_WAIT = 7 * 24 * 3600


def wait_seconds(value: float) -> float:
    """`--timeout`'s check, as typer checks a range: 0 or less (and NaN) timed out at once or raised ValueError in
    the socket, past MAX_WAIT raised OverflowError, so those were tracebacks or every request "unreachable"."""
    if not 0 < value <= MAX_WAIT:
        raise typer.BadParameter(f"Input should be greater than 0 and at most {MAX_WAIT} seconds (a week), "
                                 f"not {value:g}")
    return value


def bad_url(url: str) -> str | None:
    """Why `--url` is no URL to ask (httpx raised InvalidURL, a traceback, when the client was made), or None."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"not a URL ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        # `127.0.0.1:8080` was "unreachable": `ask` exit 1, and `eval` failed every item, a 0% report, exit 0.
        return "not an http:// or https:// URL (e.g. http://127.0.0.1:8080)"
    if parsed.port is not None and not 0 < parsed.port <= 65535:  # else the connection went to port % 65536
        return f"port {parsed.port} is out of range (1-65535)"
    return None


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


def load_or_exit(path: str) -> Any:
    from council.policy.loading import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        for line in exc.lines():
            err.print(line, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def llama_server_or_exit(*, required: bool = True) -> Any:
    """The installed llama-server, or exit 1 saying how to get one (None, when not `required`); exit 2 when
    `$LLAMA_SERVER` names no usable one (bad input, never passed over for another build)."""
    from council.members.binary import LlamaServerVariableError, find_llama_server

    try:
        server = find_llama_server(require_mtp=False)
    except LlamaServerVariableError as exc:
        raise fail(str(exc), 2) from None
    if server is None and required:
        raise fail("no llama-server found: run `council setup`", 1)
    return server


def machine_fits_or_exit(loaded: Any, server: Any, model: str | None = None) -> None:
    """Exit 2 with `council check`'s own lines where only this machine can refuse the policy (a draft type the
    installed llama-server lacks, a GGUF it cannot read, a model file its councils run that is not there, which
    `memory:` lets `check` plan without): before any process starts, not as a traceback after.
    `model`: only that model's problems (`tune` runs it alone)."""
    from council.plan.estimate import read_model_header
    from council.policy.checks import environment_problems, missing_run_files

    problems = [p for p in [*environment_problems(loaded, server, read_model_header), *missing_run_files(loaded)]
                if model is None or tuple(p.path[:2]) == ("models", model)]
    for problem in problems:
        err.print(problem.format(loaded.file), highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


def plan_or_exit(loaded: Any) -> Any:
    """The policy's plan, or exit 2 with the reason (a model file that cannot be read, say)."""
    from council.plan.planner import plan_policy

    try:
        return plan_policy(loaded.policy)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from None


def stopping_signals() -> tuple[int, ...]:
    """SIGTERM, and SIGHUP (a closed terminal) unless the command was started ignoring it: `nohup council ...`
    hands it SIGHUP ignored so that it outlives the terminal, and a handler of ours would undo that."""
    import signal

    hup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGTERM, *hup)


T = TypeVar("T")


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, where SIGTERM and SIGHUP (`stopping_signals`) stop it as Ctrl-C does: `main` is
    cancelled, so its `finally` blocks run (processes stopped, folders removed), then KeyboardInterrupt (exit 130).
    The event loop takes the signal (`add_signal_handler`). A Python handler raising KeyboardInterrupt
    (`default_int_handler`) raises it in whatever code runs when the signal lands; where that is a finalizer
    (a transport's or a client's `__del__`), Python prints "Exception ignored" and drops it, and `tune` measured
    on to exit 0 (seen twice in loaded CI runs)."""
    import asyncio
    import signal

    async def stoppable() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped: list[int] = []

        def stop(sig: int) -> None:
            stopped.append(sig)
            task.cancel()

        before = {sig: signal.getsignal(sig) for sig in stopping_signals()}
        for sig in before:
            loop.add_signal_handler(sig, stop, sig)
        try:
            result = await main
        except asyncio.CancelledError:
            if stopped:
                raise KeyboardInterrupt from None
            raise
        finally:
            for sig, handler in before.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)
        if stopped:  # `main` swallowed its cancellation and ended: the signal still ends the command
            raise KeyboardInterrupt
        return result

    return asyncio.run(stoppable())
