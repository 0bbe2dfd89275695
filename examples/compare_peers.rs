//! Times kd-losses on the cases of `../shared/reference/bench_torch.py` (PyTorch eager,
//! torch.compile, JAX jit) so that both run back to back on one machine.
//!
//! ```text
//! cargo run --release --all-features --example compare_peers                       # every case, default impls
//! cargo run --release --all-features --example compare_peers -- --cases kd_ce_4096x32000 --impls flex-fused
//! cargo run --release --all-features --example compare_peers -- --peers ~/.cache/kdref/results.json   # + table
//! cargo run --all-features --example compare_peers -- --quick                      # CI smoke run (small cases)
//! cargo run --release --all-features --example compare_peers -- --gpu --gpu-peers gpu_peers.jsonl  # on a GPU
//! ```
//!
//! `--gpu` runs the GPU cases (`kd_ce_*`, `jsd_2048x128000`, each also `_f16` / `_bf16`) with
//! `wgpu-fused` and `wgpu-composed`; `--gpu-peers FILE` reads the JSON lines of
//! `scripts/bench_gpu.py` (PyTorch eager and torch.compile on CUDA, run on the same machine) and
//! prints the table with the memory floor. `scripts/gpu_check.sh` runs the whole GPU check.
//!
//! ```text
//! ```
//!
//! Forward + backward (gradient w.r.t. the student inputs), f32, like the Python script:
//! * `kd_ce_*`: `0.5 · T² · KL(softmax(t/T) ‖ softmax(s/T))` (batchmean) `+ 0.5 · CE(s, y)`, `T = 2`;
//! * `hidden_mse_8x128_312to768`: `mean((h_s W + b − h_t)²)`, gradients for `h_s`, `W`, `b`;
//! * `attn_mse_8x12x128x128`: `mean((a_s − a_t)²)` over attention scores;
//! * `fused_linear_8192x1024x32000`: the `kd_ce` loss (mean over tokens) on the logits of an LM
//!   head `[H, V]` applied to `[N, H]` hidden states, student and teacher, gradients for the
//!   student's hidden states and head; impls `flex-fused-linear` (`fused_linear`: no `[N, V]`
//!   logits) and `flex-materialized` (matmuls + `distillation_loss`), run by default for this
//!   case only (needs `--all-features`). Variants (any size, not in the default list):
//!   `fused_linear_topk_NxHxV` (the teacher as its stored top-64 logits per token, `SparseKdLoss`
//!   on each chunk or on the materialized logits) and `fused_linear_frozen_NxHxV` (a frozen head:
//!   the gradient of the hidden states only).
//!
//! Implementations (`--impls`, comma-separated): `flex-fused` (the fused kernel), `flex-composed`,
//! `ndarray-composed`, `wgpu-composed` (Mesa's software renderer without a GPU: slow; not in the
//! default list). `flex-fused` runs the logit kernel for `kd_ce_*` and the squared-error kernel
//! for `hidden_mse_*` / `attn_mse_*`; `*-composed` computes the rows with Burn operations.
//!
//! Each (case, impl) runs in a fresh worker process (this binary re-run with `--worker`), so the
//! peak RSS (`VmHWM`) reflects that case only. One JSON line per pair, with the keys of
//! `bench_torch.py`: `case`, `impl`, `shape`, `median_ms`, `min_ms`, `max_ms`, `peak_rss_extra_mb`
//! (peak RSS at the end − RSS after the inputs were allocated), plus `runs`, `first_call_s`,
//! `steady_extra_mb` (RSS sampled during two extra runs − RSS after the inputs) and `threads`.
//! With `--peers FILE` (the JSON written by `bench_torch.py --out FILE`), a markdown table puts
//! ours next to the peers' medians and prints the memory-bandwidth floor of `kd_ce_4096x32000`.

use std::io::BufRead;
use std::process::Command;
use std::time::Instant;

#[path = "../benches/support/steps.rs"]
mod steps;
use steps::{device_for, make_step};

