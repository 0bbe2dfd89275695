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
//! number, or one value per row) and takes a [`T2Scaling`](crate::temperature::T2Scaling). The configs default to
//! [`T2Scaling::Off`](crate::temperature::T2Scaling::Off), as TRL and DistiLLM (whose golden values this crate reproduces) do; pass
//! [`T2Scaling::On`](crate::temperature::T2Scaling::On) for Hinton's factor.
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
//! let v = jsd.reduce(Reduction::RowMean).into_scalar::<f32>();
//! assert!(v > 0.0 && v <= std::f32::consts::LN_2);
//! ```

use burn::config::Config;
use burn::tensor::Tensor;

mod functions;
mod loss;

/// Re-exported from [`temperature`](crate::temperature), where it lives.
pub use crate::temperature::RowTemperature;
#[cfg(feature = "chunked")]
pub(crate) use functions::{dense_kernel, dense_row_loss, dense_rows};
pub use functions::{
    divergence, divergence_from_log_probs, generalized_jsd, reverse_kl, skew_kl, skew_reverse_kl,
    symmetric_kl, total_variation,
};
pub use loss::{DivergenceLoss, DivergenceLossConfig, soft_loss};

use crate::error::{KdError, check_range};
use crate::fused::SoftKind;
use crate::rows::{kl_rows_from_log_probs, kl_rows_normalized, log_mix};

/// Which weighting of the generalized Jensen–Shannon divergence; see the
/// [module docs](self#the-two-jsd-conventions).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum JsdConvention {
    /// TRL / GKD: `β·KL(p‖m) + (1−β)·KL(q‖m)`, `β = 0` → forward KL, `β = 1` → reverse KL
    /// (special-cased endpoints). The default.
    Trl,
    /// `(1−β)·KL(p‖m) + β·KL(q‖m)`: continuous in `β`, forward KL at 0, reverse KL at 1.
    Continuous,
}

impl Default for JsdConvention {
    fn default() -> Self {
        JsdConvention::Trl
    }
}

/// A divergence between the student's distribution `q` and the teacher's `p`, applied per row.
///
/// Build the parametrised ones with [`Divergence::generalized_jsd`], [`Divergence::skew_kl`]
/// and [`Divergence::skew_reverse_kl`], which validate the parameter. The formulas are in the
/// [module docs](self).
///
/// It is also the `divergence` field of the configs ([`DivergenceLossConfig`],
/// `FusedLinearKdLossConfig`): Burn's `Config` derive serialises it with its parameters.
#[derive(Config, Debug, Copy, PartialEq)]
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
    /// Whether a fused kernel computes this divergence for `logits` (their backend and dtype):
    /// the CubeCL kernel computes every divergence on `f32`, `f16` and `bf16`; the CPU kernel
    /// (Flex) every divergence on `f32`. `false` means the composed path, with the same
    /// results. Used by [`soft_loss`] and [`DivergenceLoss`].
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use kd_losses::divergence::Divergence;
    /// let x = Tensor::<2>::zeros([2, 3], &Device::flex());
    /// assert!(Divergence::ReverseKl.fused_available(&x));
    /// assert!(Divergence::TotalVariation.fused_available(&x));
    /// assert!(!Divergence::ReverseKl.fused_available(&x.cast(burn::tensor::DType::F64))); // composed
    /// ```
    pub fn fused_available<const D: usize>(&self, logits: &Tensor<D>) -> bool {
        crate::fused::serves(logits, self.kernel_kind())
    }

    /// The fused logit kernel's form of this divergence: the KL directions where it is one of
    /// them (the generalized JSD at `β = 0` and `β = 1` in both conventions, the skew KLs at
    /// `α = 0`), otherwise a weighted pair of KLs to the mixture, or the TVD / symmetric KL.
    pub(crate) fn kernel_kind(&self) -> SoftKind {
        let mixture = |w: f64, a: f64, b: f64| SoftKind::Mixture {
            teacher_share: w as f32,
            teacher_coef: a as f32,
            student_coef: b as f32,
        };
        match *self {
            Divergence::ForwardKl => SoftKind::ForwardKl,
            Divergence::ReverseKl => SoftKind::ReverseKl,
            Divergence::GeneralizedJsd { beta, .. } if beta == 0.0 => SoftKind::ForwardKl,
            Divergence::GeneralizedJsd { beta, .. } if beta == 1.0 => SoftKind::ReverseKl,
            Divergence::SkewKl { alpha } if alpha == 0.0 => SoftKind::ForwardKl,
            Divergence::SkewReverseKl { alpha } if alpha == 0.0 => SoftKind::ReverseKl,
            Divergence::GeneralizedJsd {
                beta,
                convention: JsdConvention::Trl,
            } => mixture(beta, beta, 1.0 - beta),
            Divergence::GeneralizedJsd {
                beta,
                convention: JsdConvention::Continuous,
            } => mixture(beta, 1.0 - beta, beta),
            Divergence::SkewKl { alpha } => mixture(alpha, 1.0, 0.0),
            Divergence::SkewReverseKl { alpha } => mixture(1.0 - alpha, 0.0, 1.0),
            Divergence::TotalVariation => SoftKind::TotalVariation,
            Divergence::SymmetricKl => SoftKind::SymmetricKl,
        }
    }

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
