//! [`RowLoss`]: one loss value per row, and its reductions.

use std::sync::Arc;

use burn::tensor::{Bool, FloatDType, Tensor};

use super::{Reduction, RowMask};
use crate::rows::{assert_same_dims, select_rows};

/// One loss value per row, with what its reductions need to know.
///
/// Rows are flattened in row-major order of the leading dimensions.
///
/// Most losses keep their row-aligned inputs and compute the rows on demand, so that a mask
/// replaces dropped rows first; the squared-error losses (hidden-state and attention-map MSE)
/// also offer a fused reduction where the fused CPU kernel runs ([`crate::fused`]): a
/// [`reduce`](Self::reduce) then computes the reduced loss and its gradient in one pass, and
/// [`values`](Self::values) computes the rows. Results are the same either way.
#[derive(Debug, Clone)]
pub struct RowLoss {
    values: Values,
    row_dims: Vec<usize>,
    row_size: usize,
    weights: Option<Tensor<1>>,
}

impl RowLoss {
    /// Wraps per-row `values` (`[R]`, with `R = Π row_dims`) of rows of `row_size` elements.
    ///
    /// # Panics
    /// If `values` does not hold `Π row_dims` entries.
    pub fn new(values: Tensor<1>, row_dims: &[usize], row_size: usize) -> Self {
        let r: usize = row_dims.iter().product();
        assert!(
            values.dims()[0] == r,
            "values: shape {:?} does not match the loss rows {row_dims:?}",
            values.dims()
        );
        RowLoss {
            values: Values::Ready(values),
            row_dims: row_dims.to_vec(),
            row_size,
            weights: None,
        }
    }

    /// Rows computed on demand by `rows` from row-aligned inputs (`[R, K_i]` each, `R` =
    /// `Π row_dims`). [`masked`](Self::masked) then *replaces* the dropped rows of every input by
    /// a finite constant before `rows` runs (select, not multiply): whatever a dropped row holds
    /// (NaN, ±inf), its value is exactly 0 and its gradient exactly 0.
    pub(crate) fn from_rows(
        inputs: Vec<Tensor<2>>,
        row_dims: &[usize],
        row_size: usize,
        rows: impl Fn(Vec<Tensor<2>>) -> Tensor<1> + Send + Sync + 'static,
    ) -> Self {
        RowLoss {
            values: Values::Lazy(LazyRows {
                inputs,
                rows: Arc::new(rows),
                fused: None,
                keep: None,
            }),
            row_dims: row_dims.to_vec(),
            row_size,
            weights: None,
        }
    }

    /// Rows from [`from_rows`](Self::from_rows) with a fused reduction beside them:
    /// [`reduce`](Self::reduce) asks `fused` first (with the kept rows and the reduction, whose
    /// per-row weights the family computes with [`row_weights`](super::row_weights)) and
    /// computes the rows only when it answers `None`. The two must agree (parity tests). On
    /// rows that are already computed, `fused` is not used.
    pub(crate) fn with_fused_reduction(mut self, fused: FusedReduction) -> Self {
        if let Values::Lazy(lazy) = &mut self.values {
            lazy.fused = Some(fused);
        }
        self
    }

    /// The rows as a tensor, computing them if they were kept lazily.
    fn materialized(self) -> Self {
        match self.values {
            Values::Lazy(lazy) => RowLoss {
                values: Values::Ready(lazy.values()),
                ..self
            },
            Values::Ready(_) => self,
        }
    }

    fn ready(&self) -> Tensor<1> {
        match &self.values {
            Values::Ready(v) => v.clone(),
            Values::Lazy(lazy) => lazy.values(),
        }
    }

    /// Sets per-row weights for the denominator of `Mean` and `ElementMean` (PyTorch's weighted
    /// cross-entropy divides by `Σ w_y`). The values must already include the weights.
    pub(crate) fn with_denominator_weights(mut self, weights: Tensor<1>) -> Self {
        self.weights = Some(weights.detach());
        self
    }

