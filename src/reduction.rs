//! Per-row losses, row masks and reductions.
//!
//! Every loss in this crate first computes one value per **row** — one position of all
//! dimensions but the last, so logits `[B, S, V]` have `R = B·S` rows — and returns them as a
//! [`RowLoss`]. A [`RowMask`] (from a boolean padding mask or from labels with an ignore index)
//! removes rows; a [`Reduction`] turns the rows into a scalar with an explicit denominator:
//!
//! | reduction | value | PyTorch / TRL equivalent |
//! |---|---|---|
//! | [`RowLoss::values`] (no reduction) | `r` per row, `0` at masked rows, shape `[R]` | `reduction="none"` summed over V |
//! | [`Reduction::Sum`] | `Σ r` | `"sum"` |
//! | [`Reduction::Mean`] | `Σ r / max(W, 1)` — `W` = number of kept rows (or their weight sum) | `"batchmean"` on 2-D input; TRL with labels |
//! | [`Reduction::BatchMean`] | `Σ r / shape[0]` | `F.kl_div(.., "batchmean")` on 3-D input, TRL without labels |
//! | [`Reduction::ElementMean`] | `Σ r / (max(W, 1) · V)` | `F.kl_div(.., "mean")` |
//! | [`Reduction::Normalizer`]`(n)` | `Σ r / n` | — (global token count) |
//!
//! `W` is `R` without a mask. A fully masked batch gives `0` with a zero gradient, never NaN.
//!
//! # The global normalizer
//! With gradient accumulation over micro-batches, or data-parallel shards, a per-batch `Mean`
//! weights each micro-batch equally instead of each token. Count the kept tokens of the whole
//! optimizer step (all micro-batches and shards) once, and reduce every piece with
//! `Reduction::Normalizer(Normalizer::new(total_tokens)?)`: the pieces then **add up exactly** to
//! the unsharded `Mean`.
//!
//! ```
//! use burn::tensor::{Bool, Device, Tensor};
//! use kd_losses::reduction::{Normalizer, Reduction, RowLoss, RowMask};
//!
//! let device = Device::flex();
//! let rows = RowLoss::new(Tensor::<1>::from_floats([1.0, 2.0, 30.0], &device), &[3], 5);
//! let mask = RowMask::new(Tensor::<1, Bool>::from_bool([true, true, false], &device));
//! let mean = rows.clone().masked(&mask).reduce(Reduction::Mean).into_scalar::<f32>();
//! assert_eq!(mean, 1.5);
//! let n = Reduction::Normalizer(Normalizer::new(4.0).unwrap());
//! assert_eq!(rows.masked(&mask).reduce(n).into_scalar::<f32>(), 0.75);
//! ```

use burn::tensor::{Bool, Int, Tensor};

use crate::error::{KdError, check_positive};

/// A validated global normalizer: finite and strictly positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalizer(f64);

impl Normalizer {
    /// Validates `n`.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] when `n` is NaN, infinite, zero or negative.
    pub fn new(n: f64) -> Result<Self, KdError> {
        check_positive("normalizer", n).map(Normalizer)
    }

    /// The normalizer as a number.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// How per-row values become one scalar. See the [module docs](self) for the table of
/// denominators.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Reduction {
    /// `Σ r` over kept rows.
    Sum,
    /// `Σ r / max(W, 1)`: mean over kept rows (token mean), `W` their count or weight sum.
    #[default]
    Mean,
    /// `Σ r / shape[0]`: PyTorch's `batchmean` (divides by the first dimension only, so for
    /// `[B, S, V]` logits it is `S` times larger than `Mean`).
    BatchMean,
    /// `Σ r / (max(W, 1) · V)`: mean over every element, PyTorch's `F.kl_div(.., "mean")`.
    ElementMean,
    /// `Σ r / n` with a caller-supplied normalizer (for gradient accumulation and sharding).
    Normalizer(Normalizer),
}

/// Which rows count: `true` keeps a row, `false` drops it.
///
/// Build it from a padding/attention mask of the logits' leading shape (`[B, S]` for
/// `[B, S, V]` logits) or from labels with an ignore index.
#[derive(Debug, Clone)]
pub struct RowMask {
    mask: Tensor<1, Bool>,
    dims: Vec<usize>,
}

