//! One row of the fused logit kernel: maxima, exponentials and sums, value and gradient (the
//! passes are in [`passes`](super::passes)), and the cancellation-free refinement of the
//! divergence value.
//!
//! Longer than the crate's other files because it is one algorithm: the passes over a row share
//! their running sums and the branches for the degenerate rows (`-inf`, `+inf`, NaN).

use super::super::simd::{LANES, Lanes};
use super::passes::*;
use super::{KernelParams, SoftKind};

/// One row. `grad`, when given, receives
/// `w · (grad_soft · ∂soft_r/∂s + grad_hard · ∂hard_r/∂s)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn row<L: Lanes>(
    l: L,
    s: &[f32],
    t: &[f32],
    maxima: (f32, f32),
    next: Option<(&[f32], &[f32])>,
    label: i64,
    w: f32,
    p: &KernelParams,
    int_pow: u32,
    scratch: &mut Scratch,
    grad: Option<&mut [f32]>,
) -> (RowValues, (f32, f32)) {
    let v = s.len();
    if w == 0.0 {
        if let Some(g) = grad {
            g.fill(0.0);
        }
        let next_max = next.map_or((0.0, 0.0), |(ns, nt)| row_maxima(l, ns, nt));
        return (RowValues::default(), next_max);
    }
    // A +inf logit is a point mass (the composed path's convention): the row becomes 0 at its
    // +inf entries and -inf elsewhere, and the student's +inf entries get a zero gradient.
    let student_inf = maxima.0 == f32::INFINITY;
    let s_orig = s;
    let fixed;
    let (s, t, maxima) = if student_inf || maxima.1 == f32::INFINITY {
        let point = |x: &[f32], m: f32| -> Vec<f32> {
            if m == f32::INFINITY {
                x.iter()
                    .map(|&v| {
                        if v == f32::INFINITY {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect()
            } else {
                x.to_vec()
            }
        };
        let fin = |m: f32| if m == f32::INFINITY { 0.0 } else { m };
        fixed = (point(s, maxima.0), point(t, maxima.1));
        (&fixed.0[..], &fixed.1[..], (fin(maxima.0), fin(maxima.1)))
    } else {
        (s, t, maxima)
    };
    let inv_t = 1.0 / p.temperature;
    let hard = p.has_hard;
    let same_t = p.temperature == 1.0;
    let need_e1 = hard && !same_t;
    let smooth = hard && p.smoothing != 0.0;
    let tail = v - v % LANES;

    // Pass A (row maxima) ran ahead: for the first row of a block in `rows_block`, for the others
    // inside the previous row's pass B, so that reading this row from memory overlaps with the
    // previous row's arithmetic.
    let (mut ms, mut mt) = maxima;
    // An all -inf row is an empty distribution; shifting by 0 keeps it -inf instead of NaN
    // (the composed path's convention).
    if ms == f32::NEG_INFINITY {
        ms = 0.0;
    }
    if mt == f32::NEG_INFINITY {
        mt = 0.0;
    }

    // Pass B: exponentials into scratch (padded to whole blocks), their sums.
    let vp = v.div_ceil(LANES) * LANES;
    scratch.et.resize(vp, 0.0);
    scratch.es.resize(vp, 0.0);
    scratch.e1.resize(if need_e1 { vp } else { LANES }, 0.0);
    let (et, es, e1s) = (
        &mut scratch.et[..vp],
        &mut scratch.es[..vp],
        &mut scratch.e1[..],
    );
    let zero = l.splat(0.0);
    let mut acc = [zero; 3];
    let logits = RowLogits::new(s, t);
    let pass_b = PassBRow::<L> {
        need_e1,
        shift: RowShift::new(l, inv_t, mt, ms),
        int_pow,
    };
    let nb = vp / LANES;
    let mut nms = l.splat(f32::NEG_INFINITY);
    let mut nmt = nms;
    for b in 0..nb {
        if let Some((ns, nt)) = next
            && b * LANES < tail
        {
            nms = l.gt_max(nms, l.load(blk(&ns[b * LANES..b * LANES + LANES])));
            nmt = l.gt_max(nmt, l.load(blk(&nt[b * LANES..b * LANES + LANES])));
        }
        let scratch_rows = (&mut et[..], &mut es[..], &mut e1s[..]);
        pass_b_at(l, b, &logits, &pass_b, scratch_rows, &mut acc);
    }
    let next_max = next.map_or((0.0, 0.0), |(ns, nt)| {
        finish_maxima(l, nms, nmt, &ns[tail..], &nt[tail..])
    });
    let (st, ss, mut s1) = (l.hsum(acc[0]), l.hsum(acc[1]), l.hsum(acc[2]));
    // The padding is -inf; only real entries count in the sum of logits.
    let sum_s = if smooth { s.iter().sum::<f32>() } else { 0.0 };
    if hard && same_t {
        s1 = ss;
    }
    let e1: &[f32] = if need_e1 { &e1s[..vp] } else { &es[..] };

    let (ln_st, ln_ss) = (ln_or_zero(st), ln_or_zero(ss));
    let (inv_st, inv_ss, inv_s1) = (recip_or_one(st), recip_or_one(ss), recip_or_one(s1));
    // The first distribution of the divergence empty (an all -inf row): no terms, the row
    // contributes 0 with a zero gradient (0 · log 0 = 0, as composed).
    let first_empty = match p.kind {
        SoftKind::ForwardKl => st == 0.0,
        SoftKind::ReverseKl => ss == 0.0,
        other => unreachable!("the CPU kernel computes the KL directions, not {other:?}"),
    };
    let coef_s = if first_empty {
        0.0
    } else {
        w * p.grad_soft * p.soft_scale * inv_t
    };
    let coef_h = w * p.grad_hard;
    let smooth_c = p.smoothing / v as f32;
    let kc = PassC::<L> {
        inv_t: l.splat(inv_t),
        c0: l.splat(ln_ss - ln_st),
        mt: l.splat(mt),
        ms: l.splat(ms),
        inv_ss: l.splat(inv_ss),
        inv_s1: l.splat(inv_s1),
        coef_s: l.splat(coef_s),
        coef_h: l.splat(coef_h),
        smooth_c: l.splat(smooth_c),
        ga: l.splat(coef_s * inv_ss),
        gb: l.splat(-coef_s * inv_st),
        gc: l.splat(coef_h * inv_s1),
        gd: l.splat(-coef_h * smooth_c),
    };

    // Pass C: the divergence (and, for forward KL, the gradient in the same pass). Tail blocks
    // use the padded copies; their gradient goes to a block buffer copied back.
    let mut dacc = zero;
    let mut gtail = [0.0f32; LANES];
    let mut grad = grad;
    for b in 0..nb {
        let (sb, tb) = logits.block(l, b);
        let esb = l.load(blk(&es[b * LANES..b * LANES + LANES]));
        match p.kind {
            SoftKind::ForwardKl => {
                let etb = l.load(blk(&et[b * LANES..b * LANES + LANES]));
                let e1b = l.load(blk(&e1[b * LANES..b * LANES + LANES]));
                match grad.as_deref_mut() {
                    Some(g) => {
                        let gb = grad_block(g, &mut gtail, b, tail);
                        if hard {
                            pass_c_fwd_block::<L, true, true>(
                                l, sb, tb, etb, esb, e1b, gb, &mut dacc, &kc,
                            );
                        } else {
                            pass_c_fwd_block::<L, true, false>(
                                l, sb, tb, etb, esb, e1b, gb, &mut dacc, &kc,
                            );
                        }
                    }
                    None => pass_c_fwd_block::<L, false, false>(
                        l, sb, tb, etb, esb, e1b, &mut gtail, &mut dacc, &kc,
                    ),
                }
            }
            SoftKind::ReverseKl => pass_c_rev_block(l, sb, tb, esb, &mut dacc, &kc),
            other => unreachable!("the CPU kernel computes the KL directions, not {other:?}"),
        }
    }
    let div = if p.kind == SoftKind::ForwardKl {
        l.hsum(dacc) * inv_st
    } else {
        l.hsum(dacc)
    };
    let c0 = ln_ss - ln_st;
    // A soft scale of 0 (the cross-entropy alone, whose teacher is the student): the value
    // weighs nothing, so it is not refined (every row of a zero divergence would be).
    let value = if first_empty || p.soft_scale == 0.0 {
        0.0
    } else {
        refine_divergence(
            p.kind,
            s,
            t,
            &et[..v],
            &es[..v],
            (st, ss),
            inv_t,
            (mt, ms, c0),
            div,
            REFINE_FACTOR * (ln_ss.abs() + ln_st.abs() + ((ms - mt) * inv_t).abs()),
        )
    };

    // Pass D (reverse KL only): ∂/∂s_j = q_j (log q_j − log p_j − D) / T.
    if let (Some(g), SoftKind::ReverseKl) = (grad.as_deref_mut(), p.kind) {
        let neg_div = l.splat(-div);
        for b in 0..nb {
            let (sb, tb) = logits.block(l, b);
            let esb = l.load(blk(&es[b * LANES..b * LANES + LANES]));
            let e1b = l.load(blk(&e1[b * LANES..b * LANES + LANES]));
            let gb = grad_block(g, &mut gtail, b, tail);
            if hard {
                pass_d_block::<L, true>(l, sb, tb, esb, e1b, gb, neg_div, &kc);
            } else {
                pass_d_block::<L, false>(l, sb, tb, esb, e1b, gb, neg_div, &kc);
            }
        }
    }
    if let Some(g) = grad.as_deref_mut() {
        g[tail..].copy_from_slice(&gtail[..v - tail]);
    }

    let mut out = RowValues {
        soft: f64::from(w) * f64::from(p.soft_scale) * value,
        hard: 0.0,
    };
    if hard {
        let y = label as usize;
        let lse1 = ln_or_zero(s1); // relative to ms
        let nll = lse1 - (s[y] - ms);
        let mut ce = (1.0 - p.smoothing) * nll;
        if p.smoothing != 0.0 {
            ce += p.smoothing * (lse1 + ms - sum_s / v as f32);
        }
        out.hard = f64::from(w) * f64::from(ce);
        if let Some(g) = grad.as_deref_mut() {
            g[y] -= coef_h * (1.0 - p.smoothing);
        }
    }
    if student_inf && let Some(g) = grad {
        // The +inf entries are saturated: no gradient (as composed, where they are selected).
        for (g, &x) in g.iter_mut().zip(s_orig) {
            if x == f32::INFINITY {
                *g = 0.0;
            }
        }
    }
    (out, next_max)
}

/// `φ(d) / d² = (e^{−d} − 1 + d) / d²` by its Taylor series, for `|d| ≤ ½` (relative error
/// below 3e-9).
#[inline(always)]
pub(super) fn phi_over_d2(d: f64) -> f64 {
    crate::numerics::PHI_OVER_D2_TAYLOR
        .iter()
        .rev()
        .fold(0.0, |h, &c| h * d + c)
}

/// Rows whose divergence is below `REFINE_FACTOR · |c0 terms|` are refined by
/// [`refine_divergence`]: above it, the rounding of the log-normalisers (~2 ulp of
/// `|ln S_s| + |ln S_t| + |m_s − m_t|/T`) is below 5e-5 relative.
pub(super) const REFINE_FACTOR: f32 = 2.0e4 * 2.0 * f32::EPSILON;

/// The row's divergence `D1 = Σ a (log a − log b)` (`a` the first distribution: the teacher for
/// forward KL, the student for reverse KL) corrected for the rounding `δ` of its
/// log-normalisers, which the plain sum carries in full (`δ ≈ 1e-7 · log V`: more than the whole
/// KL at high temperatures, where `KL ~ 1/T²`, and enough to make it negative):
///
/// ```text
/// KL = D1 + log1p(D2 − D1),   D2 = Σ_{a>0} a·φ(d) + Σ_{a=0} b,   φ(d) = e^{−d} − 1 + d ≥ 0
/// ```
/// exact in exact arithmetic and insensitive to `δ` to first order (the composed path computes
/// the same). Only rows with a small, finite `D1` (below `refine_below`) pay this extra pass (from cache, in `f64`);
/// a value left slightly negative by rounding (within 4 ulp of its parts) is lifted to 0.
#[allow(clippy::too_many_arguments)]
pub(super) fn refine_divergence(
    kind: SoftKind,
    s: &[f32],
    t: &[f32],
    et: &[f32],
    es: &[f32],
    (st, ss): (f32, f32),
    inv_t: f32,
    (mt, ms, c0): (f32, f32, f32),
    d1: f32,
    refine_below: f32,
) -> f64 {
    if !(d1.is_finite() && d1 < refine_below) {
        return f64::from(d1);
    }
    // log a − log b = sign · (((t − m_t) − (s − m_s))/T + c0), in the kernel's own f32
    // rounding (as `passes::log_ratio`).
    let (ea, eb, sa, sb, sign) = match kind {
        SoftKind::ForwardKl => (et, es, st, ss, 1.0f64),
        SoftKind::ReverseKl => (es, et, ss, st, -1.0f64),
        other => unreachable!("the CPU kernel computes the KL directions, not {other:?}"),
    };
    let (inv_sa, inv_sb) = (1.0 / f64::from(sa), 1.0 / f64::from(sb));
    let (mut sum_d, mut sum_phi) = (0.0f64, 0.0f64);
    for i in 0..s.len() {
        let b = f64::from(eb[i]) * inv_sb;
        if ea[i] == 0.0 {
            sum_phi += b;
            continue;
        }
        let a = f64::from(ea[i]) * inv_sa;
        let d = sign * f64::from(((t[i] - mt) - (s[i] - ms)) * inv_t + c0);
        sum_d += a * d;
        sum_phi += if d.abs() <= 0.5 {
            a * d * d * phi_over_d2(d)
        } else {
            b - a + a * d
        };
    }
    if !sum_d.is_finite() {
        return sum_d;
    }
    let corr = (sum_phi - sum_d).ln_1p();
    let kl = sum_d + corr;
    let tol = 4.0 * f64::from(f32::EPSILON) * (sum_d.abs() + corr.abs());
    if kl < 0.0 && kl >= -tol { 0.0 } else { kl }
}
