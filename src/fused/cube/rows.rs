//! The row kernel of the fused logit losses: one cube per row, every divergence, with the
//! cross-entropy term (see the parent module for its passes).

use super::*;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn kd_rows_kernel<E: Float, F: Float, I: Numeric>(
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
