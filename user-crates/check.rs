//! Shared by the user crates: one distillation loss forward (and backward where the device has
//! autodiff) on a device, the fused path asserted where a kernel exists, and the fused result
//! checked against the composed reference.

use burn::tensor::{Device, Int, Tensor, TensorData, Tolerance};
use kd_losses::prelude::*;

/// Runs the checks on `device`; `fused` is whether a kernel must serve it, `autodiff` whether
/// the device tracks gradients.
pub fn check(name: &str, device: &Device, fused: bool, autodiff: bool) {
    let (rows, vocab) = (6, 40);
    let s: Vec<f32> = (0..rows * vocab).map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0).collect();
    let t: Vec<f32> = (0..rows * vocab).map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0).collect();
    let student = Tensor::<2>::from_data(TensorData::new(s, [rows, vocab]), device);
    let teacher = Tensor::<2>::from_data(TensorData::new(t, [rows, vocab]), device);
    let labels = Tensor::<1, Int>::from_ints([3, -100, 7, 0, 39, 12], device);
    assert_eq!(
        kd_losses::fused::fused_available(&student),
        fused,
        "{name}: fused_available"
    );
    let kd = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.7)
        .init();
    let student = if autodiff { student.require_grad() } else { student };
    let out = kd.forward(student.clone(), teacher.clone(), labels.clone(), Reduction::Mean);
    let reference = kd_losses::distillation_loss_composed(
        student.clone(),
        teacher.clone(),
        labels.clone(),
        &kd,
        Reduction::Mean,
    );
    let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
    out.total
        .to_data()
        .assert_approx_eq::<f32>(&reference.total.to_data(), tol);
    out.soft
        .to_data()
        .assert_approx_eq::<f32>(&reference.soft.to_data(), tol);
    let mut report = format!("total {:.6}", out.total.clone().into_scalar::<f32>());
    if autodiff {
        let grads = out.total.backward();
        let g = student.grad(&grads).expect("student gradient");
        let grads_ref = reference.total.backward();
        let g_ref = student.grad(&grads_ref).expect("reference gradient");
        g.to_data().assert_approx_eq::<f32>(&g_ref.to_data(), tol);
        assert!(teacher.grad(&grads).is_none(), "{name}: the teacher got a gradient");
        report.push_str(", gradient matches the composed path");
    }
    // Reverse KL through the module, and a masked hidden-state MSE (the squared-error kernel on
    // Flex).
    let rkl = DivergenceLossConfig::new(DivergenceKind::ReverseKl).init();
    let _ = rkl.forward(student.clone(), teacher.clone(), Reduction::BatchMean);
    let hidden = kd_losses::hidden_mse(student.clone(), teacher.clone()).reduce(Reduction::Mean);
    if autodiff {
        let grads = hidden.backward();
        assert!(student.grad(&grads).is_some(), "{name}: hidden MSE gradient");
    }
    println!(
        "{name}: {} path, {report}",
        if fused { "fused" } else { "composed" }
    );
}
