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

// NaN must survive: GPU `max` may drop it, so comparisons are written so that NaN takes the
// branch that keeps it (`x == c` is false for NaN; `x != c` may be compiled as an ordered
// comparison, false for NaN too, so it is never used).
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

/// `ln(1 + x)`, accurate for small `|x|` (CubeCL's `log1p` is `ln(1 + x)`, and Vulkan's `ln`
/// promises only 2⁻²¹ absolute near 1): a Taylor polynomial below 1e-2 (error below 1e-14
/// relative).
#[cube]
fn log1p_f<F: Float>(x: F) -> F {
    let mut out = F::ln(F::new(1.0) + x);
    if F::abs(x) < F::new(0.01) {
        let h = F::new(0.2) - x * F::new(1.0 / 6.0);
        let h = F::new(0.25) - x * h;
        let h = F::new(1.0 / 3.0) - x * h;
        let h = F::new(0.5) - x * h;
        out = x * (F::new(1.0) - x * h);
    }
    out
}

/// `ln(e^a + e^b)`, `-inf` when both are.
#[cube]
fn log_add_exp<F: Float>(a: F, b: F, neg_inf: F) -> F {
    let hi = F::max(a, b);
    let lo = F::min(a, b);
    let mut out = hi + log1p_f::<F>(F::exp(lo - hi));
    if hi == neg_inf {
        out = neg_inf;
    }
    out
}

/// `φ(d)/d² = (e^{−d} − 1 + d)/d²` for `|d| ≤ ½` by its Taylor series
/// (`crate::numerics::PHI_OVER_D2_TAYLOR`).
#[cube]
fn phi_over_d2<F: Float>(d: F) -> F {
    let mut h = F::new(-1.0 / 362_880.0);
    h = h * d + F::new(1.0 / 40_320.0);
    h = h * d + F::new(-1.0 / 5040.0);
    h = h * d + F::new(1.0 / 720.0);
    h = h * d + F::new(-1.0 / 120.0);
    h = h * d + F::new(1.0 / 24.0);
    h = h * d + F::new(-1.0 / 6.0);
    h * d + F::new(0.5)
}

/// The companion term of `a·d` in `D2`: `a·φ(d)`, or `b` where `a = 0`.
#[cube]
fn phi_term<F: Float>(a: F, b: F, d: F) -> F {
    let mut out = b;
    if a == F::new(0.0) {
    } else {
        out = b - a + a * d;
        if F::abs(d) <= F::new(0.5) {
            out = a * d * d * phi_over_d2::<F>(d);
        }
    }
    out
}

/// A logit as `f32` (or the arithmetic type `F`), made a point mass when its row has `+inf`
/// (`point`): `0` at `+inf`, `-inf` elsewhere.
#[cube]
fn load<E: Float, F: Float>(x: &Tensor<E>, i: usize, point: bool, neg_inf: F) -> F {
    let v = F::cast_from(x[i]);
    let mut out = v;
    if point {
        out = neg_inf;
        if v == F::new(0.0) - neg_inf {
            out = F::new(0.0);
        }
    }
    out
}

/// The number of `+inf` entries of a row slice seen by this unit.
#[cube]
fn count_pos_inf<E: Float, F: Float>(x: &Tensor<E>, base: usize, v: usize, pos_inf: F) -> F {
    let mut n = F::new(0.0);
    let mut i = UNIT_POS_X as usize;
    while i < v {
        if F::cast_from(x[base + i]) == pos_inf {
            n += F::new(1.0);
        }
        i += CUBE_DIM_X as usize;
    }
    n
}

/// `(log p, p)` of a logit `x` in a row with maximum `m`, `1/T`, `ln S` and `1/S`:
/// `log p = (x − m)/T − ln S`, `p = exp((x − m)/T) / S`.
#[cube]
fn log_prob<F: Float>(x: F, m: F, inv_t: F, ln_s: F, inv_s: F) -> (F, F) {
    let l = (x - m) * inv_t;
    (l - ln_s, F::exp(l) * inv_s)
}

/// This unit's running maximum of `x[base + i]` (`i < len`, every `CUBE_DIM_X`-th entry from
/// the unit's position) and `Σ exp((x − m)/T)`, rescaled when the maximum grows: `-inf` entries
/// add nothing, NaN reaches the sum (`x > m` and `x == -inf` are both false for it).
#[cube]
fn unit_max_sum<E: Float, F: Float>(
    x: &Tensor<E>,
    base: usize,
    len: usize,
    inv_t: F,
    neg_inf: F,
) -> (F, F) {
    let mut m = neg_inf;
    let mut s = F::new(0.0);
    let mut i = UNIT_POS_X as usize;
    while i < len {
        let xv = F::cast_from(x[base + i]);
        if xv > m {
            s = s * F::exp((m - xv) * inv_t) + F::new(1.0);
            m = xv;
        } else if xv == neg_inf {
        } else {
            s += F::exp((xv - m) * inv_t);
        }
        i += CUBE_DIM_X as usize;
    }
    (m, s)
}

