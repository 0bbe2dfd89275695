//! Matrix products written into buffers the head's chunk loop owns, on Flex: the chunk's
//! logits into the previous chunk's (reused) buffer, `∂L/∂h`'s rows into the accumulator, and
//! `∂W += hᵀ·g` reading and writing the accumulator (`gemm`'s `read_dst`) — instead of a fresh
//! product per chunk (a `[rows, V]` allocation whose pages are faulted in and zeroed every
//! chunk) or a product added into the accumulator (which moves it through memory five times).
//!
//! Every product is one call of [`sgemm`] on strided views of Flex's storage (a transposed
//! operand is read in place). Routed as the fused kernels are ([`crate::fused::route`]):
//! [`Probe`] implements [`FlexGemm`] only where Burn's dispatch can hand over a Flex primitive
//! (the application enabled `flex`); elsewhere the fallback [`NoFlexGemm`] declines and the
//! caller takes the portable path.

use burn::backend::{Backend, DispatchKindConversion, DispatchTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;

use crate::fused::route::Probe;

/// A backend whose float primitive is Flex's tensor.
#[allow(dead_code)]
pub(crate) trait IsFlex: Backend<FloatTensorPrimitive = FlexTensor> {}

impl IsFlex for burn_flex::Flex {}

/// What the destination rows hold before the product is added to them.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Nothing: `dst = lhs·rhs` (the rows are not read).
    Zero,
    /// Their values: `dst += lhs·rhs`.
    Keep,
    /// A row vector `[n]` in every row: `dst = lhs·rhs + b`.
    Bias(&'a Tensor<1>),
}

/// The specialised answer (unused in a build whose Burn has no `flex`).
#[allow(dead_code)]
pub(crate) trait FlexGemm {
    /// `dst` with rows `first..first + m` set to `start + lhs·rhs` (`lhs`: `[m, k]`, `rhs`:
    /// `[k, n]`, any non-negative strides; `dst`: `[rows, n]`, uniquely owned and contiguous; all
    /// `f32` on Flex), written into `dst`'s buffer; `Err(dst)` (untouched) when a condition
    /// does not hold.
    fn product_into(
        &self,
        dst: Tensor<2>,
        first: usize,
        lhs: &Tensor<2>,
        rhs: &Tensor<2>,
        start: Start<'_>,
    ) -> Result<Tensor<2>, Tensor<2>>;

    /// A new `[m, n]` f32 Flex tensor (contents unspecified) when `like` lives on Flex.
    fn buffer(&self, like: &Tensor<2>, m: usize, n: usize) -> Option<Tensor<2>>;
}

/// The fallback: Flex is not enabled in this build.
#[allow(dead_code)]
pub(crate) trait NoFlexGemm {
    /// `Err(dst)`.
    fn product_into(
        &self,
        dst: Tensor<2>,
        _first: usize,
        _lhs: &Tensor<2>,
        _rhs: &Tensor<2>,
        _start: Start<'_>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        Err(dst)
    }

    /// `None`.
    fn buffer(&self, _like: &Tensor<2>, _m: usize, _n: usize) -> Option<Tensor<2>> {
        None
    }
}

impl<B> NoFlexGemm for &Probe<B> {}

/// `x`'s Flex primitive (the routing's own conversion), if it lives on Flex.
#[allow(dead_code)]
fn flex<B, const D: usize>(x: &Tensor<D>) -> Option<FlexTensor>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    crate::fused::route::primitive::<B, D, burn::tensor::Float>(x)
}

/// An f32 matrix in a Flex tensor's storage: `rows × cols` from `offset`, row stride `rs`,
/// column stride `cs` (both non-negative).
struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

/// `t` as a [`Mat`] when it is a 2-D f32 tensor with non-negative strides inside its storage.
#[allow(dead_code)]
fn mat(t: &FlexTensor) -> Option<Mat<'_>> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let layout = t.layout();
    let (rows, cols, rs, cs) = layout.as_2d_strides()?;
    if rs < 0 || cs < 0 {
        return None;
    }
    let data = t.storage::<f32>();
    let offset = layout.start_offset();
    let last = offset + rows.saturating_sub(1) * rs as usize + cols.saturating_sub(1) * cs as usize;
    (rows == 0 || cols == 0 || last < data.len()).then_some(Mat {
        data,
        offset,
        rows,
        cols,
        rs,
        cs,
    })
}

/// `dst = lhs·rhs`, or `dst += lhs·rhs` with `read_dst` (`dst`: `m × n` row-major, `lhs`:
/// `m × k`, `rhs`: `k × n`); one call of `gemm` on all threads.
#[allow(unsafe_code, dead_code)]
fn sgemm(dst: &mut [f32], lhs: &Mat<'_>, rhs: &Mat<'_>, read_dst: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(rhs.rows == k && dst.len() == m * n, "sgemm: shapes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !read_dst {
            dst.fill(0.0);
        }
        return;
    }
    // SAFETY: `mat` checked that every element of `lhs` and `rhs` lies inside its slice; `dst`
    // is an exclusive borrow of `m·n` f32, so it aliases neither operand.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs,
            lhs.rs,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs,
            rhs.rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            ::gemm::Parallelism::Rayon(0),
        );
    }
}

