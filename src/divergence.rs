//! Divergences between the student's and the teacher's temperature softmax, over the last
//! dimension: reverse KL, generalized Jensen–Shannon (two conventions), skew KL, skew reverse KL,
//! total variation and symmetric KL.
//!
//! With `q = softmax(student / T)` (the student) and `p = softmax(teacher / T)` (the teacher):
//!
//! | [`Divergence`] | per row | direction | PyTorch / TRL / DistiLLM |
//! |---|---|---|---|
//! | `ForwardKl` | `Σ p (log p − log q)` | mass-covering | `F.kl_div(log q, log p, log_target=True)` |
//! | `ReverseKl` | `Σ q (log q − log p)` | mode-seeking | `F.kl_div(log p, log q, log_target=True)`, MiniLLM |
//! | `GeneralizedJsd { beta, Trl }` | `β KL(p‖m) + (1−β) KL(q‖m)`, `m = βp + (1−β)q`; `β=0`: forward KL, `β=1`: reverse KL | symmetric at `β=½` | TRL `GKDTrainer.generalized_jsd_loss` |
//! | `GeneralizedJsd { beta, Continuous }` | `(1−β) KL(p‖m) + β KL(q‖m)`, same `m` | forward KL at `β=0` → reverse KL at `β=1`, continuously | — |
//! | `SkewKl { alpha }` | `KL(p ‖ αp + (1−α)q)` | forward, bounded by `−log α` | DistiLLM `skewed_forward_kl` (see below) |
//! | `SkewReverseKl { alpha }` | `KL(q ‖ αq + (1−α)p)` | reverse, bounded by `−log α` | DistiLLM `skewed_reverse_kl` |
//! | `TotalVariation` | `½ Σ |p − q|` | symmetric, in `[0, 1]` | — |
//! | `SymmetricKl` | `KL(p‖q) + KL(q‖p)` (Jeffreys) | symmetric | — |
//!
//! # The two JSD conventions
//! Both build the same mixture `m = βp + (1−β)q` in log space
//! (`log m = logaddexp(log β + log p, log(1−β) + log q)`) and give the ordinary
//! Jensen–Shannon divergence at `β = ½` (at most `log 2`).
//! * [`JsdConvention::Trl`] reproduces TRL 1.16 exactly: the teacher term has weight `β`, and
//!   the endpoints are **special-cased** (`β = 0` is forward KL, `β = 1` reverse KL). The mixture
//!   formula itself tends to `0` at both ends, so the loss and its gradient vanish as `β → 0` or
//!   `β → 1` and then jump at the endpoint.
//! * [`JsdConvention::Continuous`] swaps the weights, `(1−β)·KL(p‖m) + β·KL(q‖m)`: at `β = 0`
//!   (`m = q`) it *is* `KL(p‖q)`, at `β = 1` (`m = p`) it is `KL(q‖p)`, and it is continuous in
//!   between, with no special case; the gradient moves smoothly from the forward to the reverse
//!   KL gradient.
//!
//! # Temperature and `T²`
//! Every divergence divides both sides' logits by the same temperature ([`RowTemperature`]: a
//! number, or one value per row) and takes a [`T2Scaling`]. The configs default to
//! [`T2Scaling::Off`], as TRL and DistiLLM (whose golden values this crate reproduces) do; pass
//! [`T2Scaling::On`] for Hinton's factor.
//!
//! # Gradients at the endpoints
//! * Forward/reverse/symmetric KL: unbounded where one side has no mass and the other has some
//!   (`+inf`, as the math says); entries where the *first* argument has probability `0`
//!   contribute `0` with a zero gradient (`0 · log 0 = 0`).
//! * Skew KL and skew reverse KL stay finite for `α > 0` (bounded by `−log α`); `α = 0` is the
//!   plain forward / reverse KL, and `α = 1` gives `0` with a zero gradient.
//! * Total variation: the gradient of `|x|` at `x = 0` is taken as `0`.
//!
//! # DistiLLM's cross-entropy offset
//! DistiLLM's `skewed_forward_kl` returns `−Σ p log m`, which is `SkewKl` plus the teacher
//! entropy `H(p)`: the same gradient, a value higher by `H(p)`. This crate returns the
//! divergence (0 at identical inputs).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use kd_losses::divergence::{generalized_jsd, JsdConvention};
//! use kd_losses::prelude::*;
//!
//! let device = Device::flex();
//! let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
//! let t = Tensor::<2>::from_floats([[0.0, 2.0, -1.0]], &device);
//! let jsd = generalized_jsd(s, t, 0.5, JsdConvention::Trl, Temperature::ONE, T2Scaling::Off);
//! let v = jsd.reduce(Reduction::Mean).into_scalar::<f32>();
//! assert!(v > 0.0 && v <= std::f32::consts::LN_2);
//! ```

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::{KdError, check_range};
use crate::logits::T2Scaling;
use crate::logits::soft::{assert_same_shape, kl_rows_from_log_probs, kl_rows_normalized};
use crate::reduction::{Reduction, RowLoss, RowMask, flatten_rows, same_dtype};
use crate::temperature::{Temperature, temperature_log_softmax};
use crate::vocab::{VocabAlignment, align_vocab};