/// The row's maximum and sum from each unit's running pair `(m, s)` of [`unit_max_sum`]: the
/// block maximum, each unit's sum rescaled to it (a unit that saw only `-inf` has sum 0), their
/// block sum. A row holding `+inf` is its point mass — recounted with one more pass: maximum 0,
/// sum the number of `+inf` entries, and `true` — and an all `-inf` row is empty (maximum 0,
/// sum 0: the composed path's shift).
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_max_sum<E: Float, F: Float>(
    shared: &mut Shared<[F]>,
    x: &Tensor<E>,
    base: usize,
    len: usize,
    m: F,
    s: F,
    inv_t: F,
    neg_inf: F,
) -> (F, F, bool) {
    let pos_inf = F::new(0.0) - neg_inf;
    let mut m_row = block_max::<F>(shared, m);
    let mut s_unit = s;
    if m == neg_inf {
    } else {
        s_unit = s * F::exp((m - m_row) * inv_t);
    }
    let mut s_row = block_sum::<F>(shared, s_unit);
    let point = m_row == pos_inf;
    if point {
        s_row = block_sum::<F>(shared, count_pos_inf::<E, F>(x, base, len, pos_inf));
        m_row = F::new(0.0);
    }
    if m_row == neg_inf {
        m_row = F::new(0.0);
    }
    (m_row, s_row, point)
}

/// The hard term's gradient at one entry: `c_h (softmax(s)_j − ε/V − (1 − ε)·[j = y])`.
#[cube]
fn hard_grad<F: Float>(x1: F, inv_s1: F, smooth_c: F, eps: F, ch: F, is_label: bool) -> F {
    let mut g = ch * (F::exp(x1) * inv_s1 - smooth_c);
    if is_label {
        g -= ch * (F::new(1.0) - eps);
    }
    g
}

/// The launch's scalars, read from a small `f32` tensor (`[SCALARS]`) rather than passed as
/// launch scalars: the kernel is generic over its input dtype, and a tensor reads the same on
/// every runtime.
const SCALARS: usize = 12;
const SC_INV_T: usize = 0;
const SC_SOFT_SCALE: usize = 1;
const SC_SMOOTHING: usize = 2;
const SC_COEF_SOFT: usize = 3;
const SC_COEF_HARD: usize = 4;
/// `1 − w`, `ln w`, `ln(1 − w)` of the mixture `m = w·p + (1 − w)·q`.
const SC_SHARE_Q: usize = 5;
const SC_LN_SHARE_P: usize = 6;
const SC_LN_SHARE_Q: usize = 7;
/// Factors of `KL(p ‖ m)` and `KL(q ‖ m)`.
const SC_COEF_P: usize = 8;
const SC_COEF_Q: usize = 9;
/// `-inf` (WGSL has no infinite literals), `α`, `β` of the total.
const SC_NEG_INF: usize = 10;

/// `q·g` at one entry (`g = ∂D/∂q`, up to a constant that cancels) for the kinds other than
/// forward KL (`kind` is comptime): `lp`, `lq` are the log-probabilities, `pt`, `qs` the
/// probabilities, `lm` the log-mixture (mixture kind only).
#[cube]
#[allow(clippy::too_many_arguments)]
fn entry_qg<F: Float>(
    lp: F,
    lq: F,
    lm: F,
    pt: F,
    qs: F,
    sc: &Tensor<F>,
    #[comptime] kind: u32,
) -> F {
    let zero = F::new(0.0);
    let mut qg = zero;
    if comptime!(kind == KIND_REVERSE) {
        if qs == zero {
        } else {
            qg = qs * (lq - lp);
        }
    } else if comptime!(kind == KIND_MIXTURE) {
        let (cp, cq) = (sc[SC_COEF_P], sc[SC_COEF_Q]);
        let w1 = sc[SC_SHARE_Q];
        if qs == zero {
        } else {
            if cq == zero {
            } else {
                qg += cq * qs * (lq - lm);
            }
            if w1 == zero {
            } else {
                qg -= w1 * F::exp(lq - lm) * (cp * pt + cq * qs);
            }
        }
    } else if comptime!(kind == KIND_TVD) {
        if qs > pt {
            qg = F::new(0.5) * qs;
        }
        if qs < pt {
            qg = F::new(-0.5) * qs;
        }
    } else {
        // Symmetric KL: q·g = −p + q (log q − log p).
        qg = zero - pt;
        if qs == zero {
        } else {
            qg += qs * (lq - lp);
        }
    }
    qg
}

/// The log-mixture `ln(w·p + (1 − w)·q)` (mixture kind), `0` for the other kinds.
#[cube]
fn log_mixture<F: Float>(lp: F, lq: F, sc: &Tensor<F>, neg_inf: F, #[comptime] kind: u32) -> F {
    let mut lm = F::new(0.0);
    if comptime!(kind == KIND_MIXTURE) {
        lm = log_add_exp::<F>(sc[SC_LN_SHARE_P] + lp, sc[SC_LN_SHARE_Q] + lq, neg_inf);
    }
    lm
}

