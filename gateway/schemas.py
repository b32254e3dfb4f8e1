"""Request bodies and query parameters, parsed at the edge: a typed object or a 400 naming the field.

Parse, don't check (STYLE "Validation at the edge"). Each body the gateway accepts is described
once, as pydantic models, and compiled once into a `TypeAdapter` at import: what comes out of
`parse_*` is typed, so the code behind it (estimates, limits, translation, metering) never meets
a list where it reads a role, or a number where it counts text.

What the models promise
- Every field the gateway reads or forwards with a known type is typed, strictly as JSON types
  (no coercion: `"5"` is not an integer, `true` is not 1): model, messages with their roles and
  content (a string, or an array of typed blocks: text, image_url / image, input_audio, file /
  document, refusal, tool_use, tool_result, thinking ...), system (a string or text blocks),
  stream, stream_options, the token limits, sampling parameters, stop sequences, tools and
  tool_choice, metadata, user, seed, response_format / output_config, template.
- Unknown top-level fields and unknown fields inside objects are allowed: providers add fields
  all the time, and the gateway forwards the caller's original dict, unchanged (validation reads
  it and never re-serializes it). A content block or tool of a type the gateway does not know is
  allowed too, as long as it is an object with a string `type`; translation refuses what it
  cannot say in the other format, and a same-family upstream judges it itself.
- `stream_options` on /v1/messages is refused: Anthropic's Messages API has no such parameter and
  answers unknown parameters with a 400 ("Extra inputs are not permitted"); forwarding it would
  only move the same 400 upstream, and translating it would silently drop it (an Anthropic
  stream always carries usage in `message_delta`).
- Integers the limits do arithmetic with (max_tokens, ...) stay below 2**31: no model produces
  more, and the admission's reservations stay far inside exact integer arithmetic (Lua numbers
  in Redis are doubles).

Errors: the first one pydantic reports, as `GatewayError(400, code="invalid_request")` whose
`param` is the field path in the caller's body (`messages[0].role`, `system[0].text`) and whose
message names the field and what is expected ("`messages[0].role` must be 'user' or 'assistant'
(got an array)."). The error is rendered in the caller's wire format by gateway/errors.py.

Cost on the hot path (bench/validation_cost.py, one core of this 2-core machine while other work
ran on it, median of 7 runs): a typical chat body (system + user message, four parameters) 4-6 µs,
a Messages body 3-5 µs, a tool-calling conversation ~10 µs; a 1 MiB body of one user message
4-5 µs (strings are checked, not copied); the worst shape, 1 MiB as 2,000 messages of 4,000 text
parts, 4-6 ms, against ~0.5 ms for orjson to parse it and ~18 ms for the gateway's own prompt
estimate of it. Nested objects are TypedDicts, not models: building 4,000 model instances cost
~25 ms, validating 4,000 TypedDicts ~1 ms. The top-level request stays a model (one instance).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal, Required, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, Tag, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from billing.selectors import GROUPINGS, TAG_PREFIX, UsageGrouping
from tenants import prompting

from .errors import GatewayError, bad_request

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# Union members are tagged with this prefix so that the error path can leave them out: a tag
# names a branch of the model, not a field of the caller's body.
_TAG = "§"

Count = Annotated[int, Field(ge=1, le=INT32_MAX)]  # a token limit, a number of choices ...
NonNegative = Annotated[int, Field(ge=0, le=INT32_MAX)]
Probability = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
JsonObject = dict[str, Any]


class _Open(BaseModel):
    """A JSON object of known fields, strictly typed, that also accepts fields it does not know."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _by_type(known: frozenset[str]):
    """Discriminator of a block by its `type`: a known type's model, else the open `other` model."""

    def tag(value: Any) -> str | None:
        if not isinstance(value, dict):
            return None
        kind = value.get("type")
        if not isinstance(kind, str):
            return f"{_TAG}untyped"
        return f"{_TAG}{kind}" if kind in known else f"{_TAG}other"

    return tag


