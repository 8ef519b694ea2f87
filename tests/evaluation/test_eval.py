"""`council eval` against real llama-server members: a table whose every number the test recomputes from the
JSON, and bad data files that exit 2 naming the line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from council.members.binary import LlamaServerInfo
from council.voting.extract import extract
from tests.conftest import run_cli
from tests.policies import member_entry, policy_yaml
from tests.servers import CouncilServer


def council_policy(syn: Path) -> str:
    # The synthetic model answers the alphabet: max_tokens decides the answer ("abc" or "abcd").
    return policy_yaml({"syn": {"path": syn, "ctx_size": 512}},
                       {"trio": {"members": [member_entry("syn", max_tokens=3), member_entry("syn", max_tokens=3),
                                             member_entry("syn", weight=3, max_tokens=4)],
                                 "vote": {"strategy": "majority", "extract": "text"}}})


def write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_eval_table_and_json_agree_with_the_recorded_answers(tmp_path: Path, syn: Path,
                                                              llama_server_bin: LlamaServerInfo) -> None:
    env = {"COUNCIL_HOME": str(tmp_path), "LLAMA_SERVER": str(llama_server_bin.path)}
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [
        {"question": "the first three letters?", "answer": "abc"},
        {"question": "and four?", "answer": "#### abcd"},  # GSM8K's form
        {"messages": [{"role": "user", "content": "none of them"}], "answer": "xyz"},
    ])
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    result = run_cli("eval", str(policy), "trio", str(data), "--json", str(out), "--record", str(tmp_path / "r.jsonl"),
                     "--html", str(page), env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    # The page draws from the same report (less the answers themselves; tests/evaluation/test_html_report.py
    # opens such pages in a browser).
    embedded = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                                    page.read_text()).group(1))
    assert embedded["reports"] == [{k: v for k, v in doc.items() if k != "records"}]
    records = doc["records"]
    assert doc["items"] == len(records) == 3
    # Every member answered every item (no early stop while evaluating).
    assert all(a["status"] == "ok" for r in records for a in r["answers"])
    refs = [extract(r["reference"], "text") for r in records]
    answers = [[extract(a["text"], "text") for a in r["answers"]] for r in records]
    assert answers[0] == ["abc", "abc", "abcd"]
    for i, member in enumerate(doc["members"]):
        correct = sum(a[i] == ref for a, ref in zip(answers, refs, strict=True))
        assert member["correct"] == correct and member["accuracy"] == pytest.approx(correct / 3)
    oracle = sum(ref in a for a, ref in zip(answers, refs, strict=True))
    assert doc["oracle"] == pytest.approx(oracle / 3) == pytest.approx(2 / 3)
    rows = {(s["strategy"], s["extract"], s["signal"], s["temperature"]): s for s in doc["strategies"]}
    # majority: "abc" (2 votes) wins every item; weighted: "abcd" (weight 3) does.
    majority = sum(max(set(a), key=a.count) == ref for a, ref in zip(answers, refs, strict=True))
    assert rows[("majority", "text", None, None)]["correct"] == majority == 1
    assert rows[("weighted", "text", None, None)]["correct"] == 1
    every = next(s for s in doc["spend"] if s["name"] == "every member")
    tokens = sum(a["completion_tokens"] for r in records for a in r["answers"]) / 3
    assert every["tokens_per_item"] == pytest.approx(tokens) == pytest.approx(3 + 3 + 4)
    early = next(s for s in doc["spend"] if s["name"] == "early stop")
    assert early["accuracy"] == pytest.approx(majority / 3) and early["tokens_per_item"] <= tokens
    first2 = next(s for s in doc["spend"] if s["name"] == "cascade first 2")
    assert first2["members_per_item"] == pytest.approx(2) and first2["tokens_per_item"] == pytest.approx(6)
    loo = {row["member"]: row for row in doc["leave_one_out"]}
    assert loo["trio/2"]["verdict"] == "never changes the outcome"  # majority ignores it either way
    for line in (f"{100 * m['accuracy']:.1f}%" for m in doc["members"]):
        assert line in result.stdout
    # The recording resumes: asked again, nothing new is appended.
    size = (tmp_path / "r.jsonl").stat().st_size
    again = run_cli("eval", str(policy), "trio", str(data), "--record", str(tmp_path / "r.jsonl"),
                    env=env)
    assert again.returncode == 0 and (tmp_path / "r.jsonl").stat().st_size == size


@pytest.mark.parametrize(("lines", "says"), [
    ([{"question": "q", "answer": "1"}, {"question": "no answer"}], ":2: missing `answer`"),
    ([], ":1: the file has no items"),
    ([{"question": "q", "answer": "1"}, "", "{not json"], ":3: not valid JSON"),
    ([{"answer": "1"}], ":1: needs `question`"),
    ([{"question": "q", "answer": "E", "choices": ["a", "b"]}], ":1: `answer` 'E' is not a letter"),
])
def test_bad_data_files_exit_2_naming_the_line(tmp_path: Path, syn: Path, lines: list[object], says: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", lines)
    result = run_cli("eval", str(policy), "trio", str(data))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and f"{data}{says}" in result.stderr, result.stderr


def bfcl_line(question: object = None, parameters: object = None) -> bytes:
    """One BFCL question line, its messages or its function's `parameters` as given."""
    function = {"name": "area", **({"parameters": parameters} if parameters is not None else {})}
    return json.dumps({"id": "simple_python_0", "question": question or [[{"role": "user", "content": "area?"}]],
                       "function": [function]}).encode() + b"\n"