/// A KL from its sums (see `rows::kl_rows_normalized`, which the composed path uses): `0` when its
/// first distribution is empty; `D1 + log1p(D2 − D1)` when `D1` is finite, lifted to 0 within 4
/// ulp of its parts; `D1` otherwise (`+inf`, NaN).
#[cube]
fn refined_kl<F: Float>(d1: F, d2: F, first_empty: bool, neg_inf: F) -> F {
    let zero = F::new(0.0);
    let mut value = d1;
    let x = d2 - d1;
    if d1 < zero - neg_inf {
        if d1 > neg_inf {
            if x > F::new(-1.0) {
                let corr = log1p_f::<F>(x);
                let kl = d1 + corr;
                let tol = F::new(4.0 * f32::EPSILON) * (F::abs(d1) + F::abs(corr));
                value = kl;
                if kl < zero {
                    if kl >= zero - tol {
                        value = zero;
                    }
                }
            }
        }
    }
    if first_empty {
        value = zero;
    }
    value
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn kd_rows_kernel<E: Float, F: Float, I: Numeric>(
    student: &Tensor<E>,      // [R, V]
    teacher: &Tensor<E>,      // [R, V]
    labels: &Tensor<I>,       // [R]
    weights: &Tensor<F>,      // [R]
    rows_out: &mut Tensor<F>, // [2R]: w · soft_r at r, w · hard_r at R + r
    grad: &mut Tensor<E>,     // [R, V] (or [1, 1] when no gradient is written)
    sc: &Tensor<F>,           // [SCALARS]
    #[comptime] units: u32,
    #[comptime] kind: u32,
    #[comptime] has_hard: bool,
    #[comptime] need_s1: bool,
    #[comptime] write_grad: bool,
    #[define(E, F, I)] _dtypes: [ElemType; 3],
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
    let one = F::new(1.0);
    let mut shared = Shared::<[F]>::new_slice(units as usize);

    if w == zero {
        if write_grad {
            let mut i = u;
            while i < v {
                grad[base + i] = E::cast_from(zero);
                i += step;
            }
        }
        if u == 0 {
            rows_out[r] = zero;
            rows_out[rows + r] = zero;
        }
        terminate!();
    }

    let inv_t = sc[SC_INV_T];
    let neg_inf = sc[SC_NEG_INF];
    let pos_inf = zero - neg_inf;

    // Pass 1: online maxima and sums of exponentials (one read of the row). The student's loop
    // also keeps `Σ exp(s − m)` (the hard term at T ≠ 1, rescaled with the same maximum) and
    // `Σ s` (label smoothing).
    let (mt, st) = unit_max_sum::<E, F>(teacher, base, v, inv_t, neg_inf);
    let mut ms = neg_inf;
    let mut ss = zero;
    let mut s1 = zero;
    let mut sum_s = zero;
    let mut i = u;
    while i < v {
        let sv = F::cast_from(student[base + i]);
        if sv > ms {
            ss = ss * F::exp((ms - sv) * inv_t) + one;
            if need_s1 {
                s1 = s1 * F::exp(ms - sv) + one;
            }
            ms = sv;
        } else if sv == neg_inf {
        } else {
            ss += F::exp((sv - ms) * inv_t);
            if need_s1 {
                s1 += F::exp(sv - ms);
            }
        }
        if has_hard {
            sum_s += sv;
        }
        i += step;
    }
    let (mt, st, point_t) =
        row_max_sum::<E, F>(&mut shared, teacher, base, v, mt, st, inv_t, neg_inf);
    let ms_unit = ms;
    let (ms, ss, point_s) =
        row_max_sum::<E, F>(&mut shared, student, base, v, ms_unit, ss, inv_t, neg_inf);
    if need_s1 {
        // Rescaled to the row maximum (overwritten below for a point-mass row).
        if ms_unit == neg_inf {
        } else {
            s1 *= F::exp(ms_unit - ms);
        }
        s1 = block_sum::<F>(&mut shared, s1);
    }
    if has_hard {
        sum_s = block_sum::<F>(&mut shared, sum_s);
    }
    if !need_s1 {
        s1 = ss;
    }
    if point_s {
        s1 = ss;
        // Σ of the point-mass row: 0 when every entry is +inf, -inf otherwise.
        sum_s = zero;
        if ss < F::cast_from(v as u32) {
            sum_s = neg_inf;
        }
    }

    let inv_st = recip_or_one::<F>(st);
    let inv_ss = recip_or_one::<F>(ss);
    let inv_s1 = recip_or_one::<F>(s1);
    let ln_st = ln_or_zero::<F>(st);
    let ln_ss = ln_or_zero::<F>(ss);
    // The first distribution of a KL empty (an all -inf row): no terms, a zero soft gradient.
    let mut first_empty = false;
    if comptime!(kind == KIND_FORWARD) {
        first_empty = st == zero;
    }
    if comptime!(kind == KIND_REVERSE) {
        first_empty = ss == zero;
    }
    let mut cs = sc[SC_COEF_SOFT] * w * sc[SC_SOFT_SCALE] * inv_t;
    if first_empty {
        cs = zero;
    }
    let ch = sc[SC_COEF_HARD] * w;
    let eps = sc[SC_SMOOTHING];
    let smooth_c = eps / F::cast_from(v as u32);
    let mut y = v; // no label: matches no column
    if has_hard {
        y = u32::cast_from(labels[r]) as usize;
    }

    // Pass 2: the divergence as sums of KL terms — `a_*` for the KLs whose first distribution
    // is the teacher's, `b_*` for the student's (D1 = Σ a·d, D2 its cancellation-free companion) —
    // and G = Σ q·g for the gradient of the kinds other than forward KL, which writes its
    // gradient here.
    let mut a_d1 = zero;
    let mut a_d2 = zero;
    let mut b_d1 = zero;
    let mut b_d2 = zero;
    let mut g_sum = zero;
    let mut i = u;
    while i < v {
        let tv = load::<E, F>(teacher, base + i, point_t, neg_inf);
        let sv = load::<E, F>(student, base + i, point_s, neg_inf);
        let (lp, pt) = log_prob::<F>(tv, mt, inv_t, ln_st, inv_st);
        let (lq, qs) = log_prob::<F>(sv, ms, inv_t, ln_ss, inv_ss);
        let d = lp - lq;
        if comptime!(kind == KIND_FORWARD) {
            if pt == zero {
            } else {
                a_d1 += pt * d;
            }
            a_d2 += phi_term::<F>(pt, qs, d);
            if write_grad {
                let mut g = cs * (qs - pt);
                if has_hard {
                    g += hard_grad::<F>(sv - ms, inv_s1, smooth_c, eps, ch, i == y);
                }
                if point_s {
                    if F::cast_from(student[base + i]) == pos_inf {
                        g = zero;
                    }
                }
                grad[base + i] = E::cast_from(g);
            }
        } else if comptime!(kind == KIND_TVD) {
            a_d1 += F::new(0.5) * F::abs(pt - qs);
            g_sum += entry_qg::<F>(lp, lq, zero, pt, qs, sc, kind);
        } else {
            let lm = log_mixture::<F>(lp, lq, sc, neg_inf, kind);
            // KL(p ‖ b) and KL(q ‖ b), with b = q / p (symmetric KL) or the mixture m.
            let mut dp = d;
            let mut dq = zero - d;
            let mut bp = qs;
            let mut bq = pt;
            if comptime!(kind == KIND_MIXTURE) {
                dp = lp - lm;
                dq = lq - lm;
                bp = F::exp(lm);
                bq = bp;
            }
            if comptime!(kind != KIND_REVERSE) {
                if pt == zero {
                } else {
                    a_d1 += pt * dp;
                }
                a_d2 += phi_term::<F>(pt, bp, dp);
            }
            if qs == zero {
            } else {
                b_d1 += qs * dq;
            }
            b_d2 += phi_term::<F>(qs, bq, dq);
            if comptime!(kind != KIND_REVERSE) {
                g_sum += entry_qg::<F>(lp, lq, lm, pt, qs, sc, kind);
            }
        }
        i += step;
    }
    // Row sums (the sums a kind does not use stay per-unit values and are never read).
    let a_d1 = block_sum::<F>(&mut shared, a_d1);
    if comptime!(kind != KIND_TVD) {
        a_d2 = block_sum::<F>(&mut shared, a_d2);
    }
    if comptime!(kind != KIND_FORWARD && kind != KIND_TVD) {
        b_d1 = block_sum::<F>(&mut shared, b_d1);
        b_d2 = block_sum::<F>(&mut shared, b_d2);
    }
    if comptime!(kind == KIND_REVERSE) {
        g_sum = b_d1;
    } else if comptime!(kind != KIND_FORWARD) {
        g_sum = block_sum::<F>(&mut shared, g_sum);
    }

    // Pass 3 (every divergence but forward KL): ∂D/∂s_j = q_j (g_j − G) / T.
    if comptime!(kind != KIND_FORWARD) {
        if write_grad {
            let mut i = u;
            while i < v {
                let tv = load::<E, F>(teacher, base + i, point_t, neg_inf);
                let sv = load::<E, F>(student, base + i, point_s, neg_inf);
                let (lp, pt) = log_prob::<F>(tv, mt, inv_t, ln_st, inv_st);
                let (lq, qs) = log_prob::<F>(sv, ms, inv_t, ln_ss, inv_ss);
                let lm = log_mixture::<F>(lp, lq, sc, neg_inf, kind);
                let qg = entry_qg::<F>(lp, lq, lm, pt, qs, sc, kind);
                let mut g = zero;
                if qs == zero {
                } else {
                    g = cs * (qg - qs * g_sum);
                }
                if has_hard {
                    g += hard_grad::<F>(sv - ms, inv_s1, smooth_c, eps, ch, i == y);
                }
                if point_s {
                    if F::cast_from(student[base + i]) == pos_inf {
                        g = zero;
                    }
                }
                grad[base + i] = E::cast_from(g);
                i += step;
            }
        }
    }

    if u == 0 {
        // The value from the KL sums, as the composed path computes it (`refined_kl`).
        let p_empty = st == zero;
        let q_empty = ss == zero;
        let mut value = zero;
        if comptime!(kind == KIND_FORWARD) {
            value = refined_kl::<F>(a_d1, a_d2, p_empty, neg_inf);
        } else if comptime!(kind == KIND_REVERSE) {
            value = refined_kl::<F>(b_d1, b_d2, q_empty, neg_inf);
        } else if comptime!(kind == KIND_SYMMETRIC) {
            value = refined_kl::<F>(a_d1, a_d2, p_empty, neg_inf)
                + refined_kl::<F>(b_d1, b_d2, q_empty, neg_inf);
        } else if comptime!(kind == KIND_MIXTURE) {
            let (cp, cq) = (sc[SC_COEF_P], sc[SC_COEF_Q]);
            if cp == zero {
            } else {
                value += cp * refined_kl::<F>(a_d1, a_d2, p_empty, neg_inf);
            }
            if cq == zero {
            } else {
                value += cq * refined_kl::<F>(b_d1, b_d2, q_empty, neg_inf);
            }
        } else {
            value = a_d1;
        }
        rows_out[r] = w * sc[SC_SOFT_SCALE] * value;
        let mut ce = zero;
        if has_hard {
            let sy = load::<E, F>(student, base + y, point_s, neg_inf);
            let lse1 = ln_or_zero::<F>(s1);
            ce = (one - eps) * (lse1 - (sy - ms));
            if eps == zero {
            } else {
                ce += eps * (lse1 + ms - sum_s / F::cast_from(v as u32));
            }
        }
        rows_out[rows + r] = w * ce;
    }
}

/// The top-k teacher's forward KL (`Renormalize`, `Full`): per row, `p̂ = softmax(values/T)`
/// over the `k` kept ids, `q = softmax(s/T)` over the full vocabulary, the value
/// `Σ_j p̂_j (log p̂_j − log q_{id_j})` and the gradient `c (q − p̂ at the ids) / T`.
///
/// Pass 1 reads the student row (online max and sum) and the `k` teacher values; pass 2 writes
/// `c·q/T` over the row; pass 3 walks the `k` ids, and the unit that wrote an id's gradient
/// entry (`id mod units`) subtracts `c·p̂/T` there and adds the id's value term: no unit reads
/// another's storage writes, so no storage barrier is needed. The ids are unique (checked by
/// the caller).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn kd_sparse_kernel<E: Float, F: Float, I: Numeric>(
    student: &Tensor<E>,      // [R, V]
    indices: &Tensor<I>,      // [R, k]
    values: &Tensor<E>,       // [R, k]
    weights: &Tensor<F>,      // [R]
    rows_out: &mut Tensor<F>, // [2R]: w · soft_r at r, 0 at R + r
    grad: &mut Tensor<E>,     // [R, V] (or [1, 1])
    sc: &Tensor<F>,           // [SCALARS]
    #[comptime] units: u32,
    #[comptime] write_grad: bool,
    #[define(E, F, I)] _dtypes: [ElemType; 3],
) {
    let r = CUBE_POS;
    let rows = weights.shape(0);
    if r >= rows {
        terminate!();
    }
    let u = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let v = student.shape(1);
    let k = values.shape(1);
    let base = r * v;
    let kbase = r * k;
    let w = weights[r];
    let zero = F::new(0.0);
    let mut shared = Shared::<[F]>::new_slice(units as usize);
    if u == 0 {
        rows_out[rows + r] = zero;
    }
    if w == zero {
        if write_grad {
            let mut i = u;
            while i < v {
                grad[base + i] = E::cast_from(zero);
                i += step;
            }
        }
        if u == 0 {
            rows_out[r] = zero;
        }
        terminate!();
    }
    let inv_t = sc[SC_INV_T];
    let neg_inf = sc[SC_NEG_INF];
    let pos_inf = zero - neg_inf;

    // Pass 1: the student's online max and sum, the teacher's over its k values.
    let (ms, ss) = unit_max_sum::<E, F>(student, base, v, inv_t, neg_inf);
    let (mt, st) = unit_max_sum::<E, F>(values, kbase, k, inv_t, neg_inf);
    let (ms, ss, point_s) =
        row_max_sum::<E, F>(&mut shared, student, base, v, ms, ss, inv_t, neg_inf);
    let (mt, st, point_t) =
        row_max_sum::<E, F>(&mut shared, values, kbase, k, mt, st, inv_t, neg_inf);
    let inv_ss = recip_or_one::<F>(ss);
    let inv_st = recip_or_one::<F>(st);
    let ln_ss = ln_or_zero::<F>(ss);
    let ln_st = ln_or_zero::<F>(st);
    let mut cs = sc[SC_COEF_SOFT] * w * sc[SC_SOFT_SCALE] * inv_t;
    // An empty teacher (all -inf values): no terms, a zero gradient (forward KL's convention).
    if st == zero {
        cs = zero;
    }

    // Pass 2: c·q over the row.
    if write_grad {
        let mut i = u;
        while i < v {
            let sv = load::<E, F>(student, base + i, point_s, neg_inf);
            let mut g = cs * F::exp((sv - ms) * inv_t) * inv_ss;
            if point_s {
                if F::cast_from(student[base + i]) == pos_inf {
                    g = zero;
                }
            }
            grad[base + i] = E::cast_from(g);
            i += step;
        }
    }

    // Pass 3: the k ids, each by the unit that owns its column.
    let mut acc = zero;
    let mut j = 0usize;
    while j < k {
        let id = u32::cast_from(indices[kbase + j]) as usize;
        if id % step == u {
            let tv = load::<E, F>(values, kbase + j, point_t, neg_inf);
            let sv = load::<E, F>(student, base + id, point_s, neg_inf);
            let (lp, pt) = log_prob::<F>(tv, mt, inv_t, ln_st, inv_st);
            let lq = (sv - ms) * inv_t - ln_ss;
            if pt == zero {
            } else {
                acc += pt * (lp - lq);
            }
            if write_grad {
                let mut g = F::cast_from(grad[base + id]) - cs * pt;
                if point_s {
                    if F::cast_from(student[base + id]) == pos_inf {
                        g = zero;
                    }
                }
                grad[base + id] = E::cast_from(g);
            }
        }
        j += 1;
    }
    let div = block_sum::<F>(&mut shared, acc);
    if u == 0 {
        let mut value = div;
        if st == zero {
            value = zero;
        }
        rows_out[r] = w * sc[SC_SOFT_SCALE] * value;
    }
}

