//! The CubeCL kernel of the fused logit losses (wgpu, CUDA, ROCm, Metal, the CubeCL CPU runtime):
//! one cube (workgroup) of [`CUBE`] units per row, block reductions in shared memory.
//!
//! Per row: a max pass, a pass for the sums of exponentials, and a pass for the divergence that
//! also writes the gradient (reverse KL: one more gradient pass, as it needs the row's value).
//! Exponentials are recomputed in each pass rather than stored: on a GPU the row stays in cache
//! and arithmetic is cheaper than shared memory of `V` floats.

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

/// Units per cube (one row per cube).
const CUBE: u32 = 256;
/// Stand-in for `-inf` as the identity of `max` (WGSL has no infinite literals).
const LOWEST: f32 = -3.0e38;

#[cube]
fn block_max<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
    let u = UNIT_POS_X as usize;
    shared[u] = value;
    sync_cube();
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if u < stride {
            shared[u] = F::max(shared[u], shared[u + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let out = shared[0];
    sync_cube();
    out
}

#[cube]
fn block_sum<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
    let u = UNIT_POS_X as usize;
    shared[u] = value;
    sync_cube();
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if u < stride {
            shared[u] = shared[u] + shared[u + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let out = shared[0];
    sync_cube();
    out
}

// NaN must survive: GPU `max` drops it, so it reaches the sums of exponentials, and from there
// only branches taken on `x == 0` (false for NaN) keep it; `x != 0` may be compiled as an ordered
// comparison, false for NaN too.
#[cube]
fn ln_or_zero<F: Float>(s: F) -> F {
    let mut out = F::ln(s);
    if s == F::new(0.0) {
        out = F::new(0.0);
    }
    out
}

#[cube]
fn recip_or_one<F: Float>(s: F) -> F {
    let mut out = F::new(1.0) / s;
    if s == F::new(0.0) {
        out = F::new(1.0);
    }
    out
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn kd_rows_kernel<F: Float, I: Numeric>(
    student: &Tensor<F>,      // [R, V]
    teacher: &Tensor<F>,      // [R, V]
    labels: &Tensor<I>,       // [R]
    weights: &Tensor<F>,      // [R]
    rows_out: &mut Tensor<F>, // [2R]: w · soft_r at r, w · hard_r at R + r
    grad: &mut Tensor<F>,     // [R, V] (or [1] when no gradient is written)
    inv_t: f32,
    soft_scale: f32,
    smoothing: f32,
    coef_soft: f32,
    coef_hard: f32,
    #[comptime] has_hard: bool,
    #[comptime] write_grad: bool,
    #[comptime] reverse: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    // Linear cube index: the grid may be 2D for more than 65 535 rows.
    let r = CUBE_POS;
    let rows = weights.shape(0);
    if r >= rows {
        terminate!();
    }
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let v = student.shape(1);
    let base = r * v;
    let w = weights[r];
    let zero = F::new(0.0);
    let mut shared = Shared::<[F]>::new_slice(CUBE as usize);

    if w == zero {
        if write_grad {
            let mut i = u;
            while i < v {
                grad[base + i] = zero;
                i += step;
            }
        }
        if u == 0 {
            rows_out[r] = zero;
            rows_out[rows + r] = zero;
        }
        terminate!();
    }

    let inv_t = F::cast_from(inv_t);
    let lowest = F::new(LOWEST);

    // Pass A: maxima.
    let mut ms = lowest;
    let mut mt = lowest;
    let mut i = u;
    while i < v {
        ms = F::max(ms, student[base + i]);
        mt = F::max(mt, teacher[base + i]);
        i += step;
    }
    let mut ms = block_max::<F>(&mut shared, ms);
    let mut mt = block_max::<F>(&mut shared, mt);
    // All -inf: an empty distribution, shifted by 0 (the composed path's convention).
    if ms <= lowest {
        ms = zero;
    }
    if mt <= lowest {
        mt = zero;
    }

    // Pass B: sums of exponentials.
    let mut st = zero;
    let mut ss = zero;
    let mut s1_part = zero;
    let mut sum_s_part = zero;
    let mut i = u;
    while i < v {
        let sv = student[base + i];
        st += F::exp((teacher[base + i] - mt) * inv_t);
        ss += F::exp((sv - ms) * inv_t);
        if has_hard {
            s1_part += F::exp(sv - ms);
            sum_s_part += sv;
        }
        i += step;
    }
    let st = block_sum::<F>(&mut shared, st);
    let ss = block_sum::<F>(&mut shared, ss);
    let mut s1 = zero;
    let mut sum_s = zero;
    if has_hard {
        s1 = block_sum::<F>(&mut shared, s1_part);
        sum_s = block_sum::<F>(&mut shared, sum_s_part);
    }
    let inv_st = recip_or_one::<F>(st);
    let inv_ss = recip_or_one::<F>(ss);
    let inv_s1 = recip_or_one::<F>(s1);
    // log p − log q = ((t − mt) − (s − ms))/T + ln Ss − ln St, shifted as in the sums.
    let dln = ln_or_zero::<F>(ss) - ln_or_zero::<F>(st);
    let mut cs = F::cast_from(coef_soft) * w * F::cast_from(soft_scale) * inv_t;
    // An empty teacher row (all -inf) has no forward-KL terms: a zero soft gradient, as composed.
    if !reverse && st == zero {
        cs = zero;
    }
    let ch = F::cast_from(coef_hard) * w;
    let eps = F::cast_from(smoothing);
    let smooth_c = eps / F::cast_from(v as u32);
    let mut y = v; // no label: matches no column
    if has_hard {
        y = u32::cast_from(labels[r]) as usize;
    }

    // Pass C: the divergence; forward KL also writes the gradient.
    let mut acc = zero;
    let mut i = u;
    while i < v {
        let sv = student[base + i];
        let tv = teacher[base + i];
        let d = ((tv - mt) - (sv - ms)) * inv_t + dln;
        let pt = F::exp((tv - mt) * inv_t) * inv_st;
        let qs = F::exp((sv - ms) * inv_t) * inv_ss;
        if reverse {
            if qs == zero {
            } else {
                acc -= qs * d;
            }
        } else {
            if pt == zero {
            } else {
                acc += pt * d;
            }
            if write_grad {
                let mut g = cs * (qs - pt);
                if has_hard {
                    g += ch * (F::exp(sv - ms) * inv_s1 - smooth_c);
                    if i == y {
                        g -= ch * (F::new(1.0) - eps);
                    }
                }
                grad[base + i] = g;
            }
        }
        i += step;
    }
    let div = block_sum::<F>(&mut shared, acc);

    // Pass D (reverse KL): ∂/∂s_j = q_j (log q_j − log p_j − D) / T.
    if reverse && write_grad {
        let mut i = u;
        while i < v {
            let sv = student[base + i];
            let tv = teacher[base + i];
            let d = ((tv - mt) - (sv - ms)) * inv_t + dln;
            let qs = F::exp((sv - ms) * inv_t) * inv_ss;
            let mut g = cs * qs * (zero - d - div);
            if qs == zero {
                g = zero;
            }
            if has_hard {
                g += ch * (F::exp(sv - ms) * inv_s1 - smooth_c);
                if i == y {
                    g -= ch * (F::new(1.0) - eps);
                }
            }
            grad[base + i] = g;
            i += step;
        }
    }

    if u == 0 {
        rows_out[r] = w * F::cast_from(soft_scale) * div;
        let mut ce = zero;
        if has_hard {
            let lse1 = ln_or_zero::<F>(s1);
            ce = (F::new(1.0) - eps) * (lse1 - (student[base + y] - ms));
            if eps != zero {
                ce += eps * (lse1 + ms - sum_s / F::cast_from(v as u32));
            }
        }
        rows_out[rows + r] = w * ce;
    }
}

type CubeFloat = FloatTensor<CubeBackend>;

fn run(
    student: CubeFloat,
    teacher: CubeFloat,
    labels: IntTensor<CubeBackend>,
    weights: CubeFloat,
    p: KernelParams,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let student = into_contiguous(student);
    let teacher = into_contiguous(teacher);
    let labels = into_contiguous(labels);
    let weights = into_contiguous(weights);
    let [r, v] = student.shape().dims::<2>();
    let client = student.client.clone();
    let device = student.device.clone();
    let dtype = student.dtype;
    let rows_out = empty_device_dtype(client.clone(), device.clone(), Shape::new([2 * r]), dtype);
    let grad_shape = if want_grad { [r, v] } else { [1, 1] };
    let grad = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new(grad_shape),
        dtype,
    );
    if r > 0 {
        kd_rows_kernel::launch(
            &client,
            // One cube per row, spread over the grid's dimensions when the rows exceed the
            // per-dimension limit of a dispatch (65 535 on wgpu); extra cubes exit at once.
            cubecl::server::CubeCountSelection::new(&client, r as u32).cube_count(),
            CubeDim::new_1d(CUBE),
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            labels.clone().into_tensor_arg(),
            weights.into_tensor_arg(),
            rows_out.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            1.0 / p.temperature,
            p.soft_scale,
            p.smoothing,
            p.grad_soft,
            p.grad_hard,
            p.has_hard,
            want_grad,
            p.kind == SoftKind::ReverseKl,
            [
                dtype_to_storage_type(dtype),
                dtype_to_storage_type(labels.dtype),
            ],
        );
    }
    // Whole-tensor sums of each half: Burn 0.22's `sum_dim` on wgpu returns 65 532 for 65 535 or
    // more rows of ones (seen on lavapipe), `sum` is right.
    let half = |k: usize| {
        CubeBackend::float_sum(CubeBackend::float_slice(
            rows_out.clone(),
            &[burn::tensor::Slice::from(k * r..(k + 1) * r)],
        ))
    };
    let (soft, hard) = (half(0), half(1));
    let total = CubeBackend::float_add(
        CubeBackend::float_mul_scalar(soft.clone(), p.alpha.into()),
        CubeBackend::float_mul_scalar(hard.clone(), p.beta.into()),
    );
    let values = CubeBackend::float_cat(vec![total, soft, hard], 0);
    (values, want_grad.then_some(grad))
}

impl KdFusedBackend for CubeBackend {
    fn kd_fused_values(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        run(student, teacher, labels, weights, params, false).0
    }

    fn kd_fused_values_grad(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (values, grad) = run(student, teacher, labels, weights, params, true);
        (values, grad.expect("gradient requested"))
    }
}
