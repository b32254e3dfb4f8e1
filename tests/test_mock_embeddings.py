"""The mock provider's embeddings (gateway/mock/embeddings.py), called directly with the official SDK's
OpenAI and AzureOpenAI clients: the wire format the gateway relies on."""

import array
import base64
import json
import urllib.error
import urllib.request

import openai
import pytest

from gateway.mock.embeddings import vector
from gateway.tokenizer import CL100K, O200K, count_tokens

AZURE_VERSION = "2024-10-21"


def client(mock_llm: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mock_llm}/v1", api_key="sk-test", max_retries=0, timeout=10)


def azure(mock_llm: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=mock_llm, api_key="azure-key", api_version=AZURE_VERSION, max_retries=0, timeout=10
    )


def raw_post(url: str, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (our own mock)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_openai_float_vectors_are_deterministic_unit_vectors_with_real_bpe_usage(mock_llm):
    texts = ["hello world", "another text, a little longer"]
    first = client(mock_llm).embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    again = client(mock_llm).embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    assert first.model == "text-embedding-3-small"
    assert [d.embedding for d in first.data] == [d.embedding for d in again.data]
    assert first.data[0].embedding != first.data[1].embedding
    for item in first.data:
        assert len(item.embedding) == 1536
        assert sum(v * v for v in item.embedding) == pytest.approx(1, abs=1e-5)
    tokens = sum(count_tokens(t, encoding=CL100K) for t in texts)
    assert (first.usage.prompt_tokens, first.usage.total_tokens) == (tokens, tokens)


def test_base64_is_the_little_endian_float32_of_the_same_vector(mock_llm):
    status, body = raw_post(
        f"{mock_llm}/v1/embeddings",
        {"model": "text-embedding-3-large", "input": "same text", "encoding_format": "base64"},
        {"authorization": "Bearer sk-test"},
    )
    assert status == 200
    encoded = body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert array.array("f", base64.b64decode(encoded)).tolist() == vector("text-embedding-3-large", "same text", 3072)
    # The SDK's default (no encoding_format): it asks for base64 and decodes it to the same floats.
    decoded = client(mock_llm).embeddings.create(model="text-embedding-3-large", input="same text")
    assert decoded.data[0].embedding == vector("text-embedding-3-large", "same text", 3072)


def test_dimensions_are_honoured_up_to_the_models_size(mock_llm):
    small = client(mock_llm).embeddings.create(model="text-embedding-3-small", input="x", dimensions=8)
    assert len(small.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError) as too_many:
        client(mock_llm).embeddings.create(model="text-embedding-3-small", input="x", dimensions=1537)
    assert too_many.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as ada:
        client(mock_llm).embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    assert "does not support specifying dimensions" in ada.value.body["message"]


def test_token_id_inputs_count_as_their_length(mock_llm):
    one = client(mock_llm).embeddings.create(model="text-embedding-3-small", input=[10, 20, 30])
    many = client(mock_llm).embeddings.create(model="text-embedding-3-small", input=[[1, 2], [3]])
    assert (one.usage.prompt_tokens, len(one.data)) == (3, 1)
    assert (many.usage.prompt_tokens, len(many.data)) == (3, 2)


def test_azure_embeddings_are_addressed_by_deployment_and_need_api_key(mock_llm):
    result = azure(mock_llm).embeddings.create(model="embed-prod", input="hello", encoding_format="float")
    assert result.model == "embed-prod"  # the deployment's name stands for the model
    assert result.usage.prompt_tokens == count_tokens("hello", encoding=O200K)  # an unknown name: o200k
    url = f"{mock_llm}/openai/deployments/embed-prod/embeddings?api-version={AZURE_VERSION}"
    status, body = raw_post(url, {"input": "hello"}, {"authorization": "Bearer x"})
    assert status == 401
    assert body["error"]["code"] == "401"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": [{"x": 1}]}, "input"),
        ({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x"}, "model"),
    ],
)
def test_bad_bodies_are_refused_like_the_real_api(mock_llm, body, param):
    status, answer = raw_post(f"{mock_llm}/v1/embeddings", body, {"authorization": "Bearer sk-test"})
    assert status == 400
    assert answer["error"]["param"] == param


def test_directives_drive_errors_and_an_input_over_the_context_is_refused(mock_llm):
    with pytest.raises(openai.RateLimitError):
        client(mock_llm).embeddings.create(model="text-embedding-3-small", input="[[mock:status=429]] hi")
    with pytest.raises(openai.BadRequestError) as long:
        client(mock_llm).embeddings.create(model="text-embedding-3-small", input=list(range(9000)))
    assert long.value.body["code"] == "context_length_exceeded"