def _tagged_union(members: dict[str, Any], discriminator, expected: str) -> Any:
    """A union whose branch a function picks; anything it cannot place is one clear error."""
    options = tuple(Annotated[model, Tag(_TAG + name)] for name, model in members.items())
    return Annotated[
        Union[options],  # noqa: UP007 (a union built from a tuple of members)
        Discriminator(discriminator, custom_error_type="wrong_shape", custom_error_message=f"must be {expected}"),
    ]


def _text_or_list(text: Any, items: Any, expected: str) -> Any:
    def tag(value: Any) -> str | None:
        return f"{_TAG}text" if isinstance(value, str) else f"{_TAG}list" if isinstance(value, list) else None

    return _tagged_union({"text": text, "list": items}, tag, expected)


class _Untyped(TypedDict, total=False):
    """A block without a string `type`: always refused, naming `type`."""

    type: Required[str]


class _Other(TypedDict, total=False):
    """A block of a type the gateway does not know: forwarded as it is."""

    type: Required[str]


# --- content blocks: OpenAI ------------------------------------------------------------------


class OpenAITextPart(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]


class _ImageURL(TypedDict, total=False):
    url: Required[str]
    detail: str | None


class OpenAIImagePart(TypedDict, total=False):
    type: Required[Literal["image_url"]]
    image_url: Required[_ImageURL]


class _InputAudio(TypedDict, total=False):
    data: Required[str]
    format: Required[str]


class OpenAIAudioPart(TypedDict, total=False):
    type: Required[Literal["input_audio"]]
    input_audio: Required[_InputAudio]


class _File(TypedDict, total=False):
    file_data: str | None
    file_id: str | None
    filename: str | None


class OpenAIFilePart(TypedDict, total=False):
    type: Required[Literal["file"]]
    file: Required[_File]


class OpenAIRefusalPart(TypedDict, total=False):
    type: Required[Literal["refusal"]]
    refusal: Required[str]


_OPENAI_PARTS = {
    "text": OpenAITextPart,
    "image_url": OpenAIImagePart,
    "input_audio": OpenAIAudioPart,
    "file": OpenAIFilePart,
    "refusal": OpenAIRefusalPart,
}
OpenAIPart = _tagged_union(
    {**_OPENAI_PARTS, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset(_OPENAI_PARTS)),
    "an object with a string `type`",
)
OpenAIContent = _text_or_list(str, list[OpenAIPart], "a string or an array of content parts")


class _Function(TypedDict, total=False):
    name: Required[str]
    arguments: Required[str]


class OpenAIToolCall(TypedDict, total=False):
    id: Required[str]
    type: str | None
    function: _Function | None


# --- messages: OpenAI ------------------------------------------------------------------------

OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class OpenAIMessage(TypedDict, total=False):
    """One message of any role; the role decides which of the optional fields may appear upstream."""

    role: Required[Literal["system", "developer", "user", "assistant", "tool", "function"]]
    content: OpenAIContent | None
    name: str | None
    refusal: str | None
    tool_calls: list[OpenAIToolCall] | None
    tool_call_id: str | None
    audio: JsonObject | None
    function_call: JsonObject | None


# --- tools, formats, options: OpenAI ---------------------------------------------------------


class _FunctionDefinition(TypedDict, total=False):
    name: Required[str]
    description: str | None
    parameters: JsonObject | None
    strict: bool | None


class OpenAIFunctionTool(TypedDict, total=False):
    type: Required[Literal["function"]]
    function: Required[_FunctionDefinition]


class _Custom(TypedDict, total=False):
    name: Required[str]


class OpenAICustomTool(TypedDict, total=False):
    type: Required[Literal["custom"]]
    custom: Required[_Custom]


OpenAITool = _tagged_union(
    {"function": OpenAIFunctionTool, "custom": OpenAICustomTool, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset({"function", "custom"})),
    "an object with a string `type`",
)


class _Named(TypedDict, total=False):
    name: Required[str]


class _ChoiceFunction(TypedDict, total=False):
    type: Required[Literal["function"]]
    function: Required[_Named]


class _ChoiceCustom(TypedDict, total=False):
    type: Required[Literal["custom"]]
    custom: Required[_Named]


