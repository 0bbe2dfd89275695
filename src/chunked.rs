//! Row-chunked evaluation for large vocabularies.
//!
//! A divergence over `[N, V]` logits (`N = B·S` tokens, `V` ≈ 150 000) keeps several `N × V`
//! intermediates alive for the backward pass (log-softmaxes, probabilities, log-ratios). The
//! functions here split the rows into chunks of `chunk_rows` and, per chunk:
//!
//! 1. compute the per-row values on a fresh leaf copy of the chunk;
//! 2. run that chunk's backward at once, keep its per-row gradient `g = ∂r_i/∂x_i` (rows are
//!    independent, so the gradient of `Σ r` is exactly each row's own gradient), and free the
//!    chunk's graph.
//!
//! The result is linked to the student logits `x` by a first-order surrogate,
//!
//! ```text
//! r_i  =  r_i(x̄)  +  ⟨x_i, g_i⟩ − ⟨x̄_i, g_i⟩          x̄ = x detached
//! ```
//!
//! whose value is exactly `r_i` and whose gradient is exactly `g_i` times the row's cotangent, so
//! any mask and [`Reduction`](crate::reduction::Reduction) applied afterwards behaves as on the
//! unchunked path. The per-row dot products run as a batched `[N,1,V]×[N,V,1]` matmul, so no
//! further `N × V` temporary is formed.
//!
//! # Memory
//! The working set of the loss itself is bounded by `chunk_rows × V` (one chunk's graph at a
//! time). What remains of size `N × V` is the gradient with respect to the logits, which any
//! backward pass must produce: here it is computed during the forward pass and held until the
//! backward (as Liger-Kernel's fused losses do). `benches/chunked.rs` measures both paths.
//!
//! [`chunked_divergence`] is the same door as [`divergence`](crate::divergence::divergence):
//! reduced on a backend with a fused kernel, the kernel runs (its working memory is that
//! gradient alone), and the chunks above are its composed path.
//!
//! # Limits
//! * Only the student's logits receive a gradient: a per-row temperature that is itself
//!   tracked (a [learnable](crate::schedule::LearnableTemperature) one) is rejected — use the
//!   unchunked functions for it.
//! * Second derivatives through the surrogate are not those of the loss.
//! * Without autodiff (or when the logits are not tracked) the chunks are only evaluated.

use burn::tensor::Tensor;

use crate::chunk::{eval_chunk, link, row_chunks};
use crate::divergence::{Divergence, dense_kernel, dense_row_loss, dense_rows};
use crate::error::KdError;
use crate::reduction::RowLoss;
use crate::rows::{assert_same_shape, flatten_rows_native};
use crate::sparse::{
    SparseKernel, SparseOptions, TopkTeacher, check_sparse_inputs, sparse_row_loss, sparse_rows,
};
use crate::temperature::{RowTemperature, T2Scaling};

/// Evaluates a row-wise loss `f` chunk by chunk, with the exact value and student gradient of
/// the unchunked evaluation; see the [module docs](self).
///
/// `f(student_chunk, first_row, rows)` must return the `[rows]` per-row values of the rows
/// `first_row..first_row + rows`, each depending only on its own row of `student_chunk`
/// (slice any other per-row input with the same range).
///
/// # Shapes
/// - `student_logits`: `[R, V]`
/// - returns `[R]`.
///
/// # Panics
/// If `chunk_rows` is 0, or `f` returns a tensor of the wrong length.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::chunked::chunked_rows;
///
/// let device = Device::flex().autodiff();
/// let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &device).require_grad();
/// // r_i = Σ_v x_iv², two rows at a time.
/// let r = chunked_rows(x.clone(), 2, |c, _, n| c.powi_scalar(2).sum_dim(1).reshape([n]));
/// let grads = r.sum().backward();
/// let g = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(g, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
/// ```
pub fn chunked_rows<F>(student_logits: Tensor<2>, chunk_rows: usize, f: F) -> Tensor<1>
where
    F: Fn(Tensor<2>, usize, usize) -> Tensor<1>,
{
    let r = student_logits.dims()[0];
    let tracked = student_logits.is_tracked();
    // Chunks are sliced from a copy outside the autodiff graph.
    let base = student_logits.clone().inner();
    let mut values = Vec::new();
    let mut grads = Vec::new();
    for (first, n) in row_chunks(r, chunk_rows) {
        let chunk = base.clone().narrow(0, first, n);
        let ([out], g) = eval_chunk(chunk, tracked, |x| {
            let out = f(x, first, n);
            check_len(&out, n);
            [out]
        });
        values.push(out);
        grads.extend(g);
    }
    if values.is_empty() {
        return Tensor::<1>::zeros([0], &student_logits.device());
    }
    let values = Tensor::cat(values, 0);
    if !tracked {
        return values;
    }
    link(values, vec![(student_logits, Tensor::cat(grads, 0))]).0
}

fn check_len(out: &Tensor<1>, n: usize) {
    assert!(
        out.dims()[0] == n,
        "chunked_rows: the row function returned shape {:?} for a chunk of {n} rows",
        out.dims()
    );
}

/// Rejects a tracked per-row temperature (its gradient would be lost).
fn untracked(t: RowTemperature) -> RowTemperature {
    if let RowTemperature::PerRow(tt) = &t {
        assert!(
            !tt.is_tracked(),
            "temperature: a per-row temperature that requires a gradient is not supported by the chunked losses"
        );
    }
    t
}

