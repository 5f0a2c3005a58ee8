#!/usr/bin/env bash
# The seed's validation gates through the full HTTP path on this machine, with a
# fixture model: p99 at <= 512 tokens and error rate at 50 QPS (open loop), capacity
# (closed loop), and mean batch tokens against the budget under concurrent load.
#   benches/http/run.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-models/qwen3-tiny-gqa}
BUDGET=${BUDGET:-16384}
cargo build --release -q -p qembed-server -p qembed-loadgen
log=$(mktemp)
./target/release/qembed serve --host 127.0.0.1 --port 0 --model-path "$MODEL" \
  --max-batch-tokens "$BUDGET" 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
url="http://$(grep -o 'listening on .*' "$log" | awk '{print $3}')"
until curl -fs "$url/ready" >/dev/null; do sleep 0.1; done

echo "## open loop: 50 requests/s for 20 s, one input of 128..256 words (<= 512 tokens)"
./target/release/qembed-load --url "$url" --rate 50 --concurrency 64 --requests 1000 \
  --duration 20 --words 128:256
batch_stats() {
  curl -fs "$url/metrics" | awk '/^qembed_batch_tokens_sum/ {t=$2} /^qembed_batch_tokens_count/ {c=$2} /^qembed_batch_requests_sum/ {r=$2} END {print t, c, r}'
}
report_batches() { # $1 $2: stats before and after a phase
  read -r t0 c0 r0 <<< "$1"; read -r t1 c1 r1 <<< "$2"
  awk -v t="$((${t1%.*} - ${t0%.*}))" -v c="$((${c1%.*} - ${c0%.*}))" -v r="$((${r1%.*} - ${r0%.*}))" -v b="$BUDGET" \
    'BEGIN {printf "batches %d, mean batch tokens %.0f (budget %d, %.0f%%), mean requests per batch %.1f\n", c, t/c, b, 100*t/c/b, r/c}'
}
s1=$(batch_stats)
report_batches "0 0 0" "$s1"
echo
echo "## closed loop: 32 concurrent clients, 4 inputs of 128..256 words each"
./target/release/qembed-load --url "$url" --concurrency 32 --requests 2000 --duration 20 \
  --inputs 4 --words 128:256
report_batches "$s1" "$(batch_stats)"