/// `grad · c` in place, `c = upstream[0]` read on the device: every cube leaves at once when
/// `c = 1` (the usual `loss.backward()`), so that case costs a launch and no memory traffic, and
/// no case reads `c` on the host.
#[cube(launch)]
fn scale_by_upstream_kernel<E: Float, U: Float>(
    grad: &mut Tensor<E>,
    upstream: &Tensor<U>,
    #[define(E, U)] _dtypes: [ElemType; 2],
) {
    let c = f32::cast_from(upstream[0]);
    if c == 1.0 {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    if i < grad.len() {
        grad[i] = E::cast_from(f32::cast_from(grad[i]) * c);
    }
}

/// `[α·S + β·H, S, H]` (`f32`) from the per-row values: one cube, no host round-trip.
#[cube(launch)]
fn reduce_rows_kernel<F: Float>(
    rows_out: &Tensor<F>, // [2R]
    out: &mut Tensor<F>,  // [3]
    ab: &Tensor<F>,       // [2]: α, β
    #[comptime] units: u32,
    #[define(F)] _dtype: ElemType,
) {
    let rows = rows_out.shape(0) / 2;
    let u = UNIT_POS_X as usize;
    let mut shared = Shared::<[F]>::new_slice(units as usize);
    let mut soft = F::new(0.0);
    let mut hard = F::new(0.0);
    let mut i = u;
    while i < rows {
        soft += rows_out[i];
        hard += rows_out[rows + i];
        i += CUBE_DIM_X as usize;
    }
    let soft = block_sum::<F>(&mut shared, soft);
    let hard = block_sum::<F>(&mut shared, hard);
    if u == 0 {
        out[0] = ab[0] * soft + ab[1] * hard;
        out[1] = soft;
        out[2] = hard;
    }
}

type CubeFloat = FloatTensor<CubeBackend>;

/// The launch scalars (`[SCALARS]`, see [`SC_INV_T`] and the following) and comptime kind of `p`.
fn scalars(p: &KernelParams) -> (Vec<f32>, u32) {
    let (kind, (share_p, coef_p, coef_q)) = match p.kind {
        SoftKind::ForwardKl => (KIND_FORWARD, (0.0, 1.0, 0.0)),
        SoftKind::ReverseKl => (KIND_REVERSE, (1.0, 0.0, 1.0)),
        SoftKind::Mixture {
            teacher_share,
            teacher_coef,
            student_coef,
        } => (KIND_MIXTURE, (teacher_share, teacher_coef, student_coef)),
        SoftKind::TotalVariation => (KIND_TVD, (0.0, 0.0, 0.0)),
        SoftKind::SymmetricKl => (KIND_SYMMETRIC, (0.0, 0.0, 0.0)),
    };
    let share_q = 1.0 - share_p;
    let mut s = vec![0.0f32; SCALARS];
    s[SC_INV_T] = 1.0 / p.temperature;
    s[SC_SOFT_SCALE] = p.soft_scale;
    s[SC_SMOOTHING] = p.smoothing;
    s[SC_COEF_SOFT] = p.grad_soft;
    s[SC_COEF_HARD] = p.grad_hard;
    s[SC_SHARE_Q] = share_q;
    s[SC_LN_SHARE_P] = share_p.ln();
    s[SC_LN_SHARE_Q] = share_q.ln();
    s[SC_COEF_P] = coef_p;
    s[SC_COEF_Q] = coef_q;
    s[SC_NEG_INF] = f32::NEG_INFINITY;
    (s, kind)
}

/// An `f32` tensor of `values` on `device`.
fn host_f32(values: Vec<f32>, device: &burn_cubecl::CubeDevice) -> CubeFloat {
    let n = values.len();
    CubeBackend::float_from_data(burn::tensor::TensorData::new(values, [n]), device)
}

/// What both row kernels write: per-row values `[2R]` (`f32`), the gradient `[R, V]` in the
/// student's dtype (or `[1, 1]` when none is written), and the launch shape.
struct RowOutputs {
    client: cubecl::client::Client,
    rows_out: CubeFloat,
    grad: CubeFloat,
    rows: usize,
    units: u32,
}

/// Allocates a row kernel's outputs for the contiguous `[R, V]` `student`.
fn row_outputs(student: &CubeFloat, want_grad: bool) -> RowOutputs {
    let [r, v] = student.shape().dims::<2>();
    let (client, device) = (student.client.clone(), student.device.clone());
    let rows_out = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new([2 * r]),
        DType::F32,
    );
    let grad_shape = if want_grad { [r, v] } else { [1, 1] };
    let grad = empty_device_dtype(
        client.clone(),
        device,
        Shape::new(grad_shape),
        student.dtype,
    );
    RowOutputs {
        client,
        rows_out,
        grad,
        rows: r,
        units: if v <= SHORT_ROW { UNITS_SHORT } else { UNITS },
    }
}

