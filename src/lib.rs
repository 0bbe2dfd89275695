//! # kd-losses
//!
//! Knowledge-distillation losses for [Burn](https://burn.dev): train a small **student**
//! model from a large **teacher** with numerically careful, autodiff-ready losses that run on
//! every Burn backend (the backend is chosen at run time by the tensors' `Device`).
//!
//! ## Quick start
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kd_losses::prelude::*;
//!
//! let device = Device::flex().autodiff();
//! let student = Tensor::<2>::from_floats([[0.5, 0.1, -0.3], [0.0, 1.0, 0.0]], &device).require_grad();
//! let teacher = Tensor::<2>::from_floats([[2.0, 0.3, -1.0], [0.1, 3.0, 0.2]], &device);
//! let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
//!
//! // α · T²·KL(p_teacher ‖ p_student) + (1 − α) · CE(student, labels)
//! let kd = DistillationLossConfig::new().with_temperature(4.0).with_alpha(0.9).init();
//! let out = kd.forward(student.clone(), teacher.clone(), labels, Reduction::RowMean);
//! let grads = out.total.backward();
//! assert!(student.grad(&grads).is_some());
//! assert!(teacher.grad(&grads).is_none()); // the teacher never receives a gradient
//! ```
//!
//! ## Catalogue
//! | module | losses |
//! |---|---|
//! | [`temperature`] | [`temperature_softmax`], [`temperature_log_softmax`], [`Temperature`] |
//! | [`logits`] | [`soft_kl`] (Hinton), [`cross_entropy`] (hard), [`distillation_loss`] (α-mix), [`pseudo_label_ce`] |
//! | [`reduction`] | [`RowLoss`], [`RowMask`], [`Reduction`] (sum, mean, batchmean, element mean, global normalizer) |
//! | [`mod@divergence`] | [`Divergence`]: reverse KL, generalized JSD (TRL and continuous), skew KL, skew reverse KL, total variation, symmetric KL; [`RowTemperature`] |
//! | [`sparse`] | top-k teachers ([`TopkTeacher`]): [`sparse_divergence`], [`topk_kd`] |
//! | [`vocab`] | [`align_vocab`]: student/teacher vocabulary mismatch |
//! | [`ensemble`] | several teachers: [`ensemble_divergence`] |
//! | [`mod@dkd`] | decoupled KD (TCKD + NCKD): [`dkd()`](dkd::dkd) |
//! | [`schedule`] | [`Schedule`], [`TemperatureSchedule`], [`entropy_temperature`], [`LearnableTemperature`] |
//! | [`chunked`] | large vocabularies: [`chunked_divergence`], [`chunked_sparse_divergence`] |
//! | [`fused`] | fused forward + backward kernels (Flex CPU, CubeCL) behind [`distillation_loss`], [`SoftKlLoss`], [`DivergenceLoss`]; [`fused::fused_available`]; the reduced soft loss of any divergence: [`divergence::soft_loss`] |
//! | [`combine`] | [`LossTerms`]: weighted sums that report each term |
//! | [`hidden`] | [`hidden_mse`] + learnable [`HiddenProjection`] (TinyBERT, TextBrewer), [`hidden_cosine`] (DistilBERT), [`hidden_normalized_mse`] (PKD), [`LayeredHiddenLoss`] |
//! | [`layer_map`] | [`LayerMap`]: uniform (TinyBERT), skip / last-k (PKD), explicit pairs |
//! | [`attention`] | [`attention_mse_scores`] / [`attention_mse_probs`] (TinyBERT), [`attention_kl_scores`], [`self_relation_kl`], [`minilm_loss`] (MiniLM), [`minilm_v2_loss`] (MiniLMv2) |
//! | [`relation`] | [`rkd_distance`], [`rkd_angle`] (RKD), [`similarity_preserving`] (SP) |
//! | [`error`] | [`KdError`] |
//!
//! The guide in the repository, `docs/README.md`, explains how to choose a loss, maps papers
//! to calls and gives a PyTorch / TRL / TextBrewer migration table.
//!
//! ## Conventions
//! * Student first, teacher second. Arguments named `*_logits` are raw logits.
//! * Every loss returns per-row values ([`RowLoss`]); masks and reductions are separate,
//!   explicit steps, and each reduction's denominator is documented.
//! * `0 · log 0 = 0`: `-inf` logits (masked vocabulary) give finite losses and zero gradients.
//! * Teacher inputs are detached inside every loss.
//! * Configuration errors are a typed `Result` ([`KdError`]); shape misuse panics with a
//!   message naming the argument and both shapes.
//!
//! ## Cargo features
//! The library depends on `burn` with `default-features = false` and turns no Burn backend,
//! `autodiff` or `fusion` on: the application's own `burn` dependency decides them. The fused
//! kernels are found at run time from the tensors (see [`fused`]): a Flex tensor runs the CPU
//! kernel and a wgpu / Vulkan / Metal / CUDA / ROCm tensor the CubeCL kernel, with or without
//! Burn's `autodiff` and `fusion`, and every other backend the composed path.
//! [`fused::fused_available`] says which path a tensor takes.
//! * `cpu-kernel` (default) — compiles the fused CPU kernel (depends on `burn-flex` directly;
//!   it serves Flex tensors whenever the application's Burn has `flex`);
//! * `gpu-kernel` — compiles the fused CubeCL kernel (depends on `burn-cubecl`, `cubecl` and
//!   `burn-fusion` directly and turns no runtime on). CubeCL compiles only when some crate gives
//!   it a runtime, so this one is not a default: enable it next to a GPU backend of Burn
//!   (`wgpu`, `vulkan`, `metal`, `cuda`, `rocm`). Without it, the first CubeCL tensor that takes
//!   the composed path says so once on stderr;
//! * `chunked` — the [`chunked`] module (row-chunked evaluation for large vocabularies runs one
//!   backward pass per chunk, so it needs Burn's `autodiff` at compile time and turns it on);
//! * `train` — the [`train`] module: a step output and a metric that show each loss term inside
//!   Burn's `Learner` (turns on Burn's `train`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod attention;
#[cfg(feature = "chunked")]
mod chunk;
#[cfg(feature = "chunked")]
#[cfg_attr(docsrs, doc(cfg(feature = "chunked")))]
pub mod chunked;
pub mod combine;
pub mod divergence;
pub mod dkd;
pub mod ensemble;
pub mod error;
pub mod fused;
#[cfg(feature = "chunked")]
#[cfg_attr(docsrs, doc(cfg(feature = "chunked")))]
pub mod fused_linear;
pub mod hidden;
pub mod layer_map;
pub mod logits;
mod numerics;
pub mod reduction;
pub mod relation;
mod rows;
pub mod schedule;
pub mod sparse;
pub mod temperature;
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub mod train;
pub mod vocab;

