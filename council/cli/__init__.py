"""The `council` command line. Every failure is one line on stderr and an exit code (README: "Commands and exit codes").

One module per group of commands; each registers its commands on the shared typer app.
"""

from __future__ import annotations

import sys

import typer

# Registration order is the order `council --help` lists them in.
# isort: off
from council.cli import setup_commands, policy_commands, tune_command, run_commands, eval_command, client_commands
# isort: on
from council.cli.console import app, err

__all__ = ["app", "client_commands", "eval_command", "main", "policy_commands", "run_commands", "setup_commands",
           "tune_command"]


# click's exceptions as typer raises them: from its own copy of click in newer typers, from click in older ones.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    from rich.markup import escape

    try:
        code = app(standalone_mode=False)
    except _CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `council` alone: typer printed the help
            sys.exit(2)
        # A bad option or argument (typer's own checks: a range, a type, one missing) is one line, exit 2, as every
        # other failure is, where typer drew the usage and a box of several lines.
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"[red]error:[/red] {escape(exc.format_message() + hint)}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
