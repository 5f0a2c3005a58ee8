"""Tokens/s of transformers' Qwen3Model (sdpa, padded batches, last-token pooling) for
the shapes qembed-bench-forward runs; one JSON line per shape."""
import argparse, json, time

import torch
from transformers import Qwen3Model

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--dtype", default="f32")
p.add_argument("--shapes", default="1x16,32x128,8x512,mixed")
p.add_argument("--reps", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
model = Qwen3Model.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").eval()
vocab = model.config.vocab_size


def lengths(shape):
    if shape == "mixed":
        return [8 + (i * 337) % 505 for i in range(16)]
    b, l = shape.split("x")
    return [int(l)] * int(b)


for shape in a.shapes.split(","):
    lens = lengths(shape)
    seqs = [[(s * 7919 + t * 104729) % (vocab - 32) for t in range(l)] for s, l in enumerate(lens)]
    width = max(lens)
    # Left padding, as Qwen3-Embedding's reference code pads, so the last column is each
    # sequence's last token.
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])

    def run():
        with torch.inference_mode():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            return h.float()

    if sum(lens) < 1024:  # warm-up only where one-off costs would show
        run()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.reps):
        run()
    secs = (time.perf_counter() - t) / a.reps
    cpu_secs = (time.process_time() - cpu) / a.reps
    print(json.dumps({"engine": "torch", "dtype": a.dtype, "shape": shape, "tokens": sum(lens),
                      "seconds": secs, "tokens_per_s": sum(lens) / secs,
                      "tokens_per_cpu_s": sum(lens) / cpu_secs}), flush=True)
