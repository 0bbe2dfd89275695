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
    let logits = crate::rows::at_least_f32(logits);
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

/// Whether the soft loss is multiplied by `T²`.
///
/// Hinton et al. (2015) scale the soft loss by `T²` so that its gradient, which shrinks as
/// `1/T²`, keeps the same magnitude relative to the hard loss when `T` changes. TRL and DistiLLM
/// do not scale; PyTorch recipes usually do. The crate's default is [`T2Scaling::On`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum T2Scaling {
    /// Multiply by `T²` (Hinton).
    #[default]
    On,
    /// No factor.
    Off,
}

impl T2Scaling {
    /// `On` for `true` (the configs' `t2_scaling` field).
    pub(crate) fn from_flag(on: bool) -> Self {
        if on { T2Scaling::On } else { T2Scaling::Off }
    }

    pub(crate) fn factor(self, t: Temperature) -> f64 {
        match self {
            T2Scaling::On => t.squared(),
            T2Scaling::Off => 1.0,
        }
    }
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
