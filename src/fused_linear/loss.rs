//! Burn `Config` + `Module` form of the fused linear-head loss: [`FusedLinearKdLoss`].

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};

use super::{FusedLinearOutput, LinearHead, LinearTeacher, fused_linear_distillation};
use crate::divergence::Divergence;
use crate::error::{KdError, check_range};
use crate::logits::LogitTransform;
use crate::reduction::Reduction;
use crate::sparse::{MissingMass, SparseKdLoss, SparseKdLossConfig, StudentNorm};
use crate::temperature::{T2Scaling, Temperature};
use crate::vocab::VocabAlignment;

/// Configuration of [`FusedLinearKdLoss`].
#[derive(Config, Debug)]
pub struct FusedLinearKdLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 2.0)]
    pub temperature: f64,
    /// Weight `α ∈ [0, 1]` of the soft term.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Multiply the soft term by `T²` (Hinton).
    #[config(default = true)]
    pub t2_scaling: bool,
    /// The divergence of the soft term, with its parameter. Default: forward KL.
    #[config(default = "Divergence::ForwardKl")]
    pub divergence: Divergence,
    /// Label smoothing `ε ∈ [0, 1]` of the hard term.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Tokens with this label are left out of both terms.
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Rows per chunk; `None`: [`auto_chunk_rows`](crate::fused_linear::auto_chunk_rows).
    #[config(default = "None")]
    pub chunk_rows: Option<usize>,
    /// What to do when the student's and teacher's vocabularies differ. Default: error.
    #[config(default = "VocabAlignment::Error")]
    pub vocab: VocabAlignment,
    /// Scale / soft cap of the student's logits (Gemma-2: `LogitTransform::softcap(30.0)`),
    /// applied to each chunk of logits before both terms; the gradient includes its
    /// derivative. Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub student_logits: LogitTransform,
    /// Scale / soft cap of the teacher's logits (its head's, the given logits, or top-k logits;
    /// not top-k log-probabilities). Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub teacher_logits: LogitTransform,
    /// A top-k teacher's missing mass ([`LinearTeacher::Topk`](super::LinearTeacher::Topk)
    /// only). Default: renormalise over the top-k.
    #[config(default = "MissingMass::Renormalize")]
    pub missing_mass: MissingMass,
    /// The student's normalisation against a top-k teacher. Default: the full vocabulary.
    #[config(default = "StudentNorm::Full")]
    pub student_norm: StudentNorm,
}

impl FusedLinearKdLossConfig {
    /// Builds the loss, validating every parameter.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], [`KdError::OutOfRange`](crate::error::KdError::OutOfRange) (`alpha`, `label_smoothing`,
    /// the divergence's parameter) or [`KdError::NotPositive`] (`chunk_rows = Some(0)`, a
    /// logit scale or soft cap).
    pub fn try_init(&self) -> Result<FusedLinearKdLoss, KdError> {
        Temperature::new(self.temperature)?;
        check_range("alpha", self.alpha, 0.0, 1.0)?;
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)?;
        if self.chunk_rows == Some(0) {
            return Err(KdError::NotPositive {
                name: "chunk_rows",
                value: 0.0,
            });
        }
        self.divergence.validate()?;
        self.student_logits.validated()?;
        self.teacher_logits.validated()?;
        let divergence = self.divergence;
        Ok(FusedLinearKdLoss {
            config: self.clone(),
            divergence,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> FusedLinearKdLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Default for FusedLinearKdLossConfig {
    fn default() -> Self {
        FusedLinearKdLossConfig::new()
    }
}

/// Module form of [`fused_linear_distillation`], reduced over kept tokens
/// ([`Reduction::RowMean`](crate::reduction::Reduction::RowMean)).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::fused_linear::{FusedLinearKdLossConfig, LinearHead, LinearTeacher};
///
/// let device = Device::flex().autodiff();
/// let loss = FusedLinearKdLossConfig::new().with_chunk_rows(Some(2)).init();
/// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]], &device).require_grad();
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], &device).require_grad();
/// let teacher = LinearTeacher::Logits(Tensor::<2>::from_floats(
///     [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], &device));
/// let labels = Tensor::<1, Int>::from_ints([0, 1, -100], &device);
/// let out = loss.forward(h.clone(), &LinearHead::new(w.clone()), teacher, labels);
/// let grads = out.total.backward();
/// assert!(h.grad(&grads).is_some() && w.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct FusedLinearKdLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: FusedLinearKdLossConfig,
    /// The divergence the configuration names.
    #[module(skip)]
    pub divergence: Divergence,
}

impl FusedLinearKdLoss {
    /// The loss over every token whose label is not `ignore_index`.
    ///
    /// # Panics
    /// As [`fused_linear_distillation`].
    pub fn forward(
        &self,
        student_hidden: Tensor<2>,
        student_head: &LinearHead,
        teacher: LinearTeacher,
        labels: Tensor<1, Int>,
    ) -> FusedLinearOutput {
        fused_linear_distillation(
            student_hidden,
            student_head,
            teacher,
            labels,
            None,
            self,
            Reduction::RowMean,
        )
    }

    /// As [`forward`](Self::forward), also leaving out the tokens where `mask` is `false`.
    ///
    /// # Panics
    /// As [`fused_linear_distillation`].
    pub fn forward_masked(
        &self,
        student_hidden: Tensor<2>,
        student_head: &LinearHead,
        teacher: LinearTeacher,
        labels: Tensor<1, Int>,
        mask: Tensor<1, Bool>,
    ) -> FusedLinearOutput {
        fused_linear_distillation(
            student_hidden,
            student_head,
            teacher,
            labels,
            Some(mask),
            self,
            Reduction::RowMean,
        )
    }

    pub(super) fn temperature(&self) -> Temperature {
        Temperature::new(self.config.temperature).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn scaling(&self) -> T2Scaling {
        T2Scaling::from_flag(self.config.t2_scaling)
    }

    /// The top-k loss of a [`LinearTeacher::Topk`](super::LinearTeacher::Topk) chunk (the
    /// student's transform is applied by the caller, once for both terms).
    pub(super) fn sparse(&self) -> SparseKdLoss {
        let c = &self.config;
        SparseKdLossConfig {
            temperature: c.temperature,
            t2_scaling: c.t2_scaling,
            missing_mass: c.missing_mass,
            student_norm: c.student_norm,
            student_logits: LogitTransform::IDENTITY,
            teacher_logits: c.teacher_logits,
        }
        .init(self.divergence)
    }
}
