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

mod general;
mod passes;
mod row;
mod schedule;

use super::simd::{Lanes, Portable};
pub(crate) use passes::RowValues;
use passes::{Scratch, row_maxima};
use row::row;
pub(crate) use schedule::par_row_blocks;

/// Which divergence the soft term is. The CPU kernel computes the two KL directions with its
/// row (`row`) and the others with the general row (`general`), both vectorised; the CubeCL
/// kernel computes all of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SoftKind {
    /// `KL(p_teacher ‖ p_student)` (Hinton).
    ForwardKl,
    /// `KL(p_student ‖ p_teacher)` (MiniLLM, GKD's reverse mode).
    ReverseKl,
    /// `a·KL(p ‖ m) + b·KL(q ‖ m)` with the mixture `m = w·p + (1 − w)·q`: the generalized JSD
    /// (both conventions) and the skew KLs.
    Mixture {
        /// `w`, the teacher's share of the mixture.
        teacher_share: f32,
        /// `a`, the factor of `KL(p ‖ m)`.
        teacher_coef: f32,
        /// `b`, the factor of `KL(q ‖ m)`.
        student_coef: f32,
    },
    /// `½ Σ |p − q|`.
    TotalVariation,
    /// `KL(p ‖ q) + KL(q ‖ p)`.
    SymmetricKl,
}

impl SoftKind {
    /// Whether this is one of the two KL directions (the kinds the CPU kernel's KL row
    /// computes; the others take its general row).
    pub(crate) fn is_kl(self) -> bool {
        matches!(self, SoftKind::ForwardKl | SoftKind::ReverseKl)
    }
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

/// Where a block's student rows are read and its gradient rows written.
pub(crate) enum RowsIo<'s, 'g> {
    /// The student rows from `s`; the gradient, when asked for, into `grad` (`R · V`).
    Split {
        s: &'s [f32],
        grad: Option<&'g mut [f32]>,
    },
    /// The student rows are overwritten by their gradient: each row is copied to `copy` (one
    /// row of scratch) before its passes read it, and its gradient is written over it. The next
    /// row, read ahead for its maxima, is still the student's.
    InPlace { buf: &'g mut [f32], copy: Vec<f32> },
}

impl RowsIo<'_, '_> {
    /// The first row's student logits (before any row has run).
    #[inline(always)]
    fn first(&self, v: usize) -> &[f32] {
        match self {
            RowsIo::Split { s, .. } => &s[..v],
            RowsIo::InPlace { buf, .. } => &buf[..v],
        }
    }

