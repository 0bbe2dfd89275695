//! The classic recipe: `α · soft + (1 − α) · hard`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Int, Tensor};

use super::transform::LogitTransform;
use crate::combine::LossTerms;
use crate::divergence::Divergence;
use crate::error::{KdError, check_range};
use crate::logits::door::LogitKernel;
use crate::logits::hard::{CrossEntropyOptions, assert_label_shape, check_labels, cross_entropy};
use crate::reduction::{Reduction, RowMask};
use crate::rows::assert_same_shape;
use crate::temperature::T2Scaling;
use crate::temperature::Temperature;

/// Result of [`distillation_loss`]: the total and each term, for logging.
#[derive(Debug, Clone)]
pub struct DistillationOutput {
    /// `α · soft + (1 − α) · hard`, `[1]`.
    pub total: Tensor<1>,
    /// The soft term before weighting, `[1]`.
    pub soft: Tensor<1>,
    /// The hard term before weighting, `[1]`.
    pub hard: Tensor<1>,
    /// The weight `α` of the soft term.
    pub alpha: f64,
}

impl DistillationOutput {
    /// The same terms as a [`LossTerms`] (names `"soft"` and `"hard"`), to add more terms.
    pub fn into_terms(self) -> LossTerms {
        LossTerms::new()
            .with("soft", self.alpha, self.soft)
            .and_then(|t| t.with("hard", 1.0 - self.alpha, self.hard))
            .expect("alpha was validated")
    }
}

/// Validated parameters of [`distillation_loss`]; build them with
/// [`DistillationLossConfig`].
#[derive(Module, Debug)]
pub struct DistillationLoss {
    /// Softmax temperature of the soft term.
    pub temperature: f64,
    /// Weight `α ∈ [0, 1]` of the soft term.
    pub alpha: f64,
    /// Whether the soft term is multiplied by `T²`.
    pub t2_scaling: bool,
    /// Label smoothing of the hard term.
    pub label_smoothing: f64,
    /// Ignore index of the labels (`-100`).
    pub ignore_index: i64,
    /// Scale / soft cap of the student's logits ([`LogitTransform`]).
    #[module(skip)]
    pub student_logits: LogitTransform,
    /// Scale / soft cap of the teacher's logits.
    #[module(skip)]
    pub teacher_logits: LogitTransform,
}

/// Configuration of [`DistillationLoss`] (Hinton's combined loss).
#[derive(Config, Debug)]
pub struct DistillationLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 2.0)]
    pub temperature: f64,
    /// Weight `α ∈ [0, 1]` of the soft term.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Multiply the soft term by `T²`.
    #[config(default = true)]
    pub t2_scaling: bool,
    /// Label smoothing `ε ∈ [0, 1]` of the hard term.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Labels equal to this are ignored by both terms.
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Scale / soft cap of the student's logits before both terms (Gemma-2:
    /// `LogitTransform::softcap(30.0)`). Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub student_logits: LogitTransform,
    /// Scale / soft cap of the teacher's logits. Default: none.
    #[config(default = "LogitTransform::IDENTITY")]
    pub teacher_logits: LogitTransform,
}

