#!/usr/bin/env bash
# Issue 6's startup target: seconds from launching `kiln serve` (8B shape, dummy weights) to
# the first 200 from /health, once with an empty kernel cache and once with the cache the
# first run left, then one chat completion on the warm server and SIGTERM (exit status).
# Prints one JSON object. Run from a bundle:  bash gpu-bundle/scripts/gpu-startup-check.sh
#   KILN=path/to/kiln   PORT=18556   MODEL=llama-3.1-8b   DEVICE=cuda   DTYPE=bfloat16
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="${KILN:-$(ls "$ROOT/kiln" "$ROOT/target/release/kiln" 2>/dev/null | head -1)}"
PORT="${PORT:-18556}"
MODEL="${MODEL:-llama-3.1-8b}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
CACHE="$(mktemp -d)"
LOG="${LOG:-/dev/stderr}"
export NO_COLOR=1 HF_HUB_OFFLINE=1 KILN_LOG="${KILN_LOG:-info}" KILN_CACHE_DIR="$CACHE"

# HTTP status of GET $1 (000 when nothing answers).
status() {
    python3 - "$PORT" "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=2)
    print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}

# Starts the server and waits for /health 200 (at most 60 s); sets PID and SECS (the seconds
# it took, null when the server exited or never got healthy).
start() {
    local t0 code=000
    t0=$(date +%s.%N)
    "$KILN" serve --device "$DEVICE" --model "$MODEL" --load-format dummy --dtype "$DTYPE" \
        --max-model-len 2048 --host 127.0.0.1 --port "$PORT" >/dev/null 2>>"$LOG" &
    PID=$!
    for _ in $(seq 600); do
        kill -0 "$PID" 2>/dev/null || break
        code=$(status /health)
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    SECS=null
    [ "$code" = 200 ] && SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
}

# SIGTERM, then the exit status (0 expected).
stop() {
    kill -TERM "$PID" 2>/dev/null
    wait "$PID"
    EXIT=$?
}

start
cold=$SECS
stop
cold_exit=$EXIT
start
warm=$SECS
reply=$(python3 - "$PORT" "$MODEL" <<'PY'
import json, sys, urllib.request
body = json.dumps({"model": sys.argv[2], "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 8, "ignore_eos": True}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions", body,
                             {"Content-Type": "application/json"})
try:
    r = json.load(urllib.request.urlopen(req, timeout=30))
    print(json.dumps({"finish_reason": r["choices"][0]["finish_reason"], "usage": r["usage"]}))
except Exception as e:
    print(json.dumps({"error": str(e)}))
PY
)
stop
warm_exit=$EXIT
rm -rf "$CACHE"
printf '{"model": "%s", "cold_cache_s": %s, "warm_cache_s": %s, "cold_exit": %s, "warm_exit": %s, "chat": %s}\n' \
    "$MODEL" "$cold" "$warm" "$cold_exit" "$warm_exit" "$reply"
