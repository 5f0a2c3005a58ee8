#!/usr/bin/env python3
"""Build the small Qwen3 fixture checkpoints in models/ and their reference outputs.

Real Qwen3-Embedding / Qwen3-Reranker weights are not reachable from our machines, so
the tests run on tiny checkpoints of the *real* architecture (transformers' Qwen3
classes, saved with `save_pretrained`) with random weights, and compare qembed's output
with what transformers computes for them:

- embedding fixtures (qwen3-tiny-*): the embeddings of `Qwen3Model` + last-token pooling;
- reranker fixtures (qwen3-rerank-*): `Qwen3ForCausalLM` scored by the Qwen3-Reranker
  model card's method (its chat template, left-padded batches, log_softmax over the
  "no"/"yes" logits at the last position), with the yes/no rows of the output matrix
  spread so that scores differ clearly between documents;
- rerank-template-real-vocab.json: the card's template ids with the real Qwen3
  tokenizer (../shared/data/qwen3-tokenizer; skipped when it is absent);
- pipeline.json: recall with qwen3-tiny-gqa (top 10 by cosine), then rerank with
  qwen3-rerank-tied, for an end-to-end test.

Each fixture directory holds config.json, tokenizer.json, tokenizer_config.json,
the safetensors weights and reference.json. The script is deterministic: run it
again and the files come out the same (same library versions, see requirements.txt,
and the same machine: f32 results can differ in the last bits between CPUs).

    python -m venv .venv && .venv/bin/pip install -r models/requirements.txt
    .venv/bin/python models/generate.py                  # everything
    .venv/bin/python models/generate.py qwen3-rerank-tied pipeline   # only these
"""

import hashlib
import json
import os
import random
import shutil
import sys
import warnings

import torch
import transformers
import tokenizers
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, decoders, processors, trainers
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


def build_tokenizer(vocab_size: int, eos_post_processor: bool, lines=None, added=()) -> Tokenizer:
    """A byte-level BPE with Qwen's pipeline (NFC, Qwen split regex, byte-level) trained
    on a small corpus (`lines`, default `corpus()`), with Qwen's special tokens appended
    after the regular vocabulary and then `added` as plain (non-special) added tokens."""
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
    tok.train_from_iterator(corpus() if lines is None else lines, trainer=trainer)
    tok.add_special_tokens(SPECIAL)
    if added:
        # As in the real Qwen3 tokenizer.json: added, but special=false and not normalized.
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
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
    {
        # Activation outliers as real checkpoints have them, for `--quantize int8`: a few
        # hidden channels 30x the rest in the embeddings and in every layer's two norm
        # weights, so that the inputs of qkv and gate_up carry them (see add_outliers).
        "name": "qwen3-tiny-outliers",
        "seed": 55,
        "tokenizer_vocab": 900,
        "eos_post_processor": True,
        "vocab_pad": 0,
        "config": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=2048, tie_word_embeddings=True),
        "dtype": torch.bfloat16,
        "causal_lm": False,
        "max_shard_size": None,
        "outliers": {"channels": [5, 23, 50], "scale": 30.0},
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


def add_outliers(model: torch.nn.Module, channels: list, scale: float):
    """Hidden channels `scale` times the rest in the embedding table and in every decoder
    layer's input and post-attention norm weights (not the final norm), as the massive
    activations of real LLM checkpoints; and, as in those checkpoints, the weights that
    read those channels (the input columns of q/k/v and gate/up) small in proportion
    (divided by `scale`^2, the two factors the channel's activations carry), so that an
    outlier channel contributes to the products like any other and the other channels
    still carry the text. Without that compensation the outliers would drown the other
    channels in the reference too, and int8 rounding them away would cost nothing."""
    consumers = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_tokens" in name:
                p[:, channels] *= scale
            elif name.endswith("input_layernorm.weight") or name.endswith("post_attention_layernorm.weight"):
                p[channels] *= scale
            elif any(c in name for c in consumers):
                p[:, channels] /= scale * scale


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
    if "outliers" in spec:
        add_outliers(model, **spec["outliers"])
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


# ---------------------------------------------------------------------------------------
# Qwen3-Reranker fixtures: Qwen3ForCausalLM checkpoints scored with the model card's
# yes/no method.

