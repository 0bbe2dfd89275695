//! Sparse teachers: per row, only the teacher's top-`k` vocabulary ids and their values, as a
//! team stores them after running a large teacher offline.
//!
//! A [`TopkTeacher`] holds `indices` (`Int`, `[..., k]`) and either the raw teacher **logits** at
//! those ids ([`TopkTeacher::from_logits`]) or the teacher's full-vocabulary
//! **log-probabilities** there ([`TopkTeacher::from_log_probs`], `log_softmax(teacher)` at
//! `T = 1`). Every [`Divergence`] works with it ([`sparse_divergence`]).
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
use burn::module::Module;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use crate::divergence::{Divergence, RowTemperature, row_logsumexp};
use crate::error::KdError;
use crate::logits::T2Scaling;
use crate::reduction::{Reduction, RowLoss, RowMask, flatten_rows};
use crate::temperature::Temperature;

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

/// Any [`Divergence`] between the student and a top-k teacher, per row; see the
/// [module docs](self) for the bins.
///
/// ```text
/// bins: the k ids + a tail;  p = teacher bins (MissingMass), q = student bins (StudentNorm)
/// r_i = s · D(q_i, p_i)          s = T² with T2Scaling::On (Hinton top-k KD), else 1
/// ```
///
/// # Shapes
/// - `student_logits`: `[..., V]`
/// - `teacher`: indices and values `[..., k]` with the same leading dims, `k ≤ V`
/// - returns a [`RowLoss`] of `R = Π leading dims` rows with row size `V`.
///
/// # Panics
/// If the leading shapes differ, `k > V`, an index is out of range or repeated (messages of
/// [`KdError::TopkTooLarge`] / [`KdError::InvalidTopkIndex`]), `TailBucket` is combined with
/// logits or with `StudentNorm::Support`, or the divergence's parameter is invalid.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::divergence::Divergence;
/// use kd_losses::sparse::{sparse_divergence, SparseOptions, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.5, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[0, 2]], &device),
///     Tensor::<2>::from_floats([[3.0, 1.0]], &device),
/// );
/// let t = Temperature::new(2.0).unwrap();
/// let rows = sparse_divergence(student, teacher, Divergence::ForwardKl, SparseOptions::default(), t, T2Scaling::On);
/// assert!(rows.reduce(Reduction::Mean).into_scalar::<f32>() > 0.0);
/// ```
pub fn sparse_divergence<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TopkTeacher<D>,
    divergence: Divergence,
    options: SparseOptions,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    let v = check_sparse_inputs(&student_logits.dims(), &teacher, divergence, options);
    let temperature = temperature.into();
    let (s, rows, _) = flatten_rows(student_logits);
    let (idx, vals) = teacher.flat_rows();
    temperature.check_rows(s.dims()[0]);
    let values = sparse_rows(s, idx, vals, divergence, options, &temperature);
    RowLoss::new(temperature.scale(values, scaling), &rows, v)
}

/// Validates a sparse call (shapes, divergence parameters, indices, option combinations) and
/// returns the vocabulary size `V`. Shared by [`sparse_divergence`] and the chunked variant.
///
/// # Panics
/// With the messages documented on [`sparse_divergence`].
pub(crate) fn check_sparse_inputs<const D: usize>(
    sd: &[usize; D],
    teacher: &TopkTeacher<D>,
    divergence: Divergence,
    options: SparseOptions,
) -> usize {
    let td = teacher.indices.dims();
    assert!(
        sd[..D - 1] == td[..D - 1],
        "teacher indices: shape {td:?} does not match student_logits shape {sd:?} in the leading dimensions"
    );
    if let Err(e) = divergence.validate() {
        panic!("{e}");
    }
    let v = sd[D - 1];
    if let Err(e) = check_topk_indices(&teacher.indices, v) {
        panic!("teacher indices: {e}");
    }
    let tail_bucket = options.missing_mass == MissingMass::TailBucket;
    assert!(
        !(tail_bucket && teacher.space == TopkSpace::Logits),
        "MissingMass::TailBucket needs teacher log-probabilities (TopkTeacher::from_log_probs), got logits"
    );
    assert!(
        !(tail_bucket && options.student_norm == StudentNorm::Support),
        "StudentNorm::Support renormalises both sides over the top-k; it cannot be combined with MissingMass::TailBucket"
    );
    v
}

