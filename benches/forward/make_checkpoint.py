"""A Qwen3-Embedding-0.6B-shaped checkpoint with random weights (not committed: 1.2 GB),
saved with transformers in bf16 like the published one."""
import sys

import torch
from transformers import Qwen3Config, Qwen3Model

out = sys.argv[1]
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                  rope_theta=1_000_000.0, max_position_embeddings=32768, tie_word_embeddings=True)
model = Qwen3Model(cfg).to(torch.bfloat16)
model.save_pretrained(out)
print("wrote", out)
