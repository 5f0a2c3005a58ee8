"""Retrieve then rerank, as an application does it, with both servers running: the
corpus embedded through the OpenAI SDK, stored and searched in Qdrant (its in-process
local mode), the top 10 reranked through the Cohere SDK; recall and final order
checked against models/pipeline.json, which transformers produced offline for the same
fixtures (models/generate.py)."""

import cohere
import openai
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

# f32 on the CPU; the smallest gaps the order depends on are far wider (asserted below).
TOL = 1e-4


def test_retrieve_then_rerank(server, reranker, pipeline):
    assert pipeline["embedding_fixture"] == server["model"]
    assert pipeline["rerank_fixture"] == reranker["model"]
    corpus, queries, k = pipeline["corpus"], pipeline["queries"], pipeline["top_k"]
    assert len(corpus) > k and queries

    emb = openai.OpenAI(base_url=server["base_url"], api_key=server["api_key"])
    # Documents as they are; queries with the retrieval instruction (the server's
    # extension field, sent the SDK's way for fields it does not name).
    docs = emb.embeddings.create(model=server["model"], input=corpus)
    dim = len(docs.data[0].embedding)
    asked = emb.embeddings.create(model=server["model"], input=[q["query"] for q in queries],
                                  extra_body={"instruction": pipeline["embedding_instruction"]})

    db = QdrantClient(":memory:")
    db.create_collection("corpus", vectors_config=VectorParams(size=dim, distance=Distance.COSINE))
    db.upsert("corpus", points=[PointStruct(id=d.index, vector=d.embedding,
                                            payload={"text": corpus[d.index]})
                                for d in docs.data])
    assert db.count("corpus").count == len(corpus)

    rerank = cohere.ClientV2(base_url=reranker["url"], api_key=reranker["api_key"])
    instruction = pipeline["rerank_instruction"]
    options = None if instruction is None else {"additional_body_parameters": {"instruction": instruction}}
    for q, vec in zip(queries, asked.data):
        hits = db.query_points("corpus", query=vec.embedding, limit=k, with_payload=True).points
        # Recall: the same ten in the same order, with the same cosines.
        assert [h.id for h in hits] == [r["id"] for r in q["recall"]], q["query"]
        for h, r in zip(hits, q["recall"]):
            assert abs(h.score - r["cosine"]) <= TOL, (q["query"], h.id, h.score, r["cosine"])
        cos = [r["cosine"] for r in q["recall"]]
        assert min(a - b for a, b in zip(cos, cos[1:])) > 2 * TOL
        assert q["recall_margin"] > 2 * TOL

        # Rerank those ten, in recall order, as the application would pass them on.
        r = rerank.rerank(model=reranker["model"], query=q["query"],
                          documents=[h.payload["text"] for h in hits], request_options=options)
        final = [(hits[x.index].id, x.relevance_score) for x in r.results]
        assert [i for i, _ in final] == [x["id"] for x in q["reranked"]], q["query"]
        for (i, s), want in zip(final, q["reranked"]):
            assert abs(s - want["score"]) <= TOL, (q["query"], i, s, want["score"])
        assert q["min_adjacent_score_gap"] > 2 * TOL
        # The reranker changes the order: the test would catch a reranker that did nothing.
        assert [i for i, _ in final] != [h.id for h in hits]
