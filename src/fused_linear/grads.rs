//! The gradients accumulated over the chunks (`∂L/∂h`, `∂L/∂W`, `∂L/∂b`, the adapter's) and the
//! in-place `∂W += hᵀ·g`; they reach Burn's graph through the shared chunk driver's
//! surrogate (`crate::chunk::link`).

use burn::tensor::Tensor;

/// The gradients accumulated over the chunks, in f32.
#[derive(Default)]
pub(super) struct Accumulators {
    pub h: Option<Tensor<2>>,
    pub w: Option<Tensor<2>>,
    pub b: Option<Tensor<1>>,
    pub a: Option<Tensor<2>>,
    pub lb: Option<Tensor<2>>,
}

/// Columns of `∂L/∂W_s` per product in [`add_outer`]: `H × 4 096` f32 (16.8 MB at `H = 1 024`)
/// instead of a second head-sized product per chunk.
const OUTER_BLOCK_COLS: usize = 4096;

/// `acc + hᵀ·g` (`h`: `[rows, H]`, `g`: `[rows, V]`). On Flex (feature `cpu-kernel`) one GEMM
/// reads and writes `acc` in place. Elsewhere the product is formed `OUTER_BLOCK_COLS` columns
/// at a time and added into `acc`'s block: on a backend whose binary ops and `slice_assign`
/// reuse a uniquely owned buffer, `acc` is updated in place and the only temporary is one block.
/// Without `acc`, the product itself.
pub(super) fn add_outer(acc: Option<Tensor<2>>, h: Tensor<2>, g: &Tensor<2>) -> Tensor<2> {
    let ht = h.transpose();
    let Some(acc) = acc else {
        return ht.matmul(g.clone());
    };
    #[cfg(feature = "cpu-kernel")]
    let acc = match super::gemm::flex_product_into(acc, 0, &ht, g, super::gemm::Start::Keep) {
        Ok(sum) => return sum,
        Err(acc) => acc,
    };
    let mut acc = acc;
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
