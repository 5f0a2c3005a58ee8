#!/usr/bin/env bash
# Forward-pass throughput, qembed and PyTorch side by side in one run, same threads.
#   benches/forward/run.sh [DIR] [f32|bf16 ...]
# Needs a Python with models/requirements.txt installed (PY, default python3).
# KERNELS: qembed's CPU kernels to run in turn for every dtype (default: the one chosen at
# load; a kernel without one of the dtypes stops the run);
# REPS: repetitions of the whole set, in turn, each headed by the load average (default 1);
# QUANTIZE: qembed's weight forms to run in turn for every dtype and kernel (default none;
# "none int8" adds --quantize int8, its kernel chosen at load unless KERNELS names one).
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
  $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8' | tr '\n' ' ')
for rep in $(seq 1 "${REPS:-1}"); do
  echo "# repetition $rep, load average $(cut -d' ' -f1-3 /proc/loadavg), HEAD $(git rev-parse --short HEAD)"
  for dt in $DTYPES; do
    for q in ${QUANTIZE:-none}; do
      for k in ${KERNELS:-default}; do
        [ "$k" = default ] && k=
        QEMBED_CPU_KERNEL=$k RAYON_NUM_THREADS=2 MKL_NUM_THREADS=2 ./target/release/qembed-bench-forward \
          --model "$DIR" --dtype "$dt" --quantize "$q" --shapes "$SHAPES"
      done
    done
    "$PY" benches/forward/torch_forward.py --model "$DIR" --dtype "$dt" --shapes "$SHAPES" --threads 2
  done
done
