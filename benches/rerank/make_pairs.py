"""The fixed (query, document) pairs both rerank benchmarks score: pairs.json.

4 queries x 32 documents = 128 pairs, deterministic. Queries are the first texts of 8-20
tokens (the real Qwen3 tokenizer's count) among models/pipeline.json's queries, then its
corpus; each query gets its own 32
documents, sentences of pipeline.json's corpus drawn with a fixed seed (some with a
number in them) until the document reaches its target length, targets spread evenly
over 50-400 tokens as a retrieval stage's candidates would be, then shuffled
(a query's candidates come in retrieval order, not by length). The token counts are
checked here with the tokenizer both engines use, so the file states what it holds.

    python benches/rerank/make_pairs.py [OUT]   # default benches/rerank/pairs.json
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpus import ROOT, count, draw_text, pipeline  # noqa: E402

QUERIES, DOCS_PER_QUERY = 4, 32
QUERY_TOKENS, DOC_TOKENS = (8, 20), (50, 400)

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "benches", "rerank", "pairs.json")
corpus = pipeline()
candidates = [q["query"] for q in corpus["queries"]] + corpus["corpus"]
queries = [q for q in candidates if QUERY_TOKENS[0] <= count(q) <= QUERY_TOKENS[1]][:QUERIES]
assert len(queries) == QUERIES, queries
sentences = corpus["corpus"]

rng = random.Random(20261126)
pairs = []
for query in queries:
    group = []
    for j in range(DOCS_PER_QUERY):
        # Evenly spread targets; the last sentence added may overshoot by one sentence.
        target = DOC_TOKENS[0] + j * (DOC_TOKENS[1] - DOC_TOKENS[0] - 20) // (DOCS_PER_QUERY - 1)
        document = draw_text(rng, sentences, target)
        n = count(document)
        assert DOC_TOKENS[0] <= n <= DOC_TOKENS[1], (n, target)
        group.append({"query": query, "document": document, "instruction": None,
                      "query_tokens": count(query), "document_tokens": n})
    # Candidates arrive in retrieval order, which has nothing to do with their length.
    rng.shuffle(group)
    pairs += group

doc_tokens = [p["document_tokens"] for p in pairs]
with open(out, "w") as f:
    json.dump({"generator": "benches/rerank/make_pairs.py",
               "instruction": "null: the model card's default",
               "queries": len(queries), "documents_per_query": DOCS_PER_QUERY,
               "document_tokens": {"min": min(doc_tokens), "max": max(doc_tokens),
                                   "total": sum(doc_tokens)},
               "pairs": pairs}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"wrote {out}: {len(pairs)} pairs, document tokens {min(doc_tokens)}-{max(doc_tokens)}, "
      f"total {sum(doc_tokens)}")
