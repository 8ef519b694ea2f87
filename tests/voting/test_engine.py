"""The council engine against real llama-server members: answers, early stop, dead and silent members."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from council.members.binary import LlamaServerInfo
from council.members.process import LifeConfig
from council.members.supervisor import Supervisor
from council.plan.planner import plan_policy
from council.policy.loading import load_policy
from council.setup.catalog import by_name
from council.voting.assembly import Assembly, assemble
from council.voting.engine import QuorumError
from tests.policies import member_entry, policy_yaml

pytestmark = pytest.mark.anyio
QWEN05, SMOL = by_name("qwen2.5-coder-0.5b"), by_name("smollm2-135m")
assert QWEN05 and SMOL


@pytest.fixture
def running(llama_server_bin: LlamaServerInfo, tmp_path: Path) -> Callable[..., object]:
    """`async with running(policy_yaml) as (assembly, supervisor)`: a whole policy, members ready."""

    @asynccontextmanager
    async def _run(text: str) -> AsyncIterator[tuple[Assembly, Supervisor]]:
        path = tmp_path / "policy.yaml"
        path.write_text(textwrap.dedent(text))
        plan = plan_policy(load_policy(path).policy)
        assembly = assemble(plan, llama_server_bin, LifeConfig(run_dir=tmp_path / "run"))
        supervisor = assembly.supervisor
        await supervisor.start()
        try:
            assert await supervisor.wait_settled(120)
            assert all(m.ready for m in supervisor.processes.values()), [
                m.reason for m in supervisor.processes.values()]
            yield assembly, supervisor
        finally:
            await supervisor.stop()

    return _run


def ask(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}]}


async def test_three_real_models_answer_with_a_ballot(running: Callable[..., object]) -> None:
    async with running(policy_yaml(
        {"qwen": {"path": QWEN05.path, "ctx_size": 1024}, "smol": {"path": SMOL.path, "ctx_size": 1024}},
        {"trio": {"members": [member_entry("qwen", temperature=0, max_tokens=12),
                              member_entry("qwen", temperature=0.7, seed=7, max_tokens=12),
                              member_entry("smol", temperature=0, max_tokens=12)],
                  "vote": {"strategy": "majority", "extract": "number"}, "timeout": "120s"}},
        memory="8GiB", slot="1GiB")) as (runtime, _):  # type: ignore[attr-defined]
        answer = await runtime.engines["trio"].ask(ask("What is 2+3? Reply with just the number."))
    doc = answer.council_json()
    assert doc["council"] == "trio" and doc["strategy"] == "majority"
    assert [m["name"] for m in doc["members"]] == ["trio/0", "trio/1", "trio/2"]
    ok = [m for m in doc["members"] if m["status"] == "ok"]
    assert len(ok) >= 2
    assert doc["answer"] in {m["extracted"] for m in ok}
    assert doc["votes"][doc["answer"]] == max(doc["votes"].values())
    assert 0 < doc["agreement"] <= 1
    assert all(m["latency_ms"] > 0 and m["completion_tokens"] > 0 for m in ok)
    assert answer.usage()["completion_tokens"] == sum(m["completion_tokens"] for m in doc["members"])
    recorded = runtime.ballots.get(answer.id)
    assert recorded is not None and recorded["answer"] == doc["answer"] and len(recorded["answers"]) == len(ok)


def _slow_council(syn: Path, **extra: str) -> str:
    """Two quick members and one slow heavyweight (weight 3: the vote must wait for it)."""
    return policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512}, "long": {"path": syn, "ctx_size": 8192}},
        {"c": {"members": [member_entry("syn", max_tokens=4), member_entry("syn", max_tokens=4),
                           member_entry("long", weight=3, max_tokens=8000)],
               "vote": {"strategy": extra.get("strategy", "weighted"), "extract": "regex:^(\\w)"},
               "quorum": extra.get("quorum", "majority"), "timeout": extra.get("timeout", "60s")}})


async def test_member_killed_mid_request_gives_a_degraded_answer(
    running: Callable[..., object], syn: Path
) -> None:
    async with running(_slow_council(syn)) as (runtime, supervisor):  # type: ignore[attr-defined]
        slow = supervisor.processes["c/2"]
        task = asyncio.create_task(runtime.engines["c"].ask(ask("go")))
        deadline = time.monotonic() + 10
        while not slow.in_flight:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let it generate for a moment (not synchronisation: any time would do)
        assert slow.pid is not None
        os.kill(slow.pid, signal.SIGKILL)
        answer = await task
    doc = answer.council_json()
    assert doc["degraded"] is True
    assert doc["answer"] == "a" and doc["winner_members"] == ["c/0", "c/1"]
    assert [m["status"] for m in doc["members"]] == ["ok", "ok", "error"]


async def test_member_that_never_answers_times_out_within_the_deadline(
    running: Callable[..., object], syn: Path
) -> None:
    async with running(_slow_council(syn, timeout="3s")) as (runtime, supervisor):  # type: ignore[attr-defined]
        silent = supervisor.processes["c/2"]
        assert silent.pid is not None
        os.kill(silent.pid, signal.SIGSTOP)  # alive, listening, never answering
        try:
            started = time.monotonic()
            answer = await runtime.engines["c"].ask(ask("go"))
            elapsed = time.monotonic() - started
        finally:
            os.kill(silent.pid, signal.SIGCONT)
    doc = answer.council_json()
    assert 2.9 <= elapsed < 4.5
    assert [m["status"] for m in doc["members"]] == ["ok", "ok", "timeout"]
    assert doc["degraded"] is True and doc["answer"] == "a"
    assert "no answer within the council's 3s" in doc["members"][2]["error"]


async def test_fewer_answers_than_quorum_is_an_error_not_a_guess(
    running: Callable[..., object], syn: Path
) -> None:
    async with running(_slow_council(syn, timeout="2s", quorum="all")) as (runtime, supervisor):  # type: ignore[attr-defined]
        silent = supervisor.processes["c/2"]
        assert silent.pid is not None
        os.kill(silent.pid, signal.SIGSTOP)
        try:
            with pytest.raises(QuorumError, match="council c: only 2 of 3 seats answered; the quorum is 3"):
                await runtime.engines["c"].ask(ask("go"))
        finally:
            os.kill(silent.pid, signal.SIGCONT)


async def test_early_stop_cancels_the_straggler_and_frees_its_slot(
    running: Callable[..., object], syn: Path
) -> None:
    async with running(_slow_council(syn, strategy="majority")) as (runtime, supervisor):  # type: ignore[attr-defined]
        started = time.monotonic()
        answer = await runtime.engines["c"].ask(ask("go"))
        elapsed = time.monotonic() - started
        doc = answer.council_json()
        assert doc["early_stop"] is True and doc["degraded"] is False
        assert [m["status"] for m in doc["members"]] == ["ok", "ok", "cancelled"]
        assert elapsed < 2.0  # the straggler alone needs ~8 s for its 8000 tokens
        slow = supervisor.processes["c/2"]
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 5
            while True:  # llama-server notices the closed connection and frees the slot
                slots = (await client.get(f"{slow.spec.url}/slots",
                                          headers={"Authorization": f"Bearer {slow.spec.api_key}"})).json()
                if not any(s.get("is_processing") for s in slots):
                    break
                assert time.monotonic() < deadline, slots
                await asyncio.sleep(0.05)


async def test_early_stops_are_not_member_failures(running: Callable[..., object], syn: Path) -> None:
    """Under load the straggler is cancelled on every question; before, three in a row tripped the watchdog and a
    healthy member was restarted (losing its in-flight work)."""
    async with running(_slow_council(syn, strategy="majority")) as (runtime, supervisor):  # type: ignore[attr-defined]
        slow = supervisor.processes["c/2"]
        pid = slow.pid
        for _ in range(supervisor.config.watchdog_failures + 2):
            answer = await runtime.engines["c"].ask(ask("go"))
            assert [m["status"] for m in answer.council_json()["members"]][2] == "cancelled"
        assert slow.request_failures == 0
        assert slow.ready and slow.pid == pid and slow.restarts == 0


async def test_remote_member_through_litellm(
    running: Callable[..., object], syn: Path, start_server: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = start_server(syn)  # an OpenAI-compatible server elsewhere, as far as the council knows
    monkeypatch.setenv("REMOTE_KEY", remote.api_key)  # type: ignore[attr-defined]
    far = {"model": "openai/syn", "api_base": f"{remote.url}/v1", "api_key_env": "REMOTE_KEY"}  # type: ignore[attr-defined]
    async with running(policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512}, "far": {"remote": far}},
        {"mixed": {"members": [{"model": "syn"}, {"model": "far"}], "vote": {"strategy": "majority", "extract": "text"},
                   "quorum": "all"}},
        memory="2GiB")) as (runtime, supervisor):  # type: ignore[attr-defined]
        assert list(supervisor.processes) == ["mixed/0"]  # the remote member has no local process
        answer = await runtime.engines["mixed"].ask({**ask("go"), "max_tokens": 6})
    doc = answer.council_json()
    assert [m["status"] for m in doc["members"]] == ["ok", "ok"], doc
    assert doc["members"][1]["extracted"] == doc["members"][0]["extracted"] == "abcdef"
    assert doc["agreement"] == 1.0
    # Both were cut off by max_tokens, and say so: through aiohttp and through litellm alike.
    assert [m["finish_reason"] for m in doc["members"]] == ["length", "length"]


def test_tool_calls_vote_as_canonical_json_and_member_settings_win() -> None:
    from council.policy.schema import Sampling
    from council.voting.client import MemberReply
    from council.voting.engine import extract_reply, member_payload

    def call(args: str) -> MemberReply:
        return MemberReply(status="ok", text="", message={"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]})

    a = extract_reply(call('{"city": "Paris", "unit": "c"}'), "number")
    b = extract_reply(call('{"unit":"c","city":"Paris"}'), "number")
    assert a == b and a is not None and a.startswith("get_weather(")
    from council.server.requests import ChatRequest, validate_body

    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    body = {"model": "c", "stream": True, "n": 1, "stream_options": {"include_usage": True},
            "council": {"early_stop": False}, "temperature": 1.0, "tools": tools, "grammar": "root ::= x",
            "messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "q"}]}
    chat = validate_body(body, ChatRequest)
    assert isinstance(chat, ChatRequest)
    request = chat.council_request(body)  # built once at the door: the router's own fields stay there
    assert set(request.members_payload) == {"temperature", "tools", "grammar", "messages"}
    assert request.question == "q" and request.early_stop is False and request.logprobs is False
    assert request.tools == tools  # what the vote on tool calls will check calls against
    payload = member_payload(request.members_payload, Sampling(temperature=0.2, seed=7, system="new"))
    assert payload["temperature"] == 0.2 and payload["seed"] == 7 and payload["tools"] == tools
    assert payload["grammar"] == "root ::= x"  # fields OpenAI does not define pass through untouched
    # the member's system prompt joins the request's, never replaces it (README, "Agents")
    assert payload["messages"] == [{"role": "system", "content": "old\n\nnew"}, {"role": "user", "content": "q"}]


# ---- cascades, shared prompts (n), confidence votes ------------------------------------------------------


async def _metric(process: object, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    spec = process.spec  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{spec.url}/metrics", headers={"Authorization": f"Bearer {spec.api_key}"})).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _cascade_council(syn: Path, second_max_tokens: int) -> str:
    return policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512}},
        {"c": {"members": [member_entry("syn", max_tokens=n) for n in (3, second_max_tokens, 3)],
               "vote": {"extract": "text", "cascade": {"first": 2}}}})


async def test_a_cascade_stage_that_agrees_never_calls_the_next(running: Callable[..., object], syn: Path) -> None:
    async with running(_cascade_council(syn, 3)) as (runtime, supervisor):  # type: ignore[attr-defined]
        later = supervisor.processes["c/2"]
        before = await _metric(later, "llamacpp:prompt_tokens_total")
        answer = await runtime.engines["c"].ask(ask("go"))
        doc = answer.council_json()
        assert [m["status"] for m in doc["members"]] == ["ok", "ok", "skipped"]
        assert doc["stage"] == 1 and doc["stages"] == 2 and doc["answer"] == "abc"
        assert await _metric(later, "llamacpp:prompt_tokens_total") == before  # its llama-server never asked


async def test_a_cascade_stage_that_disagrees_asks_the_next(running: Callable[..., object], syn: Path) -> None:
    async with running(_cascade_council(syn, 4)) as (runtime, supervisor):  # type: ignore[attr-defined]
        later = supervisor.processes["c/2"]
        before = await _metric(later, "llamacpp:prompt_tokens_total")
        doc = (await runtime.engines["c"].ask(ask("go"))).council_json()
        assert [m["status"] for m in doc["members"]] == ["ok", "ok", "ok"]
        assert doc["stage"] == 2 and doc["answer"] == "abc" and doc["votes"] == {"abc": 2.0, "abcd": 1.0}
        assert await _metric(later, "llamacpp:prompt_tokens_total") > before


async def test_five_samples_share_one_request_and_one_prompt_pass(running: Callable[..., object]) -> None:
    async with running(policy_yaml(
        {"smol": {"path": SMOL.path, "ctx_size": 512}},
        {"sc": {"members": [member_entry("smol", samples=5, temperature=1.0, seed=3, max_tokens=12)],
                "vote": {"extract": "text"}, "timeout": "5m"}},
        slot="1GiB")) as (runtime, supervisor):  # type: ignore[attr-defined]
        process = supervisor.processes["sc/0"]
        assert process.slots.size == 5
        before = await _metric(process, "llamacpp:prompt_tokens_total")
        answer = await runtime.engines["sc"].ask(ask("Name a colour."))
        doc = answer.council_json()
        assert [m["name"] for m in doc["members"]] == [f"sc/0#{k}" for k in range(5)]
        assert all(m["status"] == "ok" and m["answer"] for m in doc["members"])
        assert len({m["answer"] for m in doc["members"]}) >= 3  # independent samples, not one answer five times
        prompt = answer.usage()["prompt_tokens"]
        # One prompt pass: the server read the prompt once (the cache may have held all but a few tokens).
        assert 0 < await _metric(process, "llamacpp:prompt_tokens_total") - before <= prompt
        # Counted once, on the first choice that came back; each choice counts its own completion tokens.
        assert sorted(m["prompt_tokens"] for m in doc["members"]) == [0, 0, 0, 0, prompt]
        assert all(m["completion_tokens"] >= 1 for m in doc["members"])
        assert answer.usage()["completion_tokens"] == sum(m["completion_tokens"] for m in doc["members"])


async def test_early_stop_cancels_a_whole_sample_group_and_a_deadline_flags_it(
    running: Callable[..., object], syn: Path
) -> None:
    async with running(policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512}, "long": {"path": SMOL.path, "ctx_size": 4096}},
        {"early": {"members": [member_entry("syn", weight=3, max_tokens=3), member_entry("syn", weight=3, max_tokens=3),
                               member_entry("long", samples=4, temperature=1.0, seed=1, max_tokens=3000)],
                   "vote": {"strategy": "weighted", "extract": "text"}, "quorum": 2},
         "late": {"members": [member_entry("syn", max_tokens=3),
                              member_entry("long", samples=2, temperature=1.0, seed=1, max_tokens=3000)],
                  "vote": {"extract": "text"}, "quorum": 1, "timeout": "3s"}},
        memory="8GiB", slot="1GiB")) as (runtime, supervisor):  # type: ignore[attr-defined]
        doc = (await runtime.engines["early"].ask({**ask("go"), "ignore_eos": True})).council_json()
        assert doc["early_stop"] is True and doc["answer"] == "abc"
        assert [m["status"] for m in doc["members"]] == ["ok", "ok", "cancelled", "cancelled", "cancelled",
                                                         "cancelled"]
        group = supervisor.processes["early/2"]
        deadline = time.monotonic() + 10
        while group.slots.free != group.slots.size:  # the cancelled group gave its four slots back
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        started = time.monotonic()
        doc = (await runtime.engines["late"].ask({**ask("go"), "ignore_eos": True})).council_json()
        assert time.monotonic() - started < 10
        assert [m["status"] for m in doc["members"]] == ["ok", "timeout", "timeout"] and doc["degraded"] is True


def test_members_that_differ_in_more_than_the_seed_are_not_grouped() -> None:
    from council.policy.schema import CouncilConfig, Sampling
    from council.voting.client import HttpMemberClient
    from council.voting.engine import CouncilEngine, Seat

    def seat(i: int, target: str, **sampling: object) -> Seat:
        client = HttpMemberClient(endpoint=lambda: None, target=target)
        return Seat(name=f"s{i}", order=i, model="m", weight=1.0, sampling=Sampling(**sampling), client=client)

    seats = [seat(0, "p", temperature=0.7, seed=1), seat(1, "p", temperature=0.7, seed=2),
             seat(2, "p", temperature=0.9, seed=3), seat(3, "q", temperature=0.7, seed=4),
             seat(4, "p", temperature=0.7, seed=5, max_tokens=9)]
    config = CouncilConfig.model_validate({"members": [{"model": "m"}] * 5})
    calls = CouncilEngine("c", config, seats).calls(ask("go"), seats)
    assert [[s.name for s in call.seats] for call in calls] == [["s0", "s1"], ["s2"], ["s3"], ["s4"]]
    from council.voting.engine import question_salt, salted
    assert calls[0].payload["seed"] == salted(1, question_salt(ask("go")))  # its first member's, the question's own
    off = CouncilConfig.model_validate({"members": [{"model": "m"}] * 5, "share_prompt": False})
    assert len(CouncilEngine("c", off, seats).calls(ask("go"), seats)) == 5


async def test_confidence_votes_break_a_tie_majority_leaves_to_order(running: Callable[..., object]) -> None:
    """Two members disagree 1-1: majority gives the tie to the first (member order); a confidence vote with the
    members' real token logprobs gives it to the greedy member, far surer than a hot sampler."""
    text = policy_yaml(
        {"smol": {"path": SMOL.path, "ctx_size": 512}},
        {"tie": {"members": [member_entry("smol", temperature=1.8, seed=7, max_tokens=12),
                             member_entry("smol", temperature=0, max_tokens=12)],
                 "vote": {"strategy": "confidence", "extract": "text", "tie_break": ["order"]}}},
        slot="1GiB")
    async with running(text) as (runtime, _):  # type: ignore[attr-defined]
        question = ask("Name one planet of the solar system.")
        doc = (await runtime.engines["tie"].ask(question)).council_json()
    hot, greedy = doc["members"]
    assert hot["extracted"] != greedy["extracted"] and hot["confidence"] < greedy["confidence"]
    assert doc["answer"] == greedy["extracted"] and doc["tie_broken_by"] is None
    ballot = {"strategy": "majority", "extract": "text", "tie_break": ["order"],
              "answers": [{"member": m["name"], "text": m["answer"], "confidence": m["confidence"]}
                          for m in doc["members"]]}
    from council.voting.vote import Ballot, decide

    ballots = [Ballot(member=a["member"], order=i, answer=m["extracted"], confidence=a["confidence"])
               for i, (a, m) in enumerate(zip(ballot["answers"], doc["members"], strict=True))]
    assert decide(ballots, "majority", ["order"]).answer == hot["extracted"]  # the tie goes to order
    assert decide(ballots, "confidence", ["order"]).answer == greedy["extracted"]


