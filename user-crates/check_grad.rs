//! The backward checks, for user crates whose Burn has `autodiff`.

use burn::tensor::Device;
use kd_losses::*;

use crate::check::{inputs, loss, tol};

/// Forward + backward on an autodiff `device`: the student's gradient equals the composed
/// path's, each term can be differentiated on its own, and the teacher gets none.
pub fn check_grad(name: &str, device: &Device) {
    let (student, teacher, labels) = inputs(device);
    let student = student.require_grad();
    let kd = loss();
    let out = kd.forward(student.clone(), teacher.clone(), labels.clone(), Reduction::RowMean);
    let reference = kd_losses::distillation_loss_composed(
        student.clone(),
        teacher.clone(),
        labels.clone(),
        &kd,
        Reduction::RowMean,
    );
    let g = student.grad(&out.total.backward()).expect("student gradient");
    let g_ref = student.grad(&reference.total.backward()).expect("reference gradient");
    g.to_data().assert_approx_eq::<f32>(&g_ref.to_data(), tol());
    // A second forward: the soft and the hard term differentiated one after the other.
    let out = kd.forward(student.clone(), teacher.clone(), labels.clone(), Reduction::RowMean);
    let reference = kd_losses::distillation_loss_composed(
        student.clone(),
        teacher.clone(),
        labels,
        &kd,
        Reduction::RowMean,
    );
    let gs = student.grad(&out.soft.backward()).expect("soft-term gradient");
    let gs_ref = student.grad(&reference.soft.backward()).expect("reference soft gradient");
    gs.to_data().assert_approx_eq::<f32>(&gs_ref.to_data(), tol());
    let grads = out.hard.backward();
    assert!(student.grad(&grads).is_some(), "{name}: hard-term gradient");
    assert!(teacher.grad(&grads).is_none(), "{name}: the teacher got a gradient");
    let hidden = kd_losses::hidden_mse(student.clone(), teacher).reduce(Reduction::RowMean);
    assert!(student.grad(&hidden.backward()).is_some(), "{name}: hidden MSE gradient");
    println!("{name}: backward equal to the composed path (total, soft, hard terms)");
}
