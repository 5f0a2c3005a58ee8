"""The real Cohere SDK (v2 and v1 clients), LangChain's and LlamaIndex's Cohere
rerankers, and plain HTTP in the Jina, TEI and vLLM shapes against `qembed serve --task
rerank`, unmodified, compared with the scores transformers produced for the fixture by
the model card's code (models/qwen3-rerank-tied/reference.json)."""

import asyncio

import cohere
import pytest
import requests
from langchain_cohere import CohereRerank as LangChainCohereRerank
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank as LlamaIndexCohereRerank

# f32 on the CPU: the in-process parity tests see <= 1.1e-6; this leaves room for JSON.
TOL = 1e-4


def group(ref, name):
    return next(g for g in ref["groups"] if g["name"] == name)


def plain_groups(ref):
    """Groups scored at the server's default pair limit (not the `truncated` one)."""
    groups = [g for g in ref["groups"] if g["max_length"] is None]
    assert len(groups) >= 6
    return groups


def order(scores):
    """Indices from the most relevant down, ties by input order (as the server ranks)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def tokens(g):
    return sum(len(ids) for ids in g["input_ids"])


def assert_ranked(got, g, top_n=None):
    """`got`: (index, score) pairs as the client returned them, most relevant first."""
    want = order(g["scores"])[:top_n]
    assert [i for i, _ in got] == want, g["name"]
    for i, s in got:
        assert abs(s - g["scores"][i]) <= TOL, (g["name"], i, s, g["scores"][i])


def instruction_option(g):
    """The reranker's task, where the group has its own, through the SDK's documented
    way of sending a field its method does not name."""
    if g["instruction"] is None:
        return None
    return {"additional_body_parameters": {"instruction": g["instruction"]}}


@pytest.fixture
def v2(reranker):
    return cohere.ClientV2(base_url=reranker["url"], api_key=reranker["api_key"])


def test_cohere_v2_every_group(v2, reranker, rerank_reference):
    for g in plain_groups(rerank_reference):
        r = v2.rerank(model=reranker["alias"], query=g["query"], documents=g["documents"],
                      top_n=len(g["documents"]), request_options=instruction_option(g))
        assert_ranked([(x.index, x.relevance_score) for x in r.results], g)
        assert r.meta.api_version.version == "2"
        assert r.meta.tokens.input_tokens == tokens(g), g["name"]
        assert r.id


def test_cohere_v2_top_n_and_default(v2, reranker, rerank_reference):
    g = group(rerank_reference, "many")
    r = v2.rerank(model=reranker["model"], query=g["query"], documents=g["documents"], top_n=3)
    assert_ranked([(x.index, x.relevance_score) for x in r.results], g, top_n=3)
    # Without top_n: every document.
    r = v2.rerank(model=reranker["model"], query=g["query"], documents=g["documents"])
    assert_ranked([(x.index, x.relevance_score) for x in r.results], g)


def test_cohere_v2_truncates_long_documents(reranker_128, rerank_reference):
    # Cohere cuts long documents rather than refusing them; the reference cut each
    # pair to 128 tokens as the card does (max_length=128), the server its
    # --max-input-tokens 128.
    g = group(rerank_reference, "truncated")
    assert g["max_length"] == 128 and max(len(i) for i in g["input_ids"]) == 128
    client = cohere.ClientV2(base_url=reranker_128["url"], api_key=reranker_128["api_key"])
    r = client.rerank(model=reranker_128["model"], query=g["query"], documents=g["documents"])
    assert_ranked([(x.index, x.relevance_score) for x in r.results], g)
    assert r.meta.tokens.input_tokens == tokens(g)


def test_cohere_v2_async(reranker, rerank_reference):
    g = group(rerank_reference, "capital")

    async def go():
        client = cohere.AsyncClientV2(base_url=reranker["url"], api_key=reranker["api_key"])
        return await asyncio.gather(*[
            client.rerank(model=reranker["model"], query=g["query"], documents=g["documents"])
            for _ in range(4)
        ])

    for r in asyncio.run(go()):
        assert_ranked([(x.index, x.relevance_score) for x in r.results], g)


def test_cohere_v2_errors(v2, reranker):
    with pytest.raises(cohere.NotFoundError) as e:
        v2.rerank(model="rerank-english-v2.0", query="q", documents=["a"])
    assert "rerank-english-v2.0" in e.value.body["message"]
    with pytest.raises(cohere.BadRequestError) as e:
        v2.rerank(model=reranker["model"], query="q", documents=[])
    assert "documents" in e.value.body["message"]
    with pytest.raises(cohere.BadRequestError):
        v2.rerank(model=reranker["model"], query="q", documents=["a"], top_n=0)
    bad = cohere.ClientV2(base_url=reranker["url"], api_key="wrong")
    with pytest.raises(cohere.UnauthorizedError) as e:
        bad.rerank(model=reranker["model"], query="q", documents=["a"])
    assert e.value.body["message"]


def test_cohere_v1_client(reranker, rerank_reference):
    client = cohere.Client(base_url=reranker["url"], api_key=reranker["api_key"])
    g = group(rerank_reference, "code")
    r = client.rerank(model=reranker["alias"], query=g["query"], documents=g["documents"],
                      top_n=2, return_documents=True)
    assert_ranked([(x.index, x.relevance_score) for x in r.results], g, top_n=2)
    assert [x.document.text for x in r.results] == [g["documents"][x.index] for x in r.results]
    assert r.meta.api_version.version == "1"
    r = client.rerank(model=reranker["alias"], query=g["query"], documents=g["documents"],
                      return_documents=False)
    assert_ranked([(x.index, x.relevance_score) for x in r.results], g)
    assert all(x.document is None for x in r.results)


def test_langchain_cohere_rerank(reranker, rerank_reference):
    g = group(rerank_reference, "many")
    want = order(g["scores"])
    docs = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(g["documents"])]
    # With a client of one's own, as LangChain's docs show for a custom endpoint...
    client = cohere.ClientV2(base_url=reranker["url"], api_key=reranker["api_key"])
    rr = LangChainCohereRerank(client=client, model=reranker["alias"], top_n=4)
    out = rr.compress_documents(docs, g["query"])
    assert [d.metadata["n"] for d in out] == want[:4]
    for d in out:
        assert abs(d.metadata["relevance_score"] - g["scores"][d.metadata["n"]]) <= TOL
    # ...and with base_url, LangChain building the client.
    rr = LangChainCohereRerank(base_url=reranker["url"], cohere_api_key=reranker["api_key"],
                               model=reranker["alias"])
    got = rr.rerank(g["documents"], g["query"], top_n=None)
    assert_ranked([(x["index"], x["relevance_score"]) for x in got], g)


def test_llamaindex_cohere_rerank(reranker, rerank_reference):
    g = group(rerank_reference, "chinese")
    want = order(g["scores"])
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"doc-{i}"), score=0.0)
             for i, d in enumerate(g["documents"])]
    rr = LlamaIndexCohereRerank(top_n=3, model=reranker["alias"], api_key=reranker["api_key"],
                                base_url=reranker["url"], max_retries=1)
    out = rr.postprocess_nodes(nodes, query_str=g["query"])
    assert [n.node.node_id for n in out] == [f"doc-{i}" for i in want[:3]]
    for n in out:
        i = int(n.node.node_id.split("-")[1])
        assert abs(n.score - g["scores"][i]) <= TOL


# Plain HTTP: the Jina (/v1/rerank), TEI (/rerank) and vLLM (/v1/score) shapes.

def post(reranker, path, body, key="default"):
    headers = {}
    key = reranker["api_key"] if key == "default" else key
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(reranker["url"] + path, json=body, headers=headers, timeout=60)


def test_jina_v1_rerank(reranker, rerank_reference):
    g = group(rerank_reference, "space_document")
    r = post(reranker, "/v1/rerank", {"model": reranker["model"], "query": g["query"],
                                      "documents": [{"text": d} for d in g["documents"]]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_ranked([(x["index"], x["relevance_score"]) for x in body["results"]], g)
    # Documents come back unless return_documents is false (Jina's default).
    assert [x["document"]["text"] for x in body["results"]] == \
        [g["documents"][x["index"]] for x in body["results"]]
    assert body["model"] == reranker["model"]
    assert body["usage"]["total_tokens"] == tokens(g)
    g = group(rerank_reference, "custom_instruction")
    r = post(reranker, "/v1/rerank", {"query": g["query"], "documents": g["documents"],
                                      "top_n": 2, "return_documents": False,
                                      "instruction": g["instruction"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_ranked([(x["index"], x["relevance_score"]) for x in body["results"]], g, top_n=2)
    assert all("document" not in x for x in body["results"])


def test_tei_rerank(reranker, rerank_reference):
    g = group(rerank_reference, "many")
    r = post(reranker, "/rerank", {"query": g["query"], "texts": g["documents"],
                                   "return_text": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list)
    assert_ranked([(x["index"], x["score"]) for x in body], g)
    assert [x["text"] for x in body] == [g["documents"][x["index"]] for x in body]
    # raw_scores: the logit l_yes - l_no itself, no text unless asked.
    r = post(reranker, "/rerank", {"query": g["query"], "texts": g["documents"],
                                   "raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body] == order(g["logits"])
    for x in body:
        assert abs(x["score"] - g["logits"][x["index"]]) <= TOL
        assert "text" not in x
    # With `documents` instead of `texts`, /rerank answers in Jina's shape (as vLLM does).
    r = post(reranker, "/rerank", {"query": g["query"], "documents": g["documents"], "top_n": 1})
    assert r.status_code == 200, r.text
    assert_ranked([(x["index"], x["relevance_score"]) for x in r.json()["results"]], g, top_n=1)


def test_tei_rerank_truncate(reranker_128, rerank_reference):
    # TEI refuses over-long input unless truncate is true.
    g = group(rerank_reference, "truncated")
    body = {"query": g["query"], "texts": g["documents"]}
    r = post(reranker_128, "/rerank", body)
    assert 400 <= r.status_code < 500
    err = r.json()
    assert err["error_type"] == "validation" and "128" in err["error"]
    r = post(reranker_128, "/rerank", {**body, "truncate": True})
    assert r.status_code == 200, r.text
    assert_ranked([(x["index"], x["score"]) for x in r.json()], g)


def test_vllm_score(reranker, rerank_reference):
    g = group(rerank_reference, "capital")
    # One text_1 against a list: scores in input order, not ranked.
    r = post(reranker, "/v1/score", {"model": reranker["model"], "text_1": g["query"],
                                     "text_2": g["documents"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["data"]] == list(range(len(g["documents"])))
    assert all(x["object"] == "score" for x in body["data"])
    for x, want in zip(body["data"], g["scores"]):
        assert abs(x["score"] - want) <= TOL
    assert body["usage"]["prompt_tokens"] == tokens(g)
    # Two lists of one length pair up index by index: two groups, one with its own
    # instruction (vLLM's `instruct`) applied to every pair.
    a, b = group(rerank_reference, "code"), group(rerank_reference, "chinese")
    pairs = [(a["query"], d, s) for d, s in zip(a["documents"], a["scores"])] + \
            [(b["query"], d, s) for d, s in zip(b["documents"], b["scores"])]
    r = post(reranker, "/v1/score", {"text_1": [p[0] for p in pairs],
                                     "text_2": [p[1] for p in pairs]})
    assert r.status_code == 200, r.text
    for x, p in zip(r.json()["data"], pairs):
        assert abs(x["score"] - p[2]) <= TOL
    c = group(rerank_reference, "custom_instruction")
    r = post(reranker, "/score", {"text_1": c["query"], "text_2": c["documents"],
                                  "instruct": c["instruction"]})
    assert r.status_code == 200, r.text
    for x, want in zip(r.json()["data"], c["scores"]):
        assert abs(x["score"] - want) <= TOL


def test_http_key_required(reranker):
    body = {"query": "q", "documents": ["a"], "texts": ["a"], "text_1": "q", "text_2": ["a"]}
    for path in ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/score"]:
        for key in [None, "wrong"]:
            r = post(reranker, path, body, key=key)
            assert r.status_code == 401, (path, key, r.text)
        assert post(reranker, path, body).status_code == 200, path
