//! Attention-map MSE on scores or probabilities (TinyBERT, TextBrewer) and its Config / Module.

use super::mask::*;
use super::*;
use crate::hidden::squares::{InfEntries, SquareRows, squared_rows};

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
        return squared_rows(
            s.reshape([b * h * q, k]),
            t.reshape([b * h * q, k]),
            &[b, h, q, k],
            1,
            if zero_inf {
                InfEntries::AsZero
            } else {
                InfEntries::Kept
            },
            SquareRows::PerElement,
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
/// use kd_losses::attention_mse_scores;
///
/// let device = Device::flex();
/// let inf = f32::NEG_INFINITY;
/// let s = Tensor::<4>::from_floats([[[[1.0, inf], [2.0, inf]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[0.0, inf], [2.0, inf]]]], &device);
/// let mask = Tensor::<2, Bool>::from_data([[true, false]], &device);
/// let loss = attention_mse_scores(s, t, Some(mask), HeadReduce::Match).reduce(Reduction::RowMean);
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
/// use kd_losses::attention_mse_probs;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[0.5, 0.5], [1.0, 0.0]]], [[[0.5, 0.5], [1.0, 0.0]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.5, 0.5], [1.0, 0.0]]]], &device);
/// let loss = attention_mse_probs(s, t, None, HeadReduce::Mean).reduce(Reduction::RowMean);
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
/// use kd_losses::attention_mse_textbrewer;
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[1.0, -5.0], [2.0, 0.0]]]], &device);
/// let t = Tensor::<4>::from_floats([[[[0.0, -1.0], [2.0, 0.0]]]], &device);
/// let loss = attention_mse_textbrewer(s, t, None, HeadReduce::Match, -1e-3).reduce(Reduction::RowMean);
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
/// let terms = attention_layers_mse(&s, &t, &map, None, HeadReduce::Mean, AttentionSpace::Scores, Reduction::RowMean);
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
/// use kd_losses::AttentionMseLossConfig;
///
/// let device = Device::flex();
/// let loss = AttentionMseLossConfig::new().with_heads(HeadReduce::Mean).init();
/// let s = Tensor::<4>::zeros([2, 4, 3, 3], &device);
/// let t = Tensor::<4>::ones([2, 12, 3, 3], &device);
/// assert_eq!(loss.forward_scores(s, t, None, Reduction::RowMean).into_scalar::<f32>(), 1.0);
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
