//! `kd_losses::reduction`: every reduction's documented denominator, row masks and `RowLoss`
//! shapes (messages pinned).

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

#[test]
fn reductions_have_their_documented_denominators() {
    let d = dev();
    // [2, 3, 4] logits: R = 6 rows, V = 4, shape[0] = 2.
    let s = floats(
        (0..24).map(|i| (i as f32 * 0.37).sin()).collect(),
        [2, 3, 4],
        &d,
    );
    let t = floats(
        (0..24).map(|i| (i as f32 * 0.11).cos()).collect(),
        [2, 3, 4],
        &d,
    );
    let rows = soft_kl(s, t, Temperature::new(2.0).unwrap(), T2Scaling::On);
    let sum = scalar(rows.clone().reduce(Reduction::Sum));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.abs().max(1.0);
    assert!(close(
        scalar(rows.clone().reduce(Reduction::RowMean)),
        sum / 6.0
    ));
    assert!(close(
        scalar(rows.clone().reduce(Reduction::BatchMean)),
        sum / 2.0
    ));
    assert!(close(
        scalar(rows.clone().reduce(Reduction::ElementMean)),
        sum / 24.0
    ));
    let n = Normalizer::new(10.0).unwrap();
    assert!(close(
        scalar(rows.clone().reduce(Reduction::Normalizer(n))),
        sum / 10.0
    ));
    assert_eq!(rows.clone().into_shaped::<2>().dims(), [2, 3]);
    let mask = RowMask::new(bools(
        vec![true, true, false, false, false, false],
        [2, 3],
        &d,
    ));
    let kept: f64 = to_vec(rows.values())[..2].iter().map(|&v| v as f64).sum();
    let m = rows.masked(&mask);
    assert!(close(
        scalar(m.clone().reduce(Reduction::RowMean)),
        kept / 2.0
    ));
    assert!(close(scalar(m.reduce(Reduction::ElementMean)), kept / 8.0));
}

#[test]
#[should_panic(expected = "mask: shape [2, 4] does not match the loss rows [2, 3]")]
fn mask_shape_mismatch_panics() {
    let d = dev();
    let rows = soft_kl(
        Tensor::<3>::zeros([2, 3, 4], &d),
        Tensor::<3>::zeros([2, 3, 4], &d),
        Temperature::ONE,
        T2Scaling::On,
    );
    let _ = rows.masked(&RowMask::new(bools(vec![true; 8], [2, 4], &d)));
}

#[test]
#[should_panic(expected = "values: shape [3] does not match the loss rows [2, 2]")]
fn row_loss_values_shape_panics() {
    let d = dev();
    let _ = RowLoss::new(floats(vec![1.0, 2.0, 3.0], [3], &d), &[2, 2], 5);
}

#[test]
#[should_panic(expected = "into_shaped: rank 3 does not match the loss rows [2, 3]")]
fn into_shaped_rank_panics() {
    let d = dev();
    let rows = soft_kl(
        Tensor::<3>::zeros([2, 3, 4], &d),
        Tensor::<3>::zeros([2, 3, 4], &d),
        Temperature::ONE,
        T2Scaling::On,
    );
    let _ = rows.into_shaped::<3>();
}

#[test]
#[should_panic(expected = "mask: shape [4] does not match the loss rows [3]")]
fn mask_and_shape_panics() {
    let d = dev();
    let _ = RowMask::new(bools(vec![true; 3], [3], &d)).and(&RowMask::new(bools(
        vec![true; 4],
        [4],
        &d,
    )));
}

/// Burn's `Reduction` keeps Burn's meaning (`Mean` and `Auto` are element means), and the
/// crate's row mean has a name that cannot be mistaken for it (the 0.1 name `Reduction::Mean`
/// is gone: see the CHANGELOG).
#[test]
fn burn_reductions_keep_burn_meaning() {
    use burn::nn::loss::Reduction as BurnReduction;
    assert_eq!(Reduction::from(BurnReduction::Mean), Reduction::ElementMean);
    assert_eq!(Reduction::from(BurnReduction::Auto), Reduction::ElementMean);
    assert_eq!(Reduction::from(BurnReduction::Sum), Reduction::Sum);
    assert_eq!(
        Reduction::from(BurnReduction::BatchMean),
        Reduction::BatchMean
    );
    assert_eq!(Reduction::default(), Reduction::RowMean);
    // On logits [R, V] Burn's mean is the row mean divided by V.
    let rows = RowLoss::new(Tensor::<1>::from_floats([1.0, 3.0], &dev()), &[2], 4);
    let row_mean = rows.clone().reduce(Reduction::RowMean).into_scalar::<f32>();
    let burn_mean = rows.reduce(BurnReduction::Mean.into()).into_scalar::<f32>();
    assert_eq!((row_mean, burn_mean), (2.0, 0.5));
}
