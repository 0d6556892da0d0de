#!/bin/bash
# Builds the kiln image from this checkout and checks it, on a Debian machine with no
# access to Docker Hub or nvcr.io (as the project's CI-class machines are). Run as root.
#
# The two base images are stood in for locally: the runtime stage's CUDA image by a
# debootstrapped Debian (CUDA_RUNTIME_IMAGE build arg; kiln then runs on the CPU), the build
# stage's rust:1-bookworm by that Debian plus this machine's Rust toolchain at the official
# image's paths. What is checked is ours: the Dockerfile builds, the image serves as a
# non-root user, its HEALTHCHECK turns healthy, `docker stop` drains in-flight requests and
# exits 0. Set CA_BUNDLE=/path/to/ca.crt where egress re-signs TLS (cargo inside the build
# must trust it). Work folder: $WORK (default /tmp/kiln-docker-check).
set -euxo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${WORK:-/tmp/kiln-docker-check}
mkdir -p "$W"
DOCKER=/usr/bin/docker # Debian's CLI drives the daemon's built-in BuildKit (no buildx needed)

# 1. Docker engine from Debian; host networking only (no iptables or bridges needed).
if ! $DOCKER info >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io debootstrap
  nohup /usr/sbin/dockerd --iptables=false --ip-masq=false --bridge=none > "$W/dockerd.log" 2>&1 &
  echo $! > "$W/dockerd.pid"
  for _ in $(seq 30); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
fi

# 2. The stand-in runtime base.
if ! $DOCKER image inspect debian-local:bookworm >/dev/null 2>&1; then
  [ -d "$W/rootfs" ] || debootstrap --variant=minbase bookworm "$W/rootfs" http://deb.debian.org/debian
  rm -rf "$W"/rootfs/var/cache/apt/archives/*.deb "$W"/rootfs/var/lib/apt/lists/*
  tar -C "$W/rootfs" -c . | $DOCKER import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - debian-local:bookworm
fi

# 3. The stand-in rust:1-bookworm: build tools plus this machine's stable toolchain.
if ! $DOCKER image inspect rust:1-bookworm >/dev/null 2>&1; then
  $DOCKER rm -f kiln-rustbase 2>/dev/null || true
  $DOCKER run --network host --name kiln-rustbase debian-local:bookworm sh -c \
    'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential pkg-config git ca-certificates curl && rm -rf /var/lib/apt/lists/*'
  rm -rf "$W/stage"; mkdir -p "$W/stage/usr/local/cargo/bin" "$W/stage/usr/local/rustup/toolchains"
  cp -a "$HOME/.cargo/bin/." "$W/stage/usr/local/cargo/bin/"
  cp -a "$HOME/.rustup/toolchains/stable-x86_64-unknown-linux-gnu" "$W/stage/usr/local/rustup/toolchains/"
  printf 'version = "12"\ndefault_toolchain = "stable-x86_64-unknown-linux-gnu"\nprofile = "minimal"\n' \
    > "$W/stage/usr/local/rustup/settings.toml"
  tar -C "$W/stage" -c usr | $DOCKER cp - kiln-rustbase:/
  $DOCKER commit --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' kiln-rustbase rust:1-bookworm
  $DOCKER rm kiln-rustbase
  if [ -n "${CA_BUNDLE:-}" ]; then
    mkdir -p "$W/cafix" && cp "$CA_BUNDLE" "$W/cafix/ca-certificates.crt"
    printf 'FROM rust:1-bookworm\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n' > "$W/cafix/Dockerfile"
    DOCKER_BUILDKIT=1 $DOCKER build -q -t rust:1-bookworm "$W/cafix"
  fi
fi

# 4. The project's Dockerfile, unchanged but for the runtime base.
DOCKER_BUILDKIT=1 $DOCKER build --progress=plain --network host \
  --build-arg CUDA_RUNTIME_IMAGE=debian-local:bookworm -t kiln:local "$REPO"
$DOCKER image ls kiln:local

PORT=18080
wait_healthy() {
  for _ in $(seq 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && return 0
    sleep 1
  done
  return 1
}

# 5. Serve (no GPU, no hub access: the built-in demo model), answer, run as non-root,
#    turn healthy, stop with exit code 0.
$DOCKER rm -f kiln-check 2>/dev/null || true
$DOCKER run -d --name kiln-check --network host -e KILN_PORT=$PORT kiln:local
wait_healthy
curl -sS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"kiln-demo","messages":[{"role":"user","content":"What is a kiln?"}],"max_tokens":16}'
echo
test "$($DOCKER exec kiln-check id -u)" != 0
sleep 20 # the HEALTHCHECK runs every 15 s
test "$($DOCKER inspect -f '{{.State.Health.Status}}' kiln-check)" = healthy
$DOCKER stop -t 45 kiln-check
test "$($DOCKER inspect -f '{{.State.ExitCode}}' kiln-check)" = 0
$DOCKER rm kiln-check

# 6. SIGTERM while 10 requests run: every one completes, exit code 0.
$DOCKER run -d --name kiln-check --network host -e KILN_PORT=$PORT kiln:local
wait_healthy
rm -rf "$W/drain"; mkdir "$W/drain"
PIDS=()
for n in $(seq 10); do
  curl -sS -o "$W/drain/$n.json" -w '%{http_code}\n' "http://127.0.0.1:$PORT/v1/completions" \
    -H 'Content-Type: application/json' \
    -d '{"model":"kiln-demo","prompt":"A kiln is","max_tokens":2000,"ignore_eos":true}' > "$W/drain/$n.code" &
  PIDS+=($!)
done
sleep 0.5
$DOCKER stop -t 45 kiln-check
wait "${PIDS[@]}" # not a bare wait: dockerd may be a child of this shell
test "$(cat "$W"/drain/*.code | sort -u)" = 200
test "$($DOCKER inspect -f '{{.State.ExitCode}}' kiln-check)" = 0
$DOCKER rm kiln-check

# 7. Stop the daemon this script started (images stay in /var/lib/docker).
if [ -f "$W/dockerd.pid" ]; then
  kill "$(cat "$W/dockerd.pid")"
  while kill -0 "$(cat "$W/dockerd.pid")" 2>/dev/null; do sleep 1; done
  rm "$W/dockerd.pid"
fi
echo "docker check passed"
