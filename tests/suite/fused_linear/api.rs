//! The fused linear-head loss: typed configuration errors and pinned panics.

use super::*;

#[test]
fn config_errors_are_typed() {
    assert!(matches!(
        FusedLinearKdLossConfig::new()
            .with_temperature(0.0)
            .try_init(),
        Err(KdError::InvalidTemperature { .. })
    ));
    assert!(matches!(
        FusedLinearKdLossConfig::new().with_alpha(1.5).try_init(),
        Err(KdError::OutOfRange { .. })
    ));
    assert!(matches!(
        FusedLinearKdLossConfig::new()
            .with_divergence(Divergence::GeneralizedJsd {
                beta: f64::NAN,
                convention: JsdConvention::Trl
            })
            .try_init(),
        Err(KdError::OutOfRange { .. })
    ));
    assert!(matches!(
        FusedLinearKdLossConfig::new()
            .with_chunk_rows(Some(0))
            .try_init(),
        Err(KdError::NotPositive { .. })
    ));
    // The divergence is the configured one; the default is the forward KL.
    let skew = Divergence::skew_kl(0.3).unwrap();
    let loss = FusedLinearKdLossConfig::new().with_divergence(skew).init();
    assert_eq!(loss.divergence, skew);
    assert_eq!(
        FusedLinearKdLossConfig::new().init().divergence,
        Divergence::ForwardKl
    );
}

#[test]
#[should_panic(expected = "student has 11 entries, teacher has 12")]
fn vocab_mismatch_panics_by_default() {
    let dev = Device::flex();
    let x = inputs(1);
    FusedLinearKdLossConfig::new().init().forward(
        floats(x.h.clone(), [N, H], &dev),
        &LinearHead::new(floats(x.w.clone(), [H, V], &dev)),
        LinearTeacher::Logits(floats(values(N * 12, 2, 1.0), [N, 12], &dev)),
        ints(x.labels.clone(), [N], &dev),
    );
}

#[test]
#[should_panic(
    expected = "student_head.weight: shape [5, 11] does not match student_hidden shape [7, 4]"
)]
fn head_shape_mismatch_panics() {
    let dev = Device::flex();
    let x = inputs(1);
    FusedLinearKdLossConfig::new().init().forward(
        floats(x.h.clone(), [N, H], &dev),
        &LinearHead::new(floats(values(5 * V, 3, 1.0), [5, V], &dev)),
        LinearTeacher::Logits(floats(values(N * V, 2, 1.0), [N, V], &dev)),
        ints(x.labels.clone(), [N], &dev),
    );
}

#[test]
#[should_panic(expected = "labels")]
fn label_out_of_range_panics() {
    let dev = Device::flex();
    let x = inputs(1);
    FusedLinearKdLossConfig::new().init().forward(
        floats(x.h.clone(), [N, H], &dev),
        &LinearHead::new(floats(x.w.clone(), [H, V], &dev)),
        LinearTeacher::Logits(floats(values(N * V, 2, 1.0), [N, V], &dev)),
        ints(vec![0, 1, 2, 3, 4, 5, V as i64], [N], &dev),
    );
}
