//! Burn `Config` + `Module` form of the top-k losses: [`SparseKdLoss`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::{MissingMass, SparseOptions, StudentNorm, TopkSpace, TopkTeacher, sparse_divergence};
use crate::divergence::Divergence;
use crate::error::KdError;
use crate::logits::LogitTransform;
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::temperature::{T2Scaling, Temperature};

/// Configuration of [`SparseKdLoss`].
#[derive(Config, Debug)]
pub struct SparseKdLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`. On by default: with the forward KL this is Hinton KD on a top-k
    /// teacher (golden family h).
    #[config(default = true)]
    pub t2_scaling: bool,
    /// The teacher's missing mass.
    #[config(default = "MissingMass::Renormalize")]
    pub missing_mass: MissingMass,
    /// The student's normalisation.
    #[config(default = "StudentNorm::Full")]
    pub student_norm: StudentNorm,
    /// Scale / soft cap of the student's logits ([`LogitTransform`]), applied over the full
    /// vocabulary before the top-k bins are formed. Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub student_logits: LogitTransform,
    /// Scale / soft cap of the teacher's stored top-k **logits**
    /// ([`TopkSpace::Logits`](super::TopkSpace::Logits)); stored log-probabilities are taken as
    /// they are (they were computed from the capped logits). Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub teacher_logits: LogitTransform,
}

impl SparseKdLossConfig {
    /// Builds the loss for `divergence`, validating everything.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], [`KdError::OutOfRange`] for the divergence, or
    /// [`KdError::NotPositive`] for a logit scale or soft cap.
    pub fn try_init(&self, divergence: Divergence) -> Result<SparseKdLoss, KdError> {
        Temperature::new(self.temperature)?;
        divergence.validate()?;
        self.student_logits.validated()?;
        self.teacher_logits.validated()?;
        Ok(SparseKdLoss {
            config: self.clone(),
            divergence,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self, divergence: Divergence) -> SparseKdLoss {
        self.try_init(divergence).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`sparse_divergence`].
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::divergence::Divergence;
/// use kd_losses::sparse::{SparseKdLossConfig, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = SparseKdLossConfig::new().with_temperature(2.0).init(Divergence::ForwardKl);
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[1, 0]], &device),
///     Tensor::<2>::from_floats([[0.5, 1.0]], &device),
/// );
/// assert!(loss.forward(s, teacher, Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
#[derive(Module, Debug)]
pub struct SparseKdLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: SparseKdLossConfig,
    /// The divergence.
    #[module(skip)]
    pub divergence: Divergence,
}

impl SparseKdLoss {
    /// Per-row values (see [`sparse_divergence`]).
    ///
    /// # Panics
    /// As [`sparse_divergence`].
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
    ) -> RowLoss {
        let (student_logits, teacher) = self.transformed(student_logits, teacher);
        self.rows(student_logits, teacher)
    }

    /// The student's logits and the teacher with the configured logit transforms applied.
    fn transformed<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
    ) -> (Tensor<D>, TopkTeacher<D>) {
        let c = &self.config;
        let student_logits = c.student_logits.apply(student_logits);
        let teacher = if teacher.space == TopkSpace::Logits && !c.teacher_logits.is_identity() {
            TopkTeacher {
                values: c.teacher_logits.apply(teacher.values),
                ..teacher
            }
        } else {
            teacher
        };
        (student_logits, teacher)
    }

    /// [`sparse_divergence`] of already transformed inputs.
    fn rows<const D: usize>(&self, student_logits: Tensor<D>, teacher: TopkTeacher<D>) -> RowLoss {
        let c = &self.config;
        let t = Temperature::new(c.temperature).unwrap_or_else(|e| panic!("{e}"));
        let scaling = T2Scaling::from_flag(c.t2_scaling);
        let options = SparseOptions {
            missing_mass: c.missing_mass,
            student_norm: c.student_norm,
        };
        sparse_divergence(
            student_logits,
            teacher,
            self.divergence,
            options,
            t,
            scaling,
        )
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// As [`sparse_divergence`].
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (student_logits, teacher) = self.transformed(student_logits, teacher);
        self.rows(student_logits, teacher).reduce(reduction)
    }

    /// Reduced loss over the rows kept by `mask`.
    ///
    /// # Panics
    /// As [`sparse_divergence`], or if the mask does not match the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (student_logits, teacher) = self.transformed(student_logits, teacher);
        self.rows(student_logits, teacher)
            .masked(mask)
            .reduce(reduction)
    }

    /// Whether [`forward`](Self::forward) / [`forward_masked`](Self::forward_masked) (and
    /// [`sparse_divergence`]`(..).reduce(..)`, the same door) run the fused top-k kernel for
    /// `student_logits`: the forward KL with `MissingMass::Renormalize`
    /// and `StudentNorm::Full` (the defaults) on a CubeCL backend (`gpu-kernel`), `f32`, `f16` or
    /// `bf16`. Elsewhere the composed path runs, with the same results.
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use kd_losses::divergence::Divergence;
    /// use kd_losses::sparse::SparseKdLossConfig;
    /// let loss = SparseKdLossConfig::new().init(Divergence::ForwardKl);
    /// let x = Tensor::<2>::zeros([2, 8], &Device::flex());
    /// assert!(!loss.fused_available(&x)); // the CPU runs the composed top-k loss
    /// ```
    pub fn fused_available<const D: usize>(&self, student_logits: &Tensor<D>) -> bool {
        self.kernel_supported() && crate::fused::serves_sparse(student_logits)
    }

    fn kernel_supported(&self) -> bool {
        let c = &self.config;
        let options = SparseOptions {
            missing_mass: c.missing_mass,
            student_norm: c.student_norm,
        };
        super::rows::supported(self.divergence, options)
    }
}
