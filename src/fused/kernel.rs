//! The CPU row kernel of the fused logit losses: plain Rust on `f32` slices, no Burn types.
//!
//! One row of `V` student and teacher logits is read from memory once (the max pass); the
//! exponentials are stored in a per-thread scratch row that stays in the L2 cache, and the value
//! and gradient passes run from cache. Per element: two exponentials (teacher and student at
//! temperature `T`); the `T = 1` student probabilities of the hard term reuse them (`e^T`) when
//! `T` is a small integer and cost a third exponential otherwise.
//!
//! Loops run over blocks of [`LANES`] independent accumulators so that LLVM vectorises them;
//! [`run_rows`] picks an AVX2 + FMA instantiation at run time on x86-64.

/// Width of the accumulator blocks (one AVX register of `f32`).
pub(crate) const LANES: usize = 8;

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

/// `exp(x)` for `x ≤ 0` (also `-inf` → 0), branch-free so that it vectorises.
///
/// Cody–Waite range reduction `x = n ln 2 + r`, `|r| ≤ ln 2 / 2`, and Cephes' degree-6
/// polynomial: relative error below 2e-7 on `[-87, 0]`; results below `f32::MIN_POSITIVE`
/// (x < −87) flush to 0. NaN gives NaN.
/// `a · b + c`, as one fused instruction in the FMA instantiation.
#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
pub(crate) fn exp_nonpos<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = -0.693_359_4;
    const C2: f32 = 2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer n, which then sits in the low mantissa bits
    // (bits = 0x4B40_0000 + n), so 2^n is built with integer operations only: no float → int
    // conversion, whose saturating semantics would keep LLVM from vectorising the loop.
    const ROUND: f32 = 12_582_912.0;
    // Inputs are ≤ 0 up to rounding (logits shifted by their maximum); only underflow is clamped.
    let underflow = x < -87.0;
    let xc = if underflow { -87.0 } else { x };
    let kn = fmadd::<FMA>(xc, LOG2E, ROUND);
    let n = kn - ROUND;
    let r = fmadd::<FMA>(n, C2, fmadd::<FMA>(n, C1, xc));
    let mut p = 1.987_569_1e-4f32;
    p = fmadd::<FMA>(p, r, 1.398_199_9e-3);
    p = fmadd::<FMA>(p, r, 8.333_452e-3);
    p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
    p = fmadd::<FMA>(p, r, 1.666_666_5e-1);
    p = fmadd::<FMA>(p, r, 5.000_000_1e-1);
    let y = fmadd::<FMA>(p, r * r, r) + 1.0;
    let bits = kn.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23;
    let v = y * f32::from_bits(bits);
    if underflow { 0.0 } else { v }
}

