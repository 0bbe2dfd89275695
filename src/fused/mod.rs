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
//! * **Flex** (Burn's CPU backend; feature `cpu-kernel`, the default): a row-parallel kernel on
//!   all cores, vectorised with AVX2 + FMA when the CPU has them (chosen at run time): one row
//!   for the forward and reverse KL, a general row for the other divergences; `f32`.
//! * **The CubeCL backends** (wgpu, Vulkan, Metal, CUDA, ROCm, with or without Burn's `fusion`;
//!   feature `gpu-kernel`): one cube per row (`cube/`); `f32`, `f16` and `bf16` read as they
//!   are with `f32` arithmetic; every divergence; and the top-k teacher's forward KL
//!   ([`SparseKdLoss`](crate::sparse::SparseKdLoss)).
//! * Everywhere else (ndarray, LibTorch, remote), and for inputs a kernel does not cover (`f64`;
//!   per-row temperatures; on Flex `f16`/`bf16`), the
//!   composed path runs instead, decided at run time from the tensors' device and dtype. Never a
//!   panic. [`fused_available`] (and
//!   [`Divergence::fused_available`](crate::divergence::Divergence::fused_available)) says which
//!   path a tensor takes.
//! * `KD_FUSED=0` in the environment forces the composed path (for comparisons and debugging).
//!
//! # One door
//! Every public way to a logit loss reaches the kernel at one place, the reduction of its rows
//! ([`RowLoss::reduce`](crate::reduction::RowLoss::reduce)), where the mask and the denominator
//! are known: a free function reduced ([`soft_kl`](crate::logits::soft_kl),
//! [`divergence`](crate::divergence::divergence), [`cross_entropy`](crate::logits::cross_entropy)
//! without class weights, after [`masked`](crate::reduction::RowLoss::masked) or not, every
//! [`Reduction`](crate::reduction::Reduction)), the Modules' `forward` / `forward_masked`,
//! [`divergence::soft_loss`](crate::divergence::soft_loss), the fused LM head. The α-mix
//! ([`distillation_loss`](crate::logits::distillation_loss)) calls the kernel directly for its
//! three terms from one pass, and [`SparseKdLoss`](crate::sparse::SparseKdLoss) its top-k
//! kernel. [`RowLoss::values`](crate::reduction::RowLoss::values) and
//! [`RowLoss::reduce_composed`](crate::reduction::RowLoss::reduce_composed) compute the rows on
//! the composed path, the reference of the parity tests. [`kernel_runs`] counts the kernel
//! operations of the calling thread.

//! # Layering
//! This module knows no loss type: its crate-level entry points take tensors, per-row weights
//! and the kernel's numbers, and answer `None` where no kernel runs. Each loss decides beside
//! itself whether to ask (see `docs/architecture.md`).
//!
//! # Gradients
//! The backward pass hands over the kept gradient when the upstream gradient of the total is 1
//! (calling `.backward()` on it), scales it when the total is scaled, and recomputes it once,
//! in one fused pass, when the reported terms themselves are differentiated.
//!
//! # Numerics
//! Same conventions as the composed path (`0 · log 0 = 0`, `-inf` logits, all `-inf` rows,
//! `+inf` logits as point masses, NaN propagated, fully masked batches give 0, the KL values
//! free of the log-normalisers' rounding). On the CPU, sums over a row use 8 `f32` partial sums
//! and exponentials a polynomial with relative error below 3e-7; on the GPU, block reductions in
//! shared memory. The parity tests (`tests/suite/fused/parity_logits/`, `tests/suite/sparse.rs`)
//! check value and gradient against the composed path on every reduction, masks, `-inf`, ±1e4,
//! several temperatures and every divergence.

