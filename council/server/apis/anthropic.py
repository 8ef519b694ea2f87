"""The Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): its request body as pydantic models
(written as `server.requests` writes the chat one: strict types, unknown fields pass to the members), the request
translated to the chat completion the council engine takes, and the council's answer written back as a message,
whole or as Anthropic's stream of events, and errors in Anthropic's shape.

Our own translation rather than litellm's: litellm's Anthropic adapter is an "experimental" module that changes
between releases, its stream wrapper expects litellm's own response objects, and importing it costs ~3 s.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from council.server.requests import (
    ROUTER,
    BadRequest,
    CouncilOptions,
    _describe,
    check_tool_choice,
    check_tool_names,
    check_tool_schema,
    router_fields,
)
from council.voting.engine import CouncilAnswer

PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); council's own code goes in
# `error.details.error_code`, where the SDK looks for one.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 501: "api_error", 502: "api_error",
               503: "overloaded_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    if code:
        error["details"] = {"error_code": code}
    return {"type": "error", "error": error}


def from_openai_error(status: int, raw: bytes) -> dict[str, Any]:
    """A member's error (llama-server answers in OpenAI's shape, `{"error": {"message", "type", "code"}}`, also on
    its Anthropic routes) in Anthropic's."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("type") == "error" and isinstance(doc.get("error"), dict):
        return doc  # already Anthropic's
    inner = doc.get("error", doc) if isinstance(doc, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    if not isinstance(message, str):
        message = raw.decode(errors="replace").strip() or f"member answered {status}"
    return error_body(status, message, "member_error" if status >= 500 else "rejected_by_member")


# ---- the request ----------------------------------------------------------------------------------------------


class _Open(BaseModel):
    # Strict types, unknown keys kept: members may understand them (the chat request's rule).
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageSource(_Open):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ImageSource:
        if self.type == "base64" and not (self.data and self.media_type):
            raise ValueError("a base64 image source needs `media_type` and `data`")
        if self.type == "url" and not self.url:
            raise ValueError("a url image source needs `url`")
        return self

    @property
    def url_for_chat(self) -> str:
        return f"data:{self.media_type};base64,{self.data}" if self.type == "base64" else str(self.url)


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                  Field(discriminator="type")]


class MessageParam(_Open):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_in_their_turn(self) -> MessageParam:
        for block in self.content if isinstance(self.content, list) else ():
            if isinstance(block, ToolUseBlock) and self.role != "assistant":
                raise ValueError("`tool_use` blocks belong in assistant turns")
            if isinstance(block, ToolResultBlock) and self.role != "user":
                raise ValueError("`tool_result` blocks belong in user turns")
        return self


class ToolParam(_Open):
    # A tool the client runs ("custom"); Anthropic's server tools (web search, code execution...) have a type
    # of their own and no schema: council's members run none of them.
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]

    @model_validator(mode="after")
    def _input_schema_is_a_schema(self) -> ToolParam:
        # Checked here, in this API's words: the chat body it becomes would name `function.parameters`.
        check_tool_schema("input_schema", self.name, self.input_schema)
        return self


