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
import math
import os
import random
import sys

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer", "tokenizer.json")
TEXTS, SHORTEST, LONGEST = 100, 8, 900

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "benches", "embed", "texts.jsonl")
tok = Tokenizer.from_file(TOKENIZER)


def count(text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


pipeline = json.load(open(os.path.join(ROOT, "models", "pipeline.json")))
sentences = pipeline["corpus"] + [q["query"] for q in pipeline["queries"]]
rng = random.Random(20261203)
texts = []
for i in range(TEXTS):
    target = round(SHORTEST * (LONGEST / SHORTEST) ** (i / (TEXTS - 1)))
    parts = []
    while count(" ".join(parts)) < target:
        s = rng.choice(sentences)
        if rng.random() < 0.2:
            words = s.split()
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 99999)))
            s = " ".join(words)
        parts.append(s[0].upper() + s[1:] + ".")
    texts.append(" ".join(parts))
rng.shuffle(texts)
counts = [count(t) for t in texts]
assert min(counts) >= SHORTEST and max(counts) <= LONGEST + 40, (min(counts), max(counts))
with open(out, "w") as f:
    for t in texts:
        f.write(json.dumps(t, ensure_ascii=False) + "\n")
print(f"wrote {out}: {len(texts)} texts, {min(counts)}-{max(counts)} tokens, "
      f"total {sum(counts)} (+1 end-of-text token each), median {sorted(counts)[len(counts) // 2]}")
