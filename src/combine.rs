//! Weighted sums of loss terms that remember each term for logging.
//!
//! ```text
//! total = Σ_k w_k · L_k
//! ```
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use kd_losses::combine::LossTerms;
//!
//! let device = Device::flex();
//! let terms = LossTerms::new()
//!     .with("soft", 0.9, Tensor::<1>::from_floats([2.0], &device)).unwrap()
//!     .with("hard", 0.1, Tensor::<1>::from_floats([1.0], &device)).unwrap();
//! assert!((terms.total().into_scalar::<f32>() - 1.9).abs() < 1e-6);
//! let logged = terms.scalars(); // [("soft", 2.0), ("hard", 1.0)] (unweighted)
//! assert_eq!(logged[0].0, "soft");
//! ```

use burn::tensor::Tensor;

use crate::error::KdError;

/// One named, weighted loss term.
#[derive(Debug, Clone)]
pub struct LossTerm {
    /// Name used in logs.
    pub name: String,
    /// Weight in the total.
    pub weight: f64,
    /// Unweighted value, `[1]`.
    pub value: Tensor<1>,
}

/// An ordered list of named, weighted loss terms.
#[derive(Debug, Clone, Default)]
pub struct LossTerms {
    terms: Vec<LossTerm>,
}

impl LossTerms {
    /// An empty list.
    pub fn new() -> Self {
        LossTerms { terms: Vec::new() }
    }

    /// Appends a term.
    ///
    /// # Errors
    /// [`KdError::NotFinite`] when `weight` is NaN or infinite.
    pub fn with(
        mut self,
        name: impl Into<String>,
        weight: f64,
        value: Tensor<1>,
    ) -> Result<Self, KdError> {
        if !weight.is_finite() {
            return Err(KdError::NotFinite {
                name: "weight",
                value: weight,
            });
        }
        self.terms.push(LossTerm {
            name: name.into(),
            weight,
            value,
        });
        Ok(self)
    }

    /// Appends every term of `other`, multiplying its weights by `scale`.
    pub fn extend(mut self, other: LossTerms, scale: f64) -> Self {
        self.terms.extend(other.terms.into_iter().map(|t| LossTerm {
            weight: t.weight * scale,
            ..t
        }));
        self
    }

    /// The terms in insertion order.
    pub fn terms(&self) -> &[LossTerm] {
        &self.terms
    }

    /// The unweighted value of the term called `name`.
    pub fn get(&self, name: &str) -> Option<Tensor<1>> {
        self.terms
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.value.clone())
    }

    /// `Σ_k w_k · L_k`, `[1]`; differentiable.
    ///
    /// # Panics
    /// If there are no terms (a sum of nothing has no device to live on).
    pub fn total(&self) -> Tensor<1> {
        let mut it = self.terms.iter();
        let first = it.next().expect("LossTerms::total: no terms were added");
        it.fold(first.value.clone().mul_scalar(first.weight), |acc, t| {
            acc.add(t.value.clone().mul_scalar(t.weight))
        })
    }

    /// `(name, unweighted value)` pairs read back to the host, for logging (synchronises).
    pub fn scalars(&self) -> Vec<(String, f64)> {
        self.terms
            .iter()
            .map(|t| (t.name.clone(), t.value.clone().into_scalar::<f64>()))
            .collect()
    }
}
