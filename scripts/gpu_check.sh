#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with the folders that
# scripts/gpu_prepare.sh filled (.gpu: binaries and the PyTorch script; .gl: Vulkan loader):
#   1. device and driver;
#   2. parity of the fused CubeCL kernel with the composed path, and the golden sets, on wgpu
#      (the NVIDIA Vulkan driver, Burn's default `fusion`);
#   3. PyTorch eager / torch.compile on CUDA (scripts/bench_gpu.py) with the copy bandwidth;
#   4. compare_peers --gpu (wgpu-fused, wgpu-composed) and the table against step 3.
# Everything is written under $OUT (default /tmp/kd_gpu). Record the table, the device and this
# command in docs/performance.md.
set -u
OUT=${OUT:-/tmp/kd_gpu}
mkdir -p "$OUT"
if ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
  [ -f "$f" ] && export VK_DRIVER_FILES="$f" && break
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
mkdir -p /tmp/kdbin
for b in suite compare_peers; do xz -dc ".gpu/$b.xz" > "/tmp/kdbin/$b" && chmod +x "/tmp/kdbin/$b"; done
export KD_GOLDEN_DIR="$PWD/tests/golden" KD_BACKENDS=wgpu
stage() { echo; echo "=== $* ($(date +%T))"; }
stage "parity and golden tests on wgpu"
timeout 240 /tmp/kdbin/suite --test-threads 4 fused::parity_logits:: golden adversarial:: \
  2>&1 | grep -E "^test result|FAILED|panicked|^test .*(fail|FAIL)" | tee "$OUT/tests.txt"
stage "PyTorch on CUDA"
PYTHONUNBUFFERED=1 timeout 200 python3 .gpu/bench_gpu.py 2>&1 | grep '^{' | tee "$OUT/gpu_peers.jsonl"
stage "kd-losses on wgpu"
timeout 240 /tmp/kdbin/compare_peers --gpu --gpu-peers "$OUT/gpu_peers.jsonl" 2>&1 \
  | grep -v XDG_RUNTIME | tee "$OUT/compare_peers.txt"
stage "done"
