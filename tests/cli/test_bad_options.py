"""A bad option is one line on stderr and exit 2 (README: "Commands and exit codes"), for every command: before,
`council serve --port 70000` (or -5) was OverflowError from bind(), `council ask --timeout -1` ValueError from the
socket, both tracebacks with exit 1; `council ask --url 127.0.0.1:8080` was exit 1 "cannot reach" where `eval`
says exit 2; `council eval --timeout -1` timed out every item; and typer's own checks (`tune --tokens 0`, an
unknown option, a missing argument) drew the usage and a box of several lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

DEMO = str(Path(__file__).parents[2] / "policies" / "demo.yaml")
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _one_line(*args: str) -> str:
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (("serve", DEMO, "--port", "70000"), "'--port': Input should be less than or equal to 65535"),
    (("serve", DEMO, "--port", "-5"), "'--port': Input should be greater than or equal to 1"),
    (("serve", DEMO, "--port", "0"), "'--port': Input should be greater than or equal to 1"),  # read as the policy's
    (("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "-1"), "'--timeout': Input should be greater than 0"),
    (("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "0"), "'--timeout': Input should be greater than 0"),
    (("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "inf"), "at most 604800 seconds (a week), not inf"),
    (("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "nan"), "'--timeout': Input should be greater than 0"),
    (("eval", DEMO, "demo", "absent.jsonl", "--url", NOWHERE, "--timeout", "-1"),
     "'--timeout': Input should be greater than 0"),
    (("tune", DEMO, "smollm2", "--tokens", "0"), "'--tokens': Input should be greater than or equal to 1"),
    (("serve", DEMO, "--bogus"), "No such option: --bogus"),
    (("serve",), "Missing argument"),
])
def test_an_option_out_of_range_is_one_line_and_exit_2(args: tuple[str, ...], says: str) -> None:
    line = _one_line(*args)
    assert says in line and f"council {args[0]} --help" in line, line


def test_ask_url_without_a_scheme_is_bad_input_as_in_eval() -> None:
    line = _one_line("ask", "demo", "hi", "--url", "127.0.0.1:9")
    assert line == "error: --url 127.0.0.1:9: not an http:// or https:// URL (e.g. http://127.0.0.1:8080)"


def test_a_timeout_in_range_is_used() -> None:
    # The check passes a good value through: this one reaches the request, and nothing listens there (exit 1).
    result = run_cli("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "2.5", timeout=60)
    assert result.returncode == 1 and result.stderr.startswith(f"error: cannot reach {NOWHERE}"), result.stderr


def test_no_command_prints_the_help() -> None:
    result = run_cli(timeout=60)
    assert result.returncode == 2 and "Usage" in result.stdout and "serve" in result.stdout, result
