//! Pseudo-label distillation: cross-entropy against the teacher's argmax.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::{KdError, check_range};
use crate::logits::hard::{CrossEntropyOptions, cross_entropy};
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::rows::assert_same_shape;
use crate::temperature::{Temperature, temperature_softmax};

/// Cross-entropy of the student against the teacher's hard predictions ("pseudo-labels").
///
/// ```text
/// y_i    = argmax_v teacher_iv
/// c_i    = max_v softmax(teacher_i)_v            (teacher confidence, at T = 1)
/// keep_i = c_i ≥ threshold                       (every row when threshold is None)
/// r_i    = keep_i · (−log softmax(student_i)_{y_i})
/// ```
/// Rows below the threshold are masked: value 0, no gradient, and out of the `Mean`
/// denominator (so a batch where the teacher is never confident gives 0, not NaN).
/// The teacher is detached.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]`
/// - returns a [`RowLoss`] over the leading dimensions.
///
/// # Panics
/// If the shapes differ, or `threshold` is outside `[0, 1]` (use
/// [`PseudoLabelLossConfig::try_init`] for a typed error).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::pseudo_label_ce;
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[0.0, 0.0], [0.0, 0.0]], &device);
/// let teacher = Tensor::<2>::from_floats([[5.0, 0.0], [0.1, 0.0]], &device);
/// // Only the first row is confident enough.
/// let loss = pseudo_label_ce(student, teacher, Some(0.9)).reduce(Reduction::RowMean);
/// assert!((loss.into_scalar::<f32>() - 2.0f32.ln()).abs() < 1e-6);
/// ```
pub fn pseudo_label_ce<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    threshold: Option<f64>,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    if let Some(Err(e)) = threshold.map(|th| check_range("threshold", th, 0.0, 1.0)) {
        panic!("{e}");
    }
    let teacher = teacher_logits.detach();
    let labels = teacher.clone().argmax(D - 1);
    let dims = labels.dims();
    let lead: Vec<usize> = dims[..D - 1].to_vec();
    let r: usize = lead.iter().product();
    let labels_flat = labels.reshape([r]);
    let options = CrossEntropyOptions {
        ignore_index: None,
        ..CrossEntropyOptions::default()
    };
    let v = student_logits.dims()[D - 1];
    let student_2d = student_logits.reshape([r, v]);
    let rows = cross_entropy(student_2d, labels_flat, &options);
    let rows = RowLoss::new(rows.values(), &lead, v);
    match threshold {
        None => rows,
        Some(th) => {
            let conf = temperature_softmax(teacher.reshape([r, v]), Temperature::ONE)
                .max_dim(1)
                .reshape([r]);
            let mask = RowMask::new(conf.greater_equal_elem(th)).reshape_to(&lead);
            rows.masked(&mask)
        }
    }
}

/// Configuration of [`PseudoLabelLoss`].
#[derive(Config, Debug)]
pub struct PseudoLabelLossConfig {
    /// Minimum teacher max-probability for a row to count; `None` keeps every row.
    pub threshold: Option<f64>,
}

impl PseudoLabelLossConfig {
    /// Builds the loss.
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] when the threshold is outside `[0, 1]` or NaN.
    pub fn try_init(&self) -> Result<PseudoLabelLoss, KdError> {
        if let Some(th) = self.threshold {
            check_range("threshold", th, 0.0, 1.0)?;
        }
        Ok(PseudoLabelLoss {
            threshold: self.threshold,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid threshold.
    pub fn init(&self) -> PseudoLabelLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`pseudo_label_ce`].
#[derive(Module, Debug)]
pub struct PseudoLabelLoss {
    /// Confidence threshold.
    pub threshold: Option<f64>,
}

impl PseudoLabelLoss {
    /// Per-row values (see [`pseudo_label_ce`]).
    ///
    /// # Panics
    /// If the shapes differ or the threshold is outside `[0, 1]`.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> RowLoss {
        pseudo_label_ce(student_logits, teacher_logits, self.threshold)
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// If the shapes differ or the threshold is outside `[0, 1]`.
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_logits, teacher_logits)
            .reduce(reduction)
    }

    /// Reduced loss `[1]` over the rows `mask` keeps (a padding mask of the leading shape).
    ///
    /// # Panics
    /// If the shapes differ, the mask does not match the leading shape, or the threshold is
    /// outside `[0, 1]`.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_logits, teacher_logits)
            .masked(mask)
            .reduce(reduction)
    }
}
