//! Items 6, 7, 8 and 10: an empty sequence dimension, large temperatures (against f64) and the
//! temperature range, logits near `f32::MAX` with a small temperature, an empty vocabulary.

use super::*;
use burn::tensor::Int;
use kd_losses::divergence::{Divergence, divergence};

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
            Reduction::RowMean,
        )),
        1 => drop(distillation_loss_composed(
            x(),
            x(),
            labels,
            &kd(2.0, 0.5),
            Reduction::RowMean,
        )),
        2 => drop(
            SoftKlLossConfig::new()
                .init()
                .forward(x(), x(), Reduction::RowMean),
        ),
        3 => drop(soft_kl(x(), x(), Temperature::ONE, T2Scaling::On).reduce(Reduction::RowMean)),
        4 => drop(fkl(1.0).forward(x(), x(), Reduction::RowMean)),
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
