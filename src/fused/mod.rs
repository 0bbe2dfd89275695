//! Fused forward + backward kernels for the logit losses, with the composed path as fallback.
//!
//! The composed losses ([`soft_kl`](crate::logits::soft_kl), [`divergence`](crate::divergence::divergence),
//! [`cross_entropy`](crate::logits::cross_entropy)) are built from Burn tensor operations: obviously
//! correct, run on every backend, but they make a dozen passes over the logits and keep several
//! logits-sized intermediates for the backward pass. The fused path computes the reduced loss
//! **and its gradient** in one operation:
//!
//! ```text
//! per row r (weight w_r from the reduction and the mask; w_r = 0 rows are skipped):
//!   pass A  read s_r, t_r from memory: row maxima
//!   pass B  (from cache) e_t = exp((t − m_t)/T), e_s = exp((s − m_s)/T), their sums
//!   pass C  (from cache) soft_r = f · Σ p (log p − log q) and, when the student needs a gradient,
//!           ∂/∂s = w_r · (α f (q − p) / T + (1 − α) (q₁ − onehot(y)))   written once
//! ```
//! with `p = softmax(t/T)`, `q = softmax(s/T)`, `q₁ = softmax(s)` (`= e_s^T` renormalised when `T`
//! is 2, 3 or 4) and `f = T²` or `1`. The gradient is computed in the forward pass and kept for
//! the backward pass (one logits tensor: the gradient itself), so forward + backward reads the
//! student and teacher once and writes the gradient once: the memory-traffic floor.
//!
//! # Where it runs
//! * **Flex** (Burn's CPU backend, with this crate's `flex` feature): a row-parallel kernel on
//!   all cores, vectorised with AVX2 + FMA when the CPU has them (chosen at run time).
//! * Everywhere else (ndarray, wgpu and the other CubeCL runtimes, LibTorch, remote), and for
//!   inputs the kernel does not cover (not `f32`; per-row temperatures; divergences other than
//!   forward and reverse KL), the composed path runs instead, decided at run time from the
//!   tensors' device and dtype. Never a panic. [`fused_available`] says which path a tensor takes.
//! * `KD_FUSED=0` in the environment forces the composed path (for comparisons and debugging).
//!
//! The losses that use it automatically: [`distillation_loss`](crate::logits::distillation_loss)
//! and its module, [`SoftKlLoss::forward`](crate::logits::SoftKlLoss::forward) /
//! [`forward_masked`](crate::logits::SoftKlLoss::forward_masked),
//! [`DivergenceLoss::forward`](crate::divergence::DivergenceLoss::forward) /
//! [`forward_masked`](crate::divergence::DivergenceLoss::forward_masked) (forward and reverse
//! KL), and [`soft_loss`] here. Functions that return a [`RowLoss`](crate::reduction::RowLoss)
//! stay composed: the fused kernel needs the reduction up front.
//!
//! # Gradients
//! The backward pass hands over the kept gradient when the upstream gradient of the total is 1
//! (calling `.backward()` on it), scales it when the total is scaled, and recomputes it once,
//! in one fused pass, when the reported terms themselves are differentiated.
//!
//! # Numerics
//! Same conventions as the composed path (`0 · log 0 = 0`, `-inf` logits, all `-inf` rows,
//! fully masked batches give 0); sums over a row use 8 `f32` partial sums, exponentials a
//! polynomial with relative error below 3e-7. The parity tests (`tests/parity_fused.rs`) check
//! value and gradient against the composed path on every reduction, masks, `-inf`, ±1e4 and
//! several temperatures.

// Whether a kernel is reachable depends on the application's Burn features, which this crate
// cannot see (see `route`): in an application whose Burn has neither Flex nor a CubeCL backend,
// every kernel compiled here is dead code, by design rather than by a mismatched `cfg`.
#![allow(dead_code)]

#[cfg(feature = "gpu-kernel")]
mod cube;
mod ext;
pub(crate) mod kernel;
#[cfg(feature = "cpu-kernel")]
mod pool;
mod route;
mod simd;
#[cfg(feature = "cpu-kernel")]
mod sq;

#[cfg(feature = "cpu-kernel")]
pub use pool::clear_buffer_cache;

use burn::tensor::{Bool, Int, Tensor};

use crate::divergence::Divergence;
use crate::logits::soft::T2Scaling;
use crate::reduction::{Reduction, RowMask, flatten_rows};
use crate::temperature::Temperature;

use kernel::{KernelParams, SoftKind};
use route::{KdInputs, SqInputs, for_each_probe};

/// Whether the `KD_FUSED=0` environment variable turns the fused kernels off.
fn forced_off() -> bool {
    std::env::var("KD_FUSED").is_ok_and(|v| v == "0")
}

