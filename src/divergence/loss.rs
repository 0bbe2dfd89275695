//! The reduced soft loss of any divergence ([`soft_loss`]) and its
//! Burn `Config` + `Module` form, [`DivergenceLoss`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::{Divergence, divergence};
use crate::error::KdError;
use crate::logits::LogitTransform;
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::temperature::{T2Scaling, Temperature};
use crate::vocab::{VocabAlignment, align_vocab};

/// Reduced soft loss `reduce(mask(f · D(p_teacher, p_student)))` for any [`Divergence`]:
/// shorthand for `divergence(..).masked_opt(mask).reduce(reduction)`, the same door to the fused
/// kernel ([`RowLoss::reduce`]): every divergence runs fused where a kernel serves the tensors
/// ([`Divergence::fused_available`]), the composed [`divergence`] otherwise, with the same results.
///
/// ```text
/// forward KL:  f · Σ_v p_v (log p_v − log q_v)      reverse KL:  f · Σ_v q_v (log q_v − log p_v)
/// p = softmax(teacher/T), q = softmax(student/T), f = T² (T2Scaling::On) or 1
/// ```
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`
/// - `mask`: the leading shape (`[B, S]` for `[B, S, V]`), `true` = keep
/// - returns `[1]`
///
/// # Panics
/// If the shapes differ, the mask does not match the leading shape, or `divergence` is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex().autodiff();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device).require_grad();
/// let t = Tensor::<2>::from_floats([[2.0, 0.5, -3.0]], &device);
/// let temp = Temperature::new(2.0).unwrap();
/// let loss = kd_losses::divergence::soft_loss(s.clone(), t, Divergence::ForwardKl, temp,
///     T2Scaling::On, None, Reduction::BatchMean);
/// let grads = loss.backward();
/// assert!(s.grad(&grads).is_some());
/// ```
pub fn soft_loss<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    divergence: Divergence,
    temperature: Temperature,
    scaling: T2Scaling,
    mask: Option<&RowMask>,
    reduction: Reduction,
) -> Tensor<1> {
    super::divergence(
        student_logits,
        teacher_logits,
        divergence,
        temperature,
        scaling,
    )
    .masked_opt(mask)
    .reduce(reduction)
}

/// Configuration of [`DivergenceLoss`].
#[derive(Config, Debug)]
pub struct DivergenceLossConfig {
    /// Which divergence, with its parameter (`β` of the generalized JSD, TRL's default 0.5;
    /// `α` of the skew KLs, DistiLLM's default 0.1), validated by
    /// [`try_init`](Self::try_init).
    pub divergence: Divergence,
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`. Off by default, as TRL, GKD and DistiLLM, whose divergences this config
    /// reproduces (they use `T = 1` mostly, where the factor is moot). [`SoftKlLossConfig`](crate::logits::SoftKlLossConfig)
    /// defaults to on: it is Hinton's loss, whose definition includes `T²` (so that the soft
    /// term's gradient keeps its scale when `T` changes). The two defaults differ on purpose;
    /// set it explicitly when the two must agree.
    #[config(default = false)]
    pub t2_scaling: bool,
    /// What to do when student and teacher vocabularies differ. Default: error.
    #[config(default = "VocabAlignment::Error")]
    pub vocab: VocabAlignment,
    /// Scale / soft cap of the student's logits ([`LogitTransform`]). Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub student_logits: LogitTransform,
    /// Scale / soft cap of the teacher's logits. Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub teacher_logits: LogitTransform,
}

impl DivergenceLossConfig {
    /// Builds the loss, validating every parameter.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], [`KdError::OutOfRange`] for the divergence's
    /// parameter, or [`KdError::NotPositive`] for a logit scale or soft cap.
    pub fn try_init(&self) -> Result<DivergenceLoss, KdError> {
        Temperature::new(self.temperature)?;
        self.divergence.validate()?;
        self.student_logits.validated()?;
        self.teacher_logits.validated()?;
        Ok(DivergenceLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> DivergenceLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`divergence`], with vocabulary alignment.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::DivergenceLossConfig;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let gjsd = Divergence::generalized_jsd(0.5, JsdConvention::Trl).unwrap();
/// let loss = DivergenceLossConfig::new(gjsd).init();
/// let s = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// assert!(loss.forward(s, t, Reduction::RowMean).into_scalar::<f32>().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct DivergenceLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: DivergenceLossConfig,
}

impl DivergenceLoss {
    /// Per-row values (see [`divergence`]), after aligning the vocabularies as configured.
    ///
    /// # Panics
    /// On a vocabulary mismatch with [`VocabAlignment::Error`] (message of
    /// [`KdError::VocabMismatch`]), or if the leading shapes differ.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> RowLoss {
        let (s, te, d, t, scaling) = self.prepare(student_logits, teacher_logits);
        divergence(s, te, d, t, scaling)
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// As [`forward_no_reduction`](Self::forward_no_reduction).
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, None, reduction)
    }

    /// Reduced loss over the rows kept by `mask`.
    ///
    /// # Panics
    /// As [`forward_no_reduction`](Self::forward_no_reduction), or if the mask does not match
    /// the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.reduced(student_logits, teacher_logits, Some(mask), reduction)
    }

    /// Validated configuration and vocabulary-aligned logits.
    #[allow(clippy::type_complexity)]
    fn prepare<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> (Tensor<D>, Tensor<D>, Divergence, Temperature, T2Scaling) {
        let c = &self.config;
        let t = Temperature::new(c.temperature).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = c.divergence.validate() {
            panic!("{e}");
        }
        let d = c.divergence;
        let (student_logits, teacher_logits) = (
            c.student_logits.apply(student_logits),
            c.teacher_logits.apply(teacher_logits),
        );
        let (s, te) =
            align_vocab(student_logits, teacher_logits, c.vocab).unwrap_or_else(|e| panic!("{e}"));
        (s, te, d, t, T2Scaling::from_flag(c.t2_scaling))
    }

    /// [`divergence`] masked and reduced: every divergence runs the fused kernel where one
    /// serves the tensors ([`RowLoss::reduce`]).
    fn reduced<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: Option<&RowMask>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (s, te, d, t, scaling) = self.prepare(student_logits, teacher_logits);
        soft_loss(s, te, d, t, scaling, mask, reduction)
    }
}
