"""Embeddings in the mock provider, in OpenAI's and Azure OpenAI's wire format.

    POST /v1/embeddings                                   OpenAI; `Authorization: Bearer <any>`
    POST /openai/deployments/{deployment}/embeddings      Azure; header `api-key`, query `api-version`

Body: `model` (OpenAI; on Azure the deployment name stands for it), `input` (a string, an array of
strings, an array of token ids or an array of arrays of token ids; none empty, at most 2048
inputs, each at most 8191 tokens), `dimensions` (text-embedding-3 models and unknown names: at
most the model's own size; text-embedding-ada-002 refuses it), `encoding_format` ("float",
the default, or "base64": the little-endian float32 bytes of the vector, base64-encoded, as
OpenAI sends them), `user`.

Vectors are deterministic and unit length: SHAKE-256 of the model and the input, read as
unsigned 32-bit integers mapped to [-1, 1], normalised, then rounded to float32 (the precision
OpenAI's vectors have), so that float and base64 answers hold the same numbers. A model's size:
text-embedding-3-small 1536, text-embedding-3-large 3072, text-embedding-ada-002 1536, any other
name 1536.

Usage `{"prompt_tokens", "total_tokens"}` (equal): each string counted with the real BPE in the
encoding a provider bills the model with (`server.billing_encoding`: cl100k_base for
text-embedding-* names, o200k_base for an unknown name such as an Azure deployment's), plus the
number of ids of each pre-tokenized input.

Directives (`[[mock:...]]` in any input string) work as for chat, where they make sense: status,
retry_after, quota, content_filter, latency_ms, break_after (a JSON answer cut in half).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

from gateway.mock import server as mock
from gateway.tokenizer import count_tokens

AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/embeddings")
INPUTS_MAX = 2048
TOKENS_PER_INPUT_MAX = 8191
DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
DEFAULT_DIMENSIONS = 1536


def route(path: str) -> tuple[mock.Api, str | None] | None:
    """(API, Azure deployment) of an embeddings path, or None for any other path."""
    if path == "/v1/embeddings":
        return mock.Api.OPENAI, None
    azure = AZURE_PATH.fullmatch(path)
    return (mock.Api.AZURE, azure.group(1)) if azure else None


async def serve(
    app: mock.MockApp, request: mock.Request, send: mock.Send, api: mock.Api, deployment: str | None
) -> None:
    request_id = app._id("req_")
    headers: mock.Headers = [(b"x-request-id", request_id.encode())]
    directives = mock.Directives()
    try:
        if app.settings.fault_rate and app._faults.random() < app.settings.fault_rate:
            raise mock.injected_error(api, app.settings.fault_status)
        mock._authenticate(api, request)
        if not isinstance(request.body, dict):
            raise mock.ApiError(400, "We could not parse the JSON body of your request: expected a JSON object.")
        model, inputs, dimensions, encoding_format = parse(request.body, deployment=deployment)
        directives = mock.parse_directives(" ".join(item for item in inputs if isinstance(item, str)))
        if error := mock.directive_error(api, directives):
            raise error
        payload = embeddings_response(model, inputs, dimensions=dimensions, encoding_format=encoding_format)
    except mock.ApiError as error:
        await app._pause_before_answer(directives)
        body = mock.error_body(api, error, request_id=request_id)
        await mock._send_json(send, error.status, body, headers + error.headers)
        return
    await app._pause_before_answer(directives)
    await mock._send_json(send, 200, payload, headers, cut=directives.break_after is not None)


def parse(body: mock.Json, *, deployment: str | None) -> tuple[str, list[str | list[int]], int, str]:
    """(model, inputs, dimensions, encoding_format) of a request, or ApiError(400) as OpenAI says it."""
    model = deployment or body.get("model")
    if not isinstance(model, str) or not model:
        raise mock.ApiError(400, "you must provide a model parameter", param="model")
    inputs = _inputs(body.get("input"))
    native = _native_dimensions(model)
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = native
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise mock.ApiError(400, "Invalid 'dimensions': expected an integer of at least 1.", param="dimensions")
    elif _base_name(model) == "text-embedding-ada-002":
        raise mock.ApiError(400, "This model does not support specifying dimensions.", param="dimensions")
    elif dimensions > native:
        raise mock.ApiError(400, f"Invalid 'dimensions': {model} has at most {native} dimensions.", param="dimensions")
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ("float", "base64"):
        message = f"'{encoding_format}' is not one of ['float', 'base64'] - 'encoding_format'"
        raise mock.ApiError(400, message, param="encoding_format")
    return model, inputs, dimensions, encoding_format


def _inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value, list) and value and all(_is_id(v) for v in value):
        items = [value]  # one input, already tokenized
    elif isinstance(value, list) and value:
        items = value
    else:
        raise mock.ApiError(400, "'input' must be a non-empty string or array.", param="input")
    if len(items) > INPUTS_MAX:
        raise mock.ApiError(400, f"'input' must have at most {INPUTS_MAX} items.", param="input")
    for item in items:
        if isinstance(item, str):
            if not item:
                raise mock.ApiError(400, "'input' cannot contain an empty string.", param="input")
        elif not (isinstance(item, list) and item and all(_is_id(v) for v in item)):
            raise mock.ApiError(400, "'input' must be strings or arrays of token ids.", param="input")
    return items


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _base_name(model: str) -> str:
    return model.lower().rsplit("/", 1)[-1]


def _native_dimensions(model: str) -> int:
    name = _base_name(model)
    return next((size for known, size in DIMENSIONS.items() if name.startswith(known)), DEFAULT_DIMENSIONS)


def input_tokens(model: str, item: str | list[int]) -> int:
    if isinstance(item, list):
        return len(item)
    return count_tokens(item, encoding=mock.billing_encoding(model))


def vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector of `dimensions` float32 values, the same for the same model and input."""
    text = item if isinstance(item, str) else ",".join(map(str, item))
    seed = model.encode() + (b"\0" if isinstance(item, str) else b"\1") + text.encode("utf-8", "surrogatepass")
    raw = struct.unpack(f"<{dimensions}I", hashlib.shake_256(seed).digest(4 * dimensions))
    values = [value / 2_147_483_647.5 - 1 for value in raw]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Through float32, as OpenAI's vectors are: the float and base64 answers hold the same numbers.
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))))


def embeddings_response(
    model: str, inputs: list[str | list[int]], *, dimensions: int, encoding_format: str
) -> mock.Json:
    data = []
    prompt_tokens = 0
    for index, item in enumerate(inputs):
        tokens = input_tokens(model, item)
        if tokens > TOKENS_PER_INPUT_MAX:
            message = (
                f"This model's maximum context length is {TOKENS_PER_INPUT_MAX + 1} tokens, however you requested "
                f"{tokens} tokens in input {index}. Please reduce your prompt."
            )
            raise mock.ApiError(400, message, param="input", code="context_length_exceeded")
        prompt_tokens += tokens
        values = vector(model, item, dimensions)
        embedding: list[float] | str = values
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *values)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
