"""The end-to-end benchmark's PyTorch side: the same texts as `qembed embed`, embedded
the way a user of the Python stack would, load excluded from the time.

    --mode st     sentence-transformers' `encode` with its defaults (batch 32; it sorts
                  by length itself), last-token pooling and normalisation as
                  Qwen3-Embedding's own sentence-transformers config has them
    --mode tuned  transformers' `AutoModel` with length-sorted batches of 8, left padding,
                  last-token pooling, normalised: a user who tuned the batching

Each text gets the end-of-text token appended, as Qwen3-Embedding's tokenizer does and
as qembed does (the tokenizer here has no post-processor that adds it). Writes one
vector per line (JSON, in input order) to --out and prints one JSON line of timings.
"""
import argparse
import json
import os
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--texts", required=True)
p.add_argument("--mode", choices=["st", "tuned"], required=True)
p.add_argument("--dtype", default="bf16")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
texts = [json.loads(line) for line in open(a.texts, encoding="utf-8") if line.strip()]
EOS = "<|endoftext|>"
inputs = [t + EOS for t in texts]

load_started = time.perf_counter()
if a.mode == "st":
    from sentence_transformers import SentenceTransformer, models

    # Qwen3-Embedding's own modules: the transformer, last-token pooling, normalisation
    # (built here because the random-weight checkpoint carries no sentence-transformers
    # config of its own).
    word = models.Transformer(a.model, model_kwargs={"dtype": dtype},
                              processor_kwargs={"padding_side": "left"})
    pooling = models.Pooling(word.get_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu")
    tokenizer = word.tokenizer
else:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a.model, padding_side="left")
    model = AutoModel.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").eval()
load_secs = time.perf_counter() - load_started
tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in inputs)

started, cpu = time.perf_counter(), time.process_time()
if a.mode == "st":
    vectors = model.encode(inputs, convert_to_numpy=True).tolist()
else:
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    vectors = [None] * len(inputs)
    with torch.inference_mode():
        for b in range(0, len(order), 8):
            batch = order[b:b + 8]
            enc = tokenizer([inputs[i] for i in batch], padding=True, return_tensors="pt",
                            add_special_tokens=False)
            h = model(**enc).last_hidden_state[:, -1].float()
            h = torch.nn.functional.normalize(h, dim=-1)
            for i, v in zip(batch, h.tolist()):
                vectors[i] = v
secs = time.perf_counter() - started
cpu_secs = time.process_time() - cpu
with open(a.out, "w") as f:
    for v in vectors:
        f.write(json.dumps(v) + "\n")
print(json.dumps({"engine": "sentence-transformers" if a.mode == "st" else "transformers-tuned",
                  "dtype": a.dtype, "texts": len(texts), "tokens": tokens,
                  "load_seconds": load_secs, "seconds": secs, "tokens_per_s": tokens / secs,
                  "tokens_per_cpu_s": tokens / cpu_secs, "torch": torch.__version__,
                  "weights_dtype": str(next(model.parameters()).dtype),
                  "threads": a.threads}), flush=True)