/// Whether the CubeCL kernel may run: only with `KD_GPU_KERNEL=1` for now. It does not yet meet
/// the hostile-input contract of the composed path and the CPU kernel (`+inf` logits as point
/// masses, the cancellation-free KL at large temperatures and for denormal rows; see
/// `docs/performance.md`), so by default CubeCL tensors take the composed path, with the same
/// answers as every other path.
pub(crate) fn gpu_kernel_enabled() -> bool {
    std::env::var("KD_GPU_KERNEL").is_ok_and(|v| v == "1")
}

/// Whether the fused kernel runs for `logits` (its backend, dtype, and this build's kernels);
/// `false` means the composed path runs, with the same results.
///
/// The answer comes from the tensor itself: a kernel runs wherever the application's Burn has
/// the backend it is written for (Flex; the CubeCL backends wgpu, Vulkan, Metal, CUDA, ROCm, with
/// or without Burn's `fusion`), with or without `autodiff`, whatever features this crate or the
/// application enabled. When it says `true`, the fused path runs and does not panic.
///
/// ```
/// use burn::tensor::{DType, Device, Tensor};
/// let x = Tensor::<2>::zeros([2, 3], &Device::flex().autodiff());
/// assert!(kd_losses::fused::fused_available(&x)); // Flex: the CPU kernel
/// let y = x.cast(DType::F64);
/// assert!(!kd_losses::fused::fused_available(&y)); // f64: the composed path
/// ```
pub fn fused_available<const D: usize>(logits: &Tensor<D>) -> bool {
    if forced_off() || logits.dtype() != burn::tensor::DType::F32 {
        return false;
    }
    let probe = Tensor::<2>::zeros([1, 1], &logits.device());
    let mut found = false;
    for_each_probe!(|p| found = found || p.holds(&probe));
    if !found {
        notice_missing_gpu_kernel(&logits.device());
    }
    found
}

/// Says once, on stderr, that a CubeCL tensor takes the composed path although a GPU kernel
/// exists: this build lacks the `gpu-kernel` feature (CubeCL compiles only with a runtime, so it
/// cannot be a default), or the kernel is not switched on ([`gpu_kernel_enabled`]).
fn notice_missing_gpu_kernel(device: &burn::tensor::Device) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if forced_off() || (cfg!(feature = "gpu-kernel") && gpu_kernel_enabled()) {
        return;
    }
    let inner = format!("{:?}", device.clone().inner().as_dispatch());
    if inner.starts_with("Cube") {
        let why = if cfg!(feature = "gpu-kernel") {
            "is off by default until it meets the hostile-input contract (set KD_GPU_KERNEL=1)"
        } else {
            "is not compiled in (enable the `gpu-kernel` feature of kd-losses)"
        };
        ONCE.call_once(|| {
            eprintln!(
                "kd-losses: the fused GPU kernel {why}; {inner} runs the composed path, with \
                 the same results"
            );
        });
    }
}

/// Per-row weights `w_r` such that the reduced loss is `Σ_r w_r · loss_r`, matching
/// [`RowLoss::reduce`](crate::reduction::RowLoss::reduce) (and [`RowLoss::masked`](crate::reduction::RowLoss::masked)).
pub(crate) fn row_weights(
    keep: Option<Tensor<1, Bool>>,
    rows: &[usize],
    v: usize,
    reduction: Reduction,
    device: &burn::tensor::Device,
) -> Tensor<1> {
    let r: usize = rows.iter().product();
    let masked = keep.is_some();
    // In f32 whatever the device's default float dtype is (a bf16 default would round 1/3).
    let f32 = burn::tensor::DType::F32;
    let k = match keep {
        Some(k) => k.float().cast(f32),
        None => Tensor::<1>::ones([r], device).cast(f32),
    };
    let batch = rows.first().copied().unwrap_or(1);
    match reduction.denominator_parts(batch, v) {
        // The count stays on the device (no synchronisation) when a mask decides it.
        (true, factor) if masked => {
            let total = k.clone().sum();
            let zero = total.clone().equal_elem(0.0);
            let den = total.mask_fill(zero, 1.0).mul_scalar(factor);
            k.div(den)
        }
        (true, factor) => k.div_scalar(r.max(1) as f64 * factor),
        (false, factor) if factor == 1.0 => k,
        (false, factor) => k.div_scalar(factor),
    }
}

