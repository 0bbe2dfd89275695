//! API tests of the feature losses: bad input panics with a pinned message, configuration errors
//! are typed, projections learn, and the teacher never receives a gradient.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Bool, Device, Distribution, Tensor};
use common::*;
use kd_losses::prelude::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

// ---------------------------------------------------------------------------------------------
// Shape misuse: each message pinned
// ---------------------------------------------------------------------------------------------

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 3, 5] does not match student_hidden shape [2, 3, 4] (project the student to the teacher's width first)"
)]
fn hidden_mse_rejects_unprojected_widths() {
    let d = dev();
    hidden_mse(rand([2, 3, 4], &d), rand([2, 3, 5], &d));
}

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 4, 6] does not match student_hidden shape [2, 3, 6]"
)]
fn hidden_cosine_rejects_mismatched_sequence_lengths() {
    let d = dev();
    hidden_cosine(rand([2, 3, 6], &d), rand([2, 4, 6], &d));
}

#[test]
#[should_panic(
    expected = "student_hidden: shape [2, 3, 4] does not match the projection weight [in, out] = [3, 5] (last dimension must be 3)"
)]
fn projection_rejects_wrong_input_width() {
    let d = dev();
    let proj = HiddenProjectionConfig::new(3, 5).init(&d);
    proj.forward(rand([2, 3, 4], &d));
}

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 3, 6] does not match student_hidden shape [2, 3, 5]"
)]
fn projection_output_must_match_teacher_width() {
    let d = dev();
    let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(3, 5)).init(&d);
    loss.forward(
        rand([2, 3, 3], &d),
        rand([2, 3, 6], &d),
        Reduction::ElementMean,
    );
}

#[test]
#[should_panic(
    expected = "bias: shape [4] does not match the projection weight [in, out] = [3, 5]"
)]
fn projection_rejects_wrong_bias() {
    let d = dev();
    HiddenProjection::from_tensors(rand([3, 5], &d), Some(rand([4], &d)));
}

#[test]
#[should_panic(expected = "mask: shape [2, 4] does not match the loss rows [2, 3]")]
fn hidden_mask_must_match_tokens() {
    let d = dev();
    let mask = RowMask::new(Tensor::<2, Bool>::full([2, 4], true, &d));
    hidden_mse(rand([2, 3, 4], &d), rand([2, 3, 4], &d)).masked(&mask);
}

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

#[test]
#[should_panic(
    expected = "student_states: width 10 (shape [1, 3, 10]) is not divisible by relation_heads = 4"
)]
fn relation_heads_must_divide_the_student_width() {
    let d = dev();
    self_relation_kl(rand([1, 3, 10], &d), rand([1, 3, 16], &d), 4, None);
}

#[test]
#[should_panic(
    expected = "teacher_states: width 18 (shape [1, 3, 18]) is not divisible by relation_heads = 4"
)]
fn relation_heads_must_divide_the_teacher_width() {
    let d = dev();
    let q = |w| QkvStates {
        queries: rand([1, 3, w], &d),
        keys: rand([1, 3, w], &d),
        values: rand([1, 3, w], &d),
    };
    minilm_v2_loss(q(8), q(18), 4, None);
}

#[test]
#[should_panic(
    expected = "teacher_states: shape [1, 4, 8] does not match student_states shape [1, 3, 8] (batch and sequence length must agree)"
)]
fn relation_rejects_mismatched_sequence_lengths() {
    let d = dev();
    self_relation_kl(rand([1, 3, 8], &d), rand([1, 4, 8], &d), 2, None);
}

#[test]
#[should_panic(
    expected = "teacher_embeddings: batch 5 (shape [5, 3]) does not match student_embeddings batch 4 (shape [4, 2])"
)]
fn rkd_rejects_mismatched_batches() {
    let d = dev();
    rkd_distance(rand([4, 2], &d), rand([5, 3], &d));
}