impl DistillationLossConfig {
    /// Builds the loss.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], or [`KdError::OutOfRange`] for `alpha` or
    /// `label_smoothing` outside `[0, 1]`.
    pub fn try_init(&self) -> Result<DistillationLoss, KdError> {
        let loss = DistillationLoss {
            temperature: self.temperature,
            alpha: self.alpha,
            t2_scaling: self.t2_scaling,
            label_smoothing: self.label_smoothing,
            ignore_index: self.ignore_index,
            student_logits: self.student_logits,
            teacher_logits: self.teacher_logits,
        };
        loss.validate()?;
        Ok(loss)
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid value (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> DistillationLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Default for DistillationLossConfig {
    fn default() -> Self {
        DistillationLossConfig::new()
    }
}

/// Hinton's combined distillation loss.
///
/// ```text
/// soft = reduce( T² · KL(softmax(teacher/T) ‖ softmax(student/T)) )     (see soft_kl)
/// hard = reduce( CE(student, labels) )                                  (see cross_entropy)
/// total = α · soft + (1 − α) · hard
/// ```
/// Rows whose label is the ignore index are dropped from **both** terms (sequence padding), and
/// both terms use the same `reduction` (with [`Reduction::RowMean`], each divides by the number of
/// labelled rows; a fully ignored batch gives 0). The teacher is detached.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., C]`
/// - `labels`: the leading shape, in `[0, C)` or the ignore index
///
/// # Panics
/// If the shapes differ or a label is out of range.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::distillation_loss;
///
/// let device = Device::flex();
/// let kd = DistillationLossConfig::new().with_temperature(4.0).with_alpha(0.9).init();
/// let student = Tensor::<2>::from_floats([[0.5, 0.1, -0.3], [0.0, 1.0, 0.0]], &device);
/// let teacher = Tensor::<2>::from_floats([[2.0, 0.3, -1.0], [0.1, 3.0, 0.2]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
/// let out = distillation_loss(student, teacher, labels, &kd, Reduction::RowMean);
/// let (t, s, h) = (out.total.into_scalar::<f32>(), out.soft.into_scalar::<f32>(), out.hard.into_scalar::<f32>());
/// assert!((t - (0.9 * s + 0.1 * h)).abs() < 1e-6);
/// ```
///
/// # Performance
/// On Burn's Flex (CPU) backend with `f32` logits and on the CubeCL backends (feature
/// `gpu-kernel`; `f32`, `f16`, `bf16` where the runtime has it) this runs the fused kernel of
/// [`crate::fused`]: the value and the gradient in one operation (measured speed-ups in the
/// README's performance section). Elsewhere it runs [`distillation_loss_composed`], the reference
/// implementation, with the same results.
pub fn distillation_loss<const D: usize, const DL: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    loss: &DistillationLoss,
    reduction: Reduction,
) -> DistillationOutput {
    loss.output(
        student_logits,
        teacher_logits,
        labels,
        reduction,
        Path::Door,
    )
}

/// What [`mixed_terms`] mixes: `α · soft + (1 − α) · hard`, the soft term any divergence at a
/// temperature, the hard term the cross-entropy with label smoothing; rows whose label is
/// `ignore_index` leave both terms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    pub divergence: Divergence,
    pub temperature: Temperature,
    pub scaling: T2Scaling,
    pub alpha: f64,
    pub smoothing: f64,
    pub ignore_index: i64,
    /// Applied to the student's logits before both terms.
    pub student_transform: LogitTransform,
    /// Applied to the teacher's logits.
    pub teacher_transform: LogitTransform,
}

/// Which path [`mixed_terms`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// One fused pass for the three terms where a kernel serves the tensors, else each term
    /// through its own door ([`RowLoss::reduce`](crate::reduction::RowLoss::reduce)).
    Door,
    /// Burn tensor operations only: the reference.
    Composed,
}