class _AllowedTools(TypedDict, total=False):
    mode: Required[Literal["auto", "required"]]
    tools: Required[list[JsonObject]]


class _ChoiceAllowed(TypedDict, total=False):
    type: Required[Literal["allowed_tools"]]
    allowed_tools: Required[_AllowedTools]


def _choice_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return f"{_TAG}mode"
    return _by_type(frozenset({"function", "custom", "allowed_tools"}))(value)


OpenAIToolChoice = _tagged_union(
    {
        "mode": Literal["none", "auto", "required"],
        "function": _ChoiceFunction,
        "custom": _ChoiceCustom,
        "allowed_tools": _ChoiceAllowed,
        "other": _Other,
        "untyped": _Untyped,
    },
    _choice_tag,
    "'none', 'auto', 'required' or an object with a string `type`",
)


class _JsonSchema(TypedDict, total=False):
    name: Required[str]
    description: str | None
    schema: JsonObject | None
    strict: bool | None


class _FormatPlain(TypedDict, total=False):
    type: Required[Literal["text", "json_object"]]


class _FormatSchema(TypedDict, total=False):
    type: Required[Literal["json_schema"]]
    json_schema: Required[_JsonSchema]


ResponseFormat = _tagged_union(
    {"text": _FormatPlain, "json_object": _FormatPlain, "json_schema": _FormatSchema, "untyped": _Untyped},
    lambda v: _by_type(frozenset({"text", "json_object", "json_schema"}))(v) if isinstance(v, dict) else None,
    "an object with `type` 'text', 'json_object' or 'json_schema'",
)


class StreamOptions(TypedDict, total=False):
    include_usage: bool | None
    include_obfuscation: bool | None


Stop = _text_or_list(str, list[str], "a string or an array of strings")


# --- template (either endpoint) --------------------------------------------------------------


class TemplateRef(TypedDict, total=False):
    """`template` of a completion request; the variables' values are checked when rendering."""

    name: Required[NonEmptyStr]
    version: Annotated[int, Field(ge=1, le=INT32_MAX)] | None
    variables: JsonObject | None


# --- the Chat Completions body ---------------------------------------------------------------


class ChatRequest(_Open):
    model: NonEmptyStr
    messages: list[OpenAIMessage] | None = None  # required unless a template supplies them
    template: TemplateRef | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    seed: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    tools: list[OpenAITool] | None = None
    tool_choice: OpenAIToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: JsonObject | None = None
    prediction: JsonObject | None = None
    prompt_cache_key: str | None = None
    web_search_options: JsonObject | None = None
    functions: list[JsonObject] | None = None

    @property
    def include_usage(self) -> bool:
        """Whether the caller asked for the usage chunk at the end of its stream."""
        return bool(self.stream_options and self.stream_options.get("include_usage"))


# --- content blocks: Anthropic ---------------------------------------------------------------


class AnthropicTextBlock(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]
    cache_control: JsonObject | None
    citations: list[JsonObject] | None


class _SourceBase64(TypedDict, total=False):
    type: Required[Literal["base64"]]
    media_type: Required[str]
    data: Required[str]


class _SourceURL(TypedDict, total=False):
    type: Required[Literal["url"]]
    url: Required[str]


class _SourceText(TypedDict, total=False):
    type: Required[Literal["text"]]
    media_type: str | None
    data: Required[str]


class _SourceFile(TypedDict, total=False):
    type: Required[Literal["file"]]
    file_id: Required[str]


_SOURCES = {"base64": _SourceBase64, "url": _SourceURL, "text": _SourceText, "file": _SourceFile}
Source = _tagged_union(
    {**_SOURCES, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset(_SOURCES)),
    "an object with a string `type`",
)


class AnthropicImageBlock(TypedDict, total=False):
    type: Required[Literal["image"]]
    source: Required[Source]


class AnthropicDocumentBlock(TypedDict, total=False):
    type: Required[Literal["document"]]
    source: Required[Source]
    title: str | None
    context: str | None


class AnthropicToolUseBlock(TypedDict, total=False):
    type: Required[Literal["tool_use"]]
    id: Required[str]
    name: Required[str]
    input: Required[JsonObject]


