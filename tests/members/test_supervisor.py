"""The supervisor against real llama-server processes: ready, crash and restart, failed loads, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.launch import LaunchSpec, build_launch
from council.members.logs import exit_reason
from council.members.pidfiles import PidFiles, proc_start_time
from council.members.process import LifeConfig, MemberProcess, ProcessRecipe
from council.members.states import State, TransitionError
from council.members.supervisor import DuplicateProcess, Supervisor
from council.policy.schema import ModelConfig, Policy
from council.setup.catalog import by_name
from council.setup.synthetic import write_qwen35
from tests.policies import policy_yaml
from tests.servers import gone, hup_as_from_a_terminal, until

pytestmark = pytest.mark.anyio
SMOL = by_name("smollm2-135m")
assert SMOL is not None
FAST = {"backoff_base": 0.2, "backoff_cap": 1.0, "watch_interval": 0.2, "metrics_interval": 0.5}


@pytest.fixture(scope="module")
def mtp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen35(tmp_path_factory.mktemp("syn") / "syn-mtp.gguf")


def policy_of(**models: ModelConfig) -> Policy:
    return Policy(models=models)


@pytest.fixture
async def supervise(
    llama_server_bin: LlamaServerInfo, tmp_path: Path
) -> AsyncIterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def _make(policy: Policy, names: dict[str, str] | None = None, **config: float) -> Supervisor:
        names = names or {m: m for m in policy.models}
        recipes = [ProcessRecipe(member, lambda port, member=member, model=model: build_launch(
            key=member, model_name=model, policy=policy, server=llama_server_bin, port=port, threads=1), (member,))
            for member, model in names.items()]
        sup = Supervisor(LifeConfig(run_dir=tmp_path / "run", **{**FAST, **config}), recipes)
        made.append(sup)
        return sup

    yield _make
    for sup in made:
        await sup.stop()
        for member in sup.processes.values():
            assert member.pid is None or not _alive(member.pid), f"{member.name} left running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# ---- the state machine --------------------------------------------------------------------------------


def test_transitions_are_checked_in_one_place() -> None:
    spec = LaunchSpec(key="m", model="m", model_path=Path("m.gguf"), argv=(), env={}, port=0, api_key="k")
    member = MemberProcess(ProcessRecipe("m", lambda _port: spec, ("m",)), LifeConfig(run_dir=Path("unused")),
                           pids=PidFiles(Path("unused")), control=None)  # type: ignore[arg-type]
    seen = []
    member.listeners.append(seen.append)
    member.swap(State.STOPPED, State.STARTING, "go")
    with pytest.raises(TransitionError) as info:
        member.swap(State.STOPPED, State.STARTING)
    assert info.value.actual is State.STARTING  # the loser learns the current state
    with pytest.raises(TransitionError):
        member.swap(State.STARTING, State.STOPPED)  # not an edge: must go through stopping
    member.swap(State.STARTING, State.WARMING)
    member.swap(State.WARMING, State.READY)
    assert [(c.old, c.new) for c in seen] == [(State.STOPPED, State.STARTING), (State.STARTING, State.WARMING),
                                              (State.WARMING, State.READY)]
    assert seen[0].reason == "go" and seen[0].at <= seen[-1].at


def test_a_second_recipe_for_a_process_name_is_refused_not_taken_over(tmp_path: Path) -> None:
    """Before, the second recipe replaced the first: a planned process was never started, and its seats were
    served by the other's model (two councils naming a member alike; `council check` refuses those now)."""

    def recipe(model: str, seat: str) -> ProcessRecipe:
        spec = LaunchSpec(key="greedy", model=model, model_path=Path(f"{model}.gguf"), argv=(), env={}, port=0,
                          api_key="k")
        return ProcessRecipe("greedy", lambda _port: spec, (seat,))

    with pytest.raises(DuplicateProcess, match="process 'greedy' is already supervised"):
        Supervisor(LifeConfig(run_dir=tmp_path), [recipe("coder", "code/0"), recipe("smol", "chat/0")])
    sup = Supervisor(LifeConfig(run_dir=tmp_path), [recipe("coder", "code/0")])
    with pytest.raises(DuplicateProcess):
        sup.add(recipe("smol", "chat/0"))
    assert sup.processes["greedy"].spec.model == "coder" and sup.processes["greedy"].seats == ("code/0",)


