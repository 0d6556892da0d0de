# kiln serving image: `docker build -t kiln .`
# Run: docker run --gpus all -p 8000:8000 -e KILN_MODEL=Qwen/Qwen2.5-0.5B-Instruct \
#        -v kiln-cache:/home/kiln/.cache kiln
# Configured only through KILN_* variables (every `kiln serve` flag has one).

# The runtime stage's base; declared before the first FROM, where FROM lines can see it.
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# --- build: a plain Rust toolchain; kiln loads CUDA at run time, so no CUDA SDK here ---
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kiln \
 && install -m 0755 target/release/kiln /usr/local/bin/kiln

# --- runtime: NVIDIA's CUDA runtime image has the libraries kiln dlopens
#     (libnvrtc, libcublas, libcublasLt); the driver (libcuda) comes from the host via
#     the NVIDIA container toolkit. Without a GPU kiln runs on the CPU. ---
FROM ${CUDA_RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin kiln
COPY --from=build /usr/local/bin/kiln /usr/local/bin/kiln

USER kiln
WORKDIR /home/kiln
# Downloaded models (HF hub cache) and kiln's own cache (compiled kernels, demo model)
# live in one volume so restarts neither download nor compile again.
ENV HF_HOME=/home/kiln/.cache/huggingface \
    KILN_CACHE_DIR=/home/kiln/.cache/kiln \
    KILN_HOST=0.0.0.0 \
    KILN_PORT=8000 \
    KILN_SHUTDOWN_TIMEOUT=30
RUN mkdir -p /home/kiln/.cache/huggingface /home/kiln/.cache/kiln
VOLUME ["/home/kiln/.cache"]
EXPOSE 8000

# /health is 503 while the model loads and after an engine failure. The start period
# covers downloading and loading a large model.
HEALTHCHECK --start-period=600s --interval=15s --timeout=5s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${KILN_PORT}/health" || exit 1

# SIGTERM: kiln stops accepting, lets in-flight requests finish within
# KILN_SHUTDOWN_TIMEOUT seconds, and exits 0 (give `docker stop -t` more than that).
STOPSIGNAL SIGTERM
ENTRYPOINT ["kiln", "serve"]
