//! [`RowMask`]: which rows of a loss count.

use burn::tensor::{Bool, Int, Tensor};

use crate::rows::assert_same_dims;

/// Which rows count: `true` keeps a row, `false` drops it.
///
/// Build it from a padding/attention mask of the logits' leading shape (`[B, S]` for
/// `[B, S, V]` logits) or from labels with an ignore index.
#[derive(Debug, Clone)]
pub struct RowMask {
    pub(super) mask: Tensor<1, Bool>,
    pub(super) dims: Vec<usize>,
}

impl RowMask {
    /// A mask over rows; its shape must equal the logits' shape without the last dimension.
    pub fn new<const D: usize>(mask: Tensor<D, Bool>) -> Self {
        let dims = mask.dims().to_vec();
        let n: usize = dims.iter().product();
        let mask = if n == 0 {
            // Burn's reshape reads a 0 as "keep this dimension"; an empty mask is built anew.
            Tensor::<1, Bool>::from_data(
                burn::tensor::TensorData::new(Vec::<bool>::new(), [0]),
                &mask.device(),
            )
        } else {
            mask.reshape([n])
        };
        RowMask { mask, dims }
    }

    /// A mask over flattened rows (`[R]`) of the row shape `dims` (`R = Π dims`).
    pub(crate) fn from_flat(mask: Tensor<1, Bool>, dims: &[usize]) -> Self {
        RowMask {
            mask,
            dims: dims.to_vec(),
        }
    }

    /// Keeps the rows whose label differs from `ignore_index` (PyTorch uses `-100`).
    pub fn from_labels<const D: usize>(labels: Tensor<D, Int>, ignore_index: i64) -> Self {
        RowMask::new(labels.not_equal_elem(ignore_index))
    }

    /// The same mask viewed with the row shape `dims` (same number of rows).
    ///
    /// # Panics
    /// If `Π dims` differs from the number of rows.
    pub fn reshape_to(self, dims: &[usize]) -> RowMask {
        let n: usize = dims.iter().product();
        assert!(
            n == self.mask.dims()[0],
            "mask: shape {:?} cannot be viewed as {dims:?}",
            self.dims
        );
        RowMask {
            mask: self.mask,
            dims: dims.to_vec(),
        }
    }

    /// The mask flattened to `[R]`.
    pub fn flat(&self) -> Tensor<1, Bool> {
        self.mask.clone()
    }

    /// The mask's original shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Both masks must keep a row (logical and).
    pub fn and(self, other: &RowMask) -> RowMask {
        assert_same_dims("mask", &other.dims, &self.dims);
        RowMask {
            mask: self.mask.bool_and(other.mask.clone()),
            dims: self.dims,
        }
    }

    /// Number of kept rows, as a device scalar `[1]` (no host sync).
    pub fn count(&self) -> Tensor<1> {
        self.mask.clone().float().sum()
    }
}
