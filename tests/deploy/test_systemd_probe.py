"""deploy/systemd/council.service's readiness probe (ExecStartPost) and reload (ExecReload) reach `council serve`
where COUNCIL_HOST binds it. Before, both called 127.0.0.1: with COUNCIL_HOST set to one interface's address the
start loop spun until TimeoutStartSec and the unit failed. (Also: the reload's Python used \\" inside the
single-quoted sh script, which systemd unescapes to a bare ", ending the shell's "..." early: a Python
syntax error, so `systemctl reload` never reloaded.)

The command lines are read as systemd reads them (line continuations, words with quotes and C escapes, then
`${VAR}` and `$$` at exec time) and run by /bin/sh against a stub server bound where serve would be."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.servers import free_port

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "council.service"
ADMIN_KEY = "0123456789abcdef0123456789abcdef"
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


def _words(value: str) -> list[str]:
    """systemd's word splitting for Exec lines: quotes removed, C escapes decoded inside quotes and out."""
    words: list[str] = []
    word: str | None = None
    quote = ""
    chars = iter(value)
    for c in chars:
        if c == "\\":
            nxt = next(chars)
            assert nxt in _ESCAPES, f"systemd would warn of the escape \\{nxt}"
            word = (word or "") + _ESCAPES[nxt]
        elif quote:
            if c == quote:
                quote = ""
            else:
                word += c  # type: ignore[operator]
        elif c in "'\"":
            quote, word = c, word or ""
        elif c.isspace():
            if word is not None:
                words.append(word)
            word = None
        else:
            word = (word or "") + c
    assert not quote, "unbalanced quotes"
    if word is not None:
        words.append(word)
    return words


def _expand(word: str, env: dict[str, str]) -> str:
    """systemd's exec-time substitution: ${VAR} (unset: empty) and $$ for a literal $."""
    return re.sub(r"\$\$|\$\{(\w+)\}", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), word)


def _command(key: str, env: dict[str, str]) -> list[str]:
    text = re.sub(r"\\\n", " ", UNIT.read_text())  # continuation lines: the backslash becomes a space
    (value,) = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(f"{key}=")]
    argv = [_expand(w, env) for w in _words(value)]
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    return ["/bin/sh", "-c", argv[2].replace("/opt/council/bin/python", shlex.quote(sys.executable))]


class _Server(ThreadingHTTPServer):
    seen: list[tuple[str, str, str | None]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        ok = self.path == "/readyz" or (self.path == "/admin/reload" and self.headers.get(
            "Authorization") == f"Bearer {ADMIN_KEY}")
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def _serve(address: str) -> Iterator[_Server]:
    cls = type("S", (_Server,), {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET})
    server = cls((address, free_port()), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("council_host", "bound"), [
    ("127.0.0.2", "127.0.0.2"),  # one interface's address: the case that spun until TimeoutStartSec
    ("0.0.0.0", "127.0.0.1"),
    ("", "127.0.0.1"),           # `--host ""`: every IPv4 interface
    ("localhost", "127.0.0.1"),
    pytest.param("::1", "::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")),
    pytest.param("::", "::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")),
])
def test_the_probe_and_the_reload_reach_the_bound_address(council_host: str, bound: str) -> None:
    for server in _serve(bound):
        env = {"COUNCIL_HOST": council_host, "COUNCIL_PORT": str(server.server_address[1]),
               "COUNCIL_ADMIN_KEY": ADMIN_KEY}
        for key in ("ExecStartPost", "ExecReload"):
            # The probe loops until /readyz answers: a wrong address never returns (the timeout fails the test).
            proc = subprocess.run(_command(key, env), env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                                  text=True, timeout=30)
            assert proc.returncode == 0, (key, proc.stderr)
        assert server.seen == [("GET", "/readyz", None), ("POST", "/admin/reload", f"Bearer {ADMIN_KEY}")]
