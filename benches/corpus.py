"""What the benchmarks' fixed inputs are made of, shared by the scripts that write them
(benches/embed/make_texts.py, benches/rerank/make_pairs.py): models/pipeline.json's
sentences, the real Qwen3 tokenizer's count, and texts drawn from the sentences with a
seeded generator until they reach a target length.
"""
import json
import os

from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer", "tokenizer.json")

_tok = Tokenizer.from_file(TOKENIZER)


def count(text: str) -> int:
    """Tokens of `text` without the special tokens an engine adds."""
    return len(_tok.encode(text, add_special_tokens=False).ids)


def pipeline() -> dict:
    """models/pipeline.json: its corpus and queries."""
    with open(os.path.join(ROOT, "models", "pipeline.json")) as f:
        return json.load(f)


def draw_text(rng, sentences, target: int) -> str:
    """Sentences drawn by `rng` (one in five with a number put among its words),
    capitalised and full-stopped, until the text reaches `target` tokens (the last one
    may overshoot by a sentence)."""
    parts = []
    while count(" ".join(parts)) < target:
        s = rng.choice(sentences)
        if rng.random() < 0.2:
            words = s.split()
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 99999)))
            s = " ".join(words)
        parts.append(s[0].upper() + s[1:] + ".")
    return " ".join(parts)