_RESULT_BLOCKS = {"text": AnthropicTextBlock, "image": AnthropicImageBlock, "document": AnthropicDocumentBlock}
_ResultBlock = _tagged_union(
    {**_RESULT_BLOCKS, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset(_RESULT_BLOCKS)),
    "an object with a string `type`",
)


class AnthropicToolResultBlock(TypedDict, total=False):
    type: Required[Literal["tool_result"]]
    tool_use_id: Required[str]
    content: _text_or_list(str, list[_ResultBlock], "a string or an array of content blocks") | None
    is_error: bool | None


class AnthropicThinkingBlock(TypedDict, total=False):
    type: Required[Literal["thinking"]]
    thinking: Required[str]
    signature: str | None


class AnthropicRedactedThinkingBlock(TypedDict, total=False):
    type: Required[Literal["redacted_thinking"]]
    data: Required[str]


_ANTHROPIC_BLOCKS = {
    **_RESULT_BLOCKS,
    "tool_use": AnthropicToolUseBlock,
    "tool_result": AnthropicToolResultBlock,
    "thinking": AnthropicThinkingBlock,
    "redacted_thinking": AnthropicRedactedThinkingBlock,
}
AnthropicBlock = _tagged_union(
    {**_ANTHROPIC_BLOCKS, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset(_ANTHROPIC_BLOCKS)),
    "an object with a string `type`",
)
AnthropicContent = _text_or_list(str, list[AnthropicBlock], "a string or an array of content blocks")


class AnthropicMessage(TypedDict, total=False):
    role: Required[Literal["user", "assistant"]]
    content: Required[AnthropicContent]


# The system prompt holds text only, in both APIs; the gateway counts it for the admission estimate.
_SystemBlock = _tagged_union(
    {"text": AnthropicTextBlock, "untyped": _Untyped},
    lambda v: (f"{_TAG}text" if v.get("type") == "text" else f"{_TAG}untyped") if isinstance(v, dict) else None,
    'an object {"type": "text", "text": ...}',
)
System = _text_or_list(str, list[_SystemBlock], "a string or an array of text blocks")


class AnthropicTool(TypedDict, total=False):
    name: Required[str]
    type: str | None
    description: str | None
    input_schema: JsonObject | None
    cache_control: JsonObject | None


class _ToolChoiceAnthropic(TypedDict, total=False):
    type: Required[Literal["auto", "any", "tool", "none"]]
    name: str | None
    disable_parallel_tool_use: bool | None


class _ToolChoiceNamed(TypedDict, total=False):
    type: Required[Literal["tool"]]
    name: Required[str]
    disable_parallel_tool_use: bool | None


AnthropicToolChoice = _tagged_union(
    {"tool": _ToolChoiceNamed, "mode": _ToolChoiceAnthropic},
    lambda v: (f"{_TAG}tool" if v.get("type") == "tool" else f"{_TAG}mode") if isinstance(v, dict) else None,
    "an object with `type` 'auto', 'any', 'tool' or 'none'",
)


class AnthropicMetadata(TypedDict, total=False):
    user_id: str | None


class Thinking(TypedDict, total=False):
    type: Required[str]
    budget_tokens: NonNegative | None


class OutputConfig(TypedDict, total=False):
    format: JsonObject | None
    effort: str | None


class MessagesRequest(_Open):
    model: NonEmptyStr
    messages: list[AnthropicMessage] | None = None  # required unless a template supplies them
    template: TemplateRef | None = None
    max_tokens: Count
    system: System | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Probability | None = None
    top_p: Probability | None = None
    top_k: NonNegative | None = None
    metadata: AnthropicMetadata | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    service_tier: str | None = None

    @property
    def include_usage(self) -> bool:
        """An Anthropic stream always carries its usage (message_start, message_delta)."""
        return True


# --- the Responses API body (POST /v1/responses) ---------------------------------------------


class _ResponsesPart(TypedDict, total=False):
    """A content part of an input message: input_text, input_image, input_file, output_text ..."""

    type: Required[str]
    text: str


