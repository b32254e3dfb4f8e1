"""Generated `/v1/embeddings` bodies, broken at one position each: none may be answered with a 5xx.

The same machinery as tests/test_fuzz.py (in process, the mock provider behind): what validates
goes upstream for real (OpenAI and Azure embedding deployments, and a chat model that is refused
by kind), is admitted and metered; every refusal is JSON in OpenAI's error shape.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.models import UsageRecord

from .conftest import make_embedding_model
from .test_fuzz import broken, check, dumps, fuzz, fuzz_world, junk, text  # noqa: F401 (fuzz_world: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

EMBEDDINGS = "/v1/embeddings"
token_ids = st.lists(st.integers(min_value=0, max_value=100_000), min_size=1, max_size=6)
inputs = st.one_of(
    text,
    st.lists(text, min_size=1, max_size=4),
    token_ids,
    st.lists(token_ids, min_size=1, max_size=3),
    junk,
)
embeddings_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["embed-fuzz", "azure-embed-fuzz", "gpt-test"]), "input": inputs},
    optional={
        "dimensions": st.integers(min_value=-2, max_value=4000),
        "encoding_format": st.sampled_from(["float", "base64", "hex"]),
        "user": text,
    },
)


def test_embeddings_never_answer_5xx(fuzz_world):  # noqa: F811 (the fixture, imported above)
    loop, key = fuzz_world
    make_embedding_model("embed-fuzz", "openai", "text-embedding-3-small")
    make_embedding_model("azure-embed-fuzz", "azure", "text-embedding-3-small")
    statuses: list[int] = []

    @fuzz(400)
    @given(broken(embeddings_bodies))
    def run(body):
        statuses.append(check(loop, key, EMBEDDINGS, body=dumps(body)))

    run()
    served = statuses.count(200)
    # Most bodies are broken on purpose; about one in twenty is served (it varies from run to
    # run with the draws): at least one in forty says the served path was walked, not skipped.
    assert served >= len(statuses) // 40, (served, sorted(set(statuses)))
    assert {400, 200} <= set(statuses)
    assert UsageRecord.objects.filter(endpoint="embeddings", status_code=200).count() == served
