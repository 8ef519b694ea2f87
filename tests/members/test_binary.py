"""The installed llama-server: its build and spec types, and real completions from each small model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from council.members.binary import (
    LlamaServerError,
    LlamaServerInfo,
    LlamaServerVariableError,
    _run,
    find_llama_server,
    inspect_binary,
    parse_build,
    parse_spec_types,
)
from council.setup.catalog import ModelSource, models_for
from tests.servers import RunningServer, gone


def test_installed_build_lists_draft_mtp(llama_server_bin: LlamaServerInfo) -> None:
    assert llama_server_bin.build == 11434
    assert llama_server_bin.mtp_spelling == "draft-mtp"
    assert {"none", "draft-simple", "draft-mtp", "ngram-mod"} <= set(llama_server_bin.spec_types)


@pytest.mark.parametrize(
    ("help_text", "expected"),
    [
        ("--spec-type [none|draft-mtp|ngram-mod]   type of speculative decoding", ("none", "draft-mtp", "ngram-mod")),
        ("--spec-type none,draft-simple,mtp        comma-separated", ("none", "draft-simple", "mtp")),
        ("-h, --help   print usage", ()),
    ],
)
def test_parse_spec_types_handles_both_list_styles(help_text: str, expected: tuple[str, ...]) -> None:
    assert parse_spec_types(help_text) == expected


def test_a_set_llama_server_variable_is_the_only_one_looked_at(
    llama_server_bin: LlamaServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A llama-server without MTP named by `$LLAMA_SERVER` serves what needs no MTP; where MTP is required it is an
    error naming the variable, not a reason to take the cached build."""
    no_mtp = tmp_path / "llama-server"
    no_mtp.write_text("#!/bin/sh\necho '--port N   port to listen on'\necho 'version: 1 (abc)'\n")
    no_mtp.chmod(0o755)
    inspect_binary.cache_clear()
    monkeypatch.setenv("LLAMA_SERVER", str(no_mtp))
    found = find_llama_server(require_mtp=False)
    assert found is not None and found.path == no_mtp.resolve() and found.mtp_spelling is None
    with pytest.raises(LlamaServerVariableError, match=f"^LLAMA_SERVER={no_mtp}: its `--help` lists no MTP"):
        find_llama_server(require_mtp=True)
    monkeypatch.setenv("LLAMA_SERVER", str(llama_server_bin.path))
    assert find_llama_server() == llama_server_bin


def test_parse_build() -> None:
    assert parse_build("version: 11434 (abc123)\nbuilt with cc") == 11434
    assert parse_build("version: 0.6.0-dev (build 11434, commit unknown)") == 11434
    assert parse_build("no version here") is None


@pytest.mark.parametrize("src", models_for("small"), ids=lambda s: s.name)
def test_each_small_model_answers_chat_completions(
    src: ModelSource, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server(src.path, "--jinja" if src.chat else "--no-jinja")
    reply = httpx.post(
        f"{server.url}/v1/chat/completions", headers=server.headers, timeout=120,
        json={"messages": [{"role": "user", "content": "What is 2+2? Answer with a number."}],
              "max_tokens": 8, "temperature": 0},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["completion_tokens"] > 0
    assert isinstance(body["choices"][0]["message"]["content"], str)


def test_member_key_is_enforced(start_server: Callable[..., RunningServer]) -> None:
    src = models_for("small")[0]
    server = start_server(src.path)
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert reply.status_code == 401


def test_base_model_completes_raw_text(start_server: Callable[..., RunningServer]) -> None:
    gemma = next(s for s in models_for("small") if not s.chat)
    server = start_server(gemma.path)
    reply = httpx.post(f"{server.url}/completion", headers=server.headers, timeout=120,
                       json={"prompt": "The capital of France is", "n_predict": 6, "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["tokens_predicted"] > 0


def test_a_wrapper_whose_help_hangs_leaves_nothing_behind(tmp_path: Path) -> None:
    """`$LLAMA_SERVER` may be a wrapper script; one whose `--help` hangs was killed after the timeout, but only
    itself: the process it ran lived on (reparented to init)."""
    import time

    child_pid = tmp_path / "child.pid"
    wrapper = tmp_path / "llama-server"
    wrapper.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid}\nwait\n")
    wrapper.chmod(0o755)
    with pytest.raises(LlamaServerError, match=r"cannot run `--help`: .*timed out"):
        _run(wrapper, "--help", timeout=1)
    child = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while not gone(child):
        assert time.monotonic() < deadline, f"the wrapper's child {child} still runs"
        time.sleep(0.02)
