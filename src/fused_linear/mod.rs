//! Distillation through the LM head without materializing the logits.
//!
//! For a language model, the distillation loss is taken on the logits `z = h·W + b` of the last
//! hidden states `h [N, H]` through the LM head `W [H, V]`. With `N = 8 192` tokens and a
//! `V = 128 256`-word vocabulary one f32 logits tensor is 4.2 GB, and the usual path keeps several
//! (student and teacher logits, their softmaxes, the gradient). The functions here never form
//! them: the rows are processed `chunk` at a time,
//!
//! ```text
//! for each chunk c of rows:
//!     z_s = h_s[c]·W_s + b_s                       [chunk, V]   (student, no graph)
//!     z_t = h_t[c]·W_t + b_t   (or the given teacher logits)    (teacher, no gradient)
//!     ℓ_c, g = loss(z_s, z_t, labels[c]) and ∂ℓ_c/∂z_s          one fused divergence + CE pass
//!     ∂L/∂h_s[c] = g·W_sᵀ,   ∂L/∂W_s += h_s[c]ᵀ·g,   ∂L/∂b_s += Σ_rows g
//! ```
//!
//! so that nothing of size `chunk × V` outlives its chunk. The loss of a chunk is the crate's
//! [`distillation_loss`](crate::logits::distillation_loss) (the fused kernel wherever it runs)
//! for the forward KL, and [`soft_loss`](crate::divergence::soft_loss) + [`cross_entropy`](crate::logits::cross_entropy) for the
//! other divergences, every chunk reduced with the *global* normalizer (the number of kept tokens
//! for [`Reduction::RowMean`](crate::reduction::Reduction::RowMean)), so the chunks add up to the loss of the whole batch exactly.
//!
//! The gradients are computed during the forward pass (as Liger-Kernel's fused linear losses
//! do) and handed to Burn's graph as they are: on Flex and the CubeCL backends under autodiff,
//! `total` is `ℓ` plus one graph node of value 0 per tracked input whose backward gives that
//! input its accumulated gradient (times the upstream scalar, in place): no product and no
//! head-sized copy in the backward pass ([`FusedLinearOutput::handed_over`] says so). On other
//! backends the same gradients go through a first-order surrogate,
//!
//! ```text
//! L  =  ℓ  +  (λ − λ̄),     λ = ⟨h_s, ∂L/∂h_s⟩ + ⟨W_s, ∂L/∂W_s⟩ + ⟨b_s, ∂L/∂b_s⟩,   λ̄ = λ detached
//! ```
//!
//! whose value is exactly `ℓ` and whose gradient with respect to `h_s`, `W_s` and `b_s` is exactly
//! the loss's. Either way backpropagation goes on from `h_s` into the student's trunk as usual,
//! and only the tensors that are tracked get a gradient.
//!
//! # Memory model
//! Per chunk: the two `[chunk, V]` logits. On Flex (heads without adapter, f32) each is written by
//! one GEMM into the previous chunk's buffer (the student's gradient, the teacher's logits) once
//! nothing else holds it: two `[chunk, V]` buffers for the whole loop, no allocation, page
//! faults or allocator holes per chunk. Where the fused kernel serves the chunk (Flex or
//! CubeCL, no student transform, same vocabularies), its values and gradient come from one pass
//! outside autodiff, and on Flex the kernel writes the gradient over the chunk's student logits
//! (the teacher's are freed when the pass is done); elsewhere the chunk runs under autodiff on a
//! fresh leaf and its gradient is a third `[chunk, V]` tensor. Across chunks: `∂L/∂W_s`
//! (`[H, V]`, as large as `W_s`, and what any backward pass produces), to which each chunk's
//! `h_cᵀ·g` is added by one in-place GEMM on Flex (elsewhere 4 096 columns at a time), and
//! `∂L/∂h_s` (`[N, H]`, each chunk's rows written in place). The backward pass hands the
//! accumulators over as the gradients (the surrogate's backward, on other backends, writes a
//! copy of each). The materialized path holds `[N, V]` student and teacher logits, the softmax
//! stash and an `[N, V]` gradient. With the default chunk (see [`auto_chunk_rows`]: 128 rows
//! there) at `N = 8 192, H = 1 024, V = 32 000` in f32 the step peaks at 0.223 GB over its inputs
//! against 3.4 GB (6.6 %) in 0.85–0.91× the materialized path's time on Flex; `compare_peers`
//! measures both (`fused_linear_8192x1024x32000`).
//!
//! # Limits
//! * Gradients reach the student's hidden states, head weight and bias, not the temperature.
//! * `soft` and `hard` in the output are values for logging (no graph); `total` carries the
//!   gradient.
//! * Second derivatives (through the hand-over or the surrogate) are not those of the loss.
//! * Without autodiff (or when nothing is tracked) the chunks are only evaluated.

