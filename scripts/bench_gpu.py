"""GPU peers of `compare_peers`: PyTorch eager and torch.compile on CUDA, same cases and names.

Extends ../shared/reference/bench_gpu.py (the project's reference script) with the generalized-JSD
case and the f16 / bf16 variants of every case:

* `kd_ce_RxV`: 0.5*T^2*KL(softmax(t/T) || softmax(s/T)) (batchmean) + 0.5*CE(s, y), T = 2;
* `jsd_RxV`:   TRL's generalized JSD, beta = 0.5 (GKD's default), T = 1, batchmean;
* suffix `_f16` / `_bf16`: logits in that dtype (the loss computed as PyTorch does for it), the
  gradient in that dtype.

Forward + backward w.r.t. the student. One JSON line per (case, impl) and first the device-to-
device copy bandwidth, so the floor (read s, t; write grad: 3 logits tensors) follows.

    python3 scripts/bench_gpu.py                      # every case
    python3 scripts/bench_gpu.py kd_ce_4096x32000,jsd_2048x128000_bf16
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"256x1000": (256, 1000), "4096x32000": (4096, 32000),
          "2048x128000": (2048, 128000), "8192x128000": (8192, 128000)}
DTYPES = {"": torch.float32, "_f16": torch.float16, "_bf16": torch.bfloat16}


def kd_ce(s, t, y):
    T = 2.0
    ls = F.log_softmax(s / T, -1)
    lt = F.log_softmax(t / T, -1)
    kl = F.kl_div(ls, lt, reduction="batchmean", log_target=True) * T * T
    return 0.5 * kl + 0.5 * F.cross_entropy(s, y)


def jsd(s, t, y, beta=0.5):
    # TRL's generalized_jsd_loss (beta strictly inside (0, 1)), temperature 1, batchmean.
    ls = F.log_softmax(s, -1)
    lt = F.log_softmax(t, -1)
    lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), dim=0)
    kl_t = F.kl_div(lm, lt, reduction="none", log_target=True)
    kl_s = F.kl_div(lm, ls, reduction="none", log_target=True)
    return (beta * kl_t + (1 - beta) * kl_s).sum() / s.shape[0]


def cases():
    out = {}
    for shape, (n, v) in SHAPES.items():
        for suffix in DTYPES:
            out[f"kd_ce_{shape}{suffix}"] = (kd_ce, n, v, DTYPES[suffix])
    for suffix in DTYPES:
        out[f"jsd_2048x128000{suffix}"] = (jsd, 2048, 128000, DTYPES[suffix])
    return out


def time_step(step, min_runs=20, target_s=1.0):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    est = time.perf_counter() - t0
    n = int(max(min_runs, min(500, target_s / max(est, 1e-6))))
    ts = []
    for _ in range(n):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts[0], n


def main():
    table = cases()
    wanted = sys.argv[1].split(",") if len(sys.argv) > 1 else list(table)
    dev = "cuda"
    x = torch.empty(2 * 1024**3 // 4, device=dev)
    y_ = torch.empty_like(x)
    for _ in range(3):
        y_.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y_.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 4 * 10 / (time.perf_counter() - t0)
    del x, y_
    print(json.dumps({"bandwidth_GBps": bw / 1e9, "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__}), flush=True)
    for case in wanted:
        fn, n, v, dtype = table[case]
        compiled = torch.compile(fn)
        g = torch.Generator(device=dev).manual_seed(0)
        s0 = (torch.randn(n, v, device=dev, generator=g) * 2).to(dtype)
        t = (torch.randn(n, v, device=dev, generator=g) * 2).to(dtype)
        y = torch.randint(0, v, (n,), device=dev, generator=g)
        floor_ms = 3 * n * v * s0.element_size() / bw * 1e3
        for impl, f in (("cuda-eager", fn), ("cuda-compile", compiled)):
            def step():
                s = s0.detach().requires_grad_()
                loss = f(s, t, y)
                loss.backward()
                return s.grad
            try:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                med, mn, runs = time_step(step)
                peak = (torch.cuda.max_memory_allocated() - base) / 1e6
                row = {"case": case, "impl": impl, "median_ms": round(med, 4),
                       "min_ms": round(mn, 4), "runs": runs, "floor_ms": round(floor_ms, 4),
                       "peak_extra_mb": round(peak, 1)}
            except Exception as e:  # out of memory at the largest case: say so, go on
                row = {"case": case, "impl": impl, "error": str(e).splitlines()[0][:200]}
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
        del s0, t, y
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
