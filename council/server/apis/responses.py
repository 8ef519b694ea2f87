"""The OpenAI Responses API (`POST /v1/responses`), translated to and from the chat form the engine takes.

The request is read as pydantic models, written as `server.requests` writes the chat one: strict types, what a
council cannot honour refused with a clear 400 (hosted tools, `background`, conversations, stored prompts), unknown
fields passed to the members untouched. `to_chat` turns it into a chat body (instructions → a system message, input
items → messages, function tools → chat's nested shape); `output_items`, `response_object` and `stream_events` write a
council's answer back as Responses `output` items and the event sequence the SDKs read; `StreamFixer` completes
llama-server's own Responses stream (sequence numbers, output and content indexes, `function_call_arguments.done`).

Written here rather than taken from litellm: its Responses⇄chat transformation is an internal, experimental
module that changes between releases, its stream wrapper expects litellm's own objects, and it costs ~3 s of
import on a router that otherwise never loads litellm.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from council.server.requests import (
    BadRequest,
    CouncilOptions,
    check_tool_choice,
    check_tool_names,
    check_tool_schema,
    deepest,
    location,
    message_of,
)
from council.voting.engine import with_system

Status = Literal["completed", "incomplete", "failed", "in_progress"]


class _Open(BaseModel):
    # Strict types (no "0.7" for a number), unknown keys kept: members may understand them.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class InputText(_Open):
    type: Literal["input_text"]
    text: str


class OutputText(_Open):
    type: Literal["output_text"]
    text: str


class Refusal(_Open):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None

    @model_validator(mode="after")
    def _has_a_source(self) -> InputImage:
        if not self.image_url:
            raise ValueError("an input_image needs `image_url` (a URL or a data: URL); file ids are OpenAI's own")
        return self


class InputFile(_Open):
    type: Literal["input_file"]


Part = Annotated[InputText | OutputText | Refusal | InputImage | InputFile, Field(discriminator="type")]


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]

    @model_validator(mode="after")
    def _parts_fit_the_role(self) -> MessageItem:
        if isinstance(self.content, list):
            allowed = (OutputText, Refusal) if self.role == "assistant" else (
                (InputText,) if self.role in ("system", "developer") else (InputText, InputImage, InputFile))
            wrong = [p.type for p in self.content if not isinstance(p, allowed)]
            if wrong:
                raise ValueError(f"a {self.role} message cannot hold {wrong[0]} parts")
        return self


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[Part]


class ReasoningItem(_Open):
    """A reasoning item an agent sends back: members are not shown another model's thoughts (it is dropped)."""

    type: Literal["reasoning"]


def _item_type(value: Any) -> str:
    # A message may come without `type` ({"role": "user", "content": "hi"}, the SDKs' "easy" input message).
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else "message"


Item = Annotated[Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                 | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                 | Annotated[ReasoningItem, Tag("reasoning")], Discriminator(_item_type)]


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _parameters_are_a_schema(self) -> FunctionTool:
        # Checked here, where the tool is flat: the chat body it becomes would name `function.parameters`.
        check_tool_schema("parameters", self.name, self.parameters)
        return self


class ToolChoiceFunction(_Open):
    type: Literal["function"]
    name: str