// Whether a kernel is reachable depends on the application's Burn features, which this crate
// cannot see (see `route`): in an application whose Burn has neither Flex nor a CubeCL backend,
// every kernel compiled here is dead code, by design rather than by a mismatched `cfg`.
#![allow(dead_code)]
// Built without either kernel (`default-features = false`), the probes compile to nothing and
// their inputs go unused.
#![cfg_attr(
    not(any(feature = "cpu-kernel", feature = "gpu-kernel")),
    allow(unused_variables, unused_mut)
)]

#[cfg(feature = "gpu-kernel")]
mod cube;
mod ext;
mod kernel;
#[cfg(feature = "cpu-kernel")]
mod pool;
pub(crate) mod route;
mod simd;
#[cfg(feature = "cpu-kernel")]
mod sq;

#[cfg(feature = "cpu-kernel")]
pub use pool::clear_buffer_cache;

use burn::tensor::{Int, Tensor};

use kernel::KernelParams;
pub(crate) use kernel::SoftKind;
use route::{KdInputs, SqInputs, for_each_probe};

thread_local! {
    static KERNEL_RUNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many fused kernel operations this thread has run (logit, top-k teacher and
/// squared-error kernels; each reduced loss counts once): a diagnostic that says which path a
/// call took, e.g. in a test that every way to a loss reaches the kernel.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[2.0, 0.5, -3.0]], &device);
/// let before = kd_losses::fused::kernel_runs();
/// let _ = soft_kl(s, t, Temperature::ONE, T2Scaling::On).reduce(Reduction::RowMean);
/// assert_eq!(kd_losses::fused::kernel_runs(), before + 1); // Flex: the CPU kernel ran
/// ```
pub fn kernel_runs() -> u64 {
    KERNEL_RUNS.with(|c| c.get())
}

/// Counts one kernel operation when `out` holds a result.
fn counted<T>(out: Option<T>) -> Option<T> {
    if out.is_some() {
        KERNEL_RUNS.with(|c| c.set(c.get() + 1));
    }
    out
}

/// Whether the `KD_FUSED=0` environment variable turns the fused kernels off.
fn forced_off() -> bool {
    std::env::var("KD_FUSED").is_ok_and(|v| v == "0")
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
    serves(logits, SoftKind::ForwardKl)
}

/// Whether a kernel computes `kind` for `logits` (backend, dtype, divergence); `false` means
/// the composed path.
pub(crate) fn serves<const D: usize>(logits: &Tensor<D>, kind: SoftKind) -> bool {
    if forced_off() {
        return false;
    }
    let dtype = logits.dtype();
    let probe = Tensor::<2>::zeros([1, 1], &logits.device());
    let mut found = false;
    for_each_probe!(|p| found = found || p.serves(&probe, dtype, kind));
    if !found {
        notice_missing_gpu_kernel(&logits.device());
    }
    found
}

/// Says once, on stderr, that a CubeCL tensor takes the composed path because this build lacks
/// the `gpu-kernel` feature (CubeCL compiles only with a runtime, so it cannot be a default).
fn notice_missing_gpu_kernel(device: &burn::tensor::Device) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if forced_off() || cfg!(feature = "gpu-kernel") {
        return;
    }
    let inner = format!("{:?}", device.clone().inner().as_dispatch());
    if inner.starts_with("Cube") {
        ONCE.call_once(|| {
            eprintln!(
                "kd-losses: the fused GPU kernel is not compiled in (enable the `gpu-kernel` \
                 feature of kd-losses); {inner} runs the composed path, with the same results"
            );
        });
    }
}

/// The logit kernel's numbers: what it computes besides its input tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KdParams {
    /// The soft divergence.
    pub kind: SoftKind,
    /// Temperature `T` (> 0, finite).
    pub temperature: f64,
    /// Factor of the soft row value (`T²` or `1`).
    pub soft_scale: f64,
    /// Weight `α` of the soft term in the total (`1 − α` for the hard term).
    pub alpha: f64,
    /// Label smoothing `ε` of the hard term.
    pub smoothing: f64,
}

