//! Temperature softmax and log-softmax over the last dimension.
//!
//! ```text
//! z_i = x_i / T
//! softmax_T(x)_i     = exp(z_i - m) / Σ_j exp(z_j - m),   m = max_j z_j
//! log_softmax_T(x)_i = (z_i - m) - log Σ_j exp(z_j - m)
//! ```
//!
//! # Numerical contract
//! * Stable for any finite logits: the row maximum is subtracted before `exp`, so logits of
//!   ±1e4 (and ±1e4 / T for small T) give exact probabilities and finite log-probabilities.
//! * A `-inf` logit (a masked or padded vocabulary entry) gives probability `0`, log-probability
//!   `-inf`, and a softmax gradient of exactly `0`. The log-softmax gradient at such an entry is
//!   the cotangent divided by `T` (the limit `∂ log p_i / ∂ x_i = 1 - p_i → 1`, as in PyTorch).
//! * A row whose entries are **all** `-inf` (a fully padded row) is not an error: its softmax is
//!   all zeros, its log-softmax all `-inf`, and its gradient is zero. (PyTorch returns NaN here.)
//!   Losses built on these functions treat such a row as empty.
//! * The row maximum is subtracted **before** dividing by `T`, so logits up to `±f32::MAX` work
//!   at any temperature (`(x − m)/T` never overflows to `inf − inf`).
//! * A `+inf` logit is a point mass: a row with `+inf` entries is the uniform distribution over
//!   its `+inf` entries (probability 1 for a single one, 0 elsewhere), as the limit of a logit
//!   growing without bound. The `+inf` entries themselves get a zero gradient. NaN logits
//!   propagate NaN.
//!
//! # Supported temperatures
//! `T` must be finite and in `(0, 1e6]` ([`Temperature::MAX`]): above, `T²` and `1/T` leave the
//! range where `f32` resolves the logit differences (`(x − m)/T` rounds to 0 for every ordinary
//! logit at `T ≈ 1e7` and beyond). See `docs/conventions.md` for the precision per range.

use burn::tensor::Tensor;

use crate::error::KdError;

/// A validated softmax temperature: finite and strictly positive.
///
/// ```
/// use kd_losses::temperature::Temperature;
/// assert_eq!(Temperature::new(2.0).unwrap().get(), 2.0);
/// assert!(Temperature::new(0.0).is_err());
/// assert!(Temperature::new(f64::NAN).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature(f64);

impl Temperature {
    /// `T = 1`: the plain softmax.
    pub const ONE: Temperature = Temperature(1.0);

    /// The largest supported temperature, `1e6` (see the [module docs](self#supported-temperatures)).
    pub const MAX: f64 = 1.0e6;

    /// Validates `t`.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`] when `t` is NaN, infinite, zero, negative or above
    /// [`Temperature::MAX`].
    pub fn new(t: f64) -> Result<Self, KdError> {
        if t.is_finite() && t > 0.0 && t <= Self::MAX {
            Ok(Temperature(t))
        } else {
            Err(KdError::InvalidTemperature { value: t })
        }
    }

    /// The temperature as a number.
    pub fn get(self) -> f64 {
        self.0
    }

    /// `T²`, the factor Hinton et al. (2015) put on the soft loss so its gradient magnitude
    /// does not shrink as `1/T²`.
    pub fn squared(self) -> f64 {
        self.0 * self.0
    }
}

impl Default for Temperature {
    fn default() -> Self {
        Temperature::ONE
    }
}

/// Shared core: `((x - m)/T, Σ exp((x - m)/T) with empty rows set to 1)`, both keeping the
/// last dim. The maximum is subtracted before dividing by `T` (no overflow for `|x|` up to
/// `f32::MAX`).
fn shifted_and_norm<const D: usize>(logits: Tensor<D>, t: Temperature) -> (Tensor<D>, Tensor<D>) {
    assert!(D >= 1, "logits must have at least one dimension");
    let dim = D - 1;
    let logits = crate::reduction::at_least_f32(logits);
    // The row maximum only shifts; the result does not depend on it, so it needs no gradient.
    let m = logits.clone().detach().max_dim(dim);
    // An all -inf row has max -inf; shifting by 0 instead keeps it -inf rather than NaN.
    let neg_inf = m.clone().equal_elem(f32::NEG_INFINITY);
    let m = m.mask_fill(neg_inf, 0.0);
    // A +inf maximum: the row is the uniform distribution over its +inf entries. `x − m` is
    // already -inf at the finite entries; the +inf entries (inf − inf) are selected to 0, which
    // also gives them a zero gradient.
    let is_pos_inf = logits.clone().equal_elem(f32::INFINITY);
    let shifted = logits.sub(m).mask_fill(is_pos_inf, 0.0);
    let shifted = if t.0 == 1.0 {
        shifted
    } else {
        shifted.div_scalar(t.0)
    };
    let s = shifted.clone().exp().sum_dim(dim);
    let empty = s.clone().equal_elem(0.0);
    (shifted, s.mask_fill(empty, 1.0))
}

/// Temperature softmax `softmax(x / T)` over the last dimension.
///
/// # Shapes
/// - `logits`: `[..., V]`, any rank ≥ 1
/// - output: same shape; each row sums to 1 (or is all zeros for an all `-inf` row)
///
/// See the [module docs](self) for the numerical contract.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::temperature::{temperature_softmax, Temperature};
///
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[1.0, 2.0, f32::NEG_INFINITY]], &device);
/// let p = temperature_softmax(x, Temperature::new(2.0).unwrap());
/// let v = p.try_into_vec_as::<f32>().unwrap();
/// assert!((v[0] + v[1] - 1.0).abs() < 1e-6 && v[2] == 0.0);
/// ```
pub fn temperature_softmax<const D: usize>(logits: Tensor<D>, t: Temperature) -> Tensor<D> {
    let (shifted, norm) = shifted_and_norm(logits, t);
    shifted.exp().div(norm)
}

/// Temperature log-softmax `log_softmax(x / T)` over the last dimension, computed without
/// forming `log(softmax(..))`.
///
/// # Shapes
/// - `logits`: `[..., V]`, any rank ≥ 1
/// - output: same shape, log-probabilities (`-inf` where the logit is `-inf`)
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::temperature::{temperature_log_softmax, Temperature};
///
/// let device = Device::flex();
/// let x = Tensor::<2>::from_floats([[1.0e4, -1.0e4]], &device);
/// let lp = temperature_log_softmax(x, Temperature::ONE).try_into_vec_as::<f32>().unwrap();
/// assert_eq!(lp[0], 0.0);
/// assert_eq!(lp[1], -2.0e4);
/// ```
pub fn temperature_log_softmax<const D: usize>(logits: Tensor<D>, t: Temperature) -> Tensor<D> {
    let (shifted, norm) = shifted_and_norm(logits, t);
    shifted.sub(norm.log())
}