/// The per-row core on flattened `[R, V]` student logits and `[R, k]` teacher entries (all
/// checks done by the caller).
pub(crate) fn sparse_rows(
    s: Tensor<2>,
    idx: Tensor<2, Int>,
    vals: Tensor<2>,
    divergence: Divergence,
    options: SparseOptions,
    temperature: &RowTemperature,
) -> Tensor<1> {
    let [r, v] = s.dims();
    let k = idx.dims()[1];
    let vals = vals.detach();
    let (log_q, log_p) = match options.student_norm {
        StudentNorm::Support => {
            // Gather first: no full-vocabulary work at all.
            let s_k = s.gather(1, idx);
            (temperature.log_softmax(s_k), temperature.log_softmax(vals))
        }
        StudentNorm::Full => {
            let z = temperature.divide(s);
            // The only full-vocabulary pass the forward KL needs: the row normaliser.
            let lse = row_logsumexp(z.clone()).reshape([r, 1]);
            let log_q_k = z.clone().gather(1, idx.clone()).sub(lse.clone());
            // With k = V there is nothing outside the top-k: no tail bin on either side (a
            // rounding-level teacher tail would otherwise meet an empty student tail).
            let need_tail = k < v
                && (options.missing_mass == MissingMass::TailBucket
                    || !divergence.ignores_teacher_zeros());
            if !need_tail {
                (log_q_k, temperature.log_softmax(vals))
            } else {
                // Student tail: log Σ_{v ∉ ids} q_v, exactly (not 1 − Σ q, which cancels).
                let ones = Tensor::<2>::ones([r, k], &z.device());
                let support = Tensor::<2>::zeros([r, v], &z.device())
                    .scatter(1, idx, ones, IndexingUpdateOp::Add)
                    .greater_elem(0.5);
                let log_q_tail = row_logsumexp(z.mask_fill(support, f32::NEG_INFINITY))
                    .reshape([r, 1])
                    .sub(lse);
                let log_q = Tensor::cat(vec![log_q_k, log_q_tail], 1);
                let log_p = match options.missing_mass {
                    MissingMass::Renormalize => {
                        let tail = Tensor::<2>::full([r, 1], f32::NEG_INFINITY, &vals.device());
                        Tensor::cat(vec![temperature.log_softmax(vals), tail], 1)
                    }
                    MissingMass::TailBucket => {
                        let kept = row_logsumexp(vals.clone()).reshape([r, 1]);
                        // log(1 − exp(kept)), −inf when the top-k already hold all the mass.
                        let full = kept.clone().greater_equal_elem(0.0);
                        let mass = kept
                            .mask_fill(full.clone(), -1.0)
                            .exp()
                            .neg()
                            .add_scalar(1.0);
                        let tail = mass.log().mask_fill(full, f32::NEG_INFINITY);
                        temperature.log_softmax(Tensor::cat(vec![vals, tail], 1))
                    }
                };
                (log_q, log_p)
            }
        }
    };
    divergence.rows_unchecked(log_q, log_p)
}

/// Hinton KD with a top-k teacher: [`sparse_divergence`] with [`Divergence::ForwardKl`] — the
/// loss of golden family h.
///
/// ```text
/// p̂ = softmax(topk_logits / T)  (over k)     r_i = s · Σ_k p̂_k (log p̂_k − log q_{idx_k})
/// ```
///
/// # Shapes
/// As [`sparse_divergence`].
///
/// # Panics
/// As [`sparse_divergence`].
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::sparse::{topk_kd, StudentNorm, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[2.0, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[0, 1, 2]], &device),
///     Tensor::<2>::from_floats([[2.0, 0.0, -1.0]], &device),
/// );
/// let v = topk_kd(s, teacher, StudentNorm::Full, Temperature::ONE, T2Scaling::On).reduce(Reduction::Sum);
/// assert!(v.into_scalar::<f32>().abs() < 1e-6); // k = V and equal logits
/// ```
pub fn topk_kd<const D: usize>(
    student_logits: Tensor<D>,
    teacher: TopkTeacher<D>,
    student_norm: StudentNorm,
    temperature: impl Into<RowTemperature>,
    scaling: T2Scaling,
) -> RowLoss {
    sparse_divergence(
        student_logits,
        teacher,
        Divergence::ForwardKl,
        SparseOptions {
            missing_mass: MissingMass::Renormalize,
            student_norm,
        },
        temperature,
        scaling,
    )
}

/// Configuration of [`SparseKdLoss`].
#[derive(Config, Debug)]
pub struct SparseKdLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²`. On by default: with the forward KL this is Hinton KD on a top-k
    /// teacher (golden family h).
    #[config(default = true)]
    pub t2_scaling: bool,
    /// The teacher's missing mass.
    #[config(default = "MissingMass::Renormalize")]
    pub missing_mass: MissingMass,
    /// The student's normalisation.
    #[config(default = "StudentNorm::Full")]
    pub student_norm: StudentNorm,
}

impl SparseKdLossConfig {
    /// Builds the loss for `divergence`, validating everything.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], or [`KdError::OutOfRange`] for the divergence.
    pub fn try_init(&self, divergence: Divergence) -> Result<SparseKdLoss, KdError> {
        Temperature::new(self.temperature)?;
        divergence.validate()?;
        Ok(SparseKdLoss {
            config: self.clone(),
            divergence,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self, divergence: Divergence) -> SparseKdLoss {
        self.try_init(divergence).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`sparse_divergence`].
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::divergence::Divergence;
/// use kd_losses::sparse::{SparseKdLossConfig, TopkTeacher};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = SparseKdLossConfig::new().with_temperature(2.0).init(Divergence::ForwardKl);
/// let s = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let teacher = TopkTeacher::from_logits(
///     Tensor::<2, Int>::from_ints([[1, 0]], &device),
///     Tensor::<2>::from_floats([[0.5, 1.0]], &device),
/// );
/// assert!(loss.forward(s, teacher, Reduction::Mean).into_scalar::<f32>() > 0.0);
/// ```
#[derive(Module, Debug)]
pub struct SparseKdLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: SparseKdLossConfig,
    /// The divergence.
    #[module(skip)]
    pub divergence: Divergence,
}

impl SparseKdLoss {
    /// Per-row values (see [`sparse_divergence`]).
    ///
    /// # Panics
    /// As [`sparse_divergence`].
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
    ) -> RowLoss {
        let c = &self.config;
        let t = Temperature::new(c.temperature).unwrap_or_else(|e| panic!("{e}"));
        let scaling = T2Scaling::from_flag(c.t2_scaling);
        let options = SparseOptions {
            missing_mass: c.missing_mass,
            student_norm: c.student_norm,
        };
        sparse_divergence(
            student_logits,
            teacher,
            self.divergence,
            options,
            t,
            scaling,
        )
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// As [`sparse_divergence`].
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_logits, teacher)
            .reduce(reduction)
    }

    /// Reduced loss over the rows kept by `mask`.
    ///
    /// # Panics
    /// As [`sparse_divergence`], or if the mask does not match the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher: TopkTeacher<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_logits, teacher)
            .masked(mask)
            .reduce(reduction)
    }
}
