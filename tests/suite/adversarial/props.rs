//! Property: the fused route (`distillation_loss`, `SoftKlLoss::forward_masked`) and the composed
//! one (`distillation_loss_composed`, `soft_kl(..).masked(..).reduce_composed(..)`) give the same value and
//! student gradient on hostile random input: masked rows full of NaN / ±inf, all `-inf` teacher
//! rows, temperatures in `[0.05, 1e3]`, every float dtype the backend stores.

use crate::common::strategies::HOSTILE_T_RANGE;
use crate::common::*;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use proptest::prelude::*;

use kd_losses::*;

fn typed(data: Vec<f32>, shape: [usize; 2], dtype: FloatDType, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(data, shape), (device, DType::from(dtype)))
}

/// Value and student gradient of the soft and combined losses, fused route or composed.
#[allow(clippy::too_many_arguments)]
fn run(
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    shape: [usize; 2],
    temp: f64,
    dtype: FloatDType,
    fused: bool,
    device: &Device,
) -> Vec<(f64, Vec<f32>)> {
    let cfg = DistillationLossConfig::new()
        .with_temperature(temp)
        .with_alpha(0.7)
        .init();
    let y = ints(labels.to_vec(), [shape[0]], device);
    let mask = RowMask::from_labels(y.clone(), -100);
    let mut out = Vec::new();
    for which in 0..2 {
        let x = typed(s.to_vec(), shape, dtype, device).require_grad();
        let te = typed(t.to_vec(), shape, dtype, device);
        let loss = match (which, fused) {
            (0, true) => {
                distillation_loss(x.clone(), te, y.clone(), &cfg, Reduction::RowMean).total
            }
            (0, false) => {
                distillation_loss_composed(x.clone(), te, y.clone(), &cfg, Reduction::RowMean).total
            }
            (_, true) => SoftKlLossConfig::new()
                .with_temperature(temp)
                .init()
                .forward_masked(x.clone(), te, &mask, Reduction::Sum),
            (_, false) => soft_kl(
                x.clone(),
                te,
                Temperature::new(temp).unwrap(),
                T2Scaling::On,
            )
            .masked(&mask)
            .reduce_composed(Reduction::Sum),
        };
        let v = scalar(loss.clone());
        let grads = loss.backward();
        let g = x
            .grad(&grads)
            .map(|g| g.try_into_vec_as::<f32>().unwrap())
            .unwrap();
        out.push((v, g));
    }
    out
}

proptest! {
    // Failing seeds are kept (and replayed) in `props.proptest-regressions` next to this file.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: regressions_beside_source(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn fused_and_composed_agree_on_hostile_input(
        (r, v, mut s, mut t) in strategies::logit_pair(strategies::LOGIT_RANGE),
        temp in HOSTILE_T_RANGE,
        poison in 0usize..4,
        dtype_ix in 0usize..4,
        seed in 0u64..1000,
    ) {
        // Row 0 is kept; the others alternate: masked and poisoned, or kept with an all -inf
        // teacher row.
        let mut labels: Vec<i64> = (0..r as i64).map(|i| (i + seed as i64) % v as i64).collect();
        for (row, label) in labels.iter_mut().enumerate().skip(1) {
            let (a, b) = (row * v, (row + 1) * v);
            if row % 2 == 1 {
                *label = -100;
                s[a + poison % v] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN][poison];
                t[a + (poison + 1) % v] = [f32::INFINITY, f32::NAN, f32::NAN, f32::NEG_INFINITY][poison];
            } else {
                t[a..b].fill(f32::NEG_INFINITY);
            }
        }
        for (name, device) in devices() {
            let dtypes: &[FloatDType] = match name {
                "flex" => &[FloatDType::F32, FloatDType::F64, FloatDType::BF16, FloatDType::F16],
                "ndarray" => &[FloatDType::F32, FloatDType::F64],
                // WGSL has no f64 and no bf16.
                _ => &[FloatDType::F32, FloatDType::F16],
            };
            let dtype = dtypes[dtype_ix % dtypes.len()];
            let a = run(&s, &t, &labels, [r, v], temp, dtype, true, &device);
            let b = run(&s, &t, &labels, [r, v], temp, dtype, false, &device);
            for (k, ((va, ga), (vb, gb))) in a.iter().zip(&b).enumerate() {
                prop_assert!(va.is_finite() && vb.is_finite(), "{} #{}: {} vs {}", name, k, va, vb);
                // Values: relative to the larger of the value and T² times a few f32 ulps.
                let tol = 1e-4 * vb.abs().max(1.0) + 1e-6 * temp * temp;
                prop_assert!((va - vb).abs() <= tol, "{} {:?} T={} #{}: fused {} vs composed {}", name, dtype, temp, k, va, vb);
                let scale = gb.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                // Gradients stored in f16/bf16: both paths round an f32 gradient to the
                // student's dtype, so they may differ by one unit in the last place there.
                let ulp = match dtype {
                    FloatDType::F16 => 2f32.powi(-10),
                    FloatDType::BF16 => 2f32.powi(-7),
                    _ => 0.0,
                };
                for (i, (x, y)) in ga.iter().zip(gb).enumerate() {
                    prop_assert!(x.is_finite() && y.is_finite(), "{} #{} grad[{}]: {} vs {}", name, k, i, x, y);
                    prop_assert!((x - y).abs() <= (1e-4 + ulp) * scale.max(1e-3) + 1e-6 * temp as f32,
                        "{} {:?} T={} #{} grad[{}]: fused {} vs composed {}", name, dtype, temp, k, i, x, y);
                }
                for row in (1..r).step_by(2) {
                    prop_assert!(ga[row * v..(row + 1) * v].iter().all(|&x| x == 0.0), "{} masked row {}", name, row);
                    prop_assert!(gb[row * v..(row + 1) * v].iter().all(|&x| x == 0.0), "{} masked row {}", name, row);
                }
            }
        }
    }
}
