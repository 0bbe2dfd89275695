//! The per-block passes of the row kernel ([`row`](super::row::row)): lane-wise exponentials,
//! log-ratios, value accumulation and gradient writes over blocks of [`LANES`] logits, and the
//! row maxima.

use super::super::simd::{Block, LANES, Lanes};

/// `x^k` for the integer powers the kernel specialises (`k ∈ {2, 3, 4}`).
#[inline(always)]
pub(super) fn powk<L: Lanes>(l: L, x: L::V, k: u32) -> L::V {
    match k {
        2 => l.mul(x, x),
        3 => l.mul(l.mul(x, x), x),
        _ => {
            let x2 = l.mul(x, x);
            l.mul(x2, x2)
        }
    }
}

/// Per-thread scratch: exponentials of one row, and the general row's per-entry terms.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(super) et: Vec<f32>,
    pub(super) es: Vec<f32>,
    pub(super) e1: Vec<f32>,
    /// `q·∂D/∂q` per entry (the general row's gradient pass).
    pub(super) qg: Vec<f32>,
    /// Whether the general row's previous row had a small value (needed its `D2` sums).
    pub(super) small_last: bool,
}

/// Weighted values of one row: `(w · soft_r, w · hard_r)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowValues {
    pub soft: f64,
    pub hard: f64,
}

// Sums of exponentials are ≥ 0 or NaN; NaN must propagate (a NaN logit gives a NaN loss).
pub(super) fn ln_or_zero(s: f32) -> f32 {
    if s == 0.0 { 0.0 } else { s.ln() }
}

pub(super) fn recip_or_one(s: f32) -> f32 {
    if s == 0.0 { 1.0 } else { 1.0 / s }
}

#[inline(always)]
pub(super) fn blk(x: &[f32]) -> &Block {
    x.try_into().expect("exact chunk")
}

#[inline(always)]
pub(super) fn blk_mut(x: &mut [f32]) -> &mut Block {
    x.try_into().expect("exact chunk")
}

/// Pass B over one block: exponentials into `et`, `es` (and `e1`), running sums
/// `acc = [Σ e_t, Σ e_s, Σ e₁]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pass_b_block<L: Lanes, const E1: bool>(
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

/// One row's logits and their tail block padded with `-inf`, built once per row: every pass
/// loads its blocks through [`block`](Self::block).
pub(super) struct RowLogits<'a> {
    s: &'a [f32],
    t: &'a [f32],
    s_tail: Block,
    t_tail: Block,
    tail: usize,
}

impl<'a> RowLogits<'a> {
    pub(super) fn new(s: &'a [f32], t: &'a [f32]) -> Self {
        let tail = s.len() - s.len() % LANES;
        RowLogits {
            s,
            t,
            s_tail: pad(&s[tail..]),
            t_tail: pad(&t[tail..]),
            tail,
        }
    }

    /// Block `b` of the student's and the teacher's logits.
    #[inline(always)]
    pub(super) fn block<L: Lanes>(&self, l: L, b: usize) -> (L::V, L::V) {
        (
            l.load(logit_block(self.s, &self.s_tail, b, self.tail)),
            l.load(logit_block(self.t, &self.t_tail, b, self.tail)),
        )
    }
}

/// What pass B reads of one row besides its logits: the shift, and whether the `T = 1`
/// exponentials of the hard term are needed (`int_pow`: `1/T` when it is a whole number, for
/// the integer-power shortcut, else 0).
pub(super) struct PassBRow<L: Lanes> {
    pub(super) need_e1: bool,
    pub(super) shift: RowShift<L>,
    pub(super) int_pow: u32,
}

/// Pass B on block `b` of a row: the exponentials into the scratch rows `et`, `es` (and `e1`
/// when `need_e1`, else its first block as a dummy), their sums into `acc`.
#[inline(always)]
pub(super) fn pass_b_at<L: Lanes>(
    l: L,
    b: usize,
    logits: &RowLogits<'_>,
    row: &PassBRow<L>,
    (et, es, e1): (&mut [f32], &mut [f32], &mut [f32]),
    acc: &mut [L::V; 3],
) {
    let (sb, tb) = logits.block(l, b);
    let etb = blk_mut(&mut et[b * LANES..b * LANES + LANES]);
    let esb = blk_mut(&mut es[b * LANES..b * LANES + LANES]);
    let (shift, int_pow) = (&row.shift, row.int_pow);
    if row.need_e1 {
        let e1b = blk_mut(&mut e1[b * LANES..b * LANES + LANES]);
        pass_b_block::<L, true>(l, sb, tb, etb, esb, e1b, acc, shift, int_pow);
    } else {
        let e1b = blk_mut(&mut e1[..LANES]);
        pass_b_block::<L, false>(l, sb, tb, etb, esb, e1b, acc, shift, int_pow);
    }
}

