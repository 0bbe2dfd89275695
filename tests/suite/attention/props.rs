//! Property tests of the attention losses (proptest, 64 cases on the CPU backends, one in
//! `WGPU_CASE_STRIDE` on wgpu), and the report line of the feature losses' properties.

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

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

proptest! {
    #![proptest_config(cfg())]

    /// Attention MSE (scores and probabilities) and attention KL: a padding mask over a suffix
    /// equals the maps sliced to the real tokens, for matching and differing head counts.
    #[test]
    fn attention_masked_equals_sliced(
        (b, hs, ht, s, keep, xs, xt) in (1usize..=2, 1usize..=2, 1usize..=3, 2usize..=4).prop_flat_map(|(b, hs, ht, s)| {
            (Just(b), Just(hs), Just(ht), Just(s), 1..=s, vec_of(b * hs * s * s), vec_of(b * ht * s * s))
        })
    ) {
        for (_, d) in case_devices(&DEVICES) {
            let a_s = floats(xs.clone(), [b, hs, s, s], d);
            let a_t = floats(xt.clone(), [b, ht, s, s], d);
            let mask = prefix_mask(b, s, keep, d);
            let cut = |x: Tensor<4>| { let h = x.dims()[1]; x.slice([0..b, 0..h, 0..keep, 0..keep]) };
            let close = |a: f64, c: f64| (a - c).abs() <= 1e-5 * c.abs().max(1.0);
            for heads in [HeadReduce::Mean, HeadReduce::Sum] {
                let m = scalar(attention_mse_scores(a_s.clone(), a_t.clone(), Some(mask.clone()), heads).reduce(Reduction::RowMean));
                let c = scalar(attention_mse_scores(cut(a_s.clone()), cut(a_t.clone()), None, heads).reduce(Reduction::RowMean));
                prop_assert!(close(m, c), "mse {heads:?}: {m} vs {c}");
            }
            let m = scalar(attention_kl_scores(a_s.clone(), a_t.clone(), Some(mask.clone()), KlHeads::Mean).reduce(Reduction::RowMean));
            let c = scalar(attention_kl_scores(cut(a_s.clone()), cut(a_t.clone()), None, KlHeads::Mean).reduce(Reduction::RowMean));
            prop_assert!(close(m, c), "kl mean: {m} vs {c}");
            if hs == ht {
                let m = scalar(attention_mse_probs(a_s.clone(), a_t.clone(), Some(mask.clone()), HeadReduce::Match).reduce(Reduction::RowMean));
                let c = scalar(attention_mse_probs(cut(a_s.clone()), cut(a_t.clone()), None, HeadReduce::Match).reduce(Reduction::RowMean));
                prop_assert!(close(m, c), "mse probs: {m} vs {c}");
                let m = scalar(attention_kl_scores(a_s.clone(), a_t.clone(), Some(mask.clone()), KlHeads::Match).reduce(Reduction::RowMean));
                let c = scalar(attention_kl_scores(cut(a_s.clone()), cut(a_t.clone()), None, KlHeads::Match).reduce(Reduction::RowMean));
                prop_assert!(close(m, c), "kl match: {m} vs {c}");
            }
        }
    }

    /// MiniLM and MiniLMv2: every KL term is ≥ 0, and 0 (with a zero gradient) for identical
    /// student and teacher.
    #[test]
    fn minilm_kl_nonnegative_and_zero_on_identical(
        (b, h, s, sc_s, sc_t, v_s, v_t, keep) in (1usize..=2, 1usize..=2, 2usize..=4).prop_flat_map(|(b, h, s)| {
            (Just(b), Just(h), Just(s), vec_of(b * h * s * s), vec_of(b * h * s * s),
             vec_of(b * s * 2 * h), vec_of(b * s * 4 * h), 1..=s)
        })
    ) {
        for (_, d) in case_devices(&DEVICES) {
            let mask = prefix_mask(b, s, keep, d);
            let layer = |sc: &Vec<f32>, v: &Vec<f32>, w: usize| MiniLmLayer {
                attention_scores: floats(sc.clone(), [b, h, s, s], d),
                values: floats(v.clone(), [b, s, w], d),
            };
            let terms = minilm_loss(layer(&sc_s, &v_s, 2 * h), layer(&sc_t, &v_t, 4 * h), Some(mask.clone()));
            for (name, v) in terms.scalars() {
                prop_assert!(v >= -1e-6, "{name}: {v} < 0");
            }
            let qkv = |v: &Vec<f32>, w: usize| QkvStates {
                queries: floats(v.clone(), [b, s, w], d),
                keys: floats(v.iter().map(|x| -x).collect(), [b, s, w], d),
                values: floats(v.iter().map(|x| 0.5 * x).collect(), [b, s, w], d),
            };
            let v2 = minilm_v2_loss(qkv(&v_s, 2 * h), qkv(&v_t, 4 * h), h, Some(mask.clone()));
            for (name, v) in v2.scalars() {
                prop_assert!(v >= -1e-6, "{name}: {v} < 0");
            }
            // Identical inputs.
            let sc = floats(sc_s.clone(), [b, h, s, s], d).require_grad();
            let vv = floats(v_s.clone(), [b, s, 2 * h], d).require_grad();
            let same = minilm_loss(
                MiniLmLayer { attention_scores: sc.clone(), values: vv.clone() },
                MiniLmLayer { attention_scores: sc.clone(), values: vv.clone() },
                Some(mask.clone()),
            );
            let total = same.total();
            prop_assert!(scalar(total.clone()).abs() < 1e-5);
            let grads = total.backward();
            let g = to_vec(sc.grad(&grads).unwrap());
            prop_assert!(g.iter().all(|x| x.abs() < 1e-5), "{g:?}");
            let same2 = minilm_v2_loss(qkv(&v_s, 2 * h), qkv(&v_s, 2 * h), h, None);
            prop_assert!(scalar(same2.total()).abs() < 1e-5);
        }
    }

    /// `-inf` attention scores (a causal mask, shared by both models) and fully masked
    /// sequences give finite losses and finite gradients; a fully masked batch gives exactly 0.
    #[test]
    fn neg_inf_scores_and_masked_rows_give_finite_gradients(
        (b, h, s, xs, xt, keeps) in (1usize..=3, 1usize..=2, 2usize..=4).prop_flat_map(|(b, h, s)| {
            (Just(b), Just(h), Just(s), vec_of(b * h * s * s), vec_of(b * h * s * s),
             prop::collection::vec(0..=s, b))
        })
    ) {
        let causal = |x: &Vec<f32>| -> Vec<f32> {
            x.iter().enumerate().map(|(i, &v)| if i % s > (i / s) % s { f32::NEG_INFINITY } else { v }).collect()
        };
        let mask_data: Vec<bool> = (0..b * s).map(|i| i % s < keeps[i / s]).collect();
        for (_, d) in case_devices(&DEVICES) {
            let mask = bools(mask_data.clone(), [b, s], d);
            let a_t = floats(causal(&xt), [b, h, s, s], d);
            let check = |loss: Tensor<1>, a_s: &Tensor<4>| -> Result<(), TestCaseError> {
                let v = scalar(loss.clone());
                prop_assert!(v.is_finite(), "loss {v}");
                let g = to_vec(a_s.grad(&loss.backward()).unwrap());
                prop_assert!(finite(&g), "{g:?}");
                Ok(())
            };
            for heads in [HeadReduce::Match, HeadReduce::Mean] {
                let a_s = floats(causal(&xs), [b, h, s, s], d).require_grad();
                check(attention_mse_scores(a_s.clone(), a_t.clone(), Some(mask.clone()), heads).reduce(Reduction::RowMean), &a_s)?;
                let a_s = floats(causal(&xs), [b, h, s, s], d).require_grad();
                check(attention_mse_scores(a_s.clone(), a_t.clone(), None, heads).reduce(Reduction::RowMean), &a_s)?;
            }
            for heads in [KlHeads::Match, KlHeads::Mean] {
                let a_s = floats(causal(&xs), [b, h, s, s], d).require_grad();
                check(attention_kl_scores(a_s.clone(), a_t.clone(), Some(mask.clone()), heads).reduce(Reduction::RowMean), &a_s)?;
            }
            // Everything masked: exactly 0.
            let none = bools(vec![false; b * s], [b, s], d);
            let a_s = floats(causal(&xs), [b, h, s, s], d).require_grad();
            let l = attention_kl_scores(a_s.clone(), a_t.clone(), Some(none.clone()), KlHeads::Match).reduce(Reduction::RowMean);
            prop_assert_eq!(scalar(l.clone()), 0.0);
            check(l, &a_s)?;
            let l = attention_mse_scores(a_s.clone(), a_t.clone(), Some(none), HeadReduce::Match).reduce(Reduction::RowMean);
            prop_assert_eq!(scalar(l), 0.0);
        }
    }
}

/// One report line per backend for the feature losses' properties: five tensor properties of
/// 64 cases run on every backend (`hidden::props`, the three above, and `relation`'s RKD
/// invariance; the layer-map property in `layer_map` is host-only).

#[test]
fn report_backends() {
    for (name, _) in DEVICES.iter() {
        let cases = cases_on(&DEVICES, name, 64);
        report(
            &format!("props_features (5 properties x {cases} cases)"),
            name,
            5 * cases as usize,
        );
    }
}
