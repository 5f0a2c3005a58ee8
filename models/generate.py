#!/usr/bin/env python3
"""Build the small Qwen3 fixture checkpoints in models/ and their reference vectors.

Real Qwen3-Embedding weights are not reachable from our machines, so the tests run
on tiny checkpoints of the *real* architecture (transformers' Qwen3 classes, saved
with `save_pretrained`) with random weights, and compare qembed's output with the
embeddings that transformers' `Qwen3Model` + last-token pooling produce for them.

Each fixture directory holds config.json, tokenizer.json, tokenizer_config.json,
the safetensors weights and reference.json. The script is deterministic: run it
again and the files come out the same (same library versions, see requirements.txt).

    python -m venv .venv && .venv/bin/pip install -r models/requirements.txt
    .venv/bin/python models/generate.py
"""

import json
import os
import random
import shutil
import sys

import torch
import transformers
import tokenizers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, processors, trainers
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

HERE = os.path.dirname(os.path.abspath(__file__))

# The split regex of the real Qwen2/Qwen3 tokenizer.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

WORDS = (
    "the model server batch token vector embedding query passage search retrieve index upgrade "
    "blue green switch deploy latency throughput request response queue worker kernel tensor "
    "attention rotary norm layer head weight shard cache metric health ready drain rollback "
    "river mountain city capital country language history science music art garden kitchen "
    "a of and to in is for on with as by at from that this it be are was were has have"
).split()


def long_text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    parts = []
    for i in range(n_words):
        w = rng.choice(WORDS)
        if rng.random() < 0.08:
            w = str(rng.randint(0, 99999))
        parts.append(w)
        if i % 17 == 16:
            parts[-1] += "."
    return " ".join(parts)


CASES = [
    ("capital", "What is the capital of China?"),
    ("gravity", "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects."),
    ("chinese", "在当前AI服务快速迭代的背景下,模型更新频繁,如何在不影响线上业务的前提下完成平滑升级"),
    ("emoji", "I love pizza 🍕🍕 and rockets 🚀! 👩‍👩‍👧"),
    ("code", "def foo(x):\n    return x * 2  # double it\n\nprint(foo(21))\n"),
    ("space", " "),
    ("whitespace", "\n\n\t  \n"),
    ("single_char", "a"),
    ("mixed", "Qwen3-Embedding: 100% 精确 ✓ — naïve café"),
    ("cjk_kr", "東京は日本の首都です。 서울은 한국의 수도입니다."),
    ("literal_special", "Text with <|endoftext|> inside it"),
    ("arabic", "مرحبا بالعالم، كيف حالك؟"),
    ("json", '{"key": [1, 2, 3], "url": "https://example.com/a?b=c&d=e"}'),
    ("repeated", "a" * 64),
    ("padded", "   padded text with spaces   "),
    ("long", long_text(7, 560)),
]

# Cases (by name) that are also checked at reduced Matryoshka dimensions.
REDUCED = {"capital": "min", "chinese": "mid", "code": "min", "emoji": "mid", "long": "mid"}
# Cases that are also checked truncated to a token limit.
TRUNCATED = {"long": 64, "gravity": 8}


def corpus():
    rng = random.Random(1234)
    lines = [text for _, text in CASES]
    lines += [f"Instruct: {INSTRUCTION}\nQuery:" + t for _, t in CASES[:5]]
    for _ in range(3000):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))))
    return lines


def build_tokenizer(vocab_size: int, eos_post_processor: bool) -> Tokenizer:
    """A byte-level BPE with Qwen's pipeline (NFC, Qwen split regex, byte-level) trained
    on a small corpus, with Qwen's special tokens appended after the regular vocabulary."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(SPECIAL)
    eos = tok.token_to_id("<|endoftext|>")
    if eos_post_processor:
        # Newer Qwen3-Embedding revisions: the tokenizer itself appends <|endoftext|>.
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eos)],
        )
    else:
        # Older revisions (and the base Qwen3 tokenizer): byte-level offsets only, no EOS.
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def tokenizer_config(max_len: int) -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "model_max_length": max_len,
        "tokenizer_class": "Qwen2TokenizerFast",
        "unk_token": None,
    }


FIXTURES = [
    {
        # GQA, head_dim != hidden/heads, bf16 on disk, sharded with an index,
        # `model.` prefix plus an untied lm_head, tokenizer that appends EOS itself.
        "name": "qwen3-tiny-gqa",
        "seed": 11,
        "tokenizer_vocab": 1000,
        "eos_post_processor": True,
        "vocab_pad": 0,
        "config": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=2048, tie_word_embeddings=False),
        "dtype": torch.bfloat16,
        "causal_lm": True,
        "max_shard_size": "60KB",
    },
    {
        # MQA-style (1 kv head), head_dim == hidden/heads, f32 on disk, one file,
        # no prefix (saved from Qwen3Model), tokenizer without the EOS post-processor,
        # vocabulary padded past the tokenizer like the real checkpoints.
        "name": "qwen3-tiny-mqa",
        "seed": 22,
        "tokenizer_vocab": 800,
        "eos_post_processor": False,
        "vocab_pad": 29,
        "config": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                       num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, rope_theta=10_000.0,
                       max_position_embeddings=1024, tie_word_embeddings=False),
        "dtype": torch.float32,
        "causal_lm": False,
        "max_shard_size": None,
    },
    {
        # Plain multi-head attention, f16 on disk, one file with the `model.` prefix and
        # tied embeddings (no lm_head tensor saved).
        "name": "qwen3-tiny-f16",
        "seed": 33,
        "tokenizer_vocab": 600,
        "eos_post_processor": False,
        "vocab_pad": 0,
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=1_000_000.0,
                       max_position_embeddings=1024, tie_word_embeddings=True),
        "dtype": torch.float16,
        "causal_lm": True,
        "max_shard_size": None,
    },
    {
        # Enough heads (8) and kv heads (4) for tensor parallelism up to 4 ranks.
        "name": "qwen3-tiny-tp4",
        "seed": 44,
        "tokenizer_vocab": 700,
        "eos_post_processor": True,
        "vocab_pad": 5,
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=16, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=1024, tie_word_embeddings=True),
        "dtype": torch.bfloat16,
        "causal_lm": False,
        "max_shard_size": None,
    },
]


def randomise(model: torch.nn.Module, seed: int):
    """Random weights big enough that different texts give clearly different vectors, and
    norm weights away from 1 so that a missing or misplaced norm shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "v_proj" in name or "o_proj" in name:
                # Larger value/output projections: the pooled token is always the EOS, so
                # only attention carries the text into it; keep that signal strong.
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def encode(tok: Tokenizer, text: str, eos_post_processor: bool, eos_id: int, max_length=None):
    """What the official Qwen3-Embedding recipes feed the model: the tokenizer's ids with
    exactly one <|endoftext|> at the end (appended by the tokenizer in newer revisions,
    by the caller in older ones), truncated to max_length keeping that final EOS."""
    if eos_post_processor:
        ids = tok.encode(text, add_special_tokens=True).ids
        assert ids[-1] == eos_id
        body = ids[:-1]
    else:
        body = tok.encode(text, add_special_tokens=False).ids
    if max_length is not None:
        body = body[: max_length - 1]
    return body + [eos_id]