class ToolChoiceAuto(_Open):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Open):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Open):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Open):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class JsonOutputFormat(_Open):
    """Anthropic's structured output (`output_config.format`, what the SDK's `messages.parse(output_format=...)`
    sends): the answer is JSON that `schema` describes."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Open):
    format: JsonOutputFormat | None = None
    effort: str | None = None  # read by no member, as `thinking` is not


class CountTokensRequest(_Open):
    """POST /v1/messages/count_tokens: what a prompt is made of."""

    model: Annotated[str, ROUTER] = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None  # read by no member: local models think as their template says

    @field_validator("tools", mode="before")
    @classmethod
    def _client_tools_only(cls, tools: Any) -> Any:
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
                raise ValueError(f"tool {i} is {tool.get('type')!r}, one of Anthropic's server tools; council's "
                                 "members run none: declare tools with `name` and `input_schema`")
        return tools

    @property
    def has_media(self) -> bool:
        def media(block: Any) -> bool:
            return isinstance(block, ImageBlock) or (isinstance(block, ToolResultBlock) and isinstance(
                block.content, list) and any(isinstance(b, ImageBlock) for b in block.content))

        return any(isinstance(m.content, list) and any(media(b) for b in m.content) for m in self.messages)

    def check(self) -> None:
        """What a field alone cannot say: tool names are unique, and `tool_choice` must name a declared tool."""
        check_tool_names([t.name for t in self.tools or ()], "tool")
        choice = self.tool_choice
        if choice is None or isinstance(choice, ToolChoiceAuto | ToolChoiceNone):
            return
        check_tool_choice(repr(choice.type), choice.name if isinstance(choice, ToolChoiceTool) else None,
                          [t.name for t in self.tools or ()], "tool")


M = TypeVar("M", bound=CountTokensRequest)


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stream: Annotated[bool | None, ROUTER] = None
    council: Annotated[CouncilOptions | None, ROUTER] = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None

    def check(self) -> None:
        super().check()
        # here only: count_tokens is not known to refuse these, and counting a broken history harms nothing
        check_turns(self.messages)


def check_turns(messages: list[MessageParam]) -> None:
    """What Anthropic refuses of a conversation as a whole, with its words, where the members would be sent a
    broken history: a turn without content (but a final assistant one, a prefill) or a user turn with an empty text
    block, two `tool_use` blocks with one id, a `tool_use` the next user turn does not answer with its `tool_result`, a
    `tool_result` answering no `tool_use` of the turn before. Consecutive turns of one role are one turn, as
    Anthropic combines them. A final assistant turn's calls await no result."""
    last = len(messages) - 1
    called: set[str] = set()
    for i, turn in enumerate(messages):
        prefill = i == last and turn.role == "assistant"
        if not turn.content and not prefill:
            raise BadRequest(f"messages.{i}: all messages must have non-empty content except for the optional "
                             "final assistant message", "invalid_messages")
        for n, block in enumerate(_blocks(turn)):
            # An empty block reached the members as an empty turn, or a stray line break in the turn's text. Not
            # refused in an assistant turn: a council that answered nothing wrote one, and an agent sends its
            # answers back as they came (the members get the assistant turn's other blocks, or an empty turn).
            if isinstance(block, TextBlock) and not block.text and turn.role == "user":
                raise BadRequest(f"messages.{i}.content.{n}: text content blocks must be non-empty",
                                 "invalid_messages")
            # Two calls with one id: a result cannot say which it answers (the members' history pairs them by id).
            if isinstance(block, ToolUseBlock):
                if block.id in called:
                    raise BadRequest(f"messages.{i}.content.{n}: `tool_use` ids must be unique", "invalid_messages")
                called.add(block.id)
    runs: list[list[int]] = []  # the indexes of each turn's messages
    for i, turn in enumerate(messages):
        if runs and messages[runs[-1][0]].role == turn.role:
            runs[-1].append(i)
        else:
            runs.append([i])
    for before, run in zip([None, *runs], runs, strict=False):
        if messages[run[0]].role != "user":
            continue
        calls = {b.id: i for i in before or () for b in _blocks(messages[i]) if isinstance(b, ToolUseBlock)}
        results = [(i, n, b.tool_use_id) for i in run for n, b in enumerate(_blocks(messages[i]))
                   if isinstance(b, ToolResultBlock)]
        answered = {tool_use_id for _, _, tool_use_id in results}
        unanswered = [tool_use_id for tool_use_id in calls if tool_use_id not in answered]
        if unanswered:
            raise BadRequest(f"messages.{calls[unanswered[0]]}: `tool_use` ids were found without `tool_result` "
                             f"blocks immediately after: {', '.join(unanswered)}. Each `tool_use` block must have a "
                             "corresponding `tool_result` block in the next message.", "invalid_messages")
        for i, n, tool_use_id in results:
            if tool_use_id not in calls:
                raise BadRequest(f"messages.{i}.content.{n}: unexpected `tool_use_id` found in `tool_result` "
                                 f"blocks: {tool_use_id}. Each `tool_result` block must have a corresponding "
                                 "`tool_use` block in the previous message.", "invalid_messages")


def _blocks(turn: MessageParam) -> list[Any]:
    return turn.content if isinstance(turn.content, list) else []