#[test]
#[should_panic(
    expected = "teacher_embeddings: batch 2 (shape [2, 3]) does not match student_embeddings batch 3"
)]
fn sp_rejects_mismatched_batches() {
    let d = dev();
    similarity_preserving(rand([3, 2], &d), rand([2, 3], &d));
}

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
        Reduction::Mean,
    );
}

// ---------------------------------------------------------------------------------------------
// Typed configuration errors
// ---------------------------------------------------------------------------------------------

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

#[test]
fn config_errors_are_typed() {
    let d = dev();
    assert_eq!(
        HiddenProjectionConfig::new(0, 5).try_init(&d).unwrap_err(),
        KdError::NotPositive {
            name: "d_student",
            value: 0.0
        }
    );
    assert!(HiddenProjectionConfig::new(3, 0).try_init(&d).is_err());
    assert!(MiniLmV2LossConfig::new(0).try_init().is_err());
    assert_eq!(
        RkdLossConfig::new()
            .with_angle_weight(-1.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        format!("angle_weight must be in [0, {}], got -1", f64::MAX)
    );
}

#[test]
fn projection_inits() {
    let d = Device::flex();
    let id = HiddenProjectionConfig::new(3, 5)
        .with_init(ProjectionInit::Identity)
        .init(&d);
    let w = to_vec(id.weight().unwrap());
    assert_eq!(
        w,
        vec![1., 0., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1., 0., 0.]
    );
    assert_eq!(to_vec(id.bias().unwrap()), vec![0.0; 5]);
    let z = HiddenProjectionConfig::new(3, 2)
        .with_bias(false)
        .with_init(ProjectionInit::Zeros)
        .init(&d);
    assert!(z.bias().is_none());
    assert!(to_vec(z.weight().unwrap()).iter().all(|&v| v == 0.0));
    let n = HiddenProjectionConfig::new(4, 4)
        .with_force(true)
        .with_init(ProjectionInit::Burn(burn::module::Initializer::Constant {
            value: 0.5,
        }))
        .init(&d);
    assert_eq!(n.dims(), Some((4, 4)));
    assert!(to_vec(n.weight().unwrap()).iter().all(|&v| v == 0.5));
    // Identity when widths match and no projection is forced: no parameters at all.
    let i = HiddenProjectionConfig::new(4, 4).init(&d);
    assert!(i.is_identity() && i.num_params() == 0);
    assert_eq!(HiddenProjectionConfig::new(3, 5).init(&d).num_params(), 20);
}

// ---------------------------------------------------------------------------------------------
// Learning
// ---------------------------------------------------------------------------------------------

#[derive(Module, Debug)]
struct Student {
    encoder: Linear,
    distill: HiddenLoss,
}

/// A few Adam steps on a fixed student input and teacher target lower the hidden loss; gradients
/// reach the projection and the student, never the teacher.
#[test]
fn projection_learns_with_the_student() {
    for (backend, device) in devices() {
        let x = rand([4, 3, 6], &device);
        let teacher = rand([4, 3, 10], &device).require_grad();
        let mut model = Student {
            encoder: LinearConfig::new(6, 5).init(&device),
            distill: HiddenLossConfig::new(HiddenProjectionConfig::new(5, 10)).init(&device),
        };
        let mut optim = AdamConfig::new().init();
        let loss_of = |m: &Student| {
            let h_s = m.encoder.forward(x.clone());
            m.distill
                .forward(h_s, teacher.clone(), Reduction::ElementMean)
        };
        let first = scalar(loss_of(&model));
        {
            let loss = loss_of(&model);
            let grads = loss.backward();
            assert!(
                model
                    .distill
                    .projection
                    .weight()
                    .unwrap()
                    .grad(&grads)
                    .is_some()
            );
            assert!(
                model
                    .distill
                    .projection
                    .bias()
                    .unwrap()
                    .grad(&grads)
                    .is_some()
            );
            assert!(model.encoder.weight.val().grad(&grads).is_some());
            assert!(
                teacher.grad(&grads).is_none(),
                "{backend}: the teacher got a gradient"
            );
        }
        for _ in 0..20 {
            let loss = loss_of(&model);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.05, model, grads);
        }
        let last = scalar(loss_of(&model));
        assert!(
            last < 0.8 * first,
            "{backend}: loss {first} -> {last} did not drop"
        );
        report("api_projection_learns", backend, 1);
    }
}

