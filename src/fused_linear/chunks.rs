//! The chunked evaluation: per chunk of rows the logits of both models, the chunk's loss and
//! its gradient, accumulated into `∂L/∂h` and `∂L/∂W` (`super::grads`, which also hands them to
//! Burn's graph).

use burn::tensor::{Bool, DType, Int, Tensor};

use super::check::check_inputs;
use super::grads::{Accumulators, add_outer};
use super::{
    FusedLinearKdLoss, FusedLinearOutput, HeadGradients, LinearHead, LinearTeacher, auto_chunk_rows,
};
use crate::chunk::{eval_chunk, link, row_chunks, same_dtype};
use crate::logits::combined::{Mix, Path, mixed_terms, mixed_terms_and_grad};
use crate::logits::{CrossEntropyOptions, cross_entropy};
use crate::reduction::{Normalizer, Reduction, RowMask};
use crate::sparse::{SparseKdLoss, TopkTeacher};
use crate::vocab::align_vocab;

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
/// vocabularies differ under [`VocabAlignment::Error`](crate::vocab::VocabAlignment::Error) (the message of
/// [`KdError::VocabMismatch`](crate::error::KdError::VocabMismatch)), or the loss holds an invalid configuration.
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
    let v = check_inputs(
        &student_hidden,
        student_head,
        &teacher,
        &labels,
        mask.as_ref(),
        cfg,
    );

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

    let adapter = student_head.adapter.as_ref();
    let computed = HeadGradients {
        hidden: student_hidden.is_tracked(),
        weight: student_head.weight.is_tracked(),
        bias: student_head.bias.as_ref().is_some_and(|b| b.is_tracked()),
        adapter: adapter.is_some_and(|a| a.a.is_tracked() || a.b.is_tracked()),
    };
    let tracked = computed.hidden || computed.weight || computed.bias || computed.adapter;

    // With a gradient to compute, everything below runs outside the caller's graph (each chunk's
    // loss on a fresh leaf); without, on the caller's tensors as they are.
    let head = student_head.clone().map(
        |x| if tracked { x.inner() } else { x.detach() },
        |x| if tracked { x.inner() } else { x.detach() },
    );
    let hs = if tracked {
        student_hidden.clone().inner()
    } else {
        student_hidden.clone().detach()
    };
    // Half-precision students run in f32: the chunk's logits product, the loss and every
    // gradient product accumulate in f32 (one f32 copy of the head, the one `∂L/∂h` needs
    // anyway); the gradients are handed back in the parameters' dtype.
    let half = matches!(hs.dtype(), DType::F16 | DType::BF16);
    let (hs, head) = if half {
        let up2 = |x: Tensor<2>| x.cast(DType::F32);
        let up1 = |x: Tensor<1>| x.cast(DType::F32);
        (up2(hs), head.map(up2, up1))
    } else {
        (hs, head)
    };
    let inner_device = hs.device();
    let teacher = match teacher {
        LinearTeacher::Head { hidden, head } => LinearTeacher::Head {
            hidden: hidden.inner(),
            head: head.map(Tensor::inner, Tensor::inner),
        },
        LinearTeacher::Logits(t) => LinearTeacher::Logits(t.inner()),
        LinearTeacher::Topk(t) => LinearTeacher::Topk(t.without_autodiff()),
    };
    let sparse = matches!(teacher, LinearTeacher::Topk(_)).then(|| loss.sparse());

    // Gradient accumulators in f32 whatever the student's dtype (bf16 sums over N rows lose
    // the small contributions).
    let acc = DType::F32;
    let mut grads = Accumulators::default();
    // `∂L/∂h_s`, written one chunk of rows at a time in place (no list of parts to concatenate).
    grads.h = (computed.hidden && n > 0)
        .then(|| same_dtype(Tensor::<2>::zeros([n, h], &inner_device), acc));
    // Each chunk's `[total, soft, hard]` written into one row of a buffer made once: a running
    // sum would make three small tensors per chunk that outlive the chunk, and glibc places
    // them in the hole the chunk's packing buffers leave, so that the heap grows by one packing
    // buffer per chunk (about 30 MB at `[8192, 1024, 32000]`).
    let mut values: Option<Tensor<2>> = None;
    // `W_sᵀ` (and `Bᵀ`, `s·Aᵀ`) in the accumulator dtype, for `∂L/∂h_s` and `∂L/∂A` only.
    let ws_acc_t = computed
        .hidden
        .then(|| same_dtype(head.weight.clone(), acc).transpose());
    let adapter_acc = head
        .adapter
        .as_ref()
        .filter(|_| computed.hidden || computed.adapter)
        .map(|ad| {
            (
                same_dtype(ad.b.clone(), acc).transpose(),
                same_dtype(ad.a.clone(), acc)
                    .mul_scalar(ad.scale)
                    .transpose(),
            )
        });

    // The previous chunk's `[rows, V]` buffers (its gradient, the teacher's logits), which the
    // next chunk's logits are written into where nothing else holds them (see `logits_into`).
    let (mut s_buf, mut t_buf) = (None, None);
    for (index, (first, rows)) in row_chunks(n, chunk).enumerate() {
        let h_c = hs.clone().narrow(0, first, rows);
        let (z_s, ha_c) = logits_into(&head, h_c.clone(), s_buf.take());
        let y_c = labels.clone().narrow(0, first, rows);
        // The teacher's chunk: its logits (outside autodiff, in the student's dtype), or its
        // stored top-k rows (taken in the closure below).
        let z_t = match &teacher {
            LinearTeacher::Head { hidden, head } => {
                Some(logits_into(head, hidden.clone().narrow(0, first, rows), t_buf.take()).0)
            }
            LinearTeacher::Logits(t) => Some(t.clone().narrow(0, first, rows)),
            LinearTeacher::Topk(_) => None,
        }
        .map(|z_t| same_dtype(z_t.to_device(&inner_device), z_s.dtype()));
        // With a gradient to compute and the kernel serving the chunk: values and gradient in
        // one pass outside autodiff, the gradient written over the chunk's own logits (one
        // `[rows, V]` tensor fewer than a backward pass needs). Otherwise `eval_chunk`.
        let direct = match z_t {
            Some(z_t) if tracked && z_t.dims()[1] == v => {
                let kept = z_t.clone();
                match mixed_terms_and_grad(z_s, z_t, y_c.clone(), mix(loss), chunk_norm) {
                    Ok((terms, g)) => {
                        // The kernel has let go of its copy: the buffer is the next chunk's.
                        t_buf = matches!(teacher, LinearTeacher::Head { .. }).then_some(kept);
                        Ok((terms, Some(g)))
                    }
                    Err((z_s, z_t)) => Err((z_s, Some(z_t))),
                }
            }
            z_t => Err((z_s, z_t)),
        };
        // The chunk's logits (and the graph that held them) are gone when `eval_chunk`
        // returns, before the gradient products.
        let ([total, soft, hard], g) = direct.unwrap_or_else(|(z_s, z_t)| {
            eval_chunk(z_s, tracked, |leaf| {
                let (total, soft, hard) = match z_t {
                    Some(z_t) => {
                        // The teacher in the student's autodiff context (a constant either way).
                        let z_t = same_dtype(z_t, leaf.dtype());
                        let z_t = if leaf.is_autodiff() {
                            z_t.autodiff()
                        } else {
                            z_t
                        };
                        chunk_loss(loss, leaf, z_t, y_c, chunk_norm)
                    }
                    None => {
                        let LinearTeacher::Topk(t) = &teacher else {
                            unreachable!("dense teachers have logits")
                        };
                        let t_c = t.rows_on(first, rows, &inner_device, leaf.is_autodiff());
                        let sparse = sparse.as_ref().expect("built for a top-k teacher");
                        topk_chunk_loss(loss, sparse, leaf, t_c, y_c, chunk_norm)
                    }
                };
                [total, soft, hard]
            })
        });
        let row = Tensor::cat(vec![total, soft, hard], 0)
            .cast(DType::F32)
            .reshape([1, 3]);
        let all = values.take().unwrap_or_else(|| {
            Tensor::<2>::zeros([n.div_ceil(chunk), 3], &row.device()).cast(DType::F32)
        });
        values = Some(all.slice_assign([index..index + 1, 0..3], row));
        if let Some(g) = g {
            let g = same_dtype(g, acc);
            // `g·Bᵀ`, shared by `∂h` and `∂A`.
            let gb = adapter_acc
                .as_ref()
                .map(|(bt, _)| g.clone().matmul(bt.clone()));
            if let (Some(wt), Some(gh)) = (&ws_acc_t, grads.h.take()) {
                grads.h = Some(match (&gb, &adapter_acc) {
                    (Some(gb), Some((_, at))) => {
                        let part = g.clone().matmul(wt.clone());
                        let part = part.add(gb.clone().matmul(at.clone()));
                        gh.slice_assign([first..first + rows, 0..h], part)
                    }
                    _ => set_rows_times(gh, first, &g, wt),
                });
            }
            if computed.bias {
                let gbias = g.clone().sum_dim(0).reshape([v]);
                grads.b = Some(match grads.b.take() {
                    Some(a) => a.add(gbias),
                    None => gbias,
                });
            }
            if computed.adapter {
                let scale = head.adapter.as_ref().map_or(1.0, |a| a.scale);
                let h_t = same_dtype(h_c.clone(), acc).transpose();
                // ∂A += s·h_cᵀ·(g·Bᵀ)      [H, r]
                let gb = gb.expect("formed for the adapter");
                let part = h_t.matmul(gb).mul_scalar(scale);
                grads.a = Some(match grads.a.take() {
                    Some(a) => a.add(part),
                    None => part,
                });
                // ∂B += (s·h_c·A)ᵀ·g       [r, V]
                let ha = same_dtype(ha_c.expect("formed with the adapter"), acc);
                grads.lb = Some(add_outer(grads.lb.take(), ha, &g));
            }
            if computed.weight {
                grads.w = Some(add_outer(grads.w.take(), same_dtype(h_c, acc), &g));
            }
            // Its last reader is done: the buffer holds the next chunk's logits (which an
            // adapted head forms its own way).
            s_buf = head.adapter.is_none().then_some(g);
        }
    }
    drop((s_buf, t_buf));
    // The fused CPU kernel hands each chunk's gradient buffer to its cache when the chunk is
    // done; the last one would stay beside the head-sized gradients through the backward pass.
    #[cfg(feature = "cpu-kernel")]
    crate::fused::clear_buffer_cache();
    let sums = values
        .map(|v| v.sum_dim(0).reshape([3]))
        .unwrap_or_else(|| Tensor::<1>::zeros([3], &inner_device));
    let term = |k: usize| sums.clone().narrow(0, k, 1);
    let (total, soft, hard) = (term(0), term(1), term(2));
    let output = |total: Tensor<1>, handed_over: bool| FusedLinearOutput {
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
        gradients: if tracked {
            computed
        } else {
            HeadGradients::default()
        },
        handed_over,
    };
    if !tracked {
        return output(total, false);
    }

    // (An empty batch has no chunk: zero gradients, still connected.)
    let zeros = |x: &Tensor<2>| Tensor::<2>::zeros(x.dims(), &inner_device).cast(acc);
    let mut terms = Vec::new();
    if computed.hidden && n > 0 {
        let g = grads.h.unwrap_or_else(|| zeros(&student_hidden));
        terms.push((student_hidden, g));
    }
    if computed.weight {
        let g = grads.w.unwrap_or_else(|| zeros(&student_head.weight));
        terms.push((student_head.weight.clone(), g));
    }
    if let (true, Some(b)) = (computed.bias, &student_head.bias) {
        let b = b.clone().unsqueeze_dim(0);
        let g = grads
            .b
            .map(|g| g.unsqueeze_dim(0))
            .unwrap_or_else(|| zeros(&b));
        terms.push((b, g));
    }
    if let (true, Some(ad)) = (computed.adapter, adapter) {
        let ga = grads.a.unwrap_or_else(|| zeros(&ad.a));
        let gb = grads.lb.unwrap_or_else(|| zeros(&ad.b));
        terms.push((ad.a.clone(), ga));
        terms.push((ad.b.clone(), gb));
    }
    let (total, handed_over) = link(total, terms);
    output(total, handed_over)
}

