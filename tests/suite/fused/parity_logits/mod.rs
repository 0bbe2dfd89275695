//! Parity of the fused kernels (`kd_losses::fused`) with the composed reference path: values and
//! student gradients for every reduction, masks (ignore index, fully masked), `-inf` logits,
//! ±1e4, several temperatures, label smoothing, `[B, S, V]` logits, reverse KL, and the three
//! backward routes (gradient kept from the forward pass, scaled, recomputed for the terms).
//!
//! On backends without a fused kernel the same calls must fall back to the composed path (checked
//! too). `KD_FUSED=0` is not used here: both paths are called explicitly.
//!
//! * `distillation`: `distillation_loss` (soft + hard) on a grid of options, edge cases, the
//!   backward routes, untracked calls and NaN.
//! * `soft`: `divergence::soft_loss` against the composed divergences.
//! * `random`: random shapes and inputs (proptest; its regression seeds are in
//!   `random.proptest-regressions`), more than 65 535 rows, and the cases the property found.

mod distillation;
mod random;
mod soft;

use crate::common::*;
use burn::tensor::{Device, Int, Tensor};
use kd_losses::fused::fused_available;
use kd_losses::*;

/// `|a − b| ≤ rtol · max(1, |b|)` for values; non-finite values must match exactly.
fn close_values(what: &str, a: f32, b: f32, rtol: f32, floor: f32) {
    if !b.is_finite() || !a.is_finite() {
        assert!(
            a == b || (a.is_nan() && b.is_nan()),
            "{what}: fused {a} vs composed {b}"
        );
        return;
    }
    assert!(
        (a - b).abs() <= rtol * b.abs().max(1.0) + floor,
        "{what}: fused {a} vs composed {b} (floor {floor})"
    );
}

/// A few f32 ulps of the log-probability terms a divergence sums: `Σ p (log p − log q)` is a
/// small difference of terms of size `ln V + range/T` (the log-normalisers), so any f32
/// evaluation, the composed one included, is only that close (times `f = T²` and the total row
/// weight `w_sum`). At `T = 5.8`, `V = 56` the composed path itself is 4.6e-5 off the f64 value.
fn value_floor(f: f64, w_sum: f64, v: usize, range: f64, t: f64) -> f32 {
    (4.0 * f64::from(f32::EPSILON) * f * w_sum * ((v.max(1) as f64).ln() + 2.0 * range / t + 1.0))
        as f32
}

/// Largest finite |logit|.
fn logit_range(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .chain(b)
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, &x| m.max(f64::from(x).abs()))
}

/// `Σ_r w_r` of `red` over `kept` labelled rows (`batch` leading, `v` classes).
fn row_weight_sum(red: Reduction, kept: usize, batch: usize, v: usize) -> f64 {
    let k = kept as f64;
    match red {
        Reduction::Sum => k,
        Reduction::RowMean => (kept > 0) as u8 as f64,
        Reduction::BatchMean => k / batch.max(1) as f64,
        Reduction::ElementMean => (kept > 0) as u8 as f64 / v.max(1) as f64,
        Reduction::Normalizer(n) => k / n.get(),
        _ => k,
    }
}

/// Gradients: `|a − b| ≤ rtol · max|b| + floor` elementwise. `floor` is a few f32 ulps of the
/// largest gradient *term* (see [`grad_floor`]): where the gradient is a small difference of
/// O(w) quantities (`q − p` with both near 1), no f32 evaluation is closer than that, the
/// composed path included.
fn close_grads(what: &str, a: &[f32], b: &[f32], rtol: f32, floor: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rtol * scale + floor + 1e-9,
            "{what}[{i}]: fused {x} vs composed {y} (max |grad| {scale}, floor {floor})"
        );
    }
}

/// 8 ulps of the largest term of `∂/∂s = w (α f (q − p)/T + (1 − α)(q₁ − onehot))`, with the
/// largest row weight `w_max` of the reduction.
fn grad_floor(cfg: &DistillationLoss, w_max: f64) -> f32 {
    let t = cfg.temperature;
    let f = if cfg.t2_scaling { t * t } else { 1.0 };
    let term = w_max * (cfg.alpha * f / t + (1.0 - cfg.alpha));
    (8.0 * f64::from(f32::EPSILON) * term) as f32
}

