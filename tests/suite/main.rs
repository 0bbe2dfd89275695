//! The integration tests of kd-losses: one test binary (`cargo test --test suite`) whose
//! modules mirror the crate's source tree, so that the tests of `kd_losses::<family>` are in
//! `tests/suite/<family>.rs` or `tests/suite/<family>/`. One binary links Burn and its backends
//! once instead of once per test file.
//!
//! Inside a family the tests are grouped by kind, in one file or in submodules of the family's
//! folder:
//!
//! * `api`: validation errors (typed), shape misuse (panic messages pinned with
//!   `#[should_panic(expected = ...)]`), gradients reach the student and never the teacher,
//!   documented edge cases;
//! * `golden`: float64 reference vectors from `tests/golden/` (or `$KD_GOLDEN_DIR`), loss and
//!   gradient, on every backend of `KD_BACKENDS`;
//! * `props`: proptest properties on every backend (wgpu runs one case in `WGPU_CASE_STRIDE`);
//! * `parity`: a fast path (fused kernel, fused linear head) against the composed reference.
//!
//! Two modules are not a source module: `adversarial` (the hostile-input contract, one test per
//! item of its issue, across the logit and divergence losses) and `recipes` (the recipes of
//! `docs/recipes.md` run end to end). `common` holds the shared support: backend list,
//! tolerances, golden loader, proptest strategies, report lines for `.ci/run`.
//!
//! Select a family with a name filter: `cargo test --all-features --test suite -- fused::`.
//! Proptest's regression seeds sit next to the file that defines the property
//! (`<file>.proptest-regressions`).

mod common;

mod adversarial;
mod attention;
#[cfg(feature = "chunked")]
mod chunked;
mod combine;
mod divergence;
mod dkd;
mod ensemble;
mod fused;
#[cfg(feature = "chunked")]
mod fused_linear;
mod hidden;
mod layer_map;
mod logits;
mod recipes;
mod reduction;
mod relation;
mod schedule;
mod sparse;
mod temperature;
#[cfg(feature = "train")]
mod train;
mod vocab;
