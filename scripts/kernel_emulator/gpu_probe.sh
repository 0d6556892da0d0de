#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, what runs the emulator's cases on a real GPU with no
# Rust, CUDA toolkit or NVRTC there: the check binary (libstdc++ linked in) and a cubin of
# common.cuh + attention.cu + attention_decode.cu made with the same NVRTC and options as
# kiln (scripts/check_kernels.sh's venv). Then, on the device machine:
#
#   DIR/attention_decode_check gpu DIR/kernels.cubin full
#
# which runs the generic kernel (control: must pass) and the split-K kernel + merge.
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
g++ -std=c++20 -O2 -Wno-unknown-pragmas -I"$HERE" -I"$HERE/../../kernels" \
    -static-libstdc++ -static-libgcc -o "$DIR/attention_decode_check" \
    "$HERE/attention_decode_check.cpp" -ldl
echo "built $DIR/attention_decode_check and $DIR/kernels.cubin ($ARCH)"
