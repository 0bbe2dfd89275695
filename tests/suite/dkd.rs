//! `kd_losses::dkd`: decoupled KD (TCKD + NCKD) recomposes the KL, two classes, validation.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::dkd::{DkdLossConfig, dkd};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn t1() -> Temperature {
    Temperature::ONE
}

fn m2(rows: &[[f32; 4]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    floats(data, [rows.len(), 4], &dev())
}

/// KL(p‖q) = TCKD + (1 − p_y) · NCKD (the decomposition of Zhao et al., eq. 3).
#[test]
fn dkd_parts_recompose_the_kl() {
    let s = m2(&[[2.0, 0.5, -1.0, 0.3], [0.0, 1.0, 0.0, -2.0]]);
    let t = m2(&[[3.0, 0.0, -2.0, 1.0], [0.5, 2.0, 0.1, 0.0]]);
    let y = ints(vec![0, 2], [2], &dev());
    let temp = Temperature::new(2.0).unwrap();
    let parts = dkd(
        s.clone(),
        t.clone(),
        y,
        1.0,
        1.0,
        temp,
        T2Scaling::Off,
        Some(-100),
    );
    let kl = to_vec(soft_kl(s, t.clone(), temp, T2Scaling::Off).values());
    let p = to_vec(temperature_softmax(t, temp));
    let (tc, nc) = (to_vec(parts.tckd.values()), to_vec(parts.nckd.values()));
    for (i, y) in [0usize, 2].into_iter().enumerate() {
        let recomposed = tc[i] + (1.0 - p[i * 4 + y]) * nc[i];
        assert!(
            (recomposed - kl[i]).abs() < 1e-5,
            "row {i}: {recomposed} vs {}",
            kl[i]
        );
    }
}

#[test]
fn dkd_two_classes_is_finite_and_nckd_is_zero() {
    let s = floats(vec![1.0e4, -1.0e4, 0.0, 0.0], [2, 2], &dev()).require_grad();
    let t = floats(vec![-1.0e4, 1.0e4, 3.0, -3.0], [2, 2], &dev());
    let y = ints(vec![0, -100], [2], &dev());
    let parts = dkd(
        s.clone(),
        t,
        y,
        1.0,
        8.0,
        Temperature::new(4.0).unwrap(),
        T2Scaling::On,
        Some(-100),
    );
    assert!(to_vec(parts.nckd.values()).iter().all(|v| *v == 0.0));
    let loss = parts.loss.reduce(Reduction::RowMean);
    assert!(scalar(loss.clone()).is_finite());
    let g = to_vec(s.grad(&loss.backward()).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert!(g[2] == 0.0 && g[3] == 0.0, "ignored row gets no gradient");
}

#[test]
#[should_panic(expected = "student_logits: DKD needs at least 2 classes, got shape [2, 1]")]
fn dkd_needs_two_classes() {
    let s = floats(vec![0.0, 0.0], [2, 1], &dev());
    dkd(
        s.clone(),
        s,
        ints(vec![0, 0], [2], &dev()),
        1.0,
        1.0,
        t1(),
        T2Scaling::On,
        None,
    );
}

#[test]
fn dkd_config_validates() {
    assert_eq!(
        DkdLossConfig::new()
            .with_beta(-1.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        "beta must be in [0, inf], got -1"
    );
    assert!(
        DkdLossConfig::new()
            .with_alpha(f64::INFINITY)
            .try_init()
            .is_err()
    );
}
