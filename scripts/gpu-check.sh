#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a device machine with no Rust toolchain: run from a
# bundle made on the build machine with
#     ../shared/scripts/gpu-bundle.sh tests/fixtures tests/openai_client scripts models/presets
# then, on the device machine (repository root, bundle carried as gpu-bundle/):
#     bash gpu-bundle/scripts/gpu-check.sh
# or, smaller (the binary compressed, fixtures read from the tracked tree, results packed
# into one archive): scripts/gpu-pack.sh here, then bash gpu-bundle/scripts/gpu-session.sh.
# Every step has a time limit and keeps going when one fails; stdout goes to $OUT/<step>.json
# or .txt, stderr (kiln's log) to $OUT/<step>.log, and $OUT/summary.txt lists each step's
# status and time. Exit status: 0 when every required step passed, 1 otherwise.
#
#   KILN=path/to/kiln   the binary (default: the bundle's)
#   OUT=dir             where results go (default: ./gpu-check-out)
#   BUDGET_S=270        total time budget; optional steps are skipped once it is spent
# SELFTEST_ONLY=gemv,attention runs only those selftest groups (`kiln selftest --only`).
# Optional parts, each on unless set to 0: HF (transformers baselines), HF_COMPILED,
# STARTUP, IMAGE_BENCH, NO_GEMV_AB, UNFUSED_AB, EAGER_AB, CUBLASLT_AB, LONG, NCU, NSYS, PREFILL_AB,
# THROUGHPUT, TP_LATENCY, MOE, SPEC, LORA; PREFILL_VARIANTS, THROUGHPUT_VARIANTS and ALLREDUCE_PATHS pick
# those A/Bs' variants, MOE_PATHS (device host) the MoE bench's routing paths; ADD_NORM_AB
# (on unless 0) times the norm-fused GEMV's old limit;
# SELFTEST_GENERIC=1 adds the generic decode kernel's selftest; OPENAI_WHEELS=dir lets the
# openai client check run where the machine lacks the package.
# HTTP_BENCH (on unless 0) runs issue 3's HTTP-vs-engine bench when the bundle carries its
# binary: `cargo bench --bench http_vs_engine --no-run`, then copy the newest
# target/release/deps/http_vs_engine-* (not the .d file) to gpu-bundle/http_vs_engine.
set -u

BUNDLE="$(cd "$(dirname "$0")/.." && pwd)"
KILN="${KILN:-$BUNDLE/kiln}"
FIXTURES="${FIXTURES:-$BUNDLE/tests/fixtures}"
OUT="${OUT:-$PWD/gpu-check-out}"
BUDGET_S="${BUDGET_S:-270}"
ARCHS="llama llama31 mistral qwen2 qwen3 phi3 qwen3_moe qwen2_moe mixtral gemma2 gemma3 granite smollm3 olmo2 qwen3_yarn glm4 phi3_longrope gpt_oss olmo3 seed_oss glm4_moe deepseek_v2 deepseek_v3 qwen2_5_vl qwen3_vl qwen3_vl_moe internvl starcoder2 cohere phi cohere2 olmoe gemma qwen2_vl gpt_neox gpt_neox_sequential gpt2 opt gpt_bigcode gpt_bigcode_mha glm gptj granitemoe ernie4_5 helium exaone4 olmo opt_pytorch falcon falcon_40b falcon_sequential arcee nemotron stablelm stablelm_parallel gpt_neo ernie4_5_moe ministral llama_attention_bias bloom mpt falcon_rw phimoe apertus dots1 hunyuan_dense hunyuan_moe llama4 cohere_qk_norm stablelm_qk_norm lfm2 glm4v glm4v_moe bamba granitemoehybrid granitemoehybrid_moe mamba2 granitemoeshared qwen3_next mamba falcon_mamba jamba falcon_h1 nemotron_h lfm2_moe nemotron_h_moe"

mkdir -p "$OUT"
# Kernels compile once per machine and are cached: keep that cache across the steps.
export KILN_CACHE_DIR="${KILN_CACHE_DIR:-${TMPDIR:-/tmp}/kiln-gpu-check-cache}"
export HF_HUB_OFFLINE=1 # no network on the device machine: never wait for the hub
export KILN_LOG="${KILN_LOG:-info}"
export NO_COLOR=1

START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

elapsed() { echo $(($(date +%s) - START)); }

# step NAME LIMIT_S REQUIRED(yes|no) OUTFILE -- command...
step() {
    local name=$1 limit=$2 required=$3 outfile=$4
    shift 5
    local left=$((BUDGET_S - $(elapsed)))
    if [ "$required" = no ] && [ "$left" -lt 20 ]; then
        printf '%-28s %-8s %6s  %s\n' "$name" SKIPPED - "time budget spent" | tee -a "$SUMMARY"
        return 0
    fi
    [ "$left" -lt 10 ] && left=10
    [ "$limit" -gt "$left" ] && limit=$left
    local t0 status rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$outfile" 2>"$OUT/$name.log"
    rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ $rc -eq 0 ]; then
        status=PASS
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status=TIMEOUT
    else
        status="FAIL($rc)"
    fi
    if [ $rc -ne 0 ] && [ "$required" = yes ]; then
        FAILED=$((FAILED + 1))
    fi
    [ "$required" = no ] && [ $rc -ne 0 ] && status="$status,optional"
    printf '%-28s %-8s %6ss  %s\n' "$name" "$status" "$secs" "$outfile" | tee -a "$SUMMARY"
    return 0
}

