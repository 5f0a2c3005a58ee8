"""The real OpenAI SDK, LangChain and LlamaIndex against `qembed serve`, unmodified,
compared with the vectors transformers produced for the fixture (reference.json)."""

import math

import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding


def cosine(a, b):
    assert len(a) == len(b)
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def plain_cases(ref, instruction=False, dims=None):
    return [c for c in ref["cases"]
            if c["max_length"] is None and c["dimensions"] == dims
            and (c["instruction"] is not None) == instruction]


def assert_close(got, cases, threshold=0.99999):
    assert len(got) == len(cases)
    for vec, case in zip(got, cases):
        c = cosine(vec, case["embedding"])
        assert c >= threshold, (case["name"], c)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base_url"], api_key=server["api_key"])


def test_openai_float(client, server, reference):
    cases = plain_cases(reference)
    r = client.embeddings.create(model=server["model"], input=[c["text"] for c in cases],
                                 encoding_format="float")
    assert [d.index for d in r.data] == list(range(len(cases)))
    assert r.model == server["model"]
    assert r.usage.prompt_tokens == sum(len(c["input_ids"]) for c in cases)
    assert_close([d.embedding for d in r.data], cases)


def test_openai_default_base64(client, server, reference):
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    cases = plain_cases(reference)
    r = client.embeddings.create(model=server["model"], input=[c["text"] for c in cases])
    assert_close([d.embedding for d in r.data], cases)


def test_openai_dimensions(client, server, reference):
    cases = plain_cases(reference, dims=32)
    assert cases
    r = client.embeddings.create(model=server["model"], input=[c["text"] for c in cases], dimensions=32)
    assert all(len(d.embedding) == 32 for d in r.data)
    assert_close([d.embedding for d in r.data], cases)


def test_openai_token_arrays(client, server, reference):
    cases = plain_cases(reference)[:6]
    # Ids without the EOS (as a client tokenizer gives them) and with it: same vectors.
    r = client.embeddings.create(model=server["model"], input=[c["input_ids"][:-1] for c in cases])
    assert_close([d.embedding for d in r.data], cases)
    r = client.embeddings.create(model=server["model"], input=cases[0]["input_ids"])
    assert_close([r.data[0].embedding], cases[:1])


def test_openai_instruction_extension(client, server, reference):
    cases = plain_cases(reference, instruction=True)
    r = client.embeddings.create(model=server["model"], input=[c["text"] for c in cases],
                                 extra_body={"instruction": cases[0]["instruction"]})
    assert_close([d.embedding for d in r.data], cases)


def test_openai_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=server["model"], input="x", dimensions=8)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-model", input="x")
    assert e.value.body["code"] == "model_not_found"
    bad = openai.OpenAI(base_url=server["base_url"], api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=server["model"], input="x")


def test_openai_models(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids == [server["model"], server["alias"]]


def test_langchain(server, reference):
    # check_embedding_ctx_length=False: otherwise LangChain downloads tiktoken's
    # vocabulary at first use, which an offline machine cannot.
    emb = OpenAIEmbeddings(model=server["model"], base_url=server["base_url"],
                           api_key=server["api_key"], check_embedding_ctx_length=False)
    cases = plain_cases(reference)
    assert_close(emb.embed_documents([c["text"] for c in cases]), cases)
    assert_close([emb.embed_query(cases[0]["text"])], cases[:1])
    small = OpenAIEmbeddings(model=server["model"], base_url=server["base_url"],
                             api_key=server["api_key"], check_embedding_ctx_length=False, dimensions=32)
    cases32 = plain_cases(reference, dims=32)
    assert_close(small.embed_documents([c["text"] for c in cases32]), cases32)


def test_llamaindex(server, reference):
    emb = OpenAIEmbedding(model_name=server["alias"], api_base=server["base_url"],
                          api_key=server["api_key"])
    # LlamaIndex's OpenAIEmbedding replaces newlines with spaces before sending (its own
    # choice), so texts with newlines reach the server changed; compare the others.
    cases = [c for c in plain_cases(reference) if "\n" not in c["text"]]
    texts = [c["text"] for c in cases]
    assert len(cases) >= 10
    assert_close(emb.get_text_embedding_batch(texts), cases)
    assert_close([emb.get_query_embedding(texts[0])], cases[:1])