/// `(total, soft, hard)` of a [`Mix`] over `[..., V]` logits and labels of their leading shape,
/// reduced with `reduction`; what [`distillation_loss`], [`distillation_loss_composed`] and the
/// chunked head losses share.
pub(crate) fn mixed_terms<const D: usize, const DL: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    mix: Mix,
    reduction: Reduction,
    path: Path,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let dims = student_logits.dims();
    assert_same_shape(&dims, &teacher_logits.dims());
    assert_label_shape(&labels, &dims);
    if let Err(e) = mix.divergence.validate() {
        panic!("{e}");
    }
    let student_logits = mix.student_transform.apply(student_logits);
    let teacher_logits = mix.teacher_transform.apply(teacher_logits);
    if path == Path::Door {
        let kernel = mix.kernel();
        if crate::fused::serves(&student_logits, kernel.kind) {
            let (safe, keep) = kernel_labels(&labels, dims[D - 1], mix.ignore_index);
            if let Some(terms) = kernel.terms(
                &student_logits,
                &teacher_logits,
                Some(safe),
                Some(keep),
                &dims[..D - 1],
                reduction,
            ) {
                return terms;
            }
        }
    }
    let reduce = |rows: crate::reduction::RowLoss| match path {
        Path::Door => rows.reduce(reduction),
        Path::Composed => rows.reduce_composed(reduction),
    };
    // Both terms in one dtype (the wider of the two inputs, at least f32).
    let (student_logits, teacher_logits) = crate::rows::same_dtype(student_logits, teacher_logits);
    let options = CrossEntropyOptions {
        ignore_index: Some(mix.ignore_index),
        label_smoothing: mix.smoothing,
        class_weights: None,
    };
    let hard = reduce(cross_entropy(
        student_logits.clone(),
        labels.clone(),
        &options,
    ));
    let mask = RowMask::from_labels(labels, mix.ignore_index);
    let soft = reduce(
        crate::divergence::divergence(
            student_logits,
            teacher_logits,
            mix.divergence,
            mix.temperature,
            mix.scaling,
        )
        .masked(&mask),
    );
    let total = soft
        .clone()
        .mul_scalar(mix.alpha)
        .add(hard.clone().mul_scalar(1.0 - mix.alpha));
    (total, soft, hard)
}

/// [`mixed_terms`] through the kernel and the gradient of the total w.r.t. the student logits,
/// for logits outside autodiff taken by value (the CPU kernel writes the gradient over a
/// student buffer nothing else holds: the LM head's chunks need no second `[rows, V]` tensor);
/// the logits back, as they came, where no kernel serves them or the student has a transform
/// (whose derivative the autodiff path applies). Panics as [`mixed_terms`].
#[cfg(feature = "chunked")]
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub(crate) fn mixed_terms_and_grad<const D: usize, const DL: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    mix: Mix,
    reduction: Reduction,
) -> Result<([Tensor<1>; 3], Tensor<D>), (Tensor<D>, Tensor<D>)> {
    let dims = student_logits.dims();
    assert_same_shape(&dims, &teacher_logits.dims());
    assert_label_shape(&labels, &dims);
    if let Err(e) = mix.divergence.validate() {
        panic!("{e}");
    }
    let kernel = mix.kernel();
    let untracked = !student_logits.is_autodiff() && !teacher_logits.is_autodiff();
    if !untracked
        || !mix.student_transform.is_identity()
        || teacher_logits.dtype() != student_logits.dtype()
        || !crate::fused::serves(&student_logits, kernel.kind)
    {
        return Err((student_logits, teacher_logits));
    }
    let (safe, keep) = kernel_labels(&labels, dims[D - 1], mix.ignore_index);
    // The teacher as it came, for the (unexpected) way back: only with a transform, which
    // makes a new tensor.
    let (teacher, original) = if mix.teacher_transform.is_identity() {
        (teacher_logits, None)
    } else {
        (
            mix.teacher_transform.apply(teacher_logits.clone()),
            Some(teacher_logits),
        )
    };
    kernel
        .terms_and_grad(
            student_logits,
            teacher,
            Some(safe),
            Some(keep),
            &dims[..D - 1],
            reduction,
        )
        .map_err(|(s, t)| (s, original.unwrap_or(t)))
}

/// Checked labels for the kernel: `(safe, keep)`, `[R]`, with ignored rows at class 0 and
/// `false` in `keep`.
///
/// # Panics
/// If a kept label is outside `[0, v)`.
fn kernel_labels<const DL: usize>(
    labels: &Tensor<DL, Int>,
    v: usize,
    ignore_index: i64,
) -> (Tensor<1, Int>, Tensor<1, burn::tensor::Bool>) {
    if let Err(e) = check_labels(labels, v, Some(ignore_index)) {
        panic!("labels: {e}");
    }
    let flat = crate::rows::flatten_labels(labels.clone());
    let keep = flat.clone().not_equal_elem(ignore_index);
    let safe = flat.mask_fill(keep.clone().bool_not(), 0);
    (safe, keep)
}

