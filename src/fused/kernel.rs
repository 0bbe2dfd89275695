//! The CPU row kernel of the fused logit losses: plain Rust on `f32` slices, no Burn types.
//!
//! One row of `V` student and teacher logits is read from memory once (the max pass); the
//! exponentials are stored in a per-thread scratch row that stays in the L2 cache, and the value
//! and gradient passes run from cache. Per element: two exponentials (teacher and student at
//! temperature `T`); the `T = 1` student probabilities of the hard term reuse them (`e^T`) when
//! `T` is a small integer and cost a third exponential otherwise.
//!
//! Loops run over blocks of [`LANES`] lanes written against [`Lanes`] (`super::simd`);
//! [`run_rows`] picks an AVX2 + FMA instantiation at run time on x86-64.

use super::simd::{Block, LANES, Lanes, Portable};

/// Which divergence the soft term is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SoftKind {
    /// `KL(p_teacher ‖ p_student)` (Hinton).
    ForwardKl,
    /// `KL(p_student ‖ p_teacher)` (MiniLLM, GKD's reverse mode).
    ReverseKl,
}

/// Everything the kernel needs besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KernelParams {
    /// The soft divergence.
    pub kind: SoftKind,
    /// Temperature `T` (> 0, finite).
    pub temperature: f32,
    /// Factor of the soft row value (`T²` or `1`).
    pub soft_scale: f32,
    /// Whether a hard (cross-entropy, `T = 1`) term is computed from the labels.
    pub has_hard: bool,
    /// Label smoothing `ε` of the hard term.
    pub smoothing: f32,
    /// Weight of the soft sum in the reported total (`α`).
    pub alpha: f32,
    /// Weight of the hard sum in the reported total (`1 − α`).
    pub beta: f32,
    /// Coefficient of `Σ_r w_r · soft_r` in the function whose gradient is written.
    pub grad_soft: f32,
    /// Coefficient of `Σ_r w_r · hard_r` in the function whose gradient is written.
    pub grad_hard: f32,
}

/// `x^k` for the integer powers the kernel specialises (`k ∈ {2, 3, 4}`).
#[inline(always)]
fn powk<L: Lanes>(l: L, x: L::V, k: u32) -> L::V {
    match k {
        2 => l.mul(x, x),
        3 => l.mul(l.mul(x, x), x),
        _ => {
            let x2 = l.mul(x, x);
            l.mul(x2, x2)
        }
    }
}

/// Per-thread scratch: exponentials of one row.
#[derive(Default)]
pub(crate) struct Scratch {
    et: Vec<f32>,
    es: Vec<f32>,
    e1: Vec<f32>,
}

/// Weighted values of one row: `(w · soft_r, w · hard_r)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowValues {
    pub soft: f64,
    pub hard: f64,
}

// Sums of exponentials are ≥ 0 or NaN; NaN must propagate (a NaN logit gives a NaN loss).
fn ln_or_zero(s: f32) -> f32 {
    if s == 0.0 { 0.0 } else { s.ln() }
}

fn recip_or_one(s: f32) -> f32 {
    if s == 0.0 { 1.0 } else { 1.0 / s }
}

#[inline(always)]
fn blk(x: &[f32]) -> &Block {
    x.try_into().expect("exact chunk")
}

#[inline(always)]
fn blk_mut(x: &mut [f32]) -> &mut Block {
    x.try_into().expect("exact chunk")
}

/// Pass B over one block: exponentials into `et`, `es` (and `e1`), running sums
/// `acc = [Σ e_t, Σ e_s, Σ e₁]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_b_block<L: Lanes, const E1: bool>(
    l: L,
    s: L::V,
    t: L::V,
    et: &mut Block,
    es: &mut Block,
    e1: &mut Block,
    acc: &mut [L::V; 3],
    k: &RowShift<L>,
    int_pow: u32,
) {
    // Shift, then scale (as the composed path does): the maximum maps to exactly 0.
    let a = l.exp2_nonpos(l.mul(l.sub(t, k.mt), k.scale));
    let c = l.exp2_nonpos(l.mul(l.sub(s, k.ms), k.scale));
    l.store(et, a);
    l.store(es, c);
    acc[0] = l.add(acc[0], a);
    acc[1] = l.add(acc[1], c);
    if E1 {
        let e = if int_pow > 0 {
            powk(l, c, int_pow)
        } else {
            l.exp_nonpos(l.sub(s, k.ms))
        };
        l.store(e1, e);
        acc[2] = l.add(acc[2], e);
    }
}

