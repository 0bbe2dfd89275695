//! Hidden-state distillation: MSE with a learnable projection (TinyBERT, TextBrewer), cosine
//! (DistilBERT) and normalized MSE (PKD), for one layer or for many through a [`LayerMap`](crate::layer_map::LayerMap).
//!
//! ```text
//! ĥ_s = h_s · W + b                     (W: [D_s, D_t], stored [in, out]; identity when absent)
//! mse row          r = Σ_d (ĥ_s,d − h_t,d)²
//! cosine row       r = 1 − ⟨ĥ_s, h_t⟩ / sqrt((|ĥ_s|² + 1e-12) · (|h_t|² + 1e-12))
//! normalized row   r = Σ_d (ĥ_s,d / max(|ĥ_s|, 1e-12) − h_t,d / max(|h_t|, 1e-12))²
//! ```
//!
//! A **row** is one token (`[B, S, D]` has `B·S` rows). Every function returns a [`RowLoss`], so
//! a `[B, S]` token mask and the reduction are explicit steps:
//!
//! | loss | reduction | value |
//! |---|---|---|
//! | MSE, TextBrewer `hid_mse_loss` | [`Reduction::ElementMean`](crate::reduction::Reduction::ElementMean) | `Σ m·(ĥ_s − h_t)² / (max(Σm, 1) · D_t)` |
//! | cosine, DistilBERT / TextBrewer `cos_loss` | [`Reduction::RowMean`](crate::reduction::Reduction::RowMean) | `Σ m·(1 − cos) / max(Σm, 1)` |
//! | normalized MSE, PKD | [`Reduction::Sum`](crate::reduction::Reduction::Sum) or `Mean` | `Σ m·‖ĥ_s/‖ĥ_s‖ − h_t/‖h_t‖‖²` (÷ `max(Σm,1)`) |
//!
//! The projection `W` is a Burn [`Module`](burn::module::Module) ([`HiddenProjection`], built by
//! [`HiddenProjectionConfig`]): put it in the student's module tree (or hand it to the optimizer
//! together with the student) and it trains with the student. The teacher is always detached.

use burn::tensor::Tensor;

mod loss;
mod projection;
pub(crate) mod squares;

pub use loss::{
    HiddenDistance, HiddenLoss, HiddenLossConfig, LayeredHiddenLoss, ProjectionSharing,
};
pub use projection::{HiddenProjection, HiddenProjectionConfig, ProjectionInit};

use crate::numerics::NORM_EPS;
use crate::reduction::RowLoss;
use crate::rows::{flatten_rows, same_dtype};
use squares::{InfEntries, SquareRows, squared_rows};

// ---------------------------------------------------------------------------------------------
// Projection
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Pure per-row distances
// ---------------------------------------------------------------------------------------------

fn assert_same_hidden(student: &[usize], teacher: &[usize]) {
    assert!(
        student == teacher,
        "teacher_hidden: shape {teacher:?} does not match student_hidden shape {student:?} \
         (project the student to the teacher's width first)"
    );
}

/// Hidden-state MSE per token: `r = Σ_d (h_s,d − h_t,d)²` (the student already projected).
///
/// ```text
/// r_i = Σ_d (s_id − t_id)²                       ∂r_i/∂s_id = 2 (s_id − t_id)
/// ElementMean:  Σ_i m_i r_i / (max(Σ_i m_i, 1) · D)     (TextBrewer hid_mse_loss, masked)
/// ```
///
/// The teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]` (`[B, S, D]` or `[N, D]`), equal shapes
/// - returns a [`RowLoss`] with one row per token, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::hidden_mse;
///
/// let device = Device::flex();
/// let s = Tensor::<3>::from_floats([[[1.0, 0.0], [9.0, 9.0]]], &device);
/// let t = Tensor::<3>::from_floats([[[0.0, 0.0], [0.0, 0.0]]], &device);
/// let mask = RowMask::new(Tensor::<2, Bool>::from_data([[true, false]], &device));
/// let loss = hidden_mse(s, t).masked(&mask).reduce(Reduction::ElementMean);
/// assert_eq!(loss.into_scalar::<f32>(), 0.5); // 1 / (1 token · 2 dims)
/// ```
///
/// # References
/// Jiao et al., *TinyBERT*, 2020; Yang et al., *TextBrewer*, 2020.
pub fn hidden_mse<const D: usize>(student_hidden: Tensor<D>, teacher_hidden: Tensor<D>) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    squared_rows(s, t, &rows, d, InfEntries::Kept, SquareRows::RowSums)
}

