//! `kd_losses::temperature`: validation of the temperature, the per-row temperature's shape, and
//! the temperature softmax on a fully padded (all `-inf`) row.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{Divergence, divergence};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn m2(rows: &[[f32; 4]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    floats(data, [rows.len(), 4], &dev())
}

#[test]
fn temperature_rejects_non_positive_and_nan() {
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = Temperature::new(t).unwrap_err();
        assert!(matches!(e, KdError::InvalidTemperature { .. }));
    }
    assert_eq!(
        Temperature::new(-2.0).unwrap_err().to_string(),
        "temperature must be finite and > 0, got -2"
    );
    assert_eq!(
        SoftKlLossConfig::new()
            .with_temperature(0.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        "temperature must be finite and > 0, got 0"
    );
}

#[test]
#[should_panic(expected = "temperature: shape [3] must be [1] or the number of rows [2]")]
fn per_row_temperature_length_is_checked() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0], [0.0; 4]]);
    let temps = floats(vec![1.0; 3], [3], &dev());
    divergence(s.clone(), s, Divergence::ForwardKl, temps, T2Scaling::Off);
}

#[test]
fn all_neg_inf_row_is_empty_not_nan() {
    let d = dev();
    let ni = f32::NEG_INFINITY;
    let x = floats(vec![ni, ni, ni, 1.0, 2.0, 3.0], [2, 3], &d).require_grad();
    let p = to_vec(temperature_softmax(x.clone(), Temperature::ONE));
    assert_eq!(&p[..3], &[0.0, 0.0, 0.0]);
    let lp = to_vec(temperature_log_softmax(x.clone(), Temperature::ONE));
    assert!(lp[..3].iter().all(|v| *v == ni));
    let g = to_vec(
        x.grad(
            &temperature_softmax(x.clone(), Temperature::ONE)
                .sum()
                .backward(),
        )
        .unwrap(),
    );
    assert!(g.iter().all(|v| v.is_finite()));
    assert_eq!(&g[..3], &[0.0, 0.0, 0.0]);
    // A fully padded teacher row (all -inf, student too) contributes nothing.
    let t = floats(vec![ni, ni, ni, 1.0, 2.0, 3.0], [2, 3], &d);
    let v = to_vec(soft_kl(x, t, Temperature::ONE, T2Scaling::On).values());
    assert_eq!(v[0], 0.0);
}
