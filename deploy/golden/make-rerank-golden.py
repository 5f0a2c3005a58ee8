#!/usr/bin/env python3
"""Write a reranker golden set for `qembed-rollout verify` (JSON Lines, one case a line:
{"query", "documents", "instruction"?, "scores"}), from either source:

  --from-reference reference.json
      a fixture's reference (transformers' scores; models/*/reference.json). Groups that
      need another --max-input-tokens (`max_length` set) are left out.

  --model-path DIR cases.jsonl [-- extra `qembed rerank` flags]
      scores computed by `qembed rerank` with the model the new colour will serve, for
      each case line {"query", "documents", "instruction"?} of cases.jsonl. Pass the
      flags the colour is served with that change scores (--dtype, --max-input-tokens)
      after `--`. A case without "instruction" is scored with the model card's default
      instruction: if the colour runs with --default-instruction, write it into each case.

The golden set goes to stdout. Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def line(query, documents, instruction, scores):
    case = {"query": query, "documents": documents}
    if instruction is not None:
        case["instruction"] = instruction
    case["scores"] = scores
    return json.dumps(case, ensure_ascii=False)


def from_reference(path):
    with open(path, encoding="utf-8") as f:
        ref = json.load(f)
    if ref.get("task") != "rerank":
        sys.exit(f"{path}: not a reranker reference (task {ref.get('task')!r})")
    for g in ref["groups"]:
        if g.get("max_length") is None:
            yield line(g["query"], g["documents"], g.get("instruction"), g["scores"])


def from_model(qembed, model_path, cases_path, extra):
    with open(cases_path, encoding="utf-8") as f:
        cases = [json.loads(l) for l in f if l.strip()]
    for n, case in enumerate(cases, 1):
        query, documents = case["query"], case["documents"]
        instruction = case.get("instruction")
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as d:
            for doc in documents:
                d.write(json.dumps(doc, ensure_ascii=False) + "\n")
        try:
            cmd = [qembed, "rerank", "--model-path", model_path, "--query", query, "--input", d.name]
            if instruction is not None:
                cmd += ["--instruction", instruction]
            out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError as e:
            sys.exit(f"{cases_path}: case {n}: qembed rerank failed:\n{e.stderr}")
        finally:
            os.unlink(d.name)
        scored = [json.loads(l) for l in out.splitlines() if l.strip()]
        if [s["index"] for s in scored] != list(range(len(documents))):
            sys.exit(f"{cases_path}: case {n}: qembed rerank answered {len(scored)} lines for {len(documents)} documents")
        yield line(query, documents, instruction, [s["score"] for s in scored])


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-reference", metavar="REFERENCE_JSON")
    src.add_argument("--model-path", metavar="DIR")
    p.add_argument("cases", nargs="?", help="with --model-path: JSON Lines of {query, documents, instruction?}")
    p.add_argument("--qembed", default="qembed", help="the qembed binary (default: from PATH)")
    a = p.parse_args(argv)
    if a.model_path and not a.cases:
        p.error("--model-path needs a cases file")
    lines = from_reference(a.from_reference) if a.from_reference else from_model(a.qembed, a.model_path, a.cases, extra)
    for l in lines:
        print(l)


if __name__ == "__main__":
    main()
