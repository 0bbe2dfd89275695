//! Rows of squared differences, shared by the hidden-state and attention-map MSE losses, with
//! the fused squared-error kernel offered as their reduction where it runs (the choice between
//! fused and composed made here, beside the losses that use it).

use std::sync::Arc;

use burn::tensor::Tensor;

use crate::reduction::{RowLoss, row_weights};

/// How [`squared_rows`] treats `±inf` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InfEntries {
    /// As they are (an infinite square).
    Kept,
    /// As 0 in both inputs (masked attention scores).
    AsZero,
}

/// What one row of [`squared_rows`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SquareRows {
    /// Each row sums its squares (hidden states).
    RowSums,
    /// Every entry is a row (attention maps).
    PerElement,
}

/// Rows of squared differences of `student` and `teacher` (`[M, K]`, the teacher detached),
/// computed on demand: [`SquareRows::PerElement`] makes every entry a row (`R = M·K`,
/// `row_size = 1`, attention maps), [`SquareRows::RowSums`] sums each of the `M` rows' `K`
/// squares (hidden states). With [`InfEntries::AsZero`], entries that are `±inf` in either
/// input count as 0 in both. Where the fused squared-error kernel runs, a reduction goes through
/// it (value and gradient in one pass; masked hidden rows are skipped by their weights).
pub(crate) fn squared_rows(
    student: Tensor<2>,
    teacher: Tensor<2>,
    row_dims: &[usize],
    row_size: usize,
    inf: InfEntries,
    rows: SquareRows,
) -> RowLoss {
    let zero_inf = inf == InfEntries::AsZero;
    // One dtype for both maps (the wider, at least f32), whichever loss calls: a bf16 teacher
    // with an f32 student is widened here, not handed to the f32 kernel.
    let (student, teacher) = crate::rows::same_dtype(student, teacher.detach());
    let [m, k] = student.dims();
    let fused = crate::fused::sq_available(&student);
    // Row-aligned inputs: per element, every entry is a row of one.
    let (s, t) = match rows {
        SquareRows::RowSums => (student, teacher),
        SquareRows::PerElement => (student.reshape([m * k, 1]), teacher.reshape([m * k, 1])),
    };
    let loss = RowLoss::from_rows(vec![s, t], row_dims, row_size, move |x| {
        let [mut s, mut t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        if zero_inf {
            let inf = s.clone().is_inf().bool_or(t.clone().is_inf());
            s = s.mask_fill(inf.clone(), 0.0);
            t = t.mask_fill(inf, 0.0);
        }
        let r = s.dims()[0];
        s.sub(t).square().sum_dim(1).reshape([r])
    });
    if !fused {
        return loss;
    }
    let row_dims = row_dims.to_vec();
    loss.with_fused_reduction(Arc::new(move |inputs, keep, reduction| {
        let (s, t) = (inputs[0].clone(), inputs[1].clone());
        let device = s.device();
        let weights = match rows {
            SquareRows::RowSums => {
                row_weights(keep.cloned(), &row_dims, row_size, reduction, &device)
            }
            // Per element the kernel runs on the `[M, K]` maps with one weight per map row;
            // a mask over single entries takes the composed path.
            SquareRows::PerElement if keep.is_some() => return None,
            SquareRows::PerElement => {
                let r = (m * k) as f64;
                let batch = row_dims.first().copied().unwrap_or(1);
                let c = 1.0 / reduction.denominator(r, batch, row_size);
                Tensor::<1>::full([m], c, &device)
            }
        };
        let (s, t) = match rows {
            SquareRows::RowSums => (s, t),
            SquareRows::PerElement => (s.reshape([m, k]), t.reshape([m, k])),
        };
        crate::fused::sq_reduced(s, t, weights, zero_inf)
    }))
}
