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
//! | [`Reduction::RowMean`] | `Σ r / max(W, 1)` — `W` = number of kept rows (or their weight sum) | `"batchmean"` on 2-D input; TRL with labels |
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
//! let mean = rows.clone().masked(&mask).reduce(Reduction::RowMean).into_scalar::<f32>();
//! assert_eq!(mean, 1.5);
//! let n = Reduction::Normalizer(Normalizer::new(4.0).unwrap());
//! assert_eq!(rows.masked(&mask).reduce(n).into_scalar::<f32>(), 0.75);
//! ```

use burn::tensor::{Bool, DType, Tensor};

use crate::error::{KdError, check_positive};

mod mask;
mod row_loss;

pub use mask::RowMask;
pub use row_loss::RowLoss;

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

    /// The normalizer of a **global count of kept rows** (valid tokens): the count summed over
    /// every micro-batch and every data-parallel worker of one optimizer step. It is
    /// `max(count, 1)`, the denominator [`Reduction::RowMean`] uses for the whole batch, so a
    /// step whose every row is masked gives `0` (never an error or NaN), as the unsharded mean
    /// does. See `docs/conventions.md`, "Data-parallel training", for the count each engine needs.
    ///
    /// # Errors
    /// [`KdError::NotFinite`] when `count` is NaN or infinite; [`KdError::NotPositive`] when it
    /// is negative.
    ///
    /// # Example
    /// ```
    /// use kd_losses::Normalizer;
    /// // Two workers with 5 and 2 valid tokens: every shard divides by 7.
    /// assert_eq!(Normalizer::from_count(5.0 + 2.0).unwrap().get(), 7.0);
    /// assert_eq!(Normalizer::from_count(0.0).unwrap().get(), 1.0);
    /// assert!(Normalizer::from_count(-1.0).is_err());
    /// ```
    pub fn from_count(count: f64) -> Result<Self, KdError> {
        if !count.is_finite() {
            return Err(KdError::NotFinite {
                name: "row count",
                value: count,
            });
        }
        if count < 0.0 {
            return Err(KdError::NotPositive {
                name: "row count",
                value: count,
            });
        }
        Ok(Normalizer(count.max(1.0)))
    }

    /// The global count of kept rows of a **distributed data-parallel** step (Burn's
    /// `ExecutionStrategy::DistributedDataParallel`): this worker's count of kept rows, summed
    /// over `devices` by Burn's collective `all_reduce` (`ReduceOperation::Sum`), untracked, read
    /// back to the host and made a normalizer with [`from_count`](Self::from_count). Call it
    /// inside the training step, before reducing; every worker gets the same value.
    ///
    /// Under DDP Burn all-reduces the gradients itself: with `all_reduce_op: Sum` reduce with this
    /// normalizer; with `Mean` (the gradients are divided by the world size) use
    /// [`for_averaged_gradients`](Self::for_averaged_gradients).
    ///
    /// # Panics
    /// Where the backend has no collective operations: Burn 0.22 implements `all_reduce` on CUDA
    /// with NCCL only (single node). With `ExecutionStrategy::MultiDevice`, gradient
    /// accumulation or one device, count on the host instead (the batch is known there) and use
    /// [`from_count`](Self::from_count).
    ///
    /// # Example
    /// ```no_run
    /// use burn::tensor::{Bool, Device, Tensor};
    /// use kd_losses::{Normalizer, RowMask};
    ///
    /// # #[allow(dead_code)]
    /// fn step_normalizer(mask: Tensor<2, Bool>, devices: Vec<Device>) -> Normalizer {
    ///     Normalizer::all_reduced(&RowMask::new(mask), devices).unwrap()
    /// }
    /// ```
    ///
    /// # Errors
    /// As [`from_count`](Self::from_count).
    pub fn all_reduced(
        mask: &RowMask,
        devices: Vec<burn::tensor::Device>,
    ) -> Result<Self, KdError> {
        let local = mask.count().detach();
        let global = burn::tensor::distributed::all_reduce(
            local,
            burn::tensor::distributed::ReduceOperation::Sum,
            devices,
        )
        .resolve();
        Normalizer::from_count(global.into_scalar::<f64>())
    }

    /// The normalizer for an engine that **averages** the gradients of `world_size` workers
    /// (Burn's DDP with `all_reduce_op: Mean`): `self / world_size`, so that the averaged
    /// gradient is the gradient of the global token mean.
    ///
    /// # Example
    /// ```
    /// use kd_losses::Normalizer;
    /// let n = Normalizer::from_count(7.0).unwrap().for_averaged_gradients(2);
    /// assert_eq!(n.get(), 3.5);
    /// ```
    ///
    /// # Panics
    /// When `world_size` is 0.
    pub fn for_averaged_gradients(self, world_size: usize) -> Self {
        assert!(world_size > 0, "world_size: must be at least 1, got 0");
        Normalizer(self.0 / world_size as f64)
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
    /// `Σ r / max(W, 1)`: mean over kept **rows** (the token mean of sequence distillation),
    /// `W` their count or weight sum. Not Burn's `Reduction::Mean`, which divides by every
    /// element (here [`ElementMean`](Self::ElementMean)); the name says which.
    #[default]
    RowMean,
    /// `Σ r / shape[0]`: PyTorch's `batchmean` (divides by the first dimension only, so for
    /// `[B, S, V]` logits it is `S` times larger than `Mean`).
    BatchMean,
    /// `Σ r / (max(W, 1) · V)`: mean over every element, PyTorch's `F.kl_div(.., "mean")`.
    ElementMean,
    /// `Σ r / n` with a caller-supplied normalizer (for gradient accumulation and sharding).
    Normalizer(Normalizer),
}