# The model card's template, verbatim.
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
RERANK_MAX_LENGTH = 8192  # the card's default
# In the real Qwen3 vocabulary these are added tokens, but not special ones.
THINK = ["<think>", "</think>"]
RERANK_REFERENCE = ("Qwen3ForCausalLM (f32, eager), model card's template, left padding, "
                    "log_softmax over [no, yes] at the last position")


def rerank_body(query: str, doc: str, instruction) -> str:
    """The card's `format_instruction`; no instruction means the card's default (the
    same sentence as the embedding models' default)."""
    if instruction is None:
        instruction = INSTRUCTION
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


RERANK_GROUPS = [
    {"name": "capital", "query": "What is the capital of China?", "instruction": None, "max_length": None,
     "documents": [
         "The capital of China is Beijing.",
         "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
         "Beijing is the capital city of the country and its history is long.",
         "The river runs from the mountain to the city.",
         "Paris is the capital of France.",
     ]},
    {"name": "custom_instruction", "query": "how do I roll back a bad deploy?",
     "instruction": "Judge whether the passage explains how to roll back a deploy", "max_length": None,
     "documents": [
         "Drain the green worker, switch the queue back to blue, then rollback the index.",
         "The kitchen garden has green herbs and blue flowers.",
         "A rollback restores the previous model weights from the shard cache.",
         "Latency and throughput metrics are ready in the health report.",
     ]},
    {"name": "chinese", "query": "如何在不影响线上业务的前提下完成模型的平滑升级?", "instruction": None, "max_length": None,
     "documents": [
         "在当前AI服务快速迭代的背景下,模型更新频繁,需要蓝绿部署来完成平滑升级。",
         "北京是中国的首都。",
         "Blue green deploy: switch traffic after the new model is ready.",
         "今天的天气很好,我们去公园散步。",
     ]},
    {"name": "code", "query": "How do I double a number in Python?", "instruction": None, "max_length": None,
     "documents": [
         "def foo(x):\n    return x * 2  # double it\n\nprint(foo(21))\n",
         "fn double(x: i32) -> i32 {\n    x * 2\n}\n",
         "SELECT name FROM users WHERE age > 21;",
         "for i in range(3):\n\tprint(i ** 2)\n",
     ]},
    {"name": "space_document", "query": "what is in the empty document?", "instruction": None, "max_length": None,
     "documents": [" ", "a", "The document is empty except for one space."]},
    {"name": "truncated", "query": "Which passage talks about the rotary attention kernel?", "instruction": None,
     "max_length": 128,
     "documents": [
         long_text(21, 400),
         long_text(22, 150),
         "The rotary attention kernel runs on every layer.",
     ]},
    # The default instruction spelt out: the same ids as `capital`'s first document.
    {"name": "single", "query": "What is the capital of China?", "instruction": INSTRUCTION, "max_length": None,
     "documents": ["The capital of China is Beijing."]},
    {"name": "many", "query": "how does the server drain requests before a blue green switch?",
     "instruction": None, "max_length": None,
     "documents": [
         "The server drains the request queue, waits for every worker, then switches blue to green.",
         "A green deploy is ready when the health check passes.",
         "The mountain river runs past the city garden.",
         "Throughput drops while the queue drains.",
         "Music and art in the history of the capital.",
         "A literal <|im_end|> inside a document.",
     ] + [long_text(200 + i, 6 + 3 * i) for i in range(9)]},
]

# An end-to-end recall-then-rerank case (pipeline.json): embed with an embedding fixture,
# keep the top 10 by cosine, rerank those with a reranker fixture.
PIPELINE_EMBED = "qwen3-tiny-gqa"
PIPELINE_RERANK = "qwen3-rerank-tied"
PIPELINE_TOP_K = 10
PIPELINE_CORPUS = [
    "the server drains the request queue before a blue green switch",
    "a worker reads a batch of tokens from the queue",
    "rollback the deploy if the health metric is not ready",
    "the embedding model returns one vector for each passage",
    "rotary attention in each layer of the model",
    "the kernel computes the attention of one head",
    "shard the weight of each layer across the worker",
    "the cache holds the key and value of each token",
    "latency and throughput of the search index",
    "retrieve the passage that answers the query",
    "the capital of a country is a city",
    "the river runs from the mountain to the city",
    "music and art in the history of the city",
    "the garden is green and the kitchen is blue",
    "science is the history of a language",
    "the index is built from passage vectors",
    "upgrade the model and switch the server to green",
    "the norm of the vector is one",
    "a request to the server has a response",
    "the health check reports ready after the drain",
    "deploy the new shard and upgrade the cache",
    "the tensor of a layer has a weight and a norm",
    "the queue of the worker is full of requests",
    "search the index for the query vector",
    "the mountain and the river are in the country",
    "a language has a history of music and art",
    "the batch is a tensor of token embeddings",
    "the metric of latency was high at the head of the queue",
    "blue and green are two servers for a deploy",
    "the response has the vector of the query",
]
# With random weights the instruction dominates the query vectors, so recall sets overlap
# a lot; these queries give two different top-10 sets, reranked into different orders.
PIPELINE_QUERIES = [
    "how does the server drain requests before a switch",
    "which city is the capital",
    "which layer has a norm weight",
    "the river and the mountain of the capital city in the country",
]

