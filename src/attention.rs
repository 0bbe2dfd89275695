//! Attention-map distillation: MSE on attention scores or probabilities (TinyBERT, TextBrewer),
//! row-wise attention KL, and MiniLM's self-attention and relation KLs (v1 and v2).
//!
//! Attention maps are `[B, H, S, S]` (batch, heads, queries, keys). A padding mask is a boolean
//! `[B, S]` tensor, `true` for a real token. Every function here names the space of its inputs:
//! `*_scores` take pre-softmax scores (`q·kᵀ/√d`, with or without an additive mask), `*_probs`
//! take softmax probabilities.
//!
//! | loss | rows | value | reference |
//! |---|---|---|---|
//! | [`attention_mse_scores`], [`attention_mse_probs`] | `[B, H', S, S]` pairs | `(A_s − A_t)²` per pair | TinyBERT, TextBrewer `att_mse_loss` |
//! | [`attention_kl_scores`], [`attention_kl_probs`] | `[B, H', S]` query rows | `KL(A_t ‖ A_s)` per query | MiniLM |
//! | [`self_relation_kl`] | `[B, R, S]` query rows | `KL(rel_t ‖ rel_s)`, `rel = softmax(X Xᵀ/√d_r)` | MiniLM, MiniLMv2 |
//! | [`minilm_loss`] | — | attention KL + value-relation KL | MiniLM (Wang et al. 2020) |
//! | [`minilm_v2_loss`] | — | Q-Q + K-K + V-V relation KLs | MiniLMv2 (Wang et al. 2021) |
//!
//! # Heads
//! [`HeadReduce`] says what happens when teacher and student head counts may differ:
//! `Match` requires equal counts (and panics otherwise), `Mean` averages each map over its heads
//! first (`H' = 1`; for probabilities the average is still a distribution), `Sum` sums them
//! (TextBrewer's `att_mse_sum_loss`; MSE only).
//!
//! # Masks and `-inf`
//! * MSE: a `(query, key)` pair counts when both tokens are real, `M[b,i,j] = m[b,i]·m[b,j]`;
//!   [`Reduction::Mean`] then divides by `H' · Σ_b count_b²` (TextBrewer with a mask). Masked
//!   pairs are set to 0 in both maps **before** the difference, so `-inf` or `-1e4` entries there
//!   never reach the arithmetic. Without a mask, [`Reduction::Mean`] is the mean over every entry.
//! * A `-inf` score (a masked key, a causal mask) in either map is set to 0 in both maps before the
//!   MSE: it contributes 0 and gets a zero gradient instead of NaN.
//! * KL: padded keys are set to `-inf` in both score maps before the softmax, and padded queries
//!   are dropped rows; [`Reduction::Mean`] is the mean over real `(head, query)` rows, MiniLM's
//!   `1/(A_h·|x|)`. A row whose keys are all masked is empty: it gives 0, never NaN.
//! * Probability inputs are taken as they are: padded keys should already have probability 0
//!   (as a softmax over masked scores gives); the mask then removes padded queries.
//!
//! TextBrewer zeroes every entry `≤ −1e-3` (all negative scores, not only masked ones) when no
//! mask is given; [`attention_mse_textbrewer`] reproduces that for comparisons only.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use crate::combine::LossTerms;
use crate::error::{KdError, check_positive};
use crate::layer_map::LayerMap;
use crate::logits::soft::kl_rows_from_log_probs;
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::temperature::{Temperature, temperature_log_softmax, temperature_softmax};

/// How teacher and student heads are brought together; see the [module docs](self).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum HeadReduce {
    /// Head `h` of the student meets head `h` of the teacher; the counts must be equal.
    Match,
    /// Average each map over its heads first (`H' = 1`); any head counts.
    Mean,
    /// Sum each map over its heads first (`H' = 1`; TextBrewer `att_mse_sum_loss`); MSE only.
    Sum,
}

/// How teacher and student heads meet in an attention **KL** (a sum over heads is not a
/// distribution, so there is no `Sum`).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum KlHeads {
    /// Head `h` of the student meets head `h` of the teacher; the counts must be equal.
    Match,
    /// Average each model's per-head distributions first; any head counts.
    Mean,
}

impl From<KlHeads> for HeadReduce {
    fn from(h: KlHeads) -> HeadReduce {
        match h {
            KlHeads::Match => HeadReduce::Match,
            KlHeads::Mean => HeadReduce::Mean,
        }
    }
}

/// Which space a list of attention maps lives in (for [`attention_layers_mse`]).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum AttentionSpace {
    /// Pre-softmax scores ([`attention_mse_scores`]).
    Scores,
    /// Softmax probabilities ([`attention_mse_probs`]).
    Probs,
}