/// `acc` with rows `first..first + r` set to `g·wt` (`g`: `[r, V]`, `wt`: `[V, H]`): on Flex one
/// GEMM into `acc`'s rows (no `[r, H]` product per chunk, which the allocator keeps), else the
/// product assigned into them.
fn set_rows_times(acc: Tensor<2>, first: usize, g: &Tensor<2>, wt: &Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "cpu-kernel")]
    let acc = match super::gemm::flex_product_into(acc, first, g, wt, super::gemm::Start::Zero) {
        Ok(acc) => return acc,
        Err(acc) => acc,
    };
    let [r, _] = g.dims();
    let [_, h] = acc.dims();
    acc.slice_assign([first..first + r, 0..h], g.clone().matmul(wt.clone()))
}

/// `head`'s logits of the chunk `h` (and the adapter's `h·A·s`). On Flex, for a head without
/// adapter in f32, one GEMM writes them (bias first) into `buf` — the previous chunk's buffer,
/// once nothing else holds it — so that the loop reuses two `[rows, V]` buffers instead of
/// allocating, page-faulting and zeroing two per chunk, and the allocator has no chunk-sized
/// holes to keep. Otherwise (`buf` dropped) the head's own products.
fn logits_into(
    head: &LinearHead,
    h: Tensor<2>,
    buf: Option<Tensor<2>>,
) -> (Tensor<2>, Option<Tensor<2>>) {
    #[cfg(feature = "cpu-kernel")]
    if head.adapter.is_none()
        && let Some(z) = super::gemm::flex_product(buf, &h, &head.weight, head.bias.as_ref())
    {
        return (z, None);
    }
    #[cfg(not(feature = "cpu-kernel"))]
    drop(buf);
    head.logits(h)
}

