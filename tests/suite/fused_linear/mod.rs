//! The fused linear-head loss (`fused_linear`) against the materialized path: the logits formed
//! in full (`h·W + b`), the crate's composed divergence and cross-entropy on them, and Burn's
//! autodiff through the matmuls. Value and every gradient (hidden states, head weight, bias), for
//! every divergence, with ignored and masked rows, uneven chunks, a teacher head of another
//! hidden size or precomputed teacher logits, on every backend.
//!
//! `kd_losses::fused_linear` (feature `chunked`). `parity`: value and gradients against the
//! materialized path; `head`: a top-k teacher, soft caps, a frozen head and a low-rank adapter
//! against the materialized path; `api`: typed configuration errors and pinned panics.

mod api;
mod head;
mod parity;

use std::sync::LazyLock;

use crate::common::*;
use burn::tensor::{Bool, Device, Int, Tensor};
use kd_losses::divergence::{Divergence, JsdConvention, divergence};
use kd_losses::fused_linear::{
    FusedLinearKdLoss, FusedLinearKdLossConfig, LinearHead, LinearTeacher,
    fused_linear_distillation,
};
use kd_losses::*;

static DEVICES: LazyLock<Vec<(&'static str, Device)>> = LazyLock::new(devices);

const N: usize = 7;

const H: usize = 4;

const HT: usize = 5;

const V: usize = 11;

/// Relative to the largest magnitude of the reference tensor.
const RTOL: f64 = 1e-5;

/// Deterministic values in `[-scale, scale]`.
fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Inputs {
    h: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    ht: Vec<f32>,
    wt: Vec<f32>,
    labels: Vec<i64>,
    mask: Vec<bool>,
}

fn inputs(seed: u64) -> Inputs {
    Inputs {
        h: values(N * H, seed, 1.5),
        w: values(H * V, seed + 1, 1.0),
        b: values(V, seed + 2, 0.5),
        ht: values(N * HT, seed + 3, 1.5),
        wt: values(HT * V, seed + 4, 1.2),
        labels: vec![3, -100, 0, 10, 5, -100, 7],
        mask: vec![true, true, false, true, true, true, true],
    }
}

struct Grads {
    value: f64,
    h: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
}

fn leaves(x: &Inputs, dev: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1>) {
    (
        floats(x.h.clone(), [N, H], dev).require_grad(),
        floats(x.w.clone(), [H, V], dev).require_grad(),
        floats(x.b.clone(), [V], dev).require_grad(),
    )
}

fn collect(total: Tensor<1>, h: &Tensor<2>, w: &Tensor<2>, b: &Tensor<1>) -> Grads {
    let value = scalar(total.clone());
    let grads = total.backward();
    Grads {
        value,
        h: to_vec(h.grad(&grads).expect("h has a gradient")),
        w: to_vec(w.grad(&grads).expect("w has a gradient")),
        b: to_vec(b.grad(&grads).expect("b has a gradient")),
    }
}

/// The materialized path: full logits, composed losses, autodiff through the matmuls.
/// The loss `loss` computes, composed on materialized student and teacher logits `z`, `zt`
/// (any float dtype): the divergence and the cross-entropy over the rows whose label is not
/// `-100`, row mean, mixed with `α`.
pub(super) fn composed_loss(
    loss: &FusedLinearKdLoss,
    z: Tensor<2>,
    zt: Tensor<2>,
    labels: Tensor<1, Int>,
) -> Tensor<1> {
    let cfg = &loss.config;
    let options = CrossEntropyOptions {
        ignore_index: Some(-100),
        label_smoothing: cfg.label_smoothing,
        class_weights: None,
    };
    let hard = cross_entropy(z.clone(), labels.clone(), &options).reduce(Reduction::RowMean);
    let scaling = if cfg.t2_scaling {
        T2Scaling::On
    } else {
        T2Scaling::Off
    };
    let temperature = Temperature::new(cfg.temperature).unwrap();
    let soft = divergence(z, zt, loss.divergence, temperature, scaling)
        .masked(&RowMask::from_labels(labels, -100))
        .reduce(Reduction::RowMean);
    soft.mul_scalar(cfg.alpha)
        .add(hard.mul_scalar(1.0 - cfg.alpha))
}

fn materialized(
    x: &Inputs,
    dev: &Device,
    loss: &FusedLinearKdLoss,
    with_mask: bool,
    teacher_logits: bool,
) -> Grads {
    let (h, w, b) = leaves(x, dev);
    let z = h.clone().matmul(w.clone()).add(b.clone().unsqueeze_dim(0));
    // The teacher's logits in full (the fused side takes them as a head or as logits).
    let _ = teacher_logits;
    let zt = floats(x.ht.clone(), [N, HT], dev).matmul(floats(x.wt.clone(), [HT, V], dev));
    let mut labels = x.labels.clone();
    if with_mask {
        for (l, m) in labels.iter_mut().zip(&x.mask) {
            if !m {
                *l = -100;
            }
        }
    }
    let labels_t: Tensor<1, Int> = ints(labels.clone(), [N], dev);
    let total = composed_loss(loss, z, zt, labels_t);
    collect(total, &h, &w, &b)
}

fn fused(
    x: &Inputs,
    dev: &Device,
    loss: &FusedLinearKdLoss,
    with_mask: bool,
    teacher_logits: bool,
) -> Grads {
    let (h, w, b) = leaves(x, dev);
    let ht = floats(x.ht.clone(), [N, HT], dev);
    let wt = floats(x.wt.clone(), [HT, V], dev);
    let teacher = if teacher_logits {
        LinearTeacher::Logits(ht.matmul(wt))
    } else {
        LinearTeacher::Head {
            hidden: ht,
            head: LinearHead::new(wt),
        }
    };
    let head = LinearHead::new(w.clone()).with_bias(b.clone());
    let labels: Tensor<1, Int> = ints(x.labels.clone(), [N], dev);
    let mask: Option<Tensor<1, Bool>> = with_mask.then(|| bools(x.mask.clone(), [N], dev));
    let out = fused_linear_distillation(
        h.clone(),
        &head,
        teacher,
        labels,
        mask,
        loss,
        Reduction::RowMean,
    );
    collect(out.total, &h, &w, &b)
}

fn assert_rel(what: &str, got: &[f32], expected: &[f32]) {
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max((*v as f64).abs()))
        .max(1e-6);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            ((*g as f64) - (*e as f64)).abs() <= RTOL * scale,
            "{what}[{i}]: fused {g} vs materialized {e} (scale {scale})"
        );
    }
}

fn compare(what: &str, a: &Grads, b: &Grads) {
    assert!(
        (a.value - b.value).abs() <= RTOL * b.value.abs().max(1e-6),
        "{what}: value {} vs {}",
        a.value,
        b.value
    );
    assert_rel(&format!("{what}: grad h"), &a.h, &b.h);
    assert_rel(&format!("{what}: grad W"), &a.w, &b.w);
    assert_rel(&format!("{what}: grad b"), &a.b, &b.b);
}

const KINDS: [Divergence; 8] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::GeneralizedJsd {
        beta: 0.4,
        convention: JsdConvention::Trl,
    },
    Divergence::GeneralizedJsd {
        beta: 0.4,
        convention: JsdConvention::Continuous,
    },
    Divergence::SkewKl { alpha: 0.2 },
    Divergence::SkewReverseKl { alpha: 0.2 },
    Divergence::TotalVariation,
    Divergence::SymmetricKl,
];