// ---------------------------------------------------------------------------------------------
// Shape checks and masks
// ---------------------------------------------------------------------------------------------

fn check_maps(s_name: &str, s: &[usize; 4], t_name: &str, t: &[usize; 4]) {
    assert!(
        s[2] == s[3],
        "{s_name}: shape {s:?} is not [B, H, S, S] (queries and keys differ)"
    );
    assert!(
        t[0] == s[0] && t[2] == s[2] && t[3] == s[3],
        "{t_name}: shape {t:?} does not match {s_name} shape {s:?} (batch and sequence length must agree)"
    );
}

fn check_mask(mask: &Tensor<2, Bool>, b: usize, s: usize) {
    let d = mask.dims();
    assert!(
        d == [b, s],
        "padding_mask: shape {d:?} does not match the attention maps' [B, S] = {:?}",
        [b, s]
    );
}

fn reduce_heads(
    s_name: &str,
    s: Tensor<4>,
    t_name: &str,
    t: Tensor<4>,
    heads: HeadReduce,
) -> (Tensor<4>, Tensor<4>) {
    match heads {
        HeadReduce::Match => {
            let (sd, td) = (s.dims(), t.dims());
            assert!(
                sd[1] == td[1],
                "{t_name}: {} heads (shape {td:?}) do not match {s_name}'s {} heads (shape {sd:?}); \
                 HeadReduce::Match needs equal head counts (use HeadReduce::Mean)",
                td[1],
                sd[1]
            );
            (s, t)
        }
        HeadReduce::Mean => (s.mean_dim(1), t.mean_dim(1)),
        HeadReduce::Sum => (s.sum_dim(1), t.sum_dim(1)),
    }
}

/// `[B, S]` → pair mask `[B, H, S, S]`, `m_i · m_j`.
fn pair_mask(mask: &Tensor<2, Bool>, h: usize) -> Tensor<4, Bool> {
    let [b, s] = mask.dims();
    let q = mask.clone().reshape([b, 1, s, 1]).expand([b, h, s, s]);
    let k = key_mask(mask, h);
    q.bool_and(k)
}

/// `[B, S]` → key mask `[B, H, S, S]`, `m_j`.
fn key_mask(mask: &Tensor<2, Bool>, h: usize) -> Tensor<4, Bool> {
    let [b, s] = mask.dims();
    mask.clone().reshape([b, 1, 1, s]).expand([b, h, s, s])
}

/// `[B, S]` → query rows `[B, H, S]`.
fn query_rows(mask: &Tensor<2, Bool>, h: usize) -> RowMask {
    let [b, s] = mask.dims();
    RowMask::new(mask.clone().reshape([b, 1, s]).expand([b, h, s]))
}

// ---------------------------------------------------------------------------------------------
// MSE
// ---------------------------------------------------------------------------------------------

fn mse_core(
    names: (&str, &str),
    student: Tensor<4>,
    teacher: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: HeadReduce,
    threshold: Option<f64>,
    zero_inf: bool,
) -> RowLoss {
    let (sd, td) = (student.dims(), teacher.dims());
    check_maps(names.0, &sd, names.1, &td);
    if let Some(m) = &padding_mask {
        check_mask(m, sd[0], sd[2]);
    }
    let (mut s, mut t) = reduce_heads(names.0, student, names.1, teacher.detach(), heads);
    if threshold.is_none() && padding_mask.is_none() {
        // Kept lazily: a reduction runs the fused squared-error kernel where it exists.
        let [b, h, q, k] = s.dims();
        return RowLoss::squares(
            s.reshape([b * h * q, k]),
            t.reshape([b * h * q, k]),
            &[b, h, q, k],
            1,
            zero_inf,
            true,
        );
    }
    if let Some(th) = threshold {
        s = s.clone().mask_fill(s.lower_equal_elem(th), 0.0);
        t = t.clone().mask_fill(t.lower_equal_elem(th), 0.0);
    }
    if zero_inf {
        let inf = s.clone().is_inf().bool_or(t.clone().is_inf());
        s = s.mask_fill(inf.clone(), 0.0);
        t = t.mask_fill(inf, 0.0);
    }
    let [b, h, q, k] = s.dims();
    let pairs = padding_mask.map(|m| pair_mask(&m, h));
    if let Some(p) = &pairs {
        let drop = p.clone().bool_not();
        s = s.mask_fill(drop.clone(), 0.0);
        t = t.mask_fill(drop, 0.0);
    }
    let values = s.sub(t).square().reshape([b * h * q * k]);
    let rows = RowLoss::new(values, &[b, h, q, k], 1);
    match pairs {
        Some(p) => rows.masked(&RowMask::new(p)),
        None => rows,
    }
}

