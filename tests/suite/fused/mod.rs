//! `kd_losses::fused`: the fused kernels against the composed reference path.
//!
//! * `parity_logits`: the logit losses' kernel (Flex, CubeCL with and without Burn's `fusion`), values and
//!   student gradients; the automatic fallback elsewhere.
//! * `doors`: every public way to a logit loss (free function + reduce, Module, `soft_loss`,
//!   `CrossEntropyLoss`, `DistillationLoss`) runs the kernel where one serves, with the composed
//!   path's value and gradient.
//! * `parity_sq`: the squared-error kernel (hidden-state and attention-map MSE) on Flex.
//! * `adversarial`: items 2 and 5 of the issue "Correctness under hostile input" (per-term
//!   backward passes from one forward; mixed dtypes and `fused_available`); the other items are
//!   in `crate::adversarial`.

mod adversarial;
mod doors;
mod parity_logits;
mod parity_sq;