/// The three outputs `[total, soft, hard]` of the fused logit operation on `[..., V]` logits,
/// or `None` when no kernel runs here (check [`fused_available`] first: the caller then builds
/// the weights only when they are used).
///
/// `weights` (`[R]`, `R` = product of the leading dims) are the per-row weights of the reduced
/// sums, `total = α·Σ_r w_r soft_r + (1 − α)·Σ_r w_r hard_r`; `labels` (`[R]`) switch the hard
/// term on. The teacher is detached here.
pub(crate) fn kd_terms<const D: usize>(
    student_logits: &Tensor<D>,
    teacher_logits: &Tensor<D>,
    labels: Option<Tensor<1, Int>>,
    weights: Tensor<1>,
    params: KdParams,
) -> Option<(Tensor<1>, Tensor<1>, Tensor<1>)> {
    if teacher_logits.dtype() != student_logits.dtype() {
        return None;
    }
    let (inputs, params) = kd_inputs(
        student_logits.clone(),
        teacher_logits.clone(),
        labels,
        weights,
        params,
    );
    let mut out = None;
    for_each_probe!(|p| if out.is_none() {
        out = p.kd(&inputs, params);
    });
    counted(out).map(|t: route::Terms| (t.total, t.soft, t.hard))
}

/// [`kd_terms`] and the gradient of the total w.r.t. the student, for logits outside autodiff
/// taken by value: on the CPU kernel the gradient is written over the student's buffer when
/// nothing else holds it (a chunk's logits in the LM head's loop), so the pass needs no second
/// `[R, V]` tensor. The inputs back where no kernel runs or an input is tracked.
#[cfg(feature = "chunked")]
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub(crate) fn kd_terms_grad<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Option<Tensor<1, Int>>,
    weights: Tensor<1>,
    params: KdParams,
) -> Result<([Tensor<1>; 3], Tensor<D>), (Tensor<D>, Tensor<D>)> {
    let untracked = !student_logits.is_autodiff() && !teacher_logits.is_autodiff();
    if !untracked
        || teacher_logits.dtype() != student_logits.dtype()
        || !serves(&student_logits, params.kind)
    {
        return Err((student_logits, teacher_logits));
    }
    let dims = student_logits.dims();
    // Labels and weights built from an autodiff device's labels: constants, beside the logits.
    let labels = labels.map(Tensor::inner);
    let weights = weights.inner();
    let (inputs, params) = kd_inputs(student_logits, teacher_logits, labels, weights, params);
    let params = KernelParams {
        grad_soft: params.alpha,
        grad_hard: params.beta,
        ..params
    };
    let mut out = Err(inputs);
    for_each_probe!(|p| {
        out = match out {
            Err(inputs) => p.kd_grad(inputs, params),
            done => done,
        }
    });
    match out {
        Ok((values, grad)) => {
            counted(Some(()));
            let term = |k: usize| values.clone().narrow(0, k, 1);
            Ok(([term(0), term(1), term(2)], grad.reshape(dims)))
        }
        Err(inputs) => Err((inputs.student.reshape(dims), inputs.teacher.reshape(dims))),
    }
}

/// The kernel's inputs (`[R, V]` rows, the teacher detached, `f32` weights) and parameters
/// (no gradient asked for).
fn kd_inputs<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Option<Tensor<1, Int>>,
    weights: Tensor<1>,
    params: KdParams,
) -> (KdInputs, KernelParams) {
    let device = student_logits.device();
    let s = as_rows(student_logits);
    let t = as_rows(teacher_logits.detach());
    let r = s.dims()[0];
    let has_hard = labels.is_some();
    let labels = labels.unwrap_or_else(|| Tensor::<1, Int>::zeros([r], &device));
    let params = KernelParams {
        kind: params.kind,
        temperature: params.temperature as f32,
        soft_scale: params.soft_scale as f32,
        has_hard,
        smoothing: params.smoothing as f32,
        alpha: params.alpha as f32,
        beta: (1.0 - params.alpha) as f32,
        grad_soft: 0.0,
        grad_hard: 0.0,
    };
    let inputs = KdInputs {
        student: s,
        teacher: t,
        labels,
        // The kernels read f32 weights whatever the device's default float dtype is.
        weights: weights.detach().cast(burn::tensor::DType::F32),
    };
    (inputs, params)
}

