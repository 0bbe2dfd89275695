//! Burn `Config` + `Module` form of the top-k losses: [`SparseKdLoss`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use super::{MissingMass, SparseOptions, StudentNorm, TopkTeacher, sparse_divergence};
use crate::divergence::Divergence;
use crate::error::KdError;
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
}

impl SparseKdLossConfig {
    /// Builds the loss for `divergence`, validating everything.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], or [`KdError::OutOfRange`] for the divergence.
    pub fn try_init(&self, divergence: Divergence) -> Result<SparseKdLoss, KdError> {
        Temperature::new(self.temperature)?;
        divergence.validate()?;
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
        self.forward_no_reduction(student_logits, teacher)
            .reduce(reduction)
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
        self.forward_no_reduction(student_logits, teacher)
            .masked(mask)
            .reduce(reduction)
    }
}