/// Which weighting of the generalized Jensen–Shannon divergence; see the
/// [module docs](self#the-two-jsd-conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsdConvention {
    /// TRL / GKD: `β·KL(p‖m) + (1−β)·KL(q‖m)`, `β = 0` → forward KL, `β = 1` → reverse KL
    /// (special-cased endpoints).
    #[default]
    Trl,
    /// `(1−β)·KL(p‖m) + β·KL(q‖m)`: continuous in `β`, forward KL at 0, reverse KL at 1.
    Continuous,
}

/// A divergence between the student's distribution `q` and the teacher's `p`, applied per row.
///
/// Build the parametrised ones with [`Divergence::generalized_jsd`], [`Divergence::skew_kl`]
/// and [`Divergence::skew_reverse_kl`], which validate the parameter. The formulas are in the
/// [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Divergence {
    /// `KL(p ‖ q)`.
    ForwardKl,
    /// `KL(q ‖ p)`.
    ReverseKl,
    /// Generalized JSD with mixture weight `beta ∈ [0, 1]` on the teacher.
    GeneralizedJsd {
        /// Teacher weight in the mixture `m = βp + (1−β)q`.
        beta: f64,
        /// Which weighting of the two KL terms.
        convention: JsdConvention,
    },
    /// Skew KL `KL(p ‖ αp + (1−α)q)`, `alpha ∈ [0, 1]`.
    SkewKl {
        /// Skew weight `α` (teacher share of the mixture).
        alpha: f64,
    },
    /// Skew reverse KL `KL(q ‖ αq + (1−α)p)`, `alpha ∈ [0, 1]`.
    SkewReverseKl {
        /// Skew weight `α` (student share of the mixture).
        alpha: f64,
    },
    /// Total variation `½ Σ |p − q|`.
    TotalVariation,
    /// Jeffreys divergence `KL(p‖q) + KL(q‖p)`.
    SymmetricKl,
}