use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::sparse::TopkTeacher;

mod check;
mod chunks;
#[cfg(feature = "cpu-kernel")]
mod gemm;
mod grads;
mod loss;

pub use chunks::fused_linear_distillation;
pub use loss::{FusedLinearKdLoss, FusedLinearKdLossConfig};

/// An LM head: `z = h·W + b`, with `W` laid out as [`burn::nn::Linear`] stores it, and an
/// optional low-rank adapter: `z = h·W + s·(h·A)·B + b`.
///
/// Only what is tracked gets a gradient, and only its products are computed: a frozen `W`
/// (not `require_grad`, e.g. a Burn parameter set with `.no_grad()`) costs no `hᵀ·g` product
/// and no `[H, V]` accumulator; with an adapter, `∂A = s·hᵀ·(g·Bᵀ)` (`[H, r]`) and
/// `∂B = s·(h·A)ᵀ·g` (`[r, V]`) are formed without `W + s·A·B` or its `[H, V]` gradient.
///
/// # Shapes
/// - `weight`: `[H, V]` (`[d_input, d_output]`)
/// - `bias`: `[V]`
/// - adapter: `a` `[H, r]`, `b` `[r, V]`
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// `[H, V]`.
    pub weight: Tensor<2>,
    /// `[V]`, if the head has one.
    pub bias: Option<Tensor<1>>,
    /// A low-rank adapter on the weight, if any.
    pub adapter: Option<LowRankAdapter>,
}

/// A low-rank adapter of an LM head (LoRA): the head's weight acts as `W + scale · A·B`.
///
/// # Shapes
/// - `a`: `[H, r]`, `b`: `[r, V]`
#[derive(Debug, Clone)]
pub struct LowRankAdapter {
    /// `[H, r]` (LoRA's down projection, `lora_A` transposed into Burn's `[d_input, d_output]`).
    pub a: Tensor<2>,
    /// `[r, V]` (LoRA's up projection).
    pub b: Tensor<2>,
    /// `s` (LoRA's `alpha / r`).
    pub scale: f64,
}

impl LinearHead {
    /// A head without bias.
    pub fn new(weight: Tensor<2>) -> Self {
        LinearHead {
            weight,
            bias: None,
            adapter: None,
        }
    }

    /// Adds a bias `[V]`.
    pub fn with_bias(mut self, bias: Tensor<1>) -> Self {
        self.bias = Some(bias);
        self
    }

    /// Adds a low-rank adapter: the weight acts as `W + scale · a·b` (`a`: `[H, r]`, `b`:
    /// `[r, V]`). Freeze `W` (leave it untracked) to train the adapter alone.
    ///
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use kd_losses::fused_linear::{FusedLinearKdLossConfig, LinearHead, LinearTeacher};
    ///
    /// let device = Device::flex().autodiff();
    /// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0]], &device).require_grad();
    /// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], &device); // frozen
    /// let a = Tensor::<2>::from_floats([[0.1], [0.2]], &device).require_grad(); // [H, r = 1]
    /// let b = Tensor::<2>::from_floats([[0.3, -0.1, 0.2]], &device).require_grad(); // [r, V]
    /// let head = LinearHead::new(w.clone()).with_adapter(a.clone(), b.clone(), 2.0);
    /// let teacher = LinearTeacher::Logits(Tensor::<2>::from_floats([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], &device));
    /// let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
    /// let out = FusedLinearKdLossConfig::new().init().forward(h.clone(), &head, teacher, labels);
    /// assert!(out.gradients.adapter && !out.gradients.weight); // no [H, V] product for W
    /// let grads = out.total.backward();
    /// assert!(a.grad(&grads).is_some() && b.grad(&grads).is_some() && w.grad(&grads).is_none());
    /// ```
    pub fn with_adapter(mut self, a: Tensor<2>, b: Tensor<2>, scale: f64) -> Self {
        self.adapter = Some(LowRankAdapter { a, b, scale });
        self
    }

