//! Items 1, 3, 11 and 12: all `-inf` teacher rows, NaN and ±inf in masked rows, `+inf` logits
//! (point masses) and denormal logits, on every path.

use super::*;
use kd_losses::divergence::{Divergence, divergence};

// 1 -------------------------------------------------------------------------------------------

#[test]
fn item01_all_neg_inf_teacher_row_gives_zero_gradient_on_every_path() {
    let s = lcg(3 * 5, 11, 3.0);
    let mut t = lcg(3 * 5, 12, 3.0);
    t[5..10].fill(NEG);
    for (name, device) in devices() {
        for temp in [1.0, 2.5] {
            let outs = soft_both(&s, &t, [3, 5], temp, Reduction::Sum, &device);
            for (path, (v, g)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
                .iter()
                .zip(&outs)
            {
                assert!(v.is_finite(), "{name} {path} T={temp}: value {v}");
                assert_all_zero(&format!("{name} {path} T={temp} row 1"), &g[5..10]);
                assert!(g[..5].iter().any(|&x| x != 0.0), "{name} {path}: row 0");
            }
            // distillation_loss, fused and composed: only the hard term's gradient on row 1.
            let y = ints(vec![1, 2, 3], [3], &device);
            let cfg = kd(temp, 1.0);
            for fused in [true, false] {
                let x = floats(s.clone(), [3, 5], &device).require_grad();
                let tt = floats(t.clone(), [3, 5], &device);
                let out = if fused {
                    distillation_loss(x.clone(), tt, y.clone(), &cfg, Reduction::Sum)
                } else {
                    distillation_loss_composed(x.clone(), tt, y.clone(), &cfg, Reduction::Sum)
                };
                let g = grad_of(out.total, &x);
                assert_all_zero(
                    &format!("{name} distillation fused={fused} row 1"),
                    &g[5..10],
                );
            }
        }
        report("item01", name, 1);
    }
}

// 3 -------------------------------------------------------------------------------------------

#[test]
fn item03_nan_and_inf_in_masked_rows_give_exact_zero_gradients() {
    let mut s = lcg(4 * 6, 21, 2.0);
    let mut t = lcg(4 * 6, 22, 2.0);
    s[6] = f32::NAN;
    s[8] = f32::INFINITY;
    t[7] = f32::NAN;
    s[18] = f32::NEG_INFINITY;
    t[19] = f32::INFINITY;
    let keep = vec![true, false, true, false];
    for (name, device) in devices() {
        let mask = RowMask::new(bools(keep.clone(), [4], &device));
        let labels = ints(vec![0, -100, 2, -100], [4], &device);
        let temp = Temperature::new(2.0).unwrap();
        let check = |what: &str, loss: Tensor<1>, x: &Tensor<2>| {
            let v = scalar(loss.clone());
            assert!(v.is_finite(), "{name} {what}: value {v}");
            let g = grad_of(loss, x);
            assert_finite(&format!("{name} {what}"), &g);
            assert_all_zero(&format!("{name} {what} row 1"), &g[6..12]);
            assert_all_zero(&format!("{name} {what} row 3"), &g[18..24]);
        };
        for red in [Reduction::RowMean, Reduction::Sum] {
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            let y = floats(t.clone(), [4, 6], &device);
            check(
                "soft_kl.masked",
                soft_kl(x.clone(), y.clone(), temp, T2Scaling::On)
                    .masked(&mask)
                    .reduce(red),
                &x,
            );
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            check(
                "divergence(gjsd).masked",
                divergence(
                    x.clone(),
                    y.clone(),
                    Divergence::generalized_jsd(0.5, Default::default()).unwrap(),
                    temp,
                    T2Scaling::Off,
                )
                .masked(&mask)
                .reduce(red),
                &x,
            );
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            check(
                "SoftKlLoss::forward_masked",
                SoftKlLossConfig::new()
                    .with_temperature(2.0)
                    .init()
                    .forward_masked(x.clone(), y.clone(), &mask, red),
                &x,
            );
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            check(
                "cross_entropy",
                cross_entropy(x.clone(), labels.clone(), &CrossEntropyOptions::default())
                    .reduce(red),
                &x,
            );
            for fused in [true, false] {
                let x = floats(s.clone(), [4, 6], &device).require_grad();
                let cfg = kd(2.0, 0.5);
                let out = if fused {
                    distillation_loss(x.clone(), y.clone(), labels.clone(), &cfg, red)
                } else {
                    distillation_loss_composed(x.clone(), y.clone(), labels.clone(), &cfg, red)
                };
                check(&format!("distillation fused={fused}"), out.total, &x);
            }
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            check(
                "hidden_mse.masked",
                hidden_mse(x.clone(), y.clone()).masked(&mask).reduce(red),
                &x,
            );
            let x = floats(s.clone(), [4, 6], &device).require_grad();
            check(
                "hidden_cosine.masked",
                hidden_cosine(x.clone(), y.clone())
                    .masked(&mask)
                    .reduce(red),
                &x,
            );
        }
        report("item03", name, 1);
    }
}

// 11 ------------------------------------------------------------------------------------------

#[test]
fn item11_plus_inf_logits_are_point_masses_on_every_path() {
    // Row 0: a one-hot teacher (+inf) and an ordinary student; row 1: a student +inf on the
    // label; row 2: a student +inf off the label.
    let inf = f32::INFINITY;
    let s = vec![0.5, -1.0, 2.0, inf, 0.0, 1.0, 0.0, inf, -2.0];
    let t = vec![inf, 0.0, 1.0, 1.0, 0.0, -1.0, 0.3, 0.2, 0.1];
    let soft_want = ref_kl_rows(&s[..3], &t[..3], 3, 2.0)[0] * 4.0;
    assert!(soft_want.is_finite());
    for (name, device) in devices() {
        let x = floats(s[..3].to_vec(), [1, 3], &device).require_grad();
        let outs = soft_both(&s[..3], &t[..3], [1, 3], 2.0, Reduction::Sum, &device);
        for (path, (got, g)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
            .iter()
            .zip(&outs)
        {
            assert!(
                (f64::from(*got) - soft_want).abs() <= 1e-5 * soft_want.max(1.0),
                "{name} {path}: {got} vs {soft_want}"
            );
            assert_finite(&format!("{name} {path}"), g);
        }
        drop(x);
        let labels = ints(vec![0, 0, 0], [3], &device);
        let cfg = kd(1.0, 0.0);
        let hard = |fused: bool, rows: std::ops::Range<usize>| {
            let n = rows.len() / 3;
            let x = floats(s[rows.clone()].to_vec(), [n, 3], &device);
            let y = floats(t[rows].to_vec(), [n, 3], &device);
            let l = labels.clone().slice(0..n);
            let out = if fused {
                distillation_loss(x, y, l, &cfg, Reduction::Sum)
            } else {
                distillation_loss_composed(x, y, l, &cfg, Reduction::Sum)
            };
            scalar(out.hard)
        };
        for fused in [true, false] {
            // +inf on the label: probability 1, cross-entropy 0.
            assert_eq!(hard(fused, 3..6), 0.0, "{name} fused={fused}");
            // +inf off the label: probability 0, cross-entropy +inf (never NaN).
            assert_eq!(hard(fused, 6..9), f64::INFINITY, "{name} fused={fused}");
        }
        report("item11", name, 1);
    }
}

// 12 ------------------------------------------------------------------------------------------

#[test]
fn item12_denormal_logits_give_exactly_zero_kl() {
    let s = vec![1.0e-40, -2.0e-40, 3.0e-41, 0.0, 1.0e-39, -1.0e-45];
    let t = vec![-1.0e-40, 2.0e-40, 0.0, 1.0e-45, -1.0e-39, 1.0e-40];
    for (name, device) in devices() {
        for temp in [1.0, 0.5] {
            let outs = soft_both(&s, &t, [2, 3], temp, Reduction::Sum, &device);
            for (path, (got, _)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
                .iter()
                .zip(&outs)
            {
                assert_eq!(*got, 0.0, "{name} {path} T={temp}");
            }
        }
        report("item12", name, 1);
    }
}

#[test]
fn item12_clamping_does_not_hide_real_divergences() {
    // Nearly equal rows: a real KL of ~1e-9 must survive, not be clamped to 0.
    let s = vec![0.0, 1.0e-4, 0.0, 0.0];
    let t = vec![0.0, 0.0, 0.0, 0.0];
    let want = ref_kl_rows(&s, &t, 4, 1.0)[0];
    for (name, device) in devices() {
        let outs = soft_both(&s, &t, [1, 4], 1.0, Reduction::Sum, &device);
        for (path, (got, _)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
            .iter()
            .zip(&outs)
        {
            let got = f64::from(*got);
            assert!(
                (got - want).abs() <= 1e-2 * want,
                "{name} {path}: {got} vs f64 {want}"
            );
        }
    }
}