/// One cube per row, spread over the grid's dimensions when the rows exceed the per-dimension
/// limit of a dispatch (65 535 on wgpu); extra cubes exit at once.
fn row_cubes(out: &RowOutputs) -> CubeCount {
    cubecl::server::CubeCountSelection::new(&out.client, out.rows as u32).cube_count()
}

/// `[α·S + β·H, S, H]` (`f32`) from a row kernel's values, and its gradient when written.
fn finish_rows(
    out: RowOutputs,
    alpha: f32,
    beta: f32,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let device = out.rows_out.device.clone();
    let values = empty_device_dtype(
        out.client.clone(),
        device.clone(),
        Shape::new([3]),
        DType::F32,
    );
    reduce_rows_kernel::launch(
        &out.client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(UNITS),
        out.rows_out.into_tensor_arg(),
        values.clone().into_tensor_arg(),
        host_f32(vec![alpha, beta], &device).into_tensor_arg(),
        UNITS,
        dtype_to_storage_type(DType::F32),
    );
    (values, want_grad.then_some(out.grad))
}

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
    let out = row_outputs(&student, want_grad);
    let (sc, kind) = scalars(&p);
    let sc = host_f32(sc, &student.device);
    let dtypes = [
        dtype_to_storage_type(student.dtype),
        dtype_to_storage_type(DType::F32),
        dtype_to_storage_type(labels.dtype),
    ];
    if out.rows > 0 {
        kd_rows_kernel::launch(
            &out.client,
            row_cubes(&out),
            CubeDim::new_1d(out.units),
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            labels.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.rows_out.clone().into_tensor_arg(),
            out.grad.clone().into_tensor_arg(),
            sc.into_tensor_arg(),
            out.units,
            kind,
            p.has_hard,
            p.has_hard && p.temperature != 1.0,
            want_grad,
            dtypes,
        );
    }
    finish_rows(out, p.alpha, p.beta, want_grad)
}