# ---- real processes -------------------------------------------------------------------------------------


async def test_two_members_reach_ready_and_serve(supervise: Callable[..., Supervisor], mtp_model: Path) -> None:
    policy = policy_of(smol=ModelConfig(path=SMOL.path, ctx_size=512),
                       syn=ModelConfig(path=mtp_model, ctx_size=512, draft={"type": "mtp", "n_max": 2}))
    sup = supervise(policy)
    await sup.start()
    assert await sup.wait_settled(120)
    for member in sup.processes.values():
        assert member.state is State.READY, member.reason
        assert [c.new for c in member.history] == [State.STARTING, State.WARMING, State.READY]
        assert member.pid is not None and _alive(member.pid)
        assert "--host" in member.spec.argv and member.spec.argv[member.spec.argv.index("--host") + 1] == "127.0.0.1"
        # Our key is required: a request without it is refused by the member itself.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{member.spec.url}/props")).status_code == 401


async def test_a_members_key_is_in_its_environment_not_its_world_readable_command_line(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    """Before, `--api-key KEY` was in the member's argv, which every local user reads in /proc/PID/cmdline."""
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)))
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    key, proc = member.spec.api_key.encode(), Path(f"/proc/{member.pid}")
    assert key not in (proc / "cmdline").read_bytes()
    assert (proc / "cmdline").stat().st_mode & 0o777 == 0o444
    assert b"LLAMA_API_KEY=" + key in (proc / "environ").read_bytes().split(b"\0")
    assert (proc / "environ").stat().st_mode & 0o777 == 0o400  # its owner's alone
    async with httpx.AsyncClient(base_url=member.spec.url) as client:
        assert (await client.get("/props")).status_code == 401
        assert (await client.get("/props", headers={"Authorization": "Bearer wrong"})).status_code == 401
        answer = await client.get("/props", headers={"Authorization": f"Bearer {member.spec.api_key}"})
        assert answer.status_code == 200 and Path(answer.json()["model_path"]) == mtp_model


async def test_kill_9_member_is_back_within_backoff_other_untouched(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    policy = policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512, draft={"type": "mtp", "n_max": 2}))
    sup = supervise(policy, {"a": "syn", "b": "syn"})
    await sup.start()
    assert await sup.wait_settled(60)
    a, b = sup.processes["a"], sup.processes["b"]
    b_pid, b_history = b.pid, len(b.history)
    old_pid = a.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await until(lambda: a.ready and a.restarts == 1, 30, "a back to ready")
    assert a.pid != old_pid
    backoff = next(c for c in a.history if c.new is State.BACKOFF)
    assert "killed by SIGKILL" in backoff.reason and "restarting in 0.2s" in backoff.reason
    assert b.pid == b_pid and len(b.history) == b_history and b.ready  # b never moved


async def test_a_member_killed_by_a_real_time_signal_is_restarted(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    """Python names no real-time signal (`signal.Signals(40)` raises): before, naming the exit ended the member's
    life task, and the dead member stayed `ready` for good."""
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)))
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    old_pid = member.pid
    assert old_pid is not None
    rt = signal.SIGRTMIN + 6
    os.kill(old_pid, rt)
    await until(lambda: member.ready and member.restarts == 1, 30, "the member back to ready")
    assert member.pid != old_pid
    backoff = next(c for c in member.history if c.new is State.BACKOFF)
    assert backoff.reason.startswith(f"killed by signal {int(rt)}")


async def test_a_crash_while_draining_that_is_the_last_straw_fails_the_member(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    """A planned restart (live draft tuning) drains the member; it crashes meanwhile, its 2nd failure in a row of
    2 allowed. Before, `draining -> failed` was no edge: the life task ended on the TransitionError and the dead
    member stayed `draining` for good."""
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)), max_failures=2)
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    assert member.pid is not None
    os.kill(member.pid, signal.SIGKILL)  # the first failure
    await until(lambda: member.ready and member.restarts == 1, 30, "the member back to ready")
    async with member.request():  # a request in flight: the drain waits for it
        planned = asyncio.create_task(member.restart_planned(member.recipe, "draft tuning: n 2 -> 1"))
        await until(lambda: member.state is State.DRAINING, 10, "the drain")
        assert member.pid is not None
        os.kill(member.pid, signal.SIGKILL)
        await until(lambda: member.state is State.FAILED, 30, f"the member to fail ({member.state})")
    await planned
    assert member.reason.startswith("gave up after 2 failures in a row: killed by SIGKILL")
    assert [(c.old, c.new) for c in member.history][-1] == (State.DRAINING, State.FAILED)
    assert member.pid is not None and not _alive(member.pid)


