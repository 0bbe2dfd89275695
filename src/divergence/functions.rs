//! The divergence functions: [`divergence`] for any [`Divergence`](crate::divergence::Divergence) from logits and a
//! temperature, [`divergence_from_log_probs`], and one named function per divergence.

use burn::tensor::Tensor;

use super::{Divergence, JsdConvention};
use crate::logits::door::{LogitKernel, logit_rows};
use crate::reduction::RowLoss;
use crate::rows::{assert_same_shape, flatten_rows, flatten_rows_native, same_dtype};
use crate::temperature::{RowTemperature, T2Scaling};

/// Any [`Divergence`](crate::divergence::Divergence) between the temperature softmaxes of student and teacher logits, per row.
///
/// ```text
/// q = softmax(student / T),  p = softmax(teacher / T)          (over the last dimension)
/// r_i = s_i · D(q_i, p_i)        s_i = T_i² with T2Scaling::On, else 1
/// ```
///
/// The teacher logits are detached. `temperature` is a [`Temperature`](crate::temperature::Temperature) or a per-row tensor
/// (see [`RowTemperature`]); a per-row temperature that requires a gradient receives one.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`
/// - returns a [`RowLoss`] of `R = Π leading dims` rows; mask it and reduce it with any
///   [`Reduction`](crate::reduction::Reduction).
///
/// # Panics
/// If the two shapes differ (align vocabularies first with
/// [`align_vocab`](crate::vocab::align_vocab)), a per-row temperature has the wrong length, or
/// the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{divergence, Divergence};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<3>::from_floats([[[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]]], &device);
/// let t = Tensor::<3>::from_floats([[[2.0, 0.0, -1.0], [0.2, 0.1, 0.0]]], &device);
/// let rows = divergence(s, t, Divergence::skew_kl(0.1).unwrap(), Temperature::ONE, T2Scaling::Off);
/// let per_token = rows.clone().into_shaped::<2>(); // [1, 2]
/// assert_eq!(per_token.dims(), [1, 2]);
/// assert!(rows.reduce(Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
pub fn divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    divergence: Divergence,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let temperature = temperature.into();
    // In their own dtype: the kernels read `f16`/`bf16` as they are; the composed rows widen.
    let (s, rows, v) = flatten_rows_native(student_logits);
    let (t, _, _) = flatten_rows_native(teacher_logits.detach());
    temperature.check_rows(s.dims()[0]);
    let kernel = dense_kernel(divergence, &temperature, scaling);
    dense_row_loss(s, t, &rows, v, kernel, move |s, t| {
        dense_rows(s, t, divergence, &temperature, scaling)
    })
}

/// The logit kernel of a divergence at a scalar temperature (`None` for a per-row one).
pub(crate) fn dense_kernel(
    divergence: Divergence,
    temperature: &RowTemperature,
    scaling: T2Scaling,
) -> Option<LogitKernel> {
    match temperature {
        RowTemperature::Scalar(t) => Some(LogitKernel::soft(divergence.kernel_kind(), *t, scaling)),
        RowTemperature::PerRow(_) => None,
    }
}

/// The door of the dense divergences: rows of `[R, V]` student and (detached) teacher logits in
/// their own dtype, computed on demand by `rows(s, t)` (the composed path, plain or chunked; the
/// two widened to one dtype of at least `f32`), with `kernel` as their reduction.
pub(crate) fn dense_row_loss(
    s: Tensor<2>,
    t: Tensor<2>,
    row_dims: &[usize],
    v: usize,
    kernel: Option<LogitKernel>,
    rows: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<1> + Send + Sync + 'static,
) -> RowLoss {
    logit_rows(vec![s, t], row_dims, v, kernel, None, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let (s, t) = same_dtype(s, t);
        rows(s, t)
    })
}

