//! `kd_losses::logits`: the soft (Hinton KD), hard (cross-entropy), combined and pseudo-label
//! losses.
//!
//! * `api`: validation errors, shape panics (messages pinned), gradients reach the student and
//!   never the teacher, documented edge cases.
//! * `golden`: families a, b, d and e of `tests/golden`, loss and gradient, on every backend.
//! * `props`: property tests (proptest) on every backend.
//! * `transform`: logit scale and soft cap (golden family `s_softcap`, the crate's own).

mod api;
mod golden;
mod props;
mod transform;