fn run_sparse(
    student: CubeFloat,
    indices: IntTensor<CubeBackend>,
    values: CubeFloat,
    weights: CubeFloat,
    p: KernelParams,
    want_grad: bool,
) -> (CubeFloat, Option<CubeFloat>) {
    let student = into_contiguous(student);
    let indices = into_contiguous(indices);
    let values = into_contiguous(values);
    let weights = into_contiguous(weights);
    let out = row_outputs(&student, want_grad);
    let sc = host_f32(scalars(&p).0, &student.device);
    let dtypes = [
        dtype_to_storage_type(student.dtype),
        dtype_to_storage_type(DType::F32),
        dtype_to_storage_type(indices.dtype),
    ];
    if out.rows > 0 {
        kd_sparse_kernel::launch(
            &out.client,
            row_cubes(&out),
            CubeDim::new_1d(out.units),
            student.into_tensor_arg(),
            indices.into_tensor_arg(),
            values.into_tensor_arg(),
            weights.into_tensor_arg(),
            out.rows_out.clone().into_tensor_arg(),
            out.grad.clone().into_tensor_arg(),
            sc.into_tensor_arg(),
            out.units,
            want_grad,
            dtypes,
        );
    }
    finish_rows(out, 1.0, 0.0, want_grad)
}