impl Divergence {
    /// Generalized JSD, validating `beta`.
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] (`"beta"`) when `beta` is outside `[0, 1]` or NaN.
    pub fn generalized_jsd(beta: f64, convention: JsdConvention) -> Result<Self, KdError> {
        check_range("beta", beta, 0.0, 1.0)?;
        Ok(Divergence::GeneralizedJsd { beta, convention })
    }

    /// Skew KL, validating `alpha`.
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] (`"alpha"`) when `alpha` is outside `[0, 1]` or NaN.
    pub fn skew_kl(alpha: f64) -> Result<Self, KdError> {
        check_range("alpha", alpha, 0.0, 1.0)?;
        Ok(Divergence::SkewKl { alpha })
    }

    /// Skew reverse KL, validating `alpha`.
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] (`"alpha"`) when `alpha` is outside `[0, 1]` or NaN.
    pub fn skew_reverse_kl(alpha: f64) -> Result<Self, KdError> {
        check_range("alpha", alpha, 0.0, 1.0)?;
        Ok(Divergence::SkewReverseKl { alpha })
    }

    /// Re-checks the parameter (the enum's fields are public).
    ///
    /// # Errors
    /// As the constructors.
    pub fn validate(&self) -> Result<(), KdError> {
        match *self {
            Divergence::GeneralizedJsd { beta, .. } => check_range("beta", beta, 0.0, 1.0)?,
            Divergence::SkewKl { alpha } | Divergence::SkewReverseKl { alpha } => {
                check_range("alpha", alpha, 0.0, 1.0)?
            }
            _ => 0.0,
        };
        Ok(())
    }

    /// A short name for logs (`"reverse_kl"`, `"gjsd"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Divergence::ForwardKl => "forward_kl",
            Divergence::ReverseKl => "reverse_kl",
            Divergence::GeneralizedJsd { .. } => "gjsd",
            Divergence::SkewKl { .. } => "skew_kl",
            Divergence::SkewReverseKl { .. } => "skew_reverse_kl",
            Divergence::TotalVariation => "total_variation",
            Divergence::SymmetricKl => "symmetric_kl",
        }
    }

    /// `true` when every term is weighted by the teacher probability, so entries where the
    /// teacher has no mass contribute nothing whatever the student does there.
    pub(crate) fn ignores_teacher_zeros(&self) -> bool {
        matches!(self, Divergence::ForwardKl | Divergence::SkewKl { .. })
    }

    /// Per-row divergence from log-probabilities `[R, K]` (student first, teacher second).
    ///
    /// The teacher is detached. Rows that hold `-inf` entries follow `0 · log 0 = 0`.
    ///
    /// # Shapes
    /// - `student_log_probs`, `teacher_log_probs`: `[R, K]`
    /// - returns `[R]`
    ///
    /// # Panics
    /// If the shapes differ, or the parameter is invalid (see [`validate`](Self::validate)).
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use kd_losses::divergence::Divergence;
    ///
    /// let device = Device::flex();
    /// let lq = Tensor::<2>::from_floats([[0.5f32.ln(), 0.5f32.ln()]], &device);
    /// let lp = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device);
    /// let tv = Divergence::TotalVariation.rows_from_log_probs(lq, lp);
    /// assert!((tv.into_scalar::<f32>() - 0.5).abs() < 1e-6);
    /// ```
    pub fn rows_from_log_probs(
        &self,
        student_log_probs: Tensor<2>,
        teacher_log_probs: Tensor<2>,
    ) -> Tensor<1> {
        assert!(
            student_log_probs.dims() == teacher_log_probs.dims(),
            "teacher_log_probs: shape {:?} does not match student_log_probs shape {:?}",
            teacher_log_probs.dims(),
            student_log_probs.dims()
        );
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.rows_unchecked(student_log_probs, teacher_log_probs.detach())
    }

    /// The core without checks or detaching (the teacher side may carry a gradient for a
    /// learnable temperature).
    pub(crate) fn rows_unchecked(&self, log_q: Tensor<2>, log_p: Tensor<2>) -> Tensor<1> {
        self.rows_impl(log_q, log_p, false)
    }

    /// [`rows_unchecked`](Self::rows_unchecked) for rows that are normalised distributions (a
    /// temperature softmax of full rows): the KL terms are computed without cancellation (see
    /// `kl_rows_normalized`).
    pub(crate) fn rows_normalized(&self, log_q: Tensor<2>, log_p: Tensor<2>) -> Tensor<1> {
        self.rows_impl(log_q, log_p, true)
    }

    fn rows_impl(&self, log_q: Tensor<2>, log_p: Tensor<2>, normalized: bool) -> Tensor<1> {
        let kl_rows_from_log_probs = |a: Tensor<2>, b: Tensor<2>| {
            if normalized {
                kl_rows_normalized(a, b)
            } else {
                kl_rows_from_log_probs(a, b)
            }
        };
        match *self {
            Divergence::ForwardKl => kl_rows_from_log_probs(log_p, log_q),
            Divergence::ReverseKl => kl_rows_from_log_probs(log_q, log_p),
            Divergence::SymmetricKl => kl_rows_from_log_probs(log_p.clone(), log_q.clone())
                .add(kl_rows_from_log_probs(log_q, log_p)),
            Divergence::TotalVariation => {
                let r = log_q.dims()[0];
                let d = log_p.exp().sub(log_q.exp()).abs();
                d.sum_dim(1).reshape([r]).mul_scalar(0.5)
            }
            Divergence::SkewKl { alpha } => {
                let log_m = log_mix(log_p.clone(), alpha, log_q);
                kl_rows_from_log_probs(log_p, log_m)
            }
            Divergence::SkewReverseKl { alpha } => {
                let log_m = log_mix(log_q.clone(), alpha, log_p);
                kl_rows_from_log_probs(log_q, log_m)
            }
            Divergence::GeneralizedJsd { beta, convention } => {
                if convention == JsdConvention::Trl && beta == 0.0 {
                    return kl_rows_from_log_probs(log_p, log_q);
                }
                if convention == JsdConvention::Trl && beta == 1.0 {
                    return kl_rows_from_log_probs(log_q, log_p);
                }
                let log_m = log_mix(log_p.clone(), beta, log_q.clone());
                let (w_teacher, w_student) = match convention {
                    JsdConvention::Trl => (beta, 1.0 - beta),
                    JsdConvention::Continuous => (1.0 - beta, beta),
                };
                weighted_sum(
                    w_teacher,
                    || kl_rows_from_log_probs(log_p, log_m.clone()),
                    w_student,
                    || kl_rows_from_log_probs(log_q, log_m.clone()),
                )
            }
        }
    }
}

