//! `acc += hᵀ·g` in place on Flex: one GEMM that reads and writes the accumulator
//! (`gemm`'s `read_dst`), instead of a product per column block added into it (which moves the
//! `[H, V]` accumulator through memory five times per chunk).
//!
//! Routed as the fused kernels are ([`crate::fused::route`]): [`Probe`] implements
//! [`FlexGemm`] only where Burn's dispatch can hand over a Flex primitive (the application
//! enabled `flex`); elsewhere the fallback [`NoFlexGemm`] declines and the caller takes the
//! portable path.

use burn::backend::{Backend, DispatchKindConversion, DispatchTensor};
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;

use crate::fused::route::Probe;

/// A backend whose float primitive is Flex's tensor.
#[allow(dead_code)]
pub(crate) trait IsFlex: Backend<FloatTensorPrimitive = FlexTensor> {}

impl IsFlex for burn_flex::Flex {}

/// The specialised answer: `acc + hᵀ·g` written into `acc` (unused in a build whose Burn has no
/// `flex`).
#[allow(dead_code)]
pub(crate) trait FlexGemm {
    /// `acc + hᵀ·g` (`h`: `[k, m]`, `g`: `[k, n]`, `acc`: `[m, n]`, all `f32` on Flex, `acc`
    /// uniquely owned and contiguous) computed into `acc`'s buffer; `Err(acc)` (untouched) when
    /// a condition does not hold.
    fn add_outer(
        &self,
        acc: Tensor<2>,
        h: &Tensor<2>,
        g: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>>;

    /// `acc` with rows `first..first + r` set to `g·wᵀ` (`g`: `[r, k]`, `w`: `[n, k]`, `acc`:
    /// `[rows, n]`, all `f32` on Flex, `g` and `w` contiguous, `acc` uniquely owned and
    /// contiguous), written into `acc`'s buffer; `Err(acc)` (untouched) when a condition does
    /// not hold.
    fn set_rows_times_transposed(
        &self,
        acc: Tensor<2>,
        first: usize,
        g: &Tensor<2>,
        w: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>>;
}

/// The fallback: Flex is not enabled in this build.
#[allow(dead_code)]
pub(crate) trait NoFlexGemm {
    /// `Err(acc)`.
    fn add_outer(
        &self,
        acc: Tensor<2>,
        _h: &Tensor<2>,
        _g: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        Err(acc)
    }

    /// `Err(acc)`.
    fn set_rows_times_transposed(
        &self,
        acc: Tensor<2>,
        _first: usize,
        _g: &Tensor<2>,
        _w: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        Err(acc)
    }
}

impl<B> NoFlexGemm for &Probe<B> {}

/// `x`'s Flex primitive (the routing's own conversion), if it lives on Flex.
#[allow(dead_code)]
fn flex<B>(x: &Tensor<2>) -> Option<FlexTensor>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    crate::fused::route::primitive::<B, 2, burn::tensor::Float>(x)
}

/// `acc`'s Flex primitive when it is contiguous from offset 0 with `len` elements; `Err(acc)`
/// otherwise. Probed without consuming: the probe's clone shares the buffer and is gone before
/// `acc` is converted, so a uniquely owned `acc` stays uniquely owned.
#[allow(dead_code, clippy::result_large_err)]
fn contiguous<B>(acc: Tensor<2>, len: usize) -> Result<FlexTensor, Tensor<2>>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    let fits = flex::<B>(&acc)
        .is_some_and(|a| a.is_contiguous() && a.layout().contiguous_offsets() == Some((0, len)));
    if !fits {
        return Err(acc);
    }
    Ok(acc
        .try_into_primitive::<B>()
        .expect("checked to be a Flex tensor"))
}

