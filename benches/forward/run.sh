#!/usr/bin/env bash
# Forward-pass throughput, qembed and PyTorch side by side in one run, same threads.
#   benches/forward/run.sh [DIR] [f32|bf16 ...]
# Needs a Python with models/requirements.txt installed (PY, default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DIR=${1:-/tmp/qwen3-0.6b-shape}
shift || true
DTYPES=${*:-f32 bf16}
SHAPES=${SHAPES:-1x16,32x128,8x512,mixed}
[ -f "$DIR/config.json" ] || "$PY" benches/forward/make_checkpoint.py "$DIR"
# FEATURES=mkl builds qembed with MKL linear layers (libmkl_rt.so.3 on LD_LIBRARY_PATH).
cargo build --release -q -p qembed-bench ${FEATURES:+--features "$FEATURES"}
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ') model $(grep -m1 '^model[[:space:]]' /proc/cpuinfo | cut -d: -f2 | tr -d ' '); flags:" \
  $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16' | tr '\n' ' ')
for dt in $DTYPES; do
  RAYON_NUM_THREADS=2 MKL_NUM_THREADS=2 ./target/release/qembed-bench-forward --model "$DIR" --dtype "$dt" --shapes "$SHAPES"
  "$PY" benches/forward/torch_forward.py --model "$DIR" --dtype "$dt" --shapes "$SHAPES" --threads 2
done
