//! Eight `f32` lanes for the CPU kernel: one trait, [`Lanes`], with a portable implementation
//! (arrays; LLVM vectorises what it can) and, on x86-64, an AVX2 + FMA one (one `__m256` per
//! value, every operation one instruction).
//!
//! The kernel is written once against [`Lanes`]; `run_rows` picks the implementation at run
//! time. Both compute the same operations in the same order per lane; they differ only in
//! whether `a · b + c` is rounded once (FMA) or twice.

/// Width of a block (one AVX register of `f32`).
pub(crate) const LANES: usize = 8;

/// One block of lanes in memory.
pub(crate) type Block = [f32; LANES];

/// Operations on blocks of [`LANES`] `f32` values, each lane independent.
pub(crate) trait Lanes: Copy {
    /// A block in registers.
    type V: Copy;

    /// Every lane `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Reads a block.
    fn load(self, x: &Block) -> Self::V;
    /// Writes a block.
    fn store(self, x: &mut Block, v: Self::V);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once where the instruction set has FMA.
    fn fmadd(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `b > a ? b : a`: a NaN in `b` is skipped, a NaN in `a` stays.
    fn gt_max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `x < bound ? if_less : otherwise` (false for NaN `x`).
    fn select_lt(self, x: Self::V, bound: Self::V, if_less: Self::V, otherwise: Self::V)
    -> Self::V;
    /// `c ≠ 0 ? a : 0` (true for NaN `c`).
    fn where_nonzero(self, c: Self::V, a: Self::V) -> Self::V;
    /// `|c| ≠ ∞ ? a : 0` (true for NaN `c`).
    fn where_not_inf(self, c: Self::V, a: Self::V) -> Self::V;
    /// `2^(n)` for `kn = n + 1.5 · 2^23` holding an integer `n ∈ [−126, 0]` in its low mantissa
    /// bits (see [`Lanes::exp_nonpos`]).
    fn pow2_from_rounded(self, kn: Self::V) -> Self::V;
    /// The lanes, to memory.
    fn to_block(self, v: Self::V) -> Block;

    /// `2^x` for `x ≤ 0` (also `−inf` → 0).
    ///
    /// `x = n + f` with `n` the nearest integer and `f ∈ [−½, ½]` (exact in binary), `2^f` by a
    /// degree-6 relative-minimax polynomial (relative error below 8e-8 in `f32` arithmetic
    /// with FMA), `2^n` by integer operations on the exponent bits. Results below
    /// `f32::MIN_POSITIVE` (`x < −126`) flush to 0. NaN gives NaN. No float → int conversion:
    /// adding `1.5 · 2^23` rounds to the integer `n` and leaves it in the low mantissa bits.
    #[inline(always)]
    fn exp2_nonpos(self, x: Self::V) -> Self::V {
        const ROUND: f32 = 12_582_912.0;
        let lim = self.splat(-126.0);
        // Inputs are ≤ 0 up to rounding (logits shifted by their maximum); only underflow is
        // clamped (`lim > x ? lim : x` keeps a NaN `x`).
        let xc = self.gt_max(x, lim);
        let kn = self.add(xc, self.splat(ROUND));
        let f = self.sub(xc, self.sub(kn, self.splat(ROUND)));
        let mut p = self.splat(1.535_336_2e-4);
        for c in [
            1.339_887_5e-3,
            9.618_437e-3,
            5.550_332_4e-2,
            2.402_264_8e-1,
            6.931_472e-1,
            1.0,
        ] {
            p = self.fmadd(p, f, self.splat(c));
        }
        let v = self.mul(p, self.pow2_from_rounded(kn));
        self.select_lt(x, lim, self.splat(0.0), v)
    }

    /// `exp(x) = 2^(x · log₂e)` for `x ≤ 0` (also `−inf` → 0); see [`Lanes::exp2_nonpos`].
    /// The rounding of the product and of `log₂e` adds a relative error of at most `|x| · 1.2e-7`.
    #[inline(always)]
    fn exp_nonpos(self, x: Self::V) -> Self::V {
        self.exp2_nonpos(self.mul(x, self.splat(std::f32::consts::LOG2_E)))
    }

    /// Sum of the lanes, in a fixed order.
    #[inline(always)]
    fn hsum(self, v: Self::V) -> f32 {
        let a = self.to_block(v);
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    }
}

/// Plain arrays, one scalar operation per lane (no FMA).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

#[inline(always)]
fn map2(a: Block, b: Block, f: impl Fn(f32, f32) -> f32) -> Block {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Lanes for Portable {
    type V = Block;

    #[inline(always)]
    fn splat(self, x: f32) -> Block {
        [x; LANES]
    }
    #[inline(always)]
    fn load(self, x: &Block) -> Block {
        *x
    }
    #[inline(always)]
    fn store(self, x: &mut Block, v: Block) {
        *x = v;
    }
    #[inline(always)]
    fn add(self, a: Block, b: Block) -> Block {
        map2(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: Block, b: Block) -> Block {
        map2(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: Block, b: Block) -> Block {
        map2(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn fmadd(self, a: Block, b: Block, c: Block) -> Block {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn gt_max(self, a: Block, b: Block) -> Block {
        map2(a, b, |a, b| if b > a { b } else { a })
    }
    #[inline(always)]
    fn select_lt(self, x: Block, bound: Block, if_less: Block, otherwise: Block) -> Block {
        std::array::from_fn(|i| {
            if x[i] < bound[i] {
                if_less[i]
            } else {
                otherwise[i]
            }
        })
    }
    #[inline(always)]
    fn where_nonzero(self, c: Block, a: Block) -> Block {
        map2(c, a, |c, a| if c != 0.0 { a } else { 0.0 })
    }
    #[inline(always)]
    fn where_not_inf(self, c: Block, a: Block) -> Block {
        map2(c, a, |c, a| if c.abs() != f32::INFINITY { a } else { 0.0 })
    }
    #[inline(always)]
    fn pow2_from_rounded(self, kn: Block) -> Block {
        kn.map(|k| f32::from_bits(k.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23))
    }
    #[inline(always)]
    fn to_block(self, v: Block) -> Block {
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! Every method is `#[inline(always)]` and meant to be inlined into a function compiled
    //! with `#[target_feature(enable = "avx2,fma")]`.
    //!
    //! SAFETY (all `unsafe` blocks below): the intrinsics need AVX, AVX2 and FMA, and a value of
    //! [`Avx2`] exists only when [`Avx2::detect`] found them on this CPU (its field is private,
    //! so it cannot be built elsewhere). Loads and stores go through `&Block`/`&mut Block`,
    //! which are valid for exactly the 8 `f32` the unaligned intrinsics touch.
    use super::{Block, LANES, Lanes};
    use std::arch::x86_64::*;

    /// Proof that the CPU has AVX2 and FMA.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2 {
        _detected: (),
    }

    impl Avx2 {
        /// `Some` when this CPU supports AVX2 and FMA.
        pub(crate) fn detect() -> Option<Self> {
            (std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
                .then_some(Self { _detected: () })
        }
    }

    impl Lanes for Avx2 {
        type V = __m256;

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn load(self, x: &Block) -> __m256 {
            unsafe { _mm256_loadu_ps(x.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, x: &mut Block, v: __m256) {
            unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn fmadd(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn gt_max(self, a: __m256, b: __m256) -> __m256 {
            // maxps(x, y) = x > y ? x : y, so maxps(b, a) = b > a ? b : a.
            unsafe { _mm256_max_ps(b, a) }
        }
        #[inline(always)]
        fn select_lt(self, x: __m256, bound: __m256, if_less: __m256, otherwise: __m256) -> __m256 {
            unsafe {
                let m = _mm256_cmp_ps::<_CMP_LT_OQ>(x, bound);
                _mm256_blendv_ps(otherwise, if_less, m)
            }
        }
        #[inline(always)]
        fn where_nonzero(self, c: __m256, a: __m256) -> __m256 {
            unsafe {
                // Unordered not-equal: NaN counts as nonzero.
                let m = _mm256_cmp_ps::<_CMP_NEQ_UQ>(c, _mm256_setzero_ps());
                _mm256_and_ps(a, m)
            }
        }
        #[inline(always)]
        fn where_not_inf(self, c: __m256, a: __m256) -> __m256 {
            unsafe {
                let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), c);
                let m = _mm256_cmp_ps::<_CMP_NEQ_UQ>(abs, _mm256_set1_ps(f32::INFINITY));
                _mm256_and_ps(a, m)
            }
        }
        #[inline(always)]
        fn pow2_from_rounded(self, kn: __m256) -> __m256 {
            unsafe {
                let bits = _mm256_sub_epi32(
                    _mm256_castps_si256(kn),
                    _mm256_set1_epi32(0x4B40_0000 - 127),
                );
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits))
            }
        }
        #[inline(always)]
        fn to_block(self, v: __m256) -> Block {
            let mut out = [0.0f32; LANES];
            self.store(&mut out, v);
            out
        }
    }
}

#[cfg(test)]
mod tests {
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
    }

    #[test]
    fn lane_operations_agree() {
        same_semantics(Portable);
        #[cfg(target_arch = "x86_64")]
        if let Some(a) = Avx2::detect() {
            same_semantics(a);
        }
    }
}
