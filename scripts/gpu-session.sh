#!/usr/bin/env bash
# The device machine's side of a run packed by scripts/gpu-pack.sh: unpacks the compressed
# binaries, runs scripts/gpu-check.sh on the tracked fixtures and presets within OUTER_S
# seconds (default 500), then puts every result into $OUT/gc.tgz (the device tool returns
# at most 8 files) beside $OUT/summary.txt. Run from the repository root:
#     bash gpu-bundle/scripts/gpu-session.sh
# Every gpu-check variable passes through (BUDGET_S, SELFTEST_ONLY, HF, MOE, ...); the
# defaults here leave out the A/Bs already measured (see docs/PERFORMANCE.md) so that a
# 15-minute device lease covers the checks and the headline benches.
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
python3 - <<'PY'
import glob, lzma, os, shutil
for packed in glob.glob("gpu-bundle/*.xz"):
    with lzma.open(packed) as src, open(packed[:-3], "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(packed[:-3], 0o755)
PY
FINAL="${OUT:-$ROOT/gpu-session-out}"
mkdir -p "$FINAL"
export OUT="${TMPDIR:-/tmp}/gc"
rm -rf "$OUT"
export FIXTURES="$ROOT/tests/fixtures" PRESETS="$ROOT/models/presets"
export BUDGET_S="${BUDGET_S:-440}"
for flag in IMAGE_BENCH NO_GEMV_AB CUBLASLT_AB LONG NCU NSYS PREFILL_AB TP_LATENCY HF_COMPILED; do
    export "$flag=${!flag:-0}"
done
export ALLREDUCE_PATHS="${ALLREDUCE_PATHS:-device}" MOE_PATHS="${MOE_PATHS:-device}"
[ -d gpu-bundle/wheels ] && export OPENAI_WHEELS="${OPENAI_WHEELS:-$ROOT/gpu-bundle/wheels}"
timeout -k 5 "${OUTER_S:-500}" bash gpu-bundle/scripts/gpu-check.sh
echo "gpu-check exit $?"
tar czf "$FINAL/gc.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
cp "$OUT/summary.txt" "$FINAL/"
