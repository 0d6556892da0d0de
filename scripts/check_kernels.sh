#!/usr/bin/env bash
# Compile-checks every CUDA kernel with NVRTC for sm_75, sm_80, sm_86, sm_89 and sm_90,
# warnings counted as failures, through the same Rust code path the GPU uses.
# Needs no GPU and no CUDA toolkit: NVRTC comes from PyPI into a private venv.
#
#   scripts/check_kernels.sh            # uses ~/.cache/kiln/nvrtc-venv
#   KILN_NVRTC_VENV=/tmp/v scripts/check_kernels.sh
set -euo pipefail

NVRTC_VERSION="${KILN_NVRTC_VERSION:-13.0.88}"   # CUDA 13.0, what the cuda-13000 bindings target
VENV="${KILN_NVRTC_VENV:-$HOME/.cache/kiln/nvrtc-venv}"
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -m pip show nvidia-cuda-nvrtc 2>/dev/null | grep -q "^Version: $NVRTC_VERSION"; then
    "$VENV/bin/python" -m pip install --quiet "nvidia-cuda-nvrtc==$NVRTC_VERSION"
fi

# The wheel puts libnvrtc.so.13 and libnvrtc-builtins.so.13.* in one folder; NVRTC loads
# the builtins from LD_LIBRARY_PATH at compile time ("failed to open libnvrtc-builtins").
LIB_DIR="$(dirname "$(find "$VENV" -name 'libnvrtc.so.*' -not -name '*alt*' | head -n 1)")"
if [ -z "$LIB_DIR" ] || [ "$LIB_DIR" = "." ]; then
    echo "libnvrtc.so not found under $VENV" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KILN_REQUIRE_NVRTC=1

cargo test --test cuda_kernels_compile -- --nocapture
