"""Policies: sizes and durations, defaults, and every `council check` error as `file:line: path: message`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from council.policy.loading import PolicyError, load_policy
from council.setup.catalog import by_name
from council.units import parse_duration, parse_size
from tests.conftest import run_cli

QWEN05 = by_name("qwen2.5-coder-0.5b")
QWEN15 = by_name("qwen2.5-coder-1.5b")
SMOL = by_name("smollm2-135m")
assert QWEN05 and QWEN15 and SMOL


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.lines()


GOOD = """
version: 1
gpus:
  - {name: cpu, memory: 16GiB}
models:
  small:
    path: %s
    ctx_size: 1024
councils:
  pair:
    members:
      - {model: small}
      - {model: small, weight: 2, sampling: {temperature: 0.7, seed: 7}}
    timeout: 1500ms
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3GiB", 3 << 30), ("512MiB", 512 << 20), ("16GB", 16 * 10**9), ("2.5 KiB", 2560), (1024, 1024), ("7", 7),
     ("1TB", 10**12)],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["-1GiB", "3 GB GB", "3XiB", True, "", None])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3
    for bad in ("0s", "-1s", "3 weeks", False):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_good_policy_defaults_and_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS", str(SMOL.path.parent))
    loaded = load_policy(write(tmp_path, GOOD % ("$MODELS/" + SMOL.filename)))
    policy = loaded.policy
    assert policy.server.host == "127.0.0.1"
    assert policy.state == "memory"
    assert policy.slots.size == 3 << 30
    assert policy.models["small"].path == SMOL.path
    assert policy.models["small"].draft.type == "none"
    pair = policy.councils["pair"]
    assert pair.timeout == 1.5
    assert pair.member_names("pair") == ["pair/0", "pair/1"]
    assert pair.quorum_count() == 2
    assert pair.vote.tie_break == ["weight", "latency", "order"]


def test_tilde_expands(tmp_path: Path) -> None:
    loaded = load_policy(write(tmp_path, GOOD % "~/models/x.gguf"))
    assert loaded.policy.models["small"].path == Path.home() / "models/x.gguf"


def test_missing_file() -> None:
    assert problems(Path("/nonexistent/policy.yaml")) == ["/nonexistent/policy.yaml:1: (top): no such file"]