/// `dst`'s Flex primitive when it is contiguous from offset 0 with `len` elements; `Err(dst)`
/// otherwise. Probed without consuming: the probe's clone shares the buffer and is gone before
/// `dst` is converted, so a uniquely owned `dst` stays uniquely owned.
#[allow(dead_code, clippy::result_large_err)]
fn contiguous<B>(dst: Tensor<2>, len: usize) -> Result<FlexTensor, Tensor<2>>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    let fits = flex::<B, 2>(&dst)
        .is_some_and(|a| a.is_contiguous() && a.layout().contiguous_offsets() == Some((0, len)));
    if !fits {
        return Err(dst);
    }
    Ok(dst
        .try_into_primitive::<B>()
        .expect("checked to be a Flex tensor"))
}

impl<B> FlexGemm for Probe<B>
where
    B: IsFlex,
    DispatchTensor: DispatchKindConversion<B>,
{
    fn product_into(
        &self,
        dst: Tensor<2>,
        first: usize,
        lhs: &Tensor<2>,
        rhs: &Tensor<2>,
        start: Start<'_>,
    ) -> Result<Tensor<2>, Tensor<2>> {
        if dst.dtype() != DType::F32 {
            return Err(dst);
        }
        let (Some(lp), Some(rp)) = (flex::<B, 2>(lhs), flex::<B, 2>(rhs)) else {
            return Err(dst);
        };
        let (Some(l), Some(r)) = (mat(&lp), mat(&rp)) else {
            return Err(dst);
        };
        let bias = match start {
            Start::Bias(b) => match flex::<B, 1>(b) {
                Some(b) => Some(b),
                None => return Err(dst),
            },
            _ => None,
        };
        let bias = match &bias {
            Some(b) => match b.as_slice::<f32>() {
                Some(s) => Some(s),
                None => return Err(dst),
            },
            None => None,
        };
        let [rows, n] = dst.dims();
        let (m, k) = (l.rows, l.cols);
        if r.rows != k || r.cols != n || first + m > rows || bias.is_some_and(|b| b.len() != n) {
            return Err(dst);
        }
        let mut a = contiguous::<B>(dst, rows * n)?;
        let Some(out) = a.try_storage_mut::<f32>() else {
            return Err(Tensor::from_primitive::<B>(a));
        };
        let out = &mut out[first * n..(first + m) * n];
        if let Some(b) = bias {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
        }
        sgemm(out, &l, &r, !matches!(start, Start::Zero));
        Ok(Tensor::from_primitive::<B>(a))
    }

    fn buffer(&self, like: &Tensor<2>, m: usize, n: usize) -> Option<Tensor<2>> {
        flex::<B, 2>(like)?;
        let t = FlexTensor::empty(Shape::new([m, n]), DType::F32);
        Some(Tensor::from_primitive::<B>(t))
    }
}

fn probe() -> Probe<burn_flex::Flex> {
    Probe(core::marker::PhantomData)
}

/// `dst` with rows `first..first + m` set to `start + lhs·rhs` in place on Flex (see
/// [`FlexGemm::product_into`]), `Err(dst)` elsewhere.
pub(crate) fn flex_product_into(
    dst: Tensor<2>,
    first: usize,
    lhs: &Tensor<2>,
    rhs: &Tensor<2>,
    start: Start<'_>,
) -> Result<Tensor<2>, Tensor<2>> {
    (&probe()).product_into(dst, first, lhs, rhs, start)
}

