//! The chunked evaluation: per chunk of rows the logits of both models, the chunk's loss and
//! its gradient, accumulated into `∂L/∂h` and `∂L/∂W`, and the surrogate that hands them to
//! Burn's graph.

use burn::tensor::{Bool, DType, Int, Tensor};

use super::{FusedLinearKdLoss, FusedLinearOutput, LinearHead, LinearTeacher, auto_chunk_rows};
use crate::error::KdError;
use crate::logits::combined::{Mix, Path, mixed_terms};
use crate::reduction::{Normalizer, Reduction};
use crate::vocab::{VocabAlignment, align_vocab};

/// The distillation loss of a student's LM head against a teacher, one row chunk at a time,
/// without materializing the `[N, V]` logits; see the [module docs](crate::fused_linear).
///
/// ```text
/// z_s = h_s·W_s + b_s,   z_t = h_t·W_t + b_t (or given)
/// L   = α · Σ_kept T²·D(softmax(z_t/T) ‖ softmax(z_s/T)) / n  +  (1 − α) · Σ_kept CE(z_s, y) / n
/// ```
///
/// `D` is the configured divergence (`T²` only with `t2_scaling`), the kept tokens are those
/// whose label is not `ignore_index` (and, with `mask`, where it is `true`), and `n` is the
/// reduction's denominator over the whole batch: the number of kept tokens for
/// [`Reduction::RowMean`], 1 for `Sum`, `N` for `BatchMean`, kept tokens × `V` for `ElementMean`,
/// or the given [`Normalizer`]. The value and the gradients of `h_s`, `W_s` and `b_s` equal those
/// of [`distillation_loss`](crate::logits::distillation_loss) on the materialized logits `h_s·W_s + b_s`.
///
/// # Shapes
/// - `student_hidden`: `[N, H]`; `student_head.weight`: `[H, V]`, bias `[V]`
/// - teacher: hidden `[N, H_t]` with head `[H_t, V_t]`, or logits `[N, V_t]`
/// - `labels`: `[N]` in `0..V` or `ignore_index`; `mask`: `[N]`, `true` = keep
/// - returns [`FusedLinearOutput`] of `[1]` tensors.
///
/// # Panics
/// If a shape does not match (named, with both shapes), a label is out of range, the
/// vocabularies differ under [`VocabAlignment::Error`] (the message of
/// [`KdError::VocabMismatch`]), or the loss holds an invalid configuration.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::fused_linear::{fused_linear_distillation, FusedLinearKdLossConfig, LinearHead, LinearTeacher};
/// use kd_losses::logits::{distillation_loss, DistillationLossConfig};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex().autodiff();
/// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]], &device);
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], &device);
/// let ht = Tensor::<2>::from_floats([[1.0], [2.0], [-1.0]], &device);
/// let wt = Tensor::<2>::from_floats([[0.5, -0.5, 1.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0, 2, 1], &device);
/// let loss = FusedLinearKdLossConfig::new().with_chunk_rows(Some(2)).init();
/// let teacher = LinearTeacher::Head { hidden: ht.clone(), head: LinearHead::new(wt.clone()) };
/// let fused = fused_linear_distillation(h.clone(), &LinearHead::new(w.clone()), teacher,
///     labels.clone(), None, &loss, Reduction::RowMean);
/// // The same loss on the materialized logits.
/// let full = distillation_loss(h.matmul(w), ht.matmul(wt), labels,
///     &DistillationLossConfig::new().init(), Reduction::RowMean);
/// let (a, b) = (fused.total.into_scalar::<f32>(), full.total.into_scalar::<f32>());
/// assert!((a - b).abs() < 1e-5 * b.abs());
/// ```
pub fn fused_linear_distillation(
    student_hidden: Tensor<2>,
    student_head: &LinearHead,
    teacher: LinearTeacher,
    labels: Tensor<1, Int>,
    mask: Option<Tensor<1, Bool>>,
    loss: &FusedLinearKdLoss,
    reduction: Reduction,
) -> FusedLinearOutput {
    let cfg = &loss.config;
    let [n, h] = student_hidden.dims();
    let [hw, v] = student_head.dims();
    assert!(
        hw == h,
        "student_head.weight: shape {:?} does not match student_hidden shape {:?} (expected [{h}, V])",
        student_head.weight.dims(),
        student_hidden.dims()
    );
    if let Some(b) = &student_head.bias {
        assert!(
            b.dims() == [v],
            "student_head.bias: shape {:?} does not match student_head.weight shape {:?} (expected [{v}])",
            b.dims(),
            student_head.weight.dims()
        );
    }
    assert!(
        labels.dims() == [n],
        "labels: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
        labels.dims(),
        student_hidden.dims()
    );
    if let Some(m) = &mask {
        assert!(
            m.dims() == [n],
            "mask: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
            m.dims(),
            student_hidden.dims()
        );
    }
    let v_t = match &teacher {
        LinearTeacher::Head { hidden, head } => {
            let [nt, ht] = hidden.dims();
            assert!(
                nt == n,
                "teacher hidden: shape {:?} does not match student_hidden shape {:?} in the rows",
                hidden.dims(),
                student_hidden.dims()
            );
            let [hwt, vt] = head.dims();
            assert!(
                hwt == ht,
                "teacher head.weight: shape {:?} does not match teacher hidden shape {:?} (expected [{ht}, V])",
                head.weight.dims(),
                hidden.dims()
            );
            if let Some(b) = &head.bias {
                assert!(
                    b.dims() == [vt],
                    "teacher head.bias: shape {:?} does not match teacher head.weight shape {:?}",
                    b.dims(),
                    head.weight.dims()
                );
            }
            vt
        }
        LinearTeacher::Logits(t) => {
            assert!(
                t.dims()[0] == n,
                "teacher logits: shape {:?} does not match student_hidden shape {:?} in the rows",
                t.dims(),
                student_hidden.dims()
            );
            t.dims()[1]
        }
    };
    if v_t != v && cfg.vocab == VocabAlignment::Error {
        panic!(
            "{}",
            KdError::VocabMismatch {
                student: v,
                teacher: v_t
            }
        );
    }
    if let Err(e) = crate::logits::hard::check_labels(&labels, v, Some(cfg.ignore_index)) {
        panic!("labels: {e}");
    }

    // Masked rows become ignored labels: one rule for both terms.
    let labels = match mask {
        Some(m) => labels.mask_fill(m.bool_not(), cfg.ignore_index),
        None => labels,
    };
    let kept = labels
        .clone()
        .not_equal_elem(cfg.ignore_index)
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let denominator = reduction.denominator(kept as f64, n, v);
    let chunk_norm =
        Reduction::Normalizer(Normalizer::new(denominator).expect("a positive denominator"));
    let chunk = cfg
        .chunk_rows
        .unwrap_or_else(|| auto_chunk_rows(n, h, v))
        .max(1);

    let dtype = student_hidden.dtype();
    let track_h = student_hidden.is_tracked();
    let track_w = student_head.weight.is_tracked();
    let track_b = student_head.bias.as_ref().is_some_and(|b| b.is_tracked());
    let tracked = track_h || track_w || track_b;

    // With a gradient to compute, everything below runs outside the caller's graph (each chunk's
    // loss on a fresh leaf); without, on the caller's tensors as they are.
    let strip = |x: Tensor<2>| if tracked { x.inner() } else { x.detach() };
    let hs = strip(student_hidden.clone());
    let ws = strip(student_head.weight.clone());
    let bs = student_head
        .bias
        .clone()
        .map(|b| if tracked { b.inner() } else { b.detach() });
    let inner_device = hs.device();
    let teacher = match teacher {
        LinearTeacher::Head { hidden, head } => LinearTeacher::Head {
            hidden: hidden.inner(),
            head: LinearHead {
                weight: head.weight.inner(),
                bias: head.bias.map(Tensor::inner),
            },
        },
        LinearTeacher::Logits(t) => LinearTeacher::Logits(t.inner()),
    };

    // Gradient accumulators in f32 whatever the student's dtype (bf16 sums over N rows lose
    // the small contributions).
    let acc = DType::F32;
    let mut grad_w: Option<Tensor<2>> = None;
    let mut grad_b: Option<Tensor<1>> = None;
    // `∂L/∂h_s`, written one chunk of rows at a time in place (no list of parts to concatenate).
    let mut grad_h =
        (track_h && n > 0).then(|| same_dtype(Tensor::<2>::zeros([n, h], &inner_device), acc));
    let mut values: Option<(Tensor<1>, Tensor<1>, Tensor<1>)> = None;
    // `W_sᵀ` in the accumulator dtype, for `∂L/∂h_s` only.
    let ws_acc_t = track_h.then(|| same_dtype(ws.clone(), acc).transpose());

    let mut first = 0;
    while first < n {
        let rows = chunk.min(n - first);
        let h_c = hs.clone().narrow(0, first, rows);
        let z_s = LinearHead::logits(&ws, &bs, h_c.clone());
        let z_t = match &teacher {
            LinearTeacher::Head { hidden, head } => {
                let ht = hidden.clone().narrow(0, first, rows);
                LinearHead::logits(&head.weight, &head.bias, ht)
            }
            LinearTeacher::Logits(t) => t.clone().narrow(0, first, rows),
        }
        .to_device(&inner_device);
        let z_t = same_dtype(z_t, z_s.dtype());
        let y_c = labels.clone().narrow(0, first, rows);

        let leaf = if tracked {
            z_s.autodiff().require_grad()
        } else {
            z_s
        };
        // The teacher in the student's autodiff context (a constant either way).
        let z_t = if leaf.is_autodiff() {
            z_t.autodiff()
        } else {
            z_t
        };
        let (total, soft, hard) = chunk_loss(loss, leaf.clone(), z_t, y_c, chunk_norm);
        let g = tracked.then(|| {
            if total.is_tracked() {
                leaf.grad(&total.clone().backward())
            } else {
                None
            }
            .unwrap_or_else(|| Tensor::<2>::zeros([rows, v], &inner_device))
        });
        let (total, soft, hard) = (total.inner(), soft.inner(), hard.inner());
        // The chunk's logits (and the graph that held them) go before the gradient products.
        drop(leaf);
        values = Some(match values {
            Some((t, s, hh)) => (t.add(total), s.add(soft), hh.add(hard)),
            None => (total, soft, hard),
        });
        if let Some(g) = g {
            let g = same_dtype(g, acc);
            if let (Some(wt), Some(gh)) = (&ws_acc_t, grad_h.take()) {
                let part = g.clone().matmul(wt.clone());
                grad_h = Some(gh.slice_assign([first..first + rows, 0..h], part));
            }
            if track_b {
                let gb = g.clone().sum_dim(0).reshape([v]);
                grad_b = Some(match grad_b {
                    Some(a) => a.add(gb),
                    None => gb,
                });
            }
            if track_w {
                grad_w = Some(add_outer(grad_w, same_dtype(h_c, acc).transpose(), g));
            }
        }
        first += rows;
    }
    // The fused CPU kernel hands each chunk's gradient buffer to its cache when the chunk is
    // done; the last one would stay beside the head-sized gradients through the backward pass.
    #[cfg(feature = "cpu-kernel")]
    crate::fused::clear_buffer_cache();
    let (total, soft, hard) = values.unwrap_or_else(|| {
        let z = || Tensor::<1>::zeros([1], &inner_device);
        (z(), z(), z())
    });
    let output = |total: Tensor<1>| FusedLinearOutput {
        total,
        soft: if tracked {
            soft.clone().autodiff()
        } else {
            soft.clone()
        },
        hard: if tracked {
            hard.clone().autodiff()
        } else {
            hard.clone()
        },
        alpha: cfg.alpha,
        chunk_rows: chunk,
    };
    if !tracked {
        return output(total);
    }

    // λ = ⟨h_s, ∂L/∂h_s⟩ + ⟨W_s, ∂L/∂W_s⟩ + ⟨b_s, ∂L/∂b_s⟩; L = ℓ + (λ − λ̄).
    let mut parts = Vec::new();
    if let Some(g) = grad_h {
        let g = same_dtype(g, dtype).autodiff();
        parts.push(dot(student_hidden, g));
    }
    // (An empty batch has no chunk: zero gradients, still connected to the graph.)
    if track_w && grad_w.is_none() {
        grad_w = Some(Tensor::<2>::zeros([h, v], &inner_device).cast(acc));
    }
    if track_b && grad_b.is_none() {
        grad_b = Some(Tensor::<1>::zeros([v], &inner_device).cast(acc));
    }
    if let Some(g) = grad_w {
        let g = same_dtype(g, student_head.weight.dtype()).autodiff();
        parts.push(dot(student_head.weight.clone(), g));
    }
    if let (Some(g), Some(b)) = (grad_b, &student_head.bias) {
        let g = same_dtype(g, b.dtype()).autodiff();
        parts.push(dot(b.clone().unsqueeze_dim(0), g.unsqueeze_dim(0)));
    }
    let total = total.autodiff();
    let total = match parts.into_iter().reduce(Tensor::add) {
        Some(lambda) => {
            let lambda = same_dtype(lambda, total.dtype());
            total.add(lambda.clone().sub(lambda.detach()))
        }
        None => total,
    };
    output(total)
}

