#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, what runs the emulator's cases on a real GPU with no
# Rust, CUDA toolkit or NVRTC there: the check binary (libstdc++ linked in) and a cubin of
# common.cuh + attention.cu + attention_decode.cu made with the same NVRTC and options as
# kiln (scripts/check_kernels.sh's venv). Then, on the device machine:
#
#   DIR/attention_decode_check gpu DIR/kernels.cubin full
#
# which runs the generic kernel (control: must pass) and the split-K kernel + merge.
# The same source is also compiled with the optimiser turned down, one cubin per variant
# (VARIANTS below): if split-K passes in one of them and fails in kernels.cubin, the fault
# is an optimisation of undefined behaviour in the kernel (or a compiler bug), not its
# arithmetic. `probe.sh` in DIR runs every cubin and writes one line per variant.
#
#   scripts/kernel_emulator/gpu_probe.sh DIR [sm_90]
set -euo pipefail
DIR="$1"
ARCH="${2:-sm_90}"
VENV="${KILN_NVRTC_VENV:-$HOME/.cache/kiln/nvrtc-venv}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$DIR"
LIB="$(dirname "$(find "$VENV" -name 'libnvrtc.so.*' -not -name '*alt*' | head -n 1)")"
cat "$HERE/../../kernels/common.cuh" "$HERE/../../kernels/attention.cu" \
    "$HERE/../../kernels/attention_decode.cu" >"$DIR/kernels.cu"
LD_LIBRARY_PATH="$LIB" python3 "$HERE/nvrtc_cubin.py" "$LIB/libnvrtc.so.13" "$ARCH" \
    "$DIR/kernels.cu" "$DIR/kernels.cubin"
# The PTX ptxas was given, to read next to the cubin's SASS (cuobjdump -sass / nvdisasm).
LD_LIBRARY_PATH="$LIB" python3 "$HERE/nvrtc_cubin.py" "$LIB/libnvrtc.so.13" "$ARCH" \
    "$DIR/kernels.cu" "$DIR/kernels.ptx"
# name:options (options comma-separated)
VARIANTS="device_debug:-G ptxas_O0:--ptxas-options=-O0 ptxas_O1:--ptxas-options=-O1 no_fmad:--fmad=false"
for v in $VARIANTS; do
    name="${v%%:*}"
    IFS=, read -r -a opts <<<"${v#*:}"
    LD_LIBRARY_PATH="$LIB" python3 "$HERE/nvrtc_cubin.py" "$LIB/libnvrtc.so.13" "$ARCH" \
        "$DIR/kernels.cu" "$DIR/kernels_$name.cubin" "${opts[@]}"
done
cat >"$DIR/probe.sh" <<'PROBE'
#!/usr/bin/env bash
# Runs the split-K cases with every cubin variant; one summary line each, details in *.txt.
# Usage: probe.sh OUTDIR   (exit 0 always: the lines are the result)
HERE="$(cd "$(dirname "$0")" && pwd)"
OUTDIR="${1:-.}"
mkdir -p "$OUTDIR"
for cubin in "$HERE"/kernels*.cubin; do
    name="$(basename "$cubin" .cubin)"
    timeout 20 "$HERE/attention_decode_check" gpu "$cubin" full >"$OUTDIR/probe_$name.txt" 2>&1
    rc=$?
    echo "$name exit=$rc $(grep -c '^ok' "$OUTDIR/probe_$name.txt") ok, $(grep -c '^FAIL' "$OUTDIR/probe_$name.txt") failing (generic control + split-K)"
done
# compute-sanitizer on the optimised cubin, quick cases: a shared-memory race (racecheck), a
# missing barrier (synccheck) or an out-of-bounds access (memcheck) names the faulting line.
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
if [ -n "$SAN" ]; then
    for tool in racecheck synccheck memcheck; do
        timeout 30 "$SAN" --tool "$tool" --print-limit 20 "$HERE/attention_decode_check" gpu \
            "$HERE/kernels.cubin" >"$OUTDIR/sanitizer_$tool.txt" 2>&1
        echo "sanitizer $tool exit=$? $(grep -c -i 'hazard\|error' "$OUTDIR/sanitizer_$tool.txt") hazard/error lines"
    done
else
    echo "no compute-sanitizer on this machine"
fi
PROBE
chmod +x "$DIR/probe.sh"
g++ -std=c++20 -O2 -Wno-unknown-pragmas -I"$HERE" -I"$HERE/../../kernels" \
    -static-libstdc++ -static-libgcc -o "$DIR/attention_decode_check" \
    "$HERE/attention_decode_check.cpp" -ldl
echo "built $DIR/attention_decode_check, $DIR/kernels*.cubin ($ARCH) and $DIR/probe.sh"
