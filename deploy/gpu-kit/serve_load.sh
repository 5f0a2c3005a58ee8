#!/usr/bin/env bash
# The kit's serve-load step (run.sh calls it under a timeout): `qembed serve` on a
# checkpoint, the load generator open loop against /v1/embeddings, /metrics read at the
# end, the server stopped.
#   serve_load.sh CKPT DEVICE DTYPE RATE DURATION OUTDIR PIDFILE
set -uo pipefail
KIT=$(cd "$(dirname "$0")" && pwd)
CKPT=$1 DEVICE=$2 DTYPE=$3 RATE=$4 DURATION=$5 OUT=$6 PIDFILE=$7
PY=${PYTHON:-python3}
LOG="$OUT/serve.log"
# Everything here is on loopback: a proxy from the environment must not see it.
unset http_proxy https_proxy all_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

"$KIT/bin/qembed" serve --model-path "$CKPT" --device "$DEVICE" --dtype "$DTYPE" \
  --host 127.0.0.1 --port 0 2> "$LOG" &
SERVER=$!
echo "$SERVER" > "$PIDFILE"
trap 'kill "$SERVER" 2>/dev/null' EXIT

get() { # URL: the body, or a non-zero exit
  "$PY" -c "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"
}
alive() {
  kill -0 "$SERVER" 2>/dev/null && return 0
  # Its error line (before any backtrace), else the end of its log.
  echo "qembed serve exited: $(grep -m1 '^error' "$LOG" || tail -n 3 "$LOG")" >&2
  exit 1
}

addr=""
while [ -z "$addr" ]; do
  alive
  addr=$(grep -o 'listening on [0-9.:]*' "$LOG" | awk '{print $3}')
  sleep 0.2
done
until get "http://$addr/ready" > /dev/null 2>&1; do
  alive
  sleep 0.5
done
echo "ready at $addr after ${SECONDS} s"

# One input of 128..256 words per request (<= 512 tokens with the Qwen3 tokenizer).
"$KIT/bin/qembed-load" --url "http://$addr" --rate "$RATE" --concurrency 64 \
  --requests $((RATE * DURATION)) --duration "$DURATION" --words 128:256 --json "$OUT/load.json"
rc=$?
get "http://$addr/metrics" > "$OUT/metrics.txt" 2>/dev/null
kill "$SERVER" 2>/dev/null
wait "$SERVER" 2>/dev/null
rm -f "$PIDFILE"
exit $rc