@pytest.mark.parametrize(("content", "fmt", "says"), [
    (b"\x8b\x00 not text", "bfcl", ":1: cannot read the file: 'utf-8' codec can't decode byte 0x8b"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "auto", ":1: not valid JSON: maximum recursion depth exceeded"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "bfcl", ":1: not valid JSON: maximum recursion depth exceeded"),
    (bfcl_line([["What is the area?"]]), "auto", ":1: `question` must hold chat messages with a `role`"),
    (bfcl_line(parameters=["base", "height"]), "bfcl",
     ":1: area: `parameters` must be an object (a JSON Schema), not ['base', 'height']"),
    (bfcl_line(parameters={"type": "dict", "properties": {"base": "integer"}}), "bfcl",
     ":1: area: `parameters.properties` must be an object of parameter objects, not {'base': 'integer'}"),
    (bfcl_line(parameters={"type": "dict", "properties": {}, "required": "base"}), "bfcl",
     ":1: area: `parameters.required` must be a list of parameter names, not 'base'"),
], ids=["not UTF-8 as bfcl", "too deep, auto", "too deep as bfcl", "a message that is a string",
        "parameters a list", "properties of strings", "required a string"])
def test_bfcl_data_that_cannot_be_read_exits_2_naming_the_line(tmp_path: Path, syn: Path, content: bytes, fmt: str,
                                                        says: str) -> None:
    # BFCL's loader (and its sniffing under --format auto) let UnicodeDecodeError and RecursionError out as
    # tracebacks, exit 1, where the QA loader names the line; so were a message that is not an object (`dict(m)`)
    # and a `parameters` that is not one (spread into the tool), and the grader read `properties` and `required`.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    result = run_cli("eval", str(policy), "trio", str(data), "--format", fmt)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and f"{data}{says}" in result.stderr, result.stderr


def test_eval_refuses_references_the_councils_extractor_cannot_read(tmp_path: Path, syn: Path) -> None:
    # Letters under `extract: number` read as nothing: every abstaining member was scored right on them.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn).replace("extract: text", "extract: number"))
    assert "extract: number" in policy.read_text()
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "4"},
                                           {"question": "r", "choices": ["x", "y"], "answer": "B"}])
    result = run_cli("eval", str(policy), "trio", str(data), "--url", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {data}:2: answer 'B' cannot be read by the council's extractor number "
                                     "(vote.extract): no member's answer could be scored right against it")