async def test_a_crash_while_draining_restarts_the_member_once(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    """Before, the drain still armed its planned restart once it ended: the process the crash restart had brought
    up (already with the new recipe) was stopped and started again for nothing."""
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)))
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    async with member.request():
        planned = asyncio.create_task(member.restart_planned(member.recipe, "draft tuning: n 2 -> 1"))
        await until(lambda: member.state is State.DRAINING, 10, "the drain")
        assert member.pid is not None
        os.kill(member.pid, signal.SIGKILL)
        await until(lambda: member.state is State.BACKOFF, 10, "the crash to be seen")
    assert await planned  # the new recipe is the one the restart takes
    assert member._planned is None  # nothing left to stop the fresh process again
    await until(lambda: member.ready, 30, "the member back to ready")
    assert member.restarts == 1 and State.STOPPING not in [c.new for c in member.history]


async def test_an_unexpected_fault_in_the_life_loop_fails_the_member_and_stops_its_process(
    supervise: Callable[..., Supervisor], mtp_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours no server can show (here: reading /metrics raises). Before, it ended the member's life task:
    the member stayed `ready` for good, never watched again, never restarted."""
    from council.members import process as process_module

    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)))
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    pid = member.pid
    assert pid is not None

    def broken(text: str, stats: object) -> None:
        raise RuntimeError("a bug in the metrics parser")

    monkeypatch.setattr(process_module, "parse_member_metrics", broken)
    await until(lambda: member.state is State.FAILED, 30, f"the member to fail ({member.state})")
    assert member.reason == "council fault: RuntimeError: a bug in the metrics parser"
    assert not _alive(pid) and member._running is None
    assert not list((member.config.run_dir / "pids").glob("*.json"))


async def test_model_that_fails_to_load_is_failed_with_log_reason_others_ready(
    supervise: Callable[..., Supervisor], tmp_path: Path, mtp_model: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(SMOL.path.read_bytes()[: 2 << 20])  # a real header, then nothing
    policy = policy_of(broken=ModelConfig(path=broken, ctx_size=512), syn=ModelConfig(path=mtp_model, ctx_size=512))
    sup = supervise(policy, max_failures=2)
    await sup.start()
    assert await sup.wait_settled(60)
    bad, good = sup.processes["broken"], sup.processes["syn"]
    assert good.state is State.READY
    assert bad.state is State.FAILED
    assert "gave up after 2 failures in a row: exited with code 1" in bad.reason
    assert "error loading model: tensor 'token_embd.weight' data is not within the file bounds" in bad.reason
    assert bad.pid is not None and not _alive(bad.pid)


async def test_a_member_that_fails_on_its_own_argument_says_why_not_which_model(
    supervise: Callable[..., Supervisor]
) -> None:
    """llama-server's error lines go from the cause to echoes of it that name the model; the reason took the
    longest line, so a missing `--lora` file read "failed to create context with model '<its path>'", pointing at
    a model that is fine. Now the first line that is not such an echo."""
    absent = Path("/nonexistent/x.gguf")  # shorter than the model's path
    sup = supervise(policy_of(smol=ModelConfig(path=SMOL.path, ctx_size=512, args=["--lora", str(absent)])),
                    max_failures=1)
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["smol"]
    assert member.state is State.FAILED
    assert f"failed to open '{absent}'" in member.reason and "create context" not in member.reason, member.reason


def test_the_exit_reason_is_the_cause_not_its_echoes() -> None:
    """Real llama-server b11434 tails: a file that is not a GGUF, and a model file that is gone."""
    junk = ["0.00.004.685 E gguf_init_from_reader: invalid magic characters: 'junk', expected 'GGUF'",
            "0.00.005.825 E llama_model_load: error loading model: llama_model_loader: failed to load model from "
            "/models/a-long-name.gguf",
            "0.00.005.826 E llama_model_load_from_file_impl: failed to load model",
            "0.00.005.827 E cmn  common_init_: failed to load model '/models/a-long-name.gguf'",
            "0.00.005.828 E srv    load_model: failed to load model, '/models/a-long-name.gguf'",
            "0.00.005.830 I srv    operator(): operator(): cleaning up before exit...",
            "0.00.006.288 E srv  llama_server: exiting due to model loading error"]
    assert exit_reason(junk, 1) == "exited with code 1: gguf_init_from_reader: invalid magic characters: 'junk', " \
        "expected 'GGUF'"
    gone = ["0.00.003.576 E common_fit_params: encountered an error while trying to fit params to free device "
            "memory: failed to load model",
            "0.00.003.579 E gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)",
            *junk[1:]]
    assert exit_reason(gone, 1).endswith("failed to open GGUF file '/m/x.gguf' (No such file or directory)")
    echoes = junk[2:]  # only echoes: the longest, as before
    assert exit_reason(echoes, 1).endswith("load_model: failed to load model, '/models/a-long-name.gguf'")


async def test_mtp_member_reports_draft_acceptance(supervise: Callable[..., Supervisor], mtp_model: Path) -> None:
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512, draft={"type": "mtp", "n_max": 2})))
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    async with member.request(), httpx.AsyncClient() as client:
        reply = await client.post(f"{member.spec.url}/v1/chat/completions",
                                  headers={"Authorization": f"Bearer {member.spec.api_key}"},
                                  json={"messages": [{"role": "user", "content": "go"}], "max_tokens": 32})
        assert reply.status_code == 200
    await member.scrape()
    assert member.stats.draft_tokens > 0
    assert member.stats.draft_acceptance is not None and member.stats.draft_acceptance >= 0.9
    assert member.snapshot()["draft_acceptance"] == member.stats.draft_acceptance
    assert member.stats.tokens_per_second and member.stats.tokens_per_second > 0


async def test_watchdog_restarts_a_live_member_whose_requests_fail(
    supervise: Callable[..., Supervisor], mtp_model: Path
) -> None:
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)), watchdog_failures=2)
    await sup.start()
    assert await sup.wait_settled(60)
    member = sup.processes["syn"]
    first_pid = member.pid
    for _ in range(2):  # what the fan-out reports when completions fail though the process lives
        with pytest.raises(httpx.ReadTimeout):
            async with member.request():
                raise httpx.ReadTimeout("no answer")
    await until(lambda: member.restarts == 1 and member.ready, 30, "watchdog restart")
    assert member.pid != first_pid
    assert any("watchdog: 2 requests failed in a row" in c.reason for c in member.history)


@pytest.mark.parametrize("props", [b'{"model_path": "/somebody/else.gguf"}', b"<html>not JSON</html>", b"[1, 2]"],
                         ids=["another-model", "not-json", "not-an-object"])
async def test_an_impostor_on_our_port_is_not_taken_for_our_member(
    llama_server_bin: LlamaServerInfo, tmp_path: Path, mtp_model: Path, props: bytes
) -> None:
    """Before, a `/props` body that was not a JSON object raised out of the start: the member stayed `starting`."""
    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = props if self.path == "/props" else b"{}"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    policy = policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512))
    recipe = ProcessRecipe("syn", lambda _port: build_launch(key="syn", model_name="syn", policy=policy,
                                                             server=llama_server_bin, port=port, threads=1), ("syn",))
    sup = Supervisor(LifeConfig(run_dir=tmp_path / "run", max_failures=1, **FAST), [recipe])
    try:
        await sup.start()
        assert await sup.wait_settled(30)
        member = sup.processes["syn"]
        assert member.state is State.FAILED
        assert State.READY not in [c.new for c in member.history]
        assert "not as our member" in member.reason or "exited with code" in member.reason
    finally:
        await sup.stop()
        server.shutdown()


async def test_a_start_whose_pid_file_cannot_be_written_fails_and_leaves_nothing_running(
    supervise: Callable[..., Supervisor], tmp_path: Path, mtp_model: Path
) -> None:
    """A fault on our side after the spawn (here the pid folder is a file; a full disk does the same). Before, it
    ended the member's life task: the member stayed `starting` for good, and its process outlived `stop()`."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pids").write_text("not a folder")
    sup = supervise(policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512)), max_failures=2)
    member = sup.processes["syn"]
    spawned: list[int | None] = []
    member.listeners.append(lambda c: spawned.append(member.pid) if c.new in (State.BACKOFF, State.FAILED) else None)
    await sup.start()
    assert await sup.wait_settled(30), member.state
    assert member.state is State.FAILED
    assert member.reason.startswith("gave up after 2 failures in a row: FileExistsError: ")
    assert len(spawned) == 2 and len(set(spawned)) == 2
    for pid in spawned:
        assert pid is not None and not _alive(pid), "a failed start left its process running"