/// Attention MSE on pre-softmax **scores**: one row per `(batch, head, query, key)` pair.
///
/// ```text
/// A_s, A_t ← head-reduced maps ([`HeadReduce`]);   entries that are ±inf in either map → 0 in both
/// r_bhij = M_bij · (A_s,bhij − A_t,bhij)²,   M_bij = m_bi · m_bj   (1 without a mask)
/// Mean:  Σ r / (H' · Σ_b count_b²)            (TextBrewer att_mse_loss with a mask; TinyBERT)
/// ```
///
/// The teacher is detached. A fully masked batch gives 0 with a zero gradient.
///
/// # Shapes
/// - `student_scores`: `[B, H_s, S, S]`, `teacher_scores`: `[B, H_t, S, S]`
/// - `padding_mask`: `[B, S]`, `true` for a real token
/// - returns a [`RowLoss`] of rows `[B, H', S, S]`, `row_size = 1` (masked when a mask is given)
///
/// # Panics
/// If batch or sequence lengths differ, a map is not square, the mask is not `[B, S]`, or the head
/// counts differ under [`HeadReduce::Match`].
///
/// # Example
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let inf = f32::NEG_INFINITY;
/// let s = Tensor::<4>::from_floats([[[[1.0, inf], [2.0, inf]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[0.0, inf], [2.0, inf]]]], &device);
/// let mask = Tensor::<2, Bool>::from_data([[true, false]], &device);
/// let loss = attention_mse_scores(s, t, Some(mask), HeadReduce::Match).reduce(Reduction::Mean);
/// assert_eq!(loss.into_scalar::<f32>(), 1.0); // one real pair (0, 0)
/// ```
///
/// # References
/// Jiao et al., *TinyBERT*, 2020; Yang et al., *TextBrewer*, 2020.
pub fn attention_mse_scores(
    student_scores: Tensor<4>,
    teacher_scores: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: HeadReduce,
) -> RowLoss {
    mse_core(
        ("student_scores", "teacher_scores"),
        student_scores,
        teacher_scores,
        padding_mask,
        heads,
        None,
        true,
    )
}

/// Attention MSE on softmax **probabilities**; the same rows and reductions as
/// [`attention_mse_scores`] (without the `-inf` rule, which probabilities do not need).
///
/// ```text
/// r_bhij = M_bij · (P_s,bhij − P_t,bhij)²        Mean: Σ r / (H' · Σ_b count_b²)
/// ```
///
/// # Shapes
/// - `student_probs`: `[B, H_s, S, S]`, `teacher_probs`: `[B, H_t, S, S]`, `padding_mask`: `[B, S]`
/// - returns a [`RowLoss`] of rows `[B, H', S, S]`, `row_size = 1`
///
/// # Panics
/// As [`attention_mse_scores`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[0.5, 0.5], [1.0, 0.0]]], [[[0.5, 0.5], [1.0, 0.0]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.5, 0.5], [1.0, 0.0]]]], &device);
/// let loss = attention_mse_probs(s, t, None, HeadReduce::Mean).reduce(Reduction::Mean);
/// assert!((loss.into_scalar::<f32>() - 0.0625).abs() < 1e-7); // 2 · 0.25 / 8
/// ```
pub fn attention_mse_probs(
    student_probs: Tensor<4>,
    teacher_probs: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: HeadReduce,
) -> RowLoss {
    mse_core(
        ("student_probs", "teacher_probs"),
        student_probs,
        teacher_probs,
        padding_mask,
        heads,
        None,
        false,
    )
}

/// TextBrewer's `att_mse_loss` / `att_mse_sum_loss` **for comparisons only**: after the head
/// reduction, every entry `≤ threshold` is set to 0 in both maps (TextBrewer uses `-1e-3`, which
/// drops all negative scores, not only masked ones), then as [`attention_mse_scores`].
///
/// Prefer [`attention_mse_scores`] with a padding mask: it drops exactly the padded pairs.
///
/// # Shapes
/// As [`attention_mse_scores`].
///
/// # Panics
/// As [`attention_mse_scores`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[1.0, -5.0], [2.0, 0.0]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[0.0, -1.0], [2.0, 0.0]]]], &device);
/// let loss = attention_mse_textbrewer(s, t, None, HeadReduce::Match, -1e-3).reduce(Reduction::Mean);
/// assert_eq!(loss.into_scalar::<f32>(), 0.25); // the -5 vs -1 entry is zeroed
/// ```
pub fn attention_mse_textbrewer(
    student_scores: Tensor<4>,
    teacher_scores: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: HeadReduce,
    threshold: f64,
) -> RowLoss {
    mse_core(
        ("student_scores", "teacher_scores"),
        student_scores,
        teacher_scores,
        padding_mask,
        heads,
        Some(threshold),
        true,
    )
}