ResponsesPart = _tagged_union(
    {"part": _ResponsesPart, "untyped": _Untyped},
    lambda v: (f"{_TAG}part" if isinstance(v.get("type"), str) else f"{_TAG}untyped") if isinstance(v, dict) else None,
    "an object with a string `type`",
)


class ResponsesInputItem(TypedDict, total=False):
    """One input item: a message (`type` "message" or absent, with a role and content), a
    function_call, a function_call_output, a reasoning item, or another item the provider knows."""

    type: str
    role: Literal["user", "assistant", "system", "developer"]
    content: _text_or_list(str, list[ResponsesPart], "a string or an array of content parts")
    call_id: str
    name: str
    arguments: str
    id: str | None


ResponsesInput = _text_or_list(str, list[ResponsesInputItem], "a string or an array of input items")


class ResponsesFunctionTool(TypedDict, total=False):
    type: Required[Literal["function"]]
    name: Required[NonEmptyStr]
    description: str | None
    parameters: JsonObject | None
    strict: bool | None


ResponsesTool = _tagged_union(
    {"function": ResponsesFunctionTool, "other": _Other, "untyped": _Untyped},
    _by_type(frozenset({"function"})),
    "an object with a string `type`",
)


class _ResponsesChoiceFunction(TypedDict, total=False):
    type: Required[Literal["function"]]
    name: Required[str]


ResponsesToolChoice = _tagged_union(
    {
        "mode": Literal["none", "auto", "required"],
        "function": _ResponsesChoiceFunction,
        "other": _Other,
        "untyped": _Untyped,
    },
    lambda v: f"{_TAG}mode" if isinstance(v, str) else _by_type(frozenset({"function"}))(v),
    "'none', 'auto', 'required' or an object with a string `type`",
)


class ResponsesRequest(_Open):
    """`POST /v1/responses`. Unknown fields pass through to an OpenAI or Azure upstream."""

    model: NonEmptyStr
    input: ResponsesInput
    instructions: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ResponsesToolChoice | None = None
    stream: bool | None = None
    stream_options: JsonObject | None = None
    max_output_tokens: Count | None = None
    previous_response_id: NonEmptyStr | None = None
    store: bool | None = None
    background: bool | None = None
    metadata: dict[str, str] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    reasoning: JsonObject | None = None
    text: JsonObject | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    max_tool_calls: Count | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @property
    def include_usage(self) -> bool:
        """A Responses stream always ends with the response and its usage."""
        return True

    @property
    def template(self) -> None:
        return None


class CountTokensRequest(_Open):
    """`POST /v1/messages/count_tokens`: a Messages body without what only generation reads.

    Typed like `MessagesRequest` (model, messages, system, tools, tool_choice, thinking,
    output_config); beta-only fields (`context_management`, `mcp_servers`, ...) pass as unknown
    fields and go to the provider as sent. `max_tokens`, `stream` and the sampling parameters
    are refused (`parse_count_tokens`): Anthropic's endpoint refuses them too, and a count
    made locally would ignore them without a word.
    """

    model: NonEmptyStr
    messages: list[AnthropicMessage]
    system: System | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None

    @property
    def stream(self) -> bool:
        return False

    @property
    def include_usage(self) -> bool:
        return False


# Parameters of a generation that a token count does not take (Anthropic: "Extra inputs are not permitted").
COUNT_TOKENS_REFUSED = (
    "max_tokens",
    "stream",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "service_tier",
    "template",
)


# --- the Embeddings body ---------------------------------------------------------------------

EMBEDDING_INPUTS_MAX = 2048  # OpenAI's limit of inputs in one request
_EMBEDDING_INPUT_SHAPE = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def _token_ids(value: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT32_MAX for v in value)