/// The per-row core of [`divergence`] on flattened `[R, V]` logits (checks done by the caller;
/// the teacher is already detached).
pub(crate) fn dense_rows(
    s: Tensor<2>,
    t: Tensor<2>,
    divergence: Divergence,
    temperature: &RowTemperature,
    scaling: T2Scaling,
) -> Tensor<1> {
    let log_q = temperature.log_softmax(s);
    let log_p = temperature.log_softmax(t);
    let values = divergence.rows_normalized(log_q, log_p);
    temperature.scale(values, scaling)
}

/// Any [`Divergence`](crate::divergence::Divergence) from log-probabilities (no temperature, no `T²`): for distributions you
/// already normalised, e.g. a teacher's stored `log_softmax`.
///
/// ```text
/// r_i = D(exp(student_log_probs_i), exp(teacher_log_probs_i))
/// ```
///
/// # Shapes
/// - `student_log_probs`, `teacher_log_probs`: `[..., V]`
/// - returns a [`RowLoss`].
///
/// # Panics
/// If the two shapes differ or the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{divergence_from_log_probs, Divergence};
/// use kd_losses::prelude::*;
/// use kd_losses::temperature_log_softmax;
///
/// let device = Device::flex();
/// let lq = temperature_log_softmax(Tensor::<2>::from_floats([[1.0, 0.0]], &device), Temperature::ONE);
/// let rows = divergence_from_log_probs(lq.clone(), lq, Divergence::SymmetricKl);
/// assert!(rows.reduce(Reduction::Sum).into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn divergence_from_log_probs<const D: usize>(
    student_log_probs: Tensor<D>,
    teacher_log_probs: Tensor<D>,
    divergence: Divergence,
) -> RowLoss {
    assert!(
        student_log_probs.dims() == teacher_log_probs.dims(),
        "teacher_log_probs: shape {:?} does not match student_log_probs shape {:?}",
        teacher_log_probs.dims(),
        student_log_probs.dims()
    );
    crate::rows::assert_classes("student_log_probs", &student_log_probs.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let (student_log_probs, teacher_log_probs) = same_dtype(student_log_probs, teacher_log_probs);
    let (s, rows, v) = flatten_rows(student_log_probs);
    let (t, _, _) = flatten_rows(teacher_log_probs.detach());
    RowLoss::from_rows(vec![s, t], &rows, v, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        divergence.rows_unchecked(s, t)
    })
}

/// Reverse KL `KL(q_student ‖ p_teacher)`, the mode-seeking divergence of MiniLLM and of TRL's
/// GKD at `β = 1` (the forward KL of [`soft_kl`](crate::logits::soft_kl) swapped).
///
/// ```text
/// r_i = s · Σ_v q_iv (log q_iv − log p_iv)       ∂r_i/∂student_i = (s/T) · q ⊙ (g − Σ q g),  g = log q − log p
/// ```
///
/// Entries where the student has no mass contribute 0; where the teacher has none and the
/// student has some, the value is `+inf`.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::reverse_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let v = reverse_kl(s, t, Temperature::ONE, T2Scaling::Off).reduce(Reduction::RowMean);
/// assert!(v.into_scalar::<f32>().abs() < 1e-6);
/// ```
pub fn reverse_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::ReverseKl,
        temperature,
        scaling,
    )
}

