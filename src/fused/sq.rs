//! The CPU kernel of the fused squared-error losses (hidden-state and attention-map MSE): the
//! reduced value `Σ_r w_r Σ_k (s_rk − t_rk)²` and its gradient `2 w_r (s_rk − t_rk)` in one pass
//! over the rows, written against [`Lanes`] like the logit kernel.
//!
//! With `zero_inf`, an entry that is `±inf` in either input counts as `0` in both (masked
//! attention scores), as the composed path does. NaN propagates. Rows with `w_r = 0` are skipped
//! (value 0, zero gradient) whatever they hold.

use super::kernel::par_row_blocks;
use super::simd::{Block, LANES, Lanes, Portable};

/// `s − t`, or `0` where either is `±inf` (with `zero_inf`).
#[inline(always)]
fn diff<L: Lanes>(l: L, s: L::V, t: L::V, zero_inf: bool) -> L::V {
    let d = l.sub(s, t);
    if zero_inf {
        l.where_not_inf(t, l.where_not_inf(s, d))
    } else {
        d
    }
}

/// Rows of one block; returns `Σ_r w_r Σ_k d²`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sq_block<L: Lanes>(
    l: L,
    s: &[f32],
    t: &[f32],
    weights: &[f32],
    k: usize,
    zero_inf: bool,
    grad: Option<&mut [f32]>,
) -> f64 {
    let whole = k - k % LANES;
    let mut total = 0.0f64;
    let mut grad = grad;
    for (i, &w) in weights.iter().enumerate() {
        let (sr, tr) = (&s[i * k..(i + 1) * k], &t[i * k..(i + 1) * k]);
        let mut g = grad.as_deref_mut().map(|g| &mut g[i * k..(i + 1) * k]);
        if w == 0.0 {
            if let Some(g) = g {
                g.fill(0.0);
            }
            continue;
        }
        let two_w = l.splat(2.0 * w);
        let mut acc = l.splat(0.0);
        for b in (0..whole).step_by(LANES) {
            let sb: &Block = sr[b..b + LANES].try_into().expect("block");
            let tb: &Block = tr[b..b + LANES].try_into().expect("block");
            let d = diff(l, l.load(sb), l.load(tb), zero_inf);
            acc = l.fmadd(d, d, acc);
            if let Some(g) = g.as_deref_mut() {
                let gb: &mut Block = (&mut g[b..b + LANES]).try_into().expect("block");
                l.store(gb, l.mul(d, two_w));
            }
        }
        let mut row = l.hsum(acc);
        for j in whole..k {
            let (a, b) = (sr[j], tr[j]);
            let d = if zero_inf && (a.is_infinite() || b.is_infinite()) {
                0.0
            } else {
                a - b
            };
            row += d * d;
            if let Some(g) = g.as_deref_mut() {
                g[j] = d * (2.0 * w);
            }
        }
        total += f64::from(w) * f64::from(row);
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn sq_block_avx2(
    l: super::simd::Avx2,
    s: &[f32],
    t: &[f32],
    weights: &[f32],
    k: usize,
    zero_inf: bool,
    grad: Option<&mut [f32]>,
) -> f64 {
    sq_block(l, s, t, weights, k, zero_inf, grad)
}

#[allow(unsafe_code)]
fn sq_block_best(
    s: &[f32],
    t: &[f32],
    weights: &[f32],
    k: usize,
    zero_inf: bool,
    grad: Option<&mut [f32]>,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = super::simd::Avx2::detect() {
        // SAFETY: `Avx2::detect` returned `Some`, so the CPU has the features the function was
        // compiled for.
        return unsafe { sq_block_avx2(l, s, t, weights, k, zero_inf, grad) };
    }
    sq_block(Portable, s, t, weights, k, zero_inf, grad)
}

/// `Σ_r w_r Σ_k (s_rk − t_rk)²` over `R = weights.len()` rows of `k` entries; `grad`, when
/// given (`R · k` entries, fully overwritten), receives `2 w_r (s_rk − t_rk)`.
pub(crate) fn run_sq_rows(
    s: &[f32],
    t: &[f32],
    weights: &[f32],
    k: usize,
    zero_inf: bool,
    grad: Option<&mut [f32]>,
) -> f64 {
    let r = weights.len();
    debug_assert_eq!(s.len(), r * k);
    debug_assert_eq!(t.len(), r * k);
    if r == 0 || k == 0 {
        return 0.0;
    }
    par_row_blocks(r, k, grad, |rows, g| {
        let (a, b) = (rows.start, rows.end);
        sq_block_best(
            &s[a * k..b * k],
            &t[a * k..b * k],
            &weights[a..b],
            k,
            zero_inf,
            g,
        )
    })
    .iter()
    .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_with_inf_nan_and_skipped_rows() {
        let k = 13; // one whole block and a tail
        let s: Vec<f32> = (0..3 * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut t: Vec<f32> = (0..3 * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut s = s;
        s[2] = f32::INFINITY;
        t[10] = f32::NEG_INFINITY; // tail entry of row 0
        s[k + 3] = f32::NAN; // row 1 is skipped: its NaN must not leak
        let w = [0.5f32, 0.0, 2.0];
        let mut g = vec![1.0f32; 3 * k];
        let got = run_sq_rows(&s, &t, &w, k, true, Some(&mut g));
        let mut want = 0.0f64;
        for r in [0usize, 2] {
            for j in 0..k {
                let (a, b) = (s[r * k + j], t[r * k + j]);
                let d = if a.is_infinite() || b.is_infinite() {
                    0.0
                } else {
                    f64::from(a) - f64::from(b)
                };
                want += f64::from(w[r]) * d * d;
                let gw = 2.0 * f64::from(w[r]) * d;
                assert!((f64::from(g[r * k + j]) - gw).abs() < 1e-5, "grad {r},{j}");
            }
        }
        assert!(g[k..2 * k].iter().all(|&x| x == 0.0), "skipped row");
        assert_eq!(g[2], 0.0);
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
        // Without zero_inf the inf propagates; a NaN in a kept row too.
        assert!(run_sq_rows(&s, &t, &w, k, false, None).is_infinite());
        assert!(run_sq_rows(&s, &t, &[0.0, 1.0, 0.0], k, true, None).is_nan());
    }
}
