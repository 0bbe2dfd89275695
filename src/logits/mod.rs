//! Logit distillation: the soft loss, the hard loss, their α-mix, and pseudo-labels.
//!
//! | function | formula (per row) | module |
//! |---|---|---|
//! | [`soft_kl`] | `T² · KL(softmax(t/T) ‖ softmax(s/T))` | [`SoftKlLoss`] |
//! | [`cross_entropy`] | `(1−ε)·w_y·(−log q_y) + ε·Σ_c w_c(−log q_c)/C` | [`CrossEntropyLoss`] |
//! | [`distillation_loss`] | `α · soft + (1 − α) · hard` | [`DistillationLoss`] |
//! | [`pseudo_label_ce`] | `−log q_{argmax t}` on confident rows | [`PseudoLabelLoss`] |
//!
//! Student first, teacher second, everywhere; arguments named `*_logits` take raw logits
//! (never probabilities).

pub(crate) mod combined;
pub(crate) mod door;
pub(crate) mod hard;
pub(crate) mod pseudo;
pub(crate) mod soft;
pub(crate) mod transform;

/// Re-exported from [`temperature`](crate::temperature), where it lives.
pub use crate::temperature::T2Scaling;
pub use combined::{
    DistillationLoss, DistillationLossConfig, DistillationOutput, distillation_loss,
    distillation_loss_composed,
};
pub use hard::{
    CrossEntropyLoss, CrossEntropyLossConfig, CrossEntropyOptions, IGNORE_INDEX, check_labels,
    cross_entropy,
};
pub use pseudo::{PseudoLabelLoss, PseudoLabelLossConfig, pseudo_label_ce};
pub use soft::{SoftKlLoss, SoftKlLossConfig, soft_kl};
pub use transform::LogitTransform;