def test_eval_refuses_an_unknown_council(tmp_path: Path, syn: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    result = run_cli("eval", str(policy), "nope", str(data))
    assert result.returncode == 2 and "no council 'nope'" in result.stderr


@pytest.mark.parametrize("args", [["--n", "0"], ["--n", "-1"], ["--n", "-1", "--seed", "1"]])
def test_eval_refuses_fewer_than_one_item(tmp_path: Path, syn: Path, args: list[str]) -> None:
    # `--n 0` crashed after the run, `--n -1` dropped the last item, and with `--seed` raised a ValueError.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}, {"question": "r", "answer": "2"}])
    result = run_cli("eval", str(policy), "trio", str(data), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: --n must be at least 1, not {args[1]}"


@pytest.mark.parametrize("here", [True, False], ids=["members here", "--url"])
def test_eval_refuses_a_record_file_it_cannot_resume_from_before_asking(tmp_path: Path, syn: Path,
                                                                          llama_server_bin: LlamaServerInfo,
                                                                          here: bool) -> None:
    home = tmp_path / "home"
    env = {"COUNCIL_HOME": str(home), "LLAMA_SERVER": str(llama_server_bin.path)}
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "abc"}, {"question": "r", "answer": "abcd"}])
    url = [] if here else ["--url", "http://127.0.0.1:9"]  # nothing listens there: it must not be asked
    seats = ", ".join(f'{{"member": "trio/{i}", "model": "syn", "status": "ok", "text": "abc"}}' for i in range(3))
    kept = f'{{"index": 0, "line": 1, "question": "q", "reference": "abc", "wall_ms": 1.0, "answers": [{seats}]}}\n'

    record = tmp_path / "r.jsonl"
    record.write_text(kept + kept.replace('"index": 0', '"index": 1')[:50])  # a run killed while writing
    result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), *url, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {record}:2: not a record (Invalid JSON") and \
        result.stderr.strip().count("\n") == 0, result.stderr
    assert not (home / "run").exists()  # no member was started (their logs and pid files go there)
    # A recording of other data: item 1 asked another question there.
    record.write_text(kept + kept.replace('"index": 0', '"index": 1').replace('"q"', '"other"'))
    result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), *url, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {record}:2: item 1 is 'other' here but 'r' in the data (line 2): a "
                                     "recording of other data?")
    assert record.read_text().count("\n") == 2  # nothing appended


def test_a_recording_is_scored_by_seat_name_and_refused_from_other_seats(tmp_path: Path) -> None:
    # Scores read a seat's answer by its position: a record whose seats came in another order (the policy's members
    # reordered between runs) credited seat a with c's answers, one with a seat fewer was an IndexError traceback,
    # and one of other seats altogether was scored as this council. No member is asked: every item is recorded.
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"m": {"remote": {"model": "openai/x"}}},
                                  {"trio": {"members": [{"model": "m", "name": n} for n in "abc"],
                                            "vote": {"strategy": "majority", "extract": "text"}}}))
    data = write(tmp_path / "data.jsonl", [{"question": "q0", "answer": "x"}, {"question": "q1", "answer": "y"}])

    def recording(*items: list[tuple[str, str]]) -> Path:
        return write(tmp_path / "r.jsonl", [
            {"index": i, "line": i + 1, "question": f"q{i}", "reference": "xy"[i], "wall_ms": 1.0,
             "answers": [{"member": m, "model": "m", "status": "ok", "text": t} for m, t in answers]}
            for i, answers in enumerate(items)])

    def run(record: Path) -> subprocess.CompletedProcess[str]:
        return run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", "http://127.0.0.1:9",
                       "--json", str(tmp_path / "report.json"))

    result = run(recording([("a", "x"), ("b", "x"), ("c", "z")], [("c", "y"), ("a", "n"), ("b", "n")]))
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "report.json").read_text())
    assert [(m["name"], m["correct"]) for m in doc["members"]] == [("a", 1), ("b", 1), ("c", 1)]
    assert [[a["member"] for a in r["answers"]] for r in doc["records"]] == [["a", "b", "c"]] * 2
    record = recording([("a", "x"), ("b", "x"), ("c", "z")], [("a", "y"), ("c", "y")])
    before = record.read_text()
    result = run(record)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {record}:2: item 1 was answered by seats a, c, not the council's a, b, c "
                                     "(only in the council: b): a recording of another council? Record to another "
                                     "file, or score this one with the policy it was made with")
    assert record.read_text() == before
    result = run(recording([("d", "x"), ("e", "x")], [("d", "y"), ("e", "n")]))
    assert result.returncode == 2 and "item 0 was answered by seats d, e, not the council's a, b, c (only in the " \
        "record: d, e; only in the council: a, b, c)" in result.stderr


