//! Fused vs composed, forward + backward (+ device sync inside the timed region), for every loss
//! family on the shapes of the performance issue, on flex, ndarray and wgpu (with autodiff).
//!
//! ```text
//! cargo bench --bench fused                               # small shapes, all backends
//! KD_BENCH_LARGE=1 cargo bench --bench fused -- 4096x32000  # + [4096, 32000] (slow: seconds/iter)
//! KD_BENCH_BACKENDS=flex cargo bench --bench fused          # one backend
//! ```
//!
//! Groups are `family/shape`, functions `backend-path` (`flex-fused`, `flex-composed`,
//! `ndarray-composed`, `wgpu-fused`, `wgpu-composed`). wgpu without a GPU runs on
//! Mesa's software renderer: it is timed on the small shapes only unless `KD_BENCH_LARGE=1`.
//! `examples/compare_peers.rs` times the same steps against PyTorch and JAX.

#[path = "support/steps.rs"]
mod steps;

use criterion::{Criterion, criterion_group, criterion_main};
use steps::{device_for, make_step};

fn bench(c: &mut Criterion) {
    eprintln!("kd-losses benches built with {}", steps::BURN_FEATURES);
    let large = std::env::var("KD_BENCH_LARGE").is_ok_and(|v| v == "1");
    let backends =
        std::env::var("KD_BENCH_BACKENDS").unwrap_or_else(|_| "flex,ndarray,wgpu".into());
    let backends: Vec<&str> = backends.split(',').collect();
    let mut cases: Vec<(String, Vec<usize>, bool)> = Vec::new();
    for family in ["kd_ce", "soft_kl", "reverse_kl"] {
        for (r, v) in [(64usize, 1000usize), (256, 1000), (4096, 32000)] {
            cases.push((format!("{family}/{r}x{v}"), vec![r, v], r * v > 1 << 20));
        }
    }
    cases.push((
        "hidden_mse/8x128_312to768".into(),
        vec![8, 128, 312, 768],
        false,
    ));
    cases.push(("attn_mse/8x12x128x128".into(), vec![8, 12, 128, 128], false));
    for (name, shape, is_large) in cases {
        if is_large && !large {
            continue;
        }
        let mut group = c.benchmark_group(&name);
        group.sample_size(if is_large { 10 } else { 30 });
        let logits = !name.starts_with("hidden") && !name.starts_with("attn");
        for backend in &backends {
            // The logit kernels run on flex (CPU) and wgpu (CubeCL), the squared-error kernel on
            // flex; ndarray has the composed path.
            let fused = *backend == "flex" || (logits && *backend == "wgpu");
            let paths: &[&str] = if fused {
                &["fused", "composed"]
            } else {
                &["composed"]
            };
            for path in paths {
                let imp = format!("{backend}-{path}");
                let dev = device_for(&imp);
                let case = name.replace('/', "_");
                let mut step = make_step(&case, &shape, &imp, &dev);
                group.bench_function(&imp, |b| b.iter(&mut step));
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