    /// Row `i`'s student logits, row `i + 1`'s (if any) and row `i`'s gradient.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn row(&mut self, i: usize, v: usize) -> (&[f32], Option<&[f32]>, Option<&mut [f32]>) {
        match self {
            RowsIo::Split { s, grad } => (
                &s[i * v..(i + 1) * v],
                s.get((i + 1) * v..(i + 2) * v),
                grad.as_deref_mut().map(|g| &mut g[i * v..(i + 1) * v]),
            ),
            RowsIo::InPlace { buf, copy } => {
                let (cur, rest) = buf[i * v..].split_at_mut(v);
                copy.copy_from_slice(cur);
                (&copy[..], rest.get(..v), Some(cur))
            }
        }
    }
}

/// Rows `[R, V]` in a block. Returns the summed weighted values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_block<L: Lanes>(
    l: L,
    mut io: RowsIo<'_, '_>,
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
) -> RowValues {
    let mut scratch = Scratch::default();
    let int_pow = integer_power(p.temperature);
    let mut acc = RowValues::default();
    let r = weights.len();
    if !p.kind.is_kl() {
        for i in 0..r {
            let (s, _, g) = io.row(i, v);
            let label = if p.has_hard { labels[i] } else { 0 };
            let rv = general::general_row(
                l,
                s,
                &t[i * v..(i + 1) * v],
                label,
                weights[i],
                p,
                int_pow,
                &mut scratch,
                g,
            );
            acc.soft += rv.soft;
            acc.hard += rv.hard;
        }
        return acc;
    }
    let mut maxima = if r > 0 {
        row_maxima(l, io.first(v), &t[..v])
    } else {
        (0.0, 0.0)
    };
    for i in 0..r {
        let (s, s_next, g) = io.row(i, v);
        let label = if p.has_hard { labels[i] } else { 0 };
        let next = s_next
            .filter(|_| i + 1 < r)
            .map(|s_next| (s_next, &t[(i + 1) * v..(i + 2) * v]));
        let (rv, next_max) = row(
            l,
            s,
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
    io: RowsIo<'_, '_>,
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
) -> RowValues {
    rows_block(l, io, t, labels, weights, v, p)
}

#[allow(unsafe_code)]
fn rows_block_best(
    io: RowsIo<'_, '_>,
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
) -> RowValues {
    #[cfg(target_arch = "x86_64")]
    if let Some(l) = super::simd::Avx2::detect() {
        // SAFETY: `Avx2::detect` returned `Some`, so the CPU has the features the function was
        // compiled for.
        return unsafe { rows_block_avx2(l, io, t, labels, weights, v, p) };
    }
    rows_block(Portable, io, t, labels, weights, v, p)
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
    debug_assert_eq!(s.len(), weights.len() * v);
    run_blocks(t, labels, weights, v, p, grad, |rows, g| RowsIo::Split {
        s: &s[rows.start * v..rows.end * v],
        grad: g,
    })
}

/// [`run_rows`] with the gradient written over the student logits `s_grad` (`R · v`): the
/// values of `run_rows(s, ..)`, and `s_grad` holds the gradient `run_rows` would write, bit for
/// bit. Each row is copied to one row of scratch before it is read, so no second `[R, V]`
/// buffer is needed.
pub(crate) fn run_rows_in_place(
    s_grad: &mut [f32],
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
) -> RowValues {
    debug_assert_eq!(s_grad.len(), weights.len() * v);
    run_blocks(t, labels, weights, v, p, Some(s_grad), |_, g| {
        RowsIo::InPlace {
            buf: g.expect("a block of the student's rows"),
            copy: vec![0.0; v],
        }
    })
}

/// The blocks of [`run_rows`] / [`run_rows_in_place`]: `io(rows, the block's rows of buf)`
/// says where a block reads its student rows and writes its gradient.
fn run_blocks<'s, 'b>(
    t: &[f32],
    labels: &[i64],
    weights: &[f32],
    v: usize,
    p: &KernelParams,
    buf: Option<&'b mut [f32]>,
    io: impl for<'g> Fn(std::ops::Range<usize>, Option<&'g mut [f32]>) -> RowsIo<'s, 'g> + Sync,
) -> RowValues {
    let r = weights.len();
    debug_assert_eq!(t.len(), r * v);
    if r == 0 || v == 0 {
        if let Some(g) = buf {
            g.fill(0.0);
        }
        return RowValues::default();
    }
    let blocks = par_row_blocks(r, v, buf, |rows, g| {
        let labels = if p.has_hard {
            &labels[rows.clone()]
        } else {
            &[]
        };
        let (a, b) = (rows.start, rows.end);
        rows_block_best(io(rows, g), &t[a * v..b * v], labels, &weights[a..b], v, p)
    });
    blocks
        .iter()
        .fold(RowValues::default(), |acc, rv| RowValues {
            soft: acc.soft + rv.soft,
            hard: acc.hard + rv.hard,
        })
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
    #[test]
    fn gradient_over_the_student_equals_the_separate_gradient() {
        // Enough rows and entries for several parallel blocks; padded tails (v % LANES ≠ 0),
        // an ignored row (weight 0), and every kind at an integer and a fractional T.
        let (r, v) = (13, 2531);
        let s: Vec<f32> = (0..r * v)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.013)
            .collect();
        let t: Vec<f32> = (0..r * v)
            .map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 0.011)
            .collect();
        let labels: Vec<i64> = (0..r as i64).map(|i| (i * 37) % v as i64).collect();
        let mut weights = vec![0.25f32; r];
        weights[3] = 0.0;
        let mixture = SoftKind::Mixture {
            teacher_share: 0.3,
            teacher_coef: 0.3,
            student_coef: 0.7,
        };
        let kinds = [
            SoftKind::ForwardKl,
            SoftKind::ReverseKl,
            mixture,
            SoftKind::TotalVariation,
            SoftKind::SymmetricKl,
        ];
        for kind in kinds {
            for temperature in [2.0f32, 1.7] {
                let p = KernelParams {
                    kind,
                    temperature,
                    soft_scale: temperature * temperature,
                    has_hard: true,
                    smoothing: 0.1,
                    alpha: 0.6,
                    beta: 0.4,
                    grad_soft: 0.6,
                    grad_hard: 0.4,
                };
                let mut grad = vec![f32::NAN; r * v];
                let want = run_rows(&s, &t, &labels, &weights, v, &p, Some(&mut grad));
                let mut over = s.clone();
                let got = run_rows_in_place(&mut over, &t, &labels, &weights, v, &p);
                assert_eq!(
                    (got.soft, got.hard),
                    (want.soft, want.hard),
                    "{kind:?} T={temperature}"
                );
                let same = grad
                    .iter()
                    .zip(&over)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{kind:?} T={temperature}: gradients differ");
                assert!(grad.iter().any(|&g| g != 0.0));
            }
        }
    }
}

#[cfg(all(test, feature = "cpu-kernel"))]
mod timing {
    use super::*;
    use crate::fused::pool::grad_buffer;

    /// Kernel-only timing (not a test of speed: prints, never asserts). Run with
    /// `cargo test --release --lib kernel_timing -- --ignored --nocapture` (`KD_TIMING_SHAPE=RxV`,
    /// `KD_TIMING_REPS=N` for the median of N calls, `KD_TIMING_KIND` for the divergence).
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
        // `KD_TIMING_KIND`: fkl (default), rkl, jsd (β = 0.5), skew (skew KL, α = 0.1), tvd, sym.
        let kind = match std::env::var("KD_TIMING_KIND").as_deref().unwrap_or("fkl") {
            "fkl" => SoftKind::ForwardKl,
            "rkl" => SoftKind::ReverseKl,
            "jsd" => SoftKind::Mixture {
                teacher_share: 0.5,
                teacher_coef: 0.5,
                student_coef: 0.5,
            },
            "skew" => SoftKind::Mixture {
                teacher_share: 0.9,
                teacher_coef: 1.0,
                student_coef: 0.0,
            },
            "tvd" => SoftKind::TotalVariation,
            "sym" => SoftKind::SymmetricKl,
            other => panic!("KD_TIMING_KIND: unknown kind {other}"),
        };
        let p = KernelParams {
            kind,
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
