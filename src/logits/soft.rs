//! Hinton's soft loss: `T² · KL(p_teacher ‖ p_student)`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};

use crate::fused::{KdParams, SoftKind, kd_terms, serves};

use crate::error::KdError;
use crate::reduction::{Reduction, RowLoss, RowMask, row_weights};
use crate::rows::{
    assert_same_dims, assert_same_shape, flatten_rows, kl_rows_normalized, same_dtype,
};
use crate::temperature::{T2Scaling, Temperature, temperature_log_softmax};

/// Soft distillation loss per row: `r = s · Σ_v p_v (log p_v − log q_v)`, the forward
/// `KL(p_teacher ‖ p_student)` with `p = softmax(teacher/T)`, `q = softmax(student/T)` and
/// `s = T²` ([`T2Scaling::On`]) or `1`.
///
/// ```text
/// r_i = s · Σ_v p_iv · (log p_iv − log q_iv)          ∂r_i/∂student_iv = (s / T) · (q_iv − p_iv)
/// ```
///
/// The teacher is detached: it never receives a gradient. Entries where the teacher is `-inf`
/// (probability 0) contribute 0, also when the student is `-inf` there too (a padded
/// vocabulary). A student `-inf` where the teacher has mass gives `+inf`, as the math says.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]` (`[N, C]` or `[B, S, V]`)
/// - returns a [`RowLoss`] of `R = Π leading dims` rows; reduce it with
///   [`RowLoss::reduce`], after [`RowLoss::masked`] for padding.
///
/// # Panics
/// If the two shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let teacher = Tensor::<2>::from_floats([[2.0, 0.5, -3.0]], &device);
/// let t = Temperature::new(2.0).unwrap();
/// let loss = soft_kl(student, teacher, t, T2Scaling::On).reduce(Reduction::RowMean);
/// assert!(loss.into_scalar::<f32>() > 0.0);
/// ```
///
/// # References
/// Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network*, 2015.
pub fn soft_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: Temperature,
    scaling: T2Scaling,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    let (student_logits, teacher_logits) = same_dtype(student_logits, teacher_logits);
    let (s, rows, v) = flatten_rows(student_logits);
    let (t, _, _) = flatten_rows(teacher_logits.detach());
    let f = scaling.factor(temperature);
    RowLoss::from_rows(vec![s, t], &rows, v, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let log_q = temperature_log_softmax(s, temperature);
        let log_p = temperature_log_softmax(t, temperature);
        let kl = kl_rows_normalized(log_p, log_q);
        if f == 1.0 { kl } else { kl.mul_scalar(f) }
    })
}

/// Configuration of [`SoftKlLoss`].
#[derive(Config, Debug)]
pub struct SoftKlLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²` (Hinton's convention).
    #[config(default = true)]
    pub t2_scaling: bool,
}

impl SoftKlLossConfig {
    /// Builds the loss, validating the temperature.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`] for a NaN, infinite or non-positive temperature.
    pub fn try_init(&self) -> Result<SoftKlLoss, KdError> {
        Temperature::new(self.temperature)?;
        Ok(SoftKlLoss {
            temperature: self.temperature,
            t2_scaling: self.t2_scaling,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid temperature (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> SoftKlLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`soft_kl`]: `T² · KL(p_teacher ‖ p_student)`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = SoftKlLossConfig::new().with_temperature(4.0).init();
/// let s = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let v = loss.forward(s, t, Reduction::RowMean).into_scalar::<f32>();
/// assert!(v.abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct SoftKlLoss {
    /// Softmax temperature.
    pub temperature: f64,
    /// Whether the `T²` factor is applied.
    pub t2_scaling: bool,
}

impl SoftKlLoss {
    fn parts(&self) -> (Temperature, T2Scaling) {
        let t = Temperature::new(self.temperature).unwrap_or_else(|e| panic!("{e}"));
        let s = T2Scaling::from_flag(self.t2_scaling);
        (t, s)
    }

    /// The fused kernel where it runs, [`soft_kl`] masked and reduced otherwise.
    fn reduced<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: Option<&RowMask>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (t, s) = self.parts();
        check_kl_inputs(&student_logits, &teacher_logits, mask);
        let keep = mask.map(RowMask::flat);
        if let Some((total, _, _)) = fused_kd(
            &student_logits,
            &teacher_logits,
            None,
            keep,
            SoftKind::ForwardKl,
            t,
            s,
            (1.0, 0.0),
            reduction,
        ) {
            return total;
        }
        soft_kl(student_logits, teacher_logits, t, s)
            .masked_opt(mask)
            .reduce(reduction)
    }

    /// Per-row values (see [`soft_kl`]).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> RowLoss {
        let (t, s) = self.parts();
        soft_kl(student_logits, teacher_logits, t, s)
    }

    /// Reduced loss `[1]`, through the fused kernel where it runs ([`crate::fused`]).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, None, reduction)
    }

    /// Reduced loss over the rows kept by `mask` (`[B, S]` for `[B, S, V]` logits).
    ///
    /// # Panics
    /// If the shapes differ or the mask does not match the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, Some(mask), reduction)
    }
}

/// The shape checks of a reduced KL: equal shapes with at least one class, and a mask of the
/// leading shape.
pub(crate) fn check_kl_inputs<const D: usize>(
    student_logits: &Tensor<D>,
    teacher_logits: &Tensor<D>,
    mask: Option<&RowMask>,
) {
    let dims = student_logits.dims();
    assert_same_shape(&dims, &teacher_logits.dims());
    if let Some(m) = mask {
        assert_same_dims("mask", m.dims(), &dims[..D - 1]);
    }
}

/// The fused logit kernel ([`crate::fused`]) for a reduced soft term, plus a hard
/// (cross-entropy) term when `labels` (`[R]`, valid classes) are given: `[total, soft, hard]`
/// with `total = α·soft + (1 − α)·hard` (`mix = (α, label smoothing)`), or `None` where no
/// kernel runs (the caller then takes its composed path). `keep` (`[R]`) drops rows; the
/// reduction's denominators are those of [`RowLoss::reduce`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_kd<const D: usize>(
    student_logits: &Tensor<D>,
    teacher_logits: &Tensor<D>,
    labels: Option<Tensor<1, Int>>,
    keep: Option<Tensor<1, Bool>>,
    kind: SoftKind,
    temperature: Temperature,
    scaling: T2Scaling,
    (alpha, smoothing): (f64, f64),
    reduction: Reduction,
) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
    if !serves(student_logits, kind) || teacher_logits.dtype() != student_logits.dtype() {
        return None;
    }
    let dims = student_logits.dims();
    let weights = row_weights(
        keep,
        &dims[..D - 1],
        dims[D - 1],
        reduction,
        &student_logits.device(),
    );
    let params = KdParams {
        kind,
        temperature: temperature.get(),
        soft_scale: scaling.factor(temperature),
        alpha,
        smoothing,
    };
    kd_terms(student_logits, teacher_logits, labels, weights, params)
}
