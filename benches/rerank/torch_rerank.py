"""Rerank throughput of transformers with the Qwen3-Reranker model card's own scoring
code, on the pairs of pairs.json; prints the JSON line qembed-bench-rerank prints.

The card's code, kept as it is: left-padding tokenizer, the chat-template prefix and
suffix tokenised once, each formatted pair tokenised alone (no attention mask, cut to
8192 minus the template), prefix + ids + suffix, `tokenizer.pad`, the full causal LM
forward, `logits[:, -1, :]` at the yes/no ids, log_softmax over [no, yes], exp.
One change: the card scores its pairs as one batch; 128 pairs of up to ~450 tokens
would need ~17 GB for the full-vocabulary logits of every position in bf16, so the
pairs go through in batches of --batch-size (8) in file order, each padded to its
longest pair as the card pads.

Timed: tokenisation, padding, forward and scoring of all pairs, --reps times, after a
warm-up on the first pair.
"""
import argparse
import json
import platform
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--pairs", default="benches/rerank/pairs.json")
p.add_argument("--dtype", default="bf16")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--reps", type=int, default=2)
p.add_argument("--limit", type=int, default=0, help="score only the first N pairs (0: all)")
p.add_argument("--scores", help="write each pair's logit and score here, in order")
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]

rows = json.load(open(a.pairs))["pairs"]
if a.limit:
    rows = rows[:a.limit]

# ---- The model card's code (Qwen/Qwen3-Reranker-0.6B, "Transformers Usage"). ----
def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = 'Given a web search query, retrieve relevant passages that answer the query'
    output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
        instruction=instruction, query=query, doc=doc)
    return output


def process_inputs(pairs):
    inputs = tokenizer(
        pairs, padding=False, truncation='longest_first',
        return_attention_mask=False, max_length=max_length - len(prefix_tokens) - len(suffix_tokens)
    )
    for i, ele in enumerate(inputs['input_ids']):
        inputs['input_ids'][i] = prefix_tokens + ele + suffix_tokens
    # The card also passes max_length=max_length, which pad() ignores with padding=True.
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt")
    for key in inputs:
        inputs[key] = inputs[key].to(model.device)
    return inputs


@torch.no_grad()
def compute_logits(inputs, **kwargs):
    batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    # Also kept: the logit difference, which compare.py sets beside qembed's.
    logits = (true_vector.float() - false_vector.float()).tolist()
    batch_scores = torch.stack([false_vector, true_vector], dim=1)
    batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
    scores = batch_scores[:, 1].exp().tolist()
    return scores, logits


tokenizer = AutoTokenizer.from_pretrained(a.model, padding_side='left')
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()
token_false_id = tokenizer.convert_tokens_to_ids("no")
token_true_id = tokenizer.convert_tokens_to_ids("yes")
max_length = 8192
prefix = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
# ---- End of the card's code. ----

pairs = [format_instruction(r["instruction"], r["query"], r["document"]) for r in rows]
batches = [pairs[i:i + a.batch_size] for i in range(0, len(pairs), a.batch_size)]


def score_all():
    scores, logits, tokens, padded = [], [], 0, 0
    for batch in batches:
        inputs = process_inputs(batch)
        s, l = compute_logits(inputs)
        scores += s
        logits += l
        tokens += int(inputs["attention_mask"].sum())
        padded += inputs["input_ids"].numel()
    return scores, logits, tokens, padded


compute_logits(process_inputs(pairs[:1]))  # warm-up: one pair
times, cpu = [], 0.0
for _ in range(max(a.reps, 1)):
    t, c = time.perf_counter(), time.process_time()
    scores, logits, tokens, padded = score_all()
    times.append(time.perf_counter() - t)
    cpu += time.process_time() - c
mean, cpu_mean = sum(times) / len(times), cpu / len(times)

if a.scores:
    with open(a.scores, "w") as f:
        json.dump([{"logit": l, "score": s} for l, s in zip(logits, scores)], f)


def cpu_info():
    model_name, flags = "", []
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model_name:
            model_name = value.strip()
        if key.strip() == "flags" and not flags:
            flags = value.split()
    simd = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512vl",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]
    return model_name, [f for f in simd if f in flags]


cpu_model, cpu_flags = cpu_info()
config = torch.__config__.show()
onednn = next((l.strip() for l in config.splitlines() if "MKL-DNN" in l or "oneDNN" in l), "")
print(json.dumps({
    "engine": "torch", "dtype": a.dtype, "threads": torch.get_num_threads(),
    "pairs": len(pairs), "tokens": tokens, "padded_tokens": padded, "reps": len(times),
    "batch_size": a.batch_size, "seconds": mean, "seconds_each": times, "best_seconds": min(times),
    "pairs_per_s": len(pairs) / mean, "tokens_per_s": tokens / mean, "tokens_per_cpu_s": tokens / cpu_mean,
    "timed": "the card's process_inputs + compute_logits over all pairs in batches",
    "cpu_model": cpu_model, "cpu_flags": cpu_flags,
    "kernels": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "onednn": onednn, "mkldnn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                "attention": model.config._attn_implementation},
    "python": platform.python_version(),
    "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
}), flush=True)