def _embedding_input(value: Any) -> str | list:
    """`input` of an embeddings request: OpenAI's four shapes, none of them empty."""
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("embedding_input", "must not be an empty string")
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("wrong_shape", f"must be {_EMBEDDING_INPUT_SHAPE}")
    if not value:
        raise PydanticCustomError("embedding_input", "must not be empty")
    if len(value) > EMBEDDING_INPUTS_MAX:
        raise PydanticCustomError("embedding_input", f"must have at most {EMBEDDING_INPUTS_MAX} items")
    if all(isinstance(v, str) for v in value):
        empty = next((i for i, v in enumerate(value) if not v), None)
        if empty is not None:
            raise PydanticCustomError("embedding_input", f"must not contain an empty string (item {empty})")
        return value
    if _token_ids(value):
        return value
    if all(isinstance(v, list) for v in value):
        for i, ids in enumerate(value):
            if not ids or not _token_ids(ids):
                raise PydanticCustomError(
                    "embedding_input", f"must hold non-empty arrays of token ids (integers >= 0; item {i} is not)"
                )
        return value
    raise PydanticCustomError("wrong_shape", f"must be {_EMBEDDING_INPUT_SHAPE}")


EmbeddingInput = Annotated[str | list, PlainValidator(_embedding_input)]


class EmbeddingsRequest(_Open):
    """`POST /v1/embeddings` (OpenAI). Fields the gateway does not know are forwarded, as for chat."""

    model: NonEmptyStr
    input: EmbeddingInput
    dimensions: Count | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    # What the view asks every parsed body: an embeddings request never streams.
    stream: ClassVar[None] = None
    include_usage: ClassVar[bool] = False


# --- query parameters ------------------------------------------------------------------------

