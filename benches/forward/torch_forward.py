"""Tokens/s of transformers' Qwen3Model (sdpa, padded batches, last-token pooling) for
the shapes qembed-bench-forward and `qembed bench` run; one JSON line per shape.

On a CPU it loads the checkpoint in --model. On a GPU (--device cuda, as the GPU kit's
run.sh calls it) --random builds the model from --model's config.json with random
weights directly on the device, as `qembed bench` does: the arithmetic is the shape's,
and a 4B checkpoint need not be read from disk."""
import argparse, json, time

import torch
from transformers import AutoConfig, Qwen3Model

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="checkpoint directory (config.json at least)")
p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
p.add_argument("--random", action="store_true", help="random weights from config.json")
p.add_argument("--shapes", default="1x16,32x128,8x512,mixed")
p.add_argument("--reps", type=int, default=1)
p.add_argument("--threads", type=int, default=2, help="CPU threads (CPU only)")
a = p.parse_args()
device = torch.device(a.device)
gpu = device.type == "cuda"
if not gpu:
    torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
if a.random:
    config = AutoConfig.from_pretrained(a.model)
    torch.manual_seed(0)
    # Built in the dtype, on the device: no f32 copy of a 4B model first.
    with device:
        model = Qwen3Model._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
else:
    model = Qwen3Model.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
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
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)

    def run():
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=False)
            h = out.last_hidden_state[:, -1]
            # Back on the host, as qembed returns its vectors: the pass is complete.
            return h.float().cpu()

    if gpu or sum(lens) < 1024:  # warm-up where one-off costs would show
        run()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(a.reps):
        run()
    secs = (time.perf_counter() - t) / a.reps
    cpu_secs = (time.process_time() - cpu) / a.reps
    print(json.dumps({"engine": "torch", "device": a.device, "dtype": a.dtype, "shape": shape,
                      "tokens": sum(lens), "seconds": secs, "tokens_per_s": sum(lens) / secs,
                      "tokens_per_cpu_s": sum(lens) / cpu_secs,
                      "torch": torch.__version__}), flush=True)
