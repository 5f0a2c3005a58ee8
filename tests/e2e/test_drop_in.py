"""Clients of Cohere's and TEI's embedding APIs against `qembed serve`, unmodified: the
Cohere SDK's `embed` with every embedding type, huggingface_hub's InferenceClient
(`feature_extraction`, which posts TEI's body to the server's root), LlamaIndex's
TextEmbeddingsInference (`/embed`), and int8 vectors from `/v2/embed` stored and searched
in Qdrant. Float vectors are compared with transformers' (reference.json); the integer
and binary forms with the rule qembed documents (docs/api.md), implemented again here."""

import math

import cohere
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

from test_clients import assert_close, cosine, plain_cases


def round_half_away(x):
    return math.copysign(math.floor(abs(x) + 0.5), x)


def int8_rule(v):
    m = max(abs(x) for x in v)
    if m == 0:
        return [0] * len(v)
    return [int(max(-127, min(127, round_half_away(x * 127 / m)))) for x in v]


def ubinary_rule(v):
    out = []
    for j in range(0, len(v), 8):
        byte = 0
        for i, x in enumerate(v[j:j + 8]):
            if x > 0:
                byte |= 1 << (7 - i)
        out.append(byte)
    return out


@pytest.fixture
def co(server):
    return cohere.ClientV2(base_url=server["url"], api_key=server["api_key"])


def test_cohere_embed_every_type(co, server, reference):
    for input_type, instructed in [("search_document", False), ("search_query", True)]:
        cases = plain_cases(reference, instruction=instructed)
        r = co.embed(model=server["model"], texts=[c["text"] for c in cases], input_type=input_type,
                     embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"])
        e = r.embeddings
        assert_close(e.float_, cases)
        assert r.texts == [c["text"] for c in cases]
        assert r.meta.billed_units.input_tokens == sum(len(c["input_ids"]) for c in cases)
        for i, (f, case) in enumerate(zip(e.float_, cases)):
            # The served forms follow the rule exactly for the served float vector...
            assert e.int8[i] == int8_rule(f), case["name"]
            assert e.uint8[i] == [q + 128 for q in int8_rule(f)], case["name"]
            assert e.ubinary[i] == ubinary_rule(f), case["name"]
            assert e.binary[i] == [b - 128 for b in ubinary_rule(f)], case["name"]
            assert len(e.binary[i]) == math.ceil(len(f) / 8)
            # ...and, up to one step of rounding, for transformers' vector.
            want = int8_rule(case["embedding"])
            assert max(abs(a - b) for a, b in zip(e.int8[i], want)) <= 1, case["name"]
            b64 = np.frombuffer(__import__("base64").b64decode(e.base64[i]), dtype="<f4")
            assert b64.tolist() == f


def test_cohere_dimension_and_max_tokens(co, server, reference):
    cases = plain_cases(reference, dims=32)
    r = co.embed(model=server["model"], texts=[c["text"] for c in cases],
                 input_type="search_document", output_dimension=32, embedding_types=["float"])
    assert_close(r.embeddings.float_, cases)
    # transformers' 8-token truncation is Cohere's max_tokens with truncate END.
    cut = [c for c in reference["cases"] if c["max_length"] == 8 and c["instruction"] is None]
    assert cut
    r = co.embed(model=server["model"], texts=[c["text"] for c in cut], input_type="search_document",
                 max_tokens=8, truncate="END", embedding_types=["float"])
    assert_close(r.embeddings.float_, cut)


def test_cohere_errors(co, server):
    with pytest.raises(cohere.errors.BadRequestError) as e:
        co.embed(model=server["model"], texts=["x"], input_type="search_document",
                 output_dimension=8, embedding_types=["float"])
    assert "dimensions" in e.value.body["message"]
    with pytest.raises(cohere.errors.BadRequestError):
        co.embed(model=server["model"], texts=["x"], input_type="search_document",
                 embedding_types=["int4"])
    with pytest.raises(cohere.errors.BadRequestError):
        co.embed(model=server["model"], texts=["x"], input_type="summary")


def test_huggingface_hub_feature_extraction(server, reference):
    client = InferenceClient(base_url=server["url"], api_key=server["api_key"])
    cases = plain_cases(reference)[:8]
    for c in cases:
        v = client.feature_extraction(c["text"])
        assert v.shape == (1, len(c["embedding"]))
        assert_close(v.tolist(), [c])
    cases32 = plain_cases(reference, dims=32)[:4]
    v = client.feature_extraction(cases32[0]["text"], dimensions=32)
    assert_close(v.tolist(), cases32[:1])


def test_llamaindex_text_embeddings_inference(server, reference):
    emb = TextEmbeddingsInference(model_name=server["model"], base_url=server["url"],
                                  auth_token=server["api_key"])
    # LlamaIndex strips each text before sending (its own choice): compare the texts
    # that stripping leaves as they are.
    cases = [c for c in plain_cases(reference) if c["text"] == c["text"].strip()]
    assert len(cases) >= 10
    assert_close(emb.get_text_embedding_batch([c["text"] for c in cases]), cases)
    assert_close([emb.get_query_embedding(cases[0]["text"])], cases[:1])


def test_int8_vectors_in_qdrant(co, server, pipeline):
    """The pipeline's corpus stored as int8 vectors from /v2/embed; each query's top 10
    from Qdrant equals a brute-force search over the same int8 vectors, and stays close
    to the float recall transformers' vectors give (pipeline.json)."""
    corpus, queries, k = pipeline["corpus"], pipeline["queries"], pipeline["top_k"]
    assert pipeline["embedding_instruction"] == reference_instruction()
    docs = co.embed(model=server["model"], texts=corpus, input_type="search_document",
                    embedding_types=["int8"]).embeddings.int8
    asked = co.embed(model=server["model"], texts=[q["query"] for q in queries],
                     input_type="search_query", embedding_types=["int8"]).embeddings.int8
    assert all(-127 <= x <= 127 for d in docs for x in d)
    db = QdrantClient(":memory:")
    db.create_collection("int8", vectors_config=VectorParams(size=len(docs[0]), distance=Distance.COSINE))
    db.upsert("int8", points=[PointStruct(id=i, vector=[float(x) for x in d]) for i, d in enumerate(docs)])
    overlap = []
    for q, vec in zip(queries, asked):
        hits = db.query_points("int8", query=[float(x) for x in vec], limit=k).points
        brute = sorted(range(len(docs)), key=lambda i: -cosine(vec, docs[i]))[:k]
        assert [h.id for h in hits] == brute, q["query"]
        float_top = [r["id"] for r in q["recall"]]
        assert hits[0].id == float_top[0], q["query"]
        overlap.append(len(set(h.id for h in hits) & set(float_top)))
    # Measured: 10 of 10 for each of the four queries (f32 on the CPU); one place of
    # slack for a kernel whose last-bit differences move a rounding step.
    assert min(overlap) >= k - 1, overlap


def reference_instruction():
    return "Given a web search query, retrieve relevant passages that answer the query"