class ToolChoiceAllowed(_Open):
    """`allowed_tools`: the model may call only these of the declared tools (`mode`: may, or must)."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[ToolChoiceFunction] = Field(min_length=1)


class TextFormatText(_Open):
    type: Literal["text"]


class TextFormatJsonObject(_Open):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Open):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Open):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema,
                      Field(discriminator="type")] | None = None


# What the router consumes or translates itself; every other field passes to the members as the client sent it.
OWN_FIELDS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "stream", "stream_options", "previous_response_id", "store", "text", "reasoning",
    "metadata", "include", "truncation", "background", "conversation", "council", "user", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "context_management", "service_tier",
    "max_tool_calls", "top_logprobs", "prompt", "personality"})


class ResponsesRequest(_Open):
    """POST /v1/responses (and /v1/responses/input_tokens, where `model` and `input` are what count)."""

    model: str = Field(min_length=1)
    input: str | Annotated[list[Item], Field(min_length=1)]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceAllowed | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    store: bool | None = None
    text: TextConfig | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None  # a prompt template stored at OpenAI: refused (check)
    council: CouncilOptions | None = None
    user: str | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def has_media(self) -> bool:
        """Whether an input message or a tool's output carries an image (a model without a projector cannot read
        it)."""
        def parts(item: Any) -> str | list[Any]:
            return item.content if isinstance(item, MessageItem) else (
                item.output if isinstance(item, FunctionCallOutputItem) else "")

        return not isinstance(self.input, str) and any(
            not isinstance(parts(item), str) and any(isinstance(part, InputImage) for part in parts(item))
            for item in self.input)

    def check(self) -> None:
        """What a field alone cannot say."""
        if self.background:
            raise BadRequest("`background: true` is not supported: council answers while the request is open "
                             "(stream it instead)", "unsupported_background")
        if self.conversation is not None:
            raise BadRequest("`conversation` is not supported: continue with `previous_response_id`",
                             "unsupported_conversation")
        if self.prompt is not None:
            # its instructions and variables live on OpenAI's servers: members would be asked the input alone
            raise BadRequest("`prompt` (a stored prompt template) is not supported: the router stores no prompts; "
                             "send its text as `instructions` and `input`", "unsupported_prompt")
        check_tool_names([t.name for t in self.tools or ()])
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto"):
            return
        declared = [t.name for t in self.tools or ()]
        if isinstance(choice, ToolChoiceAllowed):
            for allowed in choice.tools:
                check_tool_choice(f"allowing {allowed.name!r}", allowed.name, declared)
            return
        named = choice.name if isinstance(choice, ToolChoiceFunction) else None
        check_tool_choice(repr(choice) if named is None else f"naming {named!r}", named, declared)

    @property
    def stored(self) -> bool:
        """OpenAI stores a response unless `store: false`."""
        return self.store is not False


def validate_responses(body: Any) -> ResponsesRequest:
    """The body as a `ResponsesRequest`, or BadRequest naming the first problem (and how many more there are)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_body")
    tools = body.get("tools")
    for n, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise BadRequest(f"tools.{n}: only function tools are supported (not {kind!r}: OpenAI's hosted tools "
                             "run on OpenAI's servers)", "unsupported_tool")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "allowed_tools"):
        # else each object form's own problems, one named by its class (`ToolChoiceAllowed.tools`)
        raise BadRequest(f"tool_choice: type {choice.get('type')!r} is not supported: `none`, `auto`, `required`, "
                         "{type: function, name} or {type: allowed_tools, mode, tools}", "invalid_tool_choice")
    try:
        validated = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        # `input` is a string or a list: the deepest error is the one about what the client meant to send
        first = deepest(errors)
        loc = location(first)
        field = loc[0] if loc else "body"
        if field == "model":
            raise BadRequest("`model` is required: a council or model name (see GET /v1/models)",
                             "missing_model") from None
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise BadRequest(f"{'.'.join(loc) or 'body'}: {message_of(first)}{more}", f"invalid_{field}") from None
    validated.check()
    return validated


# Documented for clients and fuzzers; `ResponsesRequest` is what checks a body.
REQUEST_SCHEMA: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "description": "a council or model name (GET /v1/models)"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "previous_response_id": {"type": "string"},
        "store": {"type": "boolean"},
    }}}}}


