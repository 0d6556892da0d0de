#!/usr/bin/env bash
# The official `openai` Python client against `kiln serve` on the GPU (issue 5): the built-in
# demo model, the checks of tests/openai_client/check_server.py (the same as the CPU test
# tests/server_openai_client.rs runs), then SIGTERM. Prints the checks' report and exits
# with their status. The device machine has no network: give the client's wheels as
# OPENAI_WHEELS=dir (pip download openai --only-binary=:all: --dest dir); they are
# installed into a private folder.
#   KILN=path/to/kiln   PORT=18557   DEVICE=cuda
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KILN="${KILN:-$(ls "$ROOT/kiln" "$ROOT/target/release/kiln" 2>/dev/null | head -1)}"
PORT="${PORT:-18557}"
DEVICE="${DEVICE:-cuda}"
KEY=sk-kiln-test
MAX_QUEUED=4
export NO_COLOR=1 HF_HUB_OFFLINE=1 KILN_LOG="${KILN_LOG:-warn}"

if ! python3 -c "import openai" 2>/dev/null; then
    if [ -d "${OPENAI_WHEELS:-}" ]; then
        PYLIB="${TMPDIR:-/tmp}/kiln-openai-client"
        python3 -m pip install --quiet --no-index --find-links "$OPENAI_WHEELS" --target "$PYLIB" \
            openai >&2 || { echo "installing openai from $OPENAI_WHEELS failed" >&2; exit 2; }
        export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "no openai package (set OPENAI_WHEELS)" >&2
        exit 2
    fi
fi

# The same settings as the CPU test: one sequence at a time and a short queue, so the
# client's RateLimitError is reachable.
"$KILN" serve --device "$DEVICE" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" \
    --max-num-seqs 1 --max-queued-requests "$MAX_QUEUED" --tool-call-parser hermes >&2 &
PID=$!
for _ in $(seq 300); do
    kill -0 "$PID" 2>/dev/null || { echo "kiln serve exited before it was healthy" >&2; exit 1; }
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" \
        2>/dev/null && break
    sleep 0.2
done
python3 "$ROOT/tests/openai_client/check_server.py" "http://127.0.0.1:$PORT" kiln-demo "$KEY" \
    "$MAX_QUEUED"
status=$?
kill -TERM "$PID"
wait "$PID"
echo "kiln serve exit status after SIGTERM: $?"
exit $status