def validate(body: Any, model: type[M]) -> M:
    """The body as `model`, or BadRequest naming the first problem (and how many more there are)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_body")
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        # Of a union's failed branches (`content`: a string, or blocks) the deepest error says what is wrong.
        first = max(errors, key=lambda e: len(e.get("loc") or ()))
        field = str((first.get("loc") or ("body",))[0])
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        if field == "model":
            raise BadRequest("`model` is required: a council or model name (see GET /v1/models)",
                             "missing_model") from None
        message = _describe(first).removeprefix("body: Value error, ").replace(": Value error, ", ": ")
        raise BadRequest(message + more, f"invalid_{field}") from None
    validated.check()
    return validated


# ---- to the chat completion the engine takes --------------------------------------------------------------

# Fields read here and written in chat's words (or dropped); every other one passes to the members as it came.
_TRANSLATED = frozenset({"messages", "system", "tools", "tool_choice", "max_tokens", "stop_sequences", "metadata",
                         "thinking", "output_config"}) | router_fields(MessagesRequest)
_BILLING = re.compile(r"^(x-anthropic-billing-header:.*?cch=)[0-9a-f]{5};")


def _system_text(text: str) -> str:
    # Claude Code's first system block carries a hash that changes every request ("...; cch=1a2b3;"): fixed here,
    # as llama-server fixes it, or no member's prompt cache would ever match past it.
    return _BILLING.sub(r"\g<1>fffff;", text)


def _parts(blocks: list[Any]) -> str | list[dict[str, Any]]:
    """Text and image blocks as chat content: one string when all are text, else content parts."""
    if all(isinstance(b, TextBlock) for b in blocks):
        return "\n".join(b.text for b in blocks)
    return [{"type": "text", "text": b.text} if isinstance(b, TextBlock)
            else {"type": "image_url", "image_url": {"url": b.source.url_for_chat}} for b in blocks]


def _tool_message(block: ToolResultBlock) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = "" if block.content is None else (
        block.content if isinstance(block.content, str) else _parts(block.content))
    if block.is_error:
        content = f"Error: {content}" if isinstance(content, str) else [{"type": "text", "text": "Error:"}, *content]
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


def _chat_messages(request: CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        system = request.system if isinstance(request.system, str) else "\n".join(b.text for b in request.system)
        messages.append({"role": "system", "content": _system_text(system)})
    for turn in request.messages:
        if isinstance(turn.content, str):
            messages.append({"role": turn.role, "content": turn.content})
            continue
        if turn.role == "user":
            # tool results answer the assistant's calls, so they come right after it; the user's own text follows
            messages += [_tool_message(b) for b in turn.content if isinstance(b, ToolResultBlock)]
            rest = [b for b in turn.content if isinstance(b, TextBlock | ImageBlock)]
            if rest or not any(isinstance(b, ToolResultBlock) for b in turn.content):
                messages.append({"role": "user", "content": _parts(rest)})
            continue
        # thinking blocks are dropped: chat has no place for them, and a member thinks anew
        text = "\n".join(b.text for b in turn.content if isinstance(b, TextBlock))
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                 for b in turn.content if isinstance(b, ToolUseBlock)]
        messages.append({"role": "assistant", "content": text or (None if calls else ""),
                         **({"tool_calls": calls} if calls else {})})
    return messages


def _chat_tools(request: CountTokensRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description is not None else {}),
            "parameters": t.input_schema}} for t in request.tools]
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceAuto):
        out["tool_choice"] = "auto"
    elif isinstance(choice, ToolChoiceAny):
        out["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceTool):
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, ToolChoiceNone):
        out["tool_choice"] = "none"
    if getattr(choice, "disable_parallel_tool_use", None):
        out["parallel_tool_calls"] = False
    return out


def count_to_chat(request: CountTokensRequest) -> dict[str, Any]:
    """The chat body a count_tokens request stands for (messages and tools), for a council to read as it reads
    the chat request it would be asked."""
    return {"model": request.model, "messages": _chat_messages(request), **_chat_tools(request)}


def to_chat(request: MessagesRequest, body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion body this Messages request asks (for `ChatRequest` to validate and a council to ask):
    system → a system message, `tool_use` blocks → the assistant's `tool_calls`, `tool_result` blocks → `tool`
    messages with the same ids, tools and `tool_choice` in chat's words, `output_config.format` → `response_format`.
    Fields Anthropic does not define pass through as they came."""
    chat: dict[str, Any] = {"model": request.model, "messages": _chat_messages(request),
                            "max_tokens": request.max_tokens, **_chat_tools(request)}
    if request.stop_sequences is not None:
        chat["stop"] = request.stop_sequences
    fmt = request.output_config.format if request.output_config is not None else None
    if fmt is not None:
        # chat's json_schema needs a name, which Anthropic's format has none of; llama-server reads only the schema
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.schema_}}
    if request.council is not None:
        chat["council"] = body["council"]
    chat.update({k: v for k, v in body.items() if k not in _TRANSLATED and k not in chat})
    return chat


def with_own_system(body: dict[str, Any], own: str | None) -> dict[str, Any]:
    """A Messages body with a member's own system prompt after the request's, in one system text (what the member
    is sent: `voting.engine.with_system`), so its prompt is counted as it is read."""
    if own is None:
        return body
    system = body.get("system")
    if isinstance(system, list):
        system = "\n".join(str(b.get("text") or "") for b in system if isinstance(b, dict))
    return {**body, "system": f"{system}\n\n{own}" if system else own}


# ---- the answer back ------------------------------------------------------------------------------------------


