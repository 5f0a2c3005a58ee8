#!/usr/bin/env bash
# qembed's GPU validation kit: everything a GPU host without network, Rust or our
# compiler needs to tell whether this build of qembed gives the reference results there
# and how fast it is against PyTorch on the same GPU, in a fixed time budget.
#
#   ./run.sh [--cpu] [--budget SECONDS] OUTDIR
#
# Needs: the NVIDIA driver, Python with torch 2.11+cu130 and transformers (whose CUDA 13
# and NCCL wheels the binary links against). --cpu runs the same steps on the CPU with
# tiny shapes (how CI proves this script without a GPU).
#
# Steps, each under its own timeout and all under the budget (default 450 s with a GPU,
# leaving half a minute of the 8 for the summary and clean-up; 300 s with --cpu); a step
# that no longer fits is skipped and says so:
#   gpus        nvidia-smi (with --cpu: the CPU's model and flags)
#   libraries   every library the binary needs resolves (ldd)
#   check-T     `qembed check` on the bundled fixtures in f16 and bf16 (CPU: f32, bf16)
#   bench-S     `qembed bench --shape S` (0.6b, 4b; CPU: tiny), tokens/s and MFU
#   torch-S     transformers' Qwen3Model on the same shapes and batches, same device
#   serve-load  `qembed serve` on the saved 4b checkpoint (CPU: tiny) and the load
#               generator at 50 req/s of <= 512-token inputs for 60 s (CPU: 20 req/s,
#               10 s): p99, error rate and the seed's gates
#   tp2         `qembed check --tensor-parallel 2` (NCCL) when there are two GPUs
#               (CPU: two ranks sharing the cores)
# Every step's output lands in OUTDIR (JSON where the tool writes JSON), with
# steps.jsonl, summary.json and summary.md. Exit status 1 if a step failed or timed out,
# or a check or an HTTP gate failed.
set -uo pipefail

KIT=$(cd "$(dirname "$0")" && pwd)
CPU=0
BUDGET=
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --budget) BUDGET="${2:?--budget needs a number of seconds}"; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done
if [ -z "$OUT" ]; then
  echo "usage: run.sh [--cpu] [--budget SECONDS] OUTDIR" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.jsonl"
PY=${PYTHON:-python3}
QEMBED="$KIT/bin/qembed"
LOAD="$KIT/bin/qembed-load"
# Checkpoints are written here, never into OUTDIR (a 4b one is 8 GB).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qembed-kit.XXXXXX")
CHILD=
cleanup() {
  # A server a timed-out serve-load step left behind.
  [ -f "$WORK/server.pid" ] && kill -9 "$(cat "$WORK/server.pid")" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
# Ctrl-C or a TERM stops the running step too: `timeout` runs it in a process group of
# its own, which a terminal's SIGINT does not reach; TERM to timeout is passed on to it.
interrupted() {
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
  echo "run.sh: interrupted" >&2
  exit 130
}
trap interrupted INT TERM
# candle's kernels are PTX that the driver compiles for this GPU on first use, in each
# process: one cache for all of the kit's processes, where the kit is (writable).
export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-$KIT/.nv-compute-cache}"

if [ "$CPU" = 1 ]; then
  BUDGET=${BUDGET:-300}
  DEVICE=cpu; DTYPES="f32 bf16"; BENCH_DTYPE=f32; SHAPES="tiny"; SERVE_SHAPE=tiny
  BATCHES="4x16,2x64,mixed"; RATE=20; DURATION=10
else
  BUDGET=${BUDGET:-450}
  DEVICE=cuda; DTYPES="f16 bf16"; BENCH_DTYPE=f16; SHAPES="0.6b 4b"; SERVE_SHAPE=4b
  BATCHES="32x512,64x128,mixed"; RATE=50; DURATION=60
fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))

# The CUDA 13 and NCCL libraries of the Python environment that holds torch
# (QEMBED_CUDA_LIBS, colon-separated, overrides).
if [ -z "${QEMBED_CUDA_LIBS:-}" ]; then
  QEMBED_CUDA_LIBS=$("$PY" - <<'EOF' 2>/dev/null
import os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
seen = []
for r in roots:
    for sub in ("nvidia/cu13/lib", "nvidia/nccl/lib"):
        d = os.path.join(r, sub)
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
print(":".join(seen))
EOF
)
fi
export LD_LIBRARY_PATH="${QEMBED_CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

record() { # name status seconds timeout why
  printf '{"step":"%s","status":"%s","seconds":%s,"timeout_s":%s,"why":"%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" >> "$OUT/steps.jsonl"
  printf '%-12s %-8s %6ss  %s\n' "$1" "$2" "$3" "$5"
}

# The line of a step's stderr that says what went wrong: the first `Error`/`error` line
# (a Rust error, before any backtrace), else the last non-empty one; JSON-safe, short.
first_error() {
  { grep -m1 -E '^(Error|error|[A-Za-z]*Error)[: ]' "$1" || grep -v '^[[:space:]]*$' "$1" | tail -n 1; } \
    | tr '\t\r' '  ' | tr -d '\000-\037"\\' | cut -c1-200
}

