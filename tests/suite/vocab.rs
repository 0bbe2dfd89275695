//! `kd_losses::vocab`: vocabulary mismatch between student and teacher (typed error, panic by
//! default) and `align_vocab` (truncate, pad with `-inf`).

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{Divergence, DivergenceLossConfig, divergence};
use kd_losses::vocab::align_vocab;
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn t1() -> Temperature {
    Temperature::ONE
}

fn m2(rows: &[[f32; 4]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    floats(data, [rows.len(), 4], &dev())
}

#[test]
fn vocab_mismatch_is_an_error_naming_both_sizes() {
    let s = floats(vec![0.0; 2 * 3], [2, 3], &dev());
    let t = floats(vec![0.0; 2 * 5], [2, 5], &dev());
    let e = align_vocab(s, t, VocabAlignment::Error).unwrap_err();
    assert_eq!(
        e,
        KdError::VocabMismatch {
            student: 3,
            teacher: 5
        }
    );
    assert_eq!(
        e.to_string(),
        "vocabulary mismatch: student has 3 entries, teacher has 5 \
         (align them with VocabAlignment::Truncate or VocabAlignment::PadNegInf)"
    );
}

#[test]
#[should_panic(expected = "vocabulary mismatch: student has 151936 entries, teacher has 152064")]
fn module_panics_on_vocab_mismatch_by_default() {
    let loss = DivergenceLossConfig::new(Divergence::ReverseKl).init();
    let s = Tensor::<2>::zeros([1, 151_936], &Device::flex());
    let t = Tensor::<2>::zeros([1, 152_064], &Device::flex());
    loss.forward(s, t, Reduction::RowMean);
}

#[test]
fn vocab_truncate_and_pad_neg_inf() {
    let s = m2(&[[1.0, 2.0, 3.0, 4.0]]);
    let t = floats(vec![1.0, 2.0, 3.0, 4.0, 9.0, 9.0], [1, 6], &dev());
    let (a, b) = align_vocab(s.clone(), t.clone(), VocabAlignment::Truncate).unwrap();
    assert_eq!(to_vec(b.clone()), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.dims(), [1, 4]);
    let v = scalar(
        divergence(a, b, Divergence::ForwardKl, t1(), T2Scaling::Off).reduce(Reduction::Sum),
    );
    assert!(v.abs() < 1e-6);

    let (a, b) = align_vocab(s, t, VocabAlignment::PadNegInf).unwrap();
    let a = to_vec(a);
    assert_eq!(&a[4..], &[f32::NEG_INFINITY, f32::NEG_INFINITY]); // never zeros
    assert_eq!(to_vec(b)[4], 9.0);

    // Padding the *teacher* (the smaller side) with -inf leaves the loss as on the shared vocab.
    let s = floats(vec![0.5, 0.1, -0.3, 2.0, 1.0], [1, 5], &dev());
    let t = floats(vec![0.2, 0.1, 0.0], [1, 3], &dev());
    let loss = DivergenceLossConfig::new(Divergence::ReverseKl)
        .with_vocab(VocabAlignment::PadNegInf)
        .init();
    let padded = scalar(loss.forward(s.clone(), t.clone(), Reduction::Sum));
    assert!(
        padded.is_infinite(),
        "student mass where the teacher has none: reverse KL = +inf"
    );
    let fkl = DivergenceLossConfig::new(Divergence::ForwardKl)
        .with_vocab(VocabAlignment::PadNegInf)
        .init();
    assert!(scalar(fkl.forward(s, t, Reduction::Sum)).is_finite());
}