const CASES: [(&str, &[usize]); 6] = [
    ("kd_ce_64x1000", &[64, 1000]),
    ("kd_ce_256x1000", &[256, 1000]),
    ("kd_ce_4096x32000", &[4096, 32000]),
    ("hidden_mse_8x128_312to768", &[8, 128, 312, 768]),
    ("attn_mse_8x12x128x128", &[8, 12, 128, 128]),
    ("fused_linear_8192x1024x32000", &[8192, 1024, 32000]),
];
/// `--gpu`: the cases of `scripts/bench_gpu.py` (PyTorch CUDA), with `wgpu-fused` and
/// `wgpu-composed` by default. A `_f16` / `_bf16` suffix casts the logits (wgpu has no `bf16`:
/// those cases report the error; they run on Burn's CUDA / ROCm backends).
const GPU_CASES: [&str; 11] = [
    "kd_ce_256x1000",
    "kd_ce_4096x32000",
    "kd_ce_2048x128000",
    "kd_ce_8192x128000",
    "kd_ce_4096x32000_f16",
    "kd_ce_4096x32000_bf16",
    "kd_ce_2048x128000_f16",
    "kd_ce_2048x128000_bf16",
    "jsd_2048x128000",
    "jsd_2048x128000_f16",
    "jsd_2048x128000_bf16",
];
const GPU_IMPLS: &str = "wgpu-fused,wgpu-composed";
const QUICK_CASES: [(&str, &[usize]); 5] = [
    ("kd_ce_64x1000", &[64, 1000]),
    ("door_jsd_64x1000", &[64, 1000]),
    ("hidden_mse_2x16_32to48", &[2, 16, 32, 48]),
    ("attn_mse_2x2x16x16", &[2, 2, 16, 16]),
    ("fused_linear_64x32x500", &[64, 32, 500]),
];
/// The implementations of the `fused_linear_*` cases (the default list's are for the others).
const FUSED_LINEAR_IMPLS: &str = "flex-fused-linear,flex-materialized";
const DEFAULT_IMPLS: &str = "flex-fused,flex-composed,ndarray-composed";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn worker(case: &str, imp: &str, quick: bool) {
    let shape: Vec<usize> = CASES
        .iter()
        .chain(QUICK_CASES.iter())
        .find(|(c, _)| *c == case)
        .map(|(_, s)| s.to_vec())
        .or_else(|| {
            // Any kd_ce_RxV / soft_kl_RxV / reverse_kl_RxV / jsd_RxV, with a dtype suffix.
            let base = case.trim_end_matches("_bf16").trim_end_matches("_f16");
            let dims = base.rsplit('_').next()?;
            let dims: Vec<usize> = dims
                .split('x')
                .map(|d| d.parse().ok())
                .collect::<Option<_>>()?;
            let logit_case = ["kd_ce_", "soft_kl_", "reverse_kl_", "jsd_", "door_"]
                .iter()
                .any(|p| base.starts_with(p));
            (logit_case && dims.len() == 2).then_some(dims)
        })
        .or_else(|| {
            // Any fused_linear_NxHxV, fused_linear_topk_NxHxV, fused_linear_frozen_NxHxV.
            let dims: Vec<usize> = case
                .strip_prefix("fused_linear_")?
                .trim_start_matches("topk_")
                .trim_start_matches("frozen_")
                .split('x')
                .map(|d| d.parse().ok())
                .collect::<Option<_>>()?;
            (dims.len() == 3).then_some(dims)
        })
        .unwrap_or_else(|| panic!("unknown case {case}"));
    let dev = device_for(imp);
    let mut step = make_step(case, &shape, imp, &dev);
    dev.sync().expect("device sync");
    // The peak from here on: the setup's own (a top-k teacher sorted from full logits) is not
    // the step's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let base_kb = rss_kb("VmRSS:");
    let t0 = Instant::now();
    step();
    let first_s = t0.elapsed().as_secs_f64();
    // A step of seconds (the fused_linear case at full size) is its own warm-up: 3 timed runs.
    let slow = first_s > 2.0;
    let est = if slow {
        first_s
    } else {
        let w0 = Instant::now();
        for _ in 0..3 {
            step();
        }
        w0.elapsed().as_secs_f64() / 3.0
    };
    let (min_runs, target_s) = match (quick, slow) {
        (true, _) => (3, 0.2),
        (false, true) => (3, 0.0),
        (false, false) => (10, 3.0),
    };
    // KD_BENCH_RUNS=n: exactly n timed runs (a peak-memory reading of a slow case).
    let (min_runs, target_s) = match std::env::var("KD_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        Some(r) => (r, 0.0),
        None => (min_runs, target_s),
    };
    let n = ((target_s / est.max(1e-6)) as usize).clamp(min_runs.max(1), 200.max(min_runs));
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        step();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let peak_kb = rss_kb("VmHWM:");
    // Steady state: RSS sampled by a thread during two more runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = rss_kb("VmRSS:");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kb("VmRSS:"));
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            peak.max(rss_kb("VmRSS:"))
        })
    };
    // (Slow steps: the peak above already covers them; no extra runs.)
    if !slow {
        step();
        step();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled_kb = sampler.join().unwrap_or(0.0);
    let steady_kb = if slow { peak_kb } else { sampled_kb };
    times.sort_by(|a, b| a.total_cmp(b));
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{{\"case\": \"{case}\", \"impl\": \"{imp}\", \"shape\": {shape:?}, \"runs\": {n}, \
         \"median_ms\": {median:.4}, \"min_ms\": {:.4}, \"max_ms\": {:.4}, \"first_call_s\": {first_s:.4}, \
         \"peak_rss_extra_mb\": {:.1}, \"steady_extra_mb\": {:.1}, \"threads\": {threads}, \
         \"burn\": {:?}}}",
        times[0],
        times[n - 1],
        ((peak_kb - base_kb) * 1024.0 / 1e6).max(0.0),
        ((steady_kb - base_kb) * 1024.0 / 1e6).max(0.0),
        steps::BURN_FEATURES,
    );
}

/// `"key": value` from one JSON line (numbers and strings; enough for our own lines and the
/// peers' file, without a JSON dependency in the examples' runtime path).
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let i = line.find(&pat)? + pat.len();
    let rest = line[i..].trim_start();
    if let Some(r) = rest.strip_prefix('"') {
        return r.split('"').next().map(str::to_string);
    }
    let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// Peer medians from `bench_torch.py --out FILE`: `(case, impl) -> median_ms`, and the floor.
fn read_peers(path: &str) -> (Vec<(String, String, f64)>, Option<f64>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("--peers {path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("peers file is JSON");
    let mut out = Vec::new();
    for r in v["results"].as_array().into_iter().flatten() {
        if let (Some(c), Some(i), Some(m)) = (
            r["case"].as_str(),
            r["impl"].as_str(),
            r["median_ms"].as_f64(),
        ) {
            out.push((c.to_string(), i.to_string(), m));
        }
    }
    let bw = &v["bandwidth"];
    let best = ["numpy_copyto_1thread", "torch_copy_2threads"]
        .iter()
        .filter_map(|k| bw[*k]["GBps"].as_f64())
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let floor = match (best, v["kd_4096x32000_min_bytes"].as_f64()) {
        (Some(gbps), Some(bytes)) => Some(bytes / (gbps * 1e9) * 1e3),
        _ => None,
    };
    (out, floor)
}

/// The GPU table: ours next to `scripts/bench_gpu.py`'s JSON lines (PyTorch eager and
/// torch.compile on CUDA, the measured copy bandwidth and each case's floor).
fn gpu_table(path: &str, cases: &[String], ours: &[String]) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("--gpu-peers {path}: {e}"));
    let peers: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    if let Some(head) = peers.iter().find(|l| l.contains("bandwidth_GBps")) {
        println!(
            "\nGPU peers: {} (torch {}), copy bandwidth {} GB/s",
            field(head, "device").unwrap_or_default(),
            field(head, "torch").unwrap_or_default(),
            field(head, "bandwidth_GBps").unwrap_or_default()
        );
    }
    let median = |l: &str| field(l, "median_ms").and_then(|v| v.parse::<f64>().ok());
    let peer = |case: &str, imp: &str| {
        peers
            .iter()
            .find(|l| {
                field(l, "case").as_deref() == Some(case)
                    && field(l, "impl").as_deref() == Some(imp)
            })
            .copied()
    };
    println!("\n| case | impl | median ms | × floor | vs torch.compile | vs torch eager |");
    println!("|---|---|---:|---:|---:|---:|");
    for case in cases {
        let floor =
            peer(case, "cuda-compile").and_then(|l| field(l, "floor_ms")?.parse::<f64>().ok());
        let compile = peer(case, "cuda-compile").and_then(median);
        let eager = peer(case, "cuda-eager").and_then(median);
        let rows = ours
            .iter()
            .filter(|l| field(l, "case").as_deref() == Some(case.as_str()))
            .map(|l| (field(l, "impl").unwrap_or_default(), median(l)))
            .chain([
                ("torch.compile".to_string(), compile),
                ("torch eager".to_string(), eager),
            ]);
        for (imp, med) in rows {
            let Some(med) = med else { continue };
            let ratio =
                |p: Option<f64>| p.map_or("–".to_string(), |p| format!("{:.2}×", p / med));
            let of_floor = floor.map_or("–".to_string(), |f| format!("{:.2}", med / f));
            println!(
                "| {case} | {imp} | {med:.3} | {of_floor} | {} | {} |",
                ratio(compile),
                ratio(eager)
            );
        }
        if let Some(f) = floor {
            println!(
                "| {case} | HBM floor (3 tensors at the copy bandwidth) | {f:.3} | 1.00 | | |"
            );
        }
    }
}

