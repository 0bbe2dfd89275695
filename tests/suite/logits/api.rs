//! API contracts of the logit losses: validation errors, shape panics (messages pinned),
//! gradients reach the student and never the teacher, documented edge cases.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

// ------------------------------------------------------------------------------- validation

#[test]
fn alpha_must_be_in_unit_interval() {
    for a in [-0.1, 1.1, f64::NAN] {
        let e = DistillationLossConfig::new()
            .with_alpha(a)
            .try_init()
            .unwrap_err();
        assert!(
            matches!(e, KdError::OutOfRange { name: "alpha", .. }),
            "{e:?}"
        );
    }
    assert_eq!(
        DistillationLossConfig::new()
            .with_alpha(1.5)
            .try_init()
            .unwrap_err()
            .to_string(),
        "alpha must be in [0, 1], got 1.5"
    );
    assert!(
        DistillationLossConfig::new()
            .with_alpha(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        DistillationLossConfig::new()
            .with_alpha(1.0)
            .try_init()
            .is_ok()
    );
}

#[test]
#[should_panic(expected = "alpha must be in [0, 1], got 2")]
fn init_panics_with_the_same_message() {
    DistillationLossConfig::new().with_alpha(2.0).init();
}

#[test]
fn other_config_errors() {
    let d = dev();
    assert_eq!(
        CrossEntropyLossConfig::new()
            .with_label_smoothing(1.5)
            .try_init(&d)
            .unwrap_err()
            .to_string(),
        "label_smoothing must be in [0, 1], got 1.5"
    );
    assert_eq!(
        CrossEntropyLossConfig::new()
            .with_class_weights(Some(vec![1.0, 0.0]))
            .try_init(&d)
            .unwrap_err()
            .to_string(),
        "class weight must be finite and > 0, got 0"
    );
    assert_eq!(
        CrossEntropyLossConfig::new()
            .with_class_weights(Some(vec![]))
            .try_init(&d)
            .unwrap_err()
            .to_string(),
        "class_weights must not be empty"
    );
    assert_eq!(
        PseudoLabelLossConfig::new()
            .with_threshold(Some(1.2))
            .try_init()
            .unwrap_err()
            .to_string(),
        "threshold must be in [0, 1], got 1.2"
    );
    assert_eq!(
        Normalizer::new(0.0).unwrap_err().to_string(),
        "normalizer must be finite and > 0, got 0"
    );
    assert!(
        LossTerms::new()
            .with("x", f64::NAN, floats(vec![1.0], [1], &d))
            .is_err()
    );
}

// ----------------------------------------------------------------------------- shape panics

#[test]
#[should_panic(
    expected = "teacher_logits: shape [2, 4] does not match student_logits shape [2, 3]"
)]
fn soft_kl_shape_mismatch_panics() {
    let d = dev();
    let _ = soft_kl(
        Tensor::<2>::zeros([2, 3], &d),
        Tensor::<2>::zeros([2, 4], &d),
        Temperature::ONE,
        T2Scaling::On,
    );
}

#[test]
#[should_panic(
    expected = "teacher_logits: shape [2, 3, 5] does not match student_logits shape [2, 3, 4]"
)]
fn vocab_mismatch_panics() {
    let d = dev();
    let _ = soft_kl(
        Tensor::<3>::zeros([2, 3, 4], &d),
        Tensor::<3>::zeros([2, 3, 5], &d),
        Temperature::ONE,
        T2Scaling::On,
    );
}

#[test]
#[should_panic(
    expected = "labels: shape [3] does not match logits shape [2, 5] without its last dimension"
)]
fn label_shape_mismatch_panics() {
    let d = dev();
    let _ = cross_entropy(
        Tensor::<2>::zeros([2, 5], &d),
        ints(vec![0, 1, 2], [3], &d),
        &CrossEntropyOptions::default(),
    );
}

