//! The CubeCL kernel of the fused logit losses (CUDA, ROCm, Metal, Vulkan, wgpu; generic over the
//! CubeCL runtime): one cube (workgroup) per row, block reductions in shared memory, `f32`
//! arithmetic whatever the input dtype (`f32`, `f16`, `bf16` where the runtime has it), the
//! gradient written in the input dtype.
//!
//! # Passes over a row (see `docs/performance.md`, "GPU kernel design")
//! 1. **Online maxima and sums**: each unit keeps a running maximum and a running sum of
//!    `exp((x − m)/T)` for the teacher and the student (and `exp(s − m)` for the hard term when
//!    `T ≠ 1`), rescaled when its maximum grows; the cube combines them in shared memory. The
//!    row is read from memory once here.
//! 2. **Value** (and, for forward KL, the gradient `(q − p)/T` in the same pass): the divergence
//!    terms, the cancellation-free companion sum of the KL, and for the other divergences
//!    `G = Σ_k q_k g_k` (`g = ∂D/∂q`).
//! 3. **Gradient** for the divergences other than forward KL:
//!    `∂D/∂s_j = q_j (g_j − G) / T`.
//!
//! A second, one-cube kernel sums the per-row values into `[α·S + β·H, S, H]` on the device:
//! no host round-trip anywhere.
//!
//! # Hostile input (the composed path's conventions, tested in `tests/suite/adversarial`)
//! `-inf` logits are empty entries (`0 · log 0 = 0`), an all `-inf` row an empty distribution; a
//! `+inf` logit is a point mass (the row becomes 0 at its `+inf` entries and `-inf` elsewhere,
//! one extra pass for such rows only, and the student's `+inf` entries get a zero gradient); NaN
//! propagates. The KL value is `D1 + log1p(D2 − D1)` with `D2 = Σ_{a>0} a·φ(d) + Σ_{a=0} b`,
//! `φ(d) = e^{−d} − 1 + d` (see `kernel::row::refine_divergence`): insensitive to the rounding of
//! the log-normalisers, which the plain sum `D1` carries in full (large temperatures, nearly
//! equal rows, denormal logits); a value left below 0 by rounding is lifted to 0.

//!
//! # Layout
//! `math` (device math shared by the kernels), `rows` (the row kernel), `sparse` (the top-k
//! teacher kernel), `reduce` (upstream scaling and the on-device row sums), `launch` (host side
//! of the launches), `backend` (`KernelCaps` and `KdFusedBackend` for `CubeBackend`), `tests`.

use burn::backend::DType;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Shape, TensorMetadata};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::ext::KdFusedBackend;
use super::kernel::{KernelParams, SoftKind};
use super::route::KernelCaps;

mod backend;
mod launch;
mod math;
mod reduce;
mod rows;
mod sparse;
#[cfg(test)]
mod tests;

use launch::*;
use math::*;
use reduce::*;
use rows::*;
use sparse::*;

/// Units per cube for long rows (one row per cube).
const UNITS: u32 = 256;
/// Units per cube for rows of at most [`SHORT_ROW`] entries.
const UNITS_SHORT: u32 = 64;
/// Rows up to this length use [`UNITS_SHORT`] units.
const SHORT_ROW: usize = 2048;

/// The comptime divergence of the kernel.
const KIND_FORWARD: u32 = 0;
const KIND_REVERSE: u32 = 1;
const KIND_MIXTURE: u32 = 2;
const KIND_TVD: u32 = 3;
const KIND_SYMMETRIC: u32 = 4;