/// Row maxima and `log₂e / T`, splatted for pass B.
pub(super) struct RowShift<L: Lanes> {
    pub(super) scale: L::V,
    pub(super) mt: L::V,
    pub(super) ms: L::V,
}

impl<L: Lanes> RowShift<L> {
    /// The shift of a row with maxima `mt`, `ms` at `1/T = inv_t`.
    #[inline(always)]
    pub(super) fn new(l: L, inv_t: f32, mt: f32, ms: f32) -> Self {
        RowShift {
            scale: l.splat(inv_t * std::f32::consts::LOG2_E),
            mt: l.splat(mt),
            ms: l.splat(ms),
        }
    }
}

/// `log p − log q = ((t − m_t) − (s − m_s))/T + c0` per lane.
#[inline(always)]
pub(super) fn log_ratio<L: Lanes>(l: L, s: L::V, t: L::V, k: &PassC<L>) -> L::V {
    // Each logit shifted by its own row maximum first, as the composed path's log-softmax: near
    // the maxima (the entries that carry the divergence) the shifts are exact, so logits of
    // magnitude 1e4 with different offsets lose nothing to `t − s` and `(m_s − m_t)/T`
    // cancelling. Not fused, so a one-class row gives exactly 0, as composed.
    l.add(l.mul(l.sub(l.sub(t, k.mt), l.sub(s, k.ms)), k.inv_t), k.c0)
}

/// Pass C over one block (forward KL): the divergence terms and, with `G`, the gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pass_c_fwd_block<L: Lanes, const G: bool, const HARD: bool>(
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
pub(super) fn pass_c_rev_block<L: Lanes>(
    l: L,
    s: L::V,
    t: L::V,
    es: L::V,
    acc: &mut L::V,
    k: &PassC<L>,
) {
    let d = log_ratio(l, s, t, k);
    let qs = l.mul(es, k.inv_ss);
    *acc = l.sub(*acc, l.where_nonzero(qs, l.mul(qs, d)));
}

/// Pass D over one block (reverse KL gradient): `q (log q − log p − D) / T` (+ hard term).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pass_d_block<L: Lanes, const HARD: bool>(
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
pub(super) struct PassC<L: Lanes> {
    pub(super) inv_t: L::V,
    /// `log p − log q = ((t − m_t) − (s − m_s))/T + c0`, `c0 = ln S_s − ln S_t`.
    pub(super) c0: L::V,
    /// The teacher's row maximum `m_t`.
    pub(super) mt: L::V,
    /// The student's row maximum `m_s`.
    pub(super) ms: L::V,
    pub(super) inv_ss: L::V,
    pub(super) inv_s1: L::V,
    pub(super) coef_s: L::V,
    pub(super) coef_h: L::V,
    pub(super) smooth_c: L::V,
    /// Forward-KL gradient `e_s·ga + e_t·gb + e₁·gc + gd`.
    pub(super) ga: L::V,
    pub(super) gb: L::V,
    pub(super) gc: L::V,
    pub(super) gd: L::V,
}

/// Block `b` of a row of logits, or the padded tail block past the last whole block.
#[inline(always)]
pub(super) fn logit_block<'a>(
    x: &'a [f32],
    padded_tail: &'a Block,
    b: usize,
    tail: usize,
) -> &'a Block {
    if b * LANES < tail {
        blk(&x[b * LANES..b * LANES + LANES])
    } else {
        padded_tail
    }
}

/// Block `b` of a gradient row, or the tail buffer (copied back after the passes).
#[inline(always)]
pub(super) fn grad_block<'a>(
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
pub(super) fn pad(x: &[f32]) -> Block {
    let mut b = [f32::NEG_INFINITY; LANES];
    b[..x.len()].copy_from_slice(x);
    b
}

/// Row maxima of the student and the teacher (pass A).
#[inline(always)]
pub(super) fn row_maxima<L: Lanes>(l: L, s: &[f32], t: &[f32]) -> (f32, f32) {
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
pub(super) fn gt_max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Folds the lane maxima and the tail (fewer than [`LANES`] entries) into the row maxima.
#[inline(always)]
pub(super) fn finish_maxima<L: Lanes>(
    l: L,
    ms: L::V,
    mt: L::V,
    s_tail: &[f32],
    t_tail: &[f32],
) -> (f32, f32) {
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
