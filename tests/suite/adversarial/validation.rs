//! Item 9: a `DistillationLoss` built as a struct literal (bypassing the config's validation)
//! panics naming the field on both routes; `validate` reports it.

use super::*;

fn literal(alpha: f64, smoothing: f64) -> DistillationLoss {
    DistillationLoss {
        temperature: 2.0,
        alpha,
        t2_scaling: true,
        label_smoothing: smoothing,
        ignore_index: -100,
        student_logits: LogitTransform::IDENTITY,
        teacher_logits: LogitTransform::IDENTITY,
    }
}

fn run_literal(loss: &DistillationLoss, fused: bool) {
    let device = Device::flex().autodiff();
    let x = floats(lcg(6, 1, 1.0), [2, 3], &device);
    let y = floats(lcg(6, 2, 1.0), [2, 3], &device);
    let labels = ints(vec![0, 1], [2], &device);
    if fused {
        distillation_loss(x, y, labels, loss, Reduction::RowMean);
    } else {
        distillation_loss_composed(x, y, labels, loss, Reduction::RowMean);
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