@pytest.mark.parametrize("option", ["--json", "--html", "--record"])
def test_eval_refuses_an_output_in_no_folder(tmp_path: Path, syn: Path, option: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    target = tmp_path / "missing" / "report"
    result = run_cli("eval", str(policy), "trio", str(data), option, str(target))  # before any member starts
    assert result.returncode == 2 and f"{option} {target}: no such folder" in result.stderr, result.stderr


@pytest.mark.parametrize("option", ["--json", "--html", "--record", "DATA"])
def test_a_name_too_long_is_one_line_not_a_traceback(tmp_path: Path, syn: Path, option: str) -> None:
    """`Path.exists` and `is_dir` raise on a name past the system's limit: each was an OSError traceback, exit 1."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    long = tmp_path / ("x" * 300)
    args = [str(long)] if option == "DATA" else [str(data), option, str(long)]
    result = run_cli("eval", str(policy), "trio", *args, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "File name too long" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("option", ["--json", "--html", "--record"])
def test_eval_refuses_an_output_that_is_a_folder(tmp_path: Path, syn: Path, option: str) -> None:
    # Only the parent was checked: the whole run was asked, then writing the report was a traceback, exit 1.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    result = run_cli("eval", str(policy), "trio", str(data), option, str(tmp_path), "--url", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {option} {tmp_path}: is a folder"


@pytest.mark.parametrize(("args", "says"), [
    (["--html", "REC", "--record", "REC"], "--html REC is the --record file: the report would be written over it"),
    (["--json", "DATA"], "--json DATA is the data file: the report would be written over it"),
    (["--json", "POLICY"], "--json POLICY is the policy: the report would be written over it"),
    (["--json", "OUT", "--html", "OUT"],
     "--html and --json name one file, OUT: the two reports would be written over each other"),
])
def test_eval_refuses_a_report_written_over_what_the_run_reads(tmp_path: Path, syn: Path, args: list[str],
                                                                says: str) -> None:
    """`--html REC --record REC` wrote the page over every recorded answer, `--json DATA` the report over the data
    set, both exit 0 (the next run refused the file). Refused before anything is asked, every file as it was."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    record = tmp_path / "answers.jsonl"
    record.write_text("")
    names = {"REC": str(record), "DATA": str(data), "POLICY": str(policy), "OUT": str(tmp_path / "out")}
    before = {p: p.read_bytes() for p in (policy, data, record)}
    result = run_cli("eval", str(policy), "trio", str(data), *(names.get(a, a) for a in args),
                     "--url", "http://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    expected = says
    for name, path in names.items():
        expected = expected.replace(name, path)
    assert result.stderr.strip() == f"error: {expected}"
    assert {p: p.read_bytes() for p in (policy, data, record)} == before and not (tmp_path / "out").exists()


def test_a_report_is_written_whole_or_the_last_one_stays(tmp_path: Path) -> None:
    """A report write that failed half way (a full disk) left a broken prefix where the last good report was."""
    from council.paths import write_whole

    report = tmp_path / "report.json"
    report.write_text('{"good": true}\n')
    report.chmod(0o640)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))  # a disk that fills at 64 KiB
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG), as a full disk's
    try:
        with pytest.raises(OSError):
            write_whole(report, "x" * (1 << 17))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert report.read_text() == '{"good": true}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_whole(report, '{"better": true}\n')
    assert report.read_text() == '{"better": true}\n' and report.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.json"
    write_whole(fresh, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


@contextlib.contextmanager
def stub_router(status: int, content_type: str, body: bytes, posted: list[dict] | None = None) -> Iterator[str]:
    """An HTTP server answering every request with one reply (a server that is not `council serve`); the bodies
    POSTed to it are appended to `posted`."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            sent = self.rfile.read(int(self.headers.get("content-length") or 0))
            if posted is not None and self.command == "POST":
                posted.append(json.loads(sent))
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CHAT = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                   "content": "1"}}]}


@pytest.mark.parametrize(("body", "says"), [
    (json.dumps(CHAT).encode(), "has no `council.members` (a chat completion without it)"),
    (b"<html>not json", "has no `council.members` (not JSON)"),
    (json.dumps({**CHAT, "council": {"members": [1, 2]}}).encode(),
     "has members of another shape (TypeError: 'int' object is not subscriptable)"),
], ids=["an OpenAI server", "not JSON", "members of another shape"])
def test_eval_url_of_no_council_router_is_one_line_exit_2(tmp_path: Path, syn: Path, body: bytes, says: str) -> None:
    # A 200 without `council` was a KeyError traceback, a body that is not JSON a JSONDecodeError, both exit 1.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    with stub_router(200, "application/json", body) as url:
        result = run_cli("eval", str(policy), "trio", str(data), "--url", url, "--json", str(tmp_path / "r.json"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {url} is not a council router: its reply to item 0 {says}"
    assert not (tmp_path / "r.json").exists()


def test_eval_url_that_is_no_url_is_one_line_exit_2(tmp_path: Path, syn: Path) -> None:
    # httpx raised InvalidURL as the client was made: a traceback, exit 1.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}])
    result = run_cli("eval", str(policy), "trio", str(data), "--url", "http://[::1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: --url http://[::1: not a URL (")
    assert result.stderr.strip().count("\n") == 0


def test_eval_url_without_a_scheme_is_exit_2_and_one_never_reached_exit_1(tmp_path: Path, syn: Path) -> None:
    # Both asked every item, failed each as unreachable, and wrote a 0% report, exit 0.
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "1"}, {"question": "r", "answer": "2"}])
    report = tmp_path / "r.json"
    result = run_cli("eval", str(policy), "trio", str(data), "--url", "127.0.0.1:8080", "--json", str(report))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --url 127.0.0.1:8080: not an http:// or https:// URL (e.g. " \
                                    "http://127.0.0.1:8080)"
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("eval", str(policy), "trio", str(data), "--url", f"http://127.0.0.1:{port}", "--json", str(report))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith(f"error: cannot reach http://127.0.0.1:{port}: ConnectError")
    assert result.stderr.strip().count("\n") == 0 and not report.exists()
    # Reached, but no item answered (here: every request refused): a failed run too, with the first item's reason.
    refused = json.dumps({"error": {"message": "no such council"}}).encode()
    with stub_router(404, "application/json", refused) as url:
        result = run_cli("eval", str(policy), "trio", str(data), "--url", url, "--json", str(report))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: no item was answered by {url}: 404: no such council"
    assert not report.exists()


def test_eval_against_a_running_serve(tmp_path: Path, syn: Path, serve: Callable[..., CouncilServer]) -> None:
    """`--url`: the running router's council answers with every member (the request asks it not to stop early)."""
    server = serve(council_policy(syn))
    data = write(tmp_path / "data.jsonl", [{"question": "q", "answer": "abc"}, {"question": "q", "answer": "abcd"}])
    out = tmp_path / "report.json"
    result = run_cli("eval", str(server.policy_path), "trio", str(data), "--url", server.url, "--json", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert [[a["status"] for a in r["answers"]] for r in doc["records"]] == [["ok"] * 3] * 2  # none cancelled
    assert [m["correct"] for m in doc["members"]] == [1, 1, 1] and doc["oracle"] == 1.0


def test_eval_on_bfcl_items_with_a_real_model(tmp_path: Path, llama_server_bin: LlamaServerInfo) -> None:
    """Two BFCL items (one simple_python, one irrelevance) asked of a Qwen2.5-Coder-0.5B greedy seat and two samples
    (one streamed request, `n: 2`, which llama-server refuses with tools if logprobs are asked): every seat's answer
    is recorded with its calls, and each number of the table is BFCL's grade of those recorded answers."""
    from council.evaluation.bfcl import download_wheel, grade, load_bfcl
    from council.evaluation.dataset import DatasetError
    from council.setup.catalog import by_name
    from council.voting.recovery import recover

    try:
        wheel = download_wheel()
    except DatasetError as exc:
        pytest.skip(f"the bfcl-eval wheel cannot be downloaded: {exc}")
    qwen = by_name("qwen2.5-coder-0.5b")
    assert qwen is not None
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"qwen": {"path": qwen.path, "ctx_size": 1024, "share": True}},
                                  {"duo": {"members": [member_entry("qwen", temperature=0, max_tokens=80),
                                                       member_entry("qwen", samples=2, temperature=0.7, seed=1,
                                                                    max_tokens=80)],
                                           "quorum": 1, "timeout": "10m"}}))
    out = tmp_path / "report.json"
    result = run_cli("eval", str(policy), "duo", str(wheel), "--categories", "simple_python,irrelevance", "--n", "1",
                     "--seed", "1", "--json", str(out),
                     env={"COUNCIL_HOME": str(tmp_path), "LLAMA_SERVER": str(llama_server_bin.path)})
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["kind"] == "function-calling" and doc["categories"] == ["simple_python", "irrelevance"]
    items = {i.id: i for i in load_bfcl(wheel, ("simple_python", "irrelevance"))}
    records = doc["records"]
    assert [r["category"] for r in records] == ["simple_python", "irrelevance"]
    assert all(r["item_id"] in items and json.loads(r["reference"]) == (items[r["item_id"]].ground_truth or [])
               for r in records)
    declared = {t["function"]["name"] for r in records for t in items[r["item_id"]].tools}
    for record in records:
        for answer in record["answers"]:
            assert answer["status"] == "ok" and (answer["text"] or answer["tool_calls"]), answer
            if answer["recovered"]:  # written as text: scored as the council reads it (vote.recover_tool_calls)
                found = recover(answer["text"], sorted(declared))
                assert found is not None and [c["function"]["name"] for c in answer["tool_calls"]] == [
                    name for name, _ in found[0]]
            else:  # as llama-server parsed them: its grammar keeps calls to declared names
                assert {c["function"]["name"] for c in answer["tool_calls"] or []} <= declared
    for m, member in enumerate(doc["members"]):
        hits = [grade(items[r["item_id"]], r["answers"][m]["tool_calls"]).valid for r in records]
        assert [c["correct"] for c in member["categories"]] == [hits[0], hits[1], sum(hits)]
        tokens = [r["answers"][m]["completion_tokens"] for r in records]
        assert member["categories"][-1]["tokens_per_item"] == pytest.approx(sum(tokens) / 2) and all(tokens)
    oracle = [any(grade(items[r["item_id"]], a["tool_calls"]).valid for a in r["answers"]) for r in records]
    assert [c["correct"] for c in doc["oracle"]["categories"]] == [oracle[0], oracle[1], sum(oracle)]
    # the stand-in votes, and the council's own tool-call vote code in both modes
    assert {row["name"] for row in doc["councils"]} == {"council (set)", "council (argument)",
                                                        "council (council set)", "council (council per_argument)"}
    for row in doc["members"]:
        assert f"{row['categories'][-1]['correct']}/2" in result.stdout
    assert len(doc["members"]) == 3


