"""`council ask` and `council tally`: one question to a running router, and a vote re-run on recorded answers."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from council.cli.console import app, bad_url, err, fail, out, wait_seconds


@app.command()
def ask(
    council_name: Annotated[str, typer.Argument(metavar="COUNCIL", help="A council (or model) name.")],
    prompt: Annotated[str, typer.Argument(help="The question.")],
    url: Annotated[str, typer.Option(help="The router's base URL.")] = "http://127.0.0.1:8080",
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.", callback=wait_seconds)] = 300.0,
) -> None:
    """Ask a running `council serve` one question; the API key comes from $COUNCIL_API_KEY."""
    import os

    import httpx

    if (problem := bad_url(url)) is not None:  # as `council eval --url` is: bad input, where it was "cannot reach"
        raise fail(f"--url {url}: {problem}", 2)
    headers = {"Authorization": f"Bearer {os.environ['COUNCIL_API_KEY']}"} if os.environ.get("COUNCIL_API_KEY") else {}
    body = {"model": council_name, "messages": [{"role": "user", "content": prompt}]}
    try:
        reply = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}: {exc}", 1) from None
    try:
        doc = reply.json()
    except ValueError:
        raise fail(f"{url} answered {reply.status_code} with a body that is not JSON", 1) from None
    if reply.status_code != 200:
        error = doc.get("error") if isinstance(doc, dict) else None  # a proxy's may be a string
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
        raise fail(f"{reply.status_code}: {message or reply.text[:200]}", 1)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    out.print(_reply_text(doc, url), highlight=False, markup=False)
    info = doc.get("council")
    if isinstance(info, dict):  # a plain model's answer has none; another service's may have anything
        agreement = info.get("agreement")
        err.print(f"[dim]{info.get('council')}: answer {info.get('answer')!r}, agreement "
                  f"{f'{agreement:.0%}' if isinstance(agreement, int | float) else '?'}, "
                  f"{'degraded, ' if info.get('degraded') else ''}{'early stop, ' if info.get('early_stop') else ''}"
                  f"id {doc.get('id')}[/dim]", highlight=False, soft_wrap=True)  # one line (a pipe is 80 wide)


def _reply_text(doc: object, url: str) -> str:
    """A chat completion's first choice's text, or exit 1: `url` answered 200 with something else (another
    service on that port, a proxy's page)."""
    choices = doc.get("choices") if isinstance(doc, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise fail(f"{url} answered 200 with a body that is not a chat completion", 1)
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _ballot_number(value: object, where: str, rule: str, ok: Callable[[float], bool]) -> float:
    """A ballot's number as the vote reads it, or exit 2 naming the field: a JSON number (not a boolean, not a
    string), finite (Python's json reads `NaN` and `Infinity`, and a 400-digit integer overflows), and `ok`."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            number = float(value)
    if number is None or not math.isfinite(number) or not ok(number):
        shown = repr(value)
        rule = "a finite number" if number is not None and not math.isfinite(number) else rule
        raise fail(f"{where} must be {rule}, not {shown if len(shown) <= 40 else shown[:37] + '...'}", 2)
    return number


def _check_tool_choice(ballot: str, choice: object, declared: list[str]) -> None:
    """A ballot's `tool_choice` as a live request's is checked (council.server.requests): Toolbox reads any other
    value as `auto`, and a name the tools lack made every seat abstain, which read as the members' fault."""
    if choice is None or choice in ("none", "auto", "required"):
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise fail(f"{ballot}: `tool_choice` must be none, auto, required or {{\"type\": \"function\", "
                   f"\"function\": {{\"name\": NAME}}}}, not {choice!r}", 2)
    from council.server.requests import BadRequest, check_tool_choice

    try:
        check_tool_choice(f"naming {name!r}", name, declared)  # the rule every API applies, in its words
    except BadRequest as exc:
        raise fail(f"{ballot}: {exc}", 2) from None


@app.command()
def tally(
    ballot: Annotated[str, typer.Argument(help="A recorded ballot (JSON), e.g. from /v1/ballots/ID.")],
    strategy: Annotated[str | None, typer.Option(help="Override the ballot's strategy.")] = None,
    extract: Annotated[str | None, typer.Option(help="Override the ballot's extractor.")] = None,
    tool_vote: Annotated[str | None, typer.Option(help="With `tools` in the ballot: override its tool vote "
                                                  "(`set` or `per_argument`).")] = None,
    recover_tool_calls: Annotated[bool | None, typer.Option(
        "--recover-tool-calls/--no-recover-tool-calls",
        help="With `tools` in the ballot: override whether calls written as text count.")] = None,
) -> None:
    """Re-run the vote on recorded answers and print the decision as JSON (the code live councils use)."""
    from council.voting.extract import ExtractError, extract_cut, parse_extractor
    from council.voting.tools import ToolAnswer, Toolbox, ToolDecision, ballot_text, decide_tools, read_answer
    from council.voting.vote import STRATEGIES, Ballot, Decision, VoteError, decide

    try:
        doc = json.loads(Path(ballot).read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"{ballot}: cannot read the ballot: {exc}", 2) from None
    except RecursionError:  # JSON nested deeper than the decoder's stack: bad input, as invalid JSON is
        raise fail(f"{ballot}: cannot read the ballot: nested too deeply", 2) from None
    answers = doc.get("answers") if isinstance(doc, dict) else None
    if not isinstance(answers, list) or not answers:
        raise fail(f"{ballot}: `answers` must be a non-empty list of {{member, text}}", 2)
    how = extract or doc.get("extract") or "auto"
    if not isinstance(how, str):
        raise fail(f"{ballot}: `extract` must be a string (auto, number, choice, text, regex:...), not {how!r}", 2)
    chosen = strategy or doc.get("strategy") or "majority"
    if chosen not in STRATEGIES:
        raise fail(f"unknown strategy {chosen!r}: use {', '.join(STRATEGIES)}", 2)
    try:
        extractor = parse_extractor(how)
    except ExtractError as exc:
        raise fail(f"bad extractor {how!r}: {exc}", 2) from None
    tools = doc.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise fail(f"{ballot}: `tools` must be a list of tool objects, as the request declared them", 2)
    for i, tool in enumerate(tools or ()):
        # As a live request is refused (council.server.requests.FunctionDef): a hand-made ballot must match it.
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise fail(f"{ballot}: tools[{i}] needs a `function` with a `name`, as the request declared it", 2)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise fail(f"{ballot}: tools[{i}]: `function.parameters` must be a JSON Schema object, not "
                       f"{parameters!r}", 2)
    rules = doc.get("tie_break") or ["weight", "latency", "order"]
    if not (isinstance(rules, list) and all(isinstance(r, str) for r in rules)):
        raise fail(f"{ballot}: `tie_break` must be a list of rules (weight, latency, order...), not {rules!r}", 2)
    if tools:
        _check_tool_choice(ballot, doc.get("tool_choice"), [t["function"]["name"] for t in tools])
    toolbox = Toolbox(tools, doc.get("tool_choice"), doc.get("parallel_tool_calls") is not False) if tools else None
    mode = tool_vote or doc.get("tool_vote_mode") or "set"
    if mode not in ("set", "per_argument"):
        raise fail(f"unknown tool vote {mode!r}: use set or per_argument", 2)
    recorded_recover = doc.get("recover_tool_calls")
    if recorded_recover is not None and not isinstance(recorded_recover, bool):
        # `"no"` read as true (anything but `false` did).
        raise fail(f"{ballot}: `recover_tool_calls` must be true or false, not {recorded_recover!r}", 2)
    recover = recover_tool_calls if recover_tool_calls is not None else recorded_recover is not False
    # Absent or null is the schema's default, 1; 0 was read as absent (`or 1.0`) and a negative T inverted the
    # confidence vote, both exit 0. The live schema's rule (VoteConfig.confidence_temperature, gt=0) holds here.
    recorded_t = doc.get("confidence_temperature")
    temperature = 1.0 if recorded_t is None else _ballot_number(
        recorded_t, f"{ballot}: `confidence_temperature`", "a positive number (T in weight x p^(1/T))",
        lambda t: t > 0)
    read: dict[str, ToolAnswer] = {}
    ballots = []
    seen: set[str] = set()
    for i, item in enumerate(answers):
        if not isinstance(item, dict) or not isinstance(item.get("member"), str):
            raise fail(f"{ballot}: answers[{i}] needs a `member` name and a `text`", 2)
        if item["member"] in seen:
            # Live ballots name each seat once; a second entry voted twice and overwrote the first's tool calls.
            raise fail(f"{ballot}: answers[{i}]: member {item['member']!r} is listed twice", 2)
        seen.add(item["member"])
        text = item.get("text")
        where = f"{ballot}: answers[{i}]:"
        # Bounded as a member's weight is (the policy's, at most 1e6): three weights of 1e308 summed to infinity, and
        # a one-vote answer won over a two-vote one.
        weight = _ballot_number(item.get("weight", 1.0), f"{where} `weight`", "a positive number up to 1e6",
                                lambda w: 0 < w <= 1e6)
        latency = None if item.get("latency_ms") is None else _ballot_number(
            item["latency_ms"], f"{where} `latency_ms`", "a number of milliseconds, 0 or more", lambda ms: ms >= 0)
        confidence = None if item.get("confidence") is None else _ballot_number(
            item["confidence"], f"{where} `confidence`", "a probability in (0, 1]", lambda p: 0 < p <= 1)
        # The mean token logprob the live tie-break `logprob` read (ballots before it was kept have none).
        logprob = None if item.get("logprob") is None else _ballot_number(
            item["logprob"], f"{where} `logprob`", "a mean token logprob, 0 or less", lambda lp: lp <= 0)
        text = text if isinstance(text, str) else None
        if toolbox is not None:  # the calls re-read and re-checked against the recorded tools, as they were live
            calls = item.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                raise fail(f"{ballot}: answers[{i}]: `tool_calls` must be a list, as the member returned them", 2)
            answer = read[item["member"]] = read_answer({"tool_calls": calls}, text, item.get("finish_reason"),
                                                        toolbox, recover)
            ballots.append(Ballot(member=item["member"], order=i, answer=answer.vote, text=ballot_text(answer, text),
                                  weight=weight, latency_ms=latency, logprob=logprob, confidence=confidence))
            continue
        # A reply cut off by max_tokens votes only with an answer it stated, as it did live.
        cut = item.get("finish_reason") == "length"
        vote = (extract_cut(text, how) if cut else extractor(text)) if text is not None else None
        ballots.append(Ballot(member=item["member"], order=i, answer=vote, text=text, weight=weight,
                              latency_ms=latency, logprob=logprob, confidence=confidence))
    try:
        # A recorded judge ballot re-votes by majority: the judge's model is not here to ask.
        voted = "majority" if chosen == "judge" else chosen
        called: ToolDecision | None = None
        if toolbox is not None:
            called = decide_tools(ballots, read, toolbox, mode=mode, strategy=voted,  # type: ignore[arg-type]
                                  tie_break=rules, temperature=temperature, how=how)
            decision = called.decision
        else:
            decision = decide(ballots, voted, rules, temperature=temperature)
    except VoteError as exc:
        if not answers or any(item.get("finish_reason") != "length" for item in answers):
            raise fail(str(exc), 2) from None
        # Every reply cut off by max_tokens: the live council answered its first seat's unfinished reply, which
        # nobody voted for (`finish_reason: length`), not this error.
        decision = Decision.unfinished(answers[0]["member"], answers[0].get("text"))
        sys.stdout.write(json.dumps({**decision.to_json(), "speaker": decision.speaker, "finish_reason": "length"},
                                    indent=2) + "\n")
        return
    except ValueError as exc:
        raise fail(f"{ballot}: {exc}", 2) from None
    order = [*rules, *([] if "order" in rules else ["order"])]
    if ("logprob" in order and decision.tie_broken_by is not None
            and order.index(decision.tie_broken_by) >= order.index("logprob")
            and any("logprob" not in item for item in answers)):
        # Said, not decided differently in silence: the ballot predates `logprob` in its answers.
        err.print(f"note: {ballot}: the tie reached tie_break `logprob`, but the ballot's answers have no `logprob` "
                  f"(recorded before it was kept): broken by {decision.tie_broken_by!r}, the live council may have "
                  "answered otherwise", highlight=False, soft_wrap=True)
    shown = {**decision.to_json(), "confidence": {b.member: b.confidence for b in ballots}}
    if called is not None:
        shown |= {"speaker": decision.speaker, "tool_vote": called.to_json(),
                  "members": {m: {**a.to_json(), **({"abstained": a.abstained} if a.abstained else {})}
                              for m, a in read.items()}}
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")