async def test_a_llama_server_that_is_gone_fails_the_member(
    supervise: Callable[..., Supervisor], llama_server_bin: LlamaServerInfo, tmp_path: Path, mtp_model: Path
) -> None:
    """The binary removed after the router checked it: the spawn's OSError is a failed start, not a dead task."""
    gone = LlamaServerInfo(path=tmp_path / "gone" / "llama-server", build=llama_server_bin.build,
                           version=llama_server_bin.version, spec_types=llama_server_bin.spec_types)
    policy = policy_of(syn=ModelConfig(path=mtp_model, ctx_size=512))
    recipe = ProcessRecipe("syn", lambda port: build_launch(key="syn", model_name="syn", policy=policy, server=gone,
                                                            port=port, threads=1), ("syn",))
    sup = Supervisor(LifeConfig(run_dir=tmp_path / "run", max_failures=2, **FAST), [recipe])
    try:
        await sup.start()
        assert await sup.wait_settled(30)
        member = sup.processes["syn"]
        assert member.state is State.FAILED and member.pid is None
        assert "FileNotFoundError: [Errno 2] No such file or directory" in member.reason
        assert [c.new for c in member.history].count(State.STARTING) == 2
    finally:
        await sup.stop()


def _record(folder: Path, pid: int, owner: int, owner_start: str | None, start: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pid}.json").write_text(json.dumps({"pid": pid, "start": start or proc_start_time(pid),
                                                     "name": f"m{pid}", "owner": owner, "owner_start": owner_start}))