@pytest.mark.parametrize(("args", "says"), [
    # Categories the port does not grade (BFCL grades Java/JS values as strings, and the others with other checkers)
    # were graded by the Python rules or refused blaming the data file.
    *[(["--categories", f"simple_python,{c}"], f"--categories {c}: council grades only BFCL's Python AST categories "
       "(simple_python, multiple, parallel, parallel_multiple, irrelevance, live_simple, live_multiple, live_parallel, "
       "live_parallel_multiple, live_irrelevance)") for c in ("simple_java", "simple_javascript", "live_relevance",
                                                              "multi_turn_base", "format_sensitivity", "no_such")],
    (["--format", "xml"], "--format must be auto, qa or bfcl"),
    (["--tool-choice", "always"], "--tool-choice must be auto, required or none"),
])
def test_eval_on_bfcl_refuses_bad_options(tmp_path: Path, syn: Path, args: list[str], says: str) -> None:
    from council.evaluation.bfcl import download_wheel
    from council.evaluation.dataset import DatasetError

    try:
        wheel = download_wheel()
    except DatasetError as exc:
        pytest.skip(f"the bfcl-eval wheel cannot be downloaded: {exc}")
    policy = tmp_path / "policy.yaml"
    policy.write_text(council_policy(syn))
    result = run_cli("eval", str(policy), "trio", str(wheel), *args)
    assert result.returncode == 2 and says in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