/// `wa·a() + wb·b()`, skipping a term whose weight is exactly 0 (so `0 · inf` never occurs).
fn weighted_sum(
    wa: f64,
    a: impl FnOnce() -> Tensor<1>,
    wb: f64,
    b: impl FnOnce() -> Tensor<1>,
) -> Tensor<1> {
    match (wa == 0.0, wb == 0.0) {
        (false, false) => a().mul_scalar(wa).add(b().mul_scalar(wb)),
        (false, true) => a().mul_scalar(wa),
        (true, false) => b().mul_scalar(wb),
        (true, true) => a().mul_scalar(0.0),
    }
}

/// `log(w·a + (1−w)·b)` from log-probabilities, `w ∈ [0, 1]`, stable and NaN-free: entries
/// where both sides are `-inf` give `-inf` with a zero gradient.
///
/// `w = 0` or `1` is not short-cut: the side with weight 0 gets `log 0 = -inf` and stays in the
/// graph with a zero gradient, so the loss is still tracked (a `backward` on it works) and its
/// value is exactly the other side.
pub(crate) fn log_mix(log_a: Tensor<2>, w: f64, log_b: Tensor<2>) -> Tensor<2> {
    log_add_exp(log_a.add_scalar(w.ln()), log_b.add_scalar((1.0 - w).ln()))
}

/// Elementwise `log(exp(x) + exp(y))` with `-inf` handled: both `-inf` gives `-inf` and a zero
/// gradient (the "double where" guard keeps `0 · inf` out of the backward pass).
pub(crate) fn log_add_exp<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    let m = x.clone().detach().max_pair(y.clone().detach());
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    let s = x.sub(m.clone()).exp().add(y.sub(m.clone()).exp());
    let empty = s.clone().equal_elem(0.0);
    let log_s = s
        .mask_fill(empty.clone(), 1.0)
        .log()
        .mask_fill(empty, f32::NEG_INFINITY);
    log_s.add(m)
}

/// Row-wise `log Σ exp(x)` over the last dim of `[R, K]`, giving `[R]`; an all `-inf` row
/// gives `-inf` with a zero gradient.
pub(crate) fn row_logsumexp(x: Tensor<2>) -> Tensor<1> {
    let r = x.dims()[0];
    let m = x.clone().detach().max_dim(1);
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    let s = x.sub(m.clone()).exp().sum_dim(1);
    let empty = s.clone().equal_elem(0.0);
    let log_s = s
        .mask_fill(empty.clone(), 1.0)
        .log()
        .mask_fill(empty, f32::NEG_INFINITY);
    log_s.add(m).reshape([r])
}

