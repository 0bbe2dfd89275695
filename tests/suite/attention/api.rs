//! API tests of the attention losses: bad input panics with a pinned message, MiniLM's terms
//! are named and the teacher never receives a gradient, scores and probabilities agree.

use crate::common::*;
use burn::tensor::{Bool, Device, Distribution, Tensor};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

// -------------------------------------------------------- shape misuse: each message pinned

#[test]
#[should_panic(
    expected = "teacher_scores: shape [2, 2, 5, 5] does not match student_scores shape [2, 2, 4, 4] (batch and sequence length must agree)"
)]
fn attention_rejects_mismatched_sequence_lengths() {
    let d = dev();
    attention_mse_scores(
        rand([2, 2, 4, 4], &d),
        rand([2, 2, 5, 5], &d),
        None,
        HeadReduce::Match,
    );
}

#[test]
#[should_panic(
    expected = "teacher_scores: 4 heads (shape [2, 4, 4, 4]) do not match student_scores's 2 heads (shape [2, 2, 4, 4]); HeadReduce::Match needs equal head counts (use HeadReduce::Mean)"
)]
fn attention_match_rejects_different_head_counts() {
    let d = dev();
    attention_mse_scores(
        rand([2, 2, 4, 4], &d),
        rand([2, 4, 4, 4], &d),
        None,
        HeadReduce::Match,
    );
}

#[test]
#[should_panic(
    expected = "teacher_scores: 4 heads (shape [2, 4, 4, 4]) do not match student_scores's 2 heads"
)]
fn attention_kl_match_rejects_different_head_counts() {
    let d = dev();
    attention_kl_scores(
        rand([2, 2, 4, 4], &d),
        rand([2, 4, 4, 4], &d),
        None,
        KlHeads::Match,
    );
}

#[test]
#[should_panic(
    expected = "teacher_probs: 3 heads (shape [1, 3, 2, 2]) do not match student_probs's 1 heads"
)]
fn attention_kl_probs_match_rejects_different_head_counts() {
    let d = dev();
    attention_kl_probs(
        rand([1, 1, 2, 2], &d),
        rand([1, 3, 2, 2], &d),
        None,
        KlHeads::Match,
    );
}

#[test]
#[should_panic(
    expected = "student_scores: shape [1, 1, 3, 4] is not [B, H, S, S] (queries and keys differ)"
)]
fn attention_rejects_non_square_maps() {
    let d = dev();
    attention_mse_scores(
        rand([1, 1, 3, 4], &d),
        rand([1, 1, 3, 4], &d),
        None,
        HeadReduce::Match,
    );
}

#[test]
#[should_panic(
    expected = "padding_mask: shape [2, 5] does not match the attention maps' [B, S] = [2, 4]"
)]
fn attention_rejects_wrong_mask() {
    let d = dev();
    let mask = Tensor::<2, Bool>::full([2, 5], true, &d);
    attention_mse_probs(
        rand([2, 1, 4, 4], &d),
        rand([2, 1, 4, 4], &d),
        Some(mask),
        HeadReduce::Match,
    );
}

// --------------------------------------------------------------------- values and gradients

#[test]
fn minilm_terms_are_named_and_teacher_is_detached() {
    let d = dev();
    let t_scores = rand([2, 4, 5, 5], &d).require_grad();
    let t_values = rand([2, 5, 16], &d).require_grad();
    let s_scores = rand([2, 4, 5, 5], &d).require_grad();
    let s_values = rand([2, 5, 8], &d).require_grad();
    let mask = bools(
        vec![true, true, true, false, false, true, true, true, true, true],
        [2, 5],
        &d,
    );
    let terms = minilm_loss(
        MiniLmLayer {
            attention_scores: s_scores.clone(),
            values: s_values.clone(),
        },
        MiniLmLayer {
            attention_scores: t_scores.clone(),
            values: t_values.clone(),
        },
        Some(mask),
    );
    let names: Vec<_> = terms.terms().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["attention", "value_relation"]);
    let grads = terms.total().backward();
    assert!(s_scores.grad(&grads).is_some() && s_values.grad(&grads).is_some());
    assert!(t_scores.grad(&grads).is_none() && t_values.grad(&grads).is_none());
    let g = to_vec(s_scores.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()));
}

#[test]
fn attention_kl_probs_and_scores_agree() {
    let d = dev();
    let s = rand([2, 3, 4, 4], &d);
    let t = rand([2, 3, 4, 4], &d);
    let mask = bools(
        vec![true, true, true, false, true, true, true, true],
        [2, 4],
        &d,
    );
    for heads in [KlHeads::Match, KlHeads::Mean] {
        let a = attention_kl_scores(s.clone(), t.clone(), Some(mask.clone()), heads)
            .reduce(Reduction::RowMean);
        // Probabilities of the masked scores: padded keys have probability 0.
        let key = mask
            .clone()
            .reshape([2, 1, 1, 4])
            .expand([2, 3, 4, 4])
            .bool_not();
        let ps = burn::tensor::activation::softmax(
            s.clone().mask_fill(key.clone(), f32::NEG_INFINITY),
            3,
        );
        let pt = burn::tensor::activation::softmax(t.clone().mask_fill(key, f32::NEG_INFINITY), 3);
        let b = attention_kl_probs(ps, pt, Some(mask.clone()), heads).reduce(Reduction::RowMean);
        assert!((scalar(a) - scalar(b)).abs() < 1e-5);
    }
}

/// `MiniLmV2Loss::forward_masked` is `forward` with `Some(mask)`, and the mask matters.
#[test]
fn minilm_v2_module_forward_masked() {
    let d = dev();
    let q = |w: usize, seed: u64| QkvStates {
        queries: floats(lcg(8 * w, seed, 1.0), [2, 4, w], &d),
        keys: floats(lcg(8 * w, seed + 1, 1.0), [2, 4, w], &d),
        values: floats(lcg(8 * w, seed + 2, 1.0), [2, 4, w], &d),
    };
    let mask = bools(
        vec![true, true, true, false, true, true, false, false],
        [2, 4],
        &d,
    );
    let loss = MiniLmV2LossConfig::new(2).init();
    let a = loss
        .forward_masked(q(4, 1), q(6, 9), mask.clone())
        .scalars();
    let b = loss.forward(q(4, 1), q(6, 9), Some(mask)).scalars();
    let c = loss.forward(q(4, 1), q(6, 9), None).scalars();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