/// The dtypes this kernel reads on `device`: `f32`, and `f16` / `bf16` where the device's runtime
/// has the type (CUDA and ROCm both; wgpu `f16` with the `shader-f16` feature and never `bf16`:
/// WGSL has no such type, and Burn's fusion can hold a lazily cast `bf16` tensor on wgpu that
/// only a kernel reading it would reveal). `f64` takes the composed path, which computes in `f64`.
fn computes(dtype: DType, device: &burn_cubecl::CubeDevice) -> bool {
    let ty = match dtype {
        DType::F32 => return true,
        DType::F16 => ElemType::Float(cubecl::ir::FloatKind::F16),
        DType::BF16 => ElemType::Float(cubecl::ir::FloatKind::BF16),
        _ => return false,
    };
    device.client().properties().supports_type(ty)
}

impl KernelCaps for CubeBackend {
    fn computes(dtype: DType, _kind: SoftKind, device: &Self::Device) -> bool {
        computes(dtype, device)
    }

    fn computes_sparse(dtype: DType, device: &Self::Device) -> bool {
        computes(dtype, device)
    }
}

// Generic over the fused backend: `CubeBackend` is a `FusionBackend` only when the application's
// Burn has `fusion`, and this impl must compile either way.
impl<B: KernelCaps + burn_fusion::FusionBackend> KernelCaps for burn_fusion::Fusion<B> {
    fn computes(dtype: DType, kind: SoftKind, device: &Self::Device) -> bool {
        B::computes(dtype, kind, device)
    }

    fn computes_sparse(dtype: DType, device: &Self::Device) -> bool {
        B::computes_sparse(dtype, device)
    }
}

/// [`scale_by_upstream_kernel`] on the kept gradient (a copy first if it is shared).
fn scale_by(grad: CubeFloat, upstream: CubeFloat) -> CubeFloat {
    let grad = if grad.can_mut() && grad.is_contiguous() {
        grad
    } else {
        burn_cubecl::kernel::into_contiguous(CubeBackend::float_add_scalar(grad, 0.0.into()))
    };
    let upstream = into_contiguous(upstream);
    let n = grad.shape().num_elements();
    if n > 0 {
        let client = grad.client.clone();
        let cubes = n.div_ceil(UNITS as usize) as u32;
        scale_by_upstream_kernel::launch(
            &client,
            cubecl::server::CubeCountSelection::new(&client, cubes).cube_count(),
            CubeDim::new_1d(UNITS),
            grad.clone().into_tensor_arg(),
            upstream.clone().into_tensor_arg(),
            [
                dtype_to_storage_type(grad.dtype),
                dtype_to_storage_type(upstream.dtype),
            ],
        );
    }
    grad
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
    fn kd_scale_by(grad: FloatTensor<Self>, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        scale_by(grad, upstream)
    }

    fn kd_sparse_values(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> FloatTensor<Self> {
        run_sparse(student, indices, values, weights, params, false).0
    }

    fn kd_sparse_values_grad(
        student: FloatTensor<Self>,
        indices: IntTensor<Self>,
        values: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        params: KernelParams,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, grad) = run_sparse(student, indices, values, weights, params, true);
        (out, grad.expect("gradient requested"))
    }
}

