"""The end-to-end benchmark's bookkeeping (benches/embed/run.sh), one JSON line each:

    compare.py qembed OUT.jsonl LOG START END DTYPE QUANTIZE
        qembed's whole-process tokens/s, from its own token counts (end-of-text included),
        and the kernel and load time its JSON log (`--json-logs`, `QEMBED_LOG=info`) gives
    compare.py vectors QEMBED.jsonl ST.jsonl TUNED.jsonl
        the worst and mean cosine of qembed's vectors against each PyTorch run's
"""
import json
import math
import sys


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


if sys.argv[1] == "qembed":
    out, log, start, end, dtype, quantize = sys.argv[2:8]
    loaded = [line["fields"] for line in load(log)
              if line.get("fields", {}).get("message") == "model loaded"]
    assert len(loaded) == 1, f"no 'model loaded' line in {log}"
    kernel, load_secs = loaded[0]["cpu_kernel"], loaded[0]["secs"]
    rows = load(out)
    assert [r["index"] for r in rows] == list(range(len(rows))), "qembed lost or reordered texts"
    tokens = sum(r["tokens"] for r in rows)
    secs = float(end) - float(start)
    print(json.dumps({"engine": "qembed embed (whole process)", "dtype": dtype,
                      "quantize": quantize, "cpu_kernel": kernel, "texts": len(rows),
                      "tokens": tokens, "load_seconds": load_secs,
                      "seconds": secs, "tokens_per_s": tokens / secs}), flush=True)
else:
    qembed = [r["embedding"] for r in load(sys.argv[2])]
    for name, path in (("sentence-transformers", sys.argv[3]), ("transformers-tuned", sys.argv[4])):
        other = load(path)
        assert len(other) == len(qembed), (name, len(other), len(qembed))
        cos = [cosine(a, b) for a, b in zip(qembed, other)]
        print(json.dumps({"vectors": f"qembed vs {name}", "texts": len(cos),
                          "worst_cosine": min(cos), "mean_cosine": sum(cos) / len(cos)}),
              flush=True)
