//! Attention-map distillation: MSE on attention scores or probabilities (TinyBERT, TextBrewer),
//! row-wise attention KL, and MiniLM's self-attention and relation KLs (v1 and v2).
//!
//! Attention maps are `[B, H, S, S]` (batch, heads, queries, keys). A padding mask is a boolean
//! `[B, S]` tensor, `true` for a real token. Every function here names the space of its inputs:
//! `*_scores` take pre-softmax scores (`q·kᵀ/√d`, with or without an additive mask), `*_probs`
//! take softmax probabilities.
//!
//! | loss | rows | value | reference |
//! |---|---|---|---|
//! | [`attention_mse_scores`], [`attention_mse_probs`] | `[B, H', S, S]` pairs | `(A_s − A_t)²` per pair | TinyBERT, TextBrewer `att_mse_loss` |
//! | [`attention_kl_scores`], [`attention_kl_probs`] | `[B, H', S]` query rows | `KL(A_t ‖ A_s)` per query | MiniLM |
//! | [`self_relation_kl`] | `[B, R, S]` query rows | `KL(rel_t ‖ rel_s)`, `rel = softmax(X Xᵀ/√d_r)` | MiniLM, MiniLMv2 |
//! | [`minilm_loss`] | — | attention KL + value-relation KL | MiniLM (Wang et al. 2020) |
//! | [`minilm_v2_loss`] | — | Q-Q + K-K + V-V relation KLs | MiniLMv2 (Wang et al. 2021) |
//!
//! # Heads
//! [`HeadReduce`] says what happens when teacher and student head counts may differ:
//! `Match` requires equal counts (and panics otherwise), `Mean` averages each map over its heads
//! first (`H' = 1`; for probabilities the average is still a distribution), `Sum` sums them
//! (TextBrewer's `att_mse_sum_loss`; MSE only).
//!
//! # Masks and `-inf`
//! * MSE: a `(query, key)` pair counts when both tokens are real, `M[b,i,j] = m[b,i]·m[b,j]`;
//!   [`Reduction::RowMean`] then divides by `H' · Σ_b count_b²` (TextBrewer with a mask). Masked
//!   pairs are set to 0 in both maps **before** the difference, so `-inf` or `-1e4` entries there
//!   never reach the arithmetic. Without a mask, [`Reduction::RowMean`] is the mean over every entry.
//! * A `-inf` score (a masked key, a causal mask) in either map is set to 0 in both maps before the
//!   MSE: it contributes 0 and gets a zero gradient instead of NaN.
//! * KL: padded keys are set to `-inf` in both score maps before the softmax, and padded queries
//!   are dropped rows; [`Reduction::RowMean`] is the mean over real `(head, query)` rows, MiniLM's
//!   `1/(A_h·|x|)`. A row whose keys are all masked is empty: it gives 0, never NaN.
//! * Probability inputs are taken as they are: padded keys should already have probability 0
//!   (as a softmax over masked scores gives); the mask then removes padded queries.
//!
//! TextBrewer zeroes every entry `≤ −1e-3` (all negative scores, not only masked ones) when no
//! mask is given; [`attention_mse_textbrewer`] reproduces that for comparisons only.

mod kl;
mod mask;
mod minilm;
mod mse;

pub use kl::*;
pub use minilm::*;
pub use mse::*;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Bool, Tensor};

use crate::combine::LossTerms;
use crate::error::{KdError, check_positive};
use crate::layer_map::LayerMap;
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::rows::kl_rows_from_log_probs;
use crate::temperature::{Temperature, temperature_log_softmax, temperature_softmax};

/// How teacher and student heads are brought together; see the [module docs](self).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum HeadReduce {
    /// Head `h` of the student meets head `h` of the teacher; the counts must be equal.
    Match,
    /// Average each map over its heads first (`H' = 1`); any head counts.
    Mean,
    /// Sum each map over its heads first (`H' = 1`; TextBrewer `att_mse_sum_loss`); MSE only.
    Sum,
}

/// How teacher and student heads meet in an attention **KL** (a sum over heads is not a
/// distribution, so there is no `Sum`).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum KlHeads {
    /// Head `h` of the student meets head `h` of the teacher; the counts must be equal.
    Match,
    /// Average each model's per-head distributions first; any head counts.
    Mean,
}

impl From<KlHeads> for HeadReduce {
    fn from(h: KlHeads) -> HeadReduce {
        match h {
            KlHeads::Match => HeadReduce::Match,
            KlHeads::Mean => HeadReduce::Mean,
        }
    }
}

/// Which space a list of attention maps lives in (for [`attention_layers_mse`]).
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum AttentionSpace {
    /// Pre-softmax scores ([`attention_mse_scores`]).
    Scores,
    /// Softmax probabilities ([`attention_mse_probs`]).
    Probs,
}
