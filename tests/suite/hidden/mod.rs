//! `kd_losses::hidden`: hidden-state MSE, cosine and normalized MSE, with or without a learnable
//! projection.
//!
//! * `api`: shape misuse (messages pinned), typed configuration errors, projection inits, the
//!   projection learns, layered losses report each pair, fully masked input.
//! * `golden`: families f (hidden MSE with a projection) and i (cosine, DistilBERT) of
//!   `tests/golden`, loss and every gradient, on every backend.
//! * `props`: masking equals slicing (proptest) on every backend.

mod api;
mod golden;
mod props;