def test_seats_of_one_process_past_llama_servers_largest_context_are_refused(tmp_path: Path) -> None:
    """128 seats of a shared model at the largest ctx_size: check and plan passed `--ctx-size 2147483648`, which
    llama-server's std::stoi refuses at every start."""
    text = """
        models:
          m: {path: /nonexistent/m.gguf, ctx_size: 16777216, share: SHARE, memory: 100MiB}
        councils:
          c: {members: [{model: m, samples: 64}, {model: m, samples: SECOND}]}
        """
    [line] = problems(write(tmp_path, text.replace("SHARE", "true").replace("SECOND", "64")))
    assert line.endswith("councils.c.members.0: 128 seats of m in one process need --ctx-size 2147483648 (and "
                         "--parallel 128), past llama-server's largest, 2147483647: fewer seats or a smaller ctx_size")
    load_policy(write(tmp_path, text.replace("SHARE", "true").replace("SECOND", "63")))  # 127 seats: within it
    load_policy(write(tmp_path, text.replace("SHARE", "false").replace("SECOND", "64")))  # two processes of 64


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nmodels:\n  a: {path: x\n  b: 2\n")
    [line] = problems(path)
    assert line.startswith(f"{path}:4: (top): not valid YAML")


def test_aliases_that_expand_past_any_policy_are_one_line_not_gigabytes(tmp_path: Path) -> None:
    """A few hundred bytes of nested aliases ("billion laughs"): each level multiplied time and memory by ten
    (7 levels: 2.2 GB and 11 s; 8: a MemoryError traceback; a router's /admin/reload reads policies too)."""
    lines = ["version: 1", "x0: &x0 [a, a, a, a, a, a, a, a, a, a]"]
    lines += [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = write(tmp_path, "\n".join([*lines, "models: {}", "councils: {}"]) + "\n")
    assert problems(path) == [f"{path}:1: (top): it holds 1,234,567,915 values (its aliases expanded), more than "
                              "the 100,000 a policy may hold (one needs hundreds)"]
    # one that loops (a node holding an alias of itself) is one line too, at the alias
    assert problems(write(tmp_path, "version: 1\na: &a [1, [*a]]\n")) == [
        f"{path}:2: (top): an alias is used inside the node it names: a policy cannot hold itself"]
    # aliases as policies use them (a sampling block shared by members) read as before
    shared = (GOOD % SMOL.path).replace("- {model: small}\n", "- {model: small, sampling: &s {temperature: 0.5}}\n"
                                        "      - {model: small, sampling: *s}\n")
    assert load_policy(write(tmp_path, shared)).policy.councils["pair"].members[1].sampling.temperature == 0.5


def test_empty_and_non_mapping(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "\n")) == [f"{tmp_path / 'policy.yaml'}:1: (top): the file is empty"]
    [line] = problems(write(tmp_path, "- 1\n- 2\n"))
    assert "a policy is a mapping" in line


def test_every_schema_problem_at_once_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        slots: {size: 3GiB, reserve: -5MiB}
        models:
          qwen:
            path: /x.gguf
            ctx_sise: 8192
            cache_type_k: q3_0
            gpu_layers: lots
            draft: {type: model}
        councils:
          trio:
            members:
              - {model: qwen, weight: -1}
            vote: {strategy: plurality, extract: autox}
            timeout: 30x
        """)
    got = problems(path)
    f = str(path)
    assert got == [
        f"{f}:2: slots.reserve: a size cannot be negative: '-5MiB'",
        f"{f}:6: models.qwen.ctx_sise: unknown key; did you mean 'ctx_size'?",
        f"{f}:7: models.qwen.cache_type_k: Input should be 'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', "
        "'iq4_nl', 'q5_0' or 'q5_1'",
        f"{f}:8: models.qwen.gpu_layers: Input should be 'all' or Input should be a valid integer, unable to "
        "parse string as an integer",
        f"{f}:9: models.qwen.draft: draft type `model` needs `model: NAME` of another model in the policy",
        f"{f}:13: councils.trio.members.0.weight: Input should be greater than 0",
        f"{f}:14: councils.trio.vote.strategy: Input should be 'majority', 'weighted', 'confidence', 'similarity' "
        "or 'judge'",
        f"{f}:14: councils.trio.vote.extract: unknown extractor 'autox': use one of auto, number, choice, text, "
        "json:PATH, regex:PATTERN",
        f"{f}:15: councils.trio.timeout: unknown duration unit 'x' in '30x': use ms, s, m or h",
    ]


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a:\n    ctx_size: 512\ncouncils:\n  c: {vote: {strategy: majority}}\n")
    assert problems(path) == [
        f"{path}:2: models.a: a model needs exactly one of `path:` (a local GGUF) or `remote:` (a litellm model)",
        f"{path}:5: councils.c.members: required key is missing",
    ]


def test_unknown_top_level_key_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nfrobnicate: true\n")
    [line] = problems(path)
    assert line.startswith(f"{path}:2: frobnicate: unknown key; allowed: version, server, state")


def test_wrong_types(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 2\nserver: {port: eighty}\nstate: postgres://x\ngpus: {name: a}\n")
    got = problems(path)
    assert got[0] == f"{path}:1: version: Input should be 1"
    assert got[1].startswith(f"{path}:2: server.port: Input should be a valid integer")
    assert got[2] == f"{path}:3: state: state must be `memory` or a redis:// URL, not 'postgres://x'"
    assert got[3] == f"{path}:4: gpus: Input should be a valid list"


@pytest.mark.parametrize(("url", "says"), [
    ("redis://:pw@10.0.0.5:6379/zero", "'zero'"), ("rediss://10.0.0.5/1x", "'1x'"), ("redis://h:6379/0/1", "'0/1'")])
def test_a_redis_database_that_is_no_number_is_refused(tmp_path: Path, url: str, says: str) -> None:
    """redis-py opens database 0 for `/zero` without a word: two deployments meant to be apart shared one."""
    path = write(tmp_path, f"version: 1\nstate: {url!r}\n")
    assert problems(path) == [f"{path}:2: state: the database after the host must be a number (`/0`, `/1`...), "
                              f"not {says}"]
    for good in ("redis://10.0.0.5:6379/12", "redis://10.0.0.5:6379", "redis://h/", "redis://h/${DB}",
                 "unix:///run/redis.sock?db=1"):
        assert load_policy(write(tmp_path, f"version: 1\nstate: {good!r}\n")).policy.state == good


def test_an_empty_server_host_is_refused(tmp_path: Path) -> None:
    """Before, `host: ""` passed as loopback and served without keys on every interface."""
    path = write(tmp_path, 'version: 1\nserver: {host: ""}\n')
    assert problems(path) == [f"{path}:2: server.host: String should have at least 1 character"]


def test_references(tmp_path: Path) -> None:
    path = write(tmp_path, """
        gpus:
          - {name: a, memory: 8GiB}
          - {name: a, memory: 8GiB}
        models:
          qwen: {path: /q.gguf, draft: {type: model, model: qwen-tiny}}
        councils:
          trio:
            members:
              - {model: qwen, name: x}
              - {model: qwne, name: x}
            quorum: 3
            vote: {strategy: judge, judge: 5}
            fallback: {members: 2, model: tiny}
        """)
    f = str(path)
    assert problems(path) == [
        f"{f}:3: gpus.1.name: duplicate GPU name 'a'",
        f"{f}:5: models.qwen.draft.model: unknown model 'qwen-tiny'; did you mean 'qwen'?",
        f"{f}:10: councils.trio.members.1.model: unknown model 'qwne'; did you mean 'qwen'?",
        f"{f}:10: councils.trio.members.1.name: duplicate member name 'x'",
        f"{f}:11: councils.trio.quorum: quorum 3 is more than 2 seats",
        f"{f}:12: councils.trio.vote.judge: judge index 5 is not a member (0..1)",
        f"{f}:13: councils.trio.fallback.model: unknown model 'tiny'; known models: qwen",
        f"{f}:13: councils.trio.fallback.members: a fallback must keep fewer members than the council has",
    ]


CROSSED = """
    models:
      coder: {path: /nonexistent/coder.gguf, memory: 1GiB}
      smol: {path: /nonexistent/smol.gguf, memory: 512MiB}
    councils:
      code:
        members:
          - {model: coder, name: greedy}
          - {model: coder, name: sampled, samples: 2}
      chat:
        members:
          - {model: smol, name: greedy}
          - {model: smol, name: "sampled#1"}
          - {model: smol}
      solo:
        members:
          - {model: smol, name: chat/2}
    """


def test_a_member_name_in_two_councils_is_one_problem_naming_both(tmp_path: Path) -> None:
    """Before, it passed: the plan counted a process per `greedy`, the supervisor kept one, and council code's seat
    `greedy` was answered by council chat's model. A seat of `samples` (`sampled#1`) and a default name (`chat/2`)
    are names too."""
    path = write(tmp_path, CROSSED)
    f = str(path)
    why = "names must differ across councils (a name names its process and its seats)"
    expected = [f"{f}:11: councils.chat.members.0.name: member name 'greedy' is used in councils code and chat: {why}",
                f"{f}:12: councils.chat.members.1.name: member name 'sampled#1' is used in councils code and chat: "
                f"{why}",
                f"{f}:16: councils.solo.members.0.name: member name 'chat/2' is used in councils chat and solo: {why}"]
    assert problems(path) == expected
    result = run_cli("check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == expected


def test_duplicate_keys_are_errors_not_overwrites(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a: {path: /a}\n  a: {path: /b}\n")
    assert problems(path) == [f"{path}:3: models.a: duplicate key: each name may appear once"]


def test_shell_string_in_args_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'models:\n  a: {path: /a, args: ["--foo\\nrm -rf /"]}\n')
    [line] = problems(path)
    assert "models.a.args: argument '--foo\\nrm -rf /' holds a newline" in line


@pytest.mark.parametrize(("arg", "flag"), [
    ("--host", "--host"), ("--host=0.0.0.0", "--host"), ("--port", "--port"), ("--port=8080", "--port"),
    ("--model", "--model"), ("-m", "--model"), ("--model=/other.gguf", "--model"), ("--alias", "--alias"),
    ("-a", "--alias"), ("--metrics", "--metrics"), ("--api-key", None), ("--api_key", None),
    ("--api-key=secret", None), ("--api-key-file", None), ("--api-key-file=/keys", None)])
def test_args_may_not_set_the_flags_council_owns(tmp_path: Path, arg: str, flag: str | None) -> None:
    """Before, `args: [--host, 0.0.0.0]` passed, and llama-server (which keeps a repeated flag's last value) listened
    on every interface; an `--api-key` replaced the router's key (every start failed) in a world-readable argv."""
    path = write(tmp_path, f'models:\n  a: {{path: /a, args: ["--seed", "1", "{arg}", "x"]}}\n')
    [line] = problems(path)
    assert line.startswith(f"{path}:2: models.a.args: argument {arg!r} sets ")
    if flag is None:
        assert "sets an API key: council gives every process its own, in its environment" in line
    else:
        assert f"sets {flag}, which council sets itself for every process" in line


def test_args_council_does_not_set_pass(tmp_path: Path) -> None:
    path = write(tmp_path, 'models:\n  a: {path: /a, args: ["--mmproj", "/p.gguf", "--seed", "1", "--fit", "on"]}\n')
    assert load_policy(path).policy.models["a"].args[-1] == "on"


def test_check_refuses_args_binding_beyond_loopback_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'models:\n  a: {path: /a, memory: 1GiB, args: ["--host", "0.0.0.0"]}\n'
                           "councils:\n  c: {members: [{model: a}]}\n")
    result = run_cli("check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{path}:2: models.a.args: argument '--host' sets --host, which council sets itself")


@pytest.mark.parametrize(("model", "extract", "says"), [
    ("{path: /a, memory: 1GiB}", "regex:a{4294967296}", "councils.c.vote.extract: bad regex 'a{4294967296}'"),
    ("{path: '~nosuchuser-council/x.gguf', memory: 1GiB}", "auto", "models.a.path: ~nosuchuser-council/x.gguf: no "
     "such user's home"),
    ("{path: /%s.gguf, memory: 1GiB}" % ("a" * 5000), "auto", "File name too long"),
], ids=["huge-regex-repeat", "unknown-user", "name-too-long"])
def test_inputs_the_loader_raised_on_are_problems_not_tracebacks(tmp_path: Path, model: str, extract: str,
                                                                 says: str) -> None:
    """`re.compile` raises OverflowError for a repeat past its limit, `expanduser` RuntimeError for an unknown
    user, `Path.exists` OSError for a name too long: each was a traceback (exit 1) from `check`, `plan` and every
    command that loads a policy, and a 500 from `/admin/reload`."""
    path = write(tmp_path, f"models:\n  a: {model}\ncouncils:\n  c: {{members: [{{model: a}}], "
                           f"vote: {{extract: '{extract}'}}}}\n")
    for command in ("check", "plan"):
        result = run_cli(command, str(path), timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert says in result.stderr, result.stderr


@pytest.mark.parametrize("field", ["top_k", "max_tokens"])
def test_sampling_integers_past_what_a_request_can_carry_are_refused(tmp_path: Path, field: str) -> None:
    """`top_k` or `max_tokens` past 64 bits passed `check`; no request to the member could then be written
    (orjson), so every answer was a 503 `quorum_not_met` blaming the members, and the SDKs retried it."""
    path = write(tmp_path, f"models:\n  a: {{path: /a, memory: 1GiB}}\ncouncils:\n  c: {{members: [{{model: a, "
                           f"sampling: {{{field}: 99999999999999999999999}}}}]}}\n")
    [line] = problems(path)
    assert f"councils.c.members.0.sampling.{field}: Input should be less than or equal to 2147483647" in line


def test_a_path_naming_an_unset_variable_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`os.path.expandvars` leaves an unset variable as it is: the file was reported missing with `${NOPE}` in its
    name, and with `memory:` the literal path went on to plan and launch."""
    monkeypatch.delenv("COUNCIL_TEST_NOPE", raising=False)
    for given in ("${COUNCIL_TEST_NOPE}/x.gguf", "$COUNCIL_TEST_NOPE/x.gguf"):
        path = write(tmp_path, f"models:\n  a: {{path: '{given}', memory: 1GiB}}\n")
        [line] = problems(path)
        assert line == f"{path}:2: models.a.path: {given}: $COUNCIL_TEST_NOPE is not set (the path reads it " \
                       "from the environment)", line
    monkeypatch.setenv("COUNCIL_TEST_NOPE", str(tmp_path))
    loaded = load_policy(write(tmp_path, "models:\n  a: {path: '${COUNCIL_TEST_NOPE}/x.gguf', memory: 1GiB}\n"))
    assert loaded.policy.models["a"].path == tmp_path / "x.gguf"


def test_a_model_path_that_names_no_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """A FIFO's open waits for a writer: `check` and `plan` hung on it, and `/admin/reload` froze the router's
    every request. A folder, too, is no model file; a `memory:` excuses a file not there yet, not these."""
    import os

    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    for target, says in ((fifo, "is not a file"), (tmp_path, "is not a file")):
        path = write(tmp_path, f"models:\n  a: {{path: {target}, memory: 1GiB}}\ncouncils:\n  c: {{members: "
                               "[{model: a}]}\n")
        for command in ("check", "plan"):
            result = run_cli(command, str(path), timeout=60)
            assert result.returncode == 2 and f"models.a.path: {target} {says}" in result.stderr, result.stderr


# --- `council check` on the real machine: files, spec types, MTP heads, vocabularies --------------------


def test_check_cli_valid_policy(tmp_path: Path) -> None:
    result = run_cli("check", str(write(tmp_path, GOOD % SMOL.path)))
    assert result.returncode == 0, result.stderr
    assert "valid (1 models, 1 councils)" in result.stdout


def test_check_cli_exit_2_one_line_per_problem_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, """
        models:
          a: {path: /nonexistent/a.gguf}
          b: {path: SMOL, draft: {type: eagle9}}
          c: {path: SMOL, draft: {type: mtp, n_max: 2}}
          d: {path: QWEN15, draft: {type: model, model: e}}
          e: {path: SMOL}
          f: {path: /nonexistent/f.gguf, memory: 2.7GiB}
        """.replace("SMOL", str(SMOL.path)).replace("QWEN15", str(QWEN15.path)))
    result = run_cli("check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    f = str(path)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (f"{f}:2: models.a.path: /nonexistent/a.gguf does not exist "
                        "(and no `memory:` is given to plan with)")
    assert lines[1] == (f"{f}:4: models.c.draft.type: draft type mtp needs a model with an MTP head; "
                        f"{SMOL.filename} (llama) has no llama.nextn_predict_layers")
    assert lines[2].startswith(f"{f}:3: models.b.draft.type: the installed llama-server (build 11434) does not "
                               "support draft type 'eagle9'; it knows: none, draft-simple")
    assert lines[3].startswith(f"{f}:5: models.d.draft.model: 'e' cannot draft for 'd': ")
    assert len(lines) == 4


def test_a_draft_model_whose_file_is_not_there_is_said_by_check_as_plan_refuses_it(tmp_path: Path) -> None:
    """A draft model with `memory:` and no file yet: `check` said valid, `plan` exited 2 with a bare "cannot read
    GGUF" naming no field (the draft's memory is planned in its target's process, from both files). Both now say
    which fields; with the target's own `memory:` both plan it."""
    text = """
        gpus: [{name: cpu, memory: 8GiB}]
        models:
          big: {path: QWEN15, draft: {type: model, model: small}MEMORY}
          small: {path: /nonexistent/small.gguf, memory: 600MiB}
        councils:
          c: {members: [{model: big}]}
        """.replace("QWEN15", str(QWEN15.path))
    path = write(tmp_path, text.replace("MEMORY", ""))
    checked, planned = run_cli("check", str(path)), run_cli("plan", str(path))
    assert checked.returncode == planned.returncode == 2, (checked, planned)
    assert checked.stderr.strip() == (f"{path}:3: models.big.draft.model: the draft model small's file "
                                      "/nonexistent/small.gguf is not there, and its memory is planned in big's "
                                      "process: set models.big.memory, or fetch the file"), checked.stderr
    assert planned.stderr == checked.stderr  # `plan` says what `check` says
    path = write(tmp_path, text.replace("MEMORY", ", memory: 2GiB"))
    assert run_cli("check", str(path)).returncode == 0 and run_cli("plan", str(path)).returncode == 0


def test_check_accepts_same_vocabulary_draft_and_mtp_head(tmp_path: Path) -> None:
    mtp = tmp_path / "mtp.gguf"
    from council.setup.synthetic import write_qwen35

    write_qwen35(mtp)
    path = write(tmp_path, """
        models:
          big: {path: QWEN15, draft: {type: model, model: small}}
          small: {path: QWEN05}
          syn: {path: MTP, draft: {type: mtp, n_max: 2}}
          ngram: {path: SMOL, draft: {type: ngram-mod}}
        """.replace("QWEN15", str(QWEN15.path)).replace("QWEN05", str(QWEN05.path)).replace("MTP", str(mtp))
        .replace("SMOL", str(SMOL.path)))
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr


def test_check_cli_bad_yaml_is_one_line(tmp_path: Path) -> None:
    result = run_cli("check", str(write(tmp_path, "models: [\n")))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_cascade_shorthands_resolve_to_stages() -> None:
    from council.policy.schema import CascadeConfig

    assert CascadeConfig.model_validate({"first": 2}).resolve(5) == [[0, 1], [2, 3, 4]]
    # One more seat at a time after the first three: the Adaptive-Consistency shape.
    assert CascadeConfig.model_validate({"first": 3, "then": 1}).resolve(6) == [[0, 1, 2], [3], [4], [5]]
    assert CascadeConfig.model_validate({"first": 3, "then": 2}).resolve(8) == [[0, 1, 2], [3, 4], [5, 6], [7]]
    assert CascadeConfig.model_validate({"first": 5}).resolve(5) == [[0, 1, 2, 3, 4]]  # no empty last stage
    with pytest.raises(ValueError, match="`then` goes with `first`"):
        CascadeConfig.model_validate({"stages": [[0], [1]], "then": 1})


def test_a_members_tool_instructions_reach_its_samples_and_a_bad_value_is_a_problem(tmp_path: Path) -> None:
    text = """
        models:
          smol: {path: /smol.gguf, memory: 1GiB}
          qwen: {path: /qwen.gguf, memory: 1GiB}
        councils:
          mixed:
            members:
              - {model: smol, samples: 2, tool_instructions: %s}
              - {model: qwen}
            vote: {tool_instructions: brief}
        """
    policy = load_policy(write(tmp_path, text % "listed", "good.yaml")).policy
    seats = policy.councils["mixed"].seats("mixed")
    assert [(name, seat.tool_instructions) for name, seat, _ in seats] == [
        ("mixed/0#0", "listed"), ("mixed/0#1", "listed"), ("mixed/1", None)]  # None: the council's
    path = write(tmp_path, text % "verbose")
    line = f"{path}:7: councils.mixed.members.0.tool_instructions: Input should be 'none', 'brief' or 'listed'"
    assert problems(path) == [line]
    result = run_cli("check", str(path))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [line]


def test_a_listed_cascade_must_fit_the_fallbacks_seats(tmp_path: Path) -> None:
    """The fallback keeps the first members (samples expand into seats) and runs the same cascade; stages naming
    seats it dropped made every early-stop request of the fallback council fail (IndexError in `ask`)."""
    text = """
        models:
          big: {path: /big.gguf, memory: 1GiB}
          small: {path: /small.gguf, memory: 1GiB}
        councils:
          c:
            members:
              - {model: big}
              - {model: big, samples: 2}
              - {model: big}
              - {model: big}
            vote: {cascade: %s}
            fallback: {members: %d, model: small}
        """
    path = write(tmp_path, text % ("[[0, 1], [2, 3, 4]]", 2))
    assert problems(path) == [f"{path}:12: councils.c.fallback.members: the fallback keeps 3 seats (0..2) but the "
                              "cascade's stages name seat 4; write the cascade as `{first: N}` (it fits any council) "
                              "or keep more members"]
    result = run_cli("check", str(path))
    assert result.returncode == 2 and f"{path}:12: councils.c.fallback.members" in result.stderr
    load_policy(write(tmp_path, text % ("{first: 2}", 2), "first.yaml"))  # fits any number of seats
    three = write(tmp_path, text % ("[[0, 1], [2, 3, 4]]", 3), "three.yaml")  # 3 entries, 4 seats (samples: 2)
    assert [line.split(": ", 2)[2] for line in problems(three)] == [
        "the fallback keeps 4 seats (0..3) but the cascade's stages name seat 4; write the cascade as `{first: N}` "
        "(it fits any council) or keep more members"]


def test_sizes_and_durations_must_be_finite(tmp_path: Path) -> None:
    # `.inf` as a size made round() raise OverflowError (a traceback, a reload answering 500); `.nan` as a duration
    # passed the `<= 0` check and later killed the heartbeat task.
    for bad in (float("inf"), float("nan"), "9" * 400, "1" + "0" * 300 + "TiB"):  # the last: finite until its unit
        with pytest.raises(ValueError, match="must be a finite number"):
            parse_size(bad)
    for bad in (float("nan"), float("inf"), "9" * 400 + "h"):
        with pytest.raises(ValueError, match="must be a finite number"):
            parse_duration(bad)
    path = write(tmp_path, """
        gpus:
          - {name: cpu, memory: .inf}
        models:
          small: {path: /nonexistent/s.gguf, memory: 1GiB}
        councils:
          pair:
            members: [{model: small}]
            timeout: .nan
        """)
    f = str(path)
    assert problems(path) == [f"{f}:2: gpus.0.memory: a size must be a finite number, not inf",
                              f"{f}:8: councils.pair.timeout: a duration must be a finite number, not nan"]
    result = run_cli("check", f)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == problems(path)


def test_every_float_of_a_policy_must_be_finite(tmp_path: Path) -> None:
    # `weight: .inf` was accepted (`gt=0` alone lets infinity through): one seat outvoted the rest, and an infinite
    # confidence_temperature or rate_limit passed as well; `.nan` failed only by luck, as "should be greater than 0".
    path = write(tmp_path, """
        server:
          api_keys: [{name: a, env: KEY, rate_limit: .inf}]
        models:
          m: {remote: {model: openai/x}, draft: {type: ngram-mod, step_cost: {1: .inf}, auto: {margin: .inf}}}
        councils:
          c:
            members:
              - {model: m, weight: .inf, rate_limit: .inf}
              - {model: m, weight: .nan, sampling: {temperature: .nan, top_p: .nan}}
            vote: {strategy: confidence, confidence_temperature: .inf, cascade: {first: 1, agreement: .nan}}
        """)
    f = str(path)
    assert problems(path) == [
        f"{f}:2: server.api_keys.0.rate_limit: must be a finite number, not inf",
        f"{f}:4: models.m.draft.step_cost.1: must be a finite number, not inf",
        f"{f}:4: models.m.draft.auto.margin: must be a finite number, not inf",
        f"{f}:8: councils.c.members.0.weight: must be a finite number, not inf",
        f"{f}:8: councils.c.members.0.rate_limit: must be a finite number, not inf",
        f"{f}:9: councils.c.members.1.weight: must be a finite number, not nan",
        f"{f}:9: councils.c.members.1.sampling.temperature: must be a finite number, not nan",
        f"{f}:9: councils.c.members.1.sampling.top_p: must be a finite number, not nan",
        f"{f}:10: councils.c.vote.confidence_temperature: must be a finite number, not inf",
        f"{f}:10: councils.c.vote.cascade.agreement: must be a finite number, not nan",
    ]
    result = run_cli("check", f)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == problems(path)


def test_weights_are_bounded_so_their_sum_stays_finite(tmp_path: Path) -> None:
    # Two weights of 1e308 passed `check`, then summed to inf in the live vote: every answer tied at inf, none was
    # close to the top, and the engine raised a bare ValueError (min() of no tied answers) for every question.
    path = write(tmp_path, """
        models:
          m: {remote: {model: openai/x}}
        councils:
          c:
            members: [{model: m, weight: 1e308}, {model: m, weight: 1000000}]
            vote: {strategy: weighted}
        """)
    f = str(path)
    assert problems(path) == [f"{f}:5: councils.c.members.0.weight: Input should be less than or equal to 1000000"]
    result = run_cli("check", f)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == problems(path)


def test_llama_server_flags_are_bounded_by_what_it_reads(tmp_path: Path) -> None:
    # ctx_size: 3000000000 (a typo for 3000) passed `check` and `plan`, then every member failed to start: llama-server
    # reads --ctx-size with std::stoi, a 32-bit int; so do --batch-size, --ubatch-size and --threads.
    path = write(tmp_path, """
        models:
          a: {path: /m/a.gguf, memory: 1GiB, ctx_size: 3000000000, threads: 2147483648}
          b: {path: /m/b.gguf, memory: 1GiB, ctx_size: 16777217, batch_size: 2147483648, ubatch_size: 2147483648}
          c: {path: /m/c.gguf, memory: 1GiB, ctx_size: 16777216, batch_size: 2147483647, threads: 2147483647}
        councils:
          x: {members: [{model: a}, {model: b}, {model: c}]}
        """)
    f = str(path)
    assert problems(path) == [
        f"{f}:2: models.a.ctx_size: Input should be less than or equal to 16777216",
        f"{f}:2: models.a.threads: Input should be less than or equal to 2147483647",
        f"{f}:3: models.b.ctx_size: Input should be less than or equal to 16777216",
        f"{f}:3: models.b.batch_size: Input should be less than or equal to 2147483647",
        f"{f}:3: models.b.ubatch_size: Input should be less than or equal to 2147483647",
    ]
    result = run_cli("check", f)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == problems(path)


@pytest.mark.parametrize("nested", ["[" * 2000 + "]" * 2000, "{a: " * 2000 + "1" + "}" * 2000,
                                    "".join(f"\n{'  ' * (i + 1)}k{i}:" for i in range(1500)) + " 1"],
                         ids=["lists", "flow-mappings", "block-mappings"])
def test_a_policy_nested_too_deeply_is_one_problem(tmp_path: Path, nested: str) -> None:
    """PyYAML raises RecursionError (not a YAMLError) at some hundreds of levels: it was a traceback."""
    path = write(tmp_path, "")
    path.write_text(f"version: 1\nmodels: {nested}\n")
    [line] = problems(path)
    assert line.startswith(f"{path}:") and ": (top): nested too deeply" in line
    result = run_cli("check", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [said] = result.stderr.strip().splitlines()  # its line: where the reader was when the stack ran out
    assert said.startswith(f"{path}:") and said.split(": ", 1)[1] == line.split(": ", 1)[1]


def test_a_walk_too_deep_after_parsing_is_the_same_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation walks the document too: a RecursionError there is reported as one, never raised."""
    from council.policy import loading

    def too_deep(data: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(loading.Policy, "model_validate", too_deep)
    path = write(tmp_path, "version: 1\nmodels: {}\n")
    assert problems(path) == [f"{path}:1: (top): {loading.TOO_DEEP}"]


def test_n_min_is_checked_against_a_speculating_n_max_only() -> None:
    """n_max 0 turns speculation off (what `council tune --write` writes when none was fastest): n_min is kept for
    when it is turned on again, not refused."""
    from pydantic import ValidationError

    from council.policy.schema import DraftConfig

    assert DraftConfig(type="mtp", n_max=0, n_min=2).n == 0
    with pytest.raises(ValidationError, match=r"n_min \(2\) is larger than n_max \(1\)"):
        DraftConfig(type="mtp", n_max=1, n_min=2)
    fixed, auto = DraftConfig(type="mtp", n_max=4, n_min=2), DraftConfig(type="mtp", n_max="auto",
                                                                          auto={"floor": 1, "start": 2, "limit": 3})
    assert [n for n in range(6) if fixed.accepts_n(n)] == [0, 2, 3, 4, 5]
    assert [n for n in range(6) if auto.accepts_n(n)] == [1, 2, 3]
