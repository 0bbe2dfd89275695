//! Several teachers at once: weighted averages of their distributions, or of their losses.
//!
//! With teacher distributions `p_1..p_n` (each `softmax(teacher_j / T)`) and normalised weights
//! `w_j = weight_j / Σ weight`:
//!
//! | [`EnsembleMode`] | teacher used | loss |
//! |---|---|---|
//! | `Probabilities` | `p̄ = Σ_j w_j p_j` (arithmetic mixture, computed as a log-sum-exp) | `D(q, p̄)` |
//! | `LogProbabilities` | `p̄ ∝ exp(Σ_j w_j log p_j)` (geometric mean, renormalised) | `D(q, p̄)` |
//! | `Losses` | each `p_j` | `Σ_j w_j D(q, p_j)` |
//!
//! The arithmetic mixture keeps every token any teacher supports (mass-covering); the geometric
//! mean keeps only tokens all teachers support (a `-inf` in one teacher removes the token).
//! With one teacher, all three equal the single-teacher loss.

use burn::tensor::Tensor;

use crate::divergence::Divergence;
use crate::error::KdError;
use crate::reduction::RowLoss;
use crate::rows::{assert_same_shape, flatten_rows, log_add_exp};
use crate::temperature::Temperature;
use crate::temperature::{RowTemperature, T2Scaling};

/// How the teachers are combined; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnsembleMode {
    /// Average the probabilities: `p̄ = Σ w_j p_j`.
    #[default]
    Probabilities,
    /// Average the log-probabilities and renormalise: `p̄ ∝ Π p_j^{w_j}`.
    LogProbabilities,
    /// Average the per-teacher losses: `Σ w_j D(q, p_j)`.
    Losses,
}

/// Validated teacher weights: finite, positive, normalised to sum to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherWeights(Vec<f64>);

impl TeacherWeights {
    /// Validates and normalises `weights`.
    ///
    /// # Errors
    /// [`KdError::Empty`] for no weights, [`KdError::NotPositive`] for a weight that is not
    /// finite and > 0.
    ///
    /// ```
    /// use kd_losses::ensemble::TeacherWeights;
    /// assert_eq!(TeacherWeights::new(&[1.0, 3.0]).unwrap().get(), &[0.25, 0.75]);
    /// assert!(TeacherWeights::new(&[1.0, 0.0]).is_err());
    /// ```
    pub fn new(weights: &[f64]) -> Result<Self, KdError> {
        if weights.is_empty() {
            return Err(KdError::Empty {
                name: "teacher weights",
            });
        }
        for &w in weights {
            crate::error::check_positive("teacher weight", w)?;
        }
        let total: f64 = weights.iter().sum();
        Ok(TeacherWeights(weights.iter().map(|w| w / total).collect()))
    }

    /// `n` equal weights.
    ///
    /// # Errors
    /// [`KdError::Empty`] when `n = 0`.
    pub fn uniform(n: usize) -> Result<Self, KdError> {
        TeacherWeights::new(&vec![1.0; n])
    }

    /// The normalised weights.
    pub fn get(&self) -> &[f64] {
        &self.0
    }

    /// Number of teachers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false` (construction rejects an empty list).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A [`Divergence`] between the student and a weighted ensemble of teachers, per row.
///
/// ```text
/// Probabilities:    r = s · D(q, Σ_j w_j p_j)
/// LogProbabilities: r = s · D(q, softmax(Σ_j w_j log p_j))
/// Losses:           r = s · Σ_j w_j D(q, p_j)
/// ```
///
/// Every teacher is detached.
///
/// # Shapes
/// - `student_logits` and every `teacher_logits[j]`: `[..., V]`
/// - returns a [`RowLoss`].
///
/// # Panics
/// If `teacher_logits.len()` differs from the number of weights (message of
/// [`KdError::LengthMismatch`]), a teacher's shape differs from the student's, or the
/// divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::Divergence;
/// use kd_losses::ensemble::{ensemble_divergence, EnsembleMode, TeacherWeights};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[0.0, 0.0]], &device);
/// let t1 = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device);
/// let t2 = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0]], &device);
/// let w = TeacherWeights::uniform(2).unwrap();
/// // The mixture of the two one-hot teachers is uniform: the student already matches it.
/// let rows = ensemble_divergence(s, vec![t1, t2], &w, EnsembleMode::Probabilities,
///     Divergence::ForwardKl, Temperature::ONE, T2Scaling::Off);
/// assert!(rows.reduce(Reduction::Sum).into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn ensemble_divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Vec<Tensor<D>>,
    weights: &TeacherWeights,
    mode: EnsembleMode,
    divergence: Divergence,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    if teacher_logits.len() != weights.len() {
        panic!(
            "{}",
            KdError::LengthMismatch {
                name: "teacher_logits",
                expected: weights.len(),
                got: teacher_logits.len(),
            }
        );
    }
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let sd = student_logits.dims();
    for t in &teacher_logits {
        assert_same_shape(&sd, &t.dims());
    }
    let temperature = temperature.into();
    let (s, rows, v) = flatten_rows(student_logits);
    temperature.check_rows(s.dims()[0]);
    let log_q = temperature.log_softmax(s);
    let log_ps: Vec<Tensor<2>> = teacher_logits
        .into_iter()
        .map(|t| temperature.log_softmax(flatten_rows(t.detach()).0))
        .collect();
    let w = weights.get();
    let values = match mode {
        EnsembleMode::Losses => {
            let mut acc: Option<Tensor<1>> = None;
            for (lp, &wj) in log_ps.into_iter().zip(w) {
                let r = divergence.rows_unchecked(log_q.clone(), lp).mul_scalar(wj);
                acc = Some(match acc {
                    Some(a) => a.add(r),
                    None => r,
                });
            }
            acc.expect("at least one teacher")
        }
        EnsembleMode::Probabilities => {
            let mut acc: Option<Tensor<2>> = None;
            for (lp, &wj) in log_ps.into_iter().zip(w) {
                let term = lp.add_scalar(wj.ln());
                acc = Some(match acc {
                    Some(a) => log_add_exp(a, term),
                    None => term,
                });
            }
            let log_p = acc.expect("at least one teacher");
            // Σ w_j = 1 up to rounding; renormalise so that p̄ sums to 1 exactly.
            let log_p = temperature_free_log_softmax(log_p);
            divergence.rows_unchecked(log_q, log_p)
        }
        EnsembleMode::LogProbabilities => {
            let mut acc: Option<Tensor<2>> = None;
            for (lp, &wj) in log_ps.into_iter().zip(w) {
                // w_j > 0, so -inf stays -inf (never 0 · -inf).
                let term = lp.mul_scalar(wj);
                acc = Some(match acc {
                    Some(a) => a.add(term),
                    None => term,
                });
            }
            let log_p = temperature_free_log_softmax(acc.expect("at least one teacher"));
            divergence.rows_unchecked(log_q, log_p)
        }
    };
    RowLoss::new(temperature.scale(values, scaling), &rows, v)
}

fn temperature_free_log_softmax(x: Tensor<2>) -> Tensor<2> {
    crate::temperature::temperature_log_softmax(x, Temperature::ONE)
}