/// Generalized Jensen–Shannon divergence, in either [`JsdConvention`].
///
/// ```text
/// m = β p + (1−β) q                                    (built in log space)
/// Trl:        r = β KL(p‖m) + (1−β) KL(q‖m);  β = 0 → KL(p‖q),  β = 1 → KL(q‖p)
/// Continuous: r = (1−β) KL(p‖m) + β KL(q‖m)
/// ```
/// times `T²` with [`T2Scaling::On`](crate::temperature::T2Scaling::On) (TRL: off).
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`]. TRL's `batchmean`
///   without labels is [`Reduction::BatchMean`](crate::reduction::Reduction::BatchMean); with labels, mask with
///   [`RowMask::from_labels`](crate::reduction::RowMask::from_labels) and use [`Reduction::RowMean`](crate::reduction::Reduction::RowMean).
///
/// # Panics
/// If the shapes differ, or `beta` is outside `[0, 1]` (message of [`KdError::OutOfRange`](crate::error::KdError::OutOfRange)).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::{generalized_jsd, reverse_kl, JsdConvention};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0, 2.0]], &device);
/// let one = Temperature::ONE;
/// let j = generalized_jsd(s.clone(), t.clone(), 1.0, JsdConvention::Continuous, one, T2Scaling::Off);
/// let r = reverse_kl(s, t, one, T2Scaling::Off);
/// let (j, r) = (j.reduce(Reduction::Sum).into_scalar::<f32>(), r.reduce(Reduction::Sum).into_scalar::<f32>());
/// assert!((j - r).abs() < 1e-5);
/// ```
pub fn generalized_jsd<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    beta: f64,
    convention: JsdConvention,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::generalized_jsd(beta, convention).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Skew KL (DistiLLM): `KL(p ‖ α p + (1−α) q)`, in log space.
///
/// ```text
/// log m = logaddexp(log α + log p, log(1−α) + log q)
/// r     = s · Σ_v p_v (log p_v − log m_v)             0 ≤ r ≤ −log α
/// ```
///
/// Unlike DistiLLM's code, the value excludes the teacher entropy (see the
/// [module docs](mod@crate::divergence#distillms-cross-entropy-offset)) and stays finite for logits of ±1e4.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ, or `alpha` is outside `[0, 1]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::skew_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0e4, -1.0e4]], &device);
/// let t = Tensor::<2>::from_floats([[-1.0e4, 1.0e4]], &device);
/// let v = skew_kl(s, t, 0.1, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!((v.into_scalar::<f32>() - 10f32.ln()).abs() < 1e-4); // the bound −log α
/// ```
pub fn skew_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    alpha: f64,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::skew_kl(alpha).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Skew reverse KL (DistiLLM): `KL(q ‖ α q + (1−α) p)`, in log space.
///
/// ```text
/// log m = logaddexp(log α + log q, log(1−α) + log p)
/// r     = s · Σ_v q_v (log q_v − log m_v)             0 ≤ r ≤ −log α
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ, or `alpha` is outside `[0, 1]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::skew_reverse_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
/// let v = skew_reverse_kl(s, t, 0.1, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>() > 0.0);
/// ```
pub fn skew_reverse_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    alpha: f64,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let d = Divergence::skew_reverse_kl(alpha).unwrap_or_else(|e| panic!("{e}"));
    divergence(student_logits, teacher_logits, d, temperature, scaling)
}

/// Total variation distance `½ Σ |p − q|`, in `[0, 1]`. No `T²` (it is a distance between
/// probabilities, not a KL).
///
/// ```text
/// r_i = ½ Σ_v |p_iv − q_iv|
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::total_variation;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[0.0, f32::NEG_INFINITY]], &device);
/// let t = Tensor::<2>::from_floats([[f32::NEG_INFINITY, 0.0]], &device);
/// let v = total_variation(s, t, Temperature::ONE).reduce(Reduction::Sum);
/// assert_eq!(v.into_scalar::<f32>(), 1.0);
/// ```
pub fn total_variation<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::TotalVariation,
        temperature,
        T2Scaling::Off,
    )
}

/// Symmetric (Jeffreys) KL `KL(p‖q) + KL(q‖p)`.
///
/// ```text
/// r_i = s · Σ_v (p_iv − q_iv)(log p_iv − log q_iv)
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`; returns a [`RowLoss`].
///
/// # Panics
/// If the shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::symmetric_kl;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
/// let v = symmetric_kl(s, t, Temperature::ONE, T2Scaling::Off).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>() > 0.0);
/// ```
pub fn symmetric_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    divergence(
        student_logits,
        teacher_logits,
        Divergence::SymmetricKl,
        temperature,
        scaling,
    )
}
