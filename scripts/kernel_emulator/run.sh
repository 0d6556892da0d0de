#!/usr/bin/env bash
# Runs kernels/image_*.cu + attention_softmax.cu, kernels/gemv.cu, kernels/moe.cu, kernels/sampling_draw.cu, kernels/mamba.cu, kernels/gated_delta.cu, kernels/selective_scan.cu, then kernels/attention_decode.cu and attention.cu, on the CPU through cuda_emu.h and compares it with a
# double-precision reference (about 15 s; `full` adds the selftest's failing shapes, a few
# minutes). Needs only g++ (C++20).
#
#   scripts/kernel_emulator/run.sh [full]
set -euo pipefail
cd "$(dirname "$0")"
BUILD="${TMPDIR:-/tmp}/kiln-kernel-emulator"
mkdir -p "$BUILD"
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/attention_decode_check" attention_decode_check.cpp -ldl
# The image-model kernels (norms, element-wise, layout, im2col, attention softmax): ~2 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/image_ops_check" image_ops_check.cpp
"$BUILD/image_ops_check"
# The small-M linear layer (kernels/gemv.cu): ~2 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/gemv_check" gemv_check.cpp
"$BUILD/gemv_check"
# Mixture-of-experts routing on the device (kernels/moe.cu, the expert GEMVs of gemv.cu)
# against the host path: ~20 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/moe_check" moe_check.cpp
"$BUILD/moe_check"
# The decode step's small ops (norm.cu, rope.cu, argmax of sampling.cu, join_heads of
# elementwise.cu): ~30 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/decode_ops_check" decode_ops_check.cpp
"$BUILD/decode_ops_check"
# Device sampling (kernels/sampling_draw.cu) against sampler.rs: ~1-2 min.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/sampling_draw_check" sampling_draw_check.cpp
"$BUILD/sampling_draw_check"
# The tensor-core prefill (kernels/attention_prefill.cu, mma.sync modelled), LLM and
# image shapes, and mixed steps with the split-K decode: ~1 min.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/attention_prefill_check" attention_prefill_check.cpp
"$BUILD/attention_prefill_check"
# The Mamba-2 mixer of the hybrid models (kernels/mamba.cu): ~10 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/mamba_check" mamba_check.cpp
"$BUILD/mamba_check"
# Qwen3-Next's gated delta rule mixer (kernels/gated_delta.cu after mamba.cu's
# convolution): ~15 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/gated_delta_check" gated_delta_check.cpp
"$BUILD/gated_delta_check"
# Mamba-1's selective scan (kernels/selective_scan.cu after mamba.cu's convolution): ~5 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/selective_scan_check" selective_scan_check.cpp
"$BUILD/selective_scan_check"
# The implicit-GEMM conv2d on tensor cores (kernels/conv_implicit.cu), both K orders: ~3 s.
g++ -std=c++20 -O2 -Wall -Wno-unknown-pragmas -I. -I../../kernels \
    -o "$BUILD/conv_implicit_check" conv_implicit_check.cpp
"$BUILD/conv_implicit_check"
exec "$BUILD/attention_decode_check" "$@"
