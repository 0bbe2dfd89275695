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
//! [`distillation_loss`] (the fused kernel wherever it runs)
//! for the forward KL, and [`soft_loss`](crate::divergence::soft_loss) + [`cross_entropy`] for the
//! other divergences, every chunk reduced with the *global* normalizer (the number of kept tokens
//! for [`Reduction::RowMean`]), so the chunks add up to the loss of the whole batch exactly.
//!
//! The gradients are computed during the forward pass (as Liger-Kernel's fused linear losses
//! do) and handed to Burn's graph through a first-order surrogate,
//!
//! ```text
//! L  =  ℓ  +  (λ − λ̄),     λ = ⟨h_s, ∂L/∂h_s⟩ + ⟨W_s, ∂L/∂W_s⟩ + ⟨b_s, ∂L/∂b_s⟩,   λ̄ = λ detached
//! ```
//!
//! whose value is exactly `ℓ` and whose gradient with respect to `h_s`, `W_s` and `b_s` is exactly
//! the loss's: backpropagation goes on from `h_s` into the student's trunk as usual. Only the
//! tensors that are tracked get a term.
//!
//! # Memory model
//! Per chunk: the two `[chunk, V]` logits, the loss kernel's `[chunk, V]` gradient and one
//! `[chunk, V]` temporary (the logits are dropped before the gradient products); across chunks:
//! `∂L/∂W_s` (`[H, V]`, as large as `W_s`, and what any backward pass produces), to which each
//! chunk's `h_cᵀ·g` is added 4 096 columns at a time (no second head-sized product), and
//! `∂L/∂h_s` (`[N, H]`, written in place chunk by chunk). The backward pass then writes the
//! gradient of `W_s` (`[H, V]`) from the accumulator. With the `cpu-kernel` feature the fused
//! kernel's buffer cache (`kd_losses::fused::clear_buffer_cache`) is emptied after the chunks, so
//! that its last chunk-sized buffer does not stay through the backward pass. The materialized
//! path holds `[N, V]` student and teacher logits, the softmax stash and an `[N, V]` gradient.
//! With the default chunk (see [`auto_chunk_rows`]) at `N = 8 192, H = 1 024, V = 32 000` in f32
//! the step peaks at 0.36 GB over its inputs against 3.3 GB (11 %); `compare_peers` measures both
//! (`fused_linear_8192x1024x32000`).
//!
//! # Limits
//! * Gradients reach the student's hidden states, head weight and bias, not the temperature.
//! * `soft` and `hard` in the output are values for logging (no graph); `total` carries the
//!   gradient.
//! * Second derivatives through the surrogate are not those of the loss.
//! * Without autodiff (or when nothing is tracked) the chunks are only evaluated.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Bool, DType, Int, Tensor};

use crate::divergence::Divergence;
use crate::error::{KdError, check_range};
use crate::logits::hard::{CrossEntropyOptions, cross_entropy};
use crate::logits::{DistillationLoss, distillation_loss};
use crate::reduction::{Normalizer, Reduction, RowMask};
use crate::temperature::T2Scaling;
use crate::temperature::Temperature;
use crate::vocab::{VocabAlignment, align_vocab};

/// An LM head: `z = h·W + b`, with `W` laid out as [`burn::nn::Linear`] stores it.
///
/// # Shapes
/// - `weight`: `[H, V]` (`[d_input, d_output]`)
/// - `bias`: `[V]`
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// `[H, V]`.
    pub weight: Tensor<2>,
    /// `[V]`, if the head has one.
    pub bias: Option<Tensor<1>>,
}

impl LinearHead {
    /// A head without bias.
    pub fn new(weight: Tensor<2>) -> Self {
        LinearHead { weight, bias: None }
    }

    /// Adds a bias `[V]`.
    pub fn with_bias(mut self, bias: Tensor<1>) -> Self {
        self.bias = Some(bias);
        self
    }