def matryoshka(raw: torch.Tensor, dims: int) -> list:
    v = raw[:dims]
    return torch.nn.functional.normalize(v, p=2, dim=0).tolist()


def build_fixture(spec: dict):
    out = os.path.join(HERE, spec["name"])
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(spec["seed"])

    tok = build_tokenizer(spec["tokenizer_vocab"], spec["eos_post_processor"])
    eos_id = tok.token_to_id("<|endoftext|>")
    vocab_size = tok.get_vocab_size(with_added_tokens=True) + spec["vocab_pad"]
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg_kwargs = dict(spec["config"])
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(cfg_kwargs["max_position_embeddings"]), f, indent=2)
        f.write("\n")

    config = Qwen3Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=eos_id, attention_bias=False, **cfg_kwargs)
    cls = Qwen3ForCausalLM if spec["causal_lm"] else Qwen3Model
    model = cls(config).to(torch.float32)
    randomise(model, spec["seed"])
    model = model.to(spec["dtype"])
    model.config.dtype = spec["dtype"]
    save_kwargs = {"safe_serialization": True}
    if spec["max_shard_size"]:
        save_kwargs["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(out, **save_kwargs)

    # Reload from disk, as a user would, and compute in f32: the reference sees exactly the
    # stored (rounded) weights, through transformers' own loading of the on-disk format.
    ref_model = Qwen3Model.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ref_model.eval()
    hidden = config.hidden_size
    dims_for = {"min": 32, "mid": (32 + hidden) // 2 // 8 * 8 or 32}

    cases = []
    for name, text in CASES:
        for instructed in (False, True):
            prompt = f"Instruct: {INSTRUCTION}\nQuery:{text}" if instructed else text
            variants = [(None, None)]
            if name in REDUCED:
                variants.append((dims_for[REDUCED[name]], None))
            if name in TRUNCATED:
                variants.append((None, TRUNCATED[name]))
            for dims, max_length in variants:
                ids = encode(tok, prompt, spec["eos_post_processor"], eos_id, max_length)
                with torch.no_grad():
                    out_h = ref_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
                cases.append({
                    "name": name + ("+instruct" if instructed else "")
                    + (f"@{dims}d" if dims else "") + (f"@{max_length}t" if max_length else ""),
                    "text": text,
                    "instruction": INSTRUCTION if instructed else None,
                    "dimensions": dims,
                    "max_length": max_length,
                    "input_ids": ids,
                    "raw": out_h.tolist(),
                    "embedding": matryoshka(out_h, dims or hidden),
                })
    long_tokens = max(len(c["input_ids"]) for c in cases)
    assert long_tokens > 700, f"{spec['name']}: longest input only {long_tokens} tokens"
    assert long_tokens <= config.max_position_embeddings, f"{spec['name']}: {long_tokens} tokens"

    # Vectors of different texts must differ clearly, or parity would prove little.
    full = [torch.tensor(c["embedding"]) for c in cases if c["dimensions"] is None and c["max_length"] is None]
    pairs = sorted(float(a @ b) for i, a in enumerate(full) for b in full[i + 1:])
    worst, median = pairs[-1], pairs[len(pairs) // 2]
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({
            "generator": {
                "script": "models/generate.py",
                "torch": torch.__version__.split("+")[0],
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "reference": "transformers Qwen3Model (f32, eager attention), last_hidden_state of the last token",
            },
            "fixture": spec["name"],
            "hidden_size": hidden,
            "eos_id": eos_id,
            "eos_post_processor": spec["eos_post_processor"],
            "storage_dtype": str(spec["dtype"]).replace("torch.", ""),
            "pairwise_cosine": {"median": median, "max": worst},
            "cases": cases,
        }, f)
        f.write("\n")
    print(f"{spec['name']}: vocab {vocab_size}, {len(cases)} cases, longest {long_tokens} tokens, "
          f"pairwise cosine median {median:.3f} max {worst:.3f}")


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    names = sys.argv[1:]
    for spec in FIXTURES:
        if not names or spec["name"] in names:
            build_fixture(spec)


if __name__ == "__main__":
    main()
