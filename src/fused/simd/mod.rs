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
    /// `a / b`.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
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
    /// `c = 0 ? if_zero : otherwise` (false for NaN `c`).
    fn select_zero(self, c: Self::V, if_zero: Self::V, otherwise: Self::V) -> Self::V;
    /// Whether every lane of `x` is `> bound` (false for a NaN lane).
    fn all_gt(self, x: Self::V, bound: f32) -> bool;
    /// For a positive normal `x = 2^e · m` (`m ∈ [1, 2)`): `(e, m)`, `e` as a float.
    fn exponent_mantissa(self, x: Self::V) -> (Self::V, Self::V);
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

    /// `ln x` for positive normal `x` (other inputs give garbage: callers keep them out).
    ///
    /// `x = 2^e · m` with `m ∈ (√½, √2]` (exact), `ln m = f − f²/2 + f³·P(f)` for `f = m − 1`
    /// with the degree-8 minimax polynomial `P` of Cephes' `logf`, and `e · ln 2` in two parts
    /// (`0.693359375` exact, and a correction). Absolute error below 1.5e-7 · max(1, |ln x|).
    #[inline(always)]
    fn ln_normal(self, x: Self::V) -> Self::V {
        let (e, m) = self.exponent_mantissa(x);
        let sqrt2 = self.splat(std::f32::consts::SQRT_2);
        // m > √2: halve it (exact) and count it in the exponent.
        let e = self.select_lt(sqrt2, m, self.add(e, self.splat(1.0)), e);
        let m = self.select_lt(sqrt2, m, self.mul(m, self.splat(0.5)), m);
        let f = self.sub(m, self.splat(1.0));
        let z = self.mul(f, f);
        let mut p = self.splat(7.037_683_6e-2);
        for c in [
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ] {
            p = self.fmadd(p, f, self.splat(c));
        }
        let mut y = self.mul(self.mul(p, f), z);
        y = self.fmadd(e, self.splat(-2.121_944_4e-4), y);
        y = self.fmadd(z, self.splat(-0.5), y);
        let r = self.add(f, y);
        self.fmadd(e, self.splat(0.693_359_4), r)
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
    fn div(self, a: Block, b: Block) -> Block {
        map2(a, b, |a, b| a / b)
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
    fn select_zero(self, c: Block, if_zero: Block, otherwise: Block) -> Block {
        std::array::from_fn(|i| {
            if c[i] == 0.0 {
                if_zero[i]
            } else {
                otherwise[i]
            }
        })
    }
    #[inline(always)]
    fn all_gt(self, x: Block, bound: f32) -> bool {
        x.iter().all(|&v| v > bound)
    }
    #[inline(always)]
    fn exponent_mantissa(self, x: Block) -> (Block, Block) {
        (
            x.map(|v| ((v.to_bits() >> 23) & 0xff) as f32 - 127.0),
            x.map(|v| f32::from_bits((v.to_bits() & 0x007f_ffff) | 0x3f80_0000)),
        )
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
mod avx2;

#[cfg(test)]
mod tests;