    /// The weight and bias of a Burn [`Linear`] layer (tracked as its parameters are).
    pub fn from_linear(linear: &Linear) -> Self {
        LinearHead {
            weight: linear.weight.val(),
            bias: linear.bias.as_ref().map(|b| b.val()),
        }
    }

    fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// `h·W + b` on the inner (non-autodiff) backend.
    fn logits(w: &Tensor<2>, b: &Option<Tensor<1>>, h: Tensor<2>) -> Tensor<2> {
        let z = h.matmul(w.clone());
        match b {
            Some(b) => z.add(b.clone().unsqueeze_dim(0)),
            None => z,
        }
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
}

/// Fewest rows per chunk [`auto_chunk_rows`] picks: below this the four matrix products per
/// chunk run at a fraction of their speed (`[2048, 512, 16000]` on Flex: 64-row chunks took
/// 1.9× the time of the materialized path, 256-row chunks 0.95×).
pub const MIN_AUTO_CHUNK_ROWS: usize = 256;

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB):
/// blocks from this size up are always mapped on their own and unmapped when freed; smaller ones
/// (once a freed mapping has raised the threshold) come from the heap, which keeps them when freed.
const MMAP_THRESHOLD_MAX_BYTES: usize = 32 << 20;

/// The default rows per chunk for `n` tokens, vocabulary `v` and hidden size `h`:
/// `r = max(next_pow2(⌈n / ⌈v / h⌉⌉), 256)`, raised to the first multiple of 8 whose `[r, V]`
/// f32 tensor reaches 32 MiB when that at most doubles `r`, and at most `n`. The first term is
/// Liger-Kernel's rule (a chunk's logits `chunk × V` are then about the size of the hidden
/// states `N × H`); the floor ([`MIN_AUTO_CHUNK_ROWS`]) keeps the matrix products efficient; the
/// raise keeps a chunk's tensors above glibc's largest mmap threshold, so that they are returned
/// to the system when the chunk is done instead of staying in the heap (at `V = 32 000`, 256
/// rows are 31.25 MiB: the chunks' tensors kept in the heap added 130 MB to the peak at
/// `[8192, 1024, 32000]`).
///
/// ```
/// use kd_losses::fused_linear::auto_chunk_rows;
/// assert_eq!(auto_chunk_rows(8192, 1024, 32000), 264);
/// assert_eq!(auto_chunk_rows(2048, 512, 16000), 256);
/// assert_eq!(auto_chunk_rows(8192, 4096, 128256), 256);
/// assert_eq!(auto_chunk_rows(65536, 4096, 32000), 8192);
/// assert_eq!(auto_chunk_rows(3, 8, 5), 3);
/// ```
pub fn auto_chunk_rows(n: usize, h: usize, v: usize) -> usize {
    if n == 0 {
        return 1;
    }
    let ratio = v.div_ceil(h.max(1)).max(1);
    let rows = n
        .div_ceil(ratio)
        .next_power_of_two()
        .max(MIN_AUTO_CHUNK_ROWS);
    let mapped = MMAP_THRESHOLD_MAX_BYTES
        .div_ceil(4 * v.max(1))
        .next_multiple_of(8);
    let rows = if rows < mapped && mapped <= 2 * rows {
        mapped
    } else {
        rows
    };
    rows.clamp(1, n)
}

/// Configuration of [`FusedLinearKdLoss`].
#[derive(Config, Debug)]
pub struct FusedLinearKdLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 2.0)]
    pub temperature: f64,
    /// Weight `α ∈ [0, 1]` of the soft term.
    #[config(default = 0.5)]
    pub alpha: f64,
    /// Multiply the soft term by `T²` (Hinton).
    #[config(default = true)]
    pub t2_scaling: bool,
    /// The divergence of the soft term, with its parameter. Default: forward KL.
    #[config(default = "Divergence::ForwardKl")]
    pub divergence: Divergence,
    /// Label smoothing `ε ∈ [0, 1]` of the hard term.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Tokens with this label are left out of both terms.
    #[config(default = -100)]
    pub ignore_index: i64,
    /// Rows per chunk; `None`: [`auto_chunk_rows`].
    #[config(default = "None")]
    pub chunk_rows: Option<usize>,
    /// What to do when the student's and teacher's vocabularies differ. Default: error.
    #[config(default = "VocabAlignment::Error")]
    pub vocab: VocabAlignment,
}