/// The temperature a loss divides the logits by: one number for the batch, or one value per
/// row (a "dynamic" temperature, or a [learnable](crate::schedule::LearnableTemperature) one).
///
/// A per-row tensor has shape `[R]` (`R` = number of rows, `B·S` for `[B, S, V]` logits) or
/// `[1]` (broadcast). Its entries must be finite and positive (not checked: that would read the
/// tensor back to the host). It may carry a gradient: the temperature then learns.
// A tensor handle is larger than an f64; the enum is passed by value once per call, so
// boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum RowTemperature {
    /// One validated temperature.
    Scalar(Temperature),
    /// One temperature per row, `[R]` or `[1]`.
    PerRow(Tensor<1>),
}

impl From<Temperature> for RowTemperature {
    fn from(t: Temperature) -> Self {
        RowTemperature::Scalar(t)
    }
}

impl From<Tensor<1>> for RowTemperature {
    fn from(t: Tensor<1>) -> Self {
        RowTemperature::PerRow(t)
    }
}

impl RowTemperature {
    /// Checks a per-row tensor against `r` rows.
    pub(crate) fn check_rows(&self, r: usize) {
        if let RowTemperature::PerRow(t) = self {
            let n = t.dims()[0];
            assert!(
                n == r || n == 1,
                "temperature: shape {:?} must be [1] or the number of rows [{r}]",
                t.dims()
            );
        }
    }

    /// The rows `first..first+len` of a per-row temperature (a `[1]` one is kept whole).
    #[cfg_attr(not(feature = "chunked"), allow(dead_code))]
    pub(crate) fn narrow(&self, first: usize, len: usize) -> RowTemperature {
        match self {
            RowTemperature::PerRow(t) if t.dims()[0] != 1 => {
                RowTemperature::PerRow(t.clone().narrow(0, first, len))
            }
            other => other.clone(),
        }
    }

    /// `log_softmax(x / T)` of `[R, K]`.
    pub(crate) fn log_softmax(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            RowTemperature::Scalar(t) => temperature_log_softmax(x, *t),
            RowTemperature::PerRow(t) => {
                // Subtract the row maximum before dividing (no overflow for |x| up to f32::MAX).
                let n = t.dims()[0];
                let m = x.clone().detach().max_dim(1);
                let m = m.clone().mask_fill(m.is_inf(), 0.0);
                temperature_log_softmax(x.sub(m).div(t.clone().reshape([n, 1])), Temperature::ONE)
            }
        }
    }

    /// `x / T` of `[R, K]`.
    pub(crate) fn divide(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            RowTemperature::Scalar(t) if t.get() == 1.0 => x,
            RowTemperature::Scalar(t) => x.div_scalar(t.get()),
            RowTemperature::PerRow(t) => {
                let n = t.dims()[0];
                x.div(t.clone().reshape([n, 1]))
            }
        }
    }

    /// Multiplies row values by `T²` (scalar or per row) when `scaling` is on.
    pub(crate) fn scale(&self, values: Tensor<1>, scaling: T2Scaling) -> Tensor<1> {
        if scaling == T2Scaling::Off {
            return values;
        }
        match self {
            RowTemperature::Scalar(t) if t.get() == 1.0 => values,
            RowTemperature::Scalar(t) => values.mul_scalar(t.squared()),
            RowTemperature::PerRow(t) => values.mul(t.clone().powi_scalar(2)),
        }
    }
}

/// Any [`Divergence`] between the temperature softmaxes of student and teacher logits, per row.
///
/// ```text
/// q = softmax(student / T),  p = softmax(teacher / T)          (over the last dimension)
/// r_i = s_i · D(q_i, p_i)        s_i = T_i² with T2Scaling::On, else 1
/// ```
///
/// The teacher logits are detached. `temperature` is a [`Temperature`] or a per-row tensor
/// (see [`RowTemperature`]); a per-row temperature that requires a gradient receives one.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`
/// - returns a [`RowLoss`] of `R = Π leading dims` rows; mask it and reduce it with any
///   [`Reduction`].
///
/// # Panics
/// If the two shapes differ (align vocabularies first with
/// [`align_vocab`]), a per-row temperature has the wrong length, or
/// the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{divergence, Divergence};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<3>::from_floats([[[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]]], &device);
/// let t = Tensor::<3>::from_floats([[[2.0, 0.0, -1.0], [0.2, 0.1, 0.0]]], &device);
/// let rows = divergence(s, t, Divergence::skew_kl(0.1).unwrap(), Temperature::ONE, T2Scaling::Off);
/// let per_token = rows.clone().into_shaped::<2>(); // [1, 2]
/// assert_eq!(per_token.dims(), [1, 2]);
/// assert!(rows.reduce(Reduction::Mean).into_scalar::<f32>() > 0.0);
/// ```
pub fn divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    divergence: Divergence,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let temperature = temperature.into();
    let (student_logits, teacher_logits) = same_dtype(student_logits, teacher_logits);
    let (s, rows, v) = flatten_rows(student_logits);
    let (t, _, _) = flatten_rows(teacher_logits.detach());
    temperature.check_rows(s.dims()[0]);
    RowLoss::from_rows(vec![s, t], &rows, v, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        dense_rows(s, t, divergence, &temperature, scaling)
    })
}