def test_a_resumed_record_asks_again_the_items_a_seat_did_not_answer(tmp_path: Path) -> None:
    """An item where a seat timed out (a member's hiccup) was kept in --record and never asked again, so a run a
    member's restart interrupted could not be completed: every resume scored that seat wrong on it. It is asked
    again, every seat, and its line replaced: the file keeps one line per item."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"m": {"remote": {"model": "openai/x"}}},
                                  {"trio": {"members": [{"model": "m", "name": n} for n in "abc"],
                                            "vote": {"strategy": "majority", "extract": "text"}}}))
    data = write(tmp_path / "data.jsonl", [{"question": "q0", "answer": "x"}, {"question": "q1", "answer": "y"}])
    seats = [{"member": "a", "model": "m", "status": "ok", "text": "x"},
             {"member": "b", "model": "m", "status": "ok", "text": "x"},
             {"member": "c", "model": "m", "status": "ok", "text": "z"}]
    complete = {"index": 0, "line": 1, "question": "q0", "reference": "x", "wall_ms": 1.0, "answers": seats}
    hiccup = {"index": 1, "line": 2, "question": "q1", "reference": "y", "wall_ms": 1.0, "error": None,
              "answers": [{**seats[0], "text": "n"}, {"member": "b", "model": "m", "status": "timeout", "text": None,
                                                      "error": "no answer within the council's 60s"},
                          {**seats[2], "text": "n"}]}
    record = write(tmp_path / "r.jsonl", [complete, hiccup])
    first_line = record.read_text().splitlines()[0]
    answered = json.dumps({**CHAT, "council": {"members": [
        {"name": n, "model": "m", "status": "ok", "answer": "y", "latency_ms": 5.0} for n in "abc"]}}).encode()
    posted: list[dict] = []
    report = tmp_path / "report.json"
    with stub_router(200, "application/json", answered, posted) as url:
        result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", url,
                         "--json", str(report))
        assert result.returncode == 0, result.stderr
        assert [body["messages"][-1]["content"] for body in posted] == ["q1"]  # the item, every seat of it
        assert f"asking 1 item of {record} again, where a seat did not answer (timed out or failed): 1" \
            in result.stdout
        lines = record.read_text().splitlines()
        assert len(lines) == 2 and lines[0] == first_line  # replaced, not appended beside the old answers
        again = json.loads(lines[1])
        assert again["index"] == 1 and [(a["member"], a["status"], a["text"]) for a in again["answers"]] == [
            ("a", "ok", "y"), ("b", "ok", "y"), ("c", "ok", "y")]
        doc = json.loads(report.read_text())
        assert [(m["name"], m["correct"]) for m in doc["members"]] == [("a", 2), ("b", 2), ("c", 1)]
        # Complete now: the next resume asks nothing and leaves the file as it is.
        before = record.read_text()
        result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", url)
        assert result.returncode == 0, result.stderr
        assert len(posted) == 1 and record.read_text() == before and "asking" not in result.stdout


def remote_trio(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_yaml({"m": {"remote": {"model": "openai/x"}}},
                                  {"trio": {"members": [{"model": "m", "name": n} for n in "abc"],
                                            "vote": {"strategy": "confidence", "extract": "text"}}}))
    return policy


@pytest.mark.parametrize(("changed", "says"), [
    ({"weight": float("nan")}, "answers.1.weight: Input should be a finite number"),
    ({"weight": 0}, "answers.1.weight: Input should be greater than 0"),
    ({"latency_ms": -5.0}, "answers.1.latency_ms: Input should be greater than or equal to 0"),
    ({"confidence": 1.5}, "answers.1.confidence: Input should be less than or equal to 1"),
    ({"signals": {"tail": -1.0, "answer": 0.5, "reply": 0.5}},
     "answers.1.signals.tail: Input should be greater than or equal to 0"),
    ({"logprob": 0.5}, "answers.1.logprob: Input should be less than or equal to 0"),
    ({"tool_calls": [{"type": "function", "function": "f"}]},
     "answers.1.tool_calls: Value error, a tool call's `function` must be an object"),
], ids=["NaN weight", "zero weight", "negative latency", "confidence over 1", "negative signal", "positive logprob",
        "function a string"])
def test_a_record_of_values_no_council_writes_is_not_a_record(tmp_path: Path, changed: dict[str, object],
                                                             says: str) -> None:
    # Such a line validated (only types were checked), then scoring it died in the vote: a traceback, exit 1, no
    # report. Nothing listens at the URL: nothing is asked, every item being recorded.
    policy = remote_trio(tmp_path)
    data = write(tmp_path / "data.jsonl", [{"question": "q0", "answer": "x"}, {"question": "q1", "answer": "y"}])
    seats = [{"member": n, "model": "m", "status": "ok", "text": "x", "confidence": 0.5,
              "signals": {"tail": 0.5, "answer": 0.5, "reply": 0.5}} for n in "abc"]
    first = {"index": 0, "line": 1, "question": "q0", "reference": "x", "wall_ms": 1.0, "answers": seats}
    second = {**first, "index": 1, "line": 2, "question": "q1", "reference": "y",
              "answers": [seats[0], {**seats[1], **changed}, seats[2]]}
    record = write(tmp_path / "r.jsonl", [first, second])
    report = tmp_path / "report.json"
    result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", "http://127.0.0.1:9",
                     "--json", str(report))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {record}:2: not a record ({says}") and \
        result.stderr.strip().count("\n") == 0, result.stderr
    assert not report.exists()
    # The same answers with the values a council writes are scored (0 confidence: the router rounds to 6 places).
    write(record, [first, {**second, "answers": [seats[0], {**seats[1], "confidence": 0.0}, seats[2]]}])
    result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", "http://127.0.0.1:9",
                     "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["items"] == 2


def test_recorded_tool_calls_of_any_shape_or_depth_are_graded_not_a_crash(tmp_path: Path) -> None:
    # Arguments nested deeper than the JSON decoder's stack (a degenerate reply, which a live run records) raised
    # RecursionError out of the grader: a traceback, exit 1, no report. They are a decoder failure, as BFCL has it.
    policy = remote_trio(tmp_path)
    data = tmp_path / "BFCL_v4_simple_python.json"
    (tmp_path / "possible_answer").mkdir()
    data.write_text(json.dumps({"id": "simple_python_0", "question": [[{"role": "user", "content": "area?"}]],
                                "function": [{"name": "area", "parameters": {
                                    "type": "dict", "properties": {"base": {"type": "integer"}},
                                    "required": ["base"]}}]}) + "\n")
    (tmp_path / "possible_answer" / data.name).write_text(
        json.dumps({"id": "simple_python_0", "ground_truth": [{"area": {"base": [10]}}]}) + "\n")

    def called(arguments: object) -> dict[str, object]:
        return {"type": "function", "function": {"name": "area", "arguments": arguments}}

    answers = [called("[" * 3000 + "]" * 3000), called('{"base": ' + "[" * 3000 + "]" * 3000 + "}"),
               called(json.dumps({"base": 10}))]
    reference = json.dumps([{"area": {"base": [10]}}], separators=(",", ":"))
    seats = [{"member": n, "model": "m", "status": "ok", "text": "", "tool_calls": [call]}
             for n, call in zip("abc", answers, strict=True)]
    record = write(tmp_path / "r.jsonl", [{"index": 0, "line": 1, "question": "area?", "reference": reference,
                                           "wall_ms": 1.0, "item_id": "simple_python_0", "category": "simple_python",
                                           "answers": seats}])
    report = tmp_path / "report.json"
    result = run_cli("eval", str(policy), "trio", str(data), "--record", str(record), "--url", "http://127.0.0.1:9",
                     "--json", str(report))
    assert result.returncode == 0, result.stderr
    doc = json.loads(report.read_text())
    assert [(m["name"], m["categories"][-1]["correct"]) for m in doc["members"]] == [("a", 0), ("b", 0), ("c", 1)]