#[inline(always)]
fn gt_max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// `x^k` for the integer powers the kernel specialises (`k ∈ {2, 3, 4}`).
#[inline(always)]
fn powk(x: f32, k: u32) -> f32 {
    match k {
        2 => x * x,
        3 => x * x * x,
        _ => {
            let x2 = x * x;
            x2 * x2
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

/// Sum of 8 lanes.
#[inline(always)]
fn hsum(a: &[f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

type Block = [f32; LANES];

#[inline(always)]
fn blk(x: &[f32]) -> &Block {
    x.try_into().expect("exact chunk")
}

#[inline(always)]
fn blk_mut(x: &mut [f32]) -> &mut Block {
    x.try_into().expect("exact chunk")
}

/// Pass B over one block: exponentials into `et`, `es` (and `e1`), running sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_b_block<const FMA: bool, const E1: bool, const SUM_S: bool>(
    s: &Block,
    t: &Block,
    et: &mut Block,
    es: &mut Block,
    e1: &mut Block,
    acc: &mut [Block; 4],
    k: (f32, f32, f32),
    int_pow: u32,
) {
    let (inv_t, mt, ms) = k;
    for i in 0..LANES {
        // Shift, then scale (as the composed path does): the maximum maps to exactly 0.
        let a = exp_nonpos::<FMA>((t[i] - mt) * inv_t);
        let c = exp_nonpos::<FMA>((s[i] - ms) * inv_t);
        et[i] = a;
        es[i] = c;
        acc[0][i] += a;
        acc[1][i] += c;
        if E1 {
            let e = if int_pow > 0 {
                powk(c, int_pow)
            } else {
                exp_nonpos::<FMA>(s[i] - ms)
            };
            e1[i] = e;
            acc[2][i] += e;
        }
        if SUM_S {
            acc[3][i] += s[i];
        }
    }
}

/// Pass C over one block (forward KL): the divergence terms and, with `G`, the gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_c_fwd_block<const FMA: bool, const G: bool, const HARD: bool>(
    s: &Block,
    t: &Block,
    et: &Block,
    es: &Block,
    e1: &Block,
    g: &mut Block,
    acc: &mut Block,
    k: &PassC,
) {
    // Σ p (log p − log q) = (1/S_t) Σ e_t · d, scaled after the row. Kept as simple loops: LLVM's
    // SLP vectoriser packs each into AVX lanes, which it does not do for one fused body.
    for i in 0..LANES {
        // Not fused: with an unrounded product, (t − s)/T and c0 = (ms − mt)/T + … would not
        // cancel exactly where they should (a one-class row gives exactly 0, as composed).
        let d = (t[i] - s[i]) * k.inv_t + k.c0;
        let m = et[i] * d;
        acc[i] += if et[i] != 0.0 { m } else { 0.0 };
    }
    if G {
        // coef_s (q − p) + coef_h (q₁ − ε/V) = e_s·A + e_t·B + e₁·C + D
        let (a, b) = (k.coef_s * k.inv_ss, -k.coef_s * k.inv_st);
        let (c, d) = (k.coef_h * k.inv_s1, -k.coef_h * k.smooth_c);
        if HARD {
            for i in 0..LANES {
                // Soft and hard parts apart, as in the composed path: each is exactly 0 where its
                // two distributions agree (q = p; q₁ = onehot), with no cross-term rounding.
                g[i] = fmadd::<FMA>(es[i], a, et[i] * b) + fmadd::<FMA>(e1[i], c, d);
            }
        } else {
            for i in 0..LANES {
                g[i] = fmadd::<FMA>(es[i], a, et[i] * b);
            }
        }
    }
}

/// Pass C over one block (reverse KL): the divergence terms.
#[inline(always)]
fn pass_c_rev_block(s: &Block, t: &Block, es: &Block, acc: &mut Block, k: &PassC) {
    for i in 0..LANES {
        let d = (t[i] - s[i]) * k.inv_t + k.c0;
        let qs = es[i] * k.inv_ss;
        acc[i] += if qs != 0.0 { -qs * d } else { 0.0 };
    }
}

/// Pass D over one block (reverse KL gradient): `q (log q − log p − D) / T` (+ hard term).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_d_block<const HARD: bool>(
    s: &Block,
    t: &Block,
    es: &Block,
    e1: &Block,
    g: &mut Block,
    div: f32,
    k: &PassC,
) {
    for i in 0..LANES {
        let d = (t[i] - s[i]) * k.inv_t + k.c0;
        let qs = es[i] * k.inv_ss;
        let mut val = if qs != 0.0 {
            k.coef_s * qs * (-d - div)
        } else {
            0.0
        };
        if HARD {
            val += k.coef_h * (e1[i] * k.inv_s1 - k.smooth_c);
        }
        g[i] = val;
    }
}

/// Row constants of passes C and D.
struct PassC {
    inv_t: f32,
    c0: f32,
    inv_st: f32,
    inv_ss: f32,
    inv_s1: f32,
    coef_s: f32,
    coef_h: f32,
    smooth_c: f32,
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
fn row<const FMA: bool>(
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
        let next_max = next.map_or((0.0, 0.0), |(ns, nt)| row_maxima(ns, nt));
        return (RowValues::default(), next_max);
    }
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
    let mut acc = [[0.0f32; LANES]; 4];
    let k = (inv_t, mt, ms);
    let (s_tail, t_tail) = (pad(&s[tail..]), pad(&t[tail..]));
    let nb = vp / LANES;
    let mut nms8 = [f32::NEG_INFINITY; LANES];
    let mut nmt8 = [f32::NEG_INFINITY; LANES];
    for b in 0..nb {
        if let Some((ns, nt)) = next
            && b * LANES < tail
        {
            max_block(
                &mut nms8,
                &mut nmt8,
                &ns[b * LANES..b * LANES + LANES],
                &nt[b * LANES..b * LANES + LANES],
            );
        }
        let (sb, tb) = (
            logit_block(s, &s_tail, b, tail),
            logit_block(t, &t_tail, b, tail),
        );
        let etb = blk_mut(&mut et[b * LANES..b * LANES + LANES]);
        let esb = blk_mut(&mut es[b * LANES..b * LANES + LANES]);
        let e1b = if need_e1 {
            blk_mut(&mut e1s[b * LANES..b * LANES + LANES])
        } else {
            blk_mut(&mut e1s[..LANES])
        };
        match (need_e1, smooth) {
            (false, false) => {
                pass_b_block::<FMA, false, false>(sb, tb, etb, esb, e1b, &mut acc, k, int_pow)
            }
            (true, false) => {
                pass_b_block::<FMA, true, false>(sb, tb, etb, esb, e1b, &mut acc, k, int_pow)
            }
            (false, true) => {
                pass_b_block::<FMA, false, true>(sb, tb, etb, esb, e1b, &mut acc, k, int_pow)
            }
            (true, true) => {
                pass_b_block::<FMA, true, true>(sb, tb, etb, esb, e1b, &mut acc, k, int_pow)
            }
        }
    }
    let next_max = next.map_or((0.0, 0.0), |(ns, nt)| {
        finish_maxima(&nms8, &nmt8, &ns[tail..], &nt[tail..])
    });
    let (st, ss, mut s1) = (hsum(&acc[0]), hsum(&acc[1]), hsum(&acc[2]));
    // The padding added -inf to the sum of logits; only real entries count.
    let sum_s = if smooth { s.iter().sum::<f32>() } else { 0.0 };
    if hard && same_t {
        s1 = ss;
    }
    let e1: &[f32] = if need_e1 { &e1s[..vp] } else { &es[..] };

    let (ln_st, ln_ss) = (ln_or_zero(st), ln_or_zero(ss));
    let kc = PassC {
        inv_t,
        // log p − log q = (t − s)/T + c0, c0 = (ms − mt)/T + ln Ss − ln St
        c0: (ms - mt) * inv_t + (ln_ss - ln_st),
        inv_st: recip_or_one(st),
        inv_ss: recip_or_one(ss),
        inv_s1: recip_or_one(s1),
        coef_s: w * p.grad_soft * p.soft_scale * inv_t,
        coef_h: w * p.grad_hard,
        smooth_c: p.smoothing / v as f32,
    };

    // Pass C: the divergence (and, for forward KL, the gradient in the same pass). Tail blocks
    // use the padded copies; their gradient goes to a block buffer copied back.
    let mut dacc = [0.0f32; LANES];
    let mut gtail = [0.0f32; LANES];
    let mut grad = grad;
    for b in 0..nb {
        let (sb, tb) = (
            logit_block(s, &s_tail, b, tail),
            logit_block(t, &t_tail, b, tail),
        );
        let etb = blk(&et[b * LANES..b * LANES + LANES]);
        let esb = blk(&es[b * LANES..b * LANES + LANES]);
        let e1b = blk(&e1[b * LANES..b * LANES + LANES]);
        match p.kind {
            SoftKind::ForwardKl => match grad.as_deref_mut() {
                Some(g) => {
                    let gb = grad_block(g, &mut gtail, b, tail);
                    if hard {
                        pass_c_fwd_block::<FMA, true, true>(
                            sb, tb, etb, esb, e1b, gb, &mut dacc, &kc,
                        );
                    } else {
                        pass_c_fwd_block::<FMA, true, false>(
                            sb, tb, etb, esb, e1b, gb, &mut dacc, &kc,
                        );
                    }
                }
                None => pass_c_fwd_block::<FMA, false, false>(
                    sb, tb, etb, esb, e1b, &mut gtail, &mut dacc, &kc,
                ),
            },
            SoftKind::ReverseKl => pass_c_rev_block(sb, tb, esb, &mut dacc, &kc),
        }
    }
    let div = if p.kind == SoftKind::ForwardKl {
        hsum(&dacc) * kc.inv_st
    } else {
        hsum(&dacc)
    };

    // Pass D (reverse KL only): ∂/∂s_j = q_j (log q_j − log p_j − D) / T.
    if let (Some(g), SoftKind::ReverseKl) = (grad.as_deref_mut(), p.kind) {
        for b in 0..nb {
            let (sb, tb) = (
                logit_block(s, &s_tail, b, tail),
                logit_block(t, &t_tail, b, tail),
            );
            let esb = blk(&es[b * LANES..b * LANES + LANES]);
            let e1b = blk(&e1[b * LANES..b * LANES + LANES]);
            let gb = grad_block(g, &mut gtail, b, tail);
            if hard {
                pass_d_block::<true>(sb, tb, esb, e1b, gb, div, &kc);
            } else {
                pass_d_block::<false>(sb, tb, esb, e1b, gb, div, &kc);
            }
        }
    }
    if let Some(g) = grad.as_deref_mut() {
        g[tail..].copy_from_slice(&gtail[..v - tail]);
    }

    let mut out = RowValues {
        soft: f64::from(w) * f64::from(p.soft_scale) * f64::from(div),
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
        if let Some(g) = grad {
            g[y] -= kc.coef_h * (1.0 - p.smoothing);
        }
    }
    (out, next_max)
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
fn rows_block<const FMA: bool>(
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
        row_maxima(&s[..v], &t[..v])
    } else {
        (0.0, 0.0)
    };
    for i in 0..r {
        let g = grad.as_deref_mut().map(|g| &mut g[i * v..(i + 1) * v]);
        let label = if p.has_hard { labels[i] } else { 0 };
        let next =
            (i + 1 < r).then(|| (&s[(i + 1) * v..(i + 2) * v], &t[(i + 1) * v..(i + 2) * v]));
        let (rv, next_max) = row::<FMA>(
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
fn rows_block_avx2(
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    grad: Option<&mut [f32]>,
) -> RowValues {
    rows_block::<true>(s, t, labels, weights, v, p, grad)
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
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function was compiled for (checked above).
        return unsafe { rows_block_avx2(s, t, labels, weights, v, p, grad) };
    }
    rows_block::<false>(s, t, labels, weights, v, p, grad)
}

/// Number of worker threads for `elements` logits: 1 below ~64 Ki elements (thread start-up
/// costs more than it saves), else the machine's parallelism (`KD_NUM_THREADS` overrides).
fn threads_for(elements: usize, rows: usize) -> usize {
    if elements < (1 << 16) || rows < 2 {
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
fn row_maxima(s: &[f32], t: &[f32]) -> (f32, f32) {
    let v = s.len();
    let tail = v - v % LANES;
    let mut ms8 = [f32::NEG_INFINITY; LANES];
    let mut mt8 = [f32::NEG_INFINITY; LANES];
    for b in 0..tail / LANES {
        max_block(
            &mut ms8,
            &mut mt8,
            &s[b * LANES..b * LANES + LANES],
            &t[b * LANES..b * LANES + LANES],
        );
    }
    finish_maxima(&ms8, &mt8, &s[tail..], &t[tail..])
}

#[inline(always)]
fn max_block(ms8: &mut Block, mt8: &mut Block, s: &[f32], t: &[f32]) {
    let (sb, tb) = (blk(s), blk(t));
    for i in 0..LANES {
        ms8[i] = gt_max(ms8[i], sb[i]);
    }
    for i in 0..LANES {
        mt8[i] = gt_max(mt8[i], tb[i]);
    }
}

#[inline(always)]
fn finish_maxima(ms8: &Block, mt8: &Block, s_tail: &[f32], t_tail: &[f32]) -> (f32, f32) {
    let mut ms = ms8.iter().fold(f32::NEG_INFINITY, |a, &b| gt_max(a, b));
    let mut mt = mt8.iter().fold(f32::NEG_INFINITY, |a, &b| gt_max(a, b));
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
    let n = threads_for(r * v, r);
    if n == 1 {
        return rows_block_best(s, t, labels, weights, v, p, grad);
    }
    let per = r.div_ceil(n);
    let label_block = |i: usize| -> &[i64] {
        if p.has_hard {
            &labels[i * per..((i + 1) * per).min(r)]
        } else {
            &[]
        }
    };
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(n);
        match grad {
            Some(g) => {
                for (i, gb) in g.chunks_mut(per * v).enumerate() {
                    let (a, b) = (i * per, ((i + 1) * per).min(r));
                    let (sb, tb, wb, lb) = (
                        &s[a * v..b * v],
                        &t[a * v..b * v],
                        &weights[a..b],
                        label_block(i),
                    );
                    handles
                        .push(scope.spawn(move || rows_block_best(sb, tb, lb, wb, v, p, Some(gb))));
                }
            }
            None => {
                for i in 0..r.div_ceil(per) {
                    let (a, b) = (i * per, ((i + 1) * per).min(r));
                    let (sb, tb, wb, lb) = (
                        &s[a * v..b * v],
                        &t[a * v..b * v],
                        &weights[a..b],
                        label_block(i),
                    );
                    handles.push(scope.spawn(move || rows_block_best(sb, tb, lb, wb, v, p, None)));
                }
            }
        }
        let mut acc = RowValues::default();
        for h in handles {
            let rv = h.join().expect("kd-losses fused kernel worker panicked");
            acc.soft += rv.soft;
            acc.hard += rv.hard;
        }
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpos_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let got = f64::from(exp_nonpos::<false>(x));
            let got_fma = f64::from(exp_nonpos::<true>(x));
            worst = worst.max(((got_fma - f64::from(x).exp()) / f64::from(x).exp()).abs());
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos::<false>(-100.0), 0.0);
        assert_eq!(exp_nonpos::<false>(0.0), 1.0);
    }

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
    /// `cargo test --release --lib kernel_timing -- --ignored --nocapture`.
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
        for _ in 0..2 {
            let t0 = std::time::Instant::now();
            let out = run_rows(&s, &t, &y, &w, v, &p, None);
            let a = t0.elapsed();
            let t0 = std::time::Instant::now();
            run_rows(&s, &t, &y, &w, v, &p, Some(&mut g));
            let b = t0.elapsed();
            let t0 = std::time::Instant::now();
            let mut g2 = grad_buffer(r * v);
            run_rows(&s, &t, &y, &w, v, &p, Some(&mut g2));
            let c = t0.elapsed();
            println!(
                "values only {a:?}; values+grad (warm buffer) {b:?}; values+grad (fresh buffer) {c:?}; {}",
                out.soft
            );
        }
    }
}
