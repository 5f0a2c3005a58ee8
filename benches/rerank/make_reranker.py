"""A Qwen3-Reranker-0.6B-shaped checkpoint with random weights, for throughput only.

Same architecture and sizes as the published reranker (Qwen3ForCausalLM, hidden 1024,
28 layers, 16 query / 8 kv heads, head_dim 128, intermediate 3072, vocab 151669, tied
input/output embeddings), saved with transformers in bf16 like it. The weights are
random, so the scores mean nothing, but every pair costs what it would with the real
model. The real Qwen3 tokenizer is copied in beside it (both engines tokenise the pairs
themselves), from ../shared/data/qwen3-tokenizer relative to the repository root.

    python benches/rerank/make_reranker.py /tmp/qwen3-reranker-0.6b-shape

Not committed (1.2 GB): write it outside the repository.
"""
import os
import shutil
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer")

out = sys.argv[1]
if os.path.abspath(out).startswith(ROOT + os.sep):
    sys.exit(f"{out} is inside the repository; write the checkpoint elsewhere (e.g. /tmp)")
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                  rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True,
                  bos_token_id=151643, eos_token_id=151645, architectures=["Qwen3ForCausalLM"])
model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(TOKENIZER, name), os.path.join(out, name))
print("wrote", out)
