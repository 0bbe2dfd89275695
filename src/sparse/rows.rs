//! The top-k divergence itself: [`sparse_divergence`] and [`topk_kd`], and the per-row core
//! shared with the chunked losses.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::{MissingMass, SparseOptions, StudentNorm, TopkSpace, TopkTeacher, check_topk_indices};
use crate::divergence::Divergence;
use std::sync::Arc;

use crate::reduction::{RowLoss, row_weights};
use crate::rows::{at_least_f32, flatten_rows_native, point_masses, row_logsumexp};
use crate::temperature::{RowTemperature, T2Scaling};

/// Any [`Divergence`](crate::divergence::Divergence) between the student and a top-k teacher, per row; see the
/// [module docs](crate::sparse) for the bins.
///
/// ```text
/// bins: the k ids + a tail;  p = teacher bins (MissingMass), q = student bins (StudentNorm)
/// r_i = s · D(q_i, p_i)          s = T² with T2Scaling::On (Hinton top-k KD), else 1
/// ```
///
/// # Shapes
/// - `student_logits`: `[..., V]`
/// - `teacher`: indices and values `[..., k]` with the same leading dims, `k ≤ V`
/// - returns a [`RowLoss`] of `R = Π leading dims` rows with row size `V`.
///
/// # Panics
/// If the leading shapes differ, `k > V`, an index is out of range or repeated (messages of
/// [`KdError::TopkTooLarge`](crate::error::KdError::TopkTooLarge) / [`KdError::InvalidTopkIndex`](crate::error::KdError::InvalidTopkIndex)), `TailBucket` is combined with
/// logits or with `StudentNorm::Support`, or the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::divergence::Divergence;
/// use kd_losses::sparse::{sparse_divergence, SparseOptions, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.5, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[0, 2]], &device),
///     Tensor::<2>::from_floats([[3.0, 1.0]], &device),
/// );
/// let t = Temperature::new(2.0).unwrap();
/// let rows = sparse_divergence(student, teacher, Divergence::ForwardKl, SparseOptions::default(), t, T2Scaling::On);
/// assert!(rows.reduce(Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
pub fn sparse_divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TopkTeacher<D>,
    divergence: Divergence,
    options: SparseOptions,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let v = check_sparse_inputs(&student_logits.dims(), &teacher, divergence, options);
    let temperature = temperature.into();
    // In its own dtype: the top-k kernel reads `f16`/`bf16` as they are; the rows widen.
    let (s, rows, _) = flatten_rows_native(student_logits);
    let (idx, vals) = teacher.flat_rows();
    temperature.check_rows(s.dims()[0]);
    let kernel = SparseKernel::new(divergence, options, &temperature, scaling);
    let composed_idx = idx.clone();
    sparse_row_loss(s, idx, vals, &rows, v, kernel, move |s, vals| {
        let values = sparse_rows(
            s,
            composed_idx.clone(),
            vals,
            divergence,
            options,
            &temperature,
        );
        temperature.scale(values, scaling)
    })
}

/// The top-k kernel's parameters for a loss it computes (the forward KL with
/// `MissingMass::Renormalize` and `StudentNorm::Full`, a scalar temperature): `(T, s)`.
#[derive(Clone, Copy)]
pub(crate) struct SparseKernel {
    temperature: f64,
    soft_scale: f64,
}

impl SparseKernel {
    /// `None` for what the kernel does not compute.
    pub(crate) fn new(
        divergence: Divergence,
        options: SparseOptions,
        temperature: &RowTemperature,
        scaling: T2Scaling,
    ) -> Option<Self> {
        let RowTemperature::Scalar(t) = temperature else {
            return None;
        };
        supported(divergence, options).then(|| SparseKernel {
            temperature: t.get(),
            soft_scale: scaling.factor(*t),
        })
    }
}

/// Whether the top-k kernel computes `divergence` with `options`.
pub(crate) fn supported(divergence: Divergence, options: SparseOptions) -> bool {
    divergence.kernel_kind() == crate::fused::SoftKind::ForwardKl
        && options.missing_mass == MissingMass::Renormalize
        && options.student_norm == StudentNorm::Full
}

/// The one door of the top-k losses: rows of `[R, V]` student logits `s` (its own dtype) against
/// `[R, k]` teacher entries, computed on demand by `rows(s widened to f32, vals)` (the composed
/// path, plain or chunked), with the top-k kernel as their reduction where it serves the
/// tensors (CubeCL backends; the teacher's values in the student's dtype).
pub(crate) fn sparse_row_loss(
    s: Tensor<2>,
    idx: Tensor<2, Int>,
    vals: Tensor<2>,
    row_dims: &[usize],
    v: usize,
    kernel: Option<SparseKernel>,
    rows: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1> + Send + Sync + 'static,
) -> RowLoss {
    let loss = RowLoss::from_rows(vec![s, vals], row_dims, v, move |x| {
        let [s, vals] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        rows(at_least_f32(s), vals)
    });
    let Some(kernel) = kernel else {
        return loss;
    };
    let dims = row_dims.to_vec();
    loss.with_fused_reduction(Arc::new(move |inputs, keep, reduction| {
        let (s, vals) = (&inputs[0], &inputs[1]);
        if vals.dtype() != s.dtype() {
            return None;
        }
        let weights = row_weights(keep.cloned(), &dims, v, reduction, &s.device());
        crate::fused::sparse_kl(
            s,
            idx.clone(),
            vals.clone(),
            weights,
            kernel.temperature,
            kernel.soft_scale,
        )
    }))
}

