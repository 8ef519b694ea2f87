"""`Assembly`: which process serves a seat, and whether a council has its quorum (fast: nothing is started)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.plan.planner import PolicyPlan, plan_policy
from council.policy.loading import load_policy
from council.voting.assembly import assemble
from council.voting.client import Endpoint, HttpMemberClient

SERVER = LlamaServerInfo(path=Path("false"), build=1, version="", spec_types=("draft-mtp",))


def _plan(tmp_path: Path, quorum: int = 2, timeout: str = "30s") -> PolicyPlan:
    path = tmp_path / "policy.yaml"
    path.write_text(f"""
gpus: [{{name: cpu, memory: 1GiB}}]
slots: {{size: 256MiB, reserve: 0}}
models:
  m: {{path: {tmp_path / "absent.gguf"}, memory: 100MiB}}
  far: {{remote: {{model: openai/far, api_base: "http://127.0.0.1:9/v1"}}}}
councils:
  c: {{members: [{{model: m}}, {{model: m}}, {{model: far}}], quorum: {quorum}, timeout: {timeout}}}
""")
    return plan_policy(load_policy(path).policy)


def test_seats_map_to_their_processes_and_a_remote_seat_counts_as_ready(tmp_path: Path) -> None:
    assembly = assemble(_plan(tmp_path), SERVER, LifeConfig(run_dir=tmp_path / "run"))
    first = assembly.process_of("c/0")
    assert first is not None and "c/0" in first.seats and assembly.process_of("c/2") is None
    assert not assembly.seat_ready("c/0")  # planned, never started
    assert assembly.seat_ready("c/2")  # a remote model's seat: litellm calls it, nothing here to wait for
    assert assembly.quorum_shortfalls() == {"c": "1 of 3 seats ready, quorum 2"}
    assert assembly.ready_client(first.name) is None  # passthrough and peers get no client until it is ready


def test_a_councils_calls_are_as_patient_as_its_timeout_passthrough_as_the_watchdog(tmp_path: Path) -> None:
    """A council's calls may go without a byte from the member as long as its `timeout` (over the watchdog's
    `stuck_after`); passthrough, which shares the process's client, has no deadline of its own."""
    assembly = assemble(_plan(tmp_path, timeout="15m"), SERVER, LifeConfig(run_dir=tmp_path / "run"))
    seat = assembly.engines["c"].seats[0]
    process = assembly.process_of(seat.name)
    assert isinstance(seat.client, HttpMemberClient) and seat.client.patience == 900.0
    assert process is not None and assembly.process_clients[process.name].patience is None
    assert assembly.process_clients[process.name].limiter is seat.client.limiter


@pytest.mark.anyio
async def test_a_registry_router_counts_the_seats_other_hosts_list(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        listed = Endpoint(name="c/0", url="http://127.0.0.1:9/internal/members/c/0", api_key="k", http=http)
        assembly = assemble(_plan(tmp_path), SERVER, LifeConfig(run_dir=tmp_path / "run"),
                            elsewhere=lambda seat, model: listed if (seat, model) == ("c/0", "m") else None,
                            run_members=False)
        assert assembly.supervisor.processes == {}
        assert assembly.seat_ready("c/0") and not assembly.seat_ready("c/1")
        assert assembly.ready_seats("c") == 2 and assembly.quorum_shortfalls() == {}
        assert assembly.quorum_shortfalls(without="c/0") == {}  # no process of ours: nothing to take out
