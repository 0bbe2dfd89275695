//! The top-k teacher kernel: forward KL against a renormalised top-k teacher, one cube per row.

use super::*;

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
pub(super) fn kd_sparse_kernel<E: Float, F: Float, I: Numeric>(
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