/// Per-pair projections are independent parameters, the shared one is a single parameter set,
/// and each pair's term is reported.
#[test]
fn layered_hidden_loss_reports_each_pair() {
    let d = dev();
    let map = LayerMap::uniform_with_embeddings(2, 4).unwrap();
    let cfg = HiddenProjectionConfig::new(3, 5);
    let shared = LayeredHiddenLoss::new(
        map.clone(),
        &cfg,
        ProjectionSharing::Shared,
        HiddenDistance::Mse,
        &d,
    )
    .unwrap();
    let per = LayeredHiddenLoss::new(
        map,
        &cfg,
        ProjectionSharing::PerPair,
        HiddenDistance::Mse,
        &d,
    )
    .unwrap();
    assert_eq!(shared.num_params(), 20);
    assert_eq!(per.num_params(), 60);
    let s: Vec<_> = (0..3).map(|_| rand([2, 4, 3], &d)).collect();
    let t: Vec<_> = (0..5).map(|_| rand([2, 4, 5], &d)).collect();
    let terms = per.forward(&s, &t, None, Reduction::ElementMean);
    let names: Vec<_> = terms.terms().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["hidden s0->t0", "hidden s1->t2", "hidden s2->t4"]);
    // Each term equals the single-layer loss with that pair's projection.
    for (k, &(m, n)) in per.map.pairs().iter().enumerate() {
        let single = HiddenLoss {
            projection: per.projection_for(k).clone(),
            distance: HiddenDistance::Mse,
        };
        let v = scalar(single.forward(s[m].clone(), t[n].clone(), Reduction::ElementMean));
        assert!((scalar(terms.terms()[k].value.clone()) - v).abs() < 1e-6);
    }
    let grads = terms.total().backward();
    for p in &per.projections {
        assert!(p.weight().unwrap().grad(&grads).is_some());
    }
}

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
fn rkd_and_sp_detach_the_teacher() {
    let d = dev();
    let s = rand([5, 3], &d).require_grad();
    let t = rand([5, 7], &d).require_grad();
    let rkd = RkdLossConfig::new().init().forward(s.clone(), t.clone());
    let total = rkd.total().add(similarity_preserving(s.clone(), t.clone()));
    let grads = total.backward();
    let g = to_vec(s.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));
    assert!(t.grad(&grads).is_none());
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
            .reduce(Reduction::Mean);
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
        let b = attention_kl_probs(ps, pt, Some(mask.clone()), heads).reduce(Reduction::Mean);
        assert!((scalar(a) - scalar(b)).abs() < 1e-5);
    }
}

#[test]
fn fully_masked_hidden_losses_are_zero_with_zero_gradients() {
    let d = dev();
    let none = RowMask::new(bools(vec![false; 6], [2, 3], &d));
    for dist in [
        HiddenDistance::Mse,
        HiddenDistance::Cosine,
        HiddenDistance::NormalizedMse,
    ] {
        let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(3, 4))
            .with_distance(dist)
            .init(&d);
        let h_s = rand([2, 3, 3], &d).require_grad();
        let l = loss.forward_masked(
            h_s.clone(),
            rand([2, 3, 4], &d),
            &none,
            Reduction::ElementMean,
        );
        assert_eq!(scalar(l.clone()), 0.0, "{dist:?}");
        let grads = l.backward();
        assert!(to_vec(h_s.grad(&grads).unwrap()).iter().all(|v| *v == 0.0));
        let gw = to_vec(loss.projection.weight().unwrap().grad(&grads).unwrap());
        assert!(gw.iter().all(|v| *v == 0.0), "{dist:?}: {gw:?}");
    }
}