impl Mix {
    /// The kernel that computes this mix.
    fn kernel(&self) -> LogitKernel {
        LogitKernel {
            alpha: self.alpha,
            smoothing: self.smoothing,
            ..LogitKernel::soft(
                self.divergence.kernel_kind(),
                self.temperature,
                self.scaling,
            )
        }
    }
}

/// [`distillation_loss`] built from Burn tensor operations only: the reference implementation,
/// on every backend. Same formula, shapes, reduction and panics.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::{distillation_loss, distillation_loss_composed};
///
/// let device = Device::flex();
/// let kd = DistillationLossConfig::new().init();
/// let s = Tensor::<2>::from_floats([[0.5, 0.1, -0.3]], &device);
/// let t = Tensor::<2>::from_floats([[2.0, 0.3, -1.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0], &device);
/// let a = distillation_loss(s.clone(), t.clone(), y.clone(), &kd, Reduction::RowMean).total;
/// let b = distillation_loss_composed(s, t, y, &kd, Reduction::RowMean).total;
/// assert!((a.into_scalar::<f32>() - b.into_scalar::<f32>()).abs() < 1e-6);
/// ```
pub fn distillation_loss_composed<const D: usize, const DL: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    loss: &DistillationLoss,
    reduction: Reduction,
) -> DistillationOutput {
    loss.output(
        student_logits,
        teacher_logits,
        labels,
        reduction,
        Path::Composed,
    )
}

impl DistillationLoss {
    /// The three terms on `path` ([`distillation_loss`], [`distillation_loss_composed`]).
    fn output<const D: usize, const DL: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        labels: Tensor<DL, Int>,
        reduction: Reduction,
        path: Path,
    ) -> DistillationOutput {
        let (temperature, scaling) = self.parts();
        let mix = Mix {
            divergence: Divergence::ForwardKl,
            temperature,
            scaling,
            alpha: self.alpha,
            smoothing: self.label_smoothing,
            ignore_index: self.ignore_index,
            student_transform: self.student_logits,
            teacher_transform: self.teacher_logits,
        };
        let (total, soft, hard) =
            mixed_terms(student_logits, teacher_logits, labels, mix, reduction, path);
        DistillationOutput {
            total,
            soft,
            hard,
            alpha: self.alpha,
        }
    }

    /// Checks every field as [`DistillationLossConfig::try_init`] does (the fields are public, so
    /// a struct literal can hold anything).
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], or [`KdError::OutOfRange`] for `alpha` or
    /// `label_smoothing` outside `[0, 1]` (or NaN).
    pub fn validate(&self) -> Result<(), KdError> {
        Temperature::new(self.temperature)?;
        check_range("alpha", self.alpha, 0.0, 1.0)?;
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)?;
        self.student_logits.validated()?;
        self.teacher_logits.validated()?;
        Ok(())
    }

    /// The validated temperature and the `T²` choice; every path (fused and composed) starts
    /// here, so an invalid field panics the same way on each.
    fn parts(&self) -> (Temperature, T2Scaling) {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let t = Temperature::new(self.temperature).unwrap_or_else(|e| panic!("{e}"));
        (t, T2Scaling::from_flag(self.t2_scaling))
    }

    /// See [`distillation_loss`].
    ///
    /// # Panics
    /// If the shapes differ or a label is out of range.
    pub fn forward<const D: usize, const DL: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        labels: Tensor<DL, Int>,
        reduction: Reduction,
    ) -> DistillationOutput {
        distillation_loss(student_logits, teacher_logits, labels, self, reduction)
    }
}
