//! Chunked vs unchunked divergence, forward + backward, on Burn's CPU backend (`flex`) with
//! autodiff.
//!
//! The issue asks for `[8192, 128000]` f32 (4 GB per logits tensor). The shape and chunk size
//! are configurable, defaulting to something a small machine runs:
//!
//! ```text
//! KD_BENCH_SHAPE=8192x128000 KD_BENCH_CHUNK=512 cargo bench --bench chunked
//! KD_BENCH_SHAPE=1024x32000 cargo bench --bench chunked -- --quick   # default shape
//! ```
//!
//! Besides criterion's timings, each variant runs once outside the timed loop with the
//! process's peak resident set reset (`/proc/self/clear_refs` ← 5) and prints the peak
//! increase over the resident set before the run (Linux only), so inputs already allocated do
//! not count.

use std::hint::black_box;

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kd_losses::chunked::chunked_divergence;
use kd_losses::divergence::{Divergence, divergence};
use kd_losses::*;

fn shape() -> (usize, usize) {
    let s = std::env::var("KD_BENCH_SHAPE").unwrap_or_else(|_| "1024x32000".into());
    let (r, v) = s
        .split_once('x')
        .unwrap_or_else(|| panic!("KD_BENCH_SHAPE must look like 1024x32000, got {s:?}"));
    (r.parse().expect("rows"), v.parse().expect("vocabulary"))
}

fn chunk() -> usize {
    std::env::var("KD_BENCH_CHUNK")
        .ok()
        .map(|c| c.parse().expect("KD_BENCH_CHUNK"))
        .unwrap_or(128)
}

/// Deterministic pseudo-random logits in [-8, 8).
fn logits(r: usize, v: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut state = seed | 1;
    let data: Vec<f32> = (0..r * v)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [r, v]), device)
}

/// One forward + backward; returns the loss and a gradient checksum (forces the work).
fn step(s: &Tensor<2>, t: &Tensor<2>, chunk: Option<usize>) -> (f32, f32) {
    let x = s.clone().detach().require_grad();
    let d = Divergence::ReverseKl;
    let rows = match chunk {
        Some(c) => chunked_divergence(x.clone(), t.clone(), d, Temperature::ONE, T2Scaling::Off, c),
        None => divergence(x.clone(), t.clone(), d, Temperature::ONE, T2Scaling::Off),
    };
    let loss = rows.reduce(Reduction::RowMean);
    let value = loss.clone().into_scalar::<f32>();
    let g = x.grad(&loss.backward()).expect("gradient");
    (value, g.sum().into_scalar::<f32>())
}

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Peak RSS increase of one step, in MiB (None off Linux).
fn peak_mib(s: &Tensor<2>, t: &Tensor<2>, chunk: Option<usize>) -> Option<f64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status_kib("VmRSS:")?;
    black_box(step(s, t, chunk));
    let peak = status_kib("VmHWM:")?;
    Some(peak.saturating_sub(before) as f64 / 1024.0)
}

fn bench(c: &mut Criterion) {
    let (r, v) = shape();
    let ch = chunk();
    let device = Device::flex().autodiff();
    let s = logits(r, v, 1, &device);
    let t = logits(r, v, 2, &device);

    let (a, ga) = step(&s, &t, None);
    let (b, gb) = step(&s, &t, Some(ch));
    println!("shape [{r}, {v}], chunk {ch}: loss unchunked {a}, chunked {b}; grad sums {ga}, {gb}");
    for (name, chunk) in [("unchunked", None), ("chunked", Some(ch))] {
        match peak_mib(&s, &t, chunk) {
            Some(m) => println!(
                "peak extra memory {name:>9} [{r}x{v}]: {m:.0} MiB (logits tensor: {:.0} MiB)",
                (r * v * 4) as f64 / (1 << 20) as f64
            ),
            None => println!("peak memory not available on this platform"),
        }
    }

    let mut group = c.benchmark_group("reverse_kl_forward_backward");
    group.sample_size(10);
    group.throughput(Throughput::Elements((r * v) as u64));
    let id = format!("{r}x{v}");
    group.bench_with_input(BenchmarkId::new("unchunked", &id), &(), |bch, _| {
        bch.iter(|| black_box(step(&s, &t, None)))
    });
    group.bench_with_input(
        BenchmarkId::new(format!("chunked_{ch}"), &id),
        &(),
        |bch, _| bch.iter(|| black_box(step(&s, &t, Some(ch)))),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