    /// The weight and bias of a Burn [`Linear`] layer (tracked as its parameters are).
    pub fn from_linear(linear: &Linear) -> Self {
        LinearHead {
            weight: linear.weight.val(),
            bias: linear.bias.as_ref().map(|b| b.val()),
            adapter: None,
        }
    }

    fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// The head with every tensor passed through `f` (to strip or keep autodiff).
    fn map(self, f: impl Fn(Tensor<2>) -> Tensor<2>, g: impl Fn(Tensor<1>) -> Tensor<1>) -> Self {
        LinearHead {
            weight: f(self.weight),
            bias: self.bias.map(g),
            adapter: self.adapter.map(|a| LowRankAdapter {
                a: f(a.a),
                b: f(a.b),
                scale: a.scale,
            }),
        }
    }

    /// `h·W + s·(h·A)·B + b` on the inner (non-autodiff) backend, and `s·(h·A)` when there is an
    /// adapter (the factor of `∂B`).
    fn logits(&self, h: Tensor<2>) -> (Tensor<2>, Option<Tensor<2>>) {
        let z = h.clone().matmul(self.weight.clone());
        let (z, ha) = match &self.adapter {
            Some(ad) => {
                let ha = h.matmul(ad.a.clone()).mul_scalar(ad.scale);
                (z.add(ha.clone().matmul(ad.b.clone())), Some(ha))
            }
            None => (z, None),
        };
        let z = match &self.bias {
            Some(b) => z.add(b.clone().unsqueeze_dim(0)),
            None => z,
        };
        (z, ha)
    }
}

/// The teacher side of [`fused_linear_distillation`].
#[derive(Debug, Clone)]
pub enum LinearTeacher {
    /// Hidden states `[N, H_t]` and the teacher's head (`[H_t, V]`): its logits are formed one
    /// chunk at a time too. `H_t` may differ from the student's `H`; the teacher may live on
    /// another device or in another float dtype (its chunks are moved and cast to the student's).
    Head {
        /// `[N, H_t]`.
        hidden: Tensor<2>,
        /// The teacher's LM head.
        head: LinearHead,
    },
    /// Precomputed teacher logits `[N, V]` (e.g. stored offline), read one chunk at a time.
    Logits(Tensor<2>),
    /// The teacher's top-`k` ids and logits or log-probabilities per token (`[N, k]`), as
    /// Axolotl and DistillKit store them offline: the soft term is the crate's top-k loss
    /// ([`SparseKdLoss`](crate::sparse::SparseKdLoss), with the configuration's
    /// [`MissingMass`](crate::sparse::MissingMass) and [`StudentNorm`](crate::sparse::StudentNorm))
    /// on each chunk of the student's logits; nothing of size `[N, V]` is formed.
    ///
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use kd_losses::fused_linear::{FusedLinearKdLossConfig, LinearHead, LinearTeacher};
    /// use kd_losses::sparse::{MissingMass, TopkTeacher};
    ///
    /// let device = Device::flex().autodiff();
    /// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0]], &device).require_grad();
    /// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 1.0, 0.0]], &device)
    ///     .require_grad();
    /// // Per token, the teacher's top-2 ids and log-probabilities (stored offline).
    /// let teacher = TopkTeacher::from_log_probs(
    ///     Tensor::<2, Int>::from_ints([[0, 3], [1, 2]], &device),
    ///     Tensor::<2>::from_floats([[-0.2, -2.0], [-0.5, -1.2]], &device),
    /// );
    /// let loss = FusedLinearKdLossConfig::new()
    ///     .with_missing_mass(MissingMass::TailBucket)
    ///     .init();
    /// let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
    /// let out = loss.forward(h.clone(), &LinearHead::new(w.clone()), LinearTeacher::Topk(teacher), labels);
    /// let grads = out.total.backward();
    /// assert!(h.grad(&grads).is_some() && w.grad(&grads).is_some());
    /// ```
    Topk(TopkTeacher<2>),
}