/// Attention MSE over many layers: one reduced term per pair of `map`, named `"attention
/// s{m}->t{n}"`, weight 1 (TinyBERT sums them).
///
/// # Shapes
/// - `student_maps`: `map.student_layers()` tensors `[B, H_s, S, S]`; `teacher_maps`:
///   `map.teacher_layers()` tensors `[B, H_t, S, S]`; `padding_mask`: `[B, S]`
///
/// # Panics
/// If the list lengths differ from the map's, or as [`attention_mse_scores`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let map = LayerMap::uniform(2, 4).unwrap(); // attention lists: (0, 1), (1, 3)
/// let s: Vec<_> = (0..2).map(|_| Tensor::<4>::zeros([1, 2, 3, 3], &device)).collect();
/// let t: Vec<_> = (0..4).map(|_| Tensor::<4>::zeros([1, 4, 3, 3], &device)).collect();
/// let terms = attention_layers_mse(&s, &t, &map, None, HeadReduce::Mean, AttentionSpace::Scores, Reduction::Mean);
/// assert_eq!(terms.terms()[1].name, "attention s1->t3");
/// ```
pub fn attention_layers_mse(
    student_maps: &[Tensor<4>],
    teacher_maps: &[Tensor<4>],
    map: &LayerMap,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: HeadReduce,
    space: AttentionSpace,
    reduction: Reduction,
) -> LossTerms {
    map.assert_lists(
        "student_maps",
        student_maps.len(),
        "teacher_maps",
        teacher_maps.len(),
    );
    let mut terms = LossTerms::new();
    for &(m, n) in map.pairs() {
        let (s, t, mask) = (
            student_maps[m].clone(),
            teacher_maps[n].clone(),
            padding_mask.clone(),
        );
        let rows = match space {
            AttentionSpace::Scores => attention_mse_scores(s, t, mask, heads),
            AttentionSpace::Probs => attention_mse_probs(s, t, mask, heads),
        };
        terms = terms
            .with(format!("attention s{m}->t{n}"), 1.0, rows.reduce(reduction))
            .expect("weight 1 is finite");
    }
    terms
}

// ---------------------------------------------------------------------------------------------
// KL
// ---------------------------------------------------------------------------------------------

/// Per-row `KL(p ‖ q)` from probabilities `[R, V]`, `0 · log 0 = 0`, no NaN where `p = q = 0`.
fn kl_rows_from_probs(p: Tensor<2>, q: Tensor<2>) -> Tensor<1> {
    let r = p.dims()[0];
    let zero = p.clone().equal_elem(0.0);
    let log_p = p.clone().mask_fill(zero.clone(), 1.0).log();
    let log_q = q.mask_fill(zero.clone(), 1.0).log();
    p.mul(log_p.sub(log_q))
        .mask_fill(zero, 0.0)
        .sum_dim(1)
        .reshape([r])
}

