//! Hostile input: one answer on every path (fused and composed, called explicitly), every
//! backend of `KD_BACKENDS`, every float dtype, every masked row. One test (or group) per item of
//! the issue "Correctness under hostile input"; items 2 and 5 (fused backward, fused dtype
//! routing) are in `tests/adversarial_fused.rs`.

mod common;

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use common::*;
use kd_losses::divergence::{Divergence, DivergenceKind, DivergenceLossConfig, divergence};
use kd_losses::prelude::*;

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
    DivergenceLossConfig::new(DivergenceKind::ForwardKl)
        .with_temperature(t)
        .with_t2_scaling(true)
        .init()
}

/// The soft loss on the fused route (`SoftKlLoss::forward`, fused where it runs) and the
/// composed one (`soft_kl(..).reduce`), value and student gradient.
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
            _ => soft_kl(x.clone(), y, Temperature::new(temp).unwrap(), T2Scaling::On).reduce(red),
        };
        let v = scalar(loss.clone()) as f32;
        (v, grad_of(loss, &x))
    };
    [run(0), run(1), run(2)]
}

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
        for red in [Reduction::Mean, Reduction::Sum] {
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

// 4 -------------------------------------------------------------------------------------------

fn with_dtype<const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    dtype: FloatDType,
    device: &Device,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(data, shape), (device, DType::from(dtype)))
}

/// The float dtypes a backend stores (`f16`/`bf16` where it has them).
fn float_dtypes(name: &str) -> Vec<FloatDType> {
    match name {
        "ndarray" => vec![FloatDType::F64],
        // WGSL has no f64 and no bf16.
        "wgpu" => vec![FloatDType::F16],
        _ => vec![FloatDType::F64, FloatDType::F16, FloatDType::BF16],
    }
}

#[test]
fn item04_every_reduction_works_in_every_float_dtype() {
    let s = lcg(2 * 3 * 5, 31, 2.0);
    let t = lcg(2 * 3 * 5, 32, 2.0);
    for (name, device) in devices() {
        for dtype in float_dtypes(name) {
            for (rname, red) in reductions() {
                let x = with_dtype(s.clone(), [2, 3, 5], dtype, &device).require_grad();
                let y = with_dtype(t.clone(), [2, 3, 5], dtype, &device);
                let labels = ints(vec![0, 1, -100, 3, 4, 0], [2, 3], &device);
                let reference = {
                    let x = floats(s.clone(), [2, 3, 5], &device);
                    let y = floats(t.clone(), [2, 3, 5], &device);
                    scalar(
                        distillation_loss_composed(x, y, labels.clone(), &kd(2.0, 0.5), red).total,
                    )
                };
                let out =
                    distillation_loss(x.clone(), y.clone(), labels.clone(), &kd(2.0, 0.5), red);
                let v = scalar(out.total.clone());
                // bf16 inputs carry 3 significant digits; the loss is computed in f32 from them.
                let tol = if dtype == FloatDType::F64 { 1e-5 } else { 5e-2 };
                assert!(
                    (v - reference).abs() <= tol * reference.abs().max(1.0),
                    "{name} {dtype:?} {rname}: {v} vs f32 {reference}"
                );
                let g = grad_of(out.total, &x);
                assert_eq!(g.len(), 30, "{name} {dtype:?} {rname}: gradient");
                assert_finite(&format!("{name} {dtype:?} {rname}"), &g);
                let mask = RowMask::from_labels(labels.clone(), -100);
                for rows in [
                    soft_kl(x.clone(), y.clone(), Temperature::ONE, T2Scaling::On).masked(&mask),
                    cross_entropy(x.clone(), labels.clone(), &CrossEntropyOptions::default()),
                    hidden_mse(x.clone(), y.clone()).masked(&mask),
                ] {
                    assert!(
                        scalar(rows.reduce(red)).is_finite(),
                        "{name} {dtype:?} {rname}"
                    );
                }
            }
        }
        report("item04", name, 1);
    }
}

#[test]
fn item04_mixed_dtypes_are_computed_in_the_wider_one() {
    let s = lcg(3 * 4, 41, 2.0);
    let t = lcg(3 * 4, 42, 2.0);
    for (name, device) in devices() {
        let teacher_dtype = if name == "ndarray" {
            FloatDType::F64
        } else {
            FloatDType::BF16
        };
        let x = floats(s.clone(), [3, 4], &device).require_grad();
        let y = with_dtype(t.clone(), [3, 4], teacher_dtype, &device);
        let labels = ints(vec![0, 1, 2], [3], &device);
        let out = distillation_loss(x.clone(), y, labels, &kd(2.0, 0.5), Reduction::Mean);
        assert!(scalar(out.total.clone()).is_finite(), "{name}");
        assert_finite(name, &grad_of(out.total, &x));
        let y = with_dtype(t.clone(), [3, 4], teacher_dtype, &device);
        let v = scalar(
            divergence(
                floats(s.clone(), [3, 4], &device),
                y,
                Divergence::ReverseKl,
                Temperature::ONE,
                T2Scaling::Off,
            )
            .reduce(Reduction::Mean),
        );
        assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
    }
}