impl<B> FlexGemm for Probe<B>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    #[allow(unsafe_code)]
    fn add_outer(
        &self,
        acc: Tensor<2>,
        h: &Tensor<2>,
        g: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        if acc.dtype() != DType::F32 || h.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return Err(acc);
        }
        let (Some(hp), Some(gp)) = (flex::<B>(h), flex::<B>(g)) else {
            return Err(acc);
        };
        let (Some(hs), Some(gs)) = (hp.as_slice::<f32>(), gp.as_slice::<f32>()) else {
            return Err(acc);
        };
        let ([k, m], [kg, n]) = (h.dims(), g.dims());
        if acc.dims() != [m, n] || kg != k || hs.len() != k * m || gs.len() != k * n {
            return Err(acc);
        }
        let mut a = contiguous::<B>(acc, m * n)?;
        let Some(dst) = a.try_storage_mut::<f32>() else {
            return Ok(Tensor::from_primitive::<B>(a).add(
                Tensor::<2>::from_primitive::<B>(hp)
                    .transpose()
                    .matmul(Tensor::from_primitive::<B>(gp)),
            ));
        };
        assert!(dst.len() >= m * n);
        // dst[i, j] = 1·dst[i, j] + 1·Σ_r h[r, i]·g[r, j]:
        // lhs = hᵀ (`m × k`: row stride 1, column stride m), rhs = g (`k × n`: row stride n).
        // SAFETY: the pointers cover `m·n`, `k·m` and `k·n` f32 (checked above), `dst` is
        // uniquely borrowed and does not alias `hs` or `gs` (distinct buffers: `a` was unique).
        unsafe {
            ::gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                true,
                hs.as_ptr(),
                m as isize,
                1,
                gs.as_ptr(),
                1,
                n as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                ::gemm::Parallelism::Rayon(0),
            );
        }
        Ok(Tensor::from_primitive::<B>(a))
    }

    #[allow(unsafe_code)]
    fn set_rows_times_transposed(
        &self,
        acc: Tensor<2>,
        first: usize,
        g: &Tensor<2>,
        w: &Tensor<2>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        if acc.dtype() != DType::F32 || g.dtype() != DType::F32 || w.dtype() != DType::F32 {
            return Err(acc);
        }
        let (Some(gp), Some(wp)) = (flex::<B>(g), flex::<B>(w)) else {
            return Err(acc);
        };
        let (Some(gs), Some(ws)) = (gp.as_slice::<f32>(), wp.as_slice::<f32>()) else {
            return Err(acc);
        };
        let ([r, k], [n, kw], [rows, na]) = (g.dims(), w.dims(), acc.dims());
        if kw != k || na != n || first + r > rows || gs.len() != r * k || ws.len() != n * k {
            return Err(acc);
        }
        let mut a = contiguous::<B>(acc, rows * n)?;
        let Some(dst) = a.try_storage_mut::<f32>() else {
            let acc = Tensor::<2>::from_primitive::<B>(a);
            let part = Tensor::<2>::from_primitive::<B>(gp)
                .matmul(Tensor::<2>::from_primitive::<B>(wp).transpose());
            return Ok(acc.slice_assign([first..first + r, 0..n], part));
        };
        assert!(dst.len() >= rows * n);
        let dst = &mut dst[first * n..(first + r) * n];
        // dst[i, j] = Σ_c g[i, c]·w[j, c]: lhs = g (`r × k`: row stride k), rhs = wᵀ (`k × n`:
        // row stride 1, column stride k); `dst` is not read.
        // SAFETY: the pointers cover `r·n`, `r·k` and `n·k` f32 (checked above), `dst` is
        // uniquely borrowed and does not alias `gs` or `ws` (distinct buffers: `a` was unique).
        unsafe {
            ::gemm::gemm(
                r,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                gs.as_ptr(),
                1,
                k as isize,
                ws.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                ::gemm::Parallelism::Rayon(0),
            );
        }
        Ok(Tensor::from_primitive::<B>(a))
    }
}

/// `acc` with rows `first..first + r` set to `g·wᵀ` in place on Flex (see
/// [`FlexGemm::set_rows_times_transposed`]), `Err(acc)` elsewhere.
pub(crate) fn flex_set_rows_times_transposed(
    acc: Tensor<2>,
    first: usize,
    g: &Tensor<2>,
    w: &Tensor<2>,
) -> Result<Tensor<2>, Tensor<2>> {
    let probe = &Probe::<burn_flex::Flex>(core::marker::PhantomData);
    probe.set_rows_times_transposed(acc, first, g, w)
}

/// `acc + hᵀ·g` into `acc` on Flex (Flex itself or its autodiff's inner tensors), `Err(acc)`
/// elsewhere.
pub(crate) fn flex_add_outer(
    acc: Tensor<2>,
    h: &Tensor<2>,
    g: &Tensor<2>,
) -> Result<Tensor<2>, Tensor<2>> {
    let probe = &Probe::<burn_flex::Flex>(core::marker::PhantomData);
    probe.add_outer(acc, h, g)
}