/// The largest row weight of `red` over `rows` rows (`kept` of them labelled, `batch` leading) of
/// `v` classes.
fn max_row_weight(red: Reduction, kept: usize, batch: usize, v: usize) -> f64 {
    let kept = kept.max(1) as f64;
    match red {
        Reduction::Sum => 1.0,
        Reduction::RowMean => 1.0 / kept,
        Reduction::BatchMean => 1.0 / batch.max(1) as f64,
        Reduction::ElementMean => 1.0 / (kept * v as f64),
        Reduction::Normalizer(n) => 1.0 / n.get(),
        _ => 1.0,
    }
}

struct Kd<'a> {
    s: &'a [f32],
    t: &'a [f32],
    y: &'a [i64],
    lead: Vec<usize>,
    v: usize,
}

/// Runs `distillation_loss` (fused where available) and `distillation_loss_composed` with fresh
/// leaves and compares total, soft, hard and the student gradient of `total`.
fn check_kd(what: &str, dev: &Device, kd: &Kd, cfg: &DistillationLoss, red: Reduction) -> usize {
    let run = |fused: bool| -> (Vec<f32>, Vec<f32>) {
        let (s, t, y): (Tensor<3>, Tensor<3>, Tensor<2, Int>) = {
            let (b, sq) = match kd.lead.as_slice() {
                [n] => (1, *n),
                [b, s] => (*b, *s),
                other => panic!("lead {other:?}"),
            };
            (
                floats(kd.s.to_vec(), [b, sq, kd.v], dev).require_grad(),
                floats(kd.t.to_vec(), [b, sq, kd.v], dev),
                ints(kd.y.to_vec(), [b, sq], dev),
            )
        };
        let out = if fused {
            distillation_loss(s.clone(), t, y, cfg, red)
        } else {
            distillation_loss_composed(s.clone(), t, y, cfg, red)
        };
        let vals = vec![
            scalar(out.total.clone()) as f32,
            scalar(out.soft) as f32,
            scalar(out.hard) as f32,
        ];
        let grads = out.total.backward();
        (vals, to_vec(s.grad(&grads).expect("student gradient")))
    };
    let (va, ga) = run(true);
    let (vb, gb) = run(false);
    if std::env::var("KD_PARITY_PRINT").is_ok() {
        eprintln!("{what}: fused {va:?} composed {vb:?}");
    }
    let kept = kd.y.iter().filter(|&&y| y != -100).count();
    let batch = if kd.lead.len() == 1 { 1 } else { kd.lead[0] };
    let (w_sum, range, t) = (
        row_weight_sum(red, kept, batch, kd.v),
        logit_range(kd.s, kd.t),
        cfg.temperature,
    );
    let f = if cfg.t2_scaling { t * t } else { 1.0 };
    let soft_floor = value_floor(f, w_sum, kd.v, range, t);
    let hard_floor = value_floor(1.0, w_sum, kd.v, range, 1.0);
    let total_floor = cfg.alpha as f32 * soft_floor + (1.0 - cfg.alpha as f32) * hard_floor;
    for (i, (name, floor)) in [
        ("total", total_floor),
        ("soft", soft_floor),
        ("hard", hard_floor),
    ]
    .into_iter()
    .enumerate()
    {
        close_values(&format!("{what} {name}"), va[i], vb[i], 2e-5, floor);
    }
    if vb[0].is_finite() {
        let floor = grad_floor(cfg, max_row_weight(red, kept, batch, kd.v));
        close_grads(&format!("{what} grad"), &ga, &gb, 2e-5, floor);
    }
    4
}

fn cfg(t: f64, alpha: f64, smoothing: f64, t2: bool) -> DistillationLoss {
    DistillationLossConfig::new()
        .with_temperature(t)
        .with_alpha(alpha)
        .with_label_smoothing(smoothing)
        .with_t2_scaling(t2)
        .init()
}
