//! MiniLM's self-relation KL, `minilm_loss` (v1) and `minilm_v2_loss` with its Config / Module.

use super::kl::*;
use super::*;

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
/// use kd_losses::self_relation_kl;
///
/// let device = Device::flex();
/// let v_s = Tensor::<3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &device);
/// let v_t = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
/// let kl = self_relation_kl(v_s, v_t, 4, None).reduce(Reduction::RowMean);
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
/// use kd_losses::{MiniLmLayer, minilm_loss};
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
    .reduce(Reduction::RowMean);
    let vr = self_relation_kl(student.values, teacher.values, h, padding_mask)
        .reduce(Reduction::RowMean);
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
/// use kd_losses::{QkvStates, minilm_v2_loss};
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
            self_relation_kl(s, t, relation_heads, padding_mask.clone()).reduce(Reduction::RowMean);
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
/// use kd_losses::{MiniLmV2LossConfig, QkvStates};
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
    /// The three relation terms over every position (see [`minilm_v2_loss`]).
    ///
    /// Passing `Some(mask)` is the same as [`forward_masked`](Self::forward_masked); the
    /// argument is kept for compatibility.
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

    /// The three relation terms over the real positions of `padding_mask` (`[B, S]`, `true` =
    /// real token), the form every other loss module names `forward_masked`.
    ///
    /// # Panics
    /// As [`minilm_v2_loss`].
    pub fn forward_masked(
        &self,
        student: QkvStates,
        teacher: QkvStates,
        padding_mask: Tensor<2, Bool>,
    ) -> LossTerms {
        minilm_v2_loss(student, teacher, self.relation_heads, Some(padding_mask))
    }
}