/// Row-wise attention KL from pre-softmax **scores**: `KL(A_t ‖ A_s)` for each query row, with
/// `A = softmax(scores)` over the keys.
///
/// ```text
/// A_t,bhi = softmax_j(teacher_scores_bhij),  A_s,bhi = softmax_j(student_scores_bhij)   (padded keys → -inf)
/// r_bhi   = Σ_j A_t,bhij · (log A_t,bhij − log A_s,bhij)            (0 · log 0 = 0)
/// Mean:   Σ r over real (head, query) rows / their count            (MiniLM's 1/(A_h |x|))
/// ```
///
/// With [`KlHeads::Mean`] the per-head distributions are averaged before the KL (still a
/// distribution). The teacher is detached.
///
/// # Shapes
/// - `student_scores`: `[B, H_s, S, S]`, `teacher_scores`: `[B, H_t, S, S]`, `padding_mask`: `[B, S]`
/// - returns a [`RowLoss`] of rows `[B, H', S]`, `row_size = S` (masked when a mask is given)
///
/// # Panics
/// As [`attention_mse_scores`] (head counts differ under [`KlHeads::Match`]).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[1.0, 2.0], [0.0, 0.0]]]], &device);
/// let kl = attention_kl_scores(s.clone(), s, None, KlHeads::Match).reduce(Reduction::Mean);
/// assert!(kl.into_scalar::<f32>().abs() < 1e-6);
/// ```
///
/// # References
/// Wang et al., *MiniLM: Deep Self-Attention Distillation*, 2020.
pub fn attention_kl_scores(
    student_scores: Tensor<4>,
    teacher_scores: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: KlHeads,
) -> RowLoss {
    let (sd, td) = (student_scores.dims(), teacher_scores.dims());
    check_maps("student_scores", &sd, "teacher_scores", &td);
    if let Some(m) = &padding_mask {
        check_mask(m, sd[0], sd[2]);
    }
    let (mut s, mut t) = (student_scores, teacher_scores.detach());
    if let Some(m) = &padding_mask {
        let drop_s = key_mask(m, sd[1]).bool_not();
        let drop_t = key_mask(m, td[1]).bool_not();
        s = s.mask_fill(drop_s, f32::NEG_INFINITY);
        t = t.mask_fill(drop_t, f32::NEG_INFINITY);
    }
    let [b, _, q, k] = sd;
    let (values, h) = match heads {
        KlHeads::Match => {
            let (s, t) = reduce_heads("student_scores", s, "teacher_scores", t, HeadReduce::Match);
            let h = sd[1];
            let log_q = temperature_log_softmax(s, Temperature::ONE).reshape([b * h * q, k]);
            let log_p = temperature_log_softmax(t, Temperature::ONE).reshape([b * h * q, k]);
            (kl_rows_from_log_probs(log_p, log_q), h)
        }
        KlHeads::Mean => {
            let ps = temperature_softmax(s, Temperature::ONE).mean_dim(1);
            let pt = temperature_softmax(t, Temperature::ONE).mean_dim(1);
            (
                kl_rows_from_probs(pt.reshape([b * q, k]), ps.reshape([b * q, k])),
                1,
            )
        }
    };
    let rows = RowLoss::new(values, &[b, h, q], k);
    match &padding_mask {
        Some(m) => rows.masked(&query_rows(m, h)),
        None => rows,
    }
}

/// Row-wise attention KL from softmax **probabilities**: `KL(P_t ‖ P_s)` per query row.
///
/// ```text
/// r_bhi = Σ_j P_t,bhij · (log P_t,bhij − log P_s,bhij)        (0 · log 0 = 0; P_s = 0 < P_t gives +inf)
/// ```
///
/// The padding mask removes padded queries; padded keys must already have probability 0.
///
/// # Shapes
/// As [`attention_kl_scores`].
///
/// # Panics
/// As [`attention_kl_scores`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[0.5, 0.5], [1.0, 0.0]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[1.0, 0.0], [1.0, 0.0]]]], &device);
/// let kl = attention_kl_probs(s, t, None, KlHeads::Match).values();
/// let v = kl.into_data().try_to_vec::<f32>().unwrap();
/// assert!((v[0] - 2f32.ln()).abs() < 1e-6 && v[1] == 0.0);
/// ```
pub fn attention_kl_probs(
    student_probs: Tensor<4>,
    teacher_probs: Tensor<4>,
    padding_mask: Option<Tensor<2, Bool>>,
    heads: KlHeads,
) -> RowLoss {
    let (sd, td) = (student_probs.dims(), teacher_probs.dims());
    check_maps("student_probs", &sd, "teacher_probs", &td);
    if let Some(m) = &padding_mask {
        check_mask(m, sd[0], sd[2]);
    }
    let (s, t) = reduce_heads(
        "student_probs",
        student_probs,
        "teacher_probs",
        teacher_probs.detach(),
        heads.into(),
    );
    let [b, h, q, k] = s.dims();
    let values = kl_rows_from_probs(t.reshape([b * h * q, k]), s.reshape([b * h * q, k]));
    let rows = RowLoss::new(values, &[b, h, q], k);
    match &padding_mask {
        Some(m) => rows.masked(&query_rows(m, h)),
        None => rows,
    }
}

/// Configuration of [`AttentionMseLoss`].
#[derive(Config, Debug)]
pub struct AttentionMseLossConfig {
    /// How teacher and student heads meet.
    #[config(default = "HeadReduce::Match")]
    pub heads: HeadReduce,
}

impl AttentionMseLossConfig {
    /// Builds the loss (nothing can be invalid today; `Result` for symmetry with other configs).
    ///
    /// # Errors
    /// None at present.
    pub fn try_init(&self) -> Result<AttentionMseLoss, KdError> {
        Ok(self.init())
    }

    /// Builds the loss.
    pub fn init(&self) -> AttentionMseLoss {
        AttentionMseLoss { heads: self.heads }
    }
}

