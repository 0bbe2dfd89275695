//! One row of the CPU kernel for the divergences other than the two KLs (generalized JSD, skew
//! KL / RKL, TVD, symmetric KL): the same algorithm as the CubeCL kernel (`fused/cube.rs`),
//! vectorised over blocks of [`LANES`] like the KL row, `f32` per entry, lane sums folded into
//! `f64` every [`CHUNK`] blocks.
//!
//! Passes over the row (from cache after the first): maxima; exponentials and their sums (the
//! KL row's pass B); the divergence as sums of KL terms — `a` for the KLs whose first
//! distribution is the teacher's, `b` for the student's, each with its cancellation-free
//! companion sum — and `G = Σ q·∂D/∂q`, with `q·∂D/∂q` kept per entry; the gradient
//! `∂D/∂s_j = (q_j g_j − q_j G) / T` (plus the hard term), written once. A block where the
//! mixture `m` of some entry is not a normal number above `1e-30` (both probabilities
//! underflowing, `-inf` logits, NaN) takes the scalar entry code of [`entry`], in log space.

use super::super::simd::{Block, LANES, Lanes};
use super::passes::{
    PassBRow, RowLogits, RowShift, RowValues, Scratch, blk, blk_mut, grad_block, ln_or_zero,
    pass_b_at, recip_or_one, row_maxima,
};
use super::row::REFINE_FACTOR;
use super::{KernelParams, SoftKind};
use crate::numerics::PHI_OVER_D2_TAYLOR;
use entry::{mixture_block_scalar, refined};

mod entry;

/// Blocks whose `f32` lane sums are folded into the row's `f64` sums at a time.
const CHUNK: usize = 64;