# Real-vocabulary check of the template (rerank-template-real-vocab.json).
REAL_TOKENIZER = os.path.join(HERE, "..", "..", "shared", "data", "qwen3-tokenizer")
REAL_VOCAB_CASES = [
    {"name": "english", "query": "What is the capital of China?", "instruction": None, "max_length": None,
     "document": "The capital of China is Beijing."},
    {"name": "chinese", "query": "如何完成模型的平滑升级?", "instruction": "判断文档是否回答了问题", "max_length": None,
     "document": "在当前AI服务快速迭代的背景下,模型更新频繁,需要蓝绿部署来完成平滑升级。"},
    {"name": "literal_im_end", "query": "Where does the chat turn end?", "instruction": None, "max_length": None,
     "document": "A turn ends with <|im_end|> and the next one starts with <|im_start|>assistant."},
    # 64 leaves the body 16 tokens: the document is cut in the middle...
    {"name": "truncated", "query": "rope", "instruction": "Find", "max_length": 64,
     "document": long_text(31, 60)},
    # ...or, with the default instruction, the body is cut inside the instruction: the
    # card truncates the whole body, not the document alone.
    {"name": "truncated_in_instruction", "query": "What is the capital of China?", "instruction": None,
     "max_length": 64, "document": "The capital of China is Beijing."},
]

RERANK_FIXTURES = [
    {
        # Like Qwen3-Reranker-0.6B: tied embeddings (no lm_head tensor), bf16, one file.
        "name": "qwen3-rerank-tied",
        "seed": 55,
        "tokenizer_vocab": 1000,
        "vocab_pad": 0,
        "config": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=2048, tie_word_embeddings=True),
        "dtype": torch.bfloat16,
        "max_shard_size": None,
    },
    {
        # Like Qwen3-Reranker-4B/8B: its own lm_head, f16, sharded with an index, vocabulary
        # padded past the tokenizer like the real checkpoints.
        "name": "qwen3-rerank-head",
        "seed": 66,
        "tokenizer_vocab": 600,
        "vocab_pad": 7,
        "config": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=48, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=1024, tie_word_embeddings=False),
        "dtype": torch.float16,
        "max_shard_size": "60KB",
    },
]


def generator_info(reference: str) -> dict:
    return {
        "script": "models/generate.py",
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "reference": reference,
    }


def write_json(path: str, obj: dict):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.write("\n")


def rerank_corpus():
    """The reranker tokenizer's training text: the template (special tokens cut out,
    they are added tokens), every group's texts, yes/no answers and sentences of the
    embedding corpus's words. Not the pipeline's texts, so that choosing those (for their
    margins) does not change the reranker fixture."""
    rng = random.Random(4321)
    template = RERANK_PREFIX + RERANK_SUFFIX
    for t in SPECIAL + THINK:
        template = template.replace(t, "\n")
    lines = [template] * 50
    for g in RERANK_GROUPS:
        lines += [rerank_body(g["query"], d, g["instruction"]) for d in g["documents"]]
    lines += ["yes", "no", "the answer is yes", "the answer is no"] * 10
    for _ in range(2000):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))))
    return lines


