//! Item 4: every reduction works in every float dtype the backend stores; mixed dtypes are
//! computed in the wider one.

use super::*;
use burn::tensor::{DType, FloatDType, TensorData};
use kd_losses::divergence::{Divergence, divergence};

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
        let out = distillation_loss(x.clone(), y, labels, &kd(2.0, 0.5), Reduction::RowMean);
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
            .reduce(Reduction::RowMean),
        );
        assert!(v.is_finite() && v >= 0.0, "{name}: {v}");
    }
}

/// The squared-error losses take a teacher of another dtype as `hidden_mse` does: both maps in
/// the wider one (at least f32), on the fused kernel's backend too (a bf16 teacher is never
/// handed to the f32 kernel).
#[test]
fn item04_attention_mse_teacher_of_another_dtype_is_widened() {
    use kd_losses::attention::{HeadReduce, attention_mse_scores};
    use kd_losses::hidden::hidden_mse;
    let shape = [1, 2, 3, 3];
    let s = lcg(18, 41, 2.0);
    let t = lcg(18, 42, 2.0);
    for (name, device) in devices() {
        for dtype in float_dtypes(name) {
            let x = floats(s.clone(), shape, &device);
            let y = with_dtype(t.clone(), shape, dtype, &device);
            let yr = y.clone().cast(FloatDType::F32);
            let got = scalar(
                attention_mse_scores(x.clone(), y, None, HeadReduce::Match)
                    .reduce(Reduction::ElementMean),
            );
            let want = scalar(
                attention_mse_scores(x.clone(), yr.clone(), None, HeadReduce::Match)
                    .reduce(Reduction::ElementMean),
            );
            let what = format!("{name} teacher {dtype:?}");
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{what}: {got} vs {want}"
            );
            // hidden_mse on the same maps as rows agrees on the widening.
            let h = |t: Tensor<4>| {
                scalar(
                    hidden_mse(x.clone().reshape([6, 3]), t.reshape([6, 3])).reduce(Reduction::Sum),
                )
            };
            let hy = with_dtype(t.clone(), shape, dtype, &device);
            assert!(
                (h(hy) - h(yr)).abs() <= 1e-5 * h(x.clone()).abs().max(1.0),
                "{what}: hidden_mse"
            );
        }
    }
}
