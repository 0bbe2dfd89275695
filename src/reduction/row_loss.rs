//! [`RowLoss`]: one loss value per row, and its reductions.

use std::sync::Arc;

use burn::tensor::{Bool, FloatDType, Tensor};

use super::{Reduction, RowMask, row_weights};
use crate::rows::{assert_same_dims, select_rows};

/// One loss value per row, with what its reductions need to know.
///
/// Rows are flattened in row-major order of the leading dimensions.
///
/// The squared-error losses (hidden-state and attention-map MSE) keep their inputs instead of
/// computing the rows up front where the fused CPU kernel runs ([`crate::fused`]): a
/// [`reduce`](Self::reduce) then computes the reduced loss and its gradient in one pass, and
/// [`values`](Self::values) computes the rows on demand. Results are the same either way.
#[derive(Debug, Clone)]
pub struct RowLoss {
    values: Values,
    row_dims: Vec<usize>,
    row_size: usize,
    weights: Option<Tensor<1>>,
}

/// How [`RowLoss::squares`] treats `±inf` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InfEntries {
    /// As they are (an infinite square).
    Kept,
    /// As 0 in both inputs (masked attention scores).
    AsZero,
}

/// What one row of [`RowLoss::squares`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SquareRows {
    /// Each row sums its squares (hidden states).
    RowSums,
    /// Every entry is a row (attention maps).
    PerElement,
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

    /// Rows of squared differences of `student` and `teacher` (`[M, K]`, the teacher detached),
    /// evaluated lazily: [`SquareRows::PerElement`] makes every entry a row (`R = M·K`, `row_size = 1`,
    /// attention maps), otherwise each of the `M` rows sums its `K` squares (hidden states).
    /// With [`InfEntries::AsZero`], entries that are `±inf` in either input count as 0 in both.
    pub(crate) fn squares(
        student: Tensor<2>,
        teacher: Tensor<2>,
        row_dims: &[usize],
        row_size: usize,
        inf: InfEntries,
        rows: SquareRows,
    ) -> Self {
        let zero_inf = inf == InfEntries::AsZero;
        let per_element = rows == SquareRows::PerElement;
        let sq = SquaredRows {
            student,
            teacher: teacher.detach(),
            zero_inf,
            per_element,
            keep: None,
        };
        if !crate::fused::sq_available(&sq.student) {
            // Composed: computed on demand, so that a mask replaces dropped rows first. Per
            // element, every entry is a row of one.
            let SquaredRows {
                student, teacher, ..
            } = sq;
            let (student, teacher) = if per_element {
                let [m, k] = student.dims();
                (student.reshape([m * k, 1]), teacher.reshape([m * k, 1]))
            } else {
                (student, teacher)
            };
            return RowLoss::from_rows(vec![student, teacher], row_dims, row_size, move |x| {
                let [student, teacher] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
                SquaredRows {
                    student,
                    teacher,
                    zero_inf,
                    per_element: false,
                    keep: None,
                }
                .values()
            });
        }
        RowLoss {
            values: Values::Squares(sq),
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
                keep: None,
            }),
            row_dims: row_dims.to_vec(),
            row_size,
            weights: None,
        }
    }

    /// The rows as a tensor, computing them if they were kept lazily.
    fn materialized(self) -> Self {
        match self.values {
            Values::Squares(sq) => RowLoss {
                values: Values::Ready(sq.values()),
                ..self
            },
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
            Values::Squares(sq) => sq.values(),
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
            // Row-aligned squares stay lazy: the kernel takes the mask as row weights.
            Values::Squares(sq) if !sq.per_element => {
                let keep = match &sq.keep {
                    Some(k) => k.clone().bool_and(keep.clone()),
                    None => keep.clone(),
                };
                RowLoss {
                    values: Values::Squares(SquaredRows {
                        keep: Some(keep),
                        ..sq
                    }),
                    ..self
                }
            }
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
    pub fn reduce(self, reduction: Reduction) -> Tensor<1> {
        if let Values::Squares(sq) = &self.values
            && let Some(value) = sq.reduce_fused(&self.row_dims, self.row_size, reduction)
        {
            return value;
        }
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

/// The rows of a [`RowLoss`]: computed, squared differences kept for the fused kernel, or
/// computed on demand from row-aligned inputs (so a mask can replace dropped rows first).
// One per loss call, moved rather than copied in bulk: boxing the lazy variants would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Values {
    Ready(Tensor<1>),
    Squares(SquaredRows),
    Lazy(LazyRows),
}

/// What [`Values::Lazy`] computes rows with.
type RowsFn = Arc<dyn Fn(Vec<Tensor<2>>) -> Tensor<1> + Send + Sync>;

/// Rows computed on demand (see [`RowLoss::from_rows`]).
#[derive(Clone)]
struct LazyRows {
    inputs: Vec<Tensor<2>>,
    rows: RowsFn,
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

/// Squared differences of `[M, K]` maps, not yet computed (see [`RowLoss::squares`]).
#[derive(Debug, Clone)]
struct SquaredRows {
    student: Tensor<2>,
    teacher: Tensor<2>,
    zero_inf: bool,
    per_element: bool,
    /// Kept rows (only for row-aligned squares).
    keep: Option<Tensor<1, Bool>>,
}

impl SquaredRows {
    /// The rows, composed: `[M·K]` per element or `[M]` row sums, `0` at dropped rows.
    fn values(&self) -> Tensor<1> {
        let (mut s, mut t) = (self.student.clone(), self.teacher.clone());
        if let Some(keep) = &self.keep {
            // Select, don't multiply: a NaN in a dropped row must not reach the gradient.
            let drop = keep.clone().bool_not();
            s = select_rows(s, &drop);
            t = select_rows(t, &drop);
        }
        if self.zero_inf {
            let inf = s.clone().is_inf().bool_or(t.clone().is_inf());
            s = s.mask_fill(inf.clone(), 0.0);
            t = t.mask_fill(inf, 0.0);
        }
        let sq = s.sub(t).square();
        let [m, k] = sq.dims();
        let v = if self.per_element {
            sq.reshape([m * k])
        } else {
            sq.sum_dim(1).reshape([m])
        };
        match &self.keep {
            Some(keep) => v.mask_fill(keep.clone().bool_not(), 0.0),
            None => v,
        }
    }

    /// The reduced loss through the fused kernel: per-row weights from the reduction (and the
    /// mask), exactly as [`RowLoss::reduce`] divides; `None` where the kernel does not run.
    fn reduce_fused(
        &self,
        row_dims: &[usize],
        row_size: usize,
        reduction: Reduction,
    ) -> Option<Tensor<1>> {
        let device = self.student.device();
        let m = self.student.dims()[0];
        let weights = if self.per_element {
            let r = row_dims.iter().product::<usize>() as f64;
            let batch = row_dims.first().copied().unwrap_or(1);
            let c = 1.0 / reduction.denominator(r, batch, row_size);
            Tensor::<1>::full([m], c, &device)
        } else {
            row_weights(self.keep.clone(), row_dims, row_size, reduction, &device)
        };
        crate::fused::sq_reduced(
            self.student.clone(),
            self.teacher.clone(),
            weights,
            self.zero_inf,
        )
    }
}