/// `lhs·rhs (+ bias)` (`[m, n]`) on Flex, written into `buf` when it has that shape and
/// nothing else holds it, else into a new buffer (`buf` dropped first); `None` when the
/// operands are not f32 tensors on Flex.
pub(crate) fn flex_product(
    buf: Option<Tensor<2>>,
    lhs: &Tensor<2>,
    rhs: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<2>> {
    // Not f32 (a half-precision teacher head): Burn's product, without a buffer made in vain.
    if lhs.dtype() != DType::F32
        || rhs.dtype() != DType::F32
        || bias.is_some_and(|b| b.dtype() != DType::F32)
    {
        return None;
    }
    let probe = &probe();
    let (m, n) = (lhs.dims()[0], rhs.dims()[1]);
    let start = bias.map_or(Start::Zero, Start::Bias);
    let buf = match buf {
        Some(b) if b.dims() == [m, n] => probe.product_into(b, 0, lhs, rhs, start).ok(),
        _ => None,
    };
    buf.or_else(|| {
        let fresh = probe.buffer(lhs, m, n)?;
        probe.product_into(fresh, 0, lhs, rhs, start).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn flex_t(rows: usize, cols: usize, seed: f32) -> Tensor<2> {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 2.0).round() / 4.0)
            .collect();
        Tensor::from_data(TensorData::new(data, [rows, cols]), &Device::flex())
    }

    fn host(t: &Tensor<2>) -> Vec<f32> {
        t.to_data().try_to_vec::<f32>().expect("f32")
    }

    fn address(t: &Tensor<2>) -> *const f32 {
        flex::<burn_flex::Flex, 2>(t)
            .expect("a Flex tensor")
            .storage::<f32>()
            .as_ptr()
    }

    /// `lhs·rhs` on the host (the values are quarters: exact in f32).
    fn product(lhs: &Tensor<2>, rhs: &Tensor<2>) -> Vec<f32> {
        let ([m, k], [_, n]) = (lhs.dims(), rhs.dims());
        let (l, r) = (host(lhs), host(rhs));
        (0..m * n)
            .map(|ij| (0..k).map(|c| l[ij / n * k + c] * r[c * n + ij % n]).sum())
            .collect()
    }

    #[test]
    fn products_land_in_the_given_rows_of_the_given_buffer() {
        let (m, k, n) = (5, 7, 6);
        let lhs = flex_t(m, k, 0.1);
        let rhs = flex_t(k, n, 0.7);
        let bias = Tensor::<1>::from_data(
            TensorData::new((0..n).map(|j| j as f32).collect::<Vec<_>>(), [n]),
            &Device::flex(),
        );
        let expected = product(&lhs, &rhs);
        // Transposed views of the operands are read in place.
        let lhs_t = flex_t(k, m, 0.1);
        let lhs_view = lhs_t.clone().transpose();
        let expected_view = product(&lhs_view, &rhs);
        for start in ["zero", "keep", "bias"] {
            let dst = flex_t(m + 2, n, 2.0);
            let before = host(&dst);
            let at = address(&dst);
            let (operand, wanted) = if start == "keep" {
                (&lhs_view, &expected_view)
            } else {
                (&lhs, &expected)
            };
            let how = match start {
                "zero" => Start::Zero,
                "keep" => Start::Keep,
                _ => Start::Bias(&bias),
            };
            let out = flex_product_into(dst, 1, operand, &rhs, how)
                .unwrap_or_else(|_| panic!("{start}: declined"));
            assert_eq!(address(&out), at, "{start}: not written in place");
            let got = host(&out);
            for (i, (g, b)) in got.iter().zip(&before).enumerate() {
                let (row, col) = (i / n, i % n);
                let want = if row == 0 || row > m {
                    *b
                } else {
                    let p = wanted[(row - 1) * n + col];
                    match start {
                        "zero" => p,
                        "keep" => b + p,
                        _ => p + col as f32,
                    }
                };
                assert_eq!(*g, want, "{start}: [{row}, {col}]");
            }
        }
    }

    #[test]
    fn a_held_buffer_is_declined_and_a_free_one_is_reused() {
        let (lhs, rhs) = (flex_t(4, 3, 0.2), flex_t(3, 9, 0.5));
        let expected = product(&lhs, &rhs);
        let dst = flex_t(4, 9, 1.0);
        let held = dst.clone();
        let before = host(&held);
        let dst = flex_product_into(dst, 0, &lhs, &rhs, Start::Zero)
            .err()
            .expect("a shared buffer is declined");
        assert_eq!(host(&held), before, "the declined buffer was written");
        drop(dst);

        // `flex_product`: a fresh buffer beside the held one, then the free one reused.
        let out = flex_product(Some(held.clone()), &lhs, &rhs, None).expect("Flex operands");
        assert_ne!(address(&out), address(&held));
        assert_eq!(host(&out), expected);
        assert_eq!(host(&held), before);
        let at = address(&out);
        let again = flex_product(
            Some(out),
            &rhs.clone().transpose(),
            &lhs.clone().transpose(),
            None,
        )
        .expect("Flex operands");
        assert_ne!(address(&again), at, "a [9, 4] product in a [4, 9] buffer");
        let at = address(&again);
        let third = flex_product(
            Some(again),
            &rhs.clone().transpose(),
            &lhs.clone().transpose(),
            None,
        )
        .expect("Flex operands");
        assert_eq!(
            address(&third),
            at,
            "a free buffer of the right shape is reused"
        );

        // Not f32, or not Flex: declined.
        let half = lhs.clone().cast(DType::BF16);
        assert!(flex_product(None, &half, &rhs, None).is_none());
        #[allow(deprecated)]
        let nd = Tensor::<2>::zeros([4, 3], &Device::ndarray());
        assert!(flex_product(None, &nd, &nd.clone().transpose(), None).is_none());
    }
}