/// The row as its point mass when its maximum is `+inf` (0 there, `-inf` elsewhere), else as is.
fn point_mass(x: &[f32], max: f32) -> std::borrow::Cow<'_, [f32]> {
    if max == f32::INFINITY {
        let p = x
            .iter()
            .map(|&v| {
                if v == f32::INFINITY {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        std::borrow::Cow::Owned(p)
    } else {
        std::borrow::Cow::Borrowed(x)
    }
}

/// The row's constants, splatted, and the divergence's parameters.
struct Consts<L: Lanes> {
    inv_t: L::V,
    mt: L::V,
    ms: L::V,
    ln_st: L::V,
    ln_ss: L::V,
    inv_st: L::V,
    inv_ss: L::V,
    /// The mixture's `w` and `1 − w`, and `ln w`, `ln(1 − w)` for the scalar fallback.
    share: (L::V, L::V),
    ln_share: (f32, f32),
    /// `a`, `b` (the factors of the two KLs to the mixture) and `1 − w`.
    coefs: (L::V, L::V, L::V),
}

/// The row's running sums: `[a_d1, a_d2, b_d1, b_d2, G]` in `f32` lanes, folded into `f64`.
struct Sums<L: Lanes> {
    lanes: [L::V; 5],
    total: [f64; 5],
}

impl<L: Lanes> Sums<L> {
    fn fold(&mut self, l: L) {
        for (t, v) in self.total.iter_mut().zip(self.lanes.iter_mut()) {
            *t += f64::from(l.hsum(*v));
            *v = l.splat(0.0);
        }
    }
}

/// Adds one KL's terms: `D1 += a·d` where `a ≠ 0`, and with `D2` its cancellation-free
/// companion `D2 += a·φ(d)` (`φ(d) = e^{−d} − 1 + d`, by its Taylor series for `|d| ≤ ½`, as
/// `b − a + a·d` beyond) or `b` where `a = 0`.
#[inline(always)]
fn kl_terms<L: Lanes, const D2: bool>(
    l: L,
    a: L::V,
    d: L::V,
    b: L::V,
    d1: &mut L::V,
    d2: &mut L::V,
) {
    *d1 = l.add(*d1, l.where_nonzero(a, l.mul(a, d)));
    if !D2 {
        return;
    }
    let mut p = l.splat(PHI_OVER_D2_TAYLOR[PHI_OVER_D2_TAYLOR.len() - 1] as f32);
    for &c in PHI_OVER_D2_TAYLOR.iter().rev().skip(1) {
        p = l.fmadd(p, d, l.splat(c as f32));
    }
    let small = l.mul(l.mul(a, l.mul(d, d)), p);
    let large = l.fmadd(a, d, l.sub(b, a));
    let abs_d = l.gt_max(d, l.sub(l.splat(0.0), d));
    let phi = l.select_lt(abs_d, l.splat(0.500_000_06), small, large);
    *d2 = l.add(*d2, l.select_zero(a, b, phi));
}

/// The value pass over one block: the divergence's sums, and `q·∂D/∂q` per entry into `qg` and
/// its sum (with `QG`), and the companion sums `D2` (with `D2`: rows whose value is small).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn value_block<L: Lanes, const D2: bool, const QG: bool>(
    l: L,
    kind: SoftKind,
    s: L::V,
    t: L::V,
    et: L::V,
    es: L::V,
    k: &Consts<L>,
    sums: &mut Sums<L>,
    qg: &mut Block,
) {
    let lp = l.sub(l.mul(l.sub(t, k.mt), k.inv_t), k.ln_st);
    let lq = l.sub(l.mul(l.sub(s, k.ms), k.inv_t), k.ln_ss);
    let pt = l.mul(et, k.inv_st);
    let qs = l.mul(es, k.inv_ss);
    let zero = l.splat(0.0);
    let m = if let SoftKind::Mixture { .. } = kind {
        let m = l.fmadd(k.share.0, pt, l.mul(k.share.1, qs));
        if !l.all_gt(m, 1e-30) {
            return mixture_block_scalar(l, kind, (lp, lq, pt, qs), k, sums, qg);
        }
        m
    } else {
        zero
    };
    let [a_d1, a_d2, b_d1, b_d2, g] = &mut sums.lanes;
    let q_g = match kind {
        SoftKind::TotalVariation => {
            let diff = l.sub(pt, qs);
            let abs = l.gt_max(diff, l.sub(zero, diff));
            *a_d1 = l.fmadd(abs, l.splat(0.5), *a_d1);
            let half_q = l.mul(qs, l.splat(0.5));
            let below = l.select_lt(qs, pt, l.sub(zero, half_q), zero);
            l.select_lt(pt, qs, half_q, below)
        }
        SoftKind::SymmetricKl => {
            let d = l.sub(lp, lq);
            let neg_d = l.sub(zero, d);
            kl_terms::<L, D2>(l, pt, d, qs, a_d1, a_d2);
            kl_terms::<L, D2>(l, qs, neg_d, pt, b_d1, b_d2);
            if !QG {
                return;
            }
            l.sub(l.where_nonzero(qs, l.mul(qs, neg_d)), pt)
        }
        SoftKind::Mixture { .. } => {
            let lm = l.ln_normal(m);
            let (cp, cq, w1) = k.coefs;
            kl_terms::<L, D2>(l, pt, l.sub(lp, lm), m, a_d1, a_d2);
            kl_terms::<L, D2>(l, qs, l.sub(lq, lm), m, b_d1, b_d2);
            if !QG {
                return;
            }
            let rq = l.div(qs, m);
            let own = l.mul(l.mul(cq, qs), l.sub(lq, lm));
            let mix = l.mul(l.mul(w1, rq), l.fmadd(cp, pt, l.mul(cq, qs)));
            l.where_nonzero(qs, l.sub(own, mix))
        }
        SoftKind::ForwardKl | SoftKind::ReverseKl => {
            unreachable!("the KL directions run row::row")
        }
    };
    *g = l.add(*g, q_g);
    l.store(qg, q_g);
}

/// One row's logits (the tail block padded) and exponentials.
struct Row<'a> {
    logits: &'a RowLogits<'a>,
    et: &'a [f32],
    es: &'a [f32],
}

/// [`value_block`] over the row: its sums `[a_d1, a_d2, b_d1, b_d2, G]`. A function, not a
/// closure: a closure would not inherit the caller's `target_feature` (AVX2), and the lane
/// operations would not inline into it.
#[inline(always)]
fn value_pass<L: Lanes, const D2: bool, const QG: bool>(
    l: L,
    kind: SoftKind,
    row: &Row<'_>,
    k: &Consts<L>,
    qg: &mut [f32],
) -> [f64; 5] {
    let mut sums = Sums::<L> {
        lanes: [l.splat(0.0); 5],
        total: [0.0; 5],
    };
    let mut spare = [0.0f32; LANES];
    for b in 0..row.et.len() / LANES {
        let (sb, tb) = row.logits.block(l, b);
        let etb = l.load(blk(&row.et[b * LANES..b * LANES + LANES]));
        let esb = l.load(blk(&row.es[b * LANES..b * LANES + LANES]));
        let qgb = if QG {
            blk_mut(&mut qg[b * LANES..b * LANES + LANES])
        } else {
            &mut spare
        };
        value_block::<L, D2, QG>(l, kind, sb, tb, etb, esb, k, &mut sums, qgb);
        if (b + 1) % CHUNK == 0 {
            sums.fold(l);
        }
    }
    sums.fold(l);
    sums.total
}

