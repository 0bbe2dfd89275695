//! Hostile input on the fused route: items 2 and 5 of the issue "Correctness under hostile
//! input" (per-term backward passes from one forward; mixed dtypes and `fused_available`).

use crate::common::*;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use kd_losses::fused::fused_available;
use kd_losses::*;

fn grad_of(loss: Tensor<1>, x: &Tensor<2>) -> Vec<f32> {
    let grads = loss.backward();
    x.grad(&grads)
        .map(|g| g.try_into_vec_as::<f32>().unwrap())
        .expect("student gradient")
}

fn typed(data: Vec<f32>, shape: [usize; 2], dtype: FloatDType, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(data, shape), (device, DType::from(dtype)))
}

// 2 -------------------------------------------------------------------------------------------

/// `out.soft.backward()` and `out.hard.backward()` from one forward both work and give the
/// composed path's per-term gradients.
#[test]
fn item02_soft_and_hard_backward_from_one_forward() {
    let s = lcg(4 * 7, 201, 2.0);
    let t = lcg(4 * 7, 202, 2.0);
    let cfg = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.3)
        .init();
    for (name, device) in devices() {
        let labels = ints(vec![0, 3, -100, 6], [4], &device);
        let run = |fused: bool| {
            let x = floats(s.clone(), [4, 7], &device).require_grad();
            let y = floats(t.clone(), [4, 7], &device);
            let out = if fused {
                distillation_loss(x.clone(), y, labels.clone(), &cfg, Reduction::RowMean)
            } else {
                distillation_loss_composed(x.clone(), y, labels.clone(), &cfg, Reduction::RowMean)
            };
            let soft = grad_of(out.soft, &x);
            let hard = grad_of(out.hard, &x);
            (soft, hard)
        };
        let (fs, fh) = run(true);
        let (cs, ch) = run(false);
        for (what, a, b) in [("soft", &fs, &cs), ("hard", &fh, &ch)] {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-5 * y.abs().max(1e-2),
                    "{name} {what}[{i}]: fused {x} vs composed {y}"
                );
            }
        }
        report("item02", name, 1);
    }
}

// 5 -------------------------------------------------------------------------------------------

/// f32 student, narrower or wider teacher: computed (in the wider dtype) on every route, never
/// a Burn-internal panic; `fused_available` only says `true` for what the kernel runs.
#[test]
fn item05_mixed_dtypes_compute_on_every_route() {
    let s = lcg(3 * 5, 501, 2.0);
    let t = lcg(3 * 5, 502, 2.0);
    let cfg = DistillationLossConfig::new().init();
    for (name, device) in devices() {
        let dtypes: &[FloatDType] = match name {
            "ndarray" => &[FloatDType::F64],
            // WGSL has no f64 and no bf16.
            "wgpu" => &[FloatDType::F16],
            _ => &[FloatDType::F64, FloatDType::BF16, FloatDType::F16],
        };
        for &dtype in dtypes {
            let labels = ints(vec![0, 1, 4], [3], &device);
            let x = floats(s.clone(), [3, 5], &device).require_grad();
            let y = typed(t.clone(), [3, 5], dtype, &device);
            let out = distillation_loss(
                x.clone(),
                y.clone(),
                labels.clone(),
                &cfg,
                Reduction::RowMean,
            );
            let v = scalar(out.total.clone());
            assert!(v.is_finite(), "{name} {dtype:?}: {v}");
            let g = grad_of(out.total, &x);
            assert!(g.iter().all(|x| x.is_finite()), "{name} {dtype:?}");
            let loss =
                SoftKlLossConfig::new()
                    .init()
                    .forward(x.clone(), y.clone(), Reduction::RowMean);
            assert!(scalar(loss).is_finite(), "{name} {dtype:?} SoftKlLoss");
            // A student in a narrow or wide dtype: the CubeCL kernel reads f16 as it is; the CPU
            // kernel runs f32 only (the composed path, which widens f16/bf16 and keeps f64).
            let xs = typed(s.clone(), [3, 5], dtype, &device);
            assert_eq!(
                fused_available(&xs),
                name == "wgpu" && dtype == FloatDType::F16,
                "{name} {dtype:?}: fused_available"
            );
            let out = distillation_loss(xs, y, labels, &cfg, Reduction::RowMean);
            assert!(scalar(out.total).is_finite(), "{name} {dtype:?} student");
        }
        report("item05", name, 1);
    }
}