/// [`divergence`](crate::divergence::divergence) evaluated `chunk_rows` rows at a time: the same
/// value and student gradient, with the loss's working memory bounded by `chunk_rows × V`.
///
/// ```text
/// r_i = s · D(softmax(student_i / T), softmax(teacher_i / T))        (as the unchunked loss)
/// ```
///
/// It is the same door as [`divergence`](crate::divergence::divergence): reduced where a fused
/// kernel serves the tensors (Flex, CubeCL; a scalar temperature), the kernel runs, whose working
/// memory is the student gradient alone (the floor of any backward pass), so no chunks are
/// needed; the per-row values ([`RowLoss::values`]), a per-row temperature and the backends
/// without a kernel take the composed path chunk by chunk.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// As [`divergence`](crate::divergence::divergence); also if `chunk_rows` is 0 or a per-row
/// temperature is tracked.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::chunked::chunked_divergence;
/// use kd_losses::divergence::{divergence, Divergence};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, 2.0], [0.5, 0.1, 0.0], [3.0, 2.0, 1.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0, 2.0], [0.1, 0.5, 0.0], [1.0, 2.0, 3.0]], &device);
/// let d = Divergence::ReverseKl;
/// let a = chunked_divergence(s.clone(), t.clone(), d, Temperature::ONE, T2Scaling::Off, 2);
/// let b = divergence(s, t, d, Temperature::ONE, T2Scaling::Off);
/// let (a, b) = (a.reduce(Reduction::Sum).into_scalar::<f32>(), b.reduce(Reduction::Sum).into_scalar::<f32>());
/// assert!((a - b).abs() < 1e-6);
/// ```
pub fn chunked_divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    divergence: Divergence,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
    chunk_rows: usize,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    assert!(chunk_rows > 0, "chunk_rows must be > 0, got 0");
    let temperature = untracked(temperature.into());
    // In their own dtype, as `divergence`: the kernels read `f16`/`bf16` as they are.
    let (s, rows, v) = flatten_rows_native(student_logits);
    let (t, _, _) = flatten_rows_native(teacher_logits.detach());
    temperature.check_rows(s.dims()[0]);
    let kernel = dense_kernel(divergence, &temperature, scaling);
    dense_row_loss(s, t, &rows, v, kernel, move |s, t| {
        chunked_rows(s, chunk_rows, |sc, first, n| {
            let tc = t.clone().narrow(0, first, n);
            dense_rows(sc, tc, divergence, &temperature.narrow(first, n), scaling)
        })
    })
}

/// [`sparse_divergence`](crate::sparse::sparse_divergence) evaluated `chunk_rows` rows at a
/// time (indices checked once, up front). The same door as `sparse_divergence`: reduced where
/// the top-k kernel serves the tensors, the kernel runs; the chunks are the composed path.
///
/// ```text
/// r_i = s · D(q_i, p_i)     over the k + 1 bins of the sparse module
/// ```
///
/// # Shapes
/// As [`sparse_divergence`](crate::sparse::sparse_divergence).
///
/// # Panics
/// As [`sparse_divergence`](crate::sparse::sparse_divergence); also if `chunk_rows` is 0 or a
/// per-row temperature is tracked.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::chunked::chunked_sparse_divergence;
/// use kd_losses::divergence::Divergence;
/// use kd_losses::sparse::{SparseOptions, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, 2.0], [0.5, 0.1, 0.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[2, 0], [1, 0]], &device),
///     Tensor::<2>::from_floats([[3.0, 1.0], [2.0, 0.0]], &device),
/// );
/// let rows = chunked_sparse_divergence(s, teacher, Divergence::ForwardKl,
///     SparseOptions::default(), Temperature::ONE, T2Scaling::On, 1);
/// assert!(rows.reduce(Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
pub fn chunked_sparse_divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TopkTeacher<D>,
    divergence: Divergence,
    options: SparseOptions,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
    chunk_rows: usize,
) -> RowLoss {
    let v = check_sparse_inputs(&student_logits.dims(), &teacher, divergence, options);
    assert!(chunk_rows > 0, "chunk_rows must be > 0, got 0");
    let temperature = untracked(temperature.into());
    let (s, rows, _) = flatten_rows_native(student_logits);
    let (idx, vals) = teacher.flat_rows();
    temperature.check_rows(s.dims()[0]);
    let kernel = SparseKernel::new(divergence, options, &temperature, scaling);
    let composed_idx = idx.clone();
    sparse_row_loss(s, idx, vals, &rows, v, kernel, move |s, vals| {
        chunked_rows(s, chunk_rows, |sc, first, n| {
            let tc = temperature.narrow(first, n);
            let r = sparse_rows(
                sc,
                composed_idx.clone().narrow(0, first, n),
                vals.clone().narrow(0, first, n),
                divergence,
                options,
                &tc,
            );
            tc.scale(r, scaling)
        })
    })
}

/// A `chunk_rows` that keeps one chunk's `f32` working set under `bytes` for vocabulary `v`,
/// assuming about eight `chunk × V` temporaries.
///
/// # Errors
/// [`KdError::NotPositive`] when `bytes` or `v` is 0.
///
/// ```
/// use kd_losses::chunked::chunk_rows_for_budget;
/// // 1 GiB for a 128 000-entry vocabulary: 262 rows per chunk.
/// assert_eq!(chunk_rows_for_budget(1 << 30, 128_000).unwrap(), 262);
/// ```
pub fn chunk_rows_for_budget(bytes: usize, v: usize) -> Result<usize, KdError> {
    crate::error::check_positive("bytes", bytes as f64)?;
    crate::error::check_positive("vocabulary size", v as f64)?;
    Ok((bytes / (8 * 4 * v)).max(1))
}
