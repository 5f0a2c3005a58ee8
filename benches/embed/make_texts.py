"""The fixed texts the end-to-end embedding benchmark embeds: texts.jsonl.

100 texts, deterministic, of 8 to ~900 tokens (the real Qwen3 tokenizer's count, before
the end-of-text token every engine appends), their target lengths spread evenly in log
space over that range, as a corpus of titles, queries, passages and long chunks is: many
short inputs, a long tail where attention is a large share of the work. Each is
sentences of models/pipeline.json's corpus drawn with a fixed seed (some with a number
in them) until it reaches its target, then the list is shuffled (inputs arrive in no
particular order). One JSON string per line, as `qembed embed` reads them.

    python benches/embed/make_texts.py [OUT]   # default benches/embed/texts.jsonl
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from corpus import ROOT, count, draw_text, pipeline  # noqa: E402

TEXTS, SHORTEST, LONGEST = 100, 8, 900

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "benches", "embed", "texts.jsonl")
corpus = pipeline()
sentences = corpus["corpus"] + [q["query"] for q in corpus["queries"]]
rng = random.Random(20261203)
texts = []
for i in range(TEXTS):
    target = round(SHORTEST * (LONGEST / SHORTEST) ** (i / (TEXTS - 1)))
    texts.append(draw_text(rng, sentences, target))
rng.shuffle(texts)
counts = [count(t) for t in texts]
assert min(counts) >= SHORTEST and max(counts) <= LONGEST + 40, (min(counts), max(counts))
with open(out, "w") as f:
    for t in texts:
        f.write(json.dumps(t, ensure_ascii=False) + "\n")
print(f"wrote {out}: {len(texts)} texts, {min(counts)}-{max(counts)} tokens, "
      f"total {sum(counts)} (+1 end-of-text token each), median {sorted(counts)[len(counts) // 2]}")