/// The per-row core of [`divergence`] on flattened `[R, V]` logits (checks done by the caller;
/// the teacher is already detached).
pub(crate) fn dense_rows(
    s: Tensor<2>,
    t: Tensor<2>,
    divergence: Divergence,
    temperature: &RowTemperature,
    scaling: T2Scaling,
) -> Tensor<1> {
    let log_q = temperature.log_softmax(s);
    let log_p = temperature.log_softmax(t);
    let values = divergence.rows_normalized(log_q, log_p);
    temperature.scale(values, scaling)
}

/// Any [`Divergence`] from log-probabilities (no temperature, no `T²`): for distributions you
/// already normalised, e.g. a teacher's stored `log_softmax`.
///
/// ```text
/// r_i = D(exp(student_log_probs_i), exp(teacher_log_probs_i))
/// ```
///
/// # Shapes
/// - `student_log_probs`, `teacher_log_probs`: `[..., V]`
/// - returns a [`RowLoss`].
///
/// # Panics
/// If the two shapes differ or the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{divergence_from_log_probs, Divergence};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let lq = temperature_log_softmax(Tensor::<2>::from_floats([[1.0, 0.0]], &device), Temperature::ONE);
/// let rows = divergence_from_log_probs(lq.clone(), lq, Divergence::SymmetricKl);
/// assert!(rows.reduce(Reduction::Sum).into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn divergence_from_log_probs<const D: usize>(
    student_log_probs: Tensor<D>,
    teacher_log_probs: Tensor<D>,
    divergence: Divergence,
) -> RowLoss {
    assert!(
        student_log_probs.dims() == teacher_log_probs.dims(),
        "teacher_log_probs: shape {:?} does not match student_log_probs shape {:?}",
        teacher_log_probs.dims(),
        student_log_probs.dims()
    );
    crate::logits::soft::assert_classes("student_log_probs", &student_log_probs.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let (student_log_probs, teacher_log_probs) = same_dtype(student_log_probs, teacher_log_probs);
    let (s, rows, v) = flatten_rows(student_log_probs);
    let (t, _, _) = flatten_rows(teacher_log_probs.detach());
    RowLoss::from_rows(vec![s, t], &rows, v, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        divergence.rows_unchecked(s, t)
    })
}

/// Reverse KL `KL(q_student ‖ p_teacher)`, the mode-seeking divergence of MiniLLM and of TRL's
/// GKD at `β = 1` (the forward KL of [`soft_kl`](crate::logits::soft_kl) swapped).
///
/// ```text
/// r_i = s · Σ_v q_iv (log q_iv − log p_iv)       ∂r_i/∂student_i = (s/T) · q ⊙ (g − Σ q g),  g = log q − log p
/// ```
///
/// Entries where the student has no mass contribute 0; where the teacher has none and the
/// student has some, the value is `+inf`.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::reverse_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let v = reverse_kl(s, t, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Mean);
/// assert!(v.into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn reverse_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::ReverseKl,
        temperature,
        scaling,
    )
}

