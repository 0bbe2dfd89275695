//! The gradients accumulated over the chunks (`∂L/∂h`, `∂L/∂W`, `∂L/∂b`, the adapter's), the
//! in-place `∂W += hᵀ·g`, and how they reach Burn's graph.

use burn::tensor::{DType, Tensor};

/// The gradients accumulated over the chunks, in f32.
#[derive(Default)]
pub(super) struct Accumulators {
    pub h: Option<Tensor<2>>,
    pub w: Option<Tensor<2>>,
    pub b: Option<Tensor<1>>,
    pub a: Option<Tensor<2>>,
    pub lb: Option<Tensor<2>>,
}

/// `⟨x, g⟩` as a `[1, n]×[n, 1]` matrix product: no `x ⊙ g` temporary of `x`'s size (for the
/// head weight, as large as the head), and the backward's gradient of `x` is `g` itself. In f32
/// at least: its value cancels in `λ − λ̄` only while it is finite (f16 overflows at 65 504).
fn dot(x: Tensor<2>, g: Tensor<2>) -> Tensor<1> {
    let n = x.dims().iter().product::<usize>();
    let (x, g) = match x.dtype() {
        DType::F16 | DType::BF16 => (x.cast(DType::F32), g.cast(DType::F32)),
        _ => (x, g),
    };
    x.reshape([1, n]).matmul(g.reshape([n, 1])).reshape([1])
}

/// Columns of `∂L/∂W_s` per product in [`add_outer`]: `H × 4 096` f32 (16.8 MB at `H = 1 024`)
/// instead of a second head-sized product per chunk.
const OUTER_BLOCK_COLS: usize = 4096;

/// `acc + hᵀ·g` (`h`: `[rows, H]`, `g`: `[rows, V]`). On Flex (feature `cpu-kernel`) one GEMM
/// reads and writes `acc` in place. Elsewhere the product is formed `OUTER_BLOCK_COLS` columns
/// at a time and added into `acc`'s block: on a backend whose binary ops and `slice_assign`
/// reuse a uniquely owned buffer, `acc` is updated in place and the only temporary is one block.
/// Without `acc`, the product itself.
pub(super) fn add_outer(acc: Option<Tensor<2>>, h: Tensor<2>, g: Tensor<2>) -> Tensor<2> {
    let Some(acc) = acc else {
        return h.transpose().matmul(g);
    };
    #[cfg(feature = "cpu-kernel")]
    let acc = match super::gemm::flex_add_outer(acc, &h, &g) {
        Ok(sum) => return sum,
        Err(acc) => acc,
    };
    let mut acc = acc;
    let ht = h.transpose();
    let [rows_h, v] = acc.dims();
    let mut col = 0;
    while col < v {
        let cols = OUTER_BLOCK_COLS.min(v - col);
        let part = ht.clone().matmul(g.clone().narrow(1, col, cols));
        // `view + part` is written into `part` (the view is shared, `part` is not); once the view
        // is gone `acc` is uniquely owned again and `slice_assign` writes into it.
        let sum = acc.clone().narrow(1, col, cols).add(part);
        acc = acc.slice_assign([0..rows_h, col..col + cols], sum);
        col += cols;
    }
    acc
}

/// `x` in `dtype` (no cast when it already is).
pub(super) fn same_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `total` (`ℓ`, on the autodiff device) connected to each `(x, ∂L/∂x)` of `terms` (`∂L/∂x`
/// untracked, any float dtype), and whether every gradient was handed over as it is.
///
/// Where a backend with a kernel holds `x` under autodiff (Flex, CubeCL), a node of value 0 whose
/// backward hands the accumulator itself over (no product, no head-sized copy). Elsewhere the
/// first-order surrogate `L = ℓ + (λ − λ̄)`, `λ = Σ ⟨x, ∂L/∂x⟩`, whose value is `ℓ` and whose
/// gradient with respect to each `x` is its `∂L/∂x`.
pub(super) fn attach(total: Tensor<1>, terms: Vec<(Tensor<2>, Tensor<2>)>) -> (Tensor<1>, bool) {
    let mut handed = Vec::new();
    let mut parts = Vec::new();
    for (x, g) in terms {
        let g = same_dtype(g, x.dtype());
        match crate::fused::hand_over(&x, g) {
            Ok(zero) => handed.push(zero),
            Err(g) => parts.push(dot(x, g.autodiff())),
        }
    }
    let handed_over = parts.is_empty() && !handed.is_empty();
    let mut total = total;
    if let Some(lambda) = parts.into_iter().reduce(Tensor::add) {
        let lambda = same_dtype(lambda, total.dtype());
        total = total.add(lambda.clone().sub(lambda.detach()));
    }
    for zero in handed {
        let dtype = total.dtype();
        total = total.add(same_dtype(zero, dtype));
    }
    (total, handed_over)
}
