"""Lanes: seats that send one prompt to one process with different sampling go one after another when reading
the prompt dominates, so each finds the prompt the last one left in the server's cache."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.policy.schema import CouncilConfig, Sampling
from council.setup.catalog import by_name
from council.voting.assembly import assemble
from council.voting.client import HttpMemberClient, MemberReply
from council.voting.engine import CouncilEngine, Seat
from council.voting.lanes import Rates
from council.voting.request import CouncilRequest
from tests.policies import member_entry, policy_yaml

SMOL = by_name("smollm2-135m")
assert SMOL


def _seats(temperatures: list[float], target: str = "p", first: int = 0) -> list[Seat]:
    return [Seat(name=f"s{first + i}", order=first + i, model="m", weight=1.0, sampling=Sampling(temperature=t, seed=i),
                 client=HttpMemberClient(endpoint=lambda: None, target=target)) for i, t in enumerate(temperatures)]


def _reply(prompt_n: int, prompt_per_s: float, predicted_per_s: float, completion: int) -> MemberReply:
    return MemberReply(status="ok", text="x", completion_tokens=completion,
                       timings={"prompt_n": prompt_n, "prompt_per_second": prompt_per_s,
                                "predicted_per_second": predicted_per_s})


def test_auto_chains_only_once_the_process_measured_that_its_prefill_dominates() -> None:
    seats = _seats([0.2, 0.6, 1.0]) + _seats([0.5], target="q", first=3)
    engine = CouncilEngine("c", CouncilConfig.model_validate({"members": [{"model": "m"}] * 4}), seats)
    long_prompt = {"messages": [{"role": "user", "content": "word " * 2000}]}  # about 2,500 tokens
    short_prompt = {"messages": [{"role": "user", "content": "Name a colour."}]}

    def shape(request: dict[str, object]) -> list[list[str]]:
        return [[s.name for call in lane for s in call.seats] for lane in engine.lanes(request, seats)]

    assert shape(long_prompt) == [["s0"], ["s1"], ["s2"], ["s3"]]  # nothing measured yet: all at once
    # A CPU: 500 prompt tokens/s, 20 generated tokens/s, 40-token answers: 5 s of prefill > 2 s of answer.
    engine.rates["p"].observe(_reply(1000, 500.0, 20.0, 40))
    assert shape(long_prompt) == [["s0", "s1", "s2"], ["s3"]]  # one lane for p; q's seat is alone anyway
    assert shape(short_prompt) == [["s0"], ["s1"], ["s2"], ["s3"]]  # 0.01 s of prefill: at once
    # A GPU: prefill at 20,000 tokens/s makes even the long prompt cheap to read five times.
    engine.rates["p"] = Rates()
    engine.rates["p"].observe(_reply(4000, 20000.0, 100.0, 40))
    assert shape(long_prompt) == [["s0"], ["s1"], ["s2"], ["s3"]]
    # A cache hit (a prefill of a few tokens) says nothing about the prefill speed.
    fresh = Rates()
    fresh.observe(_reply(3, 5.0, 20.0, 40))
    assert fresh.prompt_per_s is None and not fresh.prefill_dominates(2500, None)


def _metric(url: str, key: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "reads"), [("chain", 1), ("parallel", 3)])
async def test_a_chained_lane_reads_the_prompt_once(llama_server_bin: LlamaServerInfo, tmp_path: Path, mode: str,
                                                     reads: int) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(
        {"smol": {"path": SMOL.path, "ctx_size": 1024, "share": True}},
        {"c": {"members": [member_entry("smol", temperature=t, max_tokens=4) for t in (0, 0.5, 1.0)],
               "vote": {"extract": "text"}, "quorum": 1, "timeout": "5m", "prompt_reuse": mode}}, slot="2GiB"))
    assembly = assemble(plan_policy(load_policy(path).policy), llama_server_bin, LifeConfig(run_dir=tmp_path / "run"))
    await assembly.supervisor.start()
    try:
        assert await assembly.supervisor.wait_settled(120)
        (process,) = assembly.supervisor.processes.values()
        url, key = process.spec.url, process.spec.api_key
        before = _metric(url, key, "llamacpp:prompt_tokens_total")
        notes = " ".join(f"Note {i}: the river is {i * 7 % 90}." for i in range(60))  # ~700 tokens
        answer = await assembly.engines["c"].ask(CouncilRequest.of({"messages": [{"role": "user", "content": notes}]},
                                                                   early_stop=False))
        assert [o.reply.status for o in answer.outcomes] == ["ok"] * 3
        read = _metric(url, key, "llamacpp:prompt_tokens_total") - before
        prompt = max(o.reply.prompt_tokens for o in answer.outcomes)
        # Chained, the later members read only the last few tokens (the cache holds the rest).
        assert (reads - 0.5) * prompt < read <= (reads + 0.5) * prompt, (read, prompt)
        # The usage says so: every request's prompt counted, the part the server found cached beside it.
        usage = answer.usage()
        assert usage["prompt_tokens"] == sum(o.reply.prompt_tokens for o in answer.outcomes) >= 3 * prompt - 6
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert (cached > 1.5 * prompt) if mode == "chain" else (cached < 0.5 * prompt), (cached, prompt)
    finally:
        await assembly.supervisor.stop()
