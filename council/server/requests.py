"""The OpenAI request bodies council accepts, as pydantic models: what the OpenAI schema defines is checked
(roles, content as a string or parts, tools, tool_choice, response_format, sampling fields' types and
ranges), in strict mode so `"temperature": "hot"` or `"0.7"` is refused; unknown fields pass through to
the members untouched (llama-server has many of its own). A bad body is one 400 with the field and reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from council.errors import CouncilError
from council.voting.request import CouncilRequest, for_members, last_user_text
from council.voting.tools import schema_problem

Role = Literal["system", "user", "assistant", "tool", "developer"]


class BadRequest(CouncilError, ValueError):
    """A request body the API refuses; `code` names the field (`invalid_temperature`, `empty_messages`...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _RouterOnly:
    """Marks a field the router consumes itself (`Annotated[..., ROUTER]`): members are never sent it; every
    other field, unknown ones included, passes through to them as the client sent it."""

    def __repr__(self) -> str:
        return "ROUTER"


ROUTER = _RouterOnly()


class _Open(BaseModel):
    # Strict types (no "0.7" for a number), unknown keys kept: members may understand them.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageUrl(_Open):
    url: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageUrl


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(_Open):
    type: Literal["file"]
    file: dict[str, Any]


Part = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Role
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_where_needed(self) -> Message:
        # Only an assistant turn that calls tools may come without content.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs `content` (a string or a list of content parts)")
        if self.role in ("system", "developer") and isinstance(self.content, list) and any(
                not isinstance(p, TextPart) for p in self.content):
            raise ValueError(f"a {self.role} message takes text parts only")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs `tool_call_id`")
        return self

    @property
    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(not isinstance(p, TextPart) for p in self.content)


class FunctionDef(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _parameters_are_a_schema(self) -> FunctionDef:
        check_tool_schema("parameters", self.name, self.parameters)
        return self


def check_tool_schema(field: str, name: str, schema: dict[str, Any] | None) -> None:
    """A tool's JSON Schema (`field` of tool `name`, in the words of the API that declared it): a council checks
    every call against it (council.voting.tools), so a broken one is the client's to fix, a ValueError."""
    if schema is not None and (problem := schema_problem(schema)) is not None:
        raise ValueError(f"`{field}` of {name} is not a valid JSON Schema: {problem}")


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Open):
    name: str


class ToolChoiceFunction(_Open):
    type: Literal["function"]
    function: NamedFunction


class JsonSchema(_Open):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Open):
    type: Literal["text"]


class JsonObjectFormat(_Open):
    type: Literal["json_object"]


class JsonSchemaFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(_Open):
    include_usage: bool | None = None


MAX_COMPLETIONS = 128  # in one request: `n`, and a completions request's prompts × n


class _Sampling(_Open):
    model: Annotated[str, ROUTER] = Field(min_length=1)
    stream: Annotated[bool | None, ROUTER] = None
    stream_options: Annotated[StreamOptions | None, ROUTER] = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: Annotated[int | None, ROUTER] = Field(default=None, ge=1, le=MAX_COMPLETIONS)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def check(self) -> None:
        """Rules across fields, after validation (a BadRequest when one is broken)."""


class CouncilOptions(_Open):
    """council's own request options (never sent to members): `early_stop: false` waits for every member
    (what `council eval --url` asks for, so each member's answer is known)."""

    early_stop: bool = True


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    council: Annotated[CouncilOptions | None, ROUTER] = None
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @property
    def has_media(self) -> bool:
        return any(m.has_media for m in self.messages)

    def council_request(self, body: dict[str, Any], owner: str | None = None) -> CouncilRequest:
        """What a council needs, built once at the door from this validated `body`: the question, the council
        options, logprobs, tools, and the members' payload (every field but the router's own, as the client sent it);
        `owner`: the caller's key name, which its ballot keeps."""
        members = for_members({k: v for k, v in body.items() if k not in CHAT_ROUTER_FIELDS})
        return CouncilRequest(members_payload=members, question=last_user_text(body["messages"]),
                              early_stop=self.council is None or self.council.early_stop,
                              logprobs=bool(self.logprobs), tools=members.get("tools") or (), owner=owner)

    def check(self) -> None:
        """What a field alone cannot say: tool names are unique, and `tool_choice` must name a declared tool (OpenAI
        answers 400 too)."""
        check_tool_names([t.function.name for t in self.tools or ()])
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto"):
            return
        named = choice.function.name if isinstance(choice, ToolChoiceFunction) else None
        check_tool_choice(repr(choice) if named is None else f"naming {named!r}", named,
                          [t.function.name for t in self.tools or ()])


def check_tool_choice(said: str, named: str | None, declared: Sequence[str], noun: str = "function") -> None:
    """Every API's rule: a `tool_choice` that asks for a call (`said`: how the message shows it) needs declared
    tools, and one naming a tool (`named`) must name a declared one; `noun` is the API's word for a tool."""
    if not declared:
        raise BadRequest(f"`tool_choice` {said} needs `tools`: declare the {noun}s to call", "invalid_tool_choice")
    if named is not None and named not in declared:
        raise BadRequest(f"`tool_choice` names {noun} {named!r}, which `tools` does not declare "
                         f"(declared: {', '.join(declared)})", "invalid_tool_choice")