impl FusedLinearKdLossConfig {
    /// Builds the loss, validating every parameter.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], [`KdError::OutOfRange`] (`alpha`, `label_smoothing`,
    /// the divergence's parameter) or [`KdError::NotPositive`] (`chunk_rows = Some(0)`).
    pub fn try_init(&self) -> Result<FusedLinearKdLoss, KdError> {
        Temperature::new(self.temperature)?;
        check_range("alpha", self.alpha, 0.0, 1.0)?;
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)?;
        if self.chunk_rows == Some(0) {
            return Err(KdError::NotPositive {
                name: "chunk_rows",
                value: 0.0,
            });
        }
        self.divergence.validate()?;
        let divergence = self.divergence;
        Ok(FusedLinearKdLoss {
            config: self.clone(),
            divergence,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> FusedLinearKdLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Default for FusedLinearKdLossConfig {
    fn default() -> Self {
        FusedLinearKdLossConfig::new()
    }
}

/// Module form of [`fused_linear_distillation`], reduced over kept tokens
/// ([`Reduction::RowMean`]).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::fused_linear::{FusedLinearKdLossConfig, LinearHead, LinearTeacher};
///
/// let device = Device::flex().autodiff();
/// let loss = FusedLinearKdLossConfig::new().with_chunk_rows(Some(2)).init();
/// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]], &device).require_grad();
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], &device).require_grad();
/// let teacher = LinearTeacher::Logits(Tensor::<2>::from_floats(
///     [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], &device));
/// let labels = Tensor::<1, Int>::from_ints([0, 1, -100], &device);
/// let out = loss.forward(h.clone(), &LinearHead::new(w.clone()), teacher, labels);
/// let grads = out.total.backward();
/// assert!(h.grad(&grads).is_some() && w.grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct FusedLinearKdLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: FusedLinearKdLossConfig,
    /// The divergence the configuration names.
    #[module(skip)]
    pub divergence: Divergence,
}

impl FusedLinearKdLoss {
    /// The loss over every token whose label is not `ignore_index`.
    ///
    /// # Panics
    /// As [`fused_linear_distillation`].
    pub fn forward(
        &self,
        student_hidden: Tensor<2>,
        student_head: &LinearHead,
        teacher: LinearTeacher,
        labels: Tensor<1, Int>,
    ) -> FusedLinearOutput {
        fused_linear_distillation(
            student_hidden,
            student_head,
            teacher,
            labels,
            None,
            self,
            Reduction::RowMean,
        )
    }

    /// As [`forward`](Self::forward), also leaving out the tokens where `mask` is `false`.
    ///
    /// # Panics
    /// As [`fused_linear_distillation`].
    pub fn forward_masked(
        &self,
        student_hidden: Tensor<2>,
        student_head: &LinearHead,
        teacher: LinearTeacher,
        labels: Tensor<1, Int>,
        mask: Tensor<1, Bool>,
    ) -> FusedLinearOutput {
        fused_linear_distillation(
            student_hidden,
            student_head,
            teacher,
            labels,
            Some(mask),
            self,
            Reduction::RowMean,
        )
    }

    fn temperature(&self) -> Temperature {
        Temperature::new(self.config.temperature).unwrap_or_else(|e| panic!("{e}"))
    }

    fn scaling(&self) -> T2Scaling {
        T2Scaling::from_flag(self.config.t2_scaling)
    }
}