def card_batch(hf_tok, query: str, docs: list, instruction, max_length):
    """The model card's `process_inputs`, verbatim in effect: the body truncated to what
    the template leaves of max_length, the template's ids around it, left padding."""
    max_length = max_length or RERANK_MAX_LENGTH
    prefix_ids = hf_tok.encode(RERANK_PREFIX, add_special_tokens=False)
    suffix_ids = hf_tok.encode(RERANK_SUFFIX, add_special_tokens=False)
    pairs = [rerank_body(query, d, instruction) for d in docs]
    inputs = hf_tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                    max_length=max_length - len(prefix_ids) - len(suffix_ids))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_ids + ele + suffix_ids
    ids = [list(x) for x in inputs["input_ids"]]
    with warnings.catch_warnings():
        # The card passes max_length to pad(), which ignores it with padding=True (and says so).
        warnings.filterwarnings("ignore", message="`max_length` is ignored")
        padded = hf_tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    return ids, padded


def card_scores(model, padded, yes_id: int, no_id: int):
    """The card's `compute_logits`: log_softmax over [no, yes] at the last position;
    also the raw logit difference l_yes - l_no (the score is its sigmoid)."""
    with torch.no_grad():
        logits = model(**padded).logits[:, -1, :]
    true_vector, false_vector = logits[:, yes_id], logits[:, no_id]
    batch = torch.nn.functional.log_softmax(torch.stack([false_vector, true_vector], dim=1), dim=1)
    return (true_vector - false_vector).tolist(), batch[:, 1].exp().tolist()


