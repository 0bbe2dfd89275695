//! `kd_losses::ensemble`: teacher weights are validated, one weight per teacher, and every
//! ensemble mode matches a host reference.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::Divergence;
use kd_losses::ensemble::{EnsembleMode, TeacherWeights, ensemble_divergence};
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

#[test]
fn ensemble_weights_are_validated() {
    assert!(matches!(
        TeacherWeights::new(&[]).unwrap_err(),
        KdError::Empty { .. }
    ));
    assert!(matches!(
        TeacherWeights::new(&[1.0, -1.0]).unwrap_err(),
        KdError::NotPositive { .. }
    ));
    assert!(TeacherWeights::new(&[1.0, f64::NAN]).is_err());
}

#[test]
#[should_panic(expected = "teacher_logits: expected 2 entries, got 1")]
fn ensemble_needs_one_weight_per_teacher() {
    let s = m2(&[[0.0; 4]]);
    let w = TeacherWeights::uniform(2).unwrap();
    ensemble_divergence(
        s.clone(),
        vec![s],
        &w,
        EnsembleMode::Losses,
        Divergence::ForwardKl,
        t1(),
        T2Scaling::Off,
    );
}

#[test]
fn ensemble_modes_match_host_reference() {
    let s = [0.3f32, -0.2, 1.0, 0.0];
    let ta = [1.0f32, 0.0, -1.0, 0.5];
    let tb = [-0.5f32, 2.0, 0.0, 0.0];
    let (wa, wb) = (0.25, 0.75);
    let sm = |x: &[f32]| -> Vec<f64> {
        let e: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    let kl = |p: &[f64], q: &[f64]| -> f64 { p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum() };
    let (q, pa, pb) = (sm(&s), sm(&ta), sm(&tb));
    let mix: Vec<f64> = pa.iter().zip(&pb).map(|(a, b)| wa * a + wb * b).collect();
    let geo: Vec<f64> = {
        let g: Vec<f64> = pa
            .iter()
            .zip(&pb)
            .map(|(a, b)| a.powf(wa) * b.powf(wb))
            .collect();
        let z: f64 = g.iter().sum();
        g.iter().map(|v| v / z).collect()
    };
    let expected = [
        (EnsembleMode::Probabilities, kl(&mix, &q)),
        (EnsembleMode::LogProbabilities, kl(&geo, &q)),
        (EnsembleMode::Losses, wa * kl(&pa, &q) + wb * kl(&pb, &q)),
    ];
    let w = TeacherWeights::new(&[1.0, 3.0]).unwrap();
    for (mode, e) in expected {
        let v = scalar(
            ensemble_divergence(
                m2(&[s]),
                vec![m2(&[ta]), m2(&[tb])],
                &w,
                mode,
                Divergence::ForwardKl,
                t1(),
                T2Scaling::Off,
            )
            .reduce(Reduction::Sum),
        );
        assert!((v - e).abs() < 1e-5, "{mode:?}: {v} vs {e}");
    }
}