    /// Drops the rows where `mask` is `false`: their value becomes exactly `0` (even if it was
    /// `inf` or NaN), they receive a zero gradient, and they leave the `Mean` denominator.
    ///
    /// # Panics
    /// If the mask's shape differs from the rows' shape (the logits' shape without its last
    /// dimension).
    pub fn masked(self, mask: &RowMask) -> Self {
        assert_same_dims("mask", &mask.dims, &self.row_dims);
        let keep = mask.mask.clone();
        let drop = keep.clone().bool_not();
        let this = match self.values {
            // Rows computed on demand: the dropped rows' inputs are replaced before the rows
            // are computed, so nothing in them (NaN, ±inf) reaches the gradient.
            Values::Lazy(lazy) => {
                let keep = match &lazy.keep {
                    Some(k) => k.clone().bool_and(keep.clone()),
                    None => keep.clone(),
                };
                RowLoss {
                    values: Values::Lazy(LazyRows {
                        keep: Some(keep),
                        ..lazy
                    }),
                    ..self
                }
            }
            values => RowLoss { values, ..self }.materialized(),
        };
        let values = match this.values {
            Values::Ready(v) => Values::Ready(v.mask_fill(drop.clone(), 0.0)),
            lazy => lazy,
        };
        let weights = match this.weights {
            Some(w) => w.mask_fill(drop, 0.0),
            None => keep.float().cast(FloatDType::F32),
        };
        RowLoss {
            values,
            row_dims: this.row_dims,
            row_size: this.row_size,
            weights: Some(weights),
        }
    }

    /// Like [`masked`](Self::masked) when a mask is given, unchanged otherwise.
    pub fn masked_opt(self, mask: Option<&RowMask>) -> Self {
        match mask {
            Some(m) => self.masked(m),
            None => self,
        }
    }

    /// The per-row values, `[R]` (`0` at masked rows): PyTorch's `reduction="none"`.
    pub fn values(&self) -> Tensor<1> {
        self.ready()
    }

    /// The per-row values reshaped to the rows' shape (`[B, S]` for `[B, S, V]` logits).
    ///
    /// # Panics
    /// If `D` differs from the number of leading dimensions.
    pub fn into_shaped<const D: usize>(self) -> Tensor<D> {
        assert!(
            D == self.row_dims.len(),
            "into_shaped: rank {D} does not match the loss rows {:?}",
            self.row_dims
        );
        let dims: [usize; D] = core::array::from_fn(|i| self.row_dims[i]);
        self.ready().reshape(dims)
    }

    /// The rows' shape.
    pub fn row_dims(&self) -> &[usize] {
        &self.row_dims
    }

    /// Number of rows `R`.
    pub fn num_rows(&self) -> usize {
        self.row_dims.iter().product()
    }

    /// Elements per row (`V`), used by [`Reduction::ElementMean`].
    pub fn row_size(&self) -> usize {
        self.row_size
    }

    /// `Σ values / (max(W, 1) · extra)`, in the values' dtype (any float dtype: the weight sum
    /// is cast to it, a row count is a host number).
    fn mean(&self, values: Tensor<1>, extra: f64) -> Tensor<1> {
        match &self.weights {
            Some(w) => {
                let total = w.clone().sum();
                // Weight sums are counts or sums of positive class weights: 0 only when every
                // row is dropped, and then the numerator is 0 too.
                let zero = total.clone().equal_elem(0.0);
                let den = total.mask_fill(zero, 1.0).cast(values.dtype());
                let sum = values.sum().div(den);
                if extra == 1.0 {
                    sum
                } else {
                    sum.div_scalar(extra)
                }
            }
            None => values
                .sum()
                .div_scalar(self.num_rows().max(1) as f64 * extra),
        }
    }

