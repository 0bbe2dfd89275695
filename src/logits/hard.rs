//! Hard loss: cross-entropy with integer labels, with PyTorch's exact semantics.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::door::{LogitKernel, logit_rows};
use crate::error::{KdError, check_positive, check_range};
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::rows::{at_least_f32, flatten_labels, flatten_rows_native};
use crate::temperature::{Temperature, temperature_log_softmax};

/// PyTorch's default ignore index.
pub const IGNORE_INDEX: i64 = -100;

/// Options of [`cross_entropy`].
#[derive(Debug, Clone)]
pub struct CrossEntropyOptions {
    /// Rows with this label are excluded from numerator and denominator. `None`: every label
    /// must be a class.
    pub ignore_index: Option<i64>,
    /// Label smoothing `ε ∈ [0, 1]`.
    pub label_smoothing: f64,
    /// Optional class weights `[C]` (finite, > 0); the mean then divides by `Σ w_y`.
    pub class_weights: Option<Tensor<1>>,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            ignore_index: Some(IGNORE_INDEX),
            label_smoothing: 0.0,
            class_weights: None,
        }
    }
}

/// Checks every label against `[0, num_classes)` (the ignore index aside).
///
/// This reads the labels back to the host (one small synchronisation); [`cross_entropy`]
/// calls it on every use.
///
/// # Errors
/// [`KdError::LabelOutOfRange`] naming the first offending label.
pub fn check_labels<const D: usize>(
    labels: &Tensor<D, Int>,
    num_classes: usize,
    ignore_index: Option<i64>,
) -> Result<(), KdError> {
    let values = labels
        .clone()
        .try_into_vec_as::<i64>()
        .expect("labels can be read back");
    for y in values {
        if Some(y) == ignore_index {
            continue;
        }
        if y < 0 || y >= num_classes as i64 {
            return Err(KdError::LabelOutOfRange {
                label: y,
                num_classes,
                ignore_index,
            });
        }
    }
    Ok(())
}

/// Panics unless `labels` has the logits' leading shape (`[N]` for `[N, C]`, `[B, S]` for
/// `[B, S, C]`), naming both shapes.
pub(crate) fn assert_label_shape<const DL: usize>(labels: &Tensor<DL, Int>, logits_dims: &[usize]) {
    let d = logits_dims.len();
    assert!(
        DL + 1 == d && labels.dims()[..] == logits_dims[..d - 1],
        "labels: shape {:?} does not match logits shape {:?} without its last dimension",
        labels.dims(),
        logits_dims
    );
}

/// Cross-entropy with integer labels per row, PyTorch `F.cross_entropy` semantics.
///
/// ```text
/// log q = log_softmax(logits)                     (over the last dimension, C classes)
/// r_i   = (1 − ε) · w_{y_i} · (−log q_{i,y_i}) + ε · Σ_c w_c · (−log q_{ic}) / C
/// ```
/// with `w ≡ 1` without class weights. Rows whose label is the ignore index give `r = 0`, no
/// gradient, and leave the denominator: [`Reduction::RowMean`] divides by the number of kept rows
/// (or by `Σ w_{y_i}` over them with class weights), exactly as PyTorch's `mean`. Unlike PyTorch,
/// a batch whose rows are all ignored gives `0`, not NaN.
///
/// # Shapes
/// - `logits`: `[..., C]`
/// - `labels`: the leading shape (`[N]` for `[N, C]`, `[B, S]` for `[B, S, C]`), integers in
///   `[0, C)` or the ignore index
/// - returns a [`RowLoss`] with the ignored rows already masked.
///
/// # Panics
/// If `labels`' shape is not the logits' leading shape, if a label is out of range
/// (message of [`KdError::LabelOutOfRange`]), if `class_weights` is not `[C]`, or if
/// `label_smoothing` is outside `[0, 1]`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let logits = Tensor::<2>::from_floats([[2.0, 0.0], [0.0, 2.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0, -100], &device);
/// let loss = cross_entropy(logits, labels, &CrossEntropyOptions::default()).reduce(Reduction::RowMean);
/// let expected = (1.0f32 + (-2.0f32).exp()).ln(); // only the first row counts
/// assert!((loss.into_scalar::<f32>() - expected).abs() < 1e-6);
/// ```
pub fn cross_entropy<const D: usize, const DL: usize>(
    logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    options: &CrossEntropyOptions,
) -> RowLoss {
    let dims = logits.dims();
    assert_label_shape(&labels, &dims);
    let eps = options.label_smoothing;
    if let Err(e) = check_range("label_smoothing", eps, 0.0, 1.0) {
        panic!("{e}");
    }
    crate::rows::assert_classes("logits", &dims);
    // In its own dtype: the kernel reads `f16`/`bf16` as they are; the composed rows widen.
    let (logits, rows, c) = flatten_rows_native(logits);
    if let Err(e) = check_labels(&labels, c, options.ignore_index) {
        panic!("labels: {e}");
    }
    let labels = flatten_labels(labels);
    let keep = match options.ignore_index {
        Some(ii) => labels.clone().not_equal_elem(ii),
        // Every label was checked to be in [0, C).
        None => labels.clone().greater_equal_elem(0),
    };
    let safe = labels.mask_fill(keep.clone().bool_not(), 0);
    let class_weights = options.class_weights.clone().map(|w| {
        assert!(
            w.dims() == [c],
            "class_weights: shape {:?} does not match the number of classes [{c}]",
            w.dims()
        );
        w.detach()
    });
    if class_weights.is_none() {
        // Rows on demand with the logit kernel's hard term as their reduction; the ignored rows
        // are masked (select, don't multiply: nothing in them reaches the gradient).
        let labels = safe.clone();
        return logit_rows(
            vec![logits],
            &rows,
            c,
            Some(LogitKernel::hard(eps)),
            Some(safe),
            move |x| {
                let [logits] = <[Tensor<2>; 1]>::try_from(x).expect("one input");
                ce_rows(at_least_f32(logits), labels.clone(), None, eps).0
            },
        )
        .masked(&RowMask::from_flat(keep, &rows));
    }
    // Class weights: the composed path, with the weights of the labels as the denominator.
    // Ignored rows are replaced before anything is computed from them.
    let logits = crate::rows::select_rows(at_least_f32(logits), &keep.clone().bool_not());
    let (row, w_y) = ce_rows(logits, safe, class_weights, eps);
    let drop = keep.bool_not();
    let row = row.mask_fill(drop.clone(), 0.0);
    let weights = w_y.expect("class weights").mask_fill(drop, 0.0);
    RowLoss::new(row, &rows, c).with_denominator_weights(weights)
}