async def test_early_stop_decides_inside_a_sample_group_and_closes_its_request(
    running: Callable[..., object], syn: Path
) -> None:
    """The group streams: its first choice to end, with the fast member, decides the vote (4 > 3 still out), so
    the choices still generating are cancelled and the one upstream request is closed."""
    async with running(policy_yaml(
        {"syn": {"path": syn, "ctx_size": 512}, "smol": {"path": SMOL.path, "ctx_size": 1024}},
        {"c": {"members": [member_entry("syn", weight=3, max_tokens=3),
                           member_entry("smol", samples=4, temperature=1.0, seed=1, max_tokens=400)],
               "vote": {"strategy": "weighted", "extract": "regex:\\A(ok)"}, "timeout": "5m"}},
        memory="8GiB", slot="1GiB")) as (runtime, supervisor):  # type: ignore[attr-defined]
        group = supervisor.processes["c/1"]
        before = await _metric(group, "llamacpp:requests_processing")
        # The grammar makes every member start with "ok" (so all vote alike) and leaves the rest free: the
        # samples end after their own number of tokens.
        answer = await runtime.engines["c"].ask({**ask("Say ok, then tell me about the sea."),
                                                 "grammar": 'root ::= "ok" [^\\x00]*'})
        doc = answer.council_json()
        statuses = [m["status"] for m in doc["members"]]
        assert doc["early_stop"] is True and doc["answer"] == "ok", doc
        assert statuses[0] == "ok" and "ok" in statuses[1:] and "cancelled" in statuses[1:], statuses
        # The usage is every member entry's tokens, the cut choices' included (what each had streamed: how many
        # depends on when llama-server started it, so tests/voting/test_cut_choices_usage.py fixes that order).
        assert answer.usage()["completion_tokens"] == sum(m["completion_tokens"] for m in doc["members"])
        deadline = time.monotonic() + 30
        while group.slots.free != group.slots.size or await _metric(group, "llamacpp:requests_processing") > before:
            assert time.monotonic() < deadline, "the group's request was not closed upstream"
            await asyncio.sleep(0.1)