    /// Reduces the rows to a scalar `[1]`; see [`Reduction`] for each denominator.
    ///
    /// Works in every float dtype: the result has the dtype of the rows (`f32` or `f64`: the
    /// losses compute `f16`/`bf16` inputs in `f32`).
    ///
    /// This is the one door to the fused kernels ([`crate::fused`]): the logit losses (every
    /// divergence, [`soft_kl`](crate::logits::soft_kl), [`cross_entropy`](crate::logits::cross_entropy))
    /// and the squared-error losses attach the kernel to their rows, and `reduce`, where the mask
    /// and the denominator are known, runs it where one serves the tensors (value and gradient
    /// in one pass); elsewhere it computes the rows and reduces them
    /// ([`reduce_composed`](Self::reduce_composed)). The results agree (parity tests).
    pub fn reduce(self, reduction: Reduction) -> Tensor<1> {
        if let Values::Lazy(lazy) = &self.values
            && let Some(fused) = &lazy.fused
            && let Some(value) = fused(&lazy.inputs, lazy.keep.as_ref(), reduction)
        {
            return value;
        }
        self.reduce_composed(reduction)
    }

    /// [`reduce`](Self::reduce) through the composed path only (Burn tensor operations, the rows
    /// computed and then reduced), even where a fused kernel runs: the reference the kernels are
    /// tested against. Same value and gradient as `reduce`, slower and with a logits-sized
    /// intermediate per operation.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use kd_losses::prelude::*;
    ///
    /// let device = Device::flex();
    /// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
    /// let t = Tensor::<2>::from_floats([[2.0, 0.5, -3.0]], &device);
    /// let rows = soft_kl(s, t, Temperature::new(2.0).unwrap(), T2Scaling::On);
    /// let fused = rows.clone().reduce(Reduction::RowMean).into_scalar::<f32>();
    /// let composed = rows.reduce_composed(Reduction::RowMean).into_scalar::<f32>();
    /// assert!((fused - composed).abs() < 1e-6);
    /// ```
    pub fn reduce_composed(self, reduction: Reduction) -> Tensor<1> {
        let this = self.materialized();
        let values = this.ready();
        let batch = this.row_dims.first().copied().unwrap_or(1);
        match reduction.denominator_parts(batch, this.row_size) {
            (true, factor) => this.mean(values, factor),
            (false, factor) if factor == 1.0 => values.sum(),
            (false, factor) => values.sum().div_scalar(factor),
        }
    }
}

/// The rows of a [`RowLoss`]: computed, or computed on demand from row-aligned inputs (so a
/// mask can replace dropped rows first, and a fused reduction can skip them).
// One per loss call, moved rather than copied in bulk: boxing the lazy variants would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Values {
    Ready(Tensor<1>),
    Lazy(LazyRows),
}

/// What [`Values::Lazy`] computes rows with.
type RowsFn = Arc<dyn Fn(Vec<Tensor<2>>) -> Tensor<1> + Send + Sync>;

/// A fused reduction that a loss family offers for its lazy rows (see
/// [`RowLoss::with_fused_reduction`]): from the row-aligned inputs, the kept rows and the
/// reduction, the reduced value with its gradient, or `None` where no kernel runs.
pub(crate) type FusedReduction = Arc<
    dyn Fn(&[Tensor<2>], Option<&Tensor<1, Bool>>, Reduction) -> Option<Tensor<1>> + Send + Sync,
>;

/// Rows computed on demand (see [`RowLoss::from_rows`]).
#[derive(Clone)]
struct LazyRows {
    inputs: Vec<Tensor<2>>,
    rows: RowsFn,
    /// The family's fused reduction of the same rows, if it has one here.
    fused: Option<FusedReduction>,
    /// Kept rows; the others are replaced before `rows` runs and set to 0 after.
    keep: Option<Tensor<1, Bool>>,
}

impl std::fmt::Debug for LazyRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRows")
            .field("inputs", &self.inputs)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl LazyRows {
    fn values(&self) -> Tensor<1> {
        match &self.keep {
            None => (self.rows)(self.inputs.clone()),
            Some(keep) => {
                let drop = keep.clone().bool_not();
                let inputs = self
                    .inputs
                    .iter()
                    .map(|x| select_rows(x.clone(), &drop))
                    .collect();
                (self.rows)(inputs).mask_fill(drop, 0.0)
            }
        }
    }
}
