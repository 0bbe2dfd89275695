//! Logit scale and soft-capping: [`LogitTransform`].

use burn::config::Config;
use burn::tensor::Tensor;

use crate::error::KdError;

/// What a model does to its logits before the softmax: a scale `s` and an optional soft cap `c`,
///
/// ```text
/// z' = c · tanh(s · z / c)      (with a cap)
/// z' = s · z                    (without)
/// ```
///
/// Gemma-2 caps its final logits at `c = 30` (`final_logit_softcapping`); Cohere's Command models
/// multiply them by a `logit_scale`. A distillation loss must see the logits the model samples
/// from, so every logit loss of the crate takes a transform for the student and one for the
/// teacher ([`DistillationLossConfig`](crate::logits::DistillationLossConfig),
/// [`DivergenceLossConfig`](crate::divergence::DivergenceLossConfig),
/// [`SparseKdLossConfig`](crate::sparse::SparseKdLossConfig) and the LM-head loss
/// `FusedLinearKdLossConfig`, feature `chunked`); the free functions take logits as they are, so
/// a caller applies [`apply`](Self::apply) first. The transform is applied before the
/// temperature (`softmax(z' / T)`), and the gradient of the student's logits includes its
/// derivative `s · (1 − tanh²(s·z/c))`.
///
/// `±inf` logits stay `±inf` (a `-inf` entry is a masked vocabulary entry everywhere in the
/// crate; capping it to `−c` would give it probability). The transform runs as element-wise
/// tensor operations before the loss (and its kernel): one extra logits-sized tensor on the
/// materialized paths, one chunk-sized one in `fused_linear`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::logits::LogitTransform;
///
/// let cap = LogitTransform::softcap(30.0).unwrap();
/// let z = Tensor::<1>::from_floats([0.0, 30.0, 1e4, f32::NEG_INFINITY], &Device::flex());
/// let y: Vec<f32> = cap.apply(z).into_data().try_to_vec::<f32>().unwrap();
/// assert!((y[1] - 30.0 * 1f32.tanh()).abs() < 1e-4);
/// assert!((y[2] - 30.0).abs() < 1e-4);
/// assert_eq!(y[3], f32::NEG_INFINITY);
/// ```
#[derive(Config, Debug, Copy, PartialEq)]
pub struct LogitTransform {
    /// Multiplier `s` of the logits (finite, > 0).
    #[config(default = 1.0)]
    pub scale: f64,
    /// Soft cap `c` (finite, > 0), or `None`.
    #[config(default = "None")]
    pub softcap: Option<f64>,
}

impl LogitTransform {
    /// The logits as they are.
    pub const IDENTITY: LogitTransform = LogitTransform {
        scale: 1.0,
        softcap: None,
    };

    /// `c · tanh(z / c)`.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] unless `c` is finite and > 0.
    pub fn softcap(cap: f64) -> Result<Self, KdError> {
        LogitTransform {
            scale: 1.0,
            softcap: Some(cap),
        }
        .validated()
    }

    /// `s · z`.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] unless `s` is finite and > 0.
    pub fn scaled(scale: f64) -> Result<Self, KdError> {
        LogitTransform {
            scale,
            softcap: None,
        }
        .validated()
    }

    /// Checks `s` and `c`.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] naming `logit scale` or `softcap`.
    pub fn validated(self) -> Result<Self, KdError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.scale) {
            return Err(KdError::NotPositive {
                name: "logit scale",
                value: self.scale,
            });
        }
        if let Some(c) = self.softcap
            && !positive(c)
        {
            return Err(KdError::NotPositive {
                name: "softcap",
                value: c,
            });
        }
        Ok(self)
    }

    /// Whether this is the identity (no operation is recorded).
    pub fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.softcap.is_none()
    }

    /// `z'` for logits of any shape (`±inf` kept); `z` itself for the identity.
    ///
    /// # Panics
    /// On an invalid scale or cap (see [`validated`](Self::validated)).
    pub fn apply<const D: usize>(&self, z: Tensor<D>) -> Tensor<D> {
        if self.is_identity() {
            return z;
        }
        if let Err(e) = self.validated() {
            panic!("{e}");
        }
        match self.softcap {
            None => z.mul_scalar(self.scale),
            Some(c) => {
                let infinite = z.clone().is_inf();
                z.clone()
                    .mul_scalar(self.scale / c)
                    .tanh()
                    .mul_scalar(c)
                    .mask_where(infinite, z)
            }
        }
    }
}

impl Default for LogitTransform {
    fn default() -> Self {
        LogitTransform::IDENTITY
    }
}
