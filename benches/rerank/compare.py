"""Agreement of two engines' scores on the same pairs (the --scores files of
qembed-bench-rerank and torch_rerank.py): max |score diff|, max |logit diff|, and how
many queries get their documents in a different order, over the pairs both scored (the
first N of pairs.json: a run with --limit scores a prefix). Prints one JSON line."""
import json
import sys

a_path, b_path, pairs_path = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else
                                                         "benches/rerank/pairs.json")
a, b = json.load(open(a_path)), json.load(open(b_path))
n = min(len(a), len(b))
a, b = a[:n], b[:n]
rows = json.load(open(pairs_path))["pairs"][:len(a)]
groups = {}
for i, r in enumerate(rows):
    groups.setdefault(r["query"], []).append(i)


def order(scores, idx):
    return sorted(idx, key=lambda i: -scores[i]["score"])


print(json.dumps({
    "a": a_path, "b": b_path, "pairs": len(a),
    "max_abs_score_diff": max(abs(x["score"] - y["score"]) for x, y in zip(a, b)),
    "max_abs_logit_diff": max(abs(x["logit"] - y["logit"]) for x, y in zip(a, b)),
    "queries": len(groups),
    "queries_ordered_differently": sum(order(a, g) != order(b, g) for g in groups.values()),
}))