/// Row maxima and `log₂e / T`, splatted for pass B.
struct RowShift<L: Lanes> {
    scale: L::V,
    mt: L::V,
    ms: L::V,
}

/// `log p − log q = (t − s)/T + c0` per lane.
#[inline(always)]
fn log_ratio<L: Lanes>(l: L, s: L::V, t: L::V, k: &PassC<L>) -> L::V {
    // Not fused: with an unrounded product, (t − s)/T and c0 = (ms − mt)/T + … would not cancel
    // exactly where they should (a one-class row gives exactly 0, as composed).
    l.add(l.mul(l.sub(t, s), k.inv_t), k.c0)
}

/// Pass C over one block (forward KL): the divergence terms and, with `G`, the gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_c_fwd_block<L: Lanes, const G: bool, const HARD: bool>(
    l: L,
    s: L::V,
    t: L::V,
    et: L::V,
    es: L::V,
    e1: L::V,
    g: &mut Block,
    acc: &mut L::V,
    k: &PassC<L>,
) {
    // Σ p (log p − log q) = (1/S_t) Σ e_t · d, scaled after the row.
    let d = log_ratio(l, s, t, k);
    *acc = l.add(*acc, l.where_nonzero(et, l.mul(et, d)));
    if G {
        // coef_s (q − p) + coef_h (q₁ − ε/V) = e_s·A + e_t·B + e₁·C + D
        let soft = l.fmadd(es, k.ga, l.mul(et, k.gb));
        let val = if HARD {
            // Soft and hard parts apart, as in the composed path: each is exactly 0 where its
            // two distributions agree (q = p; q₁ = onehot), with no cross-term rounding.
            l.add(soft, l.fmadd(e1, k.gc, k.gd))
        } else {
            soft
        };
        l.store(g, val);
    }
}

/// Pass C over one block (reverse KL): the divergence terms `−q · d`.
#[inline(always)]
fn pass_c_rev_block<L: Lanes>(l: L, s: L::V, t: L::V, es: L::V, acc: &mut L::V, k: &PassC<L>) {
    let d = log_ratio(l, s, t, k);
    let qs = l.mul(es, k.inv_ss);
    *acc = l.sub(*acc, l.where_nonzero(qs, l.mul(qs, d)));
}

/// Pass D over one block (reverse KL gradient): `q (log q − log p − D) / T` (+ hard term).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_d_block<L: Lanes, const HARD: bool>(
    l: L,
    s: L::V,
    t: L::V,
    es: L::V,
    e1: L::V,
    g: &mut Block,
    neg_div: L::V,
    k: &PassC<L>,
) {
    let d = log_ratio(l, s, t, k);
    let qs = l.mul(es, k.inv_ss);
    // coef_s · qs · (−d − D)
    let mut val = l.where_nonzero(qs, l.mul(l.mul(k.coef_s, qs), l.sub(neg_div, d)));
    if HARD {
        val = l.add(val, l.mul(k.coef_h, l.sub(l.mul(e1, k.inv_s1), k.smooth_c)));
    }
    l.store(g, val);
}

/// Row constants of passes C and D, splatted.
struct PassC<L: Lanes> {
    inv_t: L::V,
    /// `log p − log q = (t − s)/T + c0`, `c0 = (ms − mt)/T + ln S_s − ln S_t`.
    c0: L::V,
    inv_ss: L::V,
    inv_s1: L::V,
    coef_s: L::V,
    coef_h: L::V,
    smooth_c: L::V,
    /// Forward-KL gradient `e_s·ga + e_t·gb + e₁·gc + gd`.
    ga: L::V,
    gb: L::V,
    gc: L::V,
    gd: L::V,
}

/// Block `b` of a row of logits, or the padded tail block past the last whole block.
#[inline(always)]
fn logit_block<'a>(x: &'a [f32], padded_tail: &'a Block, b: usize, tail: usize) -> &'a Block {
    if b * LANES < tail {
        blk(&x[b * LANES..b * LANES + LANES])
    } else {
        padded_tail
    }
}