def last_states(model, seqs: list) -> torch.Tensor:
    """Final-norm hidden states at the last position, one unpadded sequence at a time."""
    with torch.no_grad():
        return torch.stack([model.model(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])


def spread_yes_no(model, seqs: list, yes_id: int, no_id: int, dtype, seed: int):
    """Move the yes/no rows of the output matrix apart along a random direction orthogonal
    to the mean last hidden state, scaled so that l_yes - l_no spreads over about
    [-3.5, 3.5] on these inputs: scores neither saturated nor all alike. The rows keep
    their random midpoint. With tied embeddings the rows are also the input embeddings of
    "yes"/"no" (in the template's prefix) and moving them moves the hidden states: repeat
    a few times; the spread is then checked on the saved checkpoint."""
    g = torch.Generator().manual_seed(seed + 1)
    weight = model.lm_head.weight
    direction = torch.randn(weight.shape[1], generator=g)
    with torch.no_grad():
        mid = (weight[yes_id] + weight[no_id]) / 2
        for _ in range(4):
            h = last_states(model, seqs)
            mean = h.mean(0)
            u = direction - (direction @ mean) / (mean @ mean) * mean
            u = u / u.norm()
            d = u * (3.5 / (h @ u).abs().max())
            weight[yes_id] = (mid + d / 2).to(dtype).float()
            weight[no_id] = (mid - d / 2).to(dtype).float()
    return float(d.norm())


def build_rerank_fixture(spec: dict):
    out = os.path.join(HERE, spec["name"])
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(spec["seed"])

    # Like the real reranker's tokenizer: appends nothing (ByteLevel post-processor only).
    tok = build_tokenizer(spec["tokenizer_vocab"], eos_post_processor=False, lines=rerank_corpus(), added=THINK)
    eos_id = tok.token_to_id("<|endoftext|>")
    for t in SPECIAL + THINK:
        assert tok.encode(t, add_special_tokens=False).ids == [tok.token_to_id(t)], t
    yes_id, no_id = tok.token_to_id("yes"), tok.token_to_id("no")
    assert yes_id is not None and no_id is not None, "yes/no are not tokens"
    assert tok.encode("yes").ids == [yes_id] and tok.encode("no").ids == [no_id]
    vocab_size = tok.get_vocab_size(with_added_tokens=True) + spec["vocab_pad"]
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg_kwargs = dict(spec["config"])
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(cfg_kwargs["max_position_embeddings"]), f, indent=2)
        f.write("\n")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, padding_side="left")
    assert hf_tok.convert_tokens_to_ids("yes") == yes_id and hf_tok.convert_tokens_to_ids("no") == no_id

    config = Qwen3Config(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=eos_id, attention_bias=False, **cfg_kwargs)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    randomise(model, spec["seed"])
    model.eval()
    with torch.no_grad():
        # Tune on exactly the weights that will be stored.
        for p in model.parameters():
            p.copy_(p.to(spec["dtype"]).float())
    tune = [ids for g in RERANK_GROUPS
            for ids in card_batch(hf_tok, g["query"], g["documents"], g["instruction"], g["max_length"])[0]]
    yes_no_distance = spread_yes_no(model, tune, yes_id, no_id, spec["dtype"], spec["seed"])
    model = model.to(spec["dtype"])
    model.config.dtype = spec["dtype"]
    save_kwargs = {"safe_serialization": True}
    if spec["max_shard_size"]:
        save_kwargs["max_shard_size"] = spec["max_shard_size"]
    model.save_pretrained(out, **save_kwargs)

    # The reference: the card's method on the checkpoint reloaded from disk, in f32.
    ref = Qwen3ForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    assert ref.config.tie_word_embeddings == cfg_kwargs["tie_word_embeddings"]
    norms = ref.model.embed_tokens.weight.detach().norm(dim=1)
    median_norm = float(norms.median())
    if cfg_kwargs["tie_word_embeddings"]:
        # The yes/no rows are embeddings too: they must stay ordinary ones.
        for i in (yes_id, no_id):
            assert 0.3 * median_norm < norms[i] < 3 * median_norm, (i, float(norms[i]), median_norm)
    prefix_ids = hf_tok.encode(RERANK_PREFIX, add_special_tokens=False)
    suffix_ids = hf_tok.encode(RERANK_SUFFIX, add_special_tokens=False)

    groups, all_logits, all_scores, min_gap, unpadded_diff, whole_string_mismatch = [], [], [], 1.0, 0.0, 0
    for g in RERANK_GROUPS:
        ids, padded = card_batch(hf_tok, g["query"], g["documents"], g["instruction"], g["max_length"])
        logits, scores = card_scores(ref, padded, yes_id, no_id)
        limit = g["max_length"] or RERANK_MAX_LENGTH
        for doc, seq in zip(g["documents"], ids):
            assert len(seq) <= limit
            assert seq[:len(prefix_ids)] == prefix_ids and seq[-len(suffix_ids):] == suffix_ids
            # What a Rust formatter with the tokenizers crate would build for it.
            body = tok.encode(rerank_body(g["query"], doc, g["instruction"]), add_special_tokens=False).ids
            assert seq == prefix_ids + body[:limit - len(prefix_ids) - len(suffix_ids)] + suffix_ids
            whole = tok.encode(RERANK_PREFIX + rerank_body(g["query"], doc, g["instruction"]) + RERANK_SUFFIX,
                               add_special_tokens=False).ids
            whole_string_mismatch += whole != prefix_ids + body + suffix_ids
        # The same sequences one at a time, without padding (positions from 0).
        for seq, lg in zip(ids, logits):
            with torch.no_grad():
                one = ref(input_ids=torch.tensor([seq])).logits[0, -1]
            unpadded_diff = max(unpadded_diff, abs(float(one[yes_id] - one[no_id]) - lg))
        if g["max_length"]:
            assert len(ids[0]) == g["max_length"] and len(ids[-1]) < g["max_length"], "truncation case"
        ranked = sorted(range(len(scores)), key=lambda i: scores[i])
        if len(ranked) > 1:
            gap, i, j = min((scores[j] - scores[i], i, j) for i, j in zip(ranked, ranked[1:]))
            assert gap >= 1e-3, f"{spec['name']}/{g['name']}: documents {i} and {j} only {gap:.2e} apart"
            min_gap = min(min_gap, gap)
        groups.append({"name": g["name"], "query": g["query"], "instruction": g["instruction"],
                       "max_length": g["max_length"], "documents": g["documents"], "input_ids": ids,
                       "logits": logits, "scores": scores})
        all_logits += logits
        all_scores += scores
    single = next(x for x in groups if x["name"] == "single")
    capital = next(x for x in groups if x["name"] == "capital")
    assert single["input_ids"][0] == capital["input_ids"][0], "explicit default instruction != default"
    assert whole_string_mismatch == 0, "template ids differ when the whole string is encoded at once"
    assert all(0.02 < s < 0.98 for s in all_scores), (min(all_scores), max(all_scores))
    lt = torch.tensor(all_logits)
    spread = {
        "logit_min": min(all_logits), "logit_max": max(all_logits), "logit_std": float(lt.std()),
        "score_min": min(all_scores), "score_max": max(all_scores),
        "min_adjacent_score_gap": min_gap,
        "per_group_score_range": {x["name"]: [min(x["scores"]), max(x["scores"])] for x in groups},
        "batched_vs_unpadded_max_abs_logit_diff": unpadded_diff,
    }
    write_json(os.path.join(out, "reference.json"), {
        "generator": generator_info(RERANK_REFERENCE),
        "fixture": spec["name"],
        "task": "rerank",
        "yes_id": yes_id,
        "no_id": no_id,
        "prefix_ids": prefix_ids,
        "suffix_ids": suffix_ids,
        "default_instruction": INSTRUCTION,
        "max_length": RERANK_MAX_LENGTH,
        "storage_dtype": str(spec["dtype"]).replace("torch.", ""),
        "tie_word_embeddings": cfg_kwargs["tie_word_embeddings"],
        "groups": groups,
        "score_spread": spread,
    })
    print(f"{spec['name']}: vocab {vocab_size}, yes {yes_id} no {no_id}, prefix {len(prefix_ids)} + suffix "
          f"{len(suffix_ids)} tokens, |w_yes - w_no| {yes_no_distance:.2f} (median row norm {median_norm:.2f}), "
          f"l_yes-l_no [{spread['logit_min']:.2f}, {spread['logit_max']:.2f}] std {spread['logit_std']:.2f}, "
          f"scores [{spread['score_min']:.3f}, {spread['score_max']:.3f}], min adjacent gap {min_gap:.4f}, "
          f"batched vs unpadded {unpadded_diff:.1e}")
    for x in groups:
        print(f"  {x['name']:>18}: {len(x['documents'])} docs, scores "
              + " ".join(f"{s:.3f}" for s in x["scores"]))


