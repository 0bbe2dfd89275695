//! Property tests of the hidden-state losses (proptest, 64 cases on the CPU backends, one in
//! `WGPU_CASE_STRIDE` on wgpu).

use std::sync::LazyLock;

use crate::common::*;
use burn::tensor::{Bool, Device, Tensor};
use kd_losses::*;
use proptest::prelude::*;

static DEVICES: LazyLock<Vec<(&'static str, Device)>> = LazyLock::new(devices);

/// Hidden states and attention scores of ordinary magnitude.
const FEATURE_RANGE: core::ops::Range<f32> = -3.0..3.0;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn vec_of(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(FEATURE_RANGE, n)
}

/// A `[B, S]` mask keeping the first `keep` tokens of every sequence.
fn prefix_mask(b: usize, s: usize, keep: usize, d: &Device) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..b * s).map(|i| i % s < keep).collect();
    bools(data, [b, s], d)
}

proptest! {
    #![proptest_config(cfg())]

    /// Hidden MSE (with a projection), cosine and normalized MSE: masking a suffix of every
    /// sequence equals slicing it away.
    #[test]
    fn hidden_masked_equals_sliced(
        (b, s, keep, hs, ht, w) in (1usize..=2, 2usize..=4).prop_flat_map(|(b, s)| {
            (Just(b), Just(s), 1..=s, vec_of(b * s * 3), vec_of(b * s * 4), vec_of(12))
        })
    ) {
        for (_, d) in case_devices(&DEVICES) {
            let h_s = floats(hs.clone(), [b, s, 3], d);
            let h_t = floats(ht.clone(), [b, s, 4], d);
            let proj = HiddenProjection::from_tensors(floats(w.clone(), [3, 4], d), None);
            let mask = RowMask::new(prefix_mask(b, s, keep, d));
            for dist in [HiddenDistance::Mse, HiddenDistance::Cosine, HiddenDistance::NormalizedMse] {
                let loss = HiddenLoss { projection: proj.clone(), distance: dist };
                let masked = scalar(loss.forward_masked(h_s.clone(), h_t.clone(), &mask, Reduction::ElementMean));
                let sliced = scalar(loss.forward(
                    h_s.clone().slice([0..b, 0..keep]),
                    h_t.clone().slice([0..b, 0..keep]),
                    Reduction::ElementMean,
                ));
                prop_assert!((masked - sliced).abs() <= 1e-5 * sliced.abs().max(1.0), "{dist:?}: {masked} vs {sliced}");
            }
        }
    }
}