/// The distillation loss of a student's LM head against a teacher, one row chunk at a time,
/// without materializing the `[N, V]` logits; see the [module docs](self).
///
/// ```text
/// z_s = h_s·W_s + b_s,   z_t = h_t·W_t + b_t (or given)
/// L   = α · Σ_kept T²·D(softmax(z_t/T) ‖ softmax(z_s/T)) / n  +  (1 − α) · Σ_kept CE(z_s, y) / n
/// ```
///
/// `D` is the configured divergence (`T²` only with `t2_scaling`), the kept tokens are those
/// whose label is not `ignore_index` (and, with `mask`, where it is `true`), and `n` is the
/// reduction's denominator over the whole batch: the number of kept tokens for
/// [`Reduction::RowMean`], 1 for `Sum`, `N` for `BatchMean`, kept tokens × `V` for `ElementMean`,
/// or the given [`Normalizer`]. The value and the gradients of `h_s`, `W_s` and `b_s` equal those
/// of [`distillation_loss`] on the materialized logits `h_s·W_s + b_s`.
///
/// # Shapes
/// - `student_hidden`: `[N, H]`; `student_head.weight`: `[H, V]`, bias `[V]`
/// - teacher: hidden `[N, H_t]` with head `[H_t, V_t]`, or logits `[N, V_t]`
/// - `labels`: `[N]` in `0..V` or `ignore_index`; `mask`: `[N]`, `true` = keep
/// - returns [`FusedLinearOutput`] of `[1]` tensors.
///
/// # Panics
/// If a shape does not match (named, with both shapes), a label is out of range, the
/// vocabularies differ under [`VocabAlignment::Error`] (the message of
/// [`KdError::VocabMismatch`]), or the loss holds an invalid configuration.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::fused_linear::{fused_linear_distillation, FusedLinearKdLossConfig, LinearHead, LinearTeacher};
/// use kd_losses::logits::{distillation_loss, DistillationLossConfig};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex().autodiff();
/// let h = Tensor::<2>::from_floats([[1.0, 0.0], [0.5, 1.0], [0.0, -1.0]], &device);
/// let w = Tensor::<2>::from_floats([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], &device);
/// let ht = Tensor::<2>::from_floats([[1.0], [2.0], [-1.0]], &device);
/// let wt = Tensor::<2>::from_floats([[0.5, -0.5, 1.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0, 2, 1], &device);
/// let loss = FusedLinearKdLossConfig::new().with_chunk_rows(Some(2)).init();
/// let teacher = LinearTeacher::Head { hidden: ht.clone(), head: LinearHead::new(wt.clone()) };
/// let fused = fused_linear_distillation(h.clone(), &LinearHead::new(w.clone()), teacher,
///     labels.clone(), None, &loss, Reduction::RowMean);
/// // The same loss on the materialized logits.
/// let full = distillation_loss(h.matmul(w), ht.matmul(wt), labels,
///     &DistillationLossConfig::new().init(), Reduction::RowMean);
/// let (a, b) = (fused.total.into_scalar::<f32>(), full.total.into_scalar::<f32>());
/// assert!((a - b).abs() < 1e-5 * b.abs());
/// ```
pub fn fused_linear_distillation(
    student_hidden: Tensor<2>,
    student_head: &LinearHead,
    teacher: LinearTeacher,
    labels: Tensor<1, Int>,
    mask: Option<Tensor<1, Bool>>,
    loss: &FusedLinearKdLoss,
    reduction: Reduction,
) -> FusedLinearOutput {
    let cfg = &loss.config;
    let [n, h] = student_hidden.dims();
    let [hw, v] = student_head.dims();
    assert!(
        hw == h,
        "student_head.weight: shape {:?} does not match student_hidden shape {:?} (expected [{h}, V])",
        student_head.weight.dims(),
        student_hidden.dims()
    );
    if let Some(b) = &student_head.bias {
        assert!(
            b.dims() == [v],
            "student_head.bias: shape {:?} does not match student_head.weight shape {:?} (expected [{v}])",
            b.dims(),
            student_head.weight.dims()
        );
    }
    assert!(
        labels.dims() == [n],
        "labels: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
        labels.dims(),
        student_hidden.dims()
    );
    if let Some(m) = &mask {
        assert!(
            m.dims() == [n],
            "mask: shape {:?} does not match student_hidden shape {:?} (expected [{n}])",
            m.dims(),
            student_hidden.dims()
        );
    }
    let v_t = match &teacher {
        LinearTeacher::Head { hidden, head } => {
            let [nt, ht] = hidden.dims();
            assert!(
                nt == n,
                "teacher hidden: shape {:?} does not match student_hidden shape {:?} in the rows",
                hidden.dims(),
                student_hidden.dims()
            );
            let [hwt, vt] = head.dims();
            assert!(
                hwt == ht,
                "teacher head.weight: shape {:?} does not match teacher hidden shape {:?} (expected [{ht}, V])",
                head.weight.dims(),
                hidden.dims()
            );
            if let Some(b) = &head.bias {
                assert!(
                    b.dims() == [vt],
                    "teacher head.bias: shape {:?} does not match teacher head.weight shape {:?}",
                    b.dims(),
                    head.weight.dims()
                );
            }
            vt
        }
        LinearTeacher::Logits(t) => {
            assert!(
                t.dims()[0] == n,
                "teacher logits: shape {:?} does not match student_hidden shape {:?} in the rows",
                t.dims(),
                student_hidden.dims()
            );
            t.dims()[1]
        }
    };
    if v_t != v && cfg.vocab == VocabAlignment::Error {
        panic!(
            "{}",
            KdError::VocabMismatch {
                student: v,
                teacher: v_t
            }
        );
    }
    if let Err(e) = crate::logits::hard::check_labels(&labels, v, Some(cfg.ignore_index)) {
        panic!("labels: {e}");
    }

    // Masked rows become ignored labels: one rule for both terms.
    let labels = match mask {
        Some(m) => labels.mask_fill(m.bool_not(), cfg.ignore_index),
        None => labels,
    };
    let kept = labels
        .clone()
        .not_equal_elem(cfg.ignore_index)
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let denominator = reduction.denominator(kept as f64, n, v);
    let chunk_norm =
        Reduction::Normalizer(Normalizer::new(denominator).expect("a positive denominator"));
    let chunk = cfg
        .chunk_rows
        .unwrap_or_else(|| auto_chunk_rows(n, h, v))
        .max(1);

    let dtype = student_hidden.dtype();
    let track_h = student_hidden.is_tracked();
    let track_w = student_head.weight.is_tracked();
    let track_b = student_head.bias.as_ref().is_some_and(|b| b.is_tracked());
    let tracked = track_h || track_w || track_b;

    // With a gradient to compute, everything below runs outside the caller's graph (each chunk's
    // loss on a fresh leaf); without, on the caller's tensors as they are.
    let strip = |x: Tensor<2>| if tracked { x.inner() } else { x.detach() };
    let hs = strip(student_hidden.clone());
    let ws = strip(student_head.weight.clone());
    let bs = student_head
        .bias
        .clone()
        .map(|b| if tracked { b.inner() } else { b.detach() });
    let inner_device = hs.device();
    let teacher = match teacher {
        LinearTeacher::Head { hidden, head } => LinearTeacher::Head {
            hidden: hidden.inner(),
            head: LinearHead {
                weight: head.weight.inner(),
                bias: head.bias.map(Tensor::inner),
            },
        },
        LinearTeacher::Logits(t) => LinearTeacher::Logits(t.inner()),
    };

    // Gradient accumulators in f32 whatever the student's dtype (bf16 sums over N rows lose
    // the small contributions).
    let acc = DType::F32;
    let mut grad_w: Option<Tensor<2>> = None;
    let mut grad_b: Option<Tensor<1>> = None;
    // `∂L/∂h_s`, written one chunk of rows at a time in place (no list of parts to concatenate).
    let mut grad_h =
        (track_h && n > 0).then(|| same_dtype(Tensor::<2>::zeros([n, h], &inner_device), acc));
    let mut values: Option<(Tensor<1>, Tensor<1>, Tensor<1>)> = None;
    // `W_sᵀ` in the accumulator dtype, for `∂L/∂h_s` only.
    let ws_acc_t = track_h.then(|| same_dtype(ws.clone(), acc).transpose());

    let mut first = 0;
    while first < n {
        let rows = chunk.min(n - first);
        let h_c = hs.clone().narrow(0, first, rows);
        let z_s = LinearHead::logits(&ws, &bs, h_c.clone());
        let z_t = match &teacher {
            LinearTeacher::Head { hidden, head } => {
                let ht = hidden.clone().narrow(0, first, rows);
                LinearHead::logits(&head.weight, &head.bias, ht)
            }
            LinearTeacher::Logits(t) => t.clone().narrow(0, first, rows),
        }
        .to_device(&inner_device);
        let z_t = same_dtype(z_t, z_s.dtype());
        let y_c = labels.clone().narrow(0, first, rows);

        let leaf = if tracked {
            z_s.autodiff().require_grad()
        } else {
            z_s
        };
        // The teacher in the student's autodiff context (a constant either way).
        let z_t = if leaf.is_autodiff() {
            z_t.autodiff()
        } else {
            z_t
        };
        let (total, soft, hard) = chunk_loss(loss, leaf.clone(), z_t, y_c, chunk_norm);
        let g = tracked.then(|| {
            if total.is_tracked() {
                leaf.grad(&total.clone().backward())
            } else {
                None
            }
            .unwrap_or_else(|| Tensor::<2>::zeros([rows, v], &inner_device))
        });
        let (total, soft, hard) = (total.inner(), soft.inner(), hard.inner());
        // The chunk's logits (and the graph that held them) go before the gradient products.
        drop(leaf);
        values = Some(match values {
            Some((t, s, hh)) => (t.add(total), s.add(soft), hh.add(hard)),
            None => (total, soft, hard),
        });
        if let Some(g) = g {
            let g = same_dtype(g, acc);
            if let (Some(wt), Some(gh)) = (&ws_acc_t, grad_h.take()) {
                let part = g.clone().matmul(wt.clone());
                grad_h = Some(gh.slice_assign([first..first + rows, 0..h], part));
            }
            if track_b {
                let gb = g.clone().sum_dim(0).reshape([v]);
                grad_b = Some(match grad_b {
                    Some(a) => a.add(gb),
                    None => gb,
                });
            }
            if track_w {
                grad_w = Some(add_outer(grad_w, same_dtype(h_c, acc).transpose(), g));
            }
        }
        first += rows;
    }
    // The fused CPU kernel hands each chunk's gradient buffer to its cache when the chunk is
    // done; the last one would stay beside the head-sized gradients through the backward pass.
    #[cfg(feature = "cpu-kernel")]
    crate::fused::clear_buffer_cache();
    let (total, soft, hard) = values.unwrap_or_else(|| {
        let z = || Tensor::<1>::zeros([1], &inner_device);
        (z(), z(), z())
    });
    let output = |total: Tensor<1>| FusedLinearOutput {
        total,
        soft: if tracked {
            soft.clone().autodiff()
        } else {
            soft.clone()
        },
        hard: if tracked {
            hard.clone().autodiff()
        } else {
            hard.clone()
        },
        alpha: cfg.alpha,
        chunk_rows: chunk,
    };
    if !tracked {
        return output(total);
    }

    // λ = ⟨h_s, ∂L/∂h_s⟩ + ⟨W_s, ∂L/∂W_s⟩ + ⟨b_s, ∂L/∂b_s⟩; L = ℓ + (λ − λ̄).
    let mut parts = Vec::new();
    if let Some(g) = grad_h {
        let g = same_dtype(g, dtype).autodiff();
        parts.push(dot(student_hidden, g));
    }
    // (An empty batch has no chunk: zero gradients, still connected to the graph.)
    if track_w && grad_w.is_none() {
        grad_w = Some(Tensor::<2>::zeros([h, v], &inner_device).cast(acc));
    }
    if track_b && grad_b.is_none() {
        grad_b = Some(Tensor::<1>::zeros([v], &inner_device).cast(acc));
    }
    if let Some(g) = grad_w {
        let g = same_dtype(g, student_head.weight.dtype()).autodiff();
        parts.push(dot(student_head.weight.clone(), g));
    }
    if let (Some(g), Some(b)) = (grad_b, &student_head.bias) {
        let g = same_dtype(g, b.dtype()).autodiff();
        parts.push(dot(b.clone().unsqueeze_dim(0), g.unsqueeze_dim(0)));
    }
    let total = total.autodiff();
    let total = match parts.into_iter().reduce(Tensor::add) {
        Some(lambda) => {
            let lambda = same_dtype(lambda, total.dtype());
            total.add(lambda.clone().sub(lambda.detach()))
        }
        None => total,
    };
    output(total)
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

/// `acc + hᵀ·g` (`hᵀ`: `[H, rows]`, `g`: `[rows, V]`), the product formed `OUTER_BLOCK_COLS`
/// columns at a time and added into `acc`'s block: on Flex, whose binary ops and `slice_assign`
/// reuse a uniquely owned buffer, `acc` is updated in place and the only temporary is one block.
/// Without `acc`, the product itself.
fn add_outer(acc: Option<Tensor<2>>, ht: Tensor<2>, g: Tensor<2>) -> Tensor<2> {
    let Some(mut acc) = acc else {
        return ht.matmul(g);
    };
    let [h, v] = acc.dims();
    let mut col = 0;
    while col < v {
        let cols = OUTER_BLOCK_COLS.min(v - col);
        let part = ht.clone().matmul(g.clone().narrow(1, col, cols));
        // `view + part` is written into `part` (the view is shared, `part` is not); once the view
        // is gone `acc` is uniquely owned again and `slice_assign` writes into it.
        let sum = acc.clone().narrow(1, col, cols).add(part);
        acc = acc.slice_assign([0..h, col..col + cols], sum);
        col += cols;
    }
    acc
}

/// `x` in `dtype` (no cast when it already is).
fn same_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// One chunk's `(total, soft, hard)`, each reduced with the global normalizer.
fn chunk_loss(
    loss: &FusedLinearKdLoss,
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
    reduction: Reduction,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let cfg = &loss.config;
    let (student, teacher) = if student.dims()[1] == teacher.dims()[1] {
        (student, teacher)
    } else {
        align_vocab(student, teacher, cfg.vocab).unwrap_or_else(|e| panic!("{e}"))
    };
    if loss.divergence == Divergence::ForwardKl {
        let dl = DistillationLoss {
            temperature: cfg.temperature,
            alpha: cfg.alpha,
            t2_scaling: cfg.t2_scaling,
            label_smoothing: cfg.label_smoothing,
            ignore_index: cfg.ignore_index,
        };
        let out = distillation_loss(student, teacher, labels, &dl, reduction);
        return (out.total, out.soft, out.hard);
    }
    let options = CrossEntropyOptions {
        ignore_index: Some(cfg.ignore_index),
        label_smoothing: cfg.label_smoothing,
        class_weights: None,
    };
    let hard = cross_entropy(student.clone(), labels.clone(), &options).reduce(reduction);
    let mask = RowMask::from_labels(labels, cfg.ignore_index);
    let soft = crate::divergence::soft_loss(
        student,
        teacher,
        loss.divergence,
        loss.temperature(),
        loss.scaling(),
        Some(&mask),
        reduction,
    );
    let total = soft
        .clone()
        .mul_scalar(cfg.alpha)
        .add(hard.clone().mul_scalar(1.0 - cfg.alpha));
    (total, soft, hard)
}
