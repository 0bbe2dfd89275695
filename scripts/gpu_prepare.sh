#!/usr/bin/env bash
# Builds, here, what the GPU check (scripts/gpu_check.sh) runs on a machine without a Rust
# toolchain: the test suite and `compare_peers` in release (Burn's default features), compressed
# into .gpu/, with a copy of the PyTorch peers script. The Vulkan loader packages go to .gl/
# (see the device tool's README). Then, on the GPU machine, carrying .gpu and .gl:
#     bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
cargo test --release --all-features --test suite --no-run 2>&1 | tail -3
suite=$(ls -t target/release/deps/suite-* | grep -v '\.d$' | head -1)
cargo build --release --all-features --example compare_peers 2>&1 | tail -1
cp "$suite" .gpu/suite
cp target/release/examples/compare_peers .gpu/compare_peers
strip .gpu/suite .gpu/compare_peers
xz -T0 -6 -f .gpu/suite .gpu/compare_peers
cp scripts/bench_gpu.py .gpu/
if [ ! -d .gl ] || [ -z "$(ls .gl/*.deb 2>/dev/null)" ]; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null && (cd .gl && apt-get $o download libvulkan1 >/dev/null) \
    || echo "no Vulkan loader package fetched: the GPU machine must have libvulkan1"
fi
du -sh .gpu .gl 2>/dev/null
