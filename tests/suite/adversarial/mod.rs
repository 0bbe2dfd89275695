//! Hostile input: one answer on every path (fused and composed, called explicitly), every
//! backend of `KD_BACKENDS`, every float dtype, every masked row. One test (or group) per item of
//! the issue "Correctness under hostile input"; items 2 and 5 (fused backward, fused dtype
//! routing) are in `crate::fused::adversarial`.
//!
//! * `non_finite`: items 1, 3, 11 and 12 (all `-inf` teacher rows, NaN / ±inf in masked rows,
//!   `+inf` logits as point masses, denormal logits).
//! * `dtypes`: item 4 (every reduction in every float dtype, mixed dtypes).
//! * `extremes`: items 6, 7, 8 and 10 (empty sequence dimension, large temperatures, logits near
//!   `f32::MAX`, empty vocabulary).
//! * `validation`: item 9 (struct literals that bypass the config's validation).
//! * `props`: fused and composed agree on random hostile input (proptest).

mod dtypes;
mod extremes;
mod non_finite;
mod props;
mod validation;

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{Divergence, DivergenceLossConfig};
use kd_losses::*;

const NEG: f32 = f32::NEG_INFINITY;

fn grad_of<const D: usize>(loss: Tensor<1>, x: &Tensor<D>) -> Vec<f32> {
    let grads = loss.backward();
    x.grad(&grads)
        .map(|g| g.try_into_vec_as::<f32>().unwrap())
        .unwrap_or_default()
}

fn assert_all_zero(what: &str, g: &[f32]) {
    assert!(
        g.iter().all(|&x| x == 0.0),
        "{what}: expected an exact zero gradient, got {g:?}"
    );
}

fn assert_finite(what: &str, g: &[f32]) {
    assert!(
        g.iter().all(|x| x.is_finite()),
        "{what}: non-finite gradient {g:?}"
    );
}

fn kd(t: f64, alpha: f64) -> DistillationLoss {
    DistillationLossConfig::new()
        .with_temperature(t)
        .with_alpha(alpha)
        .init()
}

fn fkl(t: f64) -> kd_losses::divergence::DivergenceLoss {
    DivergenceLossConfig::new(Divergence::ForwardKl)
        .with_temperature(t)
        .with_t2_scaling(true)
        .init()
}

/// The soft loss on the fused route (`SoftKlLoss::forward`, fused where it runs) and the
/// composed one (`soft_kl(..).reduce_composed`), value and student gradient.
fn soft_both(
    s: &[f32],
    t: &[f32],
    shape: [usize; 2],
    temp: f64,
    red: Reduction,
    device: &Device,
) -> [(f32, Vec<f32>); 3] {
    let run = |which: usize| {
        let x = floats(s.to_vec(), shape, device).require_grad();
        let y = floats(t.to_vec(), shape, device);
        let loss = match which {
            0 => SoftKlLossConfig::new()
                .with_temperature(temp)
                .init()
                .forward(x.clone(), y, red),
            1 => fkl(temp).forward(x.clone(), y, red),
            _ => soft_kl(x.clone(), y, Temperature::new(temp).unwrap(), T2Scaling::On)
                .reduce_composed(red),
        };
        let v = scalar(loss.clone()) as f32;
        (v, grad_of(loss, &x))
    };
    [run(0), run(1), run(2)]
}