/// One row of a divergence other than the two KLs (those run `row::row`). `grad`, when given,
/// receives `w · (grad_soft · ∂soft_r/∂s + grad_hard · ∂hard_r/∂s)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn general_row<L: Lanes>(
    l: L,
    s: &[f32],
    t: &[f32],
    label: i64,
    w: f32,
    p: &KernelParams,
    int_pow: u32,
    scratch: &mut Scratch,
    grad: Option<&mut [f32]>,
) -> RowValues {
    let v = s.len();
    if w == 0.0 {
        if let Some(g) = grad {
            g.fill(0.0);
        }
        return RowValues::default();
    }
    let s_orig = s;
    let (ms, mt) = row_maxima(l, s, t);
    let point_s = ms == f32::INFINITY;
    let (s, t) = (point_mass(s, ms), point_mass(t, mt));
    let (s, t) = (&s[..], &t[..]);
    // The maxima of the point masses are 0; an empty (all -inf) row shifts by 0.
    let finite = |m: f32| {
        if m == f32::NEG_INFINITY || m == f32::INFINITY {
            0.0
        } else {
            m
        }
    };
    let (ms, mt) = (finite(ms), finite(mt));
    let inv_t = 1.0 / p.temperature;
    let hard = p.has_hard;
    let need_e1 = hard && p.temperature != 1.0;
    let tail = v - v % LANES;
    let vp = v.div_ceil(LANES) * LANES;
    let nb = vp / LANES;
    let logits = RowLogits::new(s, t);

    // Exponentials and their sums.
    scratch.et.resize(vp, 0.0);
    scratch.es.resize(vp, 0.0);
    scratch.e1.resize(if need_e1 { vp } else { LANES }, 0.0);
    scratch.qg.resize(vp, 0.0);
    let Scratch {
        et,
        es,
        e1,
        qg,
        small_last,
    } = scratch;
    let zero = l.splat(0.0);
    let mut acc = [zero; 3];
    let pass_b = PassBRow::<L> {
        need_e1,
        shift: RowShift::new(l, inv_t, mt, ms),
        int_pow,
    };
    for b in 0..nb {
        let scratch_rows = (&mut et[..], &mut es[..], &mut e1[..]);
        pass_b_at(l, b, &logits, &pass_b, scratch_rows, &mut acc);
    }
    let (st, ss) = (l.hsum(acc[0]), l.hsum(acc[1]));
    let s1 = if need_e1 { l.hsum(acc[2]) } else { ss };
    let (ln_st, ln_ss) = (ln_or_zero(st), ln_or_zero(ss));
    let (inv_st, inv_ss) = (recip_or_one(st), recip_or_one(ss));
    let (share, cp, cq) = match p.kind {
        SoftKind::Mixture {
            teacher_share,
            teacher_coef,
            student_coef,
        } => (teacher_share, teacher_coef, student_coef),
        _ => (0.0, 0.0, 0.0),
    };
    let k = Consts::<L> {
        inv_t: l.splat(inv_t),
        mt: l.splat(mt),
        ms: l.splat(ms),
        ln_st: l.splat(ln_st),
        ln_ss: l.splat(ln_ss),
        inv_st: l.splat(inv_st),
        inv_ss: l.splat(inv_ss),
        share: (l.splat(share), l.splat(1.0 - share)),
        ln_share: (share.ln(), (1.0 - share).ln()),
        coefs: (l.splat(cp), l.splat(cq), l.splat(1.0 - share)),
    };

    // The divergence's sums and q·∂D/∂q per entry.
    let rows = Row {
        logits: &logits,
        et: &et[..],
        es: &es[..],
    };
    // The companion sums `D2` are needed for small values only: computed in the first pass
    // when the previous row of the block needed them (rows of a batch tend to be alike), in a
    // second pass when this one needs them and they were not.
    let predict = *small_last && p.kind != SoftKind::TotalVariation;
    let [a_d1, a_d2, b_d1, b_d2, g_sum] = if predict {
        value_pass::<L, true, true>(l, p.kind, &rows, &k, &mut qg[..])
    } else {
        value_pass::<L, false, true>(l, p.kind, &rows, &k, &mut qg[..])
    };
    let (p_empty, q_empty) = (st == 0.0, ss == 0.0);
    // The KLs' weights: the rounding `δ` of the log-normalisers enters each as `δ` times it.
    let (wa, wb) = match p.kind {
        SoftKind::TotalVariation => (0.0, 0.0),
        SoftKind::SymmetricKl => (1.0, 1.0),
        _ => (f64::from(cp), f64::from(cq)),
    };
    let term = |w: f64, d: f64| if w == 0.0 { 0.0 } else { w * d };
    let raw = term(wa, a_d1) + term(wb, b_d1);
    // As the KL row: a value above `refine_below` carries `δ` at below 5e-5 relative; a smaller
    // one takes a second pass for the companion sums (the mixture's logarithm adds about 1 ulp
    // of `ln V` per entry to `δ`, hence the `+ 1`).
    let refine_below = f64::from(REFINE_FACTOR)
        * f64::from(ln_ss.abs() + ln_st.abs() + ((ms - mt) * inv_t).abs() + 1.0)
        * (wa + wb);
    // With one side empty (an all `-inf` row) the mixture sums to `w` or `1 − w`, not 1, and the
    // refined form `D1 + log1p(D2 − D1)` is the composed path's convention (the KL against the
    // renormalised mixture), not the plain sum.
    let small = (raw.is_finite() && raw < refine_below) || p_empty || q_empty;
    *small_last = small;
    let value = if p.kind == SoftKind::TotalVariation {
        a_d1
    } else if small {
        let [a_d1, a_d2, b_d1, b_d2, _] = if predict {
            [a_d1, a_d2, b_d1, b_d2, g_sum]
        } else {
            value_pass::<L, true, false>(l, p.kind, &rows, &k, &mut [])
        };
        let mut value = 0.0;
        if wa != 0.0 {
            value += wa * refined(a_d1, a_d2, p_empty);
        }
        if wb != 0.0 {
            value += wb * refined(b_d1, b_d2, q_empty);
        }
        value
    } else {
        raw
    };

    // The gradient: coef_s · (q·g − q·G) where q ≠ 0, plus coef_h · (q₁ − ε/V).
    let inv_s1 = recip_or_one(s1);
    let coef_s = w * p.grad_soft * p.soft_scale * inv_t;
    let coef_h = w * p.grad_hard;
    let smooth_c = p.smoothing / v as f32;
    if let Some(g) = grad {
        let e1: &[f32] = if need_e1 { &e1[..] } else { &es[..] };
        let (cs, gs) = (l.splat(coef_s), l.splat(g_sum as f32));
        let (ch, is1, sc) = (l.splat(coef_h), l.splat(inv_s1), l.splat(smooth_c));
        let mut gtail = [0.0f32; LANES];
        for b in 0..nb {
            let qs = l.mul(l.load(blk(&es[b * LANES..b * LANES + LANES])), k.inv_ss);
            let qgb = l.load(blk(&qg[b * LANES..b * LANES + LANES]));
            let mut val = l.where_nonzero(qs, l.mul(cs, l.sub(qgb, l.mul(qs, gs))));
            if hard {
                let e1b = l.load(blk(&e1[b * LANES..b * LANES + LANES]));
                val = l.add(val, l.mul(ch, l.sub(l.mul(e1b, is1), sc)));
            }
            l.store(grad_block(g, &mut gtail, b, tail), val);
        }
        g[tail..].copy_from_slice(&gtail[..v - tail]);
        if hard {
            g[label as usize] -= coef_h * (1.0 - p.smoothing);
        }
        if point_s {
            // The +inf entries are saturated: no gradient (as composed).
            for (g, &x) in g.iter_mut().zip(s_orig) {
                if x == f32::INFINITY {
                    *g = 0.0;
                }
            }
        }
    }
    let mut out = RowValues {
        soft: f64::from(w) * f64::from(p.soft_scale) * value,
        hard: 0.0,
    };
    if hard {
        let y = label as usize;
        let lse1 = ln_or_zero(s1);
        let mut ce = (1.0 - p.smoothing) * (lse1 - (s[y] - ms));
        if p.smoothing != 0.0 {
            let sum_s = s.iter().map(|&x| f64::from(x)).sum::<f64>() as f32;
            ce += p.smoothing * (lse1 + ms - sum_s / v as f32);
        }
        out.hard = f64::from(w) * f64::from(ce);
    }
    out
}