def message_id(answer_id: str) -> str:
    """A message id from a ballot id (`chatcmpl-HEX` → `msg_HEX`)."""
    return "msg_" + answer_id.removeprefix("chatcmpl-")


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The council's chat message as content blocks: its reasoning as a `thinking` block, its text, each tool call
    as a `tool_use` block with the call's id and its arguments parsed (a council's calls passed their schema)."""
    blocks: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    calls = message.get("tool_calls") or []
    text = message.get("content") or ""
    if text or not calls:
        blocks.append({"type": "text", "text": text})
    for call in calls:
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"),
                       "input": parsed if isinstance(parsed, dict) else {}})
    return blocks


def usage(answer: CouncilAnswer) -> dict[str, int]:
    """Usage as one model's would read (`CouncilAnswer.context_usage`; Anthropic's `input_tokens` leave out cache
    reads). Every member's tokens are in the `council` object (`usage`, and per member)."""
    prompt, cached, completion = answer.context_usage()
    return {"input_tokens": prompt - cached, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0, "output_tokens": completion}


def council_object(answer: CouncilAnswer, **extra: Any) -> dict[str, Any]:
    return {**answer.council_json(), "ballot_id": answer.id, "usage": answer.usage(), **extra}


def message_body(answer: CouncilAnswer) -> dict[str, Any]:
    """The council's answer as a Messages response, with the `council` object as an extra field."""
    return {"id": message_id(answer.id), "type": "message", "role": "assistant", "model": answer.council,
            "content": content_blocks(answer.message), "stop_reason": STOP_REASONS.get(answer.finish_reason,
                                                                                       "end_turn"),
            "stop_sequence": None, "usage": usage(answer), "council": council_object(answer)}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


PING = sse("ping", {"type": "ping"})


def stream_start(message: str, model: str) -> bytes:
    """`message_start`, sent before the council has answered (so its usage is filled in by `message_delta`)."""
    return sse("message_start", {"type": "message_start", "message": {
        "id": message, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}})


def stream_answer(answer: CouncilAnswer, **council: Any) -> list[bytes]:
    """The council's answer as Anthropic streams one, after `message_start`: each content block opened, given
    whole in one delta (`text_delta`, `thinking_delta`, `input_json_delta`) and closed, then `message_delta` with
    the stop reason, the usage and the `council` object, and `message_stop`. The SDK's stream accumulator rebuilds
    the same message as the non-streamed answer. The answer is whole once the vote is decided: cutting it finer
    would send more bytes and nothing sooner."""
    events: list[bytes] = []
    for index, block in enumerate(content_blocks(answer.message)):
        kind = block["type"]
        if kind == "text":
            opening, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            delta = {"type": "thinking_delta", "thinking": block["thinking"]}
        else:
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events.append(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": opening}))
        if delta.get("text") != "":
            events.append(sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": STOP_REASONS.get(answer.finish_reason, "end_turn"),
                                           "stop_sequence": None},
        "usage": usage(answer), "council": council_object(answer, **council)}))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def stream_error(status: int, message: str, code: str | None = None) -> bytes:
    return sse("error", error_body(status, message, code))


# ---- a relayed model's stream ---------------------------------------------------------------------------------


RELAY_ERROR_STATUS = {"member_failed": 502, "internal_error": 500}  # the relay's own error events, by code


def for_model(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body a model's llama-server is sent where it would misread `tool_choice`, else None (relayed as it came):
    its Messages translation (b11434) drops `none`, so the model was still offered every tool, and makes a named
    tool `required` over every tool, so it could call another. `none` sends no tools; a named tool, that tool
    alone, required."""
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
    if kind == "tool":
        named = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("name") == choice.get("name")]
        return {**body, "tools": named, "tool_choice": {"type": "any"}}
    return None


# llama-server (b11434) names the stop sequence that ended a reply but says `end_turn`, in this order, compact; the
# Messages API says `stop_sequence` then (agents that stop on "Observation:" branch on it). Inside a JSON string a
# quote is escaped, so only the fields themselves match.
_ENDED_BY_SEQUENCE = (b'"stop_reason":"end_turn","stop_sequence":"', b'"stop_reason":"stop_sequence","stop_sequence":"')


def stop_sequence_said(raw: bytes) -> bytes:
    """A model's own Messages answer or stream events with `stop_reason: stop_sequence` where a sequence ended it."""
    return raw.replace(*_ENDED_BY_SEQUENCE)


def normalise_event(event: bytes) -> bytes:
    """One event of a model's own Messages stream as the SDK reads it: llama-server sends an `error` event's data in
    OpenAI's shape (`{"code", "message", "type"}`), and the relay ends a stream it could not finish with an unnamed
    `data: {"error": {...}}` event (which the SDK would skip); everything else passes as it came."""
    if event.startswith(b"data: {\"error\""):
        try:
            error = json.loads(event[5:])["error"]
            message, code = str(error["message"]), str(error["code"])
        except (ValueError, KeyError, TypeError):
            return event
        return stream_error(RELAY_ERROR_STATUS.get(code, 502), message, code)
    if not event.startswith(b"event: error"):
        return event
    data = next((line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")), b"")
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}
    code = doc.get("code") if isinstance(doc, dict) else None
    return sse("error", from_openai_error(code if isinstance(code, int) else 500, data))
