#!/usr/bin/env bash
# Rerank throughput, qembed and the model card's transformers code side by side in one
# run, on the same pairs, with the same 2 threads; then their score agreement.
#   benches/rerank/run.sh [DIR]
# DTYPES: qembed's dtypes (default "bf16 f32"); TORCH_DTYPES: transformers' (default
# "bf16"); LIMIT / TORCH_LIMIT: score only the first N pairs (default all 128; transformers
# in bf16 without AVX512-BF16/AMX runs ~7x slower than in f32, so on such a CPU give it a
# prefix); REPS: timed repetitions (default 2). FEATURES=mkl builds qembed with MKL.
# Needs a Python with models/requirements.txt installed (PY, default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DIR=${1:-/tmp/qwen3-reranker-0.6b-shape}
DTYPES=${DTYPES:-bf16 f32}
TORCH_DTYPES=${TORCH_DTYPES:-bf16}
LIMIT=${LIMIT:-0}
TORCH_LIMIT=${TORCH_LIMIT:-$LIMIT}
REPS=${REPS:-2}
SCORES=${SCORES:-/tmp/qembed-rerank-scores}
mkdir -p "$SCORES"
[ -f "$DIR/config.json" ] || "$PY" benches/rerank/make_reranker.py "$DIR"
[ -f benches/rerank/pairs.json ] || "$PY" benches/rerank/make_pairs.py
cargo build --release -q -p qembed-bench-rerank ${FEATURES:+--features "$FEATURES"}
export RAYON_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_NUM_THREADS=2
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg), HEAD $(git rev-parse --short HEAD)"
for dt in $DTYPES; do
  ./target/release/qembed-bench-rerank --model "$DIR" --dtype "$dt" --reps "$REPS" \
    --limit "$LIMIT" --scores "$SCORES/qembed-$dt.json"
done
for dt in $TORCH_DTYPES; do
  "$PY" benches/rerank/torch_rerank.py --model "$DIR" --dtype "$dt" --threads 2 --reps "$REPS" \
    --limit "$TORCH_LIMIT" --scores "$SCORES/torch-$dt.json"
done
for dt in $DTYPES; do
  for t in $TORCH_DTYPES; do
    "$PY" benches/rerank/compare.py "$SCORES/qembed-$dt.json" "$SCORES/torch-$t.json"
  done
done
