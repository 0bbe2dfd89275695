//! The one chunk driver behind [`chunked`](crate::chunked) and
//! [`fused_linear`](crate::fused_linear): the row ranges of a chunked evaluation, one chunk's
//! values and gradient on a fresh leaf, and the first-order surrogate that links the values to
//! the caller's graph.
//!
//! Both evaluate a loss `rows` rows at a time outside the caller's graph:
//!
//! 1. [`row_chunks`] gives the ranges `(first, rows)`;
//! 2. [`eval_chunk`] evaluates the chunk's terms on a fresh leaf `x_c`, runs the backward pass of
//!    the first term at once and returns every term outside autodiff together with
//!    `g_c = ∂term₀/∂x_c` (the chunk's graph is freed before the next chunk);
//! 3. what the caller makes of `g_c` differs (`chunked` keeps it, `fused_linear` turns it into
//!    `∂L/∂h`, `∂L/∂W`, … by matrix products);
//! 4. [`link`] connects the values `ℓ` to each tracked tensor `x` with its gradient `γ = ∂ℓ/∂x`:
//!
//! ```text
//! L = ℓ + (λ − λ̄),    λ_r = ⟨x_r, γ_r⟩,   λ̄ = λ with x detached
//! ```
//!
//! whose value is exactly `ℓ` and whose gradient with respect to `x` is exactly `γ` times the
//! cotangent of `ℓ` (per row when `ℓ` has one entry per row of `x`). For a single value `ℓ`
//! (`[1]`) on a backend with a fused kernel under autodiff (Flex, CubeCL), a node of value 0
//! hands `γ` itself to the backward pass instead (no product, no copy of `x`'s size). Second
//! derivatives through the surrogate are not those of the loss.

use burn::tensor::{DType, Tensor};

/// The ranges `(first, rows)` of `n` rows taken `chunk` at a time (`chunk` ≥ 1).
///
/// # Panics
/// If `chunk` is 0.
pub(crate) fn row_chunks(n: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    assert!(chunk > 0, "chunk_rows must be > 0, got 0");
    (0..n)
        .step_by(chunk)
        .map(move |first| (first, chunk.min(n - first)))
}

/// One chunk `x` (outside autodiff, `[rows, V]`) evaluated by `f`: the terms `f` returns,
/// outside autodiff, and — when `tracked` — `∂ Σ term₀ / ∂x` (zeros where term₀ does not depend
/// on `x`, e.g. a skew KL at α = 1). `f` receives `x` as a fresh autodiff leaf when `tracked`,
/// as it is otherwise.
///
/// The other terms (logged parts of the loss) leave the graph before the backward pass: their
/// nodes hold the chunk's tensors, and Burn frees orphaned nodes during a backward pass; kept
/// past it they would hold the chunk alive into the next one.
pub(crate) fn eval_chunk<const K: usize>(
    x: Tensor<2>,
    tracked: bool,
    f: impl FnOnce(Tensor<2>) -> [Tensor<1>; K],
) -> ([Tensor<1>; K], Option<Tensor<2>>) {
    if !tracked {
        return (f(x), None);
    }
    let [rows, v] = x.dims();
    let device = x.device();
    let leaf = x.autodiff().require_grad();
    let mut terms = f(leaf.clone());
    for t in terms.iter_mut().skip(1) {
        *t = t.clone().inner();
    }
    let grad = if terms[0].is_tracked() {
        leaf.grad(&terms[0].clone().sum().backward())
    } else {
        None
    }
    .unwrap_or_else(|| Tensor::<2>::zeros([rows, v], &device));
    terms[0] = terms[0].clone().inner();
    (terms, Some(grad))
}

/// `values` (`ℓ`, outside autodiff, `[R]`) on the autodiff device, connected to each
/// `(x, γ)` of `terms` (`γ = ∂ℓ/∂x` outside autodiff, any float dtype), and whether every
/// gradient was handed over as it is; see the [module docs](self).
///
/// With `R = 1`, `x` may have any shape (`λ` is the full inner product); with `R > 1`, every
/// `x` has `R` rows and `λ_r` is row `r`'s inner product.
///
/// # Panics
/// If `R > 1` and some `x` does not have `R` rows.
pub(crate) fn link(values: Tensor<1>, terms: Vec<(Tensor<2>, Tensor<2>)>) -> (Tensor<1>, bool) {
    let r = values.dims()[0];
    let mut handed = Vec::new();
    let mut parts = Vec::new();
    for (x, g) in terms {
        let g = same_dtype(g, x.dtype());
        let g = if r == 1 {
            match crate::fused::hand_over(&x, g) {
                Ok(zero) => {
                    handed.push(zero);
                    continue;
                }
                Err(g) => g,
            }
        } else {
            g
        };
        parts.push(row_dots(x, g.autodiff(), r));
    }
    let handed_over = parts.is_empty() && !handed.is_empty();
    let mut total = values.autodiff();
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

/// `λ_r = ⟨x_r, g_r⟩` for `r` rows, as a batched `[r, 1, n]×[r, n, 1]` product: no `x ⊙ g`
/// temporary of `x`'s size (for a head weight, as large as the head), and the backward's
/// gradient of `x` is `g` itself. In f32 at least: its value cancels in `λ − λ̄` only while it
/// is finite (f16 overflows at 65 504).
fn row_dots(x: Tensor<2>, g: Tensor<2>, r: usize) -> Tensor<1> {
    let numel = x.dims().iter().product::<usize>();
    assert!(
        r == 1 || x.dims()[0] == r,
        "chunk surrogate: {r} values for a tensor of shape {:?}",
        x.dims()
    );
    let (x, g) = match x.dtype() {
        DType::F16 | DType::BF16 => (x.cast(DType::F32), g.cast(DType::F32)),
        _ => (x, g),
    };
    let n = if r == 0 { 0 } else { numel / r };
    x.reshape([r, 1, n])
        .matmul(g.reshape([r, n, 1]))
        .reshape([r])
}

/// `x` in `dtype` (no cast when it already is).
pub(crate) fn same_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}
