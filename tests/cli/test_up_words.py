"""`council up` counts and names processes, not members: two members of a `share: true` model are one process,
`c:q`. A fake llama-server (`$LLAMA_SERVER`: `--help` and `--version` as a build answers them, then the stub
member, or an exit at once) stands in for the real one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.policies import policy_yaml

ROOT = Path(__file__).resolve().parents[2]
FAKE = """#!{python}
import sys
sys.path.insert(0, {root!r})
if "--help" in sys.argv:
    print("--port PORT   port to listen\\n--spec-type [none,draft-simple,draft-mtp]   speculative decoding type")
elif "--version" in sys.argv:
    print("version: 11434 (fake)")
elif {fail!r}:
    print("fake llama-server: cannot start", flush=True)
    sys.exit(1)
else:
    from tests.members.stub_llama_server import serve
    serve(int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[sys.argv.index("--model") + 1])
"""


def setup(tmp_path: Path, syn: Path, *, fail: bool) -> tuple[Path, dict[str, str]]:
    fake = tmp_path / "llama-server"
    fake.write_text(FAKE.format(python=sys.executable, root=str(ROOT), fail=fail))
    fake.chmod(0o755)
    policy = tmp_path / "up.yaml"
    policy.write_text(policy_yaml({"q": {"path": syn, "ctx_size": 512, "share": True}},
                                  {"c": {"members": [{"model": "q"}, {"model": "q", "sampling": {"seed": 2}}]}}))
    return policy, {"LLAMA_SERVER": str(fake), "COUNCIL_HOME": str(tmp_path)}


def test_up_counts_processes_ready(tmp_path: Path, syn: Path) -> None:
    """Before: "1/1 members ready" for a council of two members."""
    policy, env = setup(tmp_path, syn, fail=False)
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "council", "up", str(policy)], stdout=out,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "ready in" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "1/1 processes ready in" in log.read_text()
        assert "c:q: starting → warming" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.timeout(120)
def test_up_names_the_processes_that_failed(tmp_path: Path, syn: Path) -> None:
    """Before: "every member failed, and none restarts: c:q", and `c:q` is no member's name."""
    policy, env = setup(tmp_path, syn, fail=True)
    result = run_cli("up", str(policy), env=env, timeout=100)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == ["error: every process failed, and none restarts: c:q (their reasons above)"]


def test_the_live_table_has_a_row_per_process(tmp_path: Path) -> None:
    """Before, its first column was "member", over the processes' names (`c:q`)."""
    from council.cli.run_commands import _members_table
    from council.members.launch import LaunchSpec
    from council.members.process import LifeConfig, ProcessRecipe
    from council.members.supervisor import Supervisor

    spec = LaunchSpec(key="c:q", model="q", model_path=tmp_path / "q.gguf", argv=(), env={}, port=0, api_key="k")
    supervisor = Supervisor(LifeConfig(run_dir=tmp_path), [ProcessRecipe("c:q", lambda _port: spec, ("c/0", "c/1"))])
    table = _members_table(supervisor)
    assert [c.header for c in table.columns][:2] == ["process", "model"] and table.title == "council processes"
    assert table.row_count == 1
