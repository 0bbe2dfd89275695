//! `kd_losses::layer_map`: typed errors, the documented pairs (TinyBERT, uniform, skip, last k)
//! also as a property (proptest, host only), and layered losses that get the wrong number of
//! tensors (messages pinned).

use burn::tensor::{Device, Distribution, Tensor};
use kd_losses::*;
use proptest::prelude::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn layer_maps_out_of_range_are_typed_errors() {
    assert_eq!(
        LayerMap::from_pairs(6, 12, vec![(0, 1), (6, 3)]).unwrap_err(),
        KdError::LayerOutOfRange {
            side: "student",
            index: 6,
            len: 6
        }
    );
    let e = LayerMap::from_pairs(6, 12, vec![(5, 12)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "teacher layer index 12 is out of range for 12 teacher layers (valid: 0..12)"
    );
    assert_eq!(
        LayerMap::from_pairs(6, 12, vec![]).unwrap_err().to_string(),
        "layer pairs must not be empty"
    );
    assert_eq!(
        LayerMap::uniform(8, 4).unwrap_err().to_string(),
        "invalid layer map from 8 student to 4 teacher layers: uniform mapping needs student_layers <= teacher_layers"
    );
    assert!(LayerMap::uniform(0, 4).is_err());
    assert!(LayerMap::uniform_with_embeddings(5, 4).is_err());
    assert_eq!(
        LayerMap::skip(6, 12, 3).unwrap_err().to_string(),
        "invalid layer map from 6 student to 12 teacher layers: skip needs student_layers * step <= teacher_layers"
    );
    assert!(LayerMap::skip(6, 12, 0).is_err());
    assert_eq!(
        LayerMap::last_k(6, 12, 7).unwrap_err().to_string(),
        "invalid layer map from 6 student to 12 teacher layers: last_k needs 1 <= k <= min(student_layers, teacher_layers)"
    );
    assert!(LayerMap::last_k(6, 12, 0).is_err());
}

#[test]
fn layer_maps_give_the_documented_pairs() {
    // TinyBERT 4 ← 12: hidden states with embeddings, and attention lists.
    assert_eq!(
        LayerMap::uniform_with_embeddings(4, 12).unwrap().pairs(),
        &[(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    );
    let m = LayerMap::uniform(4, 12).unwrap();
    assert_eq!(m.pairs(), &[(0, 2), (1, 5), (2, 8), (3, 11)]);
    assert_eq!((m.student_layers(), m.teacher_layers()), (4, 12));
    assert_eq!(
        LayerMap::uniform(6, 12).unwrap(),
        LayerMap::skip(6, 12, 2).unwrap()
    );
    // Non-divisible: floor(m·N/M).
    assert_eq!(
        LayerMap::uniform(3, 4).unwrap().pairs(),
        &[(0, 0), (1, 1), (2, 3)]
    );
    assert_eq!(
        LayerMap::last_k(6, 12, 3).unwrap().pairs(),
        &[(3, 9), (4, 10), (5, 11)]
    );
    assert_eq!(
        LayerMap::skip(3, 12, 4).unwrap().pairs(),
        &[(0, 3), (1, 7), (2, 11)]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Layer maps hold exactly the documented pairs, in range and in order.
    #[test]
    fn layer_maps_cover_the_documented_pairs(m in 1usize..=12, extra in 0usize..=24, k in 1usize..=12, step in 1usize..=4) {
        let n = m + extra;
        let u = LayerMap::uniform(m, n).unwrap();
        prop_assert_eq!(u.pairs().len(), m);
        for (i, &(s, t)) in u.pairs().iter().enumerate() {
            prop_assert_eq!(s, i);
            prop_assert_eq!(t, (i + 1) * n / m - 1);
            prop_assert!(t < n);
        }
        prop_assert_eq!(*u.pairs().last().unwrap(), (m - 1, n - 1));
        prop_assert!(u.pairs().windows(2).all(|w| w[0].1 < w[1].1));
        let e = LayerMap::uniform_with_embeddings(m, n).unwrap();
        prop_assert_eq!((e.student_layers(), e.teacher_layers()), (m + 1, n + 1));
        prop_assert_eq!(e.pairs()[0], (0, 0));
        prop_assert_eq!(*e.pairs().last().unwrap(), (m, n));
        prop_assert_eq!(&e.pairs()[1..], &u.pairs().iter().map(|&(s, t)| (s + 1, t + 1)).collect::<Vec<_>>()[..]);
        if n % m == 0 {
            prop_assert_eq!(LayerMap::skip(m, n, n / m).unwrap(), u);
        }
        match LayerMap::skip(m, n, step) {
            Ok(sk) => {
                prop_assert!(m * step <= n);
                for (i, &(s, t)) in sk.pairs().iter().enumerate() {
                    prop_assert_eq!((s, t), (i, (i + 1) * step - 1));
                }
            }
            Err(_) => prop_assert!(m * step > n),
        }
        match LayerMap::last_k(m, n, k) {
            Ok(l) => {
                prop_assert!(k <= m);
                prop_assert_eq!(l.pairs().len(), k);
                prop_assert_eq!(*l.pairs().last().unwrap(), (m - 1, n - 1));
                prop_assert!(l.pairs().windows(2).all(|w| w[1] == (w[0].0 + 1, w[0].1 + 1)));
            }
            Err(_) => prop_assert!(k > m),
        }
        let all: Vec<_> = (0..m).flat_map(|s| (0..n).map(move |t| (s, t))).collect();
        prop_assert!(LayerMap::from_pairs(m, n, all).is_ok());
        prop_assert!(LayerMap::from_pairs(m, n, vec![(m, 0)]).is_err());
        prop_assert!(LayerMap::from_pairs(m, n, vec![(0, n)]).is_err());
    }
}

// --------------------------------------------------------------------------- layered losses

#[test]
#[should_panic(expected = "student_hiddens: 3 tensors, but the layer map expects 5 student layers")]
fn layered_hidden_rejects_wrong_list_length() {
    let d = dev();
    let map = LayerMap::uniform_with_embeddings(4, 8).unwrap();
    let loss = LayeredHiddenLoss::new(
        map,
        &HiddenProjectionConfig::new(4, 4),
        ProjectionSharing::Shared,
        HiddenDistance::Mse,
        &d,
    )
    .unwrap();
    let s: Vec<_> = (0..3).map(|_| rand([1, 2, 4], &d)).collect();
    let t: Vec<_> = (0..9).map(|_| rand([1, 2, 4], &d)).collect();
    loss.forward(&s, &t, None, Reduction::ElementMean);
}

#[test]
#[should_panic(expected = "teacher_maps: 5 tensors, but the layer map expects 4 teacher layers")]
fn layered_attention_rejects_wrong_list_length() {
    let d = dev();
    let map = LayerMap::uniform(2, 4).unwrap();
    let s: Vec<_> = (0..2).map(|_| rand([1, 1, 2, 2], &d)).collect();
    let t: Vec<_> = (0..5).map(|_| rand([1, 1, 2, 2], &d)).collect();
    attention_layers_mse(
        &s,
        &t,
        &map,
        None,
        HeadReduce::Match,
        AttentionSpace::Scores,
        Reduction::RowMean,
    );
}