# The last day whose next day Python can still hold: the usage selectors read up to end + 1 day.
DATE_MIN, DATE_MAX = date(1, 1, 1), date(9999, 12, 30)


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: Any) -> date:
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise PydanticCustomError("date_format", "must be a date as YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("date_format", "must be a date as YYYY-MM-DD") from None
    if not DATE_MIN <= day <= DATE_MAX:
        raise PydanticCustomError("date_range", f"must be a date from {DATE_MIN} to {DATE_MAX}")
    return day


IsoDate = Annotated[date, PlainValidator(_iso_date)]


class UsageQuery(BaseModel):
    """`GET /v1/usage?start=YYYY-MM-DD&end=YYYY-MM-DD`: both days included, at most 366 days.

    Other query parameters are ignored, as HTTP APIs commonly do.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    start: IsoDate
    end: IsoDate


# --- errors ----------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_TYPE_PHRASES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be an array",
}


def _phrase(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    match kind:
        case "missing":
            return "is required"
        case "literal_error":
            phrase = f"must be {ctx['expected']}"
        case "wrong_shape":
            phrase = error["msg"]
        case "too_short" | "string_too_short":
            minimum = ctx.get("min_length", 1)
            if minimum == 1:
                return "must not be empty"
            phrase = f"must have at least {minimum} {'characters' if kind == 'string_too_short' else 'items'}"
        case "too_long" | "string_too_long":
            maximum = ctx.get("max_length")
            return f"must have at most {maximum} {'characters' if kind == 'string_too_long' else 'items'}"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "greater_than":
            return f"must be greater than {ctx['gt']}"
        case "less_than":
            return f"must be less than {ctx['lt']}"
        case "extra_forbidden":
            return "is not a known field"
        case _ if kind in _TYPE_PHRASES:
            phrase = _TYPE_PHRASES[kind]
        case _:
            # Our own custom errors are already phrased; pydantic's start with "Input should be".
            return error["msg"].replace("Input should be", "must be")
    return f"{phrase} (got {_json_type(error.get('input'))})"


def error_path(loc: tuple) -> str:
    """`("messages", 0, "§user", "content")` -> `messages[0].content`: union tags are not fields."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and part.startswith(_TAG):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def to_gateway_error(exc: ValidationError) -> GatewayError:
    error = exc.errors(include_url=False)[0]
    path = error_path(error["loc"])
    subject = f"`{path}`" if path else "The request body"
    return bad_request(f"{subject} {_phrase(error)}.", param=path or None)


# --- the adapters: compiled once, at import --------------------------------------------------

_CHAT = TypeAdapter(ChatRequest)
_MESSAGES = TypeAdapter(MessagesRequest)
_COUNT_TOKENS = TypeAdapter(CountTokensRequest)
_USAGE = TypeAdapter(UsageQuery)
_EMBEDDINGS = TypeAdapter(EmbeddingsRequest)
_RESPONSES = TypeAdapter(ResponsesRequest)


def _messages_given(parsed: ChatRequest | MessagesRequest) -> None:
    if parsed.template is None and not parsed.messages:
        raise bad_request("`messages` must be a non-empty array.", param="messages")


def parse_chat(body: dict) -> ChatRequest:
    """A Chat Completions body, typed, or a GatewayError 400 naming the first wrong field."""
    try:
        parsed = _CHAT.validate_python(body)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None
    _messages_given(parsed)
    if parsed.stream_options is not None and not parsed.stream:
        raise bad_request("`stream_options` is only allowed with `stream: true`.", param="stream_options")
    return parsed


def parse_messages(body: dict) -> MessagesRequest:
    """A Messages body, typed, or a GatewayError 400 naming the first wrong field."""
    if "stream_options" in body:
        # Anthropic refuses unknown parameters; this one is an OpenAI habit worth a clear word.
        raise bad_request(
            "`stream_options` is not a parameter of the Messages API: an Anthropic stream always reports "
            "its usage (message_start and message_delta).",
            param="stream_options",
        )
    try:
        parsed = _MESSAGES.validate_python(body)
    except ValidationError as exc:
        raise _system_turn_error(exc) or to_gateway_error(exc) from None
    _messages_given(parsed)
    return parsed


def _system_turn_error(exc: ValidationError) -> GatewayError | None:
    """A `"system"` turn inside `messages`, refused in Anthropic's own words.

    Claude Code sends mid-conversation system turns to a model it does not know (every catalog
    name is one) and drops them when the 400 says so in words it recognises: the provider's
    ("Unexpected role ... input message role"). Our generic wording would make it retry the same
    body until it gives up.
    """
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    if error["type"] == "literal_error" and error.get("input") == "system" and loc[:1] == ("messages",):
        path = error_path(loc)
        return bad_request(
            f'`{path}`: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
            'not "system" as an input message role.',
            param=path,
        )
    return None


def parse_responses(body: dict) -> ResponsesRequest:
    """A Responses API body, typed, or a GatewayError 400 naming the first wrong field."""
    try:
        parsed = _RESPONSES.validate_python(body)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None
    if isinstance(parsed.input, list) and not parsed.input:
        raise bad_request("`input` must be a non-empty string or array.", param="input")
    if parsed.background:
        raise bad_request(
            "`background: true` is not supported by this gateway: a response is metered while it is made.",
            param="background",
        )
    if parsed.stream_options is not None and not parsed.stream:
        raise bad_request("`stream_options` is only allowed with `stream: true`.", param="stream_options")
    return parsed


def parse_embeddings(body: dict) -> EmbeddingsRequest:
    """An Embeddings body, typed, or a GatewayError 400 naming the first wrong field."""
    for name in ("stream", "template"):
        if name in body:
            raise bad_request(f"`{name}` is not a parameter of the Embeddings API.", param=name)
    try:
        return _EMBEDDINGS.validate_python(body)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None


def parse_count_tokens(body: dict) -> CountTokensRequest:
    """A count_tokens body, typed, or a GatewayError 400 naming the first wrong field."""
    for name in COUNT_TOKENS_REFUSED:
        if name in body:
            raise bad_request(f"`{name}` is not a parameter of count_tokens.", param=name)
    try:
        parsed = _COUNT_TOKENS.validate_python(body)
    except ValidationError as exc:
        raise _system_turn_error(exc) or to_gateway_error(exc) from None
    if not parsed.messages:
        raise bad_request("`messages` must be a non-empty array.", param="messages")
    return parsed


def parse_usage_query(params: dict[str, str]) -> tuple[date, date]:
    try:
        query = _USAGE.validate_python(params)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None
    start, end = query.start, query.end
    if end < start:
        raise bad_request("`end` must not be before `start`.", param="end")
    if (end - start).days > 366:
        raise bad_request("The period may be at most 366 days.", param="end")
    return start, end


# A tag's name as `group_by=tag:<name>` takes it: a JSON key, never a path or an array index.
_TAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def parse_usage_grouping(params: dict[str, str]) -> UsageGrouping | None:
    """`group_by=project|end_user|key|tag:<name>`, or None when absent; a 400 naming it otherwise."""
    value = params.get("group_by")
    if value is None:
        return None
    if value in GROUPINGS:
        return UsageGrouping(kind=value)
    if value.startswith(TAG_PREFIX):
        tag = value.removeprefix(TAG_PREFIX)
        if _TAG_NAME.fullmatch(tag):
            return UsageGrouping(kind="tag", tag=tag)
        raise bad_request(
            "`group_by` tag:<name> takes a tag name of up to 64 letters, digits, `_`, `.` or `-`, "
            "starting with a letter or `_`.",
            param="group_by",
        )
    raise bad_request("`group_by` must be one of project, end_user, key or tag:<name>.", param="group_by")


# --- the tenant API (gateway/api.py) ---------------------------------------------------------


class _Closed(BaseModel):
    """A body of the gateway's own API: its fields are all known, so an unknown one is a typo."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TemplateTextPart(TypedDict, total=False):
    type: Required[Literal["text"]]
    text: Required[str]


class TemplateMessage(TypedDict, total=False):
    role: Required[Literal["system", "developer", "user", "assistant"]]
    content: Required[
        _text_or_list(
            str, Annotated[list[TemplateTextPart], Field(min_length=1)], "a string or a non-empty array of text parts"
        )
    ]
    name: NonEmptyStr | None


class TemplateCreate(_Closed):
    """`POST /v1/templates`. The shape is checked here; what makes a template usable (its name's
    characters, placeholders, sizes, NUL) stays with `tenants.prompting`, which every other way of
    saving a template goes through too."""

    name: str
    description: str | None = None
    messages: Annotated[list[TemplateMessage], Field(min_length=1)]


def _logs_limit(value: Any) -> int:
    low, high = 1, prompting.LOGS_LIMIT_MAX
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and low <= int(value) <= high):
        raise PydanticCustomError("limit", f"must be an integer from {low} to {high}")
    return int(value)


def _logs_cursor(value: Any) -> tuple[datetime, int]:
    try:
        return prompting.logs_cursor_decode(value)
    except (prompting.CursorError, AttributeError):
        raise PydanticCustomError("cursor", "is not a cursor this endpoint returned") from None


def _logs_model(value: Any) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        raise PydanticCustomError("model", "must be a model name without NUL characters")
    return value or None


def _logs_status(value: Any) -> dict:
    if value in ("", None):
        return {}
    if value in ("error", "success"):
        return {"errors_only": value == "error"}
    if isinstance(value, str) and value.isascii() and value.isdigit() and 100 <= int(value) <= 599:
        return {"status_code": int(value)}
    raise PydanticCustomError("status", "must be an HTTP status code, `error` or `success`")


class LogsQuery(BaseModel):
    """`GET /v1/logs?limit=&after=&model=&status=`; other query parameters are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    limit: Annotated[int, PlainValidator(_logs_limit)] = prompting.LOGS_LIMIT_DEFAULT
    after: Annotated[tuple[datetime, int] | None, PlainValidator(_logs_cursor)] = None
    model: Annotated[str | None, PlainValidator(_logs_model)] = None
    status: Annotated[dict, PlainValidator(_logs_status)] = Field(default_factory=dict)


_TEMPLATE_CREATE = TypeAdapter(TemplateCreate)
_LOGS = TypeAdapter(LogsQuery)


def parse_template_create(body: dict) -> TemplateCreate:
    try:
        return _TEMPLATE_CREATE.validate_python(body)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None


def parse_logs_query(params: dict[str, str]) -> LogsQuery:
    # An empty `after` means "from the start", as it did before (a client that echoes a null cursor).
    params = {name: value for name, value in params.items() if not (name == "after" and value == "")}
    try:
        return _LOGS.validate_python(params)
    except ValidationError as exc:
        raise to_gateway_error(exc) from None