/// One chunk's `(total, soft, hard)`, each reduced with the global normalizer.
fn chunk_loss(
    loss: &FusedLinearKdLoss,
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    reduction: Reduction,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (student, teacher) = if student.dims()[1] == teacher.dims()[1] {
        (student, teacher)
    } else {
        align_vocab(student, teacher, loss.config.vocab).unwrap_or_else(|e| panic!("{e}"))
    };
    mixed_terms(student, teacher, labels, mix(loss), reduction, Path::Door)
}

/// The loss's soft and hard terms as the logit losses' [`Mix`].
fn mix(loss: &FusedLinearKdLoss) -> Mix {
    let cfg = &loss.config;
    Mix {
        divergence: loss.divergence,
        temperature: loss.temperature(),
        scaling: loss.scaling(),
        alpha: cfg.alpha,
        smoothing: cfg.label_smoothing,
        ignore_index: cfg.ignore_index,
        student_transform: cfg.student_logits,
        teacher_transform: cfg.teacher_logits,
    }
}

/// One chunk's `(total, soft, hard)` against a top-k teacher: the soft term is `sparse` (the
/// crate's top-k loss, its kernel where one serves the tensors) on the rows whose label is kept,
/// the hard term the cross-entropy; both reduced with the global normalizer.
fn topk_chunk_loss(
    loss: &FusedLinearKdLoss,
    sparse: &SparseKdLoss,
    student: Tensor<2>,
    teacher: TopkTeacher<2>,
    labels: Tensor<1, Int>,
    reduction: Reduction,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let cfg = &loss.config;
    // The student's transform once, for both terms (`sparse` holds the identity for it).
    let student = cfg.student_logits.apply(student);
    let mask = RowMask::from_labels(labels.clone(), cfg.ignore_index);
    let soft = sparse.forward_masked(student.clone(), teacher, &mask, reduction);
    let options = CrossEntropyOptions {
        ignore_index: Some(cfg.ignore_index),
        label_smoothing: cfg.label_smoothing,
        class_weights: None,
    };
    let hard = cross_entropy(student, labels, &options).reduce(reduction);
    let total = soft
        .clone()
        .mul_scalar(cfg.alpha)
        .add(hard.clone().mul_scalar(1.0 - cfg.alpha));
    (total, soft, hard)
}