/// `⟨x, g⟩` as a `[1, n]×[n, 1]` matrix product: no `x ⊙ g` temporary of `x`'s size (for the
/// head weight, as large as the head), and the backward's gradient of `x` is `g` itself. In f32
/// at least: its value cancels in `λ − λ̄` only while it is finite (f16 overflows at 65 504).
fn dot(x: Tensor<2>, g: Tensor<2>) -> Tensor<1> {
    let n = x.dims().iter().product::<usize>();
    let (x, g) = match x.dtype() {
        DType::F16 | DType::BF16 => (x.cast(DType::F32), g.cast(DType::F32)),
        _ => (x, g),
    };
    x.reshape([1, n]).matmul(g.reshape([n, 1])).reshape([1])
}

/// Columns of `∂L/∂W_s` per product in [`add_outer`]: `H × 4 096` f32 (16.8 MB at `H = 1 024`)
/// instead of a second head-sized product per chunk.
const OUTER_BLOCK_COLS: usize = 4096;

/// `acc + hᵀ·g` (`hᵀ`: `[H, rows]`, `g`: `[rows, V]`), the product formed `OUTER_BLOCK_COLS`
/// columns at a time and added into `acc`'s block: on Flex, whose binary ops and `slice_assign`
/// reuse a uniquely owned buffer, `acc` is updated in place and the only temporary is one block.
/// Without `acc`, the product itself.
fn add_outer(acc: Option<Tensor<2>>, ht: Tensor<2>, g: Tensor<2>) -> Tensor<2> {
    let Some(mut acc) = acc else {
        return ht.matmul(g);
    };
    let [h, v] = acc.dims();
    let mut col = 0;
    while col < v {
        let cols = OUTER_BLOCK_COLS.min(v - col);
        let part = ht.clone().matmul(g.clone().narrow(1, col, cols));
        // `view + part` is written into `part` (the view is shared, `part` is not); once the view
        // is gone `acc` is uniquely owned again and `slice_assign` writes into it.
        let sum = acc.clone().narrow(1, col, cols).add(part);
        acc = acc.slice_assign([0..h, col..col + cols], sum);
        col += cols;
    }
    acc
}

/// `x` in `dtype` (no cast when it already is).
fn same_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// One chunk's `(total, soft, hard)`, each reduced with the global normalizer.
fn chunk_loss(
    loss: &FusedLinearKdLoss,
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    reduction: Reduction,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let cfg = &loss.config;
    let (student, teacher) = if student.dims()[1] == teacher.dims()[1] {
        (student, teacher)
    } else {
        align_vocab(student, teacher, cfg.vocab).unwrap_or_else(|e| panic!("{e}"))
    };
    let mix = Mix {
        divergence: loss.divergence,
        temperature: loss.temperature(),
        scaling: loss.scaling(),
        alpha: cfg.alpha,
        smoothing: cfg.label_smoothing,
        ignore_index: cfg.ignore_index,
    };
    mixed_terms(student, teacher, labels, mix, reduction, Path::Door)
}
