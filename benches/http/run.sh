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
echo
echo "## closed loop: 32 concurrent clients, 4 inputs of 128..256 words each"
./target/release/qembed-load --url "$url" --concurrency 32 --requests 2000 --duration 20 \
  --inputs 4 --words 128:256
echo
m=$(curl -fs "$url/metrics")
sum=$(echo "$m" | awk '/^qembed_batch_tokens_sum/ {print $2}')
count=$(echo "$m" | awk '/^qembed_batch_tokens_count/ {print $2}')
reqs=$(echo "$m" | awk '/^qembed_batch_requests_sum/ {print $2}')
echo "## batches: $count, mean batch tokens $(awk -v s="$sum" -v c="$count" 'BEGIN {printf "%.0f", s/c}') (budget $BUDGET), mean requests per batch $(awk -v s="$reqs" -v c="$count" 'BEGIN {printf "%.1f", s/c}')"
