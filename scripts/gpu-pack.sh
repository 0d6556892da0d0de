#!/usr/bin/env bash
# Packs a device run's own files into gpu-bundle/ (kept out of git), small enough to travel
# with the working tree (64 MiB together, and the tracked tree is ~28 MB): the stripped
# release binary, xz-compressed (25 MB -> 7.6 MB), optionally the HTTP bench's binary, and a
# copy of scripts/ and tests/openai_client (gpu-check finds its bundle from its own path).
# The fixtures and presets are not copied: they travel as tracked files, and
# scripts/gpu-session.sh points gpu-check at them. Run from the project root:
#     scripts/gpu-pack.sh [--http-bench] [--openai-wheels]
# --openai-wheels downloads the official openai client and its dependencies as wheels for
# the device's Python 3.12 (~6 MB), so the client check runs there too.
# then on the device machine (carry: ["gpu-bundle"]):
#     bash gpu-bundle/scripts/gpu-session.sh
set -euo pipefail
[ -f Cargo.toml ] || { echo "run this from the project root" >&2; exit 2; }
cargo build --release
rm -rf gpu-bundle && mkdir -p gpu-bundle/tests
strip -o gpu-bundle/kiln target/release/kiln
xz -T0 -6 gpu-bundle/kiln
for opt in "$@"; do
    case $opt in
    --http-bench)
        cargo bench --bench http_vs_engine --no-run
        bin=$(ls -t target/release/deps/http_vs_engine-* | grep -v '\.d$' | head -n 1)
        strip -o gpu-bundle/http_vs_engine "$bin"
        xz -T0 -6 gpu-bundle/http_vs_engine
        ;;
    --openai-wheels)
        python3 -m pip download -q --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d gpu-bundle/wheels openai
        ;;
    *) echo "unknown option $opt" >&2; exit 2 ;;
    esac
done
cp -r scripts gpu-bundle/
cp -r tests/openai_client gpu-bundle/tests/
mkdir -p .git/info && { grep -qx '/gpu-bundle/' .git/info/exclude 2>/dev/null || echo '/gpu-bundle/' >> .git/info/exclude; }
du -sh gpu-bundle