pub use attention::{
    AttentionKlLoss, AttentionKlLossConfig, AttentionMseLoss, AttentionMseLossConfig,
    AttentionSpace, HeadReduce, KlHeads, MiniLmLayer, MiniLmV2Loss, MiniLmV2LossConfig, QkvStates,
    attention_kl_probs, attention_kl_scores, attention_layers_mse, attention_mse_probs,
    attention_mse_scores, attention_mse_textbrewer, minilm_loss, minilm_v2_loss, self_relation_kl,
};
#[cfg(feature = "chunked")]
pub use chunked::{chunk_rows_for_budget, chunked_divergence, chunked_sparse_divergence};
pub use combine::{LossTerm, LossTerms};
pub use divergence::{
    Divergence, DivergenceLoss, DivergenceLossConfig, JsdConvention, divergence,
    divergence_from_log_probs, generalized_jsd, reverse_kl, skew_kl, skew_reverse_kl, symmetric_kl,
    total_variation,
};
pub use dkd::{DkdLoss, DkdLossConfig, DkdRows, dkd};
pub use ensemble::{EnsembleMode, TeacherWeights, ensemble_divergence};
pub use error::KdError;
pub use hidden::{
    HiddenDistance, HiddenLoss, HiddenLossConfig, HiddenProjection, HiddenProjectionConfig,
    LayeredHiddenLoss, ProjectionInit, ProjectionSharing, hidden_cosine, hidden_mse,
    hidden_normalized_mse,
};
pub use layer_map::LayerMap;
pub use logits::{
    CrossEntropyLoss, CrossEntropyLossConfig, CrossEntropyOptions, DistillationLoss,
    DistillationLossConfig, DistillationOutput, IGNORE_INDEX, LogitTransform, PseudoLabelLoss,
    PseudoLabelLossConfig, SoftKlLoss, SoftKlLossConfig, cross_entropy, distillation_loss,
    distillation_loss_composed, pseudo_label_ce, soft_kl,
};
pub use numerics::NORM_EPS;
pub use reduction::{Normalizer, Reduction, RowLoss, RowMask};
pub use relation::{RkdLoss, RkdLossConfig, rkd_angle, rkd_distance, similarity_preserving};
pub use schedule::{
    LearnableTemperature, LearnableTemperatureConfig, Schedule, TemperatureSchedule,
    entropy_temperature,
};
pub use sparse::{
    MissingMass, SparseKdLoss, SparseKdLossConfig, SparseOptions, StudentNorm, TopkSpace,
    TopkTeacher, check_topk_indices, sparse_divergence, topk_kd,
};
pub use temperature::{
    RowTemperature, T2Scaling, Temperature, temperature_log_softmax, temperature_softmax,
};
pub use vocab::{VocabAlignment, align_vocab};

/// The names a distillation training loop needs, by name (25 items, no globs): the temperature,
/// the logit losses and their options, rows, masks and reductions, the divergences, the feature
/// losses a transformer student uses, the top-k teacher, and the loss sum. Everything else is
/// at the crate root (`kd_losses::Name`) and in its family's module.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 2.0, 0.5]], &device);
/// let t = Tensor::<2>::from_floats([[0.5, 2.5, 0.0]], &device);
/// let kd = soft_kl(s, t, Temperature::new(2.0).unwrap(), T2Scaling::On).reduce(Reduction::RowMean);
/// assert!(kd.into_scalar::<f32>() > 0.0);
/// ```
pub mod prelude {
    pub use crate::attention::{AttentionSpace, HeadReduce, attention_layers_mse};
    pub use crate::combine::LossTerms;
    pub use crate::divergence::{Divergence, JsdConvention, divergence};
    pub use crate::error::KdError;
    pub use crate::hidden::{HiddenLoss, HiddenProjectionConfig, LayeredHiddenLoss};
    pub use crate::layer_map::LayerMap;
    pub use crate::logits::{
        CrossEntropyOptions, DistillationLoss, DistillationLossConfig, IGNORE_INDEX, cross_entropy,
        soft_kl,
    };
    pub use crate::reduction::{Normalizer, Reduction, RowMask};
    pub use crate::sparse::{SparseKdLoss, TopkTeacher};
    pub use crate::temperature::{T2Scaling, Temperature};
}