/// Which gradient products [`fused_linear_distillation`] computed: one per tracked input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadGradients {
    /// `∂L/∂h = g·Wᵀ (+ s·(g·Bᵀ)·Aᵀ)`.
    pub hidden: bool,
    /// `∂L/∂W = hᵀ·g` (skipped for a frozen head).
    pub weight: bool,
    /// `∂L/∂b = Σ_rows g`.
    pub bias: bool,
    /// `∂L/∂A` and `∂L/∂B` of the adapter.
    pub adapter: bool,
}

/// Outputs of [`fused_linear_distillation`]: all `[1]`.
#[derive(Debug, Clone)]
pub struct FusedLinearOutput {
    /// `α · soft + (1 − α) · hard`, with the gradient of the student's hidden states and head.
    pub total: Tensor<1>,
    /// The soft (divergence) term, for logging (no graph).
    pub soft: Tensor<1>,
    /// The hard (cross-entropy) term, for logging (no graph).
    pub hard: Tensor<1>,
    /// `α`.
    pub alpha: f64,
    /// The rows per chunk that were used.
    pub chunk_rows: usize,
    /// The gradient products that were computed.
    pub gradients: HeadGradients,
    /// Whether those gradients reach Burn's graph as they are: `total`'s backward hands each
    /// accumulator over without a product or a copy (Flex and the CubeCL backends under
    /// autodiff). `false` where the first-order surrogate carries them (other backends,
    /// `KD_FUSED=0`) or nothing is tracked.
    pub handed_over: bool,
}

/// Fewest rows per chunk [`auto_chunk_rows`] picks: each chunk moves the heads through memory
/// about five times (`W_s` in the logits and `∂L/∂h` products, `W_t`, `∂L/∂W` read and written),
/// so that traffic is about `1/rows` of the chunk's arithmetic; at 64 rows the products ran at
/// a fraction of their speed (`[2048, 512, 16000]` on Flex: 1.9× the materialized path's time).
pub const MIN_AUTO_CHUNK_ROWS: usize = 128;

/// The size [`auto_chunk_rows`] aims a chunk's `[rows, V]` f32 logits at: 16 MiB, so that the
/// loop's two chunk buffers (student logits, then their gradient; teacher logits) stay a small
/// fraction of the head-sized gradient whatever `N` is.
pub const AUTO_CHUNK_BYTES: usize = 16 << 20;

/// The default rows per chunk for `n` tokens, vocabulary `v` and hidden size `h`: the largest
/// power of two whose `[rows, V]` f32 tensor fits in [`AUTO_CHUNK_BYTES`] (16 MiB), at least
/// [`MIN_AUTO_CHUNK_ROWS`] (128) and at most `n`.
///
/// The rows do not grow with `N` (Liger-Kernel's rule, `N / ⌈V / H⌉`, gives 8 192-row chunks of
/// 1 GB at `[65536, 4096, 32000]`): the loop's memory beyond the gradients is two chunk buffers
/// reused from chunk to chunk, and the head traffic per chunk is a fixed fraction of its
/// arithmetic from 128 rows up. `h` does not enter the rule (the products' depth changes
/// neither ratio). At `[8192, 1024, 32000]` on Flex: 128 rows took 222 MB beyond the inputs
/// (6.6 % of the materialized path) at 0.89–0.96× its time; 264 rows 241 MB (7.1 %) at
/// 0.75–0.81×.
///
/// ```
/// use kd_losses::fused_linear::auto_chunk_rows;
/// assert_eq!(auto_chunk_rows(8192, 1024, 32000), 128);
/// assert_eq!(auto_chunk_rows(2048, 512, 16000), 256);
/// assert_eq!(auto_chunk_rows(8192, 4096, 128256), 128);
/// assert_eq!(auto_chunk_rows(65536, 4096, 32000), 128);
/// assert_eq!(auto_chunk_rows(4096, 768, 1000), 4096);
/// assert_eq!(auto_chunk_rows(3, 8, 5), 3);
/// ```
pub fn auto_chunk_rows(n: usize, h: usize, v: usize) -> usize {
    let _ = h;
    if n == 0 {
        return 1;
    }
    let fit = AUTO_CHUNK_BYTES / (4 * v.max(1));
    let pow2 = if fit == 0 { 1 } else { 1usize << fit.ilog2() };
    pow2.max(MIN_AUTO_CHUNK_ROWS).clamp(1, n)
}
