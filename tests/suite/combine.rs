//! `kd_losses::combine`: `LossTerms`, the named, weighted sum of loss terms.

use crate::common::*;
use burn::tensor::{Device, Int, Tensor};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

#[test]
fn loss_terms_report_each_term() {
    let d = dev();
    let s = floats(vec![0.2, 0.1, 0.0, 1.0, 0.0, -1.0], [2, 3], &d);
    let t = floats(vec![1.0, 0.1, 0.0, 0.0, 0.5, -1.0], [2, 3], &d);
    let labels: Tensor<1, Int> = ints(vec![0, 2], [2], &d);
    let out = DistillationLossConfig::new()
        .with_alpha(0.7)
        .init()
        .forward(s, t, labels, Reduction::RowMean);
    let total = scalar(out.total.clone());
    let terms = out.into_terms();
    let logged = terms.scalars();
    assert_eq!(
        logged.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["soft", "hard"]
    );
    assert!((0.7 * logged[0].1 + 0.3 * logged[1].1 - total).abs() < 1e-6);
    assert!((scalar(terms.total()) - total).abs() < 1e-6);
}

#[test]
#[should_panic(expected = "LossTerms::total: no terms were added")]
fn empty_loss_terms_panic() {
    let _ = LossTerms::new().total();
}

#[test]
fn loss_term_weight_error_names_the_value() {
    let d = dev();
    let e = LossTerms::new()
        .with("x", f64::INFINITY, floats(vec![1.0], [1], &d))
        .unwrap_err();
    assert_eq!(e.to_string(), "weight must be finite, got inf");
}
