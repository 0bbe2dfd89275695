//! Precision of every divergence in `f32` against a float64 evaluation of the same inputs, at
//! realistic language-model shapes (`[2, 32, 5000]` and a 128 000-entry vocabulary, `T = 1`):
//! value and gradient within [`PRECISION_RTOL`] relative on every backend, through the fused
//! path where it runs (`soft_loss`) and through the composed rows (`divergence(..).reduce`).
//!
//! The gradient's error is measured as `max_i |g_i − g64_i| / max_i |g64_i|`, the value's as
//! `|v − v64| / |v64|`. The float64 reference is the composed path on Flex in `f64`.

use crate::common::*;
use burn::tensor::{DType, Device, Tensor, TensorData};
use kd_losses::divergence::{divergence, soft_loss};
use kd_losses::*;

/// The precision the crate promises for every divergence at `V ≤ 128 000` (docs/conventions.md).
const PRECISION_RTOL: f64 = 5e-5;

fn divergences() -> Vec<(String, Divergence)> {
    // Every divergence, and the generalized JSD at β = 0.9, where the student's weight in TRL's
    // convention is 0.1 (the weak side of the mixture).
    let mut all = every_divergence();
    all.push(Divergence::generalized_jsd(0.9, JsdConvention::Trl).unwrap());
    all.into_iter().map(|d| (format!("{d:?}"), d)).collect()
}

/// Student logits of spread ~4 and a teacher that agrees with them only in part, as a student
/// and a teacher language model do.
fn inputs(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let s = lcg(n, seed, 4.0);
    let noise = lcg(n, seed + 1, 2.0);
    let t = s.iter().zip(&noise).map(|(a, b)| 0.8 * a + b).collect();
    (s, t)
}

/// Value and student gradient of `loss(student, teacher)` in `dtype` on `device`, as f64.
fn eval<const D: usize>(
    (s, t): (&[f32], &[f32]),
    shape: [usize; D],
    device: &Device,
    dtype: DType,
    loss: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<1>,
) -> (f64, Vec<f64>) {
    let make =
        |x: &[f32]| Tensor::<D>::from_data(TensorData::new(x.to_vec(), shape), (device, dtype));
    let student = make(s).require_grad();
    let value = loss(student.clone(), make(t));
    let grads = value.backward();
    let g = student.grad(&grads).expect("student gradient");
    let v = value.try_into_vec_as::<f64>().unwrap()[0];
    (v, g.try_into_vec_as::<f64>().unwrap())
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    if scale == 0.0 { err } else { err / scale }
}

/// The largest elementwise relative error over the entries that carry at least 1e-3 of the
/// largest gradient (reported, not asserted: tiny entries are differences of nearly equal
/// probabilities and carry f32's absolute error, not a relative one).
fn elementwise_rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .filter(|(_, b)| b.abs() >= 1e-3 * scale)
        .fold(0.0f64, |m, (a, b)| m.max(((a - b) / b).abs()))
}

fn check<const D: usize>(shape: [usize; D], seed: u64) {
    let n: usize = shape.iter().product();
    let (s, t) = inputs(n, seed);
    let reference = Device::flex().autodiff();
    let temp = Temperature::ONE;
    for (name, device) in devices() {
        let mut checks = 0;
        for (dname, d) in divergences() {
            let fused = |x: Tensor<D>, y: Tensor<D>| {
                soft_loss(x, y, d, temp, T2Scaling::Off, None, Reduction::RowMean)
            };
            let composed = |x: Tensor<D>, y: Tensor<D>| {
                divergence(x, y, d, temp, T2Scaling::Off).reduce_composed(Reduction::RowMean)
            };
            let (v64, g64) = eval((&s, &t), shape, &reference, DType::F64, composed);
            for (path, f32_result) in [
                ("fused", eval((&s, &t), shape, &device, DType::F32, fused)),
                (
                    "composed",
                    eval((&s, &t), shape, &device, DType::F32, composed),
                ),
            ] {
                let (v, g) = f32_result;
                // A divergence that is 0 at these inputs (skew KL at α = 1): absolute error.
                let ev = if v64 == 0.0 {
                    v.abs()
                } else {
                    ((v - v64) / v64).abs()
                };
                let eg = rel_err(&g, &g64);
                let ee = elementwise_rel_err(&g, &g64);
                println!(
                    "precision {shape:?} {name} {path} {dname}: value {ev:.2e}, gradient {eg:.2e} \
                     (elementwise {ee:.2e})"
                );
                assert!(
                    ev <= PRECISION_RTOL && eg <= PRECISION_RTOL,
                    "{shape:?} {name} {path} {dname}: value error {ev:.2e}, gradient error \
                     {eg:.2e} (limit {PRECISION_RTOL:e})"
                );
                checks += 1;
            }
        }
        report("precision", name, checks);
    }
}

#[test]
fn every_divergence_within_5e_5_at_2x32x5000() {
    check([2, 32, 5000], 7);
}

#[test]
fn every_divergence_within_5e_5_at_vocab_128000() {
    check([2, 128_000], 11);
}
