//! Row-wise attention KL on scores or probabilities (MiniLM) and its Config / Module.

use super::mask::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// KL
// ---------------------------------------------------------------------------------------------

/// Per-row `KL(p ‖ q)` from probabilities `[R, V]`, `0 · log 0 = 0`, no NaN where `p = q = 0`.
pub(super) fn kl_rows_from_probs(p: Tensor<2>, q: Tensor<2>) -> Tensor<1> {
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
/// use kd_losses::{KlHeads, attention_kl_scores};
///
/// let device = Device::flex();
/// let s = Tensor::<4>::from_floats([[[[1.0, 2.0], [0.0, 0.0]]]], &device);
/// let kl = attention_kl_scores(s.clone(), s, None, KlHeads::Match).reduce(Reduction::RowMean);
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
/// use kd_losses::{KlHeads, attention_kl_probs};
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
/// use kd_losses::AttentionKlLossConfig;
///
/// let device = Device::flex();
/// let loss = AttentionKlLossConfig::new().init();
/// let s = Tensor::<4>::zeros([1, 2, 3, 3], &device);
/// assert!(loss.forward_scores(s.clone(), s, None, Reduction::RowMean).into_scalar::<f32>().abs() < 1e-6);
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
