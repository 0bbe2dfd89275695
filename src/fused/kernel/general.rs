//! One row of the CPU kernel for the divergences other than the two KLs (generalized JSD, skew
//! KL / RKL, TVD, symmetric KL): the same algorithm as the CubeCL kernel (`fused/cube.rs`),
//! scalar, `f32` per entry with `f64` row sums.
//!
//! Passes over the row (from cache after the first): maxima and sums of exponentials; the
//! divergence as sums of KL terms — `a` for the KLs whose first distribution is the teacher's,
//! `b` for the student's, each with its cancellation-free companion sum — and `G = Σ q·∂D/∂q`;
//! the gradient `∂D/∂s_j = q_j (g_j − G) / T` (plus the hard term), written once.

use super::passes::{RowValues, ln_or_zero, recip_or_one};
use super::row::phi_over_d2;
use super::{KernelParams, SoftKind};

/// The row as its point mass when it holds a `+inf` (0 there, `-inf` elsewhere), else as is.
fn point_mass(x: &[f32]) -> (std::borrow::Cow<'_, [f32]>, bool) {
    if x.contains(&f32::INFINITY) {
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
        (std::borrow::Cow::Owned(p), true)
    } else {
        (std::borrow::Cow::Borrowed(x), false)
    }
}

/// Maximum (0 for an empty row) and `Σ exp((x − m)/T)`.
fn max_sum(x: &[f32], inv_t: f32) -> (f32, f64) {
    let m = x
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
    let s = x.iter().map(|&v| f64::from(((v - m) * inv_t).exp())).sum();
    (m, s)
}

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
fn refined(d1: f64, d2: f64, first_empty: bool) -> f64 {
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

/// One row of a divergence other than the two KLs (those run `row::row`). `grad`, when given,
/// receives `w · (grad_soft · ∂soft_r/∂s + grad_hard · ∂hard_r/∂s)`.
pub(super) fn general_row(
    s: &[f32],
    t: &[f32],
    label: i64,
    w: f32,
    p: &KernelParams,
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
    let (s, point_s) = point_mass(s);
    let (t, _) = point_mass(t);
    let inv_t = 1.0 / p.temperature;
    let (ms, ss) = max_sum(&s, inv_t);
    let (mt, st) = max_sum(&t, inv_t);
    let (ss32, st32) = (ss as f32, st as f32);
    let (ln_ss, ln_st) = (ln_or_zero(ss32), ln_or_zero(st32));
    let (inv_ss, inv_st) = (recip_or_one(ss32), recip_or_one(st32));
    let (mixture, share) = match p.kind {
        SoftKind::Mixture { teacher_share, .. } => (true, teacher_share),
        _ => (false, 0.0),
    };
    let (ln_wp, ln_wq) = (share.ln(), (1.0 - share).ln());
    let entry = |i: usize| {
        let (lt, ls) = ((t[i] - mt) * inv_t, (s[i] - ms) * inv_t);
        let mut e = Entry {
            lp: lt - ln_st,
            lq: ls - ln_ss,
            pt: lt.exp() * inv_st,
            qs: ls.exp() * inv_ss,
            lm: 0.0,
            m: 0.0,
            rq: 0.0,
        };
        if mixture {
            // m = w·p + (1 − w)·q directly where it is a normal number (one logarithm), in log
            // space where both probabilities underflow.
            let m = share * e.pt + (1.0 - share) * e.qs;
            if m > 1e-30 {
                e.lm = m.ln();
                e.m = m;
                e.rq = e.qs / m;
            } else {
                e.lm = log_mix(e.lp, e.lq, ln_wp, ln_wq);
                e.m = e.lm.exp();
                e.rq = if e.qs == 0.0 {
                    0.0
                } else {
                    (e.lq - e.lm).exp()
                };
            }
        }
        e
    };

    // The divergence's sums.
    let (mut a_d1, mut a_d2, mut b_d1, mut b_d2, mut g_sum) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for i in 0..v {
        let e = entry(i);
        let (pt, qs) = (f64::from(e.pt), f64::from(e.qs));
        let d = f64::from(e.lp - e.lq);
        match p.kind {
            SoftKind::TotalVariation => a_d1 += 0.5 * (pt - qs).abs(),
            SoftKind::Mixture { .. } | SoftKind::SymmetricKl => {
                let (dp, dq, bp, bq) = if mixture {
                    let m = f64::from(e.m);
                    (f64::from(e.lp - e.lm), f64::from(e.lq - e.lm), m, m)
                } else {
                    (d, -d, qs, pt)
                };
                if pt != 0.0 {
                    a_d1 += pt * dp;
                }
                a_d2 += phi_term(pt, bp, dp);
                if qs != 0.0 {
                    b_d1 += qs * dq;
                }
                b_d2 += phi_term(qs, bq, dq);
            }
            SoftKind::ForwardKl | SoftKind::ReverseKl => {
                unreachable!("the KL directions run row::row")
            }
        }
        g_sum += entry_qg(p.kind, &e);
    }
    let (p_empty, q_empty) = (st == 0.0, ss == 0.0);
    let value = match p.kind {
        SoftKind::TotalVariation => a_d1,
        SoftKind::SymmetricKl => refined(a_d1, a_d2, p_empty) + refined(b_d1, b_d2, q_empty),
        SoftKind::Mixture {
            teacher_coef,
            student_coef,
            ..
        } => {
            let mut value = 0.0;
            if teacher_coef != 0.0 {
                value += f64::from(teacher_coef) * refined(a_d1, a_d2, p_empty);
            }
            if student_coef != 0.0 {
                value += f64::from(student_coef) * refined(b_d1, b_d2, q_empty);
            }
            value
        }
        SoftKind::ForwardKl | SoftKind::ReverseKl => unreachable!("the KL directions run row::row"),
    };

    // The hard term (T = 1) and the gradient.
    let hard = p.has_hard;
    let (s1, sum_s) = if hard {
        let s1: f64 = s.iter().map(|&x| f64::from((x - ms).exp())).sum();
        (
            s1 as f32,
            s.iter().map(|&x| f64::from(x)).sum::<f64>() as f32,
        )
    } else {
        (0.0, 0.0)
    };
    let inv_s1 = recip_or_one(s1);
    let coef_s = f64::from(w) * f64::from(p.grad_soft) * f64::from(p.soft_scale) * f64::from(inv_t);
    let coef_h = w * p.grad_hard;
    let smooth_c = p.smoothing / v as f32;
    let y = if hard { label as usize } else { v };
    if let Some(g) = grad {
        for (i, gi) in g.iter_mut().enumerate() {
            let e = entry(i);
            let qs = f64::from(e.qs);
            let mut gv = if qs == 0.0 {
                0.0
            } else {
                coef_s * (entry_qg(p.kind, &e) - qs * g_sum)
            };
            if hard {
                let mut h = coef_h * ((s[i] - ms).exp() * inv_s1 - smooth_c);
                if i == y {
                    h -= coef_h * (1.0 - p.smoothing);
                }
                gv += f64::from(h);
            }
            *gi = if point_s && s_orig[i] == f32::INFINITY {
                0.0
            } else {
                gv as f32
            };
        }
    }
    let mut out = RowValues {
        soft: f64::from(w) * f64::from(p.soft_scale) * value,
        hard: 0.0,
    };
    if hard {
        let lse1 = ln_or_zero(s1);
        let mut ce = (1.0 - p.smoothing) * (lse1 - (s[y] - ms));
        if p.smoothing != 0.0 {
            ce += p.smoothing * (lse1 + ms - sum_s / v as f32);
        }
        out.hard = f64::from(w) * f64::from(ce);
    }
    out
}