/// The kernel on the plain CubeCL backend (an application's Burn without `fusion`), on wgpu,
/// against a float64 host reference (value; gradient by central differences of it): every
/// divergence kind, with shared `-inf` entries, a `+inf` point mass in both rows and a dropped
/// row. The test suite runs the kernel under Burn's `fusion` (the default) through the public
/// API against the composed path. (No import from the loss modules: `fused` is a leaf.)
#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::ops::IntTensorOps;
    use burn::tensor::TensorData;

    fn host(t: CubeFloat) -> Vec<f32> {
        burn::tensor::try_read_sync(CubeBackend::float_into_data(t))
            .expect("synchronous read")
            .expect("read")
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32")
    }

    /// `softmax(x / T)` in f64, a `+inf` row as its point mass.
    fn softmax(x: &[f32], t: f64) -> Vec<f64> {
        if x.contains(&f32::INFINITY) {
            let n = x.iter().filter(|&&v| v == f32::INFINITY).count() as f64;
            return x
                .iter()
                .map(|&v| if v == f32::INFINITY { 1.0 / n } else { 0.0 })
                .collect();
        }
        let m = x
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
        let e: Vec<f64> = x.iter().map(|&v| ((f64::from(v) - m) / t).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    }

    fn kl(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| a * (a / b).ln())
            .sum()
    }

    /// The divergence of one row in f64, by kind.
    fn divergence(kind: SoftKind, p: &[f64], q: &[f64]) -> f64 {
        match kind {
            SoftKind::ForwardKl => kl(p, q),
            SoftKind::ReverseKl => kl(q, p),
            SoftKind::SymmetricKl => kl(p, q) + kl(q, p),
            SoftKind::TotalVariation => {
                0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
            }
            SoftKind::Mixture {
                teacher_share,
                teacher_coef,
                student_coef,
            } => {
                let w = f64::from(teacher_share);
                let m: Vec<f64> = p
                    .iter()
                    .zip(q)
                    .map(|(a, b)| w * a + (1.0 - w) * b)
                    .collect();
                let mut v = 0.0;
                if teacher_coef != 0.0 {
                    v += f64::from(teacher_coef) * kl(p, &m);
                }
                if student_coef != 0.0 {
                    v += f64::from(student_coef) * kl(q, &m);
                }
                v
            }
        }
    }

    fn reference(kind: SoftKind, s: &[f32], t: &[f32], w: &[f32], v: usize, temp: f64) -> f64 {
        (0..w.len())
            .filter(|&r| w[r] != 0.0)
            .map(|r| {
                let rows = r * v..(r + 1) * v;
                let (p, q) = (softmax(&t[rows.clone()], temp), softmax(&s[rows], temp));
                f64::from(w[r]) * temp * temp * divergence(kind, &p, &q)
            })
            .sum()
    }

    #[test]
    fn plain_cube_backend_matches_f64_for_every_divergence() {
        let dev: burn_cubecl::CubeDevice = cubecl::Device::Wgpu(Default::default());
        let (r, v) = (4usize, 7usize);
        let mut s: Vec<f32> = (0..r * v)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let mut t: Vec<f32> = (0..r * v)
            .map(|i| ((i * 53 % 19) as f32 - 9.0) / 3.0)
            .collect();
        // Shared -inf entries (every divergence stays finite), and a row where both have a +inf
        // point mass.
        for i in [3, v + 2, v + 6] {
            s[i] = f32::NEG_INFINITY;
            t[i] = f32::NEG_INFINITY;
        }
        s[2 * v + 5] = f32::INFINITY;
        t[2 * v + 5] = f32::INFINITY;
        let weights = vec![1.0f32, 0.5, 2.0, 0.0];
        let mixture = |w: f32, a: f32, b: f32| SoftKind::Mixture {
            teacher_share: w,
            teacher_coef: a,
            student_coef: b,
        };
        let kinds = [
            SoftKind::ForwardKl,
            SoftKind::ReverseKl,
            mixture(0.5, 0.5, 0.5),
            mixture(0.2, 0.8, 0.2),
            mixture(0.1, 1.0, 0.0),
            mixture(0.7, 0.0, 1.0),
            SoftKind::TotalVariation,
            SoftKind::SymmetricKl,
        ];
        let temp = 1.5f32;
        for kind in kinds {
            let cube = |x: &[f32], shape: Vec<usize>| {
                CubeBackend::float_from_data(TensorData::new(x.to_vec(), shape), &dev)
            };
            let labels = CubeBackend::int_from_data(TensorData::new(vec![0i32; r], [r]), &dev);
            let p = KernelParams {
                kind,
                temperature: temp,
                soft_scale: temp * temp,
                has_hard: false,
                smoothing: 0.0,
                alpha: 1.0,
                beta: 0.0,
                grad_soft: 1.0,
                grad_hard: 0.0,
            };
            let (values, grad) = <CubeBackend as KdFusedBackend>::kd_fused_values_grad(
                cube(&s, vec![r, v]),
                cube(&t, vec![r, v]),
                labels,
                cube(&weights, vec![r]),
                p,
            );
            let (values, grad) = (host(values), host(grad));
            let f = |x: &[f32]| reference(kind, x, &t, &weights, v, f64::from(temp));
            let want = f(&s);
            assert!(
                (f64::from(values[1]) - want).abs() <= 2e-5 * want.abs().max(1.0),
                "{kind:?}: plain CubeCL {} vs f64 {want}",
                values[1]
            );
            assert_eq!(values[0], values[1], "{kind:?}: total = α·soft");
            // Central differences of the f64 reference (a finite entry moved by ±h).
            let h = 1e-3f32;
            let fd: Vec<f64> = (0..r * v)
                .map(|i| {
                    if !s[i].is_finite() {
                        return 0.0;
                    }
                    let (mut a, mut b) = (s.clone(), s.clone());
                    a[i] += h;
                    b[i] -= h;
                    (f(&a) - f(&b)) / (f64::from(a[i]) - f64::from(b[i]))
                })
                .collect();
            let scale = fd.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (i, (a, b)) in grad.iter().zip(&fd).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() <= 1e-4 * scale.max(1e-3),
                    "{kind:?}: grad[{i}] plain CubeCL {a} vs f64 differences {b}"
                );
            }
        }
    }
}