/// Validates a sparse call (shapes, divergence parameters, indices, option combinations) and
/// returns the vocabulary size `V`. Shared by [`sparse_divergence`] and the chunked variant.
///
/// # Panics
/// With the messages documented on [`sparse_divergence`].
pub(crate) fn check_sparse_inputs<const D: usize>(
    sd: &[usize; D],
    teacher: &TopkTeacher<D>,
    divergence: Divergence,
    options: SparseOptions,
) -> usize {
    let td = teacher.indices.dims();
    assert!(
        sd[..D - 1] == td[..D - 1],
        "teacher indices: shape {td:?} does not match student_logits shape {sd:?} in the leading dimensions"
    );
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let v = sd[D - 1];
    if let Err(e) = check_topk_indices(&teacher.indices, v) {
        panic!("teacher indices: {e}");
    }
    let tail_bucket = options.missing_mass == MissingMass::TailBucket;
    assert!(
        !(tail_bucket && teacher.space == TopkSpace::Logits),
        "MissingMass::TailBucket needs teacher log-probabilities (TopkTeacher::from_log_probs), got logits"
    );
    assert!(
        !(tail_bucket && options.student_norm == StudentNorm::Support),
        "StudentNorm::Support renormalises both sides over the top-k; it cannot be combined with MissingMass::TailBucket"
    );
    v
}

/// The per-row core on flattened `[R, V]` student logits and `[R, k]` teacher entries (all
/// checks done by the caller).
pub(crate) fn sparse_rows(
    s: Tensor<2>,
    idx: Tensor<2, Int>,
    vals: Tensor<2>,
    divergence: Divergence,
    options: SparseOptions,
    temperature: &RowTemperature,
) -> Tensor<1> {
    let [r, v] = s.dims();
    let k = idx.dims()[1];
    let vals = vals.detach();
    let (log_q, log_p) = match options.student_norm {
        StudentNorm::Support => {
            // Gather first: no full-vocabulary work at all.
            let s_k = s.gather(1, idx);
            (temperature.log_softmax(s_k), temperature.log_softmax(vals))
        }
        StudentNorm::Full => {
            // A +inf student logit is a point mass, as in the dense losses.
            let z = point_masses(temperature.divide(s));
            // The only full-vocabulary pass the forward KL needs: the row normaliser.
            let lse = row_logsumexp(z.clone()).reshape([r, 1]);
            let log_q_k = z.clone().gather(1, idx.clone()).sub(lse.clone());
            // With k = V there is nothing outside the top-k: no tail bin on either side (a
            // rounding-level teacher tail would otherwise meet an empty student tail).
            let need_tail = k < v
                && (options.missing_mass == MissingMass::TailBucket
                    || !divergence.ignores_teacher_zeros());
            if !need_tail {
                (log_q_k, temperature.log_softmax(vals))
            } else {
                // Student tail: log Σ_{v ∉ ids} q_v, exactly (not 1 − Σ q, which cancels).
                let ones = Tensor::<2>::ones([r, k], &z.device());
                let support = Tensor::<2>::zeros([r, v], &z.device())
                    .scatter(1, idx, ones, IndexingUpdateOp::Add)
                    .greater_elem(0.5);
                let log_q_tail = row_logsumexp(z.mask_fill(support, f32::NEG_INFINITY))
                    .reshape([r, 1])
                    .sub(lse);
                let log_q = Tensor::cat(vec![log_q_k, log_q_tail], 1);
                let log_p = match options.missing_mass {
                    MissingMass::Renormalize => {
                        let tail = Tensor::<2>::full([r, 1], f32::NEG_INFINITY, &vals.device());
                        Tensor::cat(vec![temperature.log_softmax(vals), tail], 1)
                    }
                    MissingMass::TailBucket => {
                        let kept = row_logsumexp(vals.clone()).reshape([r, 1]);
                        // log(1 − exp(kept)), −inf when the top-k already hold all the mass.
                        let full = kept.clone().greater_equal_elem(0.0);
                        let mass = kept
                            .mask_fill(full.clone(), -1.0)
                            .exp()
                            .neg()
                            .add_scalar(1.0);
                        let tail = mass.log().mask_fill(full, f32::NEG_INFINITY);
                        temperature.log_softmax(Tensor::cat(vec![vals, tail], 1))
                    }
                };
                (log_q, log_p)
            }
        }
    };
    divergence.rows_unchecked(log_q, log_p)
}

/// Hinton KD with a top-k teacher: [`sparse_divergence`] with [`Divergence::ForwardKl`] — the
/// loss of golden family h.
///
/// ```text
/// p̂ = softmax(topk_logits / T)  (over k)     r_i = s · Σ_k p̂_k (log p̂_k − log q_{idx_k})
/// ```
///
/// # Shapes
/// As [`sparse_divergence`].
///
/// # Panics
/// As [`sparse_divergence`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::sparse::{topk_kd, StudentNorm, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[2.0, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[0, 1, 2]], &device),
///     Tensor::<2>::from_floats([[2.0, 0.0, -1.0]], &device),
/// );
/// let v = topk_kd(s, teacher, StudentNorm::Full, Temperature::ONE, T2Scaling::On).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>().abs() < 1e-6); // k = V and equal logits
/// ```
pub fn topk_kd<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TopkTeacher<D>,
    student_norm: StudentNorm,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    sparse_divergence(
        student_logits,
        teacher,
        Divergence::ForwardKl,
        SparseOptions {
            missing_mass: MissingMass::Renormalize,
            student_norm,
        },
        temperature,
        scaling,
    )
}