#[test]
#[should_panic(
    expected = "labels: label 5 is out of range for 5 classes (valid: 0..5, or the ignore index -100)"
)]
fn label_out_of_range_panics() {
    let d = dev();
    let _ = cross_entropy(
        Tensor::<2>::zeros([2, 5], &d),
        ints(vec![0, 5], [2], &d),
        &CrossEntropyOptions::default(),
    );
}

#[test]
#[should_panic(expected = "labels: label -1 is out of range for 5 classes")]
fn negative_label_panics() {
    let d = dev();
    let _ = cross_entropy(
        Tensor::<2>::zeros([2, 5], &d),
        ints(vec![-1, 0], [2], &d),
        &CrossEntropyOptions::default(),
    );
}

#[test]
#[should_panic(expected = "class_weights: shape [3] does not match the number of classes [5]")]
fn class_weight_shape_panics() {
    let d = dev();
    let opts = CrossEntropyOptions {
        class_weights: Some(floats(vec![1.0; 3], [3], &d)),
        ..Default::default()
    };
    let _ = cross_entropy(
        Tensor::<2>::zeros([2, 5], &d),
        ints(vec![0, 1], [2], &d),
        &opts,
    );
}

#[test]
fn check_labels_is_a_typed_error() {
    let d = dev();
    let e = kd_losses::logits::check_labels(&ints(vec![0, 9], [2], &d), 5, None).unwrap_err();
    assert_eq!(
        e,
        KdError::LabelOutOfRange {
            label: 9,
            num_classes: 5,
            ignore_index: None
        }
    );
}

#[test]
#[should_panic(expected = "threshold must be in [0, 1], got -0.5")]
fn pseudo_label_threshold_panics_in_the_pure_function() {
    let d = dev();
    let _ = pseudo_label_ce(
        Tensor::<2>::zeros([1, 3], &d),
        Tensor::<2>::zeros([1, 3], &d),
        Some(-0.5),
    );
}

#[test]
#[should_panic(expected = "label_smoothing must be in [0, 1], got 2")]
fn label_smoothing_panics_in_the_pure_function() {
    let d = dev();
    let opts = CrossEntropyOptions {
        label_smoothing: 2.0,
        ..Default::default()
    };
    let _ = cross_entropy(
        Tensor::<2>::zeros([1, 3], &d),
        ints(vec![0], [1], &d),
        &opts,
    );
}

// -------------------------------------------------------------------------------- gradients

#[test]
fn teacher_never_receives_a_gradient() {
    for (name, d) in devices() {
        let s = floats(vec![0.1, 0.5, -0.2, 1.0, 0.0, 0.3], [2, 3], &d).require_grad();
        let t = floats(vec![1.0, 0.2, -1.0, 0.0, 2.0, 0.1], [2, 3], &d).require_grad();
        let labels = ints(vec![0, 1], [2], &d);
        let kd = DistillationLossConfig::new().init();
        let out = kd.forward(s.clone(), t.clone(), labels, Reduction::RowMean);
        let pl = pseudo_label_ce(s.clone(), t.clone(), Some(0.1)).reduce(Reduction::RowMean);
        let grads = out.total.add(pl).backward();
        assert!(s.grad(&grads).is_some(), "{name}: student got no gradient");
        assert!(
            t.grad(&grads).is_none(),
            "{name}: teacher received a gradient"
        );
    }
}

// ------------------------------------------------------------------------------- edge cases

#[test]
fn fully_masked_batch_gives_zero() {
    let d = dev();
    let s = floats(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3], &d).require_grad();
    let t = floats(vec![1.0, 0.0, 2.0, 0.0, 4.0, 1.0], [1, 2, 3], &d);
    let labels = ints(vec![-100, -100], [1, 2], &d);
    let out =
        DistillationLossConfig::new()
            .init()
            .forward(s.clone(), t, labels, Reduction::RowMean);
    assert_eq!(scalar(out.total.clone()), 0.0);
    assert_eq!(scalar(out.soft.clone()), 0.0);
    assert_eq!(scalar(out.hard.clone()), 0.0);
    let g = to_vec(s.grad(&out.total.backward()).unwrap());
    assert!(g.iter().all(|v| *v == 0.0));
}