skip() { # name why
  record "$1" skipped 0 0 "$2"
}

# step NAME TIMEOUT CMD...: runs CMD with stdout in OUT/NAME.out, stderr in
# OUT/NAME.err, under the smaller of TIMEOUT and what is left of the budget; skipped
# when less than MIN_LEFT seconds (default 10) are left, rather than cut short.
step() {
  local name=$1 limit=$2 need=${MIN_LEFT:-10}
  shift 2
  local left=$((DEADLINE - $(date +%s) - 5))
  if [ "$left" -lt "$need" ]; then
    skip "$name" "out of time: ${left} s of the ${BUDGET} s budget left, the step needs ${need}"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc status why=""
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err" &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; why="killed after $limit s" ;;
    *) status=failed; why="exit $rc: $(first_error "$OUT/$name.err")" ;;
  esac
  record "$name" "$status" "$(($(date +%s) - t0))" "$limit" "$why"
  [ "$rc" = 0 ]
}

echo "qembed GPU kit: $([ "$CPU" = 1 ] && echo "CPU mode" || echo "GPU mode"), budget ${BUDGET} s, results in $OUT"
"$QEMBED" --version > "$OUT/version.txt" 2>&1 || true

# gpus
GPUS=0
if [ "$CPU" = 1 ]; then
  step gpus 10 bash -c "grep -m1 'model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo"
else
  if step gpus 20 nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv; then
    GPUS=$(($(wc -l < "$OUT/gpus.out") - 1))
    timeout 20 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  fi
fi

# libraries: nothing the binary links may be missing ("not found" from ldd).
step libraries 10 bash -c "ldd '$QEMBED' && ! ldd '$QEMBED' | grep 'not found'"

for dt in $DTYPES; do
  step "check-$dt" 90 "$QEMBED" check --device "$DEVICE" --dtype "$dt" --fixtures "$KIT/models" --json
done

# Scratch for the checkpoints: bf16, 2 bytes a parameter.
scratch_gb() { df -Pk "$WORK" | awk 'NR == 2 {printf "%d", $4 / 1048576}'; }
need_gb() { case $1 in 0.6b) echo 2 ;; 4b) echo 9 ;; 8b) echo 16 ;; *) echo 1 ;; esac; }
for shape in $SHAPES; do
  ckpt="$WORK/ckpt-$shape"
  if [ "$(scratch_gb)" -lt "$(need_gb "$shape")" ]; then
    skip "bench-$shape" "its checkpoint needs $(need_gb "$shape") GB in $WORK, $(scratch_gb) GB free (set TMPDIR)"
    skip "torch-$shape" "no checkpoint: bench-$shape was skipped"
    continue
  fi
  step "bench-$shape" 150 "$QEMBED" bench --shape "$shape" --device "$DEVICE" --dtype "$BENCH_DTYPE" \
    --batches "$BATCHES" --repeats 3 --save "$ckpt" --json
  if [ -f "$ckpt/config.json" ]; then
    step "torch-$shape" 120 "$PY" "$KIT/torch_forward.py" --model "$ckpt" --random \
      --device "$DEVICE" --dtype "$BENCH_DTYPE" --shapes "$BATCHES" --reps 3
  else
    skip "torch-$shape" "no checkpoint: bench-$shape did not write one"
  fi
  # Keep only the checkpoint the server step needs.
  [ "$shape" = "$SERVE_SHAPE" ] || rm -rf "$ckpt"
done

# serve-load: the HTTP path, as the deployment's validation gates measure it
# (serve_load.sh starts the server, waits until it is ready, runs the load, stops it).
if [ -f "$WORK/ckpt-$SERVE_SHAPE/config.json" ]; then
  [ -f "$WORK/ckpt-$SERVE_SHAPE/tokenizer.json" ] \
    || cp "$KIT/tokenizer/tokenizer.json" "$KIT/tokenizer/tokenizer_config.json" "$WORK/ckpt-$SERVE_SHAPE/"
  MIN_LEFT=$((DURATION + 30)) step serve-load $((DURATION + 90)) bash "$KIT/serve_load.sh" "$WORK/ckpt-$SERVE_SHAPE" "$DEVICE" \
    "$BENCH_DTYPE" "$RATE" "$DURATION" "$OUT" "$WORK/server.pid"
else
  skip serve-load "no $SERVE_SHAPE checkpoint: bench-$SERVE_SHAPE did not write one"
fi

if [ "$CPU" = 1 ] || [ "$GPUS" -ge 2 ]; then
  step tp2 120 "$QEMBED" check --device "$DEVICE" --dtype "$BENCH_DTYPE" --fixtures "$KIT/models" \
    --tensor-parallel 2 --json
else
  skip tp2 "needs two GPUs; nvidia-smi lists $GPUS"
fi

# The summary fails on a check or gate that failed; the run also on a step that did.
"$PY" "$KIT/summary.py" "$OUT" "$((DEADLINE - START))" "$(($(date +%s) - START))"
summary=$?
! grep -q '"status":"\(failed\|timeout\)"' "$OUT/steps.jsonl" && [ "$summary" = 0 ]