echo "kiln GPU check: binary $KILN, fixtures $FIXTURES, results in $OUT" | tee -a "$SUMMARY"
if [ ! -x "$KILN" ]; then
    echo "no kiln binary at $KILN (build the bundle with ../shared/scripts/gpu-bundle.sh)" | tee -a "$SUMMARY"
    exit 1
fi

step nvidia_smi 20 no nvidia_smi.txt -- nvidia-smi
step gpus 30 yes gpus.json -- "$KILN" gpus --json
# Every op against the CPU (75 s in the eighth run; the ninth session added the fused GEMVs,
# the fused QKV entry, cuBLASLt at every 8B shape, image flash attention and the implicit-GEMM
# conv at VAE shapes, whose CPU references are the slow part).
step selftest 300 yes selftest.json -- "$KILN" selftest --json ${SELFTEST_ONLY:+--only "$SELFTEST_ONLY"}
# The split-K probe (scripts/kernel_emulator/gpu_probe.sh gpu-bundle/probe, built after the
# bundle): the emulator's cases on this GPU, per compiler variant, to localise the split-K bug.
if [ -x "$BUNDLE/probe/probe.sh" ]; then
    step split_k_probe 120 no split_k_probe.txt -- "$BUNDLE/probe/probe.sh" "$OUT/split_k_probe"
fi

# The selftest above runs split-K decode attention and device sampling (both default); this
# one checks the generic decode attention kernel that KILN_SPLIT_K_DECODE=0 selects (it passed
# in the eighth run; SELFTEST_GENERIC=1 runs it again).
if [ "${SELFTEST_GENERIC:-0}" = 1 ]; then
    step selftest_generic_decode 150 no selftest_generic_decode.json -- \
        env KILN_SPLIT_K_DECODE=0 KILN_GPU_SAMPLING=0 "$KILN" selftest --json --quick
fi

