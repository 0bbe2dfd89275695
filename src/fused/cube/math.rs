//! Device math shared by the row kernels: block reductions in shared memory, the guarded
//! logarithms and reciprocals, the cancellation-free `φ(d)/d²`, the online maximum and sum of a
//! row, the scalar slots of the launch, and each entry's `(q, g)` for every divergence.

use super::*;

#[cube]
pub(super) fn block_max<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
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
pub(super) fn block_sum<F: Float>(shared: &mut Shared<[F]>, value: F) -> F {
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
pub(super) fn ln_or_zero<F: Float>(s: F) -> F {
    let mut out = F::ln(s);
    if s == F::new(0.0) {
        out = F::new(0.0);
    }
    out
}

#[cube]
pub(super) fn recip_or_one<F: Float>(s: F) -> F {
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
pub(super) fn log1p_f<F: Float>(x: F) -> F {
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
pub(super) fn log_add_exp<F: Float>(a: F, b: F, neg_inf: F) -> F {
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
pub(super) fn phi_over_d2<F: Float>(d: F) -> F {
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
pub(super) fn phi_term<F: Float>(a: F, b: F, d: F) -> F {
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
pub(super) fn load<E: Float, F: Float>(x: &Tensor<E>, i: usize, point: bool, neg_inf: F) -> F {
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
pub(super) fn count_pos_inf<E: Float, F: Float>(
    x: &Tensor<E>,
    base: usize,
    v: usize,
    pos_inf: F,
) -> F {
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
pub(super) fn log_prob<F: Float>(x: F, m: F, inv_t: F, ln_s: F, inv_s: F) -> (F, F) {
    let l = (x - m) * inv_t;
    (l - ln_s, F::exp(l) * inv_s)
}

/// This unit's running maximum of `x[base + i]` (`i < len`, every `CUBE_DIM_X`-th entry from
/// the unit's position) and `Σ exp((x − m)/T)`, rescaled when the maximum grows: `-inf` entries
/// add nothing, NaN reaches the sum (`x > m` and `x == -inf` are both false for it).
#[cube]
pub(super) fn unit_max_sum<E: Float, F: Float>(
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
pub(super) fn row_max_sum<E: Float, F: Float>(
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
pub(super) fn hard_grad<F: Float>(
    x1: F,
    inv_s1: F,
    smooth_c: F,
    eps: F,
    ch: F,
    is_label: bool,
) -> F {
    let mut g = ch * (F::exp(x1) * inv_s1 - smooth_c);
    if is_label {
        g -= ch * (F::new(1.0) - eps);
    }
    g
}

/// The launch's scalars, read from a small `f32` tensor (`[SCALARS]`) rather than passed as
/// launch scalars: the kernel is generic over its input dtype, and a tensor reads the same on
/// every runtime.
pub(super) const SCALARS: usize = 12;
pub(super) const SC_INV_T: usize = 0;
pub(super) const SC_SOFT_SCALE: usize = 1;
pub(super) const SC_SMOOTHING: usize = 2;
pub(super) const SC_COEF_SOFT: usize = 3;
pub(super) const SC_COEF_HARD: usize = 4;
/// `1 − w`, `ln w`, `ln(1 − w)` of the mixture `m = w·p + (1 − w)·q`.
pub(super) const SC_SHARE_Q: usize = 5;
pub(super) const SC_LN_SHARE_P: usize = 6;
pub(super) const SC_LN_SHARE_Q: usize = 7;
/// Factors of `KL(p ‖ m)` and `KL(q ‖ m)`.
pub(super) const SC_COEF_P: usize = 8;
pub(super) const SC_COEF_Q: usize = 9;
/// `-inf` (WGSL has no infinite literals), `α`, `β` of the total.
pub(super) const SC_NEG_INF: usize = 10;

/// `q·g` at one entry (`g = ∂D/∂q`, up to a constant that cancels) for the kinds other than
/// forward KL (`kind` is comptime): `lp`, `lq` are the log-probabilities, `pt`, `qs` the
/// probabilities, `lm` the log-mixture (mixture kind only).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn entry_qg<F: Float>(
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
pub(super) fn log_mixture<F: Float>(
    lp: F,
    lq: F,
    sc: &Tensor<F>,
    neg_inf: F,
    #[comptime] kind: u32,
) -> F {
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
pub(super) fn refined_kl<F: Float>(d1: F, d2: F, first_empty: bool, neg_inf: F) -> F {
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
