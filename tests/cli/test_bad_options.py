"""A bad option is one line on stderr and exit 2 (README: "Commands and exit codes"), for every command: before,
`council serve --port 70000` (or -5) was OverflowError from bind(), `council ask --timeout -1` ValueError from the
socket, both tracebacks with exit 1; `council ask --url 127.0.0.1:8080` was exit 1 "cannot reach" where `eval`
says exit 2; `council eval --timeout -1` timed out every item; and typer's own checks (`tune --tokens 0`, an
unknown option, a missing argument) drew the usage and a box of several lines."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
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


def test_ask_url_with_a_port_past_65535_is_bad_input() -> None:
    """httpx took port 99999 and connected to 99999 % 65536 (34463): whatever listened there answered."""
    line = _one_line("ask", "demo", "hi", "--url", "http://127.0.0.1:99999")
    assert line == "error: --url http://127.0.0.1:99999: port 99999 is out of range (1-65535)"


@contextlib.contextmanager
def _answering(status: int, body: object) -> Iterator[str]:
    """A local HTTP service that answers every POST with `status` and `body` (JSON): its base URL."""
    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "body", "says"), [
    (200, {}, "answered 200 with a body that is not a chat completion"),
    (200, [1, 2], "answered 200 with a body that is not a chat completion"),
    (200, {"choices": []}, "answered 200 with a body that is not a chat completion"),
    (200, {"choices": [{"message": None}]}, "answered 200 with a body that is not a chat completion"),
    (500, {"error": "boom"}, "error: 500: boom"),
    (400, {"error": ["boom"]}, 'error: 400: {"error"'),
])
def test_ask_of_a_service_that_answers_something_else_is_one_line(status: int, body: object, says: str) -> None:
    """`council ask` read the reply unguarded: another service on the port (`{}`), a proxy's error (`{"error":
    "boom"}`) was a traceback (KeyError, IndexError, AttributeError...)."""
    with _answering(status, body) as url:
        result = run_cli("ask", "c", "hi", "--url", url, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ask_prints_a_council_object_of_any_shape() -> None:
    """A `council` object with a missing or non-numeric `agreement` was a traceback after the answer."""
    doc = {"id": "x", "choices": [{"message": {"content": "42"}}], "council": {"council": "c", "agreement": "high"}}
    with _answering(200, doc) as url:
        result = run_cli("ask", "c", "hi", "--url", url, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "42", result
    assert "agreement ?" in result.stderr and "Traceback" not in result.stderr, result.stderr
    # The summary is one line, whatever its length (it wrapped at 80 columns into a pipe, the id on its own line).
    long = {**doc, "id": "chatcmpl-" + "0123456789abcdef" * 4,
            "council": {"council": "council-with-a-long-name", "agreement": 0.5, "answer": "x" * 40}}
    with _answering(200, long) as url:
        result = run_cli("ask", "c", "hi", "--url", url, timeout=60)
    assert result.returncode == 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.strip().endswith("id chatcmpl-" + "0123456789abcdef" * 4), result.stderr


@pytest.mark.parametrize(("args", "says"), [
    (("setup", "--skip-server", "--models", "bogus"), "error: --models must be small or all, not 'bogus'"),
    (("setup", "--skip-server", "--only", "bogus"), "error: unknown model bogus; known: "),
])
def test_a_bad_setup_choice_is_exit_2(args: tuple[str, ...], says: str) -> None:
    """Bad input to `setup` was exit 1 (a failed install), as none of the other commands' bad input is."""
    assert _one_line(*args).startswith(says)


def test_tune_of_a_model_without_a_draft_refuses_before_its_banner() -> None:
    """It printed "tuning smollm2 (none): n = 0, 1, 2 ..." and then refused."""
    result = run_cli("tune", DEMO, "smollm2", timeout=60)
    assert result.returncode == 2 and result.stdout == "", result
    assert "models.smollm2 has no draft" in result.stderr, result.stderr


def test_eval_of_a_router_whose_replies_list_no_member_says_so(tmp_path: Path) -> None:
    """It ended "no item was answered by URL: None"."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    doc = {"id": "x", "choices": [{"message": {"content": "2"}}], "council": {"council": "demo", "members": []}}
    with _answering(200, doc) as url:
        result = run_cli("eval", DEMO, "demo", str(data), "--url", url, timeout=60)
    assert result.returncode == 1, result
    assert result.stderr.strip().endswith(f"no item was answered by {url}: its replies listed no member's answer")


@pytest.mark.parametrize("command", ["serve", "up"])
def test_sigterm_while_the_policy_is_checked_is_exit_0_with_nothing_left(
        command: str, tmp_path: Path, llama_server_bin: LlamaServerInfo) -> None:
    """README: SIGTERM stops `serve` and `up` with exit 0 and no process left. Before the command's own handlers
    were in place (the policy read and checked, the binary asked `--help`) it died of the signal: exit 143. A
    `$LLAMA_SERVER` wrapper that takes its time answering `--help` holds the command there."""
    import signal
    import subprocess
    import sys
    import time

    from tests.servers import free_port

    asked = tmp_path / "asked"
    wrapper = tmp_path / "llama-server"
    wrapper.write_text(f'#!/bin/sh\ntouch {asked}\nsleep 60\nexec {llama_server_bin.path} "$@"\n')
    wrapper.chmod(0o755)
    port = ["--port", str(free_port())] if command == "serve" else []
    proc = subprocess.Popen([sys.executable, "-m", "council", command, DEMO, *port], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "LLAMA_SERVER": str(wrapper)})
    try:
        deadline = time.monotonic() + 60
        while not asked.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, out, errors)
    assert "Traceback" not in errors, errors
    left = subprocess.run(["pgrep", "-f", str(wrapper)], capture_output=True, text=True, check=False).stdout
    assert left == "", left  # the wrapper asked for --help is gone with it


def test_a_second_ctrl_c_while_serve_starts_is_exit_0_without_a_traceback(llama_server_bin: LlamaServerInfo) -> None:
    """The second Ctrl-C forces the exit: the app's lifespan, still waiting on uvicorn, was cancelled, and uvicorn
    logged that CancelledError's traceback as an error (the members still stopped, exit 0)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.servers import free_port

    proc = subprocess.Popen([sys.executable, "-m", "council", "serve", DEMO, "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while "→" not in (line := proc.stdout.readline()):  # a member's first change: the lifespan is starting
            assert line, proc.communicate()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # not to wait for anything: a person's second Ctrl-C, while the first is being handled
        proc.send_signal(signal.SIGINT)
        out, errors = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, out, errors)
    assert "Traceback" not in errors and "CancelledError" not in errors, errors
    assert out.rstrip().endswith("all processes stopped"), out


def test_a_timeout_in_range_is_used() -> None:
    # The check passes a good value through: this one reaches the request, and nothing listens there (exit 1).
    result = run_cli("ask", "demo", "hi", "--url", NOWHERE, "--timeout", "2.5", timeout=60)
    assert result.returncode == 1 and result.stderr.startswith(f"error: cannot reach {NOWHERE}"), result.stderr


def test_no_command_prints_the_help() -> None:
    result = run_cli(timeout=60)
    assert result.returncode == 2 and "Usage" in result.stdout and "serve" in result.stdout, result


@pytest.mark.parametrize("command", ["up", "serve"])
def test_a_model_file_that_is_not_there_is_refused_at_start_though_memory_plans_it(command: str,
                                                                                   tmp_path: Path) -> None:
    """`memory:` lets `check` and `plan` plan a file that is not there (a policy written for another machine);
    `up` and `serve` started its processes anyway, each failing to load until it gave up."""
    from tests.policies import policy_yaml

    missing = tmp_path / "elsewhere.gguf"
    policy = tmp_path / "p.yaml"
    policy.write_text(policy_yaml({"m": {"path": missing, "memory": "100MiB"}}, {"c": {"members": [{"model": "m"}]}},
                                  memory="1GiB"))
    assert run_cli("check", str(policy)).returncode == 0
    result = run_cli(command, str(policy), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{policy}:9: models.m.path: {missing} does not exist: a process of this host runs it (`memory:` plans for "
        "it, but cannot start it)"], result.stderr
