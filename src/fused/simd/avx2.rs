//! The AVX2 + FMA implementation of [`Lanes`]. Every method is `#[inline(always)]` and meant
//! to be inlined into a function compiled with `#[target_feature(enable = "avx2,fma")]`.
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
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
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
    fn select_zero(self, c: __m256, if_zero: __m256, otherwise: __m256) -> __m256 {
        unsafe {
            let m = _mm256_cmp_ps::<_CMP_EQ_OQ>(c, _mm256_setzero_ps());
            _mm256_blendv_ps(otherwise, if_zero, m)
        }
    }
    #[inline(always)]
    fn all_gt(self, x: __m256, bound: f32) -> bool {
        unsafe {
            let m = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(bound));
            _mm256_movemask_ps(m) == 0xff
        }
    }
    #[inline(always)]
    fn exponent_mantissa(self, x: __m256) -> (__m256, __m256) {
        unsafe {
            let bits = _mm256_castps_si256(x);
            let e = _mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xff)),
                _mm256_set1_epi32(127),
            );
            let m = _mm256_or_si256(
                _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x3f80_0000),
            );
            (_mm256_cvtepi32_ps(e), _mm256_castsi256_ps(m))
        }
    }
    #[inline(always)]
    fn to_block(self, v: __m256) -> Block {
        let mut out = [0.0f32; LANES];
        self.store(&mut out, v);
        out
    }
}
