//! `kd_losses::attention`: attention-map MSE (scores, probabilities), attention KL and MiniLM v2.
//!
//! * `api`: shape misuse (messages pinned), MiniLM's terms, scores and probabilities agree.
//! * `golden`: family g (attention-map MSE, TextBrewer conventions) of `tests/golden`, loss and
//!   gradient, on every backend.
//! * `props`: property tests (proptest) on every backend; its `report_backends` reports the five
//!   tensor properties of the feature losses (`hidden::props`, `attention::props`, `relation`).

mod api;
mod golden;
mod props;