# ---- request: Responses → chat ------------------------------------------------------------------------------


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as a list of items, as the client sent them (a string is one user message)."""
    given = body.get("input")
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return list(given or [])


def _text_of(parts: str | list[Any]) -> str:
    if isinstance(parts, str):
        return parts
    return "\n".join(p.text if isinstance(p, InputText | OutputText) else p.refusal if isinstance(p, Refusal)
                     else "" for p in parts)


def _chat_part(part: Any) -> dict[str, Any]:
    if isinstance(part, InputImage):
        url: dict[str, Any] = {"url": part.image_url, **({"detail": part.detail} if part.detail else {})}
        return {"type": "image_url", "image_url": url}
    if isinstance(part, InputFile):
        return {"type": "file", "file": {k: v for k, v in part.model_dump().items() if k != "type"}}
    return {"type": "text", "text": _text_of([part])}


def _chat_content(parts: str | list[Any]) -> str | list[dict[str, Any]]:
    """A message's content or a tool's output in chat's words: text as one string, else every part (an image or a
    file is a part of its own, so a model that cannot read it refuses the request rather than lose it)."""
    if isinstance(parts, str) or all(isinstance(p, InputText | OutputText | Refusal) for p in parts):
        return _text_of(parts)
    return [_chat_part(p) for p in parts]


def chat_messages(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Input items as chat messages: a run of `function_call` items is one assistant turn with its calls (added to
    the assistant's text just before it), each `function_call_output` a tool message; reasoning items are dropped."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _chat_content(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str | None):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _chat_content(item.output)})
    return messages


def to_chat(request: ResponsesRequest, body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat body a council is asked: the stored conversation (`history`, from `previous_response_id`), then
    the instructions as the leading system message and the input; tools, tool_choice and sampling in chat's
    names; every field the Responses API does not define, as the client sent it."""
    items = [*_parse_items(history), *(request.input if isinstance(request.input, list) else
                                        [MessageItem(role="user", content=request.input)])]
    messages = chat_messages(items)
    if not messages:  # else chat's own words: "messages: List should have at least 1 item"
        raise BadRequest("input: no message a council can be asked (reasoning items alone are dropped)",
                         "empty_input")
    if request.instructions:  # ahead of a leading system or developer message, in it: one system message
        messages = with_system(messages, request.instructions, before=True)
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    chat.update(model=request.model, messages=messages)
    if request.tools:
        chat["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True,
                                                                       by_alias=True)} for t in request.tools]
    if isinstance(request.tool_choice, ToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
    elif isinstance(request.tool_choice, ToolChoiceAllowed):  # members are offered the allowed tools alone
        allowed = {t.name for t in request.tool_choice.tools}
        chat["tools"] = [t for t in chat["tools"] if t["function"]["name"] in allowed]
        chat["tool_choice"] = request.tool_choice.mode
    elif request.tool_choice is not None:
        chat["tool_choice"] = request.tool_choice
    for name, value in (("parallel_tool_calls", request.parallel_tool_calls), ("max_tokens", request.max_output_tokens),
                        ("temperature", request.temperature), ("top_p", request.top_p)):
        if value is not None:
            chat[name] = value
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, TextFormatJsonSchema):
        chat["response_format"] = {"type": "json_schema", "json_schema": fmt.model_dump(
            exclude={"type"}, exclude_none=True, by_alias=True)}
    elif isinstance(fmt, TextFormatJsonObject):
        chat["response_format"] = {"type": "json_object"}
    if request.council is not None:
        chat["council"] = request.council.model_dump()
    return chat


def _parse_items(raw: list[dict[str, Any]]) -> list[Any]:
    """Stored items (input and output) as models; output messages and calls read as input items do. A model's
    own output may hold items a council cannot read (a call without `call_id`, a built-in tool's item): a 400
    naming the first, never a 500."""
    if not raw:
        return []
    try:
        return list(ResponsesRequest.model_validate({"model": "-", "input": raw}).input)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = deepest(errors)
        where = location(first)
        index = int(where[1]) if len(where) > 1 and where[1].isdigit() else None
        item = raw[index] if index is not None and index < len(raw) else None
        if not isinstance(item, dict):
            kind, why = "an item", "not an object"
        elif first.get("type") == "union_tag_invalid":  # a type no council reads
            kind, why = f"a `{item.get('type')}` item", "a council reads message, function_call, " \
                "function_call_output and reasoning items"
        else:
            kind, why = f"a `{item.get('type', 'message')}` item", f"{'.'.join(where[3:]) or 'it'}: {first.get('msg')}"
        raise BadRequest(f"previous_response_id: the stored conversation holds {kind} a council cannot read "
                         f"({why}); continue it on the model that answered it, or send the conversation as `input`",
                         "invalid_previous_response") from None


