//! Numerical constants shared by the composed losses and the fused kernels (a leaf: it imports
//! nothing from the crate).

/// The one small constant of the crate's norms, `1e-12`: the `ε` inside the cosine's square root
/// ([`hidden_cosine`](crate::hidden::hidden_cosine), PyTorch's `cosine_embedding_loss`), the
/// smallest norm a vector is divided by ([`hidden_normalized_mse`](crate::hidden::hidden_normalized_mse),
/// PyTorch's `F.normalize`; the Gram rows of [`similarity_preserving`](crate::relation::similarity_preserving)),
/// and the smallest distance taken under a square root in the RKD losses (finite gradients where two
/// embeddings coincide; the authors' code clamps at `1e-12` too).
pub const NORM_EPS: f64 = 1e-12;

/// Taylor coefficients `c_k = (−1)^k / (k + 2)!`, `k = 0..=7`, of
/// `φ(d)/d² = (e^{−d} − 1 + d)/d²`: for `|d| ≤ ½` the truncated series is within 3e-9 relative.
/// Evaluate by Horner from the last coefficient.
pub(crate) const PHI_OVER_D2_TAYLOR: [f64; 8] = [
    1.0 / 2.0,
    -1.0 / 6.0,
    1.0 / 24.0,
    -1.0 / 120.0,
    1.0 / 720.0,
    -1.0 / 5040.0,
    1.0 / 40320.0,
    -1.0 / 362_880.0,
];
