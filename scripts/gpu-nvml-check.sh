#!/usr/bin/env bash
# NVML readings on a real GPU: `kiln gpus` (table and --json), then `kiln serve --device cuda`
# with the built-in demo model, its /metrics kiln:gpu_* lines and /health, then SIGTERM.
# Run from the repository root or a bundle:  bash scripts/gpu-nvml-check.sh
#   KILN=path/to/kiln (default: the bundle's kiln, else target/release, else target/debug)
#   OUT=dir (default: ./gpu-nvml-out)   PORT=18555
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="${KILN:-$(ls "$ROOT/kiln" "$ROOT/target/release/kiln" "$ROOT/target/debug/kiln" 2>/dev/null | head -1)}"
OUT="${OUT:-$PWD/gpu-nvml-out}"; PORT="${PORT:-18555}"
mkdir -p "$OUT"; export NO_COLOR=1 HF_HUB_OFFLINE=1 KILN_LOG="${KILN_LOG:-info}"
get() { curl -s -o "$2" -w '%{http_code}' "http://127.0.0.1:$PORT$1" 2>/dev/null ||
        python3 -c "import sys,urllib.request as u;r=u.urlopen('http://127.0.0.1:$PORT$1',timeout=5);open('$2','wb').write(r.read());print(r.status)" 2>/dev/null; }

timeout 60 "$KILN" gpus >"$OUT/gpus.txt" 2>"$OUT/gpus.log"; echo "kiln gpus: rc=$?"; cat "$OUT/gpus.txt"
timeout 60 "$KILN" gpus --json >"$OUT/gpus.json" 2>>"$OUT/gpus.log"; echo "kiln gpus --json: rc=$?"; cat "$OUT/gpus.json"

"$KILN" serve --device cuda --host 127.0.0.1 --port "$PORT" >"$OUT/serve.out" 2>"$OUT/serve.log" &
PID=$!
for _ in $(seq 120); do kill -0 "$PID" 2>/dev/null || break; [ "$(get /health "$OUT/health.json")" = 200 ] && break; sleep 1; done
sleep 6 # at least one poll after the startup readings
echo "/health: $(get /health "$OUT/health.json") $(cat "$OUT/health.json")"
get /metrics "$OUT/metrics.txt" >/dev/null; grep '^kiln:gpu_' "$OUT/metrics.txt" || echo "NO kiln:gpu_ METRICS"
kill -TERM "$PID"; wait "$PID"; echo "serve exit: $?"
grep -E 'GPU [0-9]+:|NVML|GPU failure' "$OUT/serve.log"
