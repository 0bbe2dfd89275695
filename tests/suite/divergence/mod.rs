//! `kd_losses::divergence`: forward / reverse KL, generalized JSD (TRL's and the continuous
//! convention), skew KL, total variation.
//!
//! * `api`: validation errors, pinned panic messages, documented values.
//! * `golden`: family c of `tests/golden`, loss and gradient, on every backend.
//! * `precision`: every divergence in `f32` against float64 at LLM shapes (5e-5 relative).
//! * `props`: property tests of every divergence against an f64 host reference, and of the
//!   variants built on them (sparse teachers, ensembles, per-row temperatures, chunked
//!   evaluation), which must equal the dense divergence.

mod api;
mod golden;
mod precision;
mod props;