/// Cosine distance per token (DistilBERT): `r = 1 − cos(h_s, h_t)`.
///
/// ```text
/// cos_i = ⟨s_i, t_i⟩ / sqrt((|s_i|² + ε)(|t_i|² + ε)),  ε = 1e-12   (PyTorch cosine_embedding_loss)
/// r_i   = 1 − cos_i                                       ∂r_i/∂s_i = −(t_i/den − cos_i · s_i/(|s_i|² + ε))
/// Mean: Σ_i m_i r_i / max(Σ_i m_i, 1)                    (TextBrewer cos_loss)
/// ```
///
/// A zero vector has `cos = 0` (row value 1) and a finite gradient. The teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]`, equal shapes
/// - returns a [`RowLoss`] with one row per token, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::hidden_cosine;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &device);
/// let t = Tensor::<2>::from_floats([[3.0, 0.0], [2.0, 0.0]], &device);
/// let v = hidden_cosine(s, t).values().into_data().try_to_vec::<f32>().unwrap();
/// assert!(v[0].abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-6);
/// ```
///
/// # References
/// Sanh et al., *DistilBERT*, 2019.
pub fn hidden_cosine<const D: usize>(
    student_hidden: Tensor<D>,
    teacher_hidden: Tensor<D>,
) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    RowLoss::from_rows(vec![s, t], &rows, d, |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let n = s.dims()[0];
        let dot = s.clone().mul(t.clone()).sum_dim(1);
        let ss = s.square().sum_dim(1).add_scalar(NORM_EPS);
        let tt = t.square().sum_dim(1).add_scalar(NORM_EPS);
        let cos = dot.div(ss.mul(tt).sqrt());
        cos.neg().add_scalar(1.0).reshape([n])
    })
}

/// `x / max(|x|, ε)` over the last dimension of `[R, D]`, with a zero gradient through the norm
/// where it is clamped (no NaN at a zero vector).
pub(crate) fn l2_normalize_rows(x: Tensor<2>, eps: f64) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).clamp_min(eps * eps).sqrt();
    x.div(norm)
}

/// PKD's normalized MSE per token: both vectors scaled to unit L2 norm, then the squared
/// distance `r = ‖ĥ_s/‖ĥ_s‖ − h_t/‖h_t‖‖² = 2 − 2 cos`.
///
/// ```text
/// u_i = s_i / max(|s_i|, 1e-12),   v_i = t_i / max(|t_i|, 1e-12)
/// r_i = Σ_d (u_id − v_id)²
/// ```
///
/// PKD (Sun et al. 2019) sums this over the distilled layers' `[CLS]` vectors and averages over
/// the batch: select the `[CLS]` rows (or mask the others) and use [`Reduction::RowMean`](crate::reduction::Reduction::RowMean). The
/// teacher is detached.
///
/// # Shapes
/// - `student_hidden`, `teacher_hidden`: `[..., D]`, equal shapes
/// - returns a [`RowLoss`] with one row per vector, `row_size = D`
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::hidden_normalized_mse;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[10.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 0.5]], &device);
/// let v = hidden_normalized_mse(s, t).reduce(Reduction::Sum).into_scalar::<f32>();
/// assert!((v - 2.0).abs() < 1e-6); // orthogonal unit vectors
/// ```
///
/// # References
/// Sun et al., *Patient Knowledge Distillation for BERT Model Compression*, 2019.
pub fn hidden_normalized_mse<const D: usize>(
    student_hidden: Tensor<D>,
    teacher_hidden: Tensor<D>,
) -> RowLoss {
    assert_same_hidden(&student_hidden.dims(), &teacher_hidden.dims());
    let (student_hidden, teacher_hidden) = same_dtype(student_hidden, teacher_hidden);
    let (s, rows, d) = flatten_rows(student_hidden);
    let (t, _, _) = flatten_rows(teacher_hidden.detach());
    RowLoss::from_rows(vec![s, t], &rows, d, |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let n = s.dims()[0];
        let u = l2_normalize_rows(s, NORM_EPS);
        let v = l2_normalize_rows(t, NORM_EPS);
        u.sub(v).square().sum_dim(1).reshape([n])
    })
}

// ---------------------------------------------------------------------------------------------
// Single-layer module
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Multi-layer module
// ---------------------------------------------------------------------------------------------
