//! Shape checks, head reduction and the masks built from a `[B, S]` padding mask.

use super::*;

// ---------------------------------------------------------------------------------------------
// Shape checks and masks
// ---------------------------------------------------------------------------------------------

pub(super) fn check_maps(s_name: &str, s: &[usize; 4], t_name: &str, t: &[usize; 4]) {
    assert!(
        s[2] == s[3],
        "{s_name}: shape {s:?} is not [B, H, S, S] (queries and keys differ)"
    );
    assert!(
        t[0] == s[0] && t[2] == s[2] && t[3] == s[3],
        "{t_name}: shape {t:?} does not match {s_name} shape {s:?} (batch and sequence length must agree)"
    );
}

pub(super) fn check_mask(mask: &Tensor<2, Bool>, b: usize, s: usize) {
    let d = mask.dims();
    assert!(
        d == [b, s],
        "padding_mask: shape {d:?} does not match the attention maps' [B, S] = {:?}",
        [b, s]
    );
}

pub(super) fn reduce_heads(
    s_name: &str,
    s: Tensor<4>,
    t_name: &str,
    t: Tensor<4>,
    heads: HeadReduce,
) -> (Tensor<4>, Tensor<4>) {
    match heads {
        HeadReduce::Match => {
            let (sd, td) = (s.dims(), t.dims());
            assert!(
                sd[1] == td[1],
                "{t_name}: {} heads (shape {td:?}) do not match {s_name}'s {} heads (shape {sd:?}); \
                 HeadReduce::Match needs equal head counts (use HeadReduce::Mean)",
                td[1],
                sd[1]
            );
            (s, t)
        }
        HeadReduce::Mean => (s.mean_dim(1), t.mean_dim(1)),
        HeadReduce::Sum => (s.sum_dim(1), t.sum_dim(1)),
    }
}

/// `[B, S]` → pair mask `[B, H, S, S]`, `m_i · m_j`.
pub(super) fn pair_mask(mask: &Tensor<2, Bool>, h: usize) -> Tensor<4, Bool> {
    let [b, s] = mask.dims();
    let q = mask.clone().reshape([b, 1, s, 1]).expand([b, h, s, s]);
    let k = key_mask(mask, h);
    q.bool_and(k)
}

/// `[B, S]` → key mask `[B, H, S, S]`, `m_j`.
pub(super) fn key_mask(mask: &Tensor<2, Bool>, h: usize) -> Tensor<4, Bool> {
    let [b, s] = mask.dims();
    mask.clone().reshape([b, 1, 1, s]).expand([b, h, s, s])
}

/// `[B, S]` → query rows `[B, H, S]`.
pub(super) fn query_rows(mask: &Tensor<2, Bool>, h: usize) -> RowMask {
    let [b, s] = mask.dims();
    RowMask::new(mask.clone().reshape([b, 1, s]).expand([b, h, s]))
}
