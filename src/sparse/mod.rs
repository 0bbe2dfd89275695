//! Sparse teachers: per row, only the teacher's top-`k` vocabulary ids and their values, as a
//! team stores them after running a large teacher offline.
//!
//! A [`TopkTeacher`] holds `indices` (`Int`, `[..., k]`) and either the raw teacher **logits** at
//! those ids ([`TopkTeacher::from_logits`]) or the teacher's full-vocabulary
//! **log-probabilities** there ([`TopkTeacher::from_log_probs`], `log_softmax(teacher)` at
//! `T = 1`). Every [`Divergence`](crate::divergence::Divergence) works with it ([`sparse_divergence`]).
//!
//! # The common support
//! The loss compares two distributions over `k + 1` bins: the `k` kept ids and one **tail** bin
//! for everything else.
//!
//! | [`MissingMass`] | teacher bins | needs |
//! |---|---|---|
//! | `Renormalize` | `p̂ = softmax(values / T)` over the k ids, tail `0` | logits or log-probs |
//! | `TailBucket` | `softmax([log p_1..log p_k, log(1 − Σ p)] / T)` | log-probs |
//!
//! | [`StudentNorm`] | student bins |
//! |---|---|
//! | `Full` | `log q = log_softmax(s / T)` over the **full** vocabulary, gathered at the ids; tail `log Σ_{v∉ids} q_v` |
//! | `Support` | `log_softmax(s[ids] / T)` over the k ids (no tail; both sides renormalised) |
//!
//! With `Renormalize` + `Full` and a forward KL this is the exact `KL(p̂ ‖ q)` with `p̂`
//! zero-extended to the vocabulary; it reproduces golden family `h` (`student_norm = "full"`),
//! and `Support` reproduces `student_norm = "support"`. With `k = V` both equal the dense loss.
//! For a divergence weighted by the teacher (forward KL, skew KL), the tail bin contributes
//! nothing under `Renormalize` and is skipped, so the only full-vocabulary work is the
//! student's normaliser. Divergences that weigh the student's mass (reverse KL, JSD, TV, …) see
//! the student's tail: under `Renormalize` a reverse KL is then `+inf` whenever the student puts
//! mass outside the top-k (the teacher has none there) — use `TailBucket` or `Support` for them.
//!
//! `TailBucket` at `T ≠ 1` tempers the `k + 1` bins (the tail's split across the vocabulary was
//! not stored, so this is the best available approximation; it is exact at `T = 1`).
//!
//! Indices must lie in `[0, V)` and be unique within a row; [`check_topk_indices`] verifies that
//! on the host and [`sparse_divergence`] calls it on every use.

use burn::config::Config;
use burn::tensor::{Int, Tensor};

mod loss;
mod rows;

pub use loss::{SparseKdLoss, SparseKdLossConfig};
#[cfg(feature = "chunked")]
pub(crate) use rows::{SparseKernel, check_sparse_inputs, sparse_row_loss, sparse_rows};
pub use rows::{sparse_divergence, topk_kd};

use crate::error::KdError;

/// What the values of a [`TopkTeacher`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkSpace {
    /// Raw teacher logits at the kept ids.
    Logits,
    /// The teacher's full-vocabulary log-probabilities (`T = 1`) at the kept ids.
    LogProbs,
}

/// How the teacher's probability mass outside its top-k is treated.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MissingMass {
    /// Renormalise the teacher over its top-k (the tail gets probability 0). Golden family h.
    Renormalize,
    /// Put `1 − Σ top-k p` into one tail bin, compared with the student's tail mass. Needs
    /// [`TopkSpace::LogProbs`].
    TailBucket,
}

/// How the student is normalised.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum StudentNorm {
    /// Softmax over the full vocabulary, then gathered (golden h `"full"`).
    Full,
    /// Softmax over the teacher's top-k only (golden h `"support"`).
    Support,
}

/// A teacher given by its top-`k` entries per row.
#[derive(Debug, Clone)]
pub struct TopkTeacher<const D: usize> {
    indices: Tensor<D, Int>,
    values: Tensor<D>,
    space: TopkSpace,
}

impl<const D: usize> TopkTeacher<D> {
    /// Top-k raw logits. Only [`MissingMass::Renormalize`] applies (the full normaliser is
    /// unknown).
    ///
    /// # Panics
    /// If `indices` and `topk_logits` have different shapes.
    pub fn from_logits(indices: Tensor<D, Int>, topk_logits: Tensor<D>) -> Self {
        Self::new(indices, topk_logits, TopkSpace::Logits, "topk_logits")
    }