// 6 -------------------------------------------------------------------------------------------

#[test]
fn item06_empty_sequence_dimension_gives_zero_and_an_empty_gradient() {
    for (name, device) in devices() {
        if name == "wgpu" {
            // Burn 0.22's CubeCL contiguity check computes `(0 − 1) · stride` for any `[0, V]`
            // tensor and panics with an overflow in debug builds, before any of our code runs.
            continue;
        }
        let zeros3 = || Tensor::<3>::zeros([2, 0, 5], &device);
        let labels = Tensor::<2, Int>::zeros([2, 0], &device);
        for (rname, red) in reductions() {
            let x = zeros3().require_grad();
            let out = distillation_loss(x.clone(), zeros3(), labels.clone(), &kd(2.0, 0.5), red);
            assert_eq!(scalar(out.total.clone()), 0.0, "{name} {rname} fused route");
            assert!(grad_of(out.total, &x).is_empty());
            let x = zeros3().require_grad();
            let out =
                distillation_loss_composed(x.clone(), zeros3(), labels.clone(), &kd(2.0, 0.5), red);
            assert_eq!(scalar(out.total.clone()), 0.0, "{name} {rname} composed");
            assert!(grad_of(out.total, &x).is_empty());
            let mask = RowMask::new(bools(Vec::new(), [2, 0], &device));
            let values = [
                soft_kl(zeros3(), zeros3(), Temperature::ONE, T2Scaling::On).reduce(red),
                SoftKlLossConfig::new()
                    .init()
                    .forward_masked(zeros3(), zeros3(), &mask, red),
                fkl(1.0).forward(zeros3(), zeros3(), red),
                cross_entropy(zeros3(), labels.clone(), &CrossEntropyOptions::default())
                    .reduce(red),
                hidden_mse(zeros3(), zeros3()).masked(&mask).reduce(red),
                divergence(
                    zeros3(),
                    zeros3(),
                    Divergence::TotalVariation,
                    Temperature::ONE,
                    T2Scaling::Off,
                )
                .reduce(red),
            ];
            for (i, v) in values.into_iter().enumerate() {
                assert_eq!(scalar(v), 0.0, "{name} {rname} loss #{i}");
            }
        }
        report("item06", name, 1);
    }
}

// 7 -------------------------------------------------------------------------------------------

#[test]
fn item07_large_temperatures_match_f64_and_are_never_negative() {
    let (r, v) = (4, 64);
    let s = lcg(r * v, 71, 4.0);
    let t = lcg(r * v, 72, 4.0);
    for (name, device) in devices() {
        for temp in [1.0e2, 1.0e3, 1.0e4, 1.0e5] {
            let want: f64 = ref_kl_rows(&s, &t, v, temp).iter().sum::<f64>() * temp * temp;
            let outs = soft_both(&s, &t, [r, v], temp, Reduction::Sum, &device);
            for (path, (got, _)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
                .iter()
                .zip(&outs)
            {
                let got = f64::from(*got);
                assert!(got >= 0.0, "{name} {path} T={temp}: negative KL {got}");
                assert!(
                    (got - want).abs() <= 1e-3 * want,
                    "{name} {path} T={temp}: {got} vs f64 {want}"
                );
            }
            let rows = soft_kl(
                floats(s.clone(), [r, v], &device),
                floats(t.clone(), [r, v], &device),
                Temperature::new(temp).unwrap(),
                T2Scaling::On,
            );
            for x in to_vec(rows.values()) {
                assert!(x >= 0.0, "{name} T={temp}: negative row {x}");
            }
        }
        report("item07", name, 1);
    }
}

#[test]
fn item07_temperature_range_is_validated() {
    for t in [1.0e20, 1.0e7, f64::INFINITY] {
        assert!(Temperature::new(t).is_err(), "T = {t}");
        assert!(
            SoftKlLossConfig::new()
                .with_temperature(t)
                .try_init()
                .is_err()
        );
        assert!(
            DistillationLossConfig::new()
                .with_temperature(t)
                .try_init()
                .is_err()
        );
    }
    assert!(Temperature::new(Temperature::MAX).is_ok());
}

// 8 -------------------------------------------------------------------------------------------

#[test]
fn item08_logits_near_f32_max_with_small_temperature() {
    // Differences up to 1e37 (finite in f32 after dividing by T = 0.5), logits up to 3e38
    // (whose quotient by T overflows).
    let s = vec![3.0e38, 2.9e38, 3.0e38, -3.0e38, -2.9e38, -3.0e38];
    let t = vec![3.0e38, 3.0e38, 2.9e38, -2.9e38, -3.0e38, -3.0e38];
    let want: f64 = ref_kl_rows(&s, &t, 3, 0.5).iter().sum::<f64>() * 0.25;
    assert!(want.is_finite() && want > 1e36, "reference {want}");
    for (name, device) in devices() {
        let outs = soft_both(&s, &t, [2, 3], 0.5, Reduction::Sum, &device);
        for (path, (got, g)) in ["SoftKlLoss", "DivergenceLoss", "soft_kl"]
            .iter()
            .zip(&outs)
        {
            let got = f64::from(*got);
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "{name} {path}: {got} vs f64 {want}"
            );
            assert_finite(&format!("{name} {path}"), g);
        }
        report("item08", name, 1);
    }
}

