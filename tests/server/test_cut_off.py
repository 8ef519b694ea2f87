"""Issue 19's case through the real API: a two-member council of real small models cut off by max_tokens
mid-reasoning must not answer `finish_reason: "stop"` with a number read from its unfinished reasoning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from council.setup.catalog import by_name
from council.voting.extract import answer_source
from tests.servers import CouncilServer

QWEN05, SMOL = by_name("qwen2.5-coder-0.5b"), by_name("smollm2-135m")
assert QWEN05 and SMOL
QUESTION = "Compute 17 times 23. Show the partial products first, then the final answer."


@pytest.fixture
def pair(serve: Callable[..., CouncilServer]) -> CouncilServer:
    return serve(f"""
gpus: [{{name: cpu, memory: 8GiB}}]
slots: {{size: 1GiB, reserve: 0}}
models:
  qwen: {{path: {QWEN05.path}, ctx_size: 512}}
  smol: {{path: {SMOL.path}, ctx_size: 512}}
councils:
  pair:
    members: [{{model: qwen, sampling: {{temperature: 0}}}}, {{model: smol, sampling: {{temperature: 0}}}}]
    vote: {{strategy: majority, extract: number}}
    timeout: 120s
""")


def check_answer(finish_reason: str | None, council: dict[str, Any]) -> None:
    assert finish_reason == "length", council  # the winner's text is unfinished (the base answered "stop")
    members = council["members"]
    assert [m["status"] for m in members] == ["ok", "ok"]
    assert all(m["finish_reason"] == "length" for m in members), members  # 12 tokens end no such reply
    for m in members:
        if m["extracted"] is None:
            assert m["abstained"] == "cut off by max_tokens before a final answer"
        else:  # it voted: only with an answer it stated, never its last number
            assert answer_source(m["answer"], "number") == "marked", m["answer"]


def test_a_council_cut_off_by_max_tokens_says_so(pair: CouncilServer) -> None:
    """Whether a reply stated an answer (it votes) or none did (the first seat's unfinished reply, voted for by
    nobody), the council answers `length`, streamed or not, as one model cut off does."""
    client = openai.OpenAI(base_url=f"{pair.url}/v1", api_key="unused", max_retries=0, timeout=300)
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model="pair", messages=messages, max_tokens=12)
    check_answer(reply.choices[0].finish_reason, reply.model_extra["council"])  # type: ignore[index]
    chunks = list(client.chat.completions.create(model="pair", messages=messages, max_tokens=12, stream=True))
    check_answer(chunks[-1].choices[0].finish_reason, chunks[-1].model_extra["council"])  # type: ignore[index]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content  # greedy
