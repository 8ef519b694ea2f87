"""The `council` command line. Every failure is one line on stderr and an exit code (README: "Commands and exit codes").

One module per group of commands; each registers its commands on the shared typer app.
"""

from __future__ import annotations

import sys

# Registration order is the order `council --help` lists them in.
# isort: off
from council.cli import setup_commands, policy_commands, tune_command, run_commands, eval_command, client_commands
# isort: on
from council.cli.console import app, err

__all__ = ["app", "client_commands", "eval_command", "main", "policy_commands", "run_commands", "setup_commands",
           "tune_command"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
