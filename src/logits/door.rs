//! The one door from the logit losses to the fused logit kernel ([`crate::fused`]).
//!
//! Every public form of a logit loss reduces its rows through [`RowLoss::reduce`]: a free
//! function followed by `.masked(..)` / `.reduce(..)`, a Module's `forward` / `forward_masked`,
//! the chunked and fused-linear losses. The logit losses build their rows with [`logit_rows`],
//! which attaches the kernel as the rows' reduction: the kernel is chosen there, where the mask
//! and the denominator are known, and nowhere else. Where no kernel serves the tensors, the rows
//! are computed by the composed path, the reference of every parity test
//! ([`RowLoss::reduce_composed`]). [`distillation_loss`](super::distillation_loss) calls
//! [`LogitKernel::terms`] directly: it needs total, soft and hard from one pass.

use std::sync::Arc;

use burn::tensor::{Bool, Int, Tensor};

#[cfg(feature = "chunked")]
use crate::fused::kd_terms_grad;
use crate::fused::{KdParams, SoftKind, kd_terms, serves};
use crate::reduction::{Reduction, RowLoss, row_weights};
use crate::temperature::{T2Scaling, Temperature};

/// What the fused logit kernel computes for one loss: a soft divergence at a temperature, and a
/// hard (cross-entropy) term mixed in with weight `1 − α` when labels are given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogitKernel {
    /// The soft divergence.
    pub kind: SoftKind,
    /// Temperature of the soft term (the hard term is at `T = 1`).
    pub temperature: Temperature,
    /// Whether the soft term is multiplied by `T²`.
    pub scaling: T2Scaling,
    /// Weight `α` of the soft term, `1 − α` of the hard term.
    pub alpha: f64,
    /// Label smoothing `ε` of the hard term.
    pub smoothing: f64,
    /// The teacher is the student itself (the cross-entropy alone): the soft term is 0 by
    /// construction, so the kernel gets a soft scale of 0 and skips the soft value's
    /// refinement (on the CPU, that pass was 3/4 of a cross-entropy's time).
    pub self_teacher: bool,
}

impl LogitKernel {
    /// A soft term alone.
    pub fn soft(kind: SoftKind, temperature: Temperature, scaling: T2Scaling) -> Self {
        LogitKernel {
            kind,
            temperature,
            scaling,
            alpha: 1.0,
            smoothing: 0.0,
            self_teacher: false,
        }
    }

    /// The cross-entropy alone (`α = 0`): the kernel's hard term, with the logits as their own
    /// (detached) teacher, whose soft term is zero and weighs nothing.
    pub fn hard(smoothing: f64) -> Self {
        LogitKernel {
            kind: SoftKind::ForwardKl,
            temperature: Temperature::ONE,
            scaling: T2Scaling::Off,
            alpha: 0.0,
            smoothing,
            self_teacher: true,
        }
    }

    /// `[total, soft, hard]` reduced with `reduction` over the rows kept by `keep` (`[R]`) of
    /// `[..., V]` logits whose leading dims are `row_dims`, with `total = α·soft + (1 − α)·hard`
    /// and the hard term from `labels` (`[R]`, valid classes); `None` where no kernel serves the
    /// tensors. The denominators are those of [`RowLoss::reduce`].
    #[allow(clippy::too_many_arguments)]
    pub fn terms<const D: usize>(
        &self,
        student_logits: &Tensor<D>,
        teacher_logits: &Tensor<D>,
        labels: Option<Tensor<1, Int>>,
        keep: Option<Tensor<1, Bool>>,
        row_dims: &[usize],
        reduction: Reduction,
    ) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
        if !serves(student_logits, self.kind) || teacher_logits.dtype() != student_logits.dtype() {
            return None;
        }
        let v = student_logits.dims()[D - 1];
        let weights = row_weights(keep, row_dims, v, reduction, &student_logits.device());
        kd_terms(
            student_logits,
            teacher_logits,
            labels,
            weights,
            self.params(),
        )
    }

    /// [`terms`](Self::terms) and the gradient of the total w.r.t. the student, for logits
    /// outside autodiff taken by value (the CPU kernel writes the gradient over a student
    /// buffer nothing else holds); the logits back where no kernel serves them.
    #[cfg(feature = "chunked")]
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn terms_and_grad<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        labels: Option<Tensor<1, Int>>,
        keep: Option<Tensor<1, Bool>>,
        row_dims: &[usize],
        reduction: Reduction,
    ) -> Result<([Tensor<1>; 3], Tensor<D>), (Tensor<D>, Tensor<D>)> {
        if !serves(&student_logits, self.kind) {
            return Err((student_logits, teacher_logits));
        }
        let v = student_logits.dims()[D - 1];
        let weights = row_weights(keep, row_dims, v, reduction, &student_logits.device());
        kd_terms_grad(
            student_logits,
            teacher_logits,
            labels,
            weights,
            self.params(),
        )
    }

    /// The kernel's numbers for this loss.
    fn params(&self) -> KdParams {
        KdParams {
            kind: self.kind,
            temperature: self.temperature.get(),
            soft_scale: if self.self_teacher {
                0.0
            } else {
                self.scaling.factor(self.temperature)
            },
            alpha: self.alpha,
            smoothing: self.smoothing,
        }
    }
}

/// Per-row losses of `[R, V]` logits (`inputs`: `[student, teacher]` for a soft term, the
/// teacher detached; `[logits]` for the cross-entropy alone, with its `labels`), computed on
/// demand by `rows` (the composed path), with `kernel` as their reduction where it serves them.
/// `row_dims` are the logits' leading dims (`R = Π row_dims`), `v` the row size. The inputs keep
/// their dtype (the kernels read `f16`/`bf16` as they are); `rows` widens what it needs.
pub(crate) fn logit_rows(
    inputs: Vec<Tensor<2>>,
    row_dims: &[usize],
    v: usize,
    kernel: Option<LogitKernel>,
    labels: Option<Tensor<1, Int>>,
    rows: impl Fn(Vec<Tensor<2>>) -> Tensor<1> + Send + Sync + 'static,
) -> RowLoss {
    let loss = RowLoss::from_rows(inputs, row_dims, v, rows);
    let Some(kernel) = kernel else {
        return loss;
    };
    let dims = row_dims.to_vec();
    loss.with_fused_reduction(Arc::new(move |inputs, keep, reduction| {
        let student = &inputs[0];
        let teacher = match inputs.get(1) {
            Some(t) => t.clone(),
            None => student.clone().detach(),
        };
        kernel
            .terms(
                student,
                &teacher,
                labels.clone(),
                keep.cloned(),
                &dims,
                reduction,
            )
            .map(|(total, _, _)| total)
    }))
}