    /// Top-k full-vocabulary log-probabilities (`log_softmax(teacher_logits)` at `T = 1`,
    /// gathered at `indices`).
    ///
    /// # Panics
    /// If `indices` and `topk_log_probs` have different shapes.
    pub fn from_log_probs(indices: Tensor<D, Int>, topk_log_probs: Tensor<D>) -> Self {
        Self::new(
            indices,
            topk_log_probs,
            TopkSpace::LogProbs,
            "topk_log_probs",
        )
    }

    fn new(indices: Tensor<D, Int>, values: Tensor<D>, space: TopkSpace, name: &str) -> Self {
        assert!(
            indices.dims() == values.dims(),
            "{name}: shape {:?} does not match indices shape {:?}",
            values.dims(),
            indices.dims()
        );
        TopkTeacher {
            indices,
            values: values.detach(),
            space,
        }
    }

    /// Entries per row.
    pub fn k(&self) -> usize {
        self.indices.dims()[D - 1]
    }

    /// The ids, `[..., k]`.
    pub fn indices(&self) -> Tensor<D, Int> {
        self.indices.clone()
    }

    /// The values, `[..., k]`.
    pub fn values(&self) -> Tensor<D> {
        self.values.clone()
    }

    /// What the values are.
    pub fn space(&self) -> TopkSpace {
        self.space
    }

    /// The teacher without its autodiff association (values and indices on the inner backend).
    #[cfg(feature = "chunked")]
    pub(crate) fn without_autodiff(self) -> Self {
        TopkTeacher {
            indices: self.indices.inner(),
            values: self.values.inner(),
            space: self.space,
        }
    }

    /// The teacher flattened to `[R, k]` indices and values.
    pub(crate) fn flat_rows(&self) -> (Tensor<2, Int>, Tensor<2>) {
        let dims = self.indices.dims();
        let k = dims[D - 1];
        let r: usize = dims[..D - 1].iter().product();
        (
            self.indices.clone().reshape([r, k]),
            self.values.clone().reshape([r, k]),
        )
    }
}

#[cfg(feature = "chunked")]
impl TopkTeacher<2> {
    /// Rows `first..first + rows`, on `device`, with autodiff when `autodiff` (a constant of the
    /// student's graph, as the dense teacher's logits are).
    pub(crate) fn rows_on(
        &self,
        first: usize,
        rows: usize,
        device: &burn::tensor::Device,
        autodiff: bool,
    ) -> Self {
        let lift = |x: Tensor<2>| if autodiff { x.autodiff() } else { x };
        let indices = self
            .indices
            .clone()
            .narrow(0, first, rows)
            .to_device(device);
        TopkTeacher {
            indices: if autodiff {
                indices.autodiff()
            } else {
                indices
            },
            values: lift(self.values.clone().narrow(0, first, rows).to_device(device)),
            space: self.space,
        }
    }
}

/// Options of [`sparse_divergence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseOptions {
    /// The teacher's missing mass.
    pub missing_mass: MissingMass,
    /// The student's normalisation.
    pub student_norm: StudentNorm,
}

impl Default for SparseOptions {
    /// `Renormalize` + `Full`: golden family h's primary convention.
    fn default() -> Self {
        SparseOptions {
            missing_mass: MissingMass::Renormalize,
            student_norm: StudentNorm::Full,
        }
    }
}

/// Checks `k ≤ V`, every index in `[0, V)`, and no index twice in a row.
///
/// Reads the indices back to the host (one synchronisation).
///
/// # Errors
/// [`KdError::TopkTooLarge`] or [`KdError::InvalidTopkIndex`].
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::sparse::check_topk_indices;
///
/// let device = Device::flex();
/// let idx = Tensor::<2, Int>::from_ints([[0, 7]], &device);
/// let e = check_topk_indices(&idx, 7).unwrap_err();
/// assert_eq!(e.to_string(), "top-k index 7 is out of range for a vocabulary of 7 (valid: 0..7)");
/// ```
pub fn check_topk_indices<const D: usize>(
    indices: &Tensor<D, Int>,
    vocab: usize,
) -> Result<(), KdError> {
    let k = indices.dims()[D - 1];
    if k > vocab {
        return Err(KdError::TopkTooLarge { k, vocab });
    }
    let data = indices.to_data().convert::<i64>();
    let values = data.as_slice::<i64>().expect("indices are integers");
    let mut seen = vec![usize::MAX; vocab];
    for (n, row) in values.chunks(k.max(1)).enumerate() {
        for &i in row {
            if i < 0 || i >= vocab as i64 {
                return Err(KdError::InvalidTopkIndex {
                    index: i,
                    vocab,
                    duplicate: false,
                });
            }
            if seen[i as usize] == n {
                return Err(KdError::InvalidTopkIndex {
                    index: i,
                    vocab,
                    duplicate: true,
                });
            }
            seen[i as usize] = n;
        }
    }
    Ok(())
}
