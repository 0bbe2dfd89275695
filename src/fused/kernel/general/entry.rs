//! The general row's scalar parts: a mixture block's entries where the vector logarithm does
//! not apply (an underflowing mixture, `-inf` logits, NaN), per entry in `f64` sums with the
//! mixture in log space, and the KL value from its two sums.

use super::super::super::simd::{Block, LANES, Lanes};
use super::super::SoftKind;
use super::super::row::phi_over_d2;
use super::{Consts, Sums};

/// `a·φ(d)` (`φ(d) = e^{−d} − 1 + d`), or `b` where `a = 0`: the companion sum's term.
fn phi_term(a: f64, b: f64, d: f64) -> f64 {
    if a == 0.0 {
        b
    } else if d.abs() <= 0.5 {
        a * d * d * phi_over_d2(d)
    } else {
        b - a + a * d
    }
}

/// A KL from its sums: 0 for an empty first distribution, `D1 + log1p(D2 − D1)` for a finite
/// `D1` (lifted to 0 within 4 ulp), `D1` otherwise (as `rows::kl_rows_normalized`).
pub(super) fn refined(d1: f64, d2: f64, first_empty: bool) -> f64 {
    if first_empty {
        return 0.0;
    }
    let x = d2 - d1;
    if !d1.is_finite() || x <= -1.0 {
        return d1;
    }
    let corr = x.ln_1p();
    let kl = d1 + corr;
    let tol = 4.0 * f64::from(f32::EPSILON) * (d1.abs() + corr.abs());
    if kl < 0.0 && kl >= -tol { 0.0 } else { kl }
}

/// The per-entry quantities of one row: log-probabilities and probabilities at `T`, and for the
/// mixture kinds `ln m` and `q/m`.
struct Entry {
    lp: f32,
    lq: f32,
    pt: f32,
    qs: f32,
    lm: f32,
    m: f32,
    rq: f32,
}

/// `ln(w·p + (1 − w)·q)` from log-probabilities (`-inf` when both sides are).
fn log_mix(lp: f32, lq: f32, ln_wp: f32, ln_wq: f32) -> f32 {
    let (a, b) = (ln_wp + lp, ln_wq + lq);
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if hi == f32::NEG_INFINITY {
        f32::NEG_INFINITY
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// `q·g` at one entry (`g = ∂D/∂q` up to a constant that cancels), as `cube::entry_qg`.
fn entry_qg(kind: SoftKind, e: &Entry) -> f64 {
    let (lp, lq, pt, qs) = (
        f64::from(e.lp),
        f64::from(e.lq),
        f64::from(e.pt),
        f64::from(e.qs),
    );
    match kind {
        SoftKind::Mixture {
            teacher_share,
            teacher_coef,
            student_coef,
        } => {
            if qs == 0.0 {
                return 0.0;
            }
            let (cp, cq, w1) = (
                f64::from(teacher_coef),
                f64::from(student_coef),
                1.0 - f64::from(teacher_share),
            );
            let lm = f64::from(e.lm);
            let mut qg = 0.0;
            if cq != 0.0 {
                qg += cq * qs * (lq - lm);
            }
            if w1 != 0.0 {
                qg -= w1 * f64::from(e.rq) * (cp * pt + cq * qs);
            }
            qg
        }
        SoftKind::TotalVariation => {
            if qs > pt {
                0.5 * qs
            } else if qs < pt {
                -0.5 * qs
            } else {
                0.0
            }
        }
        SoftKind::SymmetricKl => {
            if qs == 0.0 {
                -pt
            } else {
                -pt + qs * (lq - lp)
            }
        }
        SoftKind::ReverseKl => {
            if qs == 0.0 {
                0.0
            } else {
                qs * (lq - lp)
            }
        }
        SoftKind::ForwardKl => -pt,
    }
}

/// [`value_block`] for a mixture block with an entry outside the vector logarithm's range: per
/// entry, in `f64` sums, with the mixture in log space where it underflows.
#[cold]
#[inline(never)]
pub(super) fn mixture_block_scalar<L: Lanes>(
    l: L,
    kind: SoftKind,
    (lp, lq, pt, qs): (L::V, L::V, L::V, L::V),
    k: &Consts<L>,
    sums: &mut Sums<L>,
    qg: &mut Block,
) {
    let SoftKind::Mixture { teacher_share, .. } = kind else {
        unreachable!("only the mixture kinds take a logarithm")
    };
    let (lp, lq, pt, qs) = (
        l.to_block(lp),
        l.to_block(lq),
        l.to_block(pt),
        l.to_block(qs),
    );
    let [a_d1, a_d2, b_d1, b_d2, g] = &mut sums.total;
    for i in 0..LANES {
        let mut e = Entry {
            lp: lp[i],
            lq: lq[i],
            pt: pt[i],
            qs: qs[i],
            lm: 0.0,
            m: 0.0,
            rq: 0.0,
        };
        let m = teacher_share * e.pt + (1.0 - teacher_share) * e.qs;
        if m > 1e-30 {
            e.lm = m.ln();
            e.m = m;
            e.rq = e.qs / m;
        } else {
            e.lm = log_mix(e.lp, e.lq, k.ln_share.0, k.ln_share.1);
            e.m = e.lm.exp();
            e.rq = if e.qs == 0.0 {
                0.0
            } else {
                (e.lq - e.lm).exp()
            };
        }
        let (pt, qs, m) = (f64::from(e.pt), f64::from(e.qs), f64::from(e.m));
        let (dp, dq) = (f64::from(e.lp - e.lm), f64::from(e.lq - e.lm));
        if pt != 0.0 {
            *a_d1 += pt * dp;
        }
        *a_d2 += phi_term(pt, m, dp);
        if qs != 0.0 {
            *b_d1 += qs * dq;
        }
        *b_d2 += phi_term(qs, m, dq);
        let q_g = entry_qg(kind, &e);
        *g += q_g;
        qg[i] = q_g as f32;
    }
}
