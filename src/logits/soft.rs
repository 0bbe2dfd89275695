//! Hinton's soft loss: `T² · KL(p_teacher ‖ p_student)`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::divergence::Divergence;
use crate::error::KdError;
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::temperature::{T2Scaling, Temperature};

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
/// It is [`divergence`](crate::divergence::divergence) with [`Divergence::ForwardKl`], the same
/// rows. Its [`reduce`](RowLoss::reduce) runs the fused kernel where one serves the tensors
/// (Flex; the CubeCL backends with feature `gpu-kernel`): value and gradient in one pass,
/// whether the loss is reduced here or through [`SoftKlLoss`].
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
    crate::divergence::divergence(
        student_logits,
        teacher_logits,
        Divergence::ForwardKl,
        temperature,
        scaling,
    )
}

/// Configuration of [`SoftKlLoss`].
#[derive(Config, Debug)]
pub struct SoftKlLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²` (Hinton's convention, part of the loss's definition: on by default;
    /// [`DivergenceLossConfig`](crate::divergence::DivergenceLossConfig) follows TRL and
    /// defaults to off).
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
/// use kd_losses::SoftKlLossConfig;
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

    /// [`soft_kl`] masked and reduced: the fused kernel where it runs ([`RowLoss::reduce`]).
    fn reduced<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: Option<&RowMask>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (t, s) = self.parts();
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
