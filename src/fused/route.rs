//! Which kernel serves a tensor, decided from the tensor itself at run time.
//!
//! The application, not this crate, chooses Burn's backends (`flex`, `wgpu`, `cuda`, …), whether
//! `autodiff` is compiled in and whether the CubeCL backend is wrapped in `fusion`. None of that
//! is visible to this crate's `cfg`s, so the kernels are routed without naming Burn's `Dispatch`
//! variants: for each backend type a kernel is compiled for (`burn_flex::Flex`,
//! `burn_cubecl::Cube` — which *is* `Fusion<CubeBackend>` when the application's Burn has
//! `fusion` — and their `Autodiff` wrappers), a [`Probe`] asks whether Burn's dispatch layer can
//! hand over a primitive of that type (`DispatchTensor: DispatchKindConversion<B>`, implemented
//! by Burn exactly for the backends the application enabled).
//!
//! The question is answered at compile time by method resolution ("autoref specialisation"):
//! [`Kernel`] is implemented for `Probe<B>` only where that conversion exists, and the fallback
//! [`NoKernel`], one reference further away, answers `None`. A backend the application did not
//! enable therefore compiles to `None`, never to a compile error, and a tensor on an enabled
//! backend is converted with `try_into_primitive`, which says `Err` (→ composed path) rather than
//! panicking when the tensor lives elsewhere.

use core::marker::PhantomData;

use burn::backend::{DispatchKindConversion, DispatchTensor, TensorMetadata};
use burn::tensor::{Int, Tensor};

use super::ext::{KdFusedBackend, KdHandOverBackend, KdSqBackend};
use super::kernel::{KernelParams, SoftKind};

/// What a backend's logit kernel computes: its input dtypes and divergences (the CPU kernel:
/// `f32`, every divergence; the CubeCL kernel: `f32`, `f16`, `bf16` where the runtime has them,
/// every divergence and the top-k teacher).
pub(crate) trait KernelCaps: burn::backend::Backend {
    /// Whether the kernel computes `kind` on `dtype` logits on `device` (whose runtime may lack
    /// a dtype: wgpu has no `bf16`, and Burn's fusion only discovers that when a kernel that
    /// reads the type is compiled).
    fn computes(dtype: burn::tensor::DType, kind: SoftKind, device: &Self::Device) -> bool;
    /// Whether the top-k teacher kernel (forward KL) runs on `dtype` student logits.
    fn computes_sparse(dtype: burn::tensor::DType, device: &Self::Device) -> bool;
}

/// A backend type `B` a kernel may be routed to.
pub(crate) struct Probe<B>(pub(crate) PhantomData<B>);

/// The inputs of the fused logit operation: `[R, V]` logits, `[R]` labels and weights.
pub(crate) struct KdInputs {
    pub(crate) student: Tensor<2>,
    pub(crate) teacher: Tensor<2>,
    pub(crate) labels: Tensor<1, Int>,
    pub(crate) weights: Tensor<1>,
}

/// The inputs of the top-k teacher operation: `[R, V]` student, `[R, k]` ids and teacher
/// values, `[R]` weights.
pub(crate) struct SparseInputs {
    pub(crate) student: Tensor<2>,
    pub(crate) indices: Tensor<2, Int>,
    pub(crate) values: Tensor<2>,
    pub(crate) weights: Tensor<1>,
}

/// The outputs of the fused logit operation, each `[1]`: `α·S + β·H`, `S`, `H`; independent
/// graph nodes under autodiff.
pub(crate) struct Terms {
    pub(crate) total: Tensor<1>,
    pub(crate) soft: Tensor<1>,
    pub(crate) hard: Tensor<1>,
}

/// The inputs of the fused squared-error operation: `[R, K]` maps, `[R]` weights.
pub(crate) struct SqInputs {
    pub(crate) student: Tensor<2>,
    pub(crate) teacher: Tensor<2>,
    pub(crate) weights: Tensor<1>,
    pub(crate) zero_inf: bool,
}

/// A backend that Burn can convert to and that has the fused logit kernel: the specialised
/// answer.
pub(crate) trait Kernel {
    /// Whether `x` lives on this backend and the kernel computes `kind` on `dtype` logits.
    fn serves(&self, x: &Tensor<2>, dtype: burn::tensor::DType, kind: SoftKind) -> bool;
    /// The fused logit operation on this backend, or `None` if an input lives elsewhere.
    fn kd(&self, inputs: &KdInputs, params: KernelParams) -> Option<Terms>;
    /// The fused logit operation's values (`[3]`: `α·S + β·H`, `S`, `H`) and the gradient of
    /// `grad_soft · S + grad_hard · H` w.r.t. the student, for tensors outside autodiff, taken
    /// by value (the CPU kernel writes the gradient over a student it alone owns); the inputs
    /// back if one lives elsewhere.
    #[allow(clippy::result_large_err)]
    fn kd_grad(
        &self,
        inputs: KdInputs,
        params: KernelParams,
    ) -> Result<(Tensor<1>, Tensor<2>), KdInputs>;
    /// Whether `x` lives on this backend and the top-k kernel runs on `dtype` logits.
    fn serves_sparse(&self, x: &Tensor<2>, dtype: burn::tensor::DType) -> bool;
    /// The top-k teacher operation (`[1]`), or `None`.
    fn kd_sparse(&self, inputs: &SparseInputs, params: KernelParams) -> Option<Tensor<1>>;
}

