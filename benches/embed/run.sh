#!/usr/bin/env bash
# End to end as a user meets it, same machine, same run, same threads: `qembed embed` on
# benches/embed/texts.jsonl (the whole process: load, tokenizing, embedding, writing)
# against the same texts through sentence-transformers' `encode` (defaults) and through
# transformers with length-sorted batches of 8 (load excluded for both), then the
# vectors compared.
#   benches/embed/run.sh [DIR]
# DIR: a Qwen3-Embedding checkpoint (default /tmp/qwen3-0.6b-shape, made by
# benches/forward/make_checkpoint.py if missing; the real Qwen3 tokenizer from
# ../shared is placed beside its weights). Needs a Python with
# benches/embed/requirements.txt installed (PY, default python3).
# DTYPE (default bf16), QUANTIZE (none; int8 adds --quantize int8 to qembed only),
# REPS (default 1), OUT (default /tmp/qembed-embed-bench).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DIR=${1:-/tmp/qwen3-0.6b-shape}
DTYPE=${DTYPE:-bf16}
QUANTIZE=${QUANTIZE:-none}
OUT=${OUT:-/tmp/qembed-embed-bench}
TEXTS=benches/embed/texts.jsonl
mkdir -p "$OUT"
[ -f "$DIR/config.json" ] || "$PY" benches/forward/make_checkpoint.py "$DIR"
for f in tokenizer.json tokenizer_config.json; do
  [ -f "$DIR/$f" ] || cp "../shared/data/qwen3-tokenizer/$f" "$DIR/"
done
cargo build --release -q -p qembed-server
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | cut -d: -f2 | tr -d ' '); flags:" \
  $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|avx_vnni|amx_bf16|amx_int8' | tr '\n' ' ')
for rep in $(seq 1 "${REPS:-1}"); do
  echo "# repetition $rep, load average $(cut -d' ' -f1-3 /proc/loadavg), HEAD $(git rev-parse --short HEAD)"
  start=$(date +%s.%N)
  QEMBED_LOG=info RAYON_NUM_THREADS=2 ./target/release/qembed --json-logs embed --model-path "$DIR" \
    --dtype "$DTYPE" --quantize "$QUANTIZE" --input "$TEXTS" > "$OUT/qembed.jsonl" 2> "$OUT/qembed.log"
  end=$(date +%s.%N)
  "$PY" benches/embed/compare.py qembed "$OUT/qembed.jsonl" "$OUT/qembed.log" "$start" "$end" "$DTYPE" "$QUANTIZE"
  for mode in st tuned; do
    "$PY" benches/embed/torch_embed.py --model "$DIR" --texts "$TEXTS" --mode "$mode" \
      --dtype "$DTYPE" --threads 2 --out "$OUT/$mode.jsonl"
  done
  "$PY" benches/embed/compare.py vectors "$OUT/qembed.jsonl" "$OUT/st.jsonl" "$OUT/tuned.jsonl"
done