impl Reduction {
    /// The reduction's denominator as `(counts_rows, factor)`: the reduced loss is
    /// `Σ_kept w·r / (c · factor)` with `c = max(W, 1)` (the kept rows' count or weight sum) when
    /// `counts_rows`, else `c = 1`. `batch` is the first dimension of the rows' shape, `row_size`
    /// the elements per row (`V`). The one place every path (composed reduce, fused kernels'
    /// row weights, chunked and fused-linear losses) takes its denominator from.
    pub(crate) fn denominator_parts(self, batch: usize, row_size: usize) -> (bool, f64) {
        match self {
            Reduction::Sum => (false, 1.0),
            Reduction::RowMean => (true, 1.0),
            Reduction::BatchMean => (false, batch.max(1) as f64),
            Reduction::ElementMean => (true, row_size.max(1) as f64),
            Reduction::Normalizer(n) => (false, n.get()),
        }
    }

    /// The denominator for `kept` rows (or their weight sum) on the host; see
    /// [`denominator_parts`](Self::denominator_parts).
    pub(crate) fn denominator(self, kept: f64, batch: usize, row_size: usize) -> f64 {
        let (counts, factor) = self.denominator_parts(batch, row_size);
        if counts {
            kept.max(1.0) * factor
        } else {
            factor
        }
    }
}

/// Per-row weights `w_r` such that the reduced loss is `Σ_r w_r · loss_r`, matching
/// [`RowLoss::reduce`] (after [`RowLoss::masked`] with `keep`): what the fused kernels take
/// instead of a [`Reduction`]. `rows` are the leading dims, `v` the row size. `f32`.
pub(crate) fn row_weights(
    keep: Option<Tensor<1, Bool>>,
    rows: &[usize],
    v: usize,
    reduction: Reduction,
    device: &burn::tensor::Device,
) -> Tensor<1> {
    let r: usize = rows.iter().product();
    let masked = keep.is_some();
    // In f32 whatever the device's default float dtype is (a bf16 default would round 1/3).
    let f32 = DType::F32;
    let k = match keep {
        Some(k) => k.float().cast(f32),
        None => Tensor::<1>::ones([r], device).cast(f32),
    };
    let batch = rows.first().copied().unwrap_or(1);
    match reduction.denominator_parts(batch, v) {
        // The count stays on the device (no synchronisation) when a mask decides it.
        (true, factor) if masked => {
            let total = k.clone().sum();
            let zero = total.clone().equal_elem(0.0);
            let den = total.mask_fill(zero, 1.0).mul_scalar(factor);
            k.div(den)
        }
        (true, factor) => k.div_scalar(r.max(1) as f64 * factor),
        (false, factor) if factor == 1.0 => k,
        (false, factor) => k.div_scalar(factor),
    }
}

/// Burn's reduction, with **Burn's meaning**: `burn::nn::loss::Reduction::Mean` (and `Auto`) is
/// the mean over every element, which is [`Reduction::ElementMean`] here — not this crate's
/// [`Reduction::RowMean`], the mean over rows (a factor of `V` apart for logits `[R, V]`).
///
/// | Burn | kd-losses | denominator |
/// |---|---|---|
/// | `Mean`, `Auto` | [`Reduction::ElementMean`] | kept rows × `V` |
/// | `Sum` | [`Reduction::Sum`] | 1 |
/// | `BatchMean` | [`Reduction::BatchMean`] | `shape[0]` |
///
/// ```
/// use kd_losses::Reduction;
/// let r: Reduction = burn::nn::loss::Reduction::Mean.into();
/// assert_eq!(r, Reduction::ElementMean);
/// ```
impl From<burn::nn::loss::Reduction> for Reduction {
    fn from(r: burn::nn::loss::Reduction) -> Self {
        match r {
            burn::nn::loss::Reduction::Mean | burn::nn::loss::Reduction::Auto => {
                Reduction::ElementMean
            }
            burn::nn::loss::Reduction::Sum => Reduction::Sum,
            burn::nn::loss::Reduction::BatchMean => Reduction::BatchMean,
        }
    }
}