impl RowMask {
    /// A mask over rows; its shape must equal the logits' shape without the last dimension.
    pub fn new<const D: usize>(mask: Tensor<D, Bool>) -> Self {
        let dims = mask.dims().to_vec();
        let n: usize = dims.iter().product();
        RowMask {
            mask: mask.reshape([n]),
            dims,
        }
    }

    /// Keeps the rows whose label differs from `ignore_index` (PyTorch uses `-100`).
    pub fn from_labels<const D: usize>(labels: Tensor<D, Int>, ignore_index: i64) -> Self {
        RowMask::new(labels.not_equal_elem(ignore_index))
    }

    /// The same mask viewed with the row shape `dims` (same number of rows).
    ///
    /// # Panics
    /// If `Π dims` differs from the number of rows.
    pub fn reshape_to(self, dims: &[usize]) -> RowMask {
        let n: usize = dims.iter().product();
        assert!(
            n == self.mask.dims()[0],
            "mask: shape {:?} cannot be viewed as {dims:?}",
            self.dims
        );
        RowMask {
            mask: self.mask,
            dims: dims.to_vec(),
        }
    }

    /// The mask flattened to `[R]`.
    pub fn flat(&self) -> Tensor<1, Bool> {
        self.mask.clone()
    }

    /// The mask's original shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Both masks must keep a row (logical and).
    pub fn and(self, other: &RowMask) -> RowMask {
        assert_same_dims("mask", &other.dims, &self.dims);
        RowMask {
            mask: self.mask.bool_and(other.mask.clone()),
            dims: self.dims,
        }
    }

    /// Number of kept rows, as a device scalar `[1]` (no host sync).
    pub fn count(&self) -> Tensor<1> {
        self.mask.clone().float().sum()
    }
}

/// Panics with Burn-style wording when two row shapes differ.
pub(crate) fn assert_same_dims(name: &str, got: &[usize], expected: &[usize]) {
    assert!(
        got == expected,
        "{name}: shape {got:?} does not match the loss rows {expected:?}"
    );
}

/// One loss value per row, with what its reductions need to know.
///
/// Rows are flattened in row-major order of the leading dimensions.
#[derive(Debug, Clone)]
pub struct RowLoss {
    values: Tensor<1>,
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
            values,
            row_dims: row_dims.to_vec(),
            row_size,
            weights: None,
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
        let values = self.values.mask_fill(drop.clone(), 0.0);
        let weights = match self.weights {
            Some(w) => w.mask_fill(drop, 0.0),
            None => keep.float(),
        };
        RowLoss {
            values,
            row_dims: self.row_dims,
            row_size: self.row_size,
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
        self.values.clone()
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
        self.values.reshape(dims)
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

    /// The mean's denominator `max(W, 1)` as a device scalar.
    fn mean_denominator(&self) -> Tensor<1> {
        match &self.weights {
            Some(w) => {
                let total = w.clone().sum();
                // Weight sums are counts or sums of positive class weights: 0 only when every
                // row is dropped, and then the numerator is 0 too.
                let zero = total.clone().equal_elem(0.0);
                total.mask_fill(zero, 1.0)
            }
            None => {
                let device = self.values.device();
                Tensor::<1>::from_floats([self.num_rows().max(1) as f32], &device)
            }
        }
    }

    /// Reduces the rows to a scalar `[1]`; see [`Reduction`] for each denominator.
    pub fn reduce(self, reduction: Reduction) -> Tensor<1> {
        match reduction {
            Reduction::Sum => self.values.sum(),
            Reduction::Mean => {
                let den = self.mean_denominator();
                self.values.sum().div(den)
            }
            Reduction::BatchMean => {
                let b = self.row_dims.first().copied().unwrap_or(1).max(1);
                self.values.sum().div_scalar(b as f64)
            }
            Reduction::ElementMean => {
                let den = self
                    .mean_denominator()
                    .mul_scalar(self.row_size.max(1) as f64);
                self.values.sum().div(den)
            }
            Reduction::Normalizer(n) => self.values.sum().div_scalar(n.get()),
        }
    }
}

/// Flattens `[..., V]` to `[R, V]` and returns the leading dims.
pub(crate) fn flatten_rows<const D: usize>(t: Tensor<D>) -> (Tensor<2>, Vec<usize>, usize) {
    assert!(D >= 1, "logits must have at least one dimension");
    let dims = t.dims();
    let v = dims[D - 1];
    let lead = dims[..D - 1].to_vec();
    let r = lead.iter().product();
    (t.reshape([r, v]), lead, v)
}