def for_model(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The body relayed to a model's llama-server: the stored conversation before the input (llama-server has no
    `previous_response_id`), without the router's own fields. A named function in `tool_choice` becomes that
    tool alone, `required`, as `for_members` does for chat (llama-server reads `tool_choice` only as a string,
    and the object quietly became `auto` over every tool); `allowed_tools`, those tools alone, in its mode."""
    relayed = {k: v for k, v in body.items() if k not in ("previous_response_id", "store", "council")}
    if history:
        relayed["input"] = [*history, *input_items(body)]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "allowed_tools"):  # `allowed_tools` too: the allowed tools alone, as its mode says
        names = {choice.get("name")} if kind == "function" else {t.get("name") for t in choice.get("tools") or ()}
        relayed["tools"] = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("name") in names]
        relayed["tool_choice"] = "required" if kind == "function" else choice.get("mode")
    return relayed


# ---- answer: chat → Responses -------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(message: dict[str, Any], incomplete: bool = False) -> list[dict[str, Any]]:
    """A chat assistant message as Responses output: a `message` item with its text (when it has text, or
    nothing else), then one `function_call` item per call (`call_id` is the chat call's id)."""
    content = message.get("content")
    text = content if isinstance(content, str) else _chat_text(content)
    calls = message.get("tool_calls") or []
    items: list[dict[str, Any]] = []
    if text or not calls:
        items.append({"id": new_id("msg"), "type": "message", "role": "assistant",
                      "status": "incomplete" if incomplete else "completed",
                      "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    for call in calls:
        fn = call.get("function") or {}
        arguments = fn.get("arguments")
        items.append({"id": new_id("fc"), "type": "function_call", "status": "completed",
                      "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "",
                      "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments or {})})
    return items


def _chat_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    """Token counts in the Responses names (`input_tokens` include the cached ones)."""
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def echo(request: ResponsesRequest) -> dict[str, Any]:
    """The request's settings a Response object repeats (the SDKs' `Response` model has them)."""
    choice = request.tool_choice
    return {"instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {}, "model": request.model,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id, "store": request.stored,
            "temperature": request.temperature, "top_p": request.top_p,
            "text": request.text.model_dump(exclude_none=True, by_alias=True)
            if request.text is not None and request.text.format is not None else {"format": {"type": "text"}},
            "tool_choice": choice.model_dump() if isinstance(choice, BaseModel) else choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in request.tools or ()],
            "truncation": request.truncation or "disabled", "reasoning": {"effort": None, "summary": None},
            "error": None, "incomplete_details": None, "object": "response"}


def response_object(response_id: str, request: ResponsesRequest, created_at: int, status: Status,
                    output: list[dict[str, Any]], usage_: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A Response object; `extra` adds fields (`council`, `error`)."""
    doc: dict[str, Any] = {**echo(request), "id": response_id, "created_at": created_at, "status": status,
                           "output": output, "usage": usage_}
    if status == "incomplete":
        doc["incomplete_details"] = {"reason": "max_output_tokens"}
    if status in ("completed", "incomplete"):
        doc["completed_at"] = int(time.time())
    doc.update(extra)
    return doc


def item_events(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that stream `output` whole (the answer is decided before it is written: one delta each),
    without sequence numbers: added, content part, text delta and done, or arguments delta and done, item done."""
    events: list[dict[str, Any]] = []
    for index, item in enumerate(output):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "content": []}})
            for n, part in enumerate(item["content"]):
                text = part.get("text", "")
                events.append({"type": "response.content_part.added", **at, "content_index": n,
                               "part": {**part, "text": ""}})
                if text:
                    events.append({"type": "response.output_text.delta", **at, "content_index": n, "delta": text,
                                   "logprobs": []})
                events.append({"type": "response.output_text.done", **at, "content_index": n, "text": text,
                               "logprobs": []})
                events.append({"type": "response.content_part.done", **at, "content_index": n, "part": part})
        else:
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "arguments": ""}})
            if item["arguments"]:
                events.append({"type": "response.function_call_arguments.delta", **at, "delta": item["arguments"]})
            events.append({"type": "response.function_call_arguments.done", **at, "name": item["name"],
                           "arguments": item["arguments"]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def sse(event: dict[str, Any]) -> bytes:
    """One Responses event as server-sent: the `event:` line names its type, as OpenAI sends it."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class EventNumbers:
    """Numbers events in the order they are sent (`sequence_number`, which the SDKs use to resume)."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = self.next
        self.next += 1
        return sse(event)


# ---- llama-server's own Responses answers, completed -------------------------------------------------------


def complete_response(doc: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """A Response object from llama-server with the fields it leaves out (the request's settings, `output` on a
    lifecycle event) filled in; what it wrote is kept."""
    for key, value in echo(request).items():
        doc.setdefault(key, value)
    doc.setdefault("output", [])
    doc.setdefault("created_at", int(time.time()))
    for item in doc["output"]:
        if isinstance(item, dict):
            item.setdefault("status", "completed")
    return doc


class StreamFixer:
    """llama-server's Responses events as the SDKs read them: it sends no `sequence_number`, no output or content
    indexes and no `function_call_arguments.done`, and its lifecycle events carry a bare response. `fix` takes
    one event's data and returns the events to send (numbered); `final` is the completed response, once seen."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.number = EventNumbers()
        self.indexes: dict[str, int] = {}  # item id -> output_index
        self.arguments_done: set[str] = set()
        self.response_id: str | None = None
        self.final: dict[str, Any] | None = None
        self.failed = False

    def fix(self, data: Any) -> list[bytes]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        events: list[dict[str, Any]] = []
        if kind is None and isinstance(data.get("error"), dict):  # the server's error, in OpenAI's chat shape
            return [self.number(e) for e in self.failure(str(data["error"].get("message") or "member error"),
                                                         str(data["error"].get("code") or "member_error"))]
        if not isinstance(kind, str):
            return []
        if self.response_id is None and kind != "response.created":
            events += self._opening(str((data.get("response") or {}).get("id") or new_id("resp")))
        if isinstance(data.get("response"), dict):
            response = complete_response(data["response"], self.request)
            if kind == "response.created":
                self.response_id = response.get("id")
            if kind == "response.completed":
                self.final = response
        item = data.get("item") if isinstance(data.get("item"), dict) else None
        if kind == "response.output_item.added" and item is not None:
            data["output_index"] = self.indexes.setdefault(str(item.get("id")), len(self.indexes))
        elif kind == "response.output_item.done" and item is not None:
            item.setdefault("status", "completed")
            index = data["output_index"] = self.indexes.setdefault(str(item.get("id")), len(self.indexes))
            if item.get("type") == "function_call" and item.get("id") not in self.arguments_done:
                events.append({"type": "response.function_call_arguments.done", "item_id": item.get("id"),
                               "output_index": index, "name": item.get("name"), "arguments": item.get("arguments")})
        elif "item_id" in data:
            data.setdefault("output_index", self.indexes.get(str(data["item_id"]), 0))
            if kind.startswith(("response.content_part.", "response.output_text.", "response.reasoning_text.")):
                data.setdefault("content_index", 0)
            if kind.startswith("response.output_text."):
                data.setdefault("logprobs", [])
            part = data.get("part")
            if isinstance(part, dict) and part.get("type") == "output_text":
                part.setdefault("annotations", [])
                part.setdefault("logprobs", [])
            if kind == "response.function_call_arguments.done":
                self.arguments_done.add(str(data["item_id"]))
        events.append(data)
        return [self.number(e) for e in events]

    def _opening(self, response_id: str) -> list[dict[str, Any]]:
        """`response.created` and `response.in_progress`, when the server's stream did not open with them."""
        self.response_id = response_id
        bare = complete_response({"id": response_id, "status": "in_progress"}, self.request)
        return [{"type": "response.created", "response": bare},
                {"type": "response.in_progress", "response": dict(bare)}]

    def failure(self, message: str, code: str) -> list[dict[str, Any]]:
        """An `error` event and `response.failed`, the way a Responses stream ends on an error."""
        self.failed = True
        events = [] if self.response_id is not None else self._opening(new_id("resp"))
        failed = complete_response({"id": self.response_id, "status": "failed",
                                    "error": {"code": code, "message": message}}, self.request)
        return [*events, {"type": "error", "code": code, "message": message, "param": None},
                {"type": "response.failed", "response": failed}]


def events_of(buffer: bytes) -> tuple[list[Any], bytes]:
    """The JSON data of each whole server-sent event in `buffer`, and the rest (an event cut between chunks);
    comments and `[DONE]` are dropped."""
    found: list[Any] = []
    buffer = buffer.replace(b"\r\n", b"\n")
    while b"\n\n" in buffer:
        event, buffer = buffer.split(b"\n\n", 1)
        data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if data and data != b"[DONE]":
            try:
                found.append(json.loads(data))
            except ValueError:
                continue
    return found, buffer