/// Slow, obviously-correct f64 host references of the relational losses.
mod reference {
    fn huber(x: f64) -> f64 {
        if x.abs() < 1.0 {
            0.5 * x * x
        } else {
            x.abs() - 0.5
        }
    }
    fn dist(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }
    fn psi_d(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = x.len();
        let mut mu = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    mu += dist(&x[i], &x[j]);
                }
            }
        }
        mu /= (n * (n - 1)) as f64;
        (0..n)
            .map(|i| (0..n).map(|j| dist(&x[i], &x[j]) / mu).collect())
            .collect()
    }
    pub fn rkd_distance(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (ps, pt) = (psi_d(s), psi_d(t));
        let n = s.len();
        let mut acc = 0.0;
        for i in 0..n {
            for j in 0..n {
                acc += huber(ps[i][j] - pt[i][j]);
            }
        }
        acc / (n * n) as f64
    }
    fn unit(a: &[f64], b: &[f64]) -> Vec<f64> {
        let d: Vec<f64> = b.iter().zip(a).map(|(x, y)| x - y).collect();
        let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n == 0.0 {
            d
        } else {
            d.iter().map(|v| v / n).collect()
        }
    }
    fn cosines(x: &[Vec<f64>]) -> Vec<f64> {
        let n = x.len();
        let mut out = Vec::new();
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    let (e1, e2) = (unit(&x[i], &x[j]), unit(&x[i], &x[k]));
                    out.push(e1.iter().zip(&e2).map(|(a, b)| a * b).sum());
                }
            }
        }
        out
    }
    pub fn rkd_angle(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (a, b) = (cosines(s), cosines(t));
        a.iter().zip(&b).map(|(x, y)| huber(x - y)).sum::<f64>() / a.len() as f64
    }
    fn gram_rows(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        x.iter()
            .map(|a| {
                let row: Vec<f64> = x
                    .iter()
                    .map(|b| a.iter().zip(b).map(|(p, q)| p * q).sum())
                    .collect();
                let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                row.iter().map(|v| v / n).collect()
            })
            .collect()
    }
    pub fn sp(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (a, b) = (gram_rows(s), gram_rows(t));
        let n = s.len();
        let mut acc = 0.0;
        for i in 0..n {
            for j in 0..n {
                acc += (a[i][j] - b[i][j]).powi(2);
            }
        }
        acc / (n * n) as f64
    }
}

#[test]
fn relational_losses_match_f64_references() {
    let s_data: Vec<f32> = vec![
        0.5, -1.0, 2.0, 0.0, 1.5, 0.25, -2.0, 1.0, -0.5, 3.0, 0.75, -1.25,
    ];
    let t_data: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4).collect();
    let rows = |v: &[f32], w: usize| -> Vec<Vec<f64>> {
        v.chunks(w)
            .map(|c| c.iter().map(|&x| x as f64).collect())
            .collect()
    };
    let (s, t) = (rows(&s_data, 3), rows(&t_data, 4));
    for (backend, device) in devices() {
        let st = floats(s_data.clone(), [4, 3], &device);
        let tt = floats(t_data.clone(), [4, 4], &device);
        let pairs = [
            (
                "rkd_distance",
                scalar(rkd_distance(st.clone(), tt.clone())),
                reference::rkd_distance(&s, &t),
            ),
            (
                "rkd_angle",
                scalar(rkd_angle(st.clone(), tt.clone())),
                reference::rkd_angle(&s, &t),
            ),
            (
                "similarity_preserving",
                scalar(similarity_preserving(st.clone(), tt.clone())),
                reference::sp(&s, &t),
            ),
        ];
        for (name, got, want) in pairs {
            assert!(want > 1e-3, "{name}: degenerate reference {want}");
            assert_close(
                &format!("{backend}/{name}"),
                &[got as f32],
                &[want],
                F32_CROSS_RTOL,
            );
        }
        report("api_relational_vs_f64_reference", backend, 3);
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