/// Module form of [`attention_mse_scores`] / [`attention_mse_probs`].
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = AttentionMseLossConfig::new().with_heads(HeadReduce::Mean).init();
/// let s = Tensor::<4>::zeros([2, 4, 3, 3], &device);
/// let t = Tensor::<4>::ones([2, 12, 3, 3], &device);
/// assert_eq!(loss.forward_scores(s, t, None, Reduction::Mean).into_scalar::<f32>(), 1.0);
/// ```
#[derive(Module, Debug)]
pub struct AttentionMseLoss {
    /// How teacher and student heads meet.
    #[module(skip)]
    pub heads: HeadReduce,
}

impl AttentionMseLoss {
    /// [`attention_mse_scores`], reduced.
    ///
    /// # Panics
    /// As [`attention_mse_scores`].
    pub fn forward_scores(
        &self,
        student_scores: Tensor<4>,
        teacher_scores: Tensor<4>,
        padding_mask: Option<Tensor<2, Bool>>,
        reduction: Reduction,
    ) -> Tensor<1> {
        attention_mse_scores(student_scores, teacher_scores, padding_mask, self.heads)
            .reduce(reduction)
    }

    /// [`attention_mse_probs`], reduced.
    ///
    /// # Panics
    /// As [`attention_mse_probs`].
    pub fn forward_probs(
        &self,
        student_probs: Tensor<4>,
        teacher_probs: Tensor<4>,
        padding_mask: Option<Tensor<2, Bool>>,
        reduction: Reduction,
    ) -> Tensor<1> {
        attention_mse_probs(student_probs, teacher_probs, padding_mask, self.heads)
            .reduce(reduction)
    }
}

/// Configuration of [`AttentionKlLoss`].
#[derive(Config, Debug)]
pub struct AttentionKlLossConfig {
    /// How teacher and student heads meet.
    #[config(default = "KlHeads::Match")]
    pub heads: KlHeads,
}

impl AttentionKlLossConfig {
    /// Builds the loss (nothing can be invalid today; `Result` for symmetry with other configs).
    ///
    /// # Errors
    /// None at present.
    pub fn try_init(&self) -> Result<AttentionKlLoss, KdError> {
        Ok(self.init())
    }

    /// Builds the loss.
    pub fn init(&self) -> AttentionKlLoss {
        AttentionKlLoss { heads: self.heads }
    }
}

/// Module form of [`attention_kl_scores`] / [`attention_kl_probs`].
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = AttentionKlLossConfig::new().init();
/// let s = Tensor::<4>::zeros([1, 2, 3, 3], &device);
/// assert!(loss.forward_scores(s.clone(), s, None, Reduction::Mean).into_scalar::<f32>().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct AttentionKlLoss {
    /// How teacher and student heads meet.
    #[module(skip)]
    pub heads: KlHeads,
}

impl AttentionKlLoss {
    /// [`attention_kl_scores`], reduced.
    ///
    /// # Panics
    /// As [`attention_kl_scores`].
    pub fn forward_scores(
        &self,
        student_scores: Tensor<4>,
        teacher_scores: Tensor<4>,
        padding_mask: Option<Tensor<2, Bool>>,
        reduction: Reduction,
    ) -> Tensor<1> {
        attention_kl_scores(student_scores, teacher_scores, padding_mask, self.heads)
            .reduce(reduction)
    }

    /// [`attention_kl_probs`], reduced.
    ///
    /// # Panics
    /// As [`attention_kl_probs`].
    pub fn forward_probs(
        &self,
        student_probs: Tensor<4>,
        teacher_probs: Tensor<4>,
        padding_mask: Option<Tensor<2, Bool>>,
        reduction: Reduction,
    ) -> Tensor<1> {
        attention_kl_probs(student_probs, teacher_probs, padding_mask, self.heads).reduce(reduction)
    }
}

// ---------------------------------------------------------------------------------------------
// MiniLM relations
// ---------------------------------------------------------------------------------------------

/// `[B, S, D]` → scaled self-relation scores `[B, R, S, S]`, `X_r X_rᵀ / √(D/R)`.
fn relation_scores(name: &str, x: Tensor<3>, r: usize) -> Tensor<4> {
    let [b, s, d] = x.dims();
    assert!(
        r > 0 && d % r == 0,
        "{name}: width {d} (shape {:?}) is not divisible by relation_heads = {r}",
        [b, s, d]
    );
    let dr = d / r;
    let xr = x.reshape([b, s, r, dr]).swap_dims(1, 2);
    xr.clone()
        .matmul(xr.swap_dims(2, 3))
        .div_scalar((dr as f64).sqrt())
}