/// The three outputs `[total, soft, hard]` of the fused operation, or `None` when it does not
/// run here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_terms<const D: usize>(
    student_logits: &Tensor<D>,
    teacher_logits: &Tensor<D>,
    labels: Option<Tensor<1, Int>>,
    keep: Option<Tensor<1, Bool>>,
    kind: SoftKind,
    temperature: Temperature,
    scaling: T2Scaling,
    alpha: f64,
    smoothing: f64,
    reduction: Reduction,
) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
    if !fused_available(student_logits) || teacher_logits.dtype() != student_logits.dtype() {
        return None;
    }
    let device = student_logits.device();
    // `[R, V]` logits go to the kernel as they are: a reshape would add one graph node shared by
    // the three terms, and the first term's backward would consume it (per-term backward).
    let (s, rows, v) = if D == 2 {
        let dims = student_logits.dims();
        let s = Tensor::<2>::from_bridge(student_logits.clone().into_bridge());
        (s, vec![dims[0]], dims[1])
    } else {
        flatten_rows(student_logits.clone())
    };
    let (t, _, _) = flatten_rows(teacher_logits.clone().detach());
    let r: usize = rows.iter().product();
    let has_hard = labels.is_some();
    let labels = labels.unwrap_or_else(|| Tensor::<1, Int>::zeros([r], &device));
    // The kernels read f32 weights whatever the device's default float dtype is.
    let weights = row_weights(keep, &rows, v, reduction, &device)
        .detach()
        .cast(burn::tensor::DType::F32);
    let params = KernelParams {
        kind,
        temperature: temperature.get() as f32,
        soft_scale: scaling.factor(temperature) as f32,
        has_hard,
        smoothing: smoothing as f32,
        alpha: alpha as f32,
        beta: (1.0 - alpha) as f32,
        grad_soft: 0.0,
        grad_hard: 0.0,
    };
    let inputs = KdInputs {
        student: s,
        teacher: t,
        labels,
        weights,
    };
    let mut out = None;
    for_each_probe!(|p| if out.is_none() {
        out = p.kd(&inputs, params);
    });
    out.map(|t: route::Terms| (t.total, t.soft, t.hard))
}

/// The fused kernel's soft divergence for a [`Divergence`], if it has one: the forward and
/// reverse KL, and the parametrised divergences at the endpoints where they are one of the two
/// (the generalized JSD at `β = 0` and `β = 1` in both conventions, the skew KLs at `α = 0`).
pub(crate) fn soft_kind(d: &Divergence) -> Option<SoftKind> {
    match *d {
        Divergence::ForwardKl => Some(SoftKind::ForwardKl),
        Divergence::ReverseKl => Some(SoftKind::ReverseKl),
        Divergence::GeneralizedJsd { beta, .. } if beta == 0.0 => Some(SoftKind::ForwardKl),
        Divergence::GeneralizedJsd { beta, .. } if beta == 1.0 => Some(SoftKind::ReverseKl),
        Divergence::SkewKl { alpha } if alpha == 0.0 => Some(SoftKind::ForwardKl),
        Divergence::SkewReverseKl { alpha } if alpha == 0.0 => Some(SoftKind::ReverseKl),
        _ => None,
    }
}

/// Reduced soft loss `reduce(mask(f · D(p_teacher, p_student)))` with `D` forward or reverse KL,
/// through the fused kernel where it runs (see the [module docs](self)) and the composed
/// [`divergence`](crate::divergence::divergence) otherwise.
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
/// let loss = kd_losses::fused::soft_loss(s.clone(), t, Divergence::ForwardKl, temp,
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
    crate::logits::soft::assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    if let Some(m) = mask {
        let dims = student_logits.dims();
        crate::reduction::assert_same_dims("mask", m.dims(), &dims[..D - 1]);
    }
    if let Some(kind) = soft_kind(&divergence)
        && let Some((total, _, _)) = fused_terms(
            &student_logits,
            &teacher_logits,
            None,
            mask.map(RowMask::flat),
            kind,
            temperature,
            scaling,
            1.0,
            0.0,
            reduction,
        )
    {
        return total;
    }
    crate::divergence::divergence(
        student_logits,
        teacher_logits,
        divergence,
        temperature,
        scaling,
    )
    .masked_opt(mask)
    .reduce(reduction)
}

/// Whether the fused squared-error kernel (hidden-state and attention-map MSE) runs for `x`:
/// Flex (with or without autodiff), `f32`, and `KD_FUSED` not `0`. Elsewhere (CubeCL included)
/// the composed path runs.
pub(crate) fn sq_available<const D: usize>(x: &Tensor<D>) -> bool {
    if forced_off() || x.dtype() != burn::tensor::DType::F32 {
        return false;
    }
    let probe = Tensor::<2>::zeros([1, 1], &x.device());
    let mut found = false;
    for_each_probe!(|p| found = found || p.holds_sq(&probe));
    found
}

/// `Σ_r w_r Σ_k (s_rk − t_rk)²` through the fused kernel, `[1]`, with its gradient w.r.t.
/// `student` written in the forward pass. `±inf` entries count as 0 in both with `zero_inf`.
/// `None` where the kernel does not run ([`sq_available`] is `false`).
pub(crate) fn sq_reduced(
    student: Tensor<2>,
    teacher: Tensor<2>,
    weights: Tensor<1>,
    zero_inf: bool,
) -> Option<Tensor<1>> {
    let inputs = SqInputs {
        student,
        teacher: teacher.detach(),
        weights: weights.detach().cast(burn::tensor::DType::F32),
        zero_inf,
    };
    let mut out = None;
    for_each_probe!(|p| if out.is_none() {
        out = p.sq(&inputs);
    });
    out
}