# The fixtures on the GPU must give the CPU reference's logits and greedy tokens: all of
# them in one process per dtype (`--also`), which starts CUDA once instead of per fixture.
# The JSON is an array of per-fixture reports; a failing fixture's report says why.
FIRST_ARCH=${ARCHS%% *}
ALSO=$(for arch in ${ARCHS#* }; do printf '%s,' "$FIXTURES/$arch"; done)
for dtype in float32 bfloat16; do
    step "check_fixtures_${dtype}" 300 yes "check_fixtures_${dtype}.json" -- \
        "$KILN" check-reference --model "$FIXTURES/$FIRST_ARCH" --also "${ALSO%,}" \
        --device cuda --dtype "$dtype" --block-size 4 --json
done

# The same with every step launched from the host (no CUDA graphs): the tokens must agree.
for arch in llama qwen2; do
    step "check_${arch}_bfloat16_eager" 60 yes "check_${arch}_bfloat16_eager.json" -- \
        "$KILN" check-reference --model "$FIXTURES/$arch" --device cuda --enforce-eager \
        --dtype bfloat16 --block-size 4 --json
done

# Mixture of experts: the same with device routing only for one-token steps
# (KILN_MOE_DEVICE_ROWS=1), so every prefill takes the grouped host-routed path; eager as
# well, to compare recorded decode against launched; and the portable host path.
MOE_ARCHS="qwen3_moe qwen2_moe mixtral gpt_oss glm4_moe deepseek_v2 deepseek_v3 qwen3_vl_moe olmoe granitemoe ernie4_5_moe phimoe dots1 hunyuan_moe llama4 cohere_qk_norm stablelm_qk_norm lfm2 glm4v glm4v_moe bamba granitemoehybrid granitemoehybrid_moe mamba2 granitemoeshared qwen3_next mamba falcon_mamba jamba falcon_h1 nemotron_h lfm2_moe nemotron_h_moe"
MOE_FIRST=${MOE_ARCHS%% *}
MOE_ALSO=$(for arch in ${MOE_ARCHS#* }; do printf '%s,' "$FIXTURES/$arch"; done)
MOE_ALSO=${MOE_ALSO%,}
step check_moe_bfloat16_grouped 180 yes check_moe_bfloat16_grouped.json -- \
    env KILN_MOE_DEVICE_ROWS=1 "$KILN" check-reference --model "$FIXTURES/$MOE_FIRST" \
    --also "$MOE_ALSO" --device cuda --dtype bfloat16 --block-size 4 --json
step check_moe_bfloat16_eager 180 yes check_moe_bfloat16_eager.json -- \
    "$KILN" check-reference --model "$FIXTURES/$MOE_FIRST" --also "$MOE_ALSO" --device cuda \
    --enforce-eager --dtype bfloat16 --block-size 4 --json
step check_moe_bfloat16_host 180 yes check_moe_bfloat16_host.json -- \
    env KILN_MOE_DEVICE=0 "$KILN" check-reference --model "$FIXTURES/$MOE_FIRST" \
    --also "$MOE_ALSO" --device cuda --dtype bfloat16 --block-size 4 --json

# The same through cublasGemmEx (KILN_CUBLASLT=0) instead of cuBLASLt, the default since
# the tenth GPU run (qwen2's qkv bias takes cuBLASLt's fused epilogue in the checks above).
for arch in llama qwen2; do
    step "check_${arch}_bfloat16_gemmex" 60 yes "check_${arch}_bfloat16_gemmex.json" -- \
        env KILN_CUBLASLT=0 "$KILN" check-reference --model "$FIXTURES/$arch" --device cuda \
        --dtype bfloat16 --block-size 4 --json
done

# The gate_up GEMV with only the SwiGLU epilogue (the norm its own launch), which the 8B's
# shapes take but the fixtures' small hidden sizes do not: forced with a zero limit on the
# norm-fused GEMV.
for arch in llama qwen2; do
    step "check_${arch}_bfloat16_swiglu_gemv" 60 yes "check_${arch}_bfloat16_swiglu_gemv.json" -- \
        env KILN_ADD_NORM_GEMV_MAX_VALUES=0 "$KILN" check-reference --model "$FIXTURES/$arch" \
        --device cuda --dtype bfloat16 --block-size 4 --json
done

# LoRA adapters on the device against PEFT (float32; the fixture folder's reference.json):
# llama with two adapters (all projections; q/v rsLoRA on one layer), granite (folded
# multipliers), phi3 (fused projections), and llama's sharded two ways.
LORA_DIR="$FIXTURES/lora"
if [ "${LORA:-1}" = 1 ] && [ -f "$LORA_DIR/reference.json" ]; then
    for case in "llama:llama_all llama_qv_rslora" "granite:granite_all" "phi3:phi3_fused"; do
        arch="${case%%:*}"
        modules=()
        for a in ${case#*:}; do modules+=("$a=$LORA_DIR/$a"); done
        step "check_${arch}_lora" 60 yes "check_${arch}_lora.json" -- \
            "$KILN" check-reference --model "$FIXTURES/$arch" --device cuda --dtype float32 \
            --block-size 4 --lora-modules "${modules[@]}" --json
    done
    step tp2_llama_lora 60 yes tp2_llama_lora.json -- \
        "$KILN" check-reference --model "$FIXTURES/llama" --device cuda --dtype float32 \
        --tensor-parallel-size 2 --block-size 4 \
        --lora-modules "llama_all=$LORA_DIR/llama_all" --json
fi

# Tensor parallelism on one GPU ("virtual" TP: two ranks share it): kiln's device
# all-reduce, and the host-staged one, must give the reference's greedy tokens.
for arch in llama qwen3 deepseek_v3; do
    for dtype in float32 bfloat16; do
        step "tp2_${arch}_${dtype}" 60 yes "tp2_${arch}_${dtype}.json" -- \
            "$KILN" check-reference --model "$FIXTURES/$arch" --device cuda \
            --tensor-parallel-size 2 --dtype "$dtype" --block-size 4 --json
    done
done
step tp4_qwen2_float32 60 yes tp4_qwen2_float32.json -- \
    "$KILN" check-reference --model "$FIXTURES/qwen2" --device cuda \
    --tensor-parallel-size 4 --dtype float32 --block-size 4 --json
# Recurrent mixers split by heads (their state slots per rank): Mamba-2 beside attention,
# Mamba-2 with its gated norm's groups whole, the gated delta rule.
for case in falcon_h1:4 mamba2:2 qwen3_next:2 nemotron_h_moe:2; do
    step "tp${case#*:}_${case%%:*}_float32" 60 yes "tp${case#*:}_${case%%:*}_float32.json" -- \
        "$KILN" check-reference --model "$FIXTURES/${case%%:*}" --device cuda \
        --tensor-parallel-size "${case#*:}" --dtype float32 --block-size 4 --json
done
step tp2_mistral_host 60 yes tp2_mistral_host.json -- \
    "$KILN" check-reference --model "$FIXTURES/mistral" --device cuda \
    --tensor-parallel-size 2 --all-reduce host --dtype float32 --block-size 4 --json
if "$KILN" bench all-reduce --help >/dev/null 2>&1; then
    for path in ${ALLREDUCE_PATHS:-device host}; do
        step "allreduce_${path}" 60 no "allreduce_${path}.txt" -- \
            "$KILN" bench all-reduce --device cuda --tensor-parallel-size 2 \
            --all-reduce "$path" --sizes 4K,64K,1M,8M,64M --iters 20 \
            --result-json "$OUT/allreduce_${path}.json"
    done
fi

# Diffusion on the GPU: the tiny diffusers fixtures' stages and full runs (text encoder,
# UNet, VAE, schedulers, CFG; 11x15 latents in tiny-sd's odd_sizes set) must match the
# diffusers references: f32 required, 16-bit informational (looser tolerances, first GPU
# numbers still to come). Then `kiln image` end to end to a PNG.
DIFFUSION="$FIXTURES/diffusion"
if "$KILN" check-image-reference --help >/dev/null 2>&1 && [ -d "$DIFFUSION/tiny-sd" ]; then
    for fixture in tiny-sd tiny-sdxl; do
        step "image_check_${fixture}_f32" 90 yes "image_check_${fixture}_f32.json" -- \
            "$KILN" check-image-reference --model "$DIFFUSION/$fixture" --device cuda \
            --dtype f32 --json
    done
    for dtype in bf16 f16; do
        step "image_check_tiny-sd_${dtype}" 60 no "image_check_tiny-sd_${dtype}.json" -- \
            "$KILN" check-image-reference --model "$DIFFUSION/tiny-sd" --device cuda \
            --dtype "$dtype" --json
    done
    step image_tiny_sd 60 yes image_tiny_sd.txt -- \
        "$KILN" image --model "$DIFFUSION/tiny-sd" --device cuda --prompt "a red cat" \
        --steps 3 --width 30 --height 22 --seed 1 --out "$OUT/image_tiny_sd.png"
else
    printf '%-28s %-8s %6s  %s\n' image_check SKIPPED - "no 'kiln check-image-reference' or no diffusion fixtures" | tee -a "$SUMMARY"
fi

# The official openai client against `kiln serve` on the GPU (OPENAI_WHEELS=dir brings the
# client to a machine without it; skipped when neither is there).
if [ -f "$BUNDLE/scripts/gpu-openai-check.sh" ] && [ -f "$BUNDLE/tests/openai_client/check_server.py" ] &&
    { python3 -c "import openai" 2>/dev/null || [ -d "${OPENAI_WHEELS:-}" ]; }; then
    step openai_client 90 no openai_client.txt -- \
        env KILN="$KILN" bash "$BUNDLE/scripts/gpu-openai-check.sh"
fi

# Issue 3's HTTP streaming vs in-process throughput on the demo model, with each phase's
# engine steps/s and tokens per step (slower steps or smaller batches).
if [ -x "$BUNDLE/http_vs_engine" ] && [ "${HTTP_BENCH:-1}" = 1 ]; then
    step http_vs_engine 120 no http_vs_engine.txt -- "$BUNDLE/http_vs_engine" --bench
fi

# The built-in demo model end to end (no --model and no network: kiln falls back to it).
step generate_demo 60 yes generate_demo.txt -- \
    "$KILN" generate --device cuda --prompt "The river town" --max-tokens 32 --seed 1

# An 8B model with dummy weights: load time (the log says "weights loaded in") and a few
# tokens on real shapes.
step generate_8b_dummy 120 yes generate_8b_dummy.txt -- \
    "$KILN" generate --device cuda --model llama-3.1-8b --load-format dummy \
    --dtype bfloat16 --max-model-len 1024 --prompt "The river town" --max-tokens 8 --ignore-eos

# Issue 6's startup target: process start to /health 200 for the 8B dummy model, with an
# empty kernel cache and with a warm one (<= 15 s and <= 8 s), then a chat completion.
if [ -f "$BUNDLE/scripts/gpu-startup-check.sh" ] && [ "${STARTUP:-1}" = 1 ]; then
    step startup_8b 100 no startup_8b.json -- \
        env KILN="$KILN" LOG="$OUT/startup_8b_serve.log" bash "$BUNDLE/scripts/gpu-startup-check.sh"
fi

if "$KILN" bench latency --help >/dev/null 2>&1; then
    step bench_latency_8b 150 no bench_latency_8b.txt -- \
        "$KILN" bench latency --device cuda --model llama-3.1-8b --load-format dummy \
        --dtype bfloat16 --max-model-len 1024 --input-len 128 --output-len 32 \
        --batch-sizes 1,8,32 --result-json "$OUT/bench_latency_8b.json"
    # The norm-fused GEMV up to k = 4096 at one row (the limit before the eighteenth
    # session; 1.11x slower than the norm launch + GEMV at the 8B's shapes on an H200),
    # against the default above, same run. ADD_NORM_AB=0 skips it.
    if [ "${ADD_NORM_AB:-1}" = 1 ]; then
        step bench_latency_8b_add_norm_4096 90 no bench_latency_8b_add_norm_4096.txt -- \
            env KILN_ADD_NORM_GEMV_MAX_VALUES=4096 "$KILN" bench latency --device cuda \
            --model llama-3.1-8b --load-format dummy --dtype bfloat16 --max-model-len 1024 \
            --input-len 128 --output-len 32 --batch-sizes 1,8 \
            --result-json "$OUT/bench_latency_8b_add_norm_4096.json"
    fi
    # The real 1024-token prefill (the warm-up no longer caches the measured prompt) and the
    # small model at batch 1: early, so a short budget still gets them.
    step bench_prefill_8b 90 no bench_prefill_8b.txt -- \
        "$KILN" bench latency --device cuda --model llama-3.1-8b --load-format dummy \
        --dtype bfloat16 --max-model-len 2048 --input-len 1024 --output-len 4 \
        --batch-sizes 1 --result-json "$OUT/bench_prefill_8b.json"
    step bench_latency_qwen05b 90 no bench_latency_qwen05b.txt -- \
        "$KILN" bench latency --device cuda --model qwen2.5-0.5b --load-format dummy \
        --dtype bfloat16 --max-model-len 1024 --input-len 128 --output-len 64 \
        --batch-sizes 1,32 --result-json "$OUT/bench_latency_qwen05b.json"
    # Speculative decoding (prompt lookup) on the demo model and a prompt it copies from,
    # against plain decoding, same run: verification steps run eager (no CUDA graphs), so
    # this weighs their cost against the tokens per step they yield. SPEC=0 skips them.
    if [ "${SPEC:-1}" = 1 ] && [ -f "$BUNDLE/scripts/ngram_prompt.txt" ]; then
        for spec in off on; do
            spec_args=()
            [ "$spec" = on ] && spec_args=(--speculative-config '{"method": "ngram", "num_speculative_tokens": 4}')
            step "bench_latency_demo_spec_${spec}" 60 no "bench_latency_demo_spec_${spec}.txt" -- \
                "$KILN" bench latency --device cuda --prompt-file "$BUNDLE/scripts/ngram_prompt.txt" \
                --output-len 64 --batch-sizes 1,8 "${spec_args[@]}" \
                --result-json "$OUT/bench_latency_demo_spec_${spec}.json"
        done
    fi
    # The eager (no CUDA graphs) decode and the LoRA decode against it, early: both are
    # first measurements waiting for a GPU, and adapter steps run eager.
    # Decode with every kernel launched from the host, for the CUDA-graph A/B in the same run.
    if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${EAGER_AB:-1}" = 1 ]; then
        step bench_latency_8b_eager 150 no bench_latency_8b_eager.txt -- \
            "$KILN" bench latency --device cuda --model llama-3.1-8b --load-format dummy \
            --dtype bfloat16 --max-model-len 1024 --input-len 128 --output-len 32 \
            --batch-sizes 1,8,32 --enforce-eager --result-json "$OUT/bench_latency_8b_eager.json"
    fi

    # LoRA: every request with a generated rank-16 adapter on all seven projections, against
    # the eager base run above (adapter steps are never recorded as graphs), same run.
    # LORA=0 skips it (and the adapter checks against PEFT above).
    if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${LORA:-1}" = 1 ]; then
        step bench_latency_8b_lora16 150 no bench_latency_8b_lora16.txt -- \
            "$KILN" bench latency --device cuda --model llama-3.1-8b --load-format dummy \
            --dtype bfloat16 --max-model-len 1024 --input-len 128 --output-len 32 \
            --batch-sizes 1,8,32 --lora-modules gen=dummy:16 --lora-adapter gen \
            --result-json "$OUT/bench_latency_8b_lora16.json"
    fi
    # Mixture of experts: decode steps of up to 64 sequences routed on the device (and so
    # recorded as graphs) against the host path (KILN_MOE_DEVICE=0), same model, same run.
    # MOE=0 skips them (Qwen3-30B-A3B is 61 GB in bf16).
    if [ "${MOE:-1}" = 1 ]; then
        for path in ${MOE_PATHS:-device host}; do
            moe_env=""
            [ "$path" = host ] && moe_env="KILN_MOE_DEVICE=0"
            step "bench_latency_qwen3_moe_${path}" 150 no "bench_latency_qwen3_moe_${path}.txt" -- \
                env $moe_env "$KILN" bench latency --device cuda --model qwen3-30b-a3b \
                --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
                --output-len 32 --batch-sizes 1,8,32 \
                --result-json "$OUT/bench_latency_qwen3_moe_${path}.json"
        done
        # gpt-oss-20b (39 GiB in bf16): sinks in every attention kernel, host-routed experts.
        # (Its dummy load passed 150 s in the eleventh run, the experts built on the host;
        # they are generated on the device now.)
        step bench_latency_gpt_oss_20b 90 no bench_latency_gpt_oss_20b.txt -- \
            "$KILN" bench latency --device cuda --model gpt-oss-20b \
            --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
            --output-len 32 --batch-sizes 1,8 \
            --result-json "$OUT/bench_latency_gpt_oss_20b.json"
    fi
else
    printf '%-28s %-8s %6s  %s\n' bench_latency_8b SKIPPED - "no 'kiln bench latency' in this binary" | tee -a "$SUMMARY"
fi

# HF transformers eager on the same shapes, same GPU, same run (the machine has torch): right
# after kiln's own figures, so the prefill ratio is measured even on a short budget.
HF_BASELINE="$BUNDLE/scripts/hf_baseline.py"
PRESETS="${PRESETS:-$BUNDLE/models/presets}"
if [ "${HF:-1}" = 1 ] && [ -f "$HF_BASELINE" ] && python3 -c "import torch, transformers" 2>/dev/null; then
    step hf_baseline_8b 150 no hf_baseline_8b.json -- \
        python3 "$HF_BASELINE" --config "$PRESETS/llama-3.1-8b.json" --batch-sizes 1,32 \
        --input-len 128 --output-len 32 --prefill-len 1024
fi

# Diffusion (issue 9): SD 1.5 at 512x512, 50 Euler steps with CFG, batch 1, and SD-Turbo at
# 512x512, 1 step, with dummy weights of the real shapes (built-in presets), then diffusers
# fp16 + SDPA on the same shapes and the same GPU. The wheels of diffusers (the machine has
# torch and transformers) may be given as DIFFUSERS_WHEELS=dir; they go to a private folder.
if [ "${IMAGE_BENCH:-1}" = 1 ]; then
    if "$KILN" bench image --help >/dev/null 2>&1; then
        step bench_image_sd15 70 no bench_image_sd15.txt -- \
            "$KILN" bench image --model sd-1.5 --load-format dummy --device cuda --dtype f16 \
            --width 512 --height 512 --steps "${SD_STEPS:-50}" --guidance-scale 7.5 --batch 1 \
            --warmup 1 --iters 1 --result-json "$OUT/bench_image_sd15.json"
        step bench_image_sd_turbo 25 no bench_image_sd_turbo.txt -- \
            "$KILN" bench image --model sd-turbo --load-format dummy --device cuda --dtype f16 \
            --width 512 --height 512 --steps 1 --guidance-scale 0 --batch 1 --warmup 2 \
            --iters 3 --result-json "$OUT/bench_image_sd_turbo.json"
        # A/B of the implicit-GEMM conv (kernels/conv_implicit.cu, opt-in until this shows
        # it correct and faster): the same two runs with KILN_CONV_IMPLICIT=1, against the
        # two above (im2col + cuBLAS). The selftest's conv2d(implicit) rows check its values.
        step bench_image_sd_turbo_conv_implicit 25 no bench_image_sd_turbo_conv_implicit.txt -- \
            env KILN_CONV_IMPLICIT=1 "$KILN" bench image --model sd-turbo --load-format dummy \
            --device cuda --dtype f16 --width 512 --height 512 --steps 1 --guidance-scale 0 \
            --batch 1 --warmup 2 --iters 3 \
            --result-json "$OUT/bench_image_sd_turbo_conv_implicit.json"
        step bench_image_sd15_conv_implicit 70 no bench_image_sd15_conv_implicit.txt -- \
            env KILN_CONV_IMPLICIT=1 "$KILN" bench image --model sd-1.5 --load-format dummy \
            --device cuda --dtype f16 --width 512 --height 512 --steps "${SD_STEPS:-50}" \
            --guidance-scale 7.5 --batch 1 --warmup 1 --iters 1 \
            --result-json "$OUT/bench_image_sd15_conv_implicit.json"
    else
        printf '%-28s %-8s %6s  %s\n' bench_image_sd15 SKIPPED - "no 'kiln bench image' in this binary" | tee -a "$SUMMARY"
    fi
    DIFFUSERS_BASELINE="$BUNDLE/scripts/diffusers_baseline.py"
    if [ -f "$DIFFUSERS_BASELINE" ] && python3 -c "import torch, transformers" 2>/dev/null; then
        if ! python3 -c "import diffusers" 2>/dev/null && [ -d "${DIFFUSERS_WHEELS:-}" ]; then
            PYLIB="${TMPDIR:-/tmp}/kiln-gpu-check-diffusers"
            python3 -m pip install --quiet --no-deps --no-index --target "$PYLIB" \
                "$DIFFUSERS_WHEELS"/*.whl >"$OUT/diffusers_install.log" 2>&1
            export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
        fi
        if python3 -c "import diffusers" 2>/dev/null; then
            step diffusers_sd15 50 no diffusers_sd15.json -- \
                python3 "$DIFFUSERS_BASELINE" --preset sd-1.5 --device cuda --dtype f16 \
                --width 512 --height 512 --steps 50 --guidance-scale 7.5 --batch 1 \
                --warmup 1 --iters 2
            step diffusers_sd_turbo 30 no diffusers_sd_turbo.json -- \
                python3 "$DIFFUSERS_BASELINE" --preset sd-turbo --device cuda --dtype f16 \
                --width 512 --height 512 --steps 1 --guidance-scale 0 --batch 1 \
                --warmup 2 --iters 3
        else
            printf '%-28s %-8s %6s  %s\n' diffusers_sd15 SKIPPED - "no diffusers (set DIFFUSERS_WHEELS)" | tee -a "$SUMMARY"
        fi
    fi
    for f in "$OUT"/bench_image_*.txt; do
        [ -s "$f" ] && grep -h "^median" "$f" | sed "s|^|$(basename "$f" .txt): |" | tee -a "$SUMMARY"
    done
    for f in "$OUT"/diffusers_*.json; do
        [ -s "$f" ] && python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); m=r["median"]; print("%s: median %.3f s, UNet %.2f it/s" % (sys.argv[1].rsplit("/",1)[-1], m["total_s"], m["unet_it_per_s"]))' "$f" | tee -a "$SUMMARY"
    done
fi

# Decode without the GEMV kernel (cuBLAS for every linear), for its A/B in the same run.
if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${NO_GEMV_AB:-1}" = 1 ]; then
    step bench_latency_8b_no_gemv 120 no bench_latency_8b_no_gemv.txt -- \
        env KILN_GEMV=0 "$KILN" bench latency --device cuda --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
        --output-len 32 --batch-sizes 1,8 --result-json "$OUT/bench_latency_8b_no_gemv.json"
fi

# Decode and the small model without the decode fusions (the QKV split + rope + cache write
# kernel; the residual add + RMS norms folded into the QKV and gate_up GEMVs, the SwiGLU
# into the gate_up GEMV's epilogue), for their A/B in the same run: seven launches per
# layer more at batch 1.
if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${UNFUSED_AB:-1}" = 1 ]; then
    unfused="KILN_FUSED_QKV=0 KILN_FUSED_GEMV=0"
    step bench_latency_8b_unfused 120 no bench_latency_8b_unfused.txt -- \
        env $unfused "$KILN" bench latency --device cuda --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
        --output-len 32 --batch-sizes 1,8 --result-json "$OUT/bench_latency_8b_unfused.json"
    # Each fusion alone off at batch 1, to find which one the fused path's 0.1 ms loss at
    # the 8B's batch 1 (tenth run) comes from.
    for fusion in QKV GEMV; do
        step "bench_latency_8b_no_fused_${fusion,,}" 90 no "bench_latency_8b_no_fused_${fusion,,}.txt" -- \
            env "KILN_FUSED_${fusion}=0" "$KILN" bench latency --device cuda --model llama-3.1-8b \
            --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
            --output-len 32 --batch-sizes 1 \
            --result-json "$OUT/bench_latency_8b_no_fused_${fusion,,}.json"
    done
    step bench_latency_qwen05b_unfused 90 no bench_latency_qwen05b_unfused.txt -- \
        env $unfused "$KILN" bench latency --device cuda --model qwen2.5-0.5b \
        --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
        --output-len 64 --batch-sizes 1 --result-json "$OUT/bench_latency_qwen05b_unfused.json"
fi

# Linear layers through cublasGemmEx (KILN_CUBLASLT=0) instead of cuBLASLt (the default:
# bias fused, algorithm cached per shape), for the A/B in the same run: the 8B decode at
# batch 1/8/32, to compare with bench_latency_8b. The 1024-token prefill's A/B is
# bench_prefill_8b_gemmex below; the selftest's linear(cuBLASLt) rows time each shape
# against cublasGemmEx.
if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${CUBLASLT_AB:-1}" = 1 ]; then
    step bench_latency_8b_gemmex 150 no bench_latency_8b_gemmex.txt -- \
        env KILN_CUBLASLT=0 "$KILN" bench latency --device cuda --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
        --output-len 32 --batch-sizes 1,8,32 --result-json "$OUT/bench_latency_8b_gemmex.json"
fi

# Long contexts (4000-token prompts): decode attention reads 0.5 GB of KV per step at batch
# 8; the generic kernel (KILN_SPLIT_K_DECODE=0) against the split-K one, same run.
if "$KILN" bench latency --help >/dev/null 2>&1 && [ "${LONG:-1}" = 1 ]; then
    for variant in generic split_k; do
        flag=0
        [ "$variant" = split_k ] && flag=1
        step "bench_long_8b_${variant}" 90 no "bench_long_8b_${variant}.txt" -- \
            env KILN_SPLIT_K_DECODE=$flag "$KILN" bench latency --device cuda \
            --model llama-3.1-8b --load-format dummy --dtype bfloat16 --max-model-len 4200 \
            --input-len 4000 --output-len 16 --batch-sizes 1,8 \
            --result-json "$OUT/bench_long_8b_${variant}.json"
    done
fi

# Where the time of a batch-1 decode step goes: every kernel's GPU time under Nsight Compute
# (kernels serialised, so only durations count, not the gaps between them), for a short
# generation on the 8B shape: the prefill, then decode steps of ~12 launches per layer.
NCU_BIN="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)"
if [ "${NCU:-1}" = 1 ] && [ -n "$NCU_BIN" ]; then
    step ncu_decode_8b 150 no ncu_decode_8b.csv -- \
        "$NCU_BIN" --metrics gpu__time_duration.sum --csv --clock-control none \
        --cache-control none "$KILN" generate --device cuda --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 256 \
        --prompt "The river town" --max-tokens 4 --ignore-eos
    # The same for one 1024-token prefill (no warm-up, no decode): which kernels take the
    # prefill's time against transformers' 32.5 ms forward (GEMMs vs attention vs the rest).
    step ncu_prefill_8b 150 no ncu_prefill_8b.csv -- \
        "$NCU_BIN" --metrics gpu__time_duration.sum --csv --clock-control none \
        --cache-control none "$KILN" bench latency --device cuda --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 2048 --input-len 1024 \
        --output-len 1 --batch-sizes 1 --warmup 0
fi

# Where a batch-1 decode step's wall time goes besides kernels (the eighth run: 5.86 ms per
# step against 5.2 ms of kernel time): an Nsight Systems timeline, summarised (CUDA API calls
# and their host time, kernel and memcpy totals), if nsys is installed.
NSYS_BIN="$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)"
if [ "${NSYS:-1}" = 1 ] && [ -n "$NSYS_BIN" ]; then
    step nsys_decode_8b 150 no nsys_decode_8b.txt -- \
        "$NSYS_BIN" profile --stats=true --force-overwrite true -o "$OUT/nsys_decode_8b" \
        "$KILN" bench latency --device cuda --model llama-3.1-8b --load-format dummy \
        --dtype bfloat16 --max-model-len 1024 --input-len 128 --output-len 64 --batch-sizes 1
fi

# Where SD-Turbo's 91 ms go (the eighth run: VAE decode 73 ms, 2.7x diffusers): every
# kernel's GPU time in one 512x512 1-step image, no warm-up (kernels serialised).
if [ "${NCU:-1}" = 1 ] && [ -n "$NCU_BIN" ] && "$KILN" bench image --help >/dev/null 2>&1; then
    step ncu_sd_turbo 150 no ncu_sd_turbo.csv -- \
        "$NCU_BIN" --metrics gpu__time_duration.sum --csv --clock-control none \
        --cache-control none "$KILN" bench image --model sd-turbo --load-format dummy \
        --device cuda --dtype f16 --width 512 --height 512 --steps 1 --guidance-scale 0 \
        --warmup 0 --iters 1
fi

# The 1024-token prefill's A/B variants (bench_prefill_8b itself runs after bench_latency_8b).
if "$KILN" bench latency --help >/dev/null 2>&1; then
    # Both earlier 1024-token prefill figures (17.5 and 43.9 ms) were prefix-cache hits (the
    # warm-up ran the measured prompt; it no longer does, and the JSON reports
    # prefill_cached_tokens). The same prefill without graphs, without the GEMV, without
    # kiln's cuBLAS workspace and without prefix caching, and through cublasGemmEx
    # (KILN_CUBLASLT=0), to see what each costs.
    if [ "${PREFILL_AB:-1}" = 1 ]; then
        for variant in ${PREFILL_VARIANTS:-gemmex eager no_gemv cublas_workspace no_prefix_cache}; do
            case $variant in
            gemmex) envs="KILN_CUBLASLT=0" ;;
            eager) envs="KILN_ENFORCE_EAGER=1" ;;
            no_gemv) envs="KILN_GEMV=0" ;;
            cublas_workspace) envs="KILN_CUBLAS_WORKSPACE=0" ;;
            no_prefix_cache) envs="KILN_ENABLE_PREFIX_CACHING=false" ;;
            esac
            step "bench_prefill_8b_${variant}" 60 no "bench_prefill_8b_${variant}.txt" -- \
                env $envs "$KILN" bench latency --device cuda --model llama-3.1-8b \
                --load-format dummy --dtype bfloat16 --max-model-len 2048 --input-len 1024 \
                --output-len 4 --batch-sizes 1
        done
    fi
fi

# Offline throughput (prefill-heavy: 1024-token prompts, 128 output tokens). Variants, for
# A/Bs in the same run (THROUGHPUT_VARIANTS): default; no_mixed_split (a serving step's
# decode rows stay in the tensor-core prefill kernel, KILN_SPLIT_MIXED_ATTENTION=0);
# tokens8192 / tokens16384 (a larger per-step token budget than the default 2048).
if [ "${THROUGHPUT:-1}" = 1 ]; then
    for variant in ${THROUGHPUT_VARIANTS:-default}; do
        envs="KILN_THROUGHPUT_VARIANT=$variant"
        flags=""
        case $variant in
        no_mixed_split) envs="KILN_SPLIT_MIXED_ATTENTION=0" ;;
        tokens*) flags="--max-num-batched-tokens ${variant#tokens}" ;;
        esac
        name=bench_throughput_8b
        [ "$variant" = default ] || name="bench_throughput_8b_${variant}"
        step "$name" 120 no "$name.txt" -- \
            env $envs "$KILN" bench throughput --device cuda --model llama-3.1-8b \
            --load-format dummy --dtype bfloat16 --max-model-len 2048 --num-prompts 200 \
            --input-len 1024 --output-len 128 $flags --result-json "$OUT/$name.json"
    done
fi

# The same 8B model sharded over two ranks sharing the GPU: what the all-reduces cost a
# real step (the input of the multi-GPU scaling estimate in docs/PERFORMANCE.md).
if [ "${TP_LATENCY:-1}" = 1 ]; then
    step bench_latency_8b_tp2 120 no bench_latency_8b_tp2.txt -- \
        "$KILN" bench latency --device cuda --tensor-parallel-size 2 --model llama-3.1-8b \
        --load-format dummy --dtype bfloat16 --max-model-len 1024 --input-len 128 \
        --output-len 32 --batch-sizes 1,32 --result-json "$OUT/bench_latency_8b_tp2.json"
fi

# transformers' fastest documented decode: static cache + torch.compile (issue 6's 2.5x bar).
if [ "${HF:-1}" = 1 ] && [ "${HF_COMPILED:-1}" = 1 ] && [ -f "$HF_BASELINE" ] &&
    python3 -c "import torch, transformers" 2>/dev/null; then
    step hf_baseline_8b_compiled 240 no hf_baseline_8b_compiled.json -- \
        python3 "$HF_BASELINE" --config "$PRESETS/llama-3.1-8b.json" --batch-sizes 1 \
        --input-len 128 --output-len 128 --prefill-len 1024 --mode static-compiled
fi

# Headline numbers, pulled out of the logs for the summary.
grep -ho "weights loaded in [0-9.]* s" "$OUT"/generate_8b_dummy.log 2>/dev/null |
    sed 's/^/llama-3.1-8b dummy: /' | tee -a "$SUMMARY"
for f in "$OUT"/check_*.json "$OUT"/tp*.json "$OUT"/image_check_*.json; do
    [ -s "$f" ] || continue
    grep -q '^  "ok": true' "$f" || echo "mismatch: $f" | tee -a "$SUMMARY"
done

echo "total $(elapsed) s; $FAILED required step(s) failed" | tee -a "$SUMMARY"
[ "$FAILED" -eq 0 ]