/// The composed cross-entropy rows of `[R, C]` logits (at least `f32`) with `labels` (`[R]`,
/// valid classes), optional class weights (`[C]`) and label smoothing `eps`:
/// `(1 − ε)·w_y·(−log q_y) + ε·Σ_c w_c(−log q_c)/C`, and the labels' weights `w_y`.
fn ce_rows(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    class_weights: Option<Tensor<1>>,
    eps: f64,
) -> (Tensor<1>, Option<Tensor<1>>) {
    let [r, c] = logits.dims();
    let log_q = temperature_log_softmax(logits, Temperature::ONE);
    let nll = log_q
        .clone()
        .gather(1, labels.clone().reshape([r, 1]))
        .reshape([r])
        .neg();
    let (nll, smooth, w_y) = match class_weights {
        Some(w) => {
            let w = w.cast(log_q.dtype());
            let w_y = w.clone().select(0, labels);
            let smooth = log_q.mul(w.reshape([1, c])).sum_dim(1).reshape([r]).neg();
            (nll.mul(w_y.clone()), smooth, Some(w_y))
        }
        None => (nll, log_q.sum_dim(1).reshape([r]).neg(), None),
    };
    let row = if eps == 0.0 {
        nll
    } else {
        nll.mul_scalar(1.0 - eps)
            .add(smooth.div_scalar(c as f64).mul_scalar(eps))
    };
    (row, w_y)
}

/// Configuration of [`CrossEntropyLoss`].
#[derive(Config, Debug)]
pub struct CrossEntropyLossConfig {
    /// Ignore index (PyTorch: `-100`); `None` disables it.
    #[config(default = "Some(-100)")]
    pub ignore_index: Option<i64>,
    /// Label smoothing `ε ∈ [0, 1]`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Class weights (each finite, > 0).
    pub class_weights: Option<Vec<f64>>,
}

impl CrossEntropyLossConfig {
    /// Builds the loss on `device` (where the class weights live).
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] for `label_smoothing ∉ [0, 1]`; [`KdError::NotPositive`] for a
    /// class weight that is not finite and > 0; [`KdError::Empty`] for an empty weight list.
    pub fn try_init(&self, device: &Device) -> Result<CrossEntropyLoss, KdError> {
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0)?;
        let class_weights = match &self.class_weights {
            Some(w) => {
                if w.is_empty() {
                    return Err(KdError::Empty {
                        name: "class_weights",
                    });
                }
                for &x in w {
                    check_positive("class weight", x)?;
                }
                let w: Vec<f32> = w.iter().map(|&x| x as f32).collect();
                Some(Tensor::<1>::from_floats(w.as_slice(), device))
            }
            None => None,
        };
        Ok(CrossEntropyLoss {
            ignore_index: self.ignore_index,
            label_smoothing: self.label_smoothing,
            class_weights,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid value (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> CrossEntropyLoss {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`cross_entropy`] (the hard loss).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::prelude::*;
/// use kd_losses::CrossEntropyLossConfig;
///
/// let device = Device::flex();
/// let ce = CrossEntropyLossConfig::new().with_label_smoothing(0.1).init(&device);
/// let logits = Tensor::<2>::from_floats([[2.0, 0.0, 1.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0], &device);
/// assert!(ce.forward(logits, labels, Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
#[derive(Module, Debug)]
pub struct CrossEntropyLoss {
    /// Ignore index.
    pub ignore_index: Option<i64>,
    /// Label smoothing.
    pub label_smoothing: f64,
    /// Class weights `[C]` (constants, never trained).
    pub class_weights: Option<Tensor<1>>,
}

impl CrossEntropyLoss {
    fn options(&self) -> CrossEntropyOptions {
        CrossEntropyOptions {
            ignore_index: self.ignore_index,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights.clone(),
        }
    }

    /// Per-row values (see [`cross_entropy`]).
    ///
    /// # Panics
    /// See [`cross_entropy`].
    pub fn forward_no_reduction<const D: usize, const DL: usize>(
        &self,
        logits: Tensor<D>,
        labels: Tensor<DL, Int>,
    ) -> RowLoss {
        cross_entropy(logits, labels, &self.options())
    }

    /// Reduced loss `[1]`.
    ///
    /// # Panics
    /// See [`cross_entropy`].
    pub fn forward<const D: usize, const DL: usize>(
        &self,
        logits: Tensor<D>,
        labels: Tensor<DL, Int>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(logits, labels).reduce(reduction)
    }
}