/// The door cases side by side: each door's median and peak extra memory, and its ratio to the
/// fastest (and leanest) kernel door of the same loss (the composed reference is listed, not
/// counted).
fn door_table(cases: &[String], lines: &[String]) {
    println!("\n| case | door | median ms | × fastest door | peak extra MB | × leanest door |");
    println!("|---|---|---:|---:|---:|---:|");
    let num = |l: &String, k: &str| -> f64 {
        field(l, k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    for case in cases.iter().filter(|c| c.starts_with("door_")) {
        let rows: Vec<&String> = lines
            .iter()
            .filter(|l| field(l, "case").as_deref() == Some(case.as_str()))
            .collect();
        let doors = || {
            rows.iter()
                .filter(|l| !field(l, "impl").unwrap_or_default().ends_with("-composed"))
        };
        let best_ms = doors()
            .map(|l| num(l, "median_ms"))
            .fold(f64::INFINITY, f64::min);
        let best_mb = doors()
            .map(|l| num(l, "peak_rss_extra_mb"))
            .fold(f64::INFINITY, f64::min)
            .max(1.0);
        for l in &rows {
            let (ms, mb) = (num(l, "median_ms"), num(l, "peak_rss_extra_mb"));
            println!(
                "| {case} | {} | {ms:.3} | {:.2}× | {mb:.1} | {:.2}× |",
                field(l, "impl").unwrap_or_default(),
                ms / best_ms,
                mb.max(1.0) / best_mb
            );
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--worker") {
        worker(&args[i + 1], &args[i + 2], quick);
        return;
    }
    let gpu = std::env::args().any(|a| a == "--gpu");
    let cases: Vec<String> = match arg("--cases") {
        Some(c) => c.split(',').map(str::to_string).collect(),
        None if quick => QUICK_CASES.iter().map(|c| c.0.to_string()).collect(),
        None if gpu => GPU_CASES.iter().map(|c| c.to_string()).collect(),
        None => CASES.iter().map(|c| c.0.to_string()).collect(),
    };
    let explicit = arg("--impls");
    let list = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    let default_impls = if gpu { GPU_IMPLS } else { DEFAULT_IMPLS };
    let impls = list(explicit.as_deref().unwrap_or(default_impls));
    let exe = std::env::current_exe().expect("own path");
    println!("# built with {}", steps::BURN_FEATURES);
    let mut lines = Vec::new();
    for case in &cases {
        // The fused_linear cases have implementations of their own.
        let linear_case = case.starts_with("fused_linear");
        let door_case = case.starts_with("door_");
        let case_impls = match (&explicit, linear_case) {
            (None, true) => list(FUSED_LINEAR_IMPLS),
            // The door cases: every public way to the loss (and the composed reference).
            (None, false) if door_case => steps::door_impls(case)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            _ => impls.clone(),
        };
        for imp in &case_impls {
            if linear_case != (imp.ends_with("-fused-linear") || imp.ends_with("-materialized")) {
                continue;
            }
            // A door case runs the doors its loss has (an explicit list may name others).
            if door_case && !steps::door_impls(case).contains(&imp.as_str()) {
                continue;
            }
            // The squared-error kernel of the feature losses runs on flex only.
            let logit_case = ["kd_ce", "soft_kl", "reverse_kl", "jsd"]
                .iter()
                .any(|p| case.starts_with(p));
            if imp.ends_with("-fused") && !imp.starts_with("flex") && !logit_case {
                continue;
            }

            let mut cmd = Command::new(&exe);
            cmd.args(["--worker", case, imp]);
            if quick {
                cmd.arg("--quick");
            }
            let out = cmd.output().expect("worker runs");
            let line = out
                .stdout
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with('{'));
            match line {
                Some(l) if out.status.success() => {
                    println!("{l}");
                    lines.push(l);
                }
                _ => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let last = err
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    println!(
                        "{{\"case\": \"{case}\", \"impl\": \"{imp}\", \"error\": {:?}}}",
                        last
                    );
                }
            }
        }
    }
    if cases.iter().any(|c| c.starts_with("door_")) {
        door_table(&cases, &lines);
    }
    if let Some(path) = arg("--gpu-peers") {
        gpu_table(&path, &cases, &lines);
    }
    if let Some(path) = arg("--peers") {
        let (peers, floor) = read_peers(&path);
        println!(
            "\n| case | impl | median ms | min-max ms | peak RSS extra MB | vs JAX jit | vs torch.compile | vs torch eager |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        let peer = |case: &str, imp: &str| {
            peers
                .iter()
                .find(|(c, i, _)| c == case && i == imp)
                .map(|p| p.2)
        };
        for case in &cases {
            for (_, imp, m) in peers.iter().filter(|(c, _, _)| c == case) {
                println!("| {case} | {imp} (peer) | {m:.3} | | | | | |");
            }
            for l in lines
                .iter()
                .filter(|l| field(l, "case").as_deref() == Some(case))
            {
                let med: f64 = field(l, "median_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                let ratio =
                    |p: Option<f64>| p.map_or("–".to_string(), |p| format!("{:.1}×", p / med));
                println!(
                    "| {case} | {} | {med:.3} | {}-{} | {} | {} | {} | {} |",
                    field(l, "impl").unwrap_or_default(),
                    field(l, "min_ms").unwrap_or_default(),
                    field(l, "max_ms").unwrap_or_default(),
                    field(l, "peak_rss_extra_mb").unwrap_or_default(),
                    ratio(peer(case, "jax")),
                    ratio(peer(case, "compile")),
                    ratio(peer(case, "eager")),
                );
            }
        }
        if let Some(f) = floor {
            println!(
                "\nmemory-bandwidth floor for kd_ce_4096x32000 (from the peers' file): {f:.1} ms"
            );
        }
    }
}
