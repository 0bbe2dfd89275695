//! The fused linear-head loss (`fused_linear`) against the materialized path (both logits formed
//! with a matmul, then `distillation_loss`), forward + backward, on Flex with autodiff.
//!
//! ```text
//! cargo bench --all-features --bench fused_linear                       # 1024x256x8000
//! KD_BENCH_SHAPE=8192x1024x32000 cargo bench --all-features --bench fused_linear
//! ```
//!
//! The peak memory of both paths is what `compare_peers` prints (`peak_rss_extra_mb`, one
//! process per implementation): `cargo run --release --all-features --example compare_peers --
//! --cases fused_linear_8192x1024x32000`.

use std::hint::black_box;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/steps.rs"]
#[allow(dead_code)]
mod steps;

fn shape() -> Vec<usize> {
    let s = std::env::var("KD_BENCH_SHAPE").unwrap_or_else(|_| "1024x256x8000".into());
    let v: Vec<usize> = s.split('x').filter_map(|x| x.parse().ok()).collect();
    assert!(
        v.len() == 3,
        "KD_BENCH_SHAPE must look like NxHxV, got {s:?}"
    );
    v
}

fn bench(c: &mut Criterion) {
    let shape = shape();
    let device = Device::flex().autodiff();
    let id = format!("{}x{}x{}", shape[0], shape[1], shape[2]);
    println!("built with {}", steps::BURN_FEATURES);
    let mut group = c.benchmark_group("fused_linear_forward_backward");
    group.sample_size(10);
    group.throughput(Throughput::Elements((shape[0] * shape[2]) as u64));
    for imp in ["flex-fused-linear", "flex-materialized"] {
        let mut step = steps::make_step(&format!("fused_linear_{id}"), &shape, imp, &device);
        group.bench_with_input(BenchmarkId::new(imp, &id), &(), |b, _| {
            b.iter(|| black_box(step()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