def test_stale_member_of_a_killed_router_is_cleaned_up(tmp_path: Path) -> None:
    folder = tmp_path / "pids"
    dead_router = subprocess.Popen(["true"])
    dead_router.wait()
    live_router = subprocess.Popen(["sleep", "300"], start_new_session=True)
    orphan, kept, recycled = (subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(3))
    _record(folder, orphan.pid, dead_router.pid, "1")  # its router is gone: stale
    _record(folder, kept.pid, live_router.pid, proc_start_time(live_router.pid))  # another live router's member
    _record(folder, recycled.pid, dead_router.pid, "1", start="1")  # same PID, another start time: not ours
    try:
        assert PidFiles(folder).kill_stale() == [orphan.pid]
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert kept.poll() is None and recycled.poll() is None
        assert sorted(p.name for p in folder.iterdir()) == [f"{kept.pid}.json"]  # the live router's record stays
    finally:
        for proc in (orphan, kept, recycled, live_router):
            proc.kill()
            proc.wait()


def test_what_a_dead_wrapper_started_is_killed_with_its_group(tmp_path: Path) -> None:
    """README "No orphans": a `$LLAMA_SERVER` wrapper script that runs llama-server without `exec` is the recorded
    member; SIGKILLed with its router, its child lives on in the member's process group. The next start saw the
    recorded member gone and forgot the record: the child was never killed. Now the group is killed."""
    folder = tmp_path / "pids"
    dead_router = subprocess.Popen(["true"])
    dead_router.wait()
    wrapper = subprocess.Popen(["bash", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert wrapper.stdout is not None
    child = int(wrapper.stdout.readline())
    _record(folder, wrapper.pid, dead_router.pid, "1")
    wrapper.kill()
    wrapper.wait()
    try:
        assert not gone(child)  # orphaned, in the dead wrapper's group
        assert PidFiles(folder).kill_stale() == [wrapper.pid]
        deadline = time.monotonic() + 5
        while not gone(child):
            assert time.monotonic() < deadline, "the wrapper's child still runs"
            time.sleep(0.02)
        assert list(folder.iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_record_that_cannot_be_read_or_forgotten_does_not_stop_a_start(tmp_path: Path) -> None:
    """A stray folder named like a record made kill_stale raise (IsADirectoryError), and every router on that
    COUNCIL_HOME failed to start with a traceback; a record in a read-only folder likewise (PermissionError)."""
    folder = tmp_path / "pids"
    (folder / "12345.json").mkdir(parents=True)
    dead_router = subprocess.Popen(["true"])
    dead_router.wait()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    _record(folder, orphan.pid, dead_router.pid, "1")
    try:
        assert PidFiles(folder).kill_stale() == [orphan.pid]
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert [p.name for p in folder.iterdir()] == ["12345.json"]  # skipped, not a failed start
    finally:
        orphan.kill()
        orphan.wait()


# ---- `council up` as a real command -------------------------------------------------------------------


def _council_up(tmp_path: Path, mtp_model: Path, binary: Path,
                nohup: bool = False) -> tuple[subprocess.Popen[str], Path, str]:
    marker = tmp_path / f"up-{os.getpid()}-{time.monotonic_ns()}.gguf"
    shutil.copyfile(mtp_model, marker)
    policy = tmp_path / "up.yaml"
    policy.write_text(policy_yaml({"syn": {"path": marker, "ctx_size": 512, "draft": {"type": "mtp", "n_max": 2}}},
                                  {"pair": {"members": [{"model": "syn"}, {"model": "syn"}]}}, memory="2GiB"))
    log = tmp_path / "up.log"
    env = {**os.environ, "COUNCIL_HOME": str(tmp_path), "LLAMA_SERVER": str(binary)}
    def ignore_hup() -> None:  # as `nohup` starts it
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "council", "up", str(policy)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=ignore_hup if nohup else hup_as_from_a_terminal)
    deadline = time.monotonic() + 60
    while "2/2 processes ready" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, log, str(marker)


def _members_of(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout
    return found.split()


@pytest.mark.parametrize(("stop", "nohup"), [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGHUP, True)],
                         ids=["SIGTERM", "SIGHUP", "SIGHUP under nohup"])
def test_council_up_sigterm_stops_everything_exit_0(
    tmp_path: Path, mtp_model: Path, llama_server_bin: LlamaServerInfo, stop: signal.Signals, nohup: bool
) -> None:
    """SIGHUP (a closed terminal) stops as SIGTERM does; it killed `up` and `serve` on the spot (their members left
    to the parent-death kill, a pid file behind). Under `nohup` (SIGHUP ignored, to outlive the terminal) it is
    ignored still: a handler that stopped `up` on it undid that, and a nohup'd router stopped with its terminal."""
    proc, log, marker = _council_up(tmp_path, mtp_model, llama_server_bin.path, nohup=nohup)
    try:
        assert len(_members_of(marker)) == 2
        proc.send_signal(stop)
        if nohup:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=2)  # (a stop takes well under a second here: the SIGHUP case)
            assert len(_members_of(marker)) == 2
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert "all processes stopped" in log.read_text()
        assert _members_of(marker) == []
    finally:
        proc.kill()
        proc.wait()


def test_council_up_exits_1_once_every_member_failed(
    tmp_path: Path, mtp_model: Path, llama_server_bin: LlamaServerInfo
) -> None:
    """README: exit 1 for "members that did not start". Before, `council up` waited for Ctrl-C with nothing
    running, and then exited 0. llama-server itself refuses to start (an argument it does not know): a model cut
    short inside its tensor data, used here before, is now refused by `council up`'s own check."""
    broken = tmp_path / f"unstartable-{time.monotonic_ns()}.gguf"
    shutil.copyfile(mtp_model, broken)
    policy = tmp_path / "up.yaml"
    policy.write_text(policy_yaml({"b": {"path": broken, "ctx_size": 512, "memory": "256MiB",
                                         "args": ["--no-such-flag"]}},
                                  {"pair": {"members": [{"model": "b"}, {"model": "b"}]}}, memory="2GiB"))
    env = {**os.environ, "COUNCIL_HOME": str(tmp_path), "LLAMA_SERVER": str(llama_server_bin.path)}
    result = subprocess.run([sys.executable, "-m", "council", "up", str(policy)], capture_output=True, text=True,
                            env=env, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("→ failed (gave up after 4 failures in a row") == 2
    assert "all processes stopped" in result.stdout
    assert result.stderr.splitlines() == [
        "error: every process failed, and none restarts: pair/0, pair/1 (their reasons above)"]
    assert _members_of(str(broken)) == []


def test_council_up_sigkill_leaves_no_member_behind(
    tmp_path: Path, mtp_model: Path, llama_server_bin: LlamaServerInfo
) -> None:
    proc, _log, marker = _council_up(tmp_path, mtp_model, llama_server_bin.path)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _members_of(marker):
        assert time.monotonic() < deadline, "members outlived their router"
        time.sleep(0.05)


def test_draft_acceptance_falls_back_to_response_timings() -> None:
    from council.members.metrics import MemberStats

    stats = MemberStats()
    assert stats.draft_acceptance is None
    stats.add_timings({"draft_n": 20, "draft_n_accepted": 15})
    stats.add_timings({"predicted_n": 3})  # no speculation in this response
    assert stats.draft_acceptance == 0.75
    stats.draft_tokens, stats.draft_accepted = 10, 9  # /metrics counters win when the build has them
    assert stats.draft_acceptance == 0.9


def test_council_up_keeps_the_log_folders_of_its_newest_ended_runs_only(tmp_path: Path) -> None:
    """Each `council up` wrote its logs to a folder of its own (`POLICY-up-PID`) that nothing removed: the cache grew
    with every start. Ended runs beyond the newest eight go; a run still going, `serve`'s folders and anything else
    stay."""
    import os

    from council.members.logs import UP_LOGS_KEPT, UP_MARKER, mark_up_logs, prune_up_logs

    ended = subprocess.Popen(["true"])
    ended.wait()  # a PID no process holds now
    logs = tmp_path / "logs"
    made = []
    for i in range(UP_LOGS_KEPT + 4):
        folder = logs / f"p{i}-up-{ended.pid}"
        folder.mkdir(parents=True)
        (folder / "p_0.log").write_text("x\n")
        (folder / UP_MARKER).write_text(f"{ended.pid} 12345\n")  # its PID and start time: gone
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
        made.append(folder)
    running = logs / f"old-up-{os.getpid()}"
    serve = logs / "policy-8080"
    scale_up = logs / "scale-up-8080"  # `serve scale-up.yaml --port 8080`: no marker, never an up run's
    for folder in (running, serve, logs / "up-notapid", scale_up):
        folder.mkdir()
        os.utime(folder, (1, 1))
    mark_up_logs(running)  # this process: a run still going
    removed = prune_up_logs(logs)
    assert sorted(removed) == sorted(made[:4])  # the four oldest ended runs
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f.name for f in made[4:]] + [running.name, serve.name, "up-notapid", scale_up.name])


def test_council_serve_stops_on_sighup_as_on_sigterm(
    tmp_path: Path, mtp_model: Path, llama_server_bin: LlamaServerInfo
) -> None:
    from tests.servers import start_council_serve

    marker = tmp_path / f"serve-{os.getpid()}-{time.monotonic_ns()}.gguf"
    shutil.copyfile(mtp_model, marker)
    server = start_council_serve(policy_yaml({"syn": {"path": marker, "ctx_size": 512}},
                                             {"pair": {"members": [{"model": "syn"}]}}, memory="2GiB"),
                                 tmp_path, {"COUNCIL_HOME": str(tmp_path), "LLAMA_SERVER": str(llama_server_bin.path)})
    try:
        assert len(_members_of(str(marker))) == 1
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.wait(timeout=60) == 0, server.log()
        assert "all processes stopped" in server.log() and "Traceback" not in server.log()
        assert _members_of(str(marker)) == [] and not list((tmp_path / "run" / "pids").glob("*.json"))
    finally:
        server.stop()