// 9 -------------------------------------------------------------------------------------------

fn literal(alpha: f64, smoothing: f64) -> DistillationLoss {
    DistillationLoss {
        temperature: 2.0,
        alpha,
        t2_scaling: true,
        label_smoothing: smoothing,
        ignore_index: -100,
    }
}

fn run_literal(loss: &DistillationLoss, fused: bool) {
    let device = Device::flex().autodiff();
    let x = floats(lcg(6, 1, 1.0), [2, 3], &device);
    let y = floats(lcg(6, 2, 1.0), [2, 3], &device);
    let labels = ints(vec![0, 1], [2], &device);
    if fused {
        distillation_loss(x, y, labels, loss, Reduction::Mean);
    } else {
        distillation_loss_composed(x, y, labels, loss, Reduction::Mean);
    }
}

#[test]
#[should_panic(expected = "label_smoothing")]
fn item09_struct_literal_label_smoothing_panics_on_fused_route() {
    run_literal(&literal(0.5, 1.5), true);
}

#[test]
#[should_panic(expected = "label_smoothing")]
fn item09_struct_literal_nan_label_smoothing_panics_on_composed_route() {
    run_literal(&literal(0.5, f64::NAN), false);
}

#[test]
#[should_panic(expected = "alpha")]
fn item09_struct_literal_alpha_panics_on_fused_route() {
    run_literal(&literal(2.0, 0.0), true);
}

#[test]
#[should_panic(expected = "alpha")]
fn item09_struct_literal_nan_alpha_panics_on_composed_route() {
    run_literal(&literal(f64::NAN, 0.0), false);
}

#[test]
fn item09_validate_reports_the_field() {
    assert!(literal(0.5, 0.1).validate().is_ok());
    for (bad, field) in [
        (literal(2.0, 0.0), "alpha"),
        (literal(f64::NAN, 0.0), "alpha"),
        (literal(0.5, 1.5), "label_smoothing"),
        (literal(0.5, f64::NAN), "label_smoothing"),
    ] {
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
}

// 10 ------------------------------------------------------------------------------------------

fn empty_vocab(which: usize, device: &Device) {
    let x = || Tensor::<2>::zeros([3, 0], device);
    let labels = ints(vec![0, 0, 0], [3], device);
    match which {
        0 => drop(distillation_loss(
            x(),
            x(),
            labels,
            &kd(2.0, 0.5),
            Reduction::Mean,
        )),
        1 => drop(distillation_loss_composed(
            x(),
            x(),
            labels,
            &kd(2.0, 0.5),
            Reduction::Mean,
        )),
        2 => drop(
            SoftKlLossConfig::new()
                .init()
                .forward(x(), x(), Reduction::Mean),
        ),
        3 => drop(soft_kl(x(), x(), Temperature::ONE, T2Scaling::On).reduce(Reduction::Mean)),
        4 => drop(fkl(1.0).forward(x(), x(), Reduction::Mean)),
        _ => drop(cross_entropy(x(), labels, &CrossEntropyOptions::default())),
    }
}

#[test]
fn item10_empty_vocabulary_panics_naming_the_argument_on_every_path() {
    for (name, device) in devices() {
        for which in 0..6 {
            let d = device.clone();
            let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                empty_vocab(which, &d)
            }))
            .expect_err("V = 0 must panic");
            let msg = err
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(
                msg.contains("logits: shape [3, 0] has an empty last dimension"),
                "{name} #{which}: {msg}"
            );
        }
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