/// Generalized Jensen–Shannon divergence, in either [`JsdConvention`].
///
/// ```text
/// m = β p + (1−β) q                                    (built in log space)
/// Trl:        r = β KL(p‖m) + (1−β) KL(q‖m);  β = 0 → KL(p‖q),  β = 1 → KL(q‖p)
/// Continuous: r = (1−β) KL(p‖m) + β KL(q‖m)
/// ```
/// times `T²` with [`T2Scaling::On`] (TRL: off).
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`]. TRL's `batchmean`
///   without labels is [`Reduction::BatchMean`]; with labels, mask with
///   [`RowMask::from_labels`] and use [`Reduction::Mean`].
///
/// # Panics
/// If the shapes differ, or `beta` is outside `[0, 1]` (message of [`KdError::OutOfRange`]).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{generalized_jsd, reverse_kl, JsdConvention};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0, 2.0]], &device);
/// let one = Temperature::ONE;
/// let j = generalized_jsd(s.clone(), t.clone(), 1.0, JsdConvention::Continuous, one, T2Scaling::Off);
/// let r = reverse_kl(s, t, one, T2Scaling::Off);
/// let (j, r) = (j.reduce(Reduction::Sum).into_scalar::<f32>(), r.reduce(Reduction::Sum).into_scalar::<f32>());
/// assert!((j - r).abs() < 1e-5);
/// ```
pub fn generalized_jsd<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    beta: f64,
    convention: JsdConvention,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::generalized_jsd(beta, convention).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Skew KL (DistiLLM): `KL(p ‖ α p + (1−α) q)`, in log space.
///
/// ```text
/// log m = logaddexp(log α + log p, log(1−α) + log q)
/// r     = s · Σ_v p_v (log p_v − log m_v)             0 ≤ r ≤ −log α
/// ```
///
/// Unlike DistiLLM's code, the value excludes the teacher entropy (see the
/// [module docs](self#distillms-cross-entropy-offset)) and stays finite for logits of ±1e4.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ, or `alpha` is outside `[0, 1]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::skew_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0e4, -1.0e4]], &device);
/// let t = Tensor::<2>::from_floats([[-1.0e4, 1.0e4]], &device);
/// let v = skew_kl(s, t, 0.1, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!((v.into_scalar::<f32>() - 10f32.ln()).abs() < 1e-4); // the bound −log α
/// ```
pub fn skew_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    alpha: f64,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::skew_kl(alpha).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Skew reverse KL (DistiLLM): `KL(q ‖ α q + (1−α) p)`, in log space.
///
/// ```text
/// log m = logaddexp(log α + log q, log(1−α) + log p)
/// r     = s · Σ_v q_v (log q_v − log m_v)             0 ≤ r ≤ −log α
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ, or `alpha` is outside `[0, 1]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::skew_reverse_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
/// let v = skew_reverse_kl(s, t, 0.1, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>() > 0.0);
/// ```
pub fn skew_reverse_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    alpha: f64,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::skew_reverse_kl(alpha).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Total variation distance `½ Σ |p − q|`, in `[0, 1]`. No `T²` (it is a distance between
/// probabilities, not a KL).
///
/// ```text
/// r_i = ½ Σ_v |p_iv − q_iv|
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::total_variation;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device);
/// let t = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0]], &device);
/// let v = total_variation(s, t, Temperature::ONE).reduce(Reduction::Sum);
/// assert_eq!(v.into_scalar::<f32>(), 1.0);
/// ```
pub fn total_variation<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::TotalVariation,
        temperature,
        T2Scaling::Off,
    )
}

/// Symmetric (Jeffreys) KL `KL(p‖q) + KL(q‖p)`.
///
/// ```text
/// r_i = s · Σ_v (p_iv − q_iv)(log p_iv − log q_iv)
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::symmetric_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
/// let v = symmetric_kl(s, t, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>() > 0.0);
/// ```
pub fn symmetric_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::SymmetricKl,
        temperature,
        scaling,
    )
}

/// The divergence a [`DivergenceLossConfig`] names.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum DivergenceKind {
    /// `KL(p‖q)`.
    ForwardKl,
    /// `KL(q‖p)`.
    ReverseKl,
    /// Generalized JSD, TRL convention (uses `beta`).
    GjsdTrl,
    /// Generalized JSD, continuous convention (uses `beta`).
    GjsdContinuous,
    /// Skew KL (uses `alpha`).
    SkewKl,
    /// Skew reverse KL (uses `alpha`).
    SkewReverseKl,
    /// Total variation.
    TotalVariation,
    /// Symmetric KL.
    SymmetricKl,
}

