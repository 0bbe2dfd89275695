//! API contracts of the divergence family: validation errors, pinned panic messages and
//! documented values.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{
    Divergence, DivergenceLossConfig, JsdConvention, generalized_jsd, reverse_kl, skew_kl,
    skew_reverse_kl, total_variation,
};
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

// ------------------------------------------------------------------------------- validation

#[test]
fn beta_and_alpha_must_be_in_unit_interval() {
    for x in [-0.1, 1.1, f64::NAN] {
        for conv in [JsdConvention::Trl, JsdConvention::Continuous] {
            let e = Divergence::generalized_jsd(x, conv).unwrap_err();
            assert!(
                matches!(e, KdError::OutOfRange { name: "beta", .. }),
                "{e:?}"
            );
        }
        assert!(matches!(
            Divergence::skew_kl(x).unwrap_err(),
            KdError::OutOfRange { name: "alpha", .. }
        ));
        assert!(matches!(
            Divergence::skew_reverse_kl(x).unwrap_err(),
            KdError::OutOfRange { name: "alpha", .. }
        ));
    }
    assert_eq!(
        Divergence::generalized_jsd(1.5, JsdConvention::Trl)
            .unwrap_err()
            .to_string(),
        "beta must be in [0, 1], got 1.5"
    );
    assert_eq!(
        DivergenceLossConfig::new(Divergence::SkewKl { alpha: -0.5 })
            .try_init()
            .unwrap_err()
            .to_string(),
        "alpha must be in [0, 1], got -0.5"
    );
    // The divergence's own parameter is validated, also when built as a literal.
    assert_eq!(
        DivergenceLossConfig::new(Divergence::GeneralizedJsd {
            beta: f64::NAN,
            convention: JsdConvention::Continuous,
        })
        .try_init()
        .unwrap_err()
        .to_string(),
        "beta must be in [0, 1], got NaN"
    );
    for d in [
        Divergence::ReverseKl,
        Divergence::generalized_jsd(0.0, JsdConvention::Trl).unwrap(),
        Divergence::generalized_jsd(1.0, JsdConvention::Continuous).unwrap(),
    ] {
        assert!(DivergenceLossConfig::new(d).try_init().is_ok());
    }
    assert_eq!(
        DivergenceLossConfig::new(Divergence::ForwardKl)
            .with_temperature(0.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        "temperature must be finite and > 0, got 0"
    );
}

#[test]
#[should_panic(expected = "beta must be in [0, 1], got 2")]
fn gjsd_function_panics_on_bad_beta() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    generalized_jsd(s.clone(), s, 2.0, JsdConvention::Trl, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(expected = "alpha must be in [0, 1], got -1")]
fn skew_function_panics_on_bad_alpha() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    skew_reverse_kl(s.clone(), s, -1.0, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(
    expected = "teacher_logits: shape [1, 5] does not match student_logits shape [1, 4]"
)]
fn shape_mismatch_names_both_shapes() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    let t = floats(vec![0.0; 5], [1, 5], &dev());
    reverse_kl(s, t, t1(), T2Scaling::Off);
}

// ------------------------------------------------------------------------ documented values

#[test]
fn trl_endpoints_jump_and_continuous_ones_do_not() {
    let s = m2(&[[2.0, 0.5, -1.0, 0.3]]);
    let t = m2(&[[-1.0, 0.0, 2.0, 1.0]]);
    let at = |beta: f64, c: JsdConvention| {
        scalar(
            generalized_jsd(s.clone(), t.clone(), beta, c, t1(), T2Scaling::Off)
                .reduce(Reduction::Sum),
        )
    };
    let fkl = scalar(soft_kl(s.clone(), t.clone(), t1(), T2Scaling::Off).reduce(Reduction::Sum));
    assert!((at(0.0, JsdConvention::Trl) - fkl).abs() < 1e-6);
    assert!(
        at(1e-4, JsdConvention::Trl) < 0.01 * fkl,
        "the TRL mixture vanishes near β = 0"
    );
    assert!((at(1e-4, JsdConvention::Continuous) - fkl).abs() < 0.01 * fkl);
    // β = ½: both conventions are the same JSD.
    assert!((at(0.5, JsdConvention::Trl) - at(0.5, JsdConvention::Continuous)).abs() < 1e-7);
}

#[test]
fn total_variation_is_in_unit_interval_and_skew_is_bounded() {
    let s = m2(&[[1.0e4, -1.0e4, 0.0, 0.0]]);
    let t = m2(&[[-1.0e4, 1.0e4, 0.0, 0.0]]);
    assert!(
        (scalar(total_variation(s.clone(), t.clone(), t1()).reduce(Reduction::Sum)) - 1.0).abs()
            < 1e-6
    );
    let v = scalar(skew_kl(s, t, 0.25, t1(), T2Scaling::Off).reduce(Reduction::Sum));
    assert!((v - 4f64.ln()).abs() < 1e-4, "{v}");
}

// ----------------------------------------------------------------- from log-probabilities

/// `divergence_from_log_probs` on `log_softmax` inputs is `divergence` at `T = 1` without `T²`:
/// every divergence, per-row values and the student gradient, on every backend (the composed
/// rows of one against the door of the other), an entry `-inf` in both and a masked row.
#[test]
fn from_log_probs_equals_divergence_of_the_logits() {
    use burn::tensor::activation::log_softmax;
    use kd_losses::divergence::{divergence, divergence_from_log_probs};
    let (r, v) = (5usize, 11usize);
    let mut s = lcg(r * v, 301, 3.0);
    let mut t = lcg(r * v, 302, 3.0);
    // An entry both models exclude (a finite value for every divergence).
    s[7] = f32::NEG_INFINITY;
    t[7] = f32::NEG_INFINITY;
    for (name, device) in devices() {
        let mask = RowMask::new(bools((0..r).map(|i| i != 2).collect(), [r], &device));
        let mut checks = 0;
        for d in every_divergence() {
            let run = |from_log_probs: bool| {
                let x = floats(s.clone(), [r, v], &device).require_grad();
                let tt = floats(t.clone(), [r, v], &device);
                let rows = if from_log_probs {
                    divergence_from_log_probs(log_softmax(x.clone(), 1), log_softmax(tt, 1), d)
                } else {
                    divergence(x.clone(), tt, d, Temperature::ONE, T2Scaling::Off)
                };
                let values = to_vec(rows.values());
                let loss = rows.masked(&mask).reduce(Reduction::RowMean);
                let g = to_vec(x.grad(&loss.backward()).expect("student gradient"));
                (values, g)
            };
            let ((va, ga), (vb, gb)) = (run(true), run(false));
            let what = format!("{name} {}", d.name());
            for (i, (a, b)) in va.iter().zip(&vb).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-5 * b.abs().max(1.0) || (a.is_infinite() && a == b),
                    "{what}: row {i} from log-probs {a} vs divergence {b}"
                );
            }
            let scale = gb.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
            for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * scale,
                    "{what}: gradient[{i}] {a} vs {b}"
                );
            }
            checks += 1;
        }
        report("divergence_from_log_probs", name, checks);
    }
}
