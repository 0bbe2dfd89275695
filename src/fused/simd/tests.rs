//! The lane operations against `f64` and against each other (portable vs AVX2).

use super::*;

/// Worst relative error of `exp2_nonpos` on `[−126, 0]` against `f64`, and of
/// `exp_nonpos` on `[−87, 0]` beyond the argument rounding (`|x| · 1.2e-7`); checks the
/// special values.
fn exp_worst<L: Lanes>(l: L) -> (f64, f64) {
    let (mut worst2, mut worst) = (0.0f64, 0.0f64);
    let mut x = -126.0f32;
    while x <= 0.0 {
        let xs: Block = std::array::from_fn(|i| (x - i as f32 * 1.3e-4).max(-126.0));
        let got = l.to_block(l.exp2_nonpos(l.load(&xs)));
        for (g, x) in got.iter().zip(xs) {
            let want = f64::from(x).exp2();
            worst2 = worst2.max(((f64::from(*g) - want) / want).abs());
        }
        if x >= -87.0 {
            let got = l.to_block(l.exp_nonpos(l.load(&xs)));
            for (g, x) in got.iter().zip(xs) {
                let want = f64::from(x).exp();
                let rel = ((f64::from(*g) - want) / want).abs();
                worst = worst.max(rel - 1.2e-7 * f64::from(x).abs());
            }
        }
        x += 0.001_3;
    }
    let special = [
        f32::NEG_INFINITY,
        -127.0,
        0.0,
        f32::NAN,
        -126.5,
        -1e4,
        -0.0,
        -1e-30,
    ];
    let got = l.to_block(l.exp2_nonpos(l.load(&special)));
    assert_eq!(&got[..3], &[0.0, 0.0, 1.0]);
    assert!(got[3].is_nan(), "2^NaN = {}", got[3]);
    assert_eq!(&got[4..7], &[0.0, 0.0, 1.0]);
    assert_eq!(got[7], 1.0);
    let got = l.to_block(l.exp_nonpos(l.load(&special)));
    assert_eq!(&got[..3], &[0.0, 0.0, 1.0]);
    assert!(got[3].is_nan(), "exp(NaN) = {}", got[3]);
    (worst2, worst)
}

#[test]
fn exp_nonpos_is_accurate() {
    let check = |name: &str, (worst2, worst): (f64, f64)| {
        assert!(
            worst2 < 1.5e-7,
            "{name}: exp2 worst relative error {worst2}"
        );
        assert!(
            worst < 1.5e-7,
            "{name}: exp worst relative error {worst} + |x|·1.2e-7"
        );
    };
    check("portable", exp_worst(Portable));
    #[cfg(target_arch = "x86_64")]
    if let Some(a) = Avx2::detect() {
        check("avx2", exp_worst(a));
    }
}

/// Worst absolute error of `ln_normal` over positive normal floats against `f64`, in units
/// of `max(1, |ln x|)`.
fn ln_worst<L: Lanes>(l: L) -> f64 {
    let mut worst = 0.0f64;
    let mut x = f32::MIN_POSITIVE;
    while x < f32::MAX / 2.0 {
        let xs: Block = std::array::from_fn(|i| x * (1.0 + i as f32 * 0.013_7));
        let got = l.to_block(l.ln_normal(l.load(&xs)));
        for (g, x) in got.iter().zip(xs) {
            let want = f64::from(x).ln();
            worst = worst.max((f64::from(*g) - want).abs() / want.abs().max(1.0));
        }
        x *= 1.000_93;
    }
    // Around 1, where the logarithm is small and the polynomial carries it all.
    let mut x = 0.5f32;
    while x < 2.0 {
        let xs: Block = std::array::from_fn(|i| x + i as f32 * 1.1e-5);
        let got = l.to_block(l.ln_normal(l.load(&xs)));
        for (g, x) in got.iter().zip(xs) {
            let want = f64::from(x).ln();
            worst = worst.max((f64::from(*g) - want).abs() / want.abs().max(1.0));
        }
        x += 8.9e-5;
    }
    let exact = l.to_block(l.ln_normal(l.splat(1.0)));
    assert_eq!(exact, [0.0; LANES], "ln 1 = 0 exactly");
    worst
}

#[test]
fn ln_normal_is_accurate() {
    let worst = ln_worst(Portable);
    assert!(worst < 1.5e-7, "portable: ln worst error {worst}");
    #[cfg(target_arch = "x86_64")]
    if let Some(a) = Avx2::detect() {
        let worst = ln_worst(a);
        assert!(worst < 1.5e-7, "avx2: ln worst error {worst}");
    }
}

fn same_semantics<L: Lanes>(l: L) {
    let nan = f32::NAN;
    let a: Block = [1.0, nan, -2.0, 3.0, f32::NEG_INFINITY, 0.0, 5.0, nan];
    let b: Block = [2.0, 1.0, nan, 3.0, -1.0, -0.0, 4.0, nan];
    let m = l.to_block(l.gt_max(l.load(&a), l.load(&b)));
    let want = Portable.gt_max(a, b);
    for (x, y) in m.iter().zip(want) {
        assert!(x.to_bits() == y.to_bits(), "{m:?} vs {want:?}");
    }
    let w = l.to_block(l.where_nonzero(l.load(&b), l.load(&a)));
    assert_eq!(w[0], 1.0);
    assert!(w[1].is_nan(), "a NaN value is kept");
    assert_eq!(w[2], -2.0, "a NaN condition keeps the value");
    assert_eq!(w[5].to_bits(), 0.0f32.to_bits());
    let c: Block = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        nan,
        0.0,
        -1e38,
        1.0,
        -0.0,
        3.0,
    ];
    let w = l.to_block(l.where_not_inf(l.load(&c), l.splat(2.0)));
    assert_eq!(w, [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
    let z = l.to_block(l.select_zero(l.load(&c), l.splat(1.0), l.splat(2.0)));
    assert_eq!(
        z,
        [2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0],
        "-0 is 0, NaN is not"
    );
    let pos: Block = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    assert!(l.all_gt(l.load(&pos), 0.5));
    assert!(!l.all_gt(l.load(&pos), 1.0), "1 is not > 1");
    assert!(!l.all_gt(l.load(&c), -2e38), "a NaN lane is not > anything");
    let (e, m) = l.exponent_mantissa(l.load(&[0.75, 1.0, 3.0, 1e-30, 6e37, 1.5, 0.5, 2.0]));
    let (e, m) = (l.to_block(e), l.to_block(m));
    assert_eq!(e, [-1.0, 0.0, 1.0, -100.0, 125.0, 0.0, -1.0, 1.0]);
    assert_eq!(m[..3], [1.5, 1.0, 1.5]);
    assert!(m[3] >= 1.0 && m[3] < 2.0 && (m[3] * 2f32.powi(-100) - 1e-30).abs() < 1e-36);
}

#[test]
fn lane_operations_agree() {
    same_semantics(Portable);
    #[cfg(target_arch = "x86_64")]
    if let Some(a) = Avx2::detect() {
        same_semantics(a);
    }
}