/// Block `b` of a gradient row, or the tail buffer (copied back after the passes).
#[inline(always)]
fn grad_block<'a>(
    g: &'a mut [f32],
    tail_buf: &'a mut Block,
    b: usize,
    tail: usize,
) -> &'a mut Block {
    if b * LANES < tail {
        blk_mut(&mut g[b * LANES..b * LANES + LANES])
    } else {
        tail_buf
    }
}

/// Pads a tail of fewer than [`LANES`] elements into blocks: student and teacher with `-inf`
/// (probability 0, no contribution), so the tail runs through the same block code.
fn pad(x: &[f32]) -> Block {
    let mut b = [f32::NEG_INFINITY; LANES];
    b[..x.len()].copy_from_slice(x);
    b
}

/// One row. `grad`, when given, receives
/// `w · (grad_soft · ∂soft_r/∂s + grad_hard · ∂hard_r/∂s)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row<L: Lanes>(
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
    let shift = RowShift::<L> {
        scale: l.splat(inv_t * std::f32::consts::LOG2_E),
        mt: l.splat(mt),
        ms: l.splat(ms),
    };
    let (s_tail, t_tail) = (pad(&s[tail..]), pad(&t[tail..]));
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
        let sb = l.load(logit_block(s, &s_tail, b, tail));
        let tb = l.load(logit_block(t, &t_tail, b, tail));
        let etb = blk_mut(&mut et[b * LANES..b * LANES + LANES]);
        let esb = blk_mut(&mut es[b * LANES..b * LANES + LANES]);
        if need_e1 {
            let e1b = blk_mut(&mut e1s[b * LANES..b * LANES + LANES]);
            pass_b_block::<L, true>(l, sb, tb, etb, esb, e1b, &mut acc, &shift, int_pow);
        } else {
            let e1b = blk_mut(&mut e1s[..LANES]);
            pass_b_block::<L, false>(l, sb, tb, etb, esb, e1b, &mut acc, &shift, int_pow);
        }
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
        c0: l.splat((ms - mt) * inv_t + (ln_ss - ln_st)),
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
        let sb = l.load(logit_block(s, &s_tail, b, tail));
        let tb = l.load(logit_block(t, &t_tail, b, tail));
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
        }
    }
    let div = if p.kind == SoftKind::ForwardKl {
        l.hsum(dacc) * inv_st
    } else {
        l.hsum(dacc)
    };
    let c0 = (ms - mt) * inv_t + (ln_ss - ln_st);
    let value = if first_empty {
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
            c0,
            div,
            REFINE_FACTOR * (ln_ss.abs() + ln_st.abs() + ((ms - mt) * inv_t).abs()),
        )
    };

    // Pass D (reverse KL only): ∂/∂s_j = q_j (log q_j − log p_j − D) / T.
    if let (Some(g), SoftKind::ReverseKl) = (grad.as_deref_mut(), p.kind) {
        let neg_div = l.splat(-div);
        for b in 0..nb {
            let sb = l.load(logit_block(s, &s_tail, b, tail));
            let tb = l.load(logit_block(t, &t_tail, b, tail));
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
fn phi_over_d2(d: f64) -> f64 {
    crate::numerics::PHI_OVER_D2_TAYLOR
        .iter()
        .rev()
        .fold(0.0, |h, &c| h * d + c)
}

/// Rows whose divergence is below `REFINE_FACTOR · |c0 terms|` are refined by
/// [`refine_divergence`]: above it, the rounding of the log-normalisers (~2 ulp of
/// `|ln S_s| + |ln S_t| + |m_s − m_t|/T`) is below 5e-5 relative.
const REFINE_FACTOR: f32 = 2.0e4 * 2.0 * f32::EPSILON;

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
fn refine_divergence(
    kind: SoftKind,
    s: &[f32],
    t: &[f32],
    et: &[f32],
    es: &[f32],
    (st, ss): (f32, f32),
    inv_t: f32,
    c0: f32,
    d1: f32,
    refine_below: f32,
) -> f64 {
    if !(d1.is_finite() && d1 < refine_below) {
        return f64::from(d1);
    }
    // log a − log b = sign · ((t − s)/T + c0), in the kernel's own f32 rounding.
    let (ea, eb, sa, sb, sign) = match kind {
        SoftKind::ForwardKl => (et, es, st, ss, 1.0f64),
        SoftKind::ReverseKl => (es, et, ss, st, -1.0f64),
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
        let d = sign * f64::from((t[i] - s[i]) * inv_t + c0);
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

/// The integer power that turns `exp((s − m)/T)` into `exp(s − m)`, or 0 for "use exp".
fn integer_power(t: f32) -> u32 {
    if t == 2.0 {
        2
    } else if t == 3.0 {
        3
    } else if t == 4.0 {
        4
    } else {
        0
    }
}

/// Rows `[R, V]` in a block. Returns the summed weighted values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_block<L: Lanes>(
    l: L,
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    grad: Option<&mut [f32]>,
) -> RowValues {
    let mut scratch = Scratch::default();
    let int_pow = integer_power(p.temperature);
    let mut acc = RowValues::default();
    let r = weights.len();
    let mut grad = grad;
    let mut maxima = if r > 0 {
        row_maxima(l, &s[..v], &t[..v])
    } else {
        (0.0, 0.0)
    };
    for i in 0..r {
        let g = grad.as_deref_mut().map(|g| &mut g[i * v..(i + 1) * v]);
        let label = if p.has_hard { labels[i] } else { 0 };
        let next =
            (i + 1 < r).then(|| (&s[(i + 1) * v..(i + 2) * v], &t[(i + 1) * v..(i + 2) * v]));
        let (rv, next_max) = row(
            l,
            &s[i * v..(i + 1) * v],
            &t[i * v..(i + 1) * v],
            maxima,
            next,
            label,
            weights[i],
            p,
            int_pow,
            &mut scratch,
            g,
        );
        maxima = next_max;
        acc.soft += rv.soft;
        acc.hard += rv.hard;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn rows_block_avx2(
    l: super::simd::Avx2,
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    grad: Option<&mut [f32]>,
) -> RowValues {
    rows_block(l, s, t, labels, weights, v, p, grad)
}

#[allow(unsafe_code)]
fn rows_block_best(
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    grad: Option<&mut [f32]>,
) -> RowValues {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = super::simd::Avx2::detect() {
        // SAFETY: `Avx2::detect` returned `Some`, so the CPU has the features the function was
        // compiled for.
        return unsafe { rows_block_avx2(l, s, t, labels, weights, v, p, grad) };
    }
    rows_block(Portable, s, t, labels, weights, v, p, grad)
}

/// Number of row blocks run in parallel for `elements` logits: 1 below 32 Ki elements (waking a
/// pool thread costs more than it saves), else the machine's parallelism (`KD_NUM_THREADS`
/// overrides; the blocks run on rayon's global pool, sized by `RAYON_NUM_THREADS`).
fn threads_for(elements: usize, rows: usize) -> usize {
    if elements < (1 << 15) || rows < 2 {
        return 1;
    }
    let n = std::env::var("KD_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    n.min(rows).max(1)
}

/// Row maxima of the student and the teacher (pass A).
#[inline(always)]
fn row_maxima<L: Lanes>(l: L, s: &[f32], t: &[f32]) -> (f32, f32) {
    let v = s.len();
    let tail = v - v % LANES;
    let mut ms = l.splat(f32::NEG_INFINITY);
    let mut mt = ms;
    for b in 0..tail / LANES {
        ms = l.gt_max(ms, l.load(blk(&s[b * LANES..b * LANES + LANES])));
        mt = l.gt_max(mt, l.load(blk(&t[b * LANES..b * LANES + LANES])));
    }
    finish_maxima(l, ms, mt, &s[tail..], &t[tail..])
}

#[inline(always)]
fn gt_max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Folds the lane maxima and the tail (fewer than [`LANES`] entries) into the row maxima.
#[inline(always)]
fn finish_maxima<L: Lanes>(l: L, ms: L::V, mt: L::V, s_tail: &[f32], t_tail: &[f32]) -> (f32, f32) {
    let mut ms = l
        .to_block(ms)
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| gt_max(a, b));
    let mut mt = l
        .to_block(mt)
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| gt_max(a, b));
    for (&a, &b) in s_tail.iter().zip(t_tail) {
        ms = gt_max(ms, a);
        mt = gt_max(mt, b);
    }
    (ms, mt)
}

/// A zeroed `f32` buffer for the gradient. Fresh pages of a large allocation cost a page fault
/// each on first touch (4 KiB pages: 128 Ki faults for a `[4096, 32000]` gradient, more than
/// the kernel's own time on a VM); on Linux the buffer is advised to use transparent huge pages,
/// 512× fewer faults. The advice is only a hint: the buffer is correct either way.
pub(crate) fn grad_buffer(n: usize) -> Vec<f32> {
    let buf = vec![0.0f32; n];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&buf);
    buf
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_huge_pages(buf: &[f32]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(buf);
    if bytes < 2 * HUGE {
        return;
    }
    let start = buf.as_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let len = (start + bytes - aligned) / HUGE * HUGE;
    if len == 0 {
        return;
    }
    // SAFETY: madvise only advises the kernel about the range, which lies inside `buf`'s
    // allocation; it neither reads nor writes memory and cannot invalidate the slice.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

/// Runs the kernel over `R = weights.len()` rows of `v` logits, in parallel over row blocks.
///
/// `labels` has `R` entries in `[0, v)` when `p.has_hard` (rows with weight 0 are skipped and
/// may hold anything). `grad`, when given, has `R · v` entries and is fully overwritten.
pub(crate) fn run_rows(
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    grad: Option<&mut [f32]>,
) -> RowValues {
    let r = weights.len();
    debug_assert_eq!(s.len(), r * v);
    debug_assert_eq!(t.len(), r * v);
    if r == 0 || v == 0 {
        if let Some(g) = grad {
            g.fill(0.0);
        }
        return RowValues::default();
    }
    let blocks = par_row_blocks(r, v, grad, |rows, g| {
        let labels = if p.has_hard {
            &labels[rows.clone()]
        } else {
            &[]
        };
        let (a, b) = (rows.start, rows.end);
        rows_block_best(
            &s[a * v..b * v],
            &t[a * v..b * v],
            labels,
            &weights[a..b],
            v,
            p,
            g,
        )
    });
    blocks
        .iter()
        .fold(RowValues::default(), |acc, rv| RowValues {
            soft: acc.soft + rv.soft,
            hard: acc.hard + rv.hard,
        })
}

/// Splits `r` rows of `v` elements into [`threads_for`] blocks of consecutive rows and returns
/// `f(rows, grad rows)` of each block, in block order: block 0 on the calling thread's turn,
/// the others on rayon's global pool (threads that outlive the call). `grad`, when given, has
/// `r · v` entries; each block gets its rows.
pub(crate) fn par_row_blocks<T, F>(r: usize, v: usize, grad: Option<&mut [f32]>, f: F) -> Vec<T>
where
    T: Send + Default,
    F: Fn(std::ops::Range<usize>, Option<&mut [f32]>) -> T + Sync,
{
    let n = threads_for(r * v, r);
    let per = r.div_ceil(n).max(1);
    let blocks = r.div_ceil(per);
    let mut grads: Vec<Option<&mut [f32]>> = match grad {
        Some(g) => g.chunks_mut(per * v.max(1)).map(Some).collect(),
        None => (0..blocks).map(|_| None).collect(),
    };
    grads.resize_with(blocks, || None);
    let mut results: Vec<T> = (0..blocks).map(|_| T::default()).collect();
    let run = |i: usize, g: Option<&mut [f32]>| f(i * per..((i + 1) * per).min(r), g);
    in_parallel(&mut results, &mut grads, &run);
    results
}

/// Runs `f(i, grads[i])` for every block `i` into `results[i]`, on rayon's global pool.
#[cfg(feature = "cpu-kernel")]
fn in_parallel<'g, T, F>(results: &mut [T], grads: &mut [Option<&'g mut [f32]>], f: &F)
where
    T: Send,
    F: Fn(usize, Option<&'g mut [f32]>) -> T + Sync,
{
    if results.len() == 1 {
        results[0] = f(0, grads[0].take());
        return;
    }
    let (first, rest) = results.split_first_mut().expect("at least one block");
    rayon_core::scope(|scope| {
        for (i, (res, g)) in rest.iter_mut().zip(grads[1..].iter_mut()).enumerate() {
            let g = g.take();
            scope.spawn(move |_| *res = f(i + 1, g));
        }
        *first = f(0, grads[0].take());
    });
}

/// Without the `flex` feature (no CPU backend to serve) the blocks run one after the other.
#[cfg(not(feature = "cpu-kernel"))]
fn in_parallel<'g, T, F>(results: &mut [T], grads: &mut [Option<&'g mut [f32]>], f: &F)
where
    F: Fn(usize, Option<&'g mut [f32]>) -> T,
{
    for (i, (res, g)) in results.iter_mut().zip(grads.iter_mut()).enumerate() {
        *res = f(i, g.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &[f32], t: &[f32], temp: f64) -> f64 {
        let ls = |z: &[f32]| -> Vec<f64> {
            let m = z
                .iter()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b) / temp));
            let sum: f64 = z.iter().map(|&x| (f64::from(x) / temp - m).exp()).sum();
            z.iter()
                .map(|&x| f64::from(x) / temp - m - sum.ln())
                .collect()
        };
        let (lq, lp) = (ls(s), ls(t));
        lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
    }

    #[test]
    fn forward_kl_row_matches_f64() {
        let v = 37; // not a multiple of LANES: exercises the tail
        let s: Vec<f32> = (0..v).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.7).collect();
        let t: Vec<f32> = (0..v).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.5).collect();
        for temp in [1.0f32, 2.0, 2.5] {
            let p = KernelParams {
                kind: SoftKind::ForwardKl,
                temperature: temp,
                soft_scale: 1.0,
                has_hard: false,
                smoothing: 0.0,
                alpha: 1.0,
                beta: 0.0,
                grad_soft: 1.0,
                grad_hard: 0.0,
            };
            let got = run_rows(&s, &t, &[], &[1.0], v, &p, None).soft;
            let want = reference(&s, &t, f64::from(temp));
            assert!(
                (got - want).abs() < 1e-6 * (1.0 + want),
                "T={temp}: {got} vs {want}"
            );
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Kernel-only timing (not a test of speed: prints, never asserts). Run with
    /// `cargo test --release --lib kernel_timing -- --ignored --nocapture` (`KD_TIMING_SHAPE=RxV`,
    /// `KD_TIMING_REPS=N` for the median of N calls).
    #[test]
    #[ignore]
    fn kernel_timing() {
        let shape = std::env::var("KD_TIMING_SHAPE").unwrap_or_else(|_| "4096x32000".into());
        let (r, v) = shape.split_once('x').expect("RxV");
        let (r, v): (usize, usize) = (r.parse().expect("rows"), v.parse().expect("vocabulary"));
        let s: Vec<f32> = (0..r * v)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let t: Vec<f32> = (0..r * v)
            .map(|i| ((i * 104729 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let y: Vec<i64> = (0..r as i64).map(|i| i % v as i64).collect();
        let w = vec![1.0 / r as f32; r];
        let p = KernelParams {
            kind: SoftKind::ForwardKl,
            temperature: 2.0,
            soft_scale: 4.0,
            has_hard: true,
            smoothing: 0.0,
            alpha: 0.5,
            beta: 0.5,
            grad_soft: 0.5,
            grad_hard: 0.5,
        };
        let mut g = vec![0.0f32; r * v];
        let reps: usize = std::env::var("KD_TIMING_REPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        let median = |mut xs: Vec<std::time::Duration>| {
            xs.sort();
            xs[xs.len() / 2]
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut soft = 0.0;
        for _ in 0..reps {
            let t0 = std::time::Instant::now();
            soft = run_rows(&s, &t, &y, &w, v, &p, None).soft;
            a.push(t0.elapsed());
            let t0 = std::time::Instant::now();
            run_rows(&s, &t, &y, &w, v, &p, Some(&mut g));
            b.push(t0.elapsed());
        }
        let t0 = std::time::Instant::now();
        let mut g2 = grad_buffer(r * v);
        run_rows(&s, &t, &y, &w, v, &p, Some(&mut g2));
        let c = t0.elapsed();
        println!(
            "median of {reps}: values only {:?}; values+grad (warm buffer) {:?}; values+grad (fresh buffer, once) {c:?}; {soft}",
            median(a),
            median(b)
        );
    }
}