/// The fallback: no fused logit kernel for this backend in this build.
///
/// Which probes fall back depends on the application's Burn features (with every backend
/// enabled, none does), hence the `allow`.
#[allow(dead_code)]
pub(crate) trait NoKernel {
    /// `false`.
    fn serves(&self, _x: &Tensor<2>, _dtype: burn::tensor::DType, _kind: SoftKind) -> bool {
        false
    }
    /// `None`.
    fn kd(&self, _inputs: &KdInputs, _params: KernelParams) -> Option<Terms> {
        None
    }
    /// The inputs back.
    #[allow(clippy::result_large_err)]
    fn kd_grad(
        &self,
        inputs: KdInputs,
        _params: KernelParams,
    ) -> Result<(Tensor<1>, Tensor<2>), KdInputs> {
        Err(inputs)
    }
    /// `false`.
    fn serves_sparse(&self, _x: &Tensor<2>, _dtype: burn::tensor::DType) -> bool {
        false
    }
    /// `None`.
    fn kd_sparse(&self, _inputs: &SparseInputs, _params: KernelParams) -> Option<Tensor<1>> {
        None
    }
}

impl<B> NoKernel for &Probe<B> {}

/// A backend that Burn can convert to and that has the squared-error kernel.
pub(crate) trait SqKernel {
    /// Whether `x` lives on this backend.
    fn holds_sq(&self, x: &Tensor<2>) -> bool;
    /// The fused squared-error operation on this backend, or `None`.
    fn sq(&self, inputs: &SqInputs) -> Option<Tensor<1>>;
}

/// The fallback: no squared-error kernel for this backend in this build (the CubeCL backend
/// always; others depending on the application's Burn features, hence the `allow`).
#[allow(dead_code)]
pub(crate) trait NoSqKernel {
    /// `false`.
    fn holds_sq(&self, _x: &Tensor<2>) -> bool {
        false
    }
    /// `None`.
    fn sq(&self, _inputs: &SqInputs) -> Option<Tensor<1>> {
        None
    }
}

impl<B> NoSqKernel for &Probe<B> {}

/// A backend that Burn can convert to and that takes a gradient computed outside the graph.
pub(crate) trait HandOver {
    /// `[1]` zero whose backward gives `x` the gradient `c · grad` (`grad` untracked, `x`'s
    /// shape and dtype), or `None` if `x` lives elsewhere.
    fn hand_over(&self, x: &Tensor<2>, grad: &Tensor<2>) -> Option<Tensor<1>>;
}

/// The fallback: this backend type takes no gradient from outside (every non-`Autodiff` one).
#[allow(dead_code)]
pub(crate) trait NoHandOver {
    /// `None`.
    fn hand_over(&self, _x: &Tensor<2>, _grad: &Tensor<2>) -> Option<Tensor<1>> {
        None
    }
}

impl<B> NoHandOver for &Probe<B> {}

impl<B> HandOver for Probe<B>
where
    B: KdHandOverBackend,
    DispatchTensor: DispatchKindConversion<B>,
{
    fn hand_over(&self, x: &Tensor<2>, grad: &Tensor<2>) -> Option<Tensor<1>> {
        let xp = primitive::<B, 2, _>(x)?;
        let gp = primitive::<B, 2, _>(grad)?;
        Some(Tensor::<1>::from_primitive::<B>(B::kd_hand_over(xp, gp)))
    }
}

pub(crate) fn primitive<B, const D: usize, K>(x: &Tensor<D, K>) -> Option<K::Primitive>
where
    B: burn::backend::Backend,
    K: burn::tensor::BackendPrimitive<B> + burn::tensor::kind::Basic,
    DispatchTensor: DispatchKindConversion<B>,
{
    x.clone().try_into_primitive::<B>().ok()
}