def check_tool_names(declared: Sequence[str], noun: str = "function") -> None:
    """Every API's rule (Anthropic and Gemini answer 400 too): a call names its tool, so two tools of one name
    would leave the vote to check a call against either one's schema (`noun`: the API's word for a tool)."""
    seen: set[str] = set()
    for name in declared:
        if name in seen:
            raise BadRequest(f"`tools` declares {noun} {name!r} twice: each {noun} needs a name of its own",
                             "invalid_tools")
        seen.add(name)


def router_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` the router consumes itself (marked `ROUTER`)."""
    return frozenset(name for name, info in model.model_fields.items() if ROUTER in info.metadata)


CHAT_ROUTER_FIELDS = router_fields(ChatRequest)


class CompletionRequest(_Sampling):
    """POST /v1/completions (relayed to a model's member)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None

    @property
    def width(self) -> int:
        """How many of the process's slots (and rate-limit requests) it takes: llama-server runs `n` tasks for each
        prompt of a list (one list of token ids is one prompt)."""
        return completion_width(self.prompt, self.n or 1)

    def check(self) -> None:
        """No more completions in one request than `n` may ask for alone: the prompts of a list had no bound, and one
        request of 300 prompts × `n: 2` took every slot of the process for minutes under a key limited to one request
        at a time (another key's answer waited 238 s)."""
        if self.width > MAX_COMPLETIONS:
            raise BadRequest(f"{self.width} completions in one request (prompts × n): at most {MAX_COMPLETIONS}; send "
                             "the prompts in several requests", "too_many_completions")


def completion_width(prompt: object, n: int) -> int:
    """The slots a `/v1/completions` request takes: `n` for each prompt of a list (a list of token ids is one
    prompt). Also a host's relay of one, whose body it reads unvalidated (its router validated it)."""
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return max(1, prompts) * n


def _code(error: dict[str, Any]) -> str:
    loc = error.get("loc") or ()
    field = str(loc[0]) if loc else "body"
    if field == "model":
        return "missing_model"
    if field == "messages" and len(loc) == 1 and error.get("type") in ("too_short", "missing"):
        return "empty_messages"
    if field == "messages":
        return "invalid_message"
    if field == "max_completion_tokens":
        return "invalid_max_tokens"
    return f"invalid_{field}"


# The names pydantic gives a plain union's scalar branches in an error's location; the others hold brackets
# (`list[str]`, `literal['auto']`, `function-after[...]`), which no field's name does.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "dict", "list", "none"})
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")  # a model's (fields here are snake_case)


def location(error: dict[str, Any]) -> list[str]:
    """Where an error is, without the branch names plain unions add to it: exact type names only, so a field
    whose name begins like one (`stream`, `stream_options`, `strict`) is kept. Discriminated unions add their
    tag (`content.0.text`), which is kept too."""
    loc = [str(p) for p in error.get("loc", ())]
    # A union of models adds the branch's class name (`tool_choice.ToolChoiceAllowed.tools`): never a field's name
    return [p for i, p in enumerate(loc) if p not in _UNION_TAGS and "[" not in p
            and not (i + 1 < len(loc) and _CLASS_NAME.fullmatch(p))]


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(location(error)) or "body"
    return f"{where}: {message_of(error)}"


def deepest(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Of a union's failed branches, the error deepest in the body (the last of equals): the one about what the
    client meant to send."""
    return max(reversed(errors), key=lambda e: len(e.get("loc", ())))


def message_of(error: dict[str, Any]) -> str:
    """pydantic's message, without the prefix it gives a validator's own words."""
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def validate_body(body: Any, model: type[_Sampling]) -> _Sampling:
    """The body as `model`, or BadRequest naming the first problem (and how many more there are)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_body")
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        # The first field's problem; where it is a union (content: a string or parts), the deepest branch's error
        # is the one about what the client meant to send
        field = location(errors[0])[:1]
        first = max(reversed([e for e in errors if location(e)[:1] == field]), key=lambda e: len(location(e)))
        message = _describe(first) + more
        if first.get("loc", ("",))[0] == "model":
            message = "`model` is required: a council or model name (see GET /v1/models)"
        raise BadRequest(message, _code(first)) from None
    validated.check()
    return validated


# The deepest nesting a body may have: what orjson writes again (to members, ballots, stored responses), less a few
# levels the router adds where it writes parts of a body inside its own. orjson reads 1024 levels but writes 254: a
# body between the two failed later, as a 500 or as every seat failing (503). No request needs more than a few dozen.
ORJSON_DEPTH = 254
MAX_DEPTH = ORJSON_DEPTH - 4
TOO_DEEP = f"the body is nested too deeply to be a request (more than {MAX_DEPTH} levels)"


def parse_json(raw: bytes) -> Any:
    """JSON from a body; malformed or absurdly nested JSON is a BadRequest, never a 500."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # orjson stops at 1024 levels of nesting, and takes only UTF-8
        if str(exc).startswith("depth limit"):
            raise BadRequest(TOO_DEEP, "invalid_json") from None
        if "UTF-8" in str(exc):  # orjson's "str is not valid UTF-8: surrogates not allowed", for any byte
            raise BadRequest("the body is not valid JSON: it is not UTF-8 text", "invalid_json") from None
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from None
    # orjson writes it (in C: microseconds for an agent's 30 KB) inside the levels the router may add, and refuses
    # past its own limit. (A walk in Python, or nesting it deeper to check a lower limit, cost several times more.)
    try:
        orjson.dumps([[[[value]]]])
    except TypeError as exc:
        if "ecursion" in str(exc):
            raise BadRequest(TOO_DEEP, "invalid_json") from None
    return value