def build_real_vocab_template():
    """The card's ids with the real Qwen3 tokenizer, for the Rust formatter's test."""
    if not os.path.isfile(os.path.join(REAL_TOKENIZER, "tokenizer.json")):
        print(f"rerank-template-real-vocab: skipped, no tokenizer at {REAL_TOKENIZER}")
        return
    hf_tok = transformers.AutoTokenizer.from_pretrained(REAL_TOKENIZER, padding_side="left")
    yes_id, no_id = hf_tok.convert_tokens_to_ids("yes"), hf_tok.convert_tokens_to_ids("no")
    assert (yes_id, no_id) == (9693, 2152), (yes_id, no_id)
    prefix_ids = hf_tok.encode(RERANK_PREFIX, add_special_tokens=False)
    suffix_ids = hf_tok.encode(RERANK_SUFFIX, add_special_tokens=False)
    cases = []
    for c in REAL_VOCAB_CASES:
        ids = card_batch(hf_tok, c["query"], [c["document"]], c["instruction"], c["max_length"])[0][0]
        cases.append(dict(c, input_ids=ids))
    for c in cases:
        if c["max_length"]:
            assert len(c["input_ids"]) == c["max_length"], c["name"]
    assert 151645 in next(c for c in cases if c["name"] == "literal_im_end")["input_ids"][len(prefix_ids):-len(suffix_ids)]
    with open(os.path.join(REAL_TOKENIZER, "tokenizer.json"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    write_json(os.path.join(HERE, "rerank-template-real-vocab.json"), {
        "generator": generator_info("transformers AutoTokenizer (padding_side left), the model card's "
                                    "process_inputs before padding"),
        "tokenizer": "../shared/data/qwen3-tokenizer",
        "tokenizer_json_sha256": sha,
        "yes_id": yes_id,
        "no_id": no_id,
        "prefix": RERANK_PREFIX,
        "suffix": RERANK_SUFFIX,
        "prefix_ids": prefix_ids,
        "suffix_ids": suffix_ids,
        "default_instruction": INSTRUCTION,
        "max_length": RERANK_MAX_LENGTH,
        "cases": cases,
    })
    print(f"rerank-template-real-vocab: yes {yes_id} no {no_id}, prefix {len(prefix_ids)} + suffix "
          f"{len(suffix_ids)} tokens, {len(cases)} cases ({', '.join(str(len(c['input_ids'])) for c in cases)} ids)")


def build_pipeline():
    """Recall with an embedding fixture exactly as its reference.json is made (one text at
    a time, Qwen3Model f32 eager, last token, L2 norm; queries in the instruction format),
    then rerank the top 10 with a reranker fixture by the card's method."""
    edir = os.path.join(HERE, PIPELINE_EMBED)
    espec = next(s for s in FIXTURES if s["name"] == PIPELINE_EMBED)
    etok = Tokenizer.from_file(os.path.join(edir, "tokenizer.json"))
    eos_id = etok.token_to_id("<|endoftext|>")
    emodel = Qwen3Model.from_pretrained(edir, dtype=torch.float32, attn_implementation="eager")
    emodel.eval()

    def embed(text):
        ids = encode(etok, text, espec["eos_post_processor"], eos_id)
        with torch.no_grad():
            h = emodel(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        return torch.nn.functional.normalize(h, p=2, dim=0)

    rdir = os.path.join(HERE, PIPELINE_RERANK)
    rtok = transformers.AutoTokenizer.from_pretrained(rdir, padding_side="left")
    rmodel = Qwen3ForCausalLM.from_pretrained(rdir, dtype=torch.float32, attn_implementation="eager")
    rmodel.eval()
    yes_id, no_id = rtok.convert_tokens_to_ids("yes"), rtok.convert_tokens_to_ids("no")

    docs = torch.stack([embed(d) for d in PIPELINE_CORPUS])
    queries, recall_margins, rerank_gaps = [], [], []
    for q in PIPELINE_QUERIES:
        cos = docs @ embed(f"Instruct: {INSTRUCTION}\nQuery:{q}")
        order = sorted(range(len(PIPELINE_CORPUS)), key=lambda i: -float(cos[i]))
        top = order[:PIPELINE_TOP_K]
        margin = float(cos[order[PIPELINE_TOP_K - 1]] - cos[order[PIPELINE_TOP_K]])
        assert margin >= 1e-4, f"{q!r}: 10th/11th cosines only {margin:.1e} apart"
        # The recall order inside the top 10 is stable too.
        inner = min(float(cos[a] - cos[b]) for a, b in zip(top, top[1:]))
        assert inner >= 1e-4, f"{q!r}: adjacent recall cosines only {inner:.1e} apart"
        ids, padded = card_batch(rtok, q, [PIPELINE_CORPUS[i] for i in top], None, None)
        logits, scores = card_scores(rmodel, padded, yes_id, no_id)
        final = sorted(range(len(top)), key=lambda j: -scores[j])
        gap = min(scores[a] - scores[b] for a, b in zip(final, final[1:]))
        assert gap >= 1e-3, f"{q!r}: adjacent rerank scores only {gap:.1e} apart"
        recall_margins.append(margin)
        rerank_gaps.append(gap)
        queries.append({
            "query": q,
            "recall": [{"id": i, "cosine": float(cos[i])} for i in top],
            "recall_margin": margin,
            "reranked": [{"id": top[j], "score": scores[j], "logit": logits[j]} for j in final],
            "min_adjacent_score_gap": gap,
        })
    write_json(os.path.join(HERE, "pipeline.json"), {
        "generator": generator_info(
            f"recall: {PIPELINE_EMBED} as in its reference.json (Qwen3Model f32 eager, last token, L2 norm, "
            f"queries as 'Instruct: ...\\nQuery:...'), cosine top {PIPELINE_TOP_K}; rerank: "
            f"{PIPELINE_RERANK} by {RERANK_REFERENCE}, one batch per query in recall order"),
        "embedding_fixture": PIPELINE_EMBED,
        "rerank_fixture": PIPELINE_RERANK,
        "embedding_instruction": INSTRUCTION,
        "rerank_instruction": None,
        "top_k": PIPELINE_TOP_K,
        "corpus": PIPELINE_CORPUS,
        "queries": queries,
    })
    print(f"pipeline: {len(PIPELINE_CORPUS)} documents, {len(queries)} queries, 10th-11th cosine margin "
          f">= {min(recall_margins):.1e}, adjacent rerank gap >= {min(rerank_gaps):.1e}, reorders "
          f"{sum(q['recall'][0]['id'] != q['reranked'][0]['id'] for q in queries)} top-1s")


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    names = sys.argv[1:]
    for spec in FIXTURES:
        if not names or spec["name"] in names:
            build_fixture(spec)
    for spec in RERANK_FIXTURES:
        if not names or spec["name"] in names:
            build_rerank_fixture(spec)
    if not names or "rerank-template-real-vocab" in names:
        build_real_vocab_template()
    if not names or "pipeline" in names:
        build_pipeline()


if __name__ == "__main__":
    main()