/// Configuration of [`DivergenceLoss`].
#[derive(Config, Debug)]
pub struct DivergenceLossConfig {
    /// Which divergence.
    pub kind: DivergenceKind,
    /// `β` of the generalized JSD, in `[0, 1]` (TRL's default 0.5).
    #[config(default = 0.5)]
    pub beta: f64,
    /// `α` of the skew KLs, in `[0, 1]` (DistiLLM's default 0.1).
    #[config(default = 0.1)]
    pub alpha: f64,
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`. Off by default, as TRL and DistiLLM.
    #[config(default = false)]
    pub t2_scaling: bool,
    /// What to do when student and teacher vocabularies differ. Default: error.
    #[config(default = "VocabAlignment::Error")]
    pub vocab: VocabAlignment,
}

impl DivergenceLossConfig {
    /// The validated [`Divergence`].
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] for `beta` or `alpha` outside `[0, 1]` (only the one the kind
    /// uses is checked).
    pub fn divergence(&self) -> Result<Divergence, KdError> {
        Ok(match self.kind {
            DivergenceKind::ForwardKl => Divergence::ForwardKl,
            DivergenceKind::ReverseKl => Divergence::ReverseKl,
            DivergenceKind::GjsdTrl => Divergence::generalized_jsd(self.beta, JsdConvention::Trl)?,
            DivergenceKind::GjsdContinuous => {
                Divergence::generalized_jsd(self.beta, JsdConvention::Continuous)?
            }
            DivergenceKind::SkewKl => Divergence::skew_kl(self.alpha)?,
            DivergenceKind::SkewReverseKl => Divergence::skew_reverse_kl(self.alpha)?,
            DivergenceKind::TotalVariation => Divergence::TotalVariation,
            DivergenceKind::SymmetricKl => Divergence::SymmetricKl,
        })
    }

    /// Builds the loss, validating every parameter.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`] or [`KdError::OutOfRange`].
    pub fn try_init(&self) -> Result<DivergenceLoss, KdError> {
        Temperature::new(self.temperature)?;
        self.divergence()?;
        Ok(DivergenceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> DivergenceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`divergence`], with vocabulary alignment.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{DivergenceKind, DivergenceLossConfig};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = DivergenceLossConfig::new(DivergenceKind::GjsdTrl).with_beta(0.5).init();
/// let s = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// assert!(loss.forward(s, t, Reduction::Mean).into_scalar::<f32>().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct DivergenceLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: DivergenceLossConfig,
}

impl DivergenceLoss {
    /// Per-row values (see [`divergence`]), after aligning the vocabularies as configured.
    ///
    /// # Panics
    /// On a vocabulary mismatch with [`VocabAlignment::Error`] (message of
    /// [`KdError::VocabMismatch`]), or if the leading shapes differ.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> RowLoss {
        let (s, te, d, t, scaling) = self.prepare(student_logits, teacher_logits);
        divergence(s, te, d, t, scaling)
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// As [`forward_no_reduction`](Self::forward_no_reduction).
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, None, reduction)
    }

    /// Reduced loss over the rows kept by `mask`.
    ///
    /// # Panics
    /// As [`forward_no_reduction`](Self::forward_no_reduction), or if the mask does not match
    /// the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, Some(mask), reduction)
    }

    /// Validated configuration and vocabulary-aligned logits.
    #[allow(clippy::type_complexity)]
    fn prepare<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>, Divergence, Temperature, T2Scaling) {
        let c = &self.config;
        let t = Temperature::new(c.temperature).unwrap_or_else(|e| panic!("{e}"));
        let d = c.divergence().unwrap_or_else(|e| panic!("{e}"));
        let (s, te) =
            align_vocab(student_logits, teacher_logits, c.vocab).unwrap_or_else(|e| panic!("{e}"));
        (s, te, d, t, T2Scaling::from_flag(c.t2_scaling))
    }

    /// Forward and reverse KL go through the fused kernel where it runs ([`crate::fused`]);
    /// the other divergences through the composed path.
    fn reduced<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: Option<&RowMask>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (s, te, d, t, scaling) = self.prepare(student_logits, teacher_logits);
        crate::fused::soft_loss(s, te, d, t, scaling, mask, reduction)
    }
}