/// Whether the top-k teacher kernel (forward KL, `Renormalize`, `Full`) runs for `logits`: the
/// CubeCL backends, `f32` / `f16` / `bf16`.
pub(crate) fn serves_sparse<const D: usize>(logits: &Tensor<D>) -> bool {
    if forced_off() {
        return false;
    }
    let dtype = logits.dtype();
    let probe = Tensor::<2>::zeros([1, 1], &logits.device());
    let mut found = false;
    for_each_probe!(|p| found = found || p.serves_sparse(&probe, dtype));
    found
}

/// `Σ_r w_r · T²|1 · KL(p̂_r ‖ q_r)` (`[1]`) for a top-k teacher (`indices`, `values`: `[R, k]`)
/// and `[..., V]` student logits through the kernel, with the student's gradient written in the
/// forward pass; `None` where it does not run ([`serves_sparse`]). The teacher is detached.
pub(crate) fn sparse_kl<const D: usize>(
    student_logits: &Tensor<D>,
    indices: Tensor<2, Int>,
    values: Tensor<2>,
    weights: Tensor<1>,
    temperature: f64,
    soft_scale: f64,
) -> Option<Tensor<1>> {
    let params = KernelParams {
        kind: SoftKind::ForwardKl,
        temperature: temperature as f32,
        soft_scale: soft_scale as f32,
        has_hard: false,
        smoothing: 0.0,
        alpha: 1.0,
        beta: 0.0,
        grad_soft: 0.0,
        grad_hard: 0.0,
    };
    let inputs = route::SparseInputs {
        student: as_rows(student_logits.clone()),
        indices,
        values: values.detach(),
        weights: weights.detach().cast(burn::tensor::DType::F32),
    };
    let mut out = None;
    for_each_probe!(|p| if out.is_none() {
        out = p.kd_sparse(&inputs, params);
    });
    counted(out)
}

/// `[..., V]` logits as `[R, V]` rows in their own dtype (the kernels read `f16`/`bf16` as they
/// are, unlike `rows::flatten_rows`, which widens them for the composed path). `[R, V]` logits
/// go as they are: a reshape would add one graph node shared by the three terms, and the first
/// term's backward would consume it (per-term backward).
fn as_rows<const D: usize>(x: Tensor<D>) -> Tensor<2> {
    let dims = x.dims();
    match D {
        2 => Tensor::<2>::from_bridge(x.into_bridge()),
        1 => x.reshape([1, dims[0]]),
        _ => x.flatten::<2>(0, D - 2),
    }
}

/// `x`'s gradient, computed outside Burn's graph, handed to the graph as it is: a `[1]` zero
/// whose backward gives `x` the gradient `c · grad` (`c` the upstream scalar; in place where
/// the buffer is not shared). `grad` must be untracked, with `x`'s shape and dtype. `Err(grad)`
/// where no backend with a kernel holds `x` under autodiff (or `KD_FUSED=0`): the caller takes
/// the composed route.
#[cfg(feature = "chunked")]
pub(crate) fn hand_over(x: &Tensor<2>, grad: Tensor<2>) -> Result<Tensor<1>, Tensor<2>> {
    if forced_off() || !x.is_tracked() {
        return Err(grad);
    }
    let grad_ad = grad.clone().autodiff();
    let mut out = None;
    for_each_probe!(|p| if out.is_none() {
        out = p.hand_over(x, &grad_ad);
    });
    out.ok_or(grad)
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
    counted(out)
}