impl<B> Kernel for Probe<B>
where
    B: KdFusedBackend + KernelCaps,
    DispatchTensor: DispatchKindConversion<B>,
{
    fn serves(&self, x: &Tensor<2>, dtype: burn::tensor::DType, kind: SoftKind) -> bool {
        primitive::<B, 2, _>(x).is_some_and(|p| B::computes(dtype, kind, &p.device()))
    }

    fn kd(&self, inputs: &KdInputs, params: KernelParams) -> Option<Terms> {
        let s = primitive::<B, 2, _>(&inputs.student)?;
        if !B::computes(inputs.student.dtype(), params.kind, &s.device()) {
            return None;
        }
        let t = primitive::<B, 2, _>(&inputs.teacher)?;
        let y = primitive::<B, 1, _>(&inputs.labels)?;
        let w = primitive::<B, 1, _>(&inputs.weights)?;
        let (total, soft, hard) = B::kd_fused_terms(s, t, y, w, params);
        Some(Terms {
            total: Tensor::<1>::from_primitive::<B>(total),
            soft: Tensor::<1>::from_primitive::<B>(soft),
            hard: Tensor::<1>::from_primitive::<B>(hard),
        })
    }

    #[allow(clippy::result_large_err)]
    fn kd_grad(
        &self,
        inputs: KdInputs,
        params: KernelParams,
    ) -> Result<(Tensor<1>, Tensor<2>), KdInputs> {
        // Probe with clones (dropped at once), then consume: the student must reach the kernel
        // as the only owner of its buffer.
        let dtype = inputs.student.dtype();
        let fits = primitive::<B, 2, _>(&inputs.student)
            .is_some_and(|s| B::computes(dtype, params.kind, &s.device()))
            && primitive::<B, 2, _>(&inputs.teacher).is_some()
            && primitive::<B, 1, _>(&inputs.labels).is_some()
            && primitive::<B, 1, _>(&inputs.weights).is_some();
        if !fits {
            return Err(inputs);
        }
        let KdInputs {
            student,
            teacher,
            labels,
            weights,
        } = inputs;
        let convert = "checked to convert";
        let (values, grad) = B::kd_fused_values_grad(
            student.try_into_primitive::<B>().expect(convert),
            teacher.try_into_primitive::<B>().expect(convert),
            labels.try_into_primitive::<B>().expect(convert),
            weights.try_into_primitive::<B>().expect(convert),
            params,
        );
        Ok((
            Tensor::<1>::from_primitive::<B>(values),
            Tensor::<2>::from_primitive::<B>(grad),
        ))
    }

    fn serves_sparse(&self, x: &Tensor<2>, dtype: burn::tensor::DType) -> bool {
        primitive::<B, 2, _>(x).is_some_and(|p| B::computes_sparse(dtype, &p.device()))
    }

    fn kd_sparse(&self, inputs: &SparseInputs, params: KernelParams) -> Option<Tensor<1>> {
        let s = primitive::<B, 2, _>(&inputs.student)?;
        if !B::computes_sparse(inputs.student.dtype(), &s.device()) {
            return None;
        }
        let i = primitive::<B, 2, _>(&inputs.indices)?;
        let v = primitive::<B, 2, _>(&inputs.values)?;
        let w = primitive::<B, 1, _>(&inputs.weights)?;
        let out = B::kd_sparse_loss(s, i, v, w, params);
        Some(Tensor::<1>::from_primitive::<B>(out))
    }
}

impl<B> SqKernel for Probe<B>
where
    B: KdSqBackend,
    DispatchTensor: DispatchKindConversion<B>,
{
    fn holds_sq(&self, x: &Tensor<2>) -> bool {
        primitive::<B, 2, _>(x).is_some()
    }

    fn sq(&self, inputs: &SqInputs) -> Option<Tensor<1>> {
        let s = primitive::<B, 2, _>(&inputs.student)?;
        let t = primitive::<B, 2, _>(&inputs.teacher)?;
        let w = primitive::<B, 1, _>(&inputs.weights)?;
        let out = B::kd_sq_value(s, t, w, inputs.zero_inf);
        Some(Tensor::<1>::from_primitive::<B>(out))
    }
}

/// Runs `$body` once for each backend type a kernel is compiled for, with `$p` a reference to
/// its [`Probe`]: `Flex`, `Cube` (plain or `Fusion`, whichever the application's Burn uses) and
/// both `Autodiff` checkpointing strategies over each. The callers stop at the first answer.
macro_rules! for_each_probe {
    (|$p:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use burn_autodiff::{
            Autodiff,
            checkpoint::strategy::{BalancedCheckpointing as Bal, NoCheckpointing as NoC},
        };
        #[allow(unused_imports)]
        use core::marker::PhantomData;
        #[allow(unused_imports)]
        use $crate::fused::route::Probe;
        #[allow(unused_imports)]
        use $crate::fused::route::{
            HandOver as _, Kernel as _, NoHandOver as _, NoKernel as _, NoSqKernel as _,
            SqKernel as _,
        };
        #[cfg(feature = "cpu-kernel")]
        {
            {
                let $p = &Probe::<burn_flex::Flex>(PhantomData);
                $body;
            }
            {
                let $p = &Probe::<Autodiff<burn_flex::Flex, NoC>>(PhantomData);
                $body;
            }
            {
                let $p = &Probe::<Autodiff<burn_flex::Flex, Bal>>(PhantomData);
                $body;
            }
        }
        #[cfg(feature = "gpu-kernel")]
        {
            {
                let $p = &Probe::<burn_cubecl::Cube>(PhantomData);
                $body;
            }
            {
                let $p = &Probe::<Autodiff<burn_cubecl::Cube, NoC>>(PhantomData);
                $body;
            }
            {
                let $p = &Probe::<Autodiff<burn_cubecl::Cube, Bal>>(PhantomData);
                $body;
            }
        }
    }};
}
pub(crate) use for_each_probe;