/// Self-relation KL (MiniLM's value relation, MiniLMv2's Q-Q / K-K / V-V): split each state's
/// width into `R` relation heads, form `rel = softmax(X_r X_rᵀ / √d_r)` over the keys, and take
/// the row-wise `KL(rel_t ‖ rel_s)`.
///
/// ```text
/// X: [B, S, D] → X_r: [B, R, S, D/R]          (student D_s and teacher D_t may differ)
/// rel_bri = softmax_j(X_r,bi · X_r,bj / √(D/R))                  (padded keys → -inf)
/// r_bri   = KL(rel_t,bri ‖ rel_s,bri)           Mean: over real (relation head, query) rows
/// ```
///
/// # Shapes
/// - `student_states`: `[B, S, D_s]`, `teacher_states`: `[B, S, D_t]`, `padding_mask`: `[B, S]`
/// - returns a [`RowLoss`] of rows `[B, R, S]`, `row_size = S`
///
/// # Panics
/// If `B` or `S` differ, `relation_heads` is 0 or does not divide `D_s` or `D_t`, or the mask is
/// not `[B, S]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let v_s = Tensor::<3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &device);
/// let v_t = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
/// let kl = self_relation_kl(v_s, v_t, 4, None).reduce(Reduction::Mean);
/// assert!(kl.into_scalar::<f32>() >= 0.0);
/// ```
///
/// # References
/// Wang et al., *MiniLM*, 2020; Wang et al., *MiniLMv2: Multi-Head Self-Attention Relation
/// Distillation*, 2021.
pub fn self_relation_kl(
    student_states: Tensor<3>,
    teacher_states: Tensor<3>,
    relation_heads: usize,
    padding_mask: Option<Tensor<2, Bool>>,
) -> RowLoss {
    let (sd, td) = (student_states.dims(), teacher_states.dims());
    assert!(
        sd[0] == td[0] && sd[1] == td[1],
        "teacher_states: shape {td:?} does not match student_states shape {sd:?} (batch and sequence length must agree)"
    );
    let rs = relation_scores("student_states", student_states, relation_heads);
    let rt = relation_scores("teacher_states", teacher_states.detach(), relation_heads);
    attention_kl_scores(rs, rt, padding_mask, KlHeads::Match)
}

/// The last layer's self-attention inputs for [`minilm_loss`].
#[derive(Debug, Clone)]
pub struct MiniLmLayer {
    /// Pre-softmax attention scores `[B, H, S, S]`.
    pub attention_scores: Tensor<4>,
    /// Values `[B, S, D]`, all heads concatenated (`D = H · d_v`).
    pub values: Tensor<3>,
}

/// MiniLM (v1): self-attention distribution transfer plus value-relation transfer on the last
/// layer, both row-wise KLs averaged over real `(head, query)` rows, reported as two terms
/// `"attention"` and `"value_relation"`, weight 1 each.
///
/// ```text
/// L_AT = 1/(H·|x|) Σ_h Σ_i KL(softmax(A_t,hi) ‖ softmax(A_s,hi))
/// L_VR = 1/(H·|x|) Σ_h Σ_i KL(softmax(V_t,h V_t,hᵀ/√d_t)_i ‖ softmax(V_s,h V_s,hᵀ/√d_s)_i)
/// L    = L_AT + L_VR
/// ```
///
/// Teacher and student must have the same number of heads `H` (the value relation uses `H`
/// relation heads); their widths may differ.
///
/// # Shapes
/// - `attention_scores`: `[B, H, S, S]`, `values`: `[B, S, D]`; `padding_mask`: `[B, S]`
///
/// # Panics
/// If the head counts differ, `H` does not divide a value width, or shapes disagree.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let layer = |d: usize| MiniLmLayer {
///     attention_scores: Tensor::<4>::random([2, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device),
///     values: Tensor::<3>::random([2, 6, d], Distribution::Normal(0.0, 1.0), &device),
/// };
/// let terms = minilm_loss(layer(16), layer(32), None);
/// assert_eq!(terms.terms().len(), 2);
/// assert!(terms.total().into_scalar::<f32>() >= 0.0);
/// ```
///
/// # References
/// Wang et al., *MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
/// Pre-Trained Transformers*, NeurIPS 2020.
pub fn minilm_loss(
    student: MiniLmLayer,
    teacher: MiniLmLayer,
    padding_mask: Option<Tensor<2, Bool>>,
) -> LossTerms {
    let h = student.attention_scores.dims()[1];
    let at = attention_kl_scores(
        student.attention_scores,
        teacher.attention_scores,
        padding_mask.clone(),
        KlHeads::Match,
    )
    .reduce(Reduction::Mean);
    let vr =
        self_relation_kl(student.values, teacher.values, h, padding_mask).reduce(Reduction::Mean);
    LossTerms::new()
        .with("attention", 1.0, at)
        .and_then(|t| t.with("value_relation", 1.0, vr))
        .expect("weight 1 is finite")
}