#[test]
fn t2_scaling_is_explicit() {
    let d = dev();
    let s = floats(vec![0.0, 1.0, 2.0], [1, 3], &d);
    let t = floats(vec![2.0, 1.0, 0.0], [1, 3], &d);
    let tt = Temperature::new(3.0).unwrap();
    let on = scalar(soft_kl(s.clone(), t.clone(), tt, T2Scaling::On).reduce(Reduction::Sum));
    let off = scalar(soft_kl(s, t, tt, T2Scaling::Off).reduce(Reduction::Sum));
    assert!((on - 9.0 * off).abs() < 1e-5 * on);
}

#[test]
fn weighted_cross_entropy_matches_torch_weighted_mean() {
    // torch.nn.functional.cross_entropy(x, y, weight=w) = Σ w_y·nll / Σ w_y
    let d = dev();
    let x = vec![1.0f32, 0.0, -1.0, 0.5, 0.5, 0.0];
    let w = [2.0f64, 1.0, 0.5];
    let opts = CrossEntropyOptions {
        class_weights: Some(floats(w.iter().map(|&v| v as f32).collect(), [3], &d)),
        ..Default::default()
    };
    let got = scalar(
        cross_entropy(
            floats(x.clone(), [2, 3], &d),
            ints(vec![0, 2], [2], &d),
            &opts,
        )
        .reduce(Reduction::RowMean),
    );
    let nll = |row: &[f32], y: usize| {
        let l = row.iter().map(|v| (*v as f64).exp()).sum::<f64>().ln();
        l - row[y] as f64
    };
    let expected = (w[0] * nll(&x[..3], 0) + w[2] * nll(&x[3..], 2)) / (w[0] + w[2]);
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
}

#[test]
fn pseudo_labels_follow_the_teacher_argmax() {
    let d = dev();
    let s = floats(vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [2, 3], &d);
    let t = floats(vec![0.0, 9.0, 0.0, 0.1, 0.0, 0.0], [2, 3], &d);
    let all = scalar(pseudo_label_ce(s.clone(), t.clone(), None).reduce(Reduction::RowMean));
    assert!((all - 3f64.ln()).abs() < 1e-6);
    // With a threshold only the confident first row is kept; none kept gives 0.
    let rows = pseudo_label_ce(s.clone(), t.clone(), Some(0.9)).values();
    assert_eq!(to_vec(rows)[1], 0.0);
    assert_eq!(
        scalar(pseudo_label_ce(s, t, Some(1.0)).reduce(Reduction::RowMean)),
        0.0
    );
}

/// The pseudo-label module has the three forms every loss module has.
#[test]
fn pseudo_label_module_forms() {
    let d = dev();
    let s = floats(lcg(4 * 3 * 5, 1, 2.0), [4, 3, 5], &d);
    let t = floats(lcg(4 * 3 * 5, 2, 2.0), [4, 3, 5], &d);
    let loss = PseudoLabelLossConfig::new().init();
    let rows = loss.forward_no_reduction(s.clone(), t.clone());
    assert_eq!(rows.row_dims(), &[4, 3]);
    let mask = RowMask::new(bools((0..12).map(|i| i % 4 != 1).collect(), [4, 3], &d));
    let masked = scalar(loss.forward_masked(s.clone(), t.clone(), &mask, Reduction::RowMean));
    let by_hand = scalar(
        pseudo_label_ce(s.clone(), t.clone(), None)
            .masked(&mask)
            .reduce(Reduction::RowMean),
    );
    assert_eq!(masked, by_hand);
    assert_ne!(masked, scalar(loss.forward(s, t, Reduction::RowMean)));
}
