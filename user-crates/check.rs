//! Shared by the user crates: a distillation loss forward on a device, the fused path asserted
//! where a kernel exists, and the fused result checked against the composed reference.
//! `check_grad.rs` adds the backward pass for crates whose Burn has `autodiff`.

use burn::tensor::{Device, Int, Tensor, TensorData, Tolerance};
use kd_losses::*;

/// Student and teacher logits `[6, 40]` and labels (one ignored row) on `device`.
pub fn inputs(device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let (rows, vocab) = (6, 40);
    let s: Vec<f32> = (0..rows * vocab).map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0).collect();
    let t: Vec<f32> = (0..rows * vocab).map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0).collect();
    (
        Tensor::<2>::from_data(TensorData::new(s, [rows, vocab]), device),
        Tensor::<2>::from_data(TensorData::new(t, [rows, vocab]), device),
        Tensor::<1, Int>::from_ints([3, -100, 7, 0, 39, 12], device),
    )
}

/// `α = 0.7`, `T = 2`.
pub fn loss() -> DistillationLoss {
    DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.7)
        .init()
}

/// The tolerance between the fused and the composed path.
pub fn tol() -> Tolerance<f32> {
    Tolerance::<f32>::rel_abs(1e-4, 1e-5)
}

/// Forward checks on `device`; `fused` is whether a kernel must serve it.
pub fn check(name: &str, device: &Device, fused: bool) {
    let (student, teacher, labels) = inputs(device);
    assert_eq!(
        kd_losses::fused::fused_available(&student),
        fused,
        "{name}: fused_available"
    );
    let kd = loss();
    let out = kd.forward(student.clone(), teacher.clone(), labels.clone(), Reduction::RowMean);
    let reference = kd_losses::distillation_loss_composed(
        student.clone(),
        teacher.clone(),
        labels,
        &kd,
        Reduction::RowMean,
    );
    for (a, b) in [(out.total.clone(), reference.total), (out.soft, reference.soft), (out.hard, reference.hard)] {
        a.to_data().assert_approx_eq::<f32>(&b.to_data(), tol());
    }
    // Reverse KL through the module, and a hidden-state MSE (the squared-error kernel on Flex).
    let rkl = kd_losses::DivergenceLossConfig::new(kd_losses::Divergence::ReverseKl).init();
    let _ = rkl.forward(student.clone(), teacher.clone(), Reduction::BatchMean);
    let hidden = kd_losses::hidden_mse(student, teacher).reduce(Reduction::RowMean);
    assert!(hidden.into_scalar::<f32>().is_finite(), "{name}: hidden MSE");
    println!(
        "{name}: {} path, total {:.6} (equal to the composed path)",
        if fused { "fused" } else { "composed" },
        out.total.into_scalar::<f32>()
    );
}