/// The last layer's query, key and value states for [`minilm_v2_loss`], each `[B, S, D]` with all
/// heads concatenated.
#[derive(Debug, Clone)]
pub struct QkvStates {
    /// Queries `[B, S, D]`.
    pub queries: Tensor<3>,
    /// Keys `[B, S, D]`.
    pub keys: Tensor<3>,
    /// Values `[B, S, D]`.
    pub values: Tensor<3>,
}

/// MiniLMv2: multi-head self-attention **relation** distillation. Queries, keys and values of
/// student and teacher are each split into the same number `R` of relation heads (independent of
/// either model's attention heads), and three [`self_relation_kl`] terms are reported:
/// `"q-q"`, `"k-k"`, `"v-v"`, weight 1 each, each the mean over real `(relation head, query)` rows.
///
/// ```text
/// L = Σ_{X ∈ {Q, K, V}} 1/(R·|x|) Σ_r Σ_i KL(softmax(X_t,r X_t,rᵀ/√d_t,r)_i ‖ softmax(X_s,r X_s,rᵀ/√d_s,r)_i)
/// ```
///
/// # Shapes
/// - every state `[B, S, D]` (`D_s` for the student, `D_t` for the teacher); `padding_mask`: `[B, S]`
///
/// # Panics
/// If `relation_heads` does not divide a width, or shapes disagree.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let qkv = |d: usize| {
///     let r = || Tensor::<3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
///     QkvStates { queries: r(), keys: r(), values: r() }
/// };
/// let terms = minilm_v2_loss(qkv(12), qkv(48), 6, None);
/// assert_eq!(terms.terms()[0].name, "q-q");
/// ```
///
/// # References
/// Wang et al., *MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
/// Pretrained Transformers*, Findings of ACL 2021.
pub fn minilm_v2_loss(
    student: QkvStates,
    teacher: QkvStates,
    relation_heads: usize,
    padding_mask: Option<Tensor<2, Bool>>,
) -> LossTerms {
    let pairs = [
        ("q-q", student.queries, teacher.queries),
        ("k-k", student.keys, teacher.keys),
        ("v-v", student.values, teacher.values),
    ];
    let mut terms = LossTerms::new();
    for (name, s, t) in pairs {
        let v =
            self_relation_kl(s, t, relation_heads, padding_mask.clone()).reduce(Reduction::Mean);
        terms = terms.with(name, 1.0, v).expect("weight 1 is finite");
    }
    terms
}

/// Configuration of [`MiniLmV2Loss`].
#[derive(Config, Debug)]
pub struct MiniLmV2LossConfig {
    /// Number of relation heads `R` (must divide both models' widths).
    pub relation_heads: usize,
}

impl MiniLmV2LossConfig {
    /// Builds the loss.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] when `relation_heads` is 0.
    pub fn try_init(&self) -> Result<MiniLmV2Loss, KdError> {
        check_positive("relation_heads", self.relation_heads as f64)?;
        Ok(MiniLmV2Loss {
            relation_heads: self.relation_heads,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// When `relation_heads` is 0.
    pub fn init(&self) -> MiniLmV2Loss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`minilm_v2_loss`].
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = MiniLmV2LossConfig::new(2).init();
/// let x = || Tensor::<3>::ones([1, 3, 4], &device);
/// let qkv = || QkvStates { queries: x(), keys: x(), values: x() };
/// assert!(loss.forward(qkv(), qkv(), None).total().into_scalar::<f32>().abs() < 1e-6);
/// assert!(MiniLmV2LossConfig::new(0).try_init().is_err());
/// ```
#[derive(Module, Debug)]
pub struct MiniLmV2Loss {
    /// Number of relation heads `R`.
    pub relation_heads: usize,
}

impl MiniLmV2Loss {
    /// The three relation terms (see [`minilm_v2_loss`]).
    ///
    /// # Panics
    /// As [`minilm_v2_loss`].
    pub fn forward(
        &self,
        student: QkvStates,
        teacher: QkvStates,
        padding_mask: Option<Tensor<2, Bool>>,
    ) -> LossTerms {
        minilm_v2_loss(student, teacher, self.relation_heads, padding_mask)
    }
}
