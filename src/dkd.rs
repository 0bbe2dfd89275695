//! Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022): the KL split into a
//! target-class part (TCKD) and a non-target part (NCKD), weighted separately.
//!
//! ```text
//! z = logits / T;  y = the label
//! b = [p_y, 1 − p_y]                        binary target / rest split (teacher b^T, student b^S)
//! p̃ = softmax(z with z_y removed)           the distribution among the other classes
//! TCKD = KL(b^T ‖ b^S)                       NCKD = KL(p̃^T ‖ p̃^S)
//! r    = s · (α · TCKD + β · NCKD)           s = T² with T2Scaling::On (mdistiller), else 1
//! ```
//!
//! Everything is computed in log space: `log(1 − p_y)` is the log-sum-exp of the other logits
//! minus the full one, and `p̃` is a log-softmax with the target set to `-inf` — not
//! mdistiller's "subtract 1000 from the target logit", which is inexact for logits spread over
//! more than ~1000 / T. With `C = 2` there is one non-target class, `p̃ = 1` on both sides and
//! NCKD is exactly 0 (no NaN). `C < 2` panics.
//!
//! mdistiller's full objective is `CE + min(epoch / warmup, 1) · DKD`; combine
//! [`cross_entropy`](crate::logits::cross_entropy) with this loss and a
//! [`Schedule`](crate::schedule::Schedule) for the warm-up.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Int, Tensor};

use crate::error::KdError;
use crate::logits::hard::{IGNORE_INDEX, check_labels};
use crate::reduction::{Reduction, RowLoss, RowMask};
use crate::rows::{assert_same_shape, flatten_rows, kl_rows_from_log_probs, row_logsumexp};
use crate::temperature::T2Scaling;
use crate::temperature::{Temperature, temperature_log_softmax};

/// The two parts of DKD and their weighted sum, per row (ignored rows already masked).
#[derive(Debug, Clone)]
pub struct DkdRows {
    /// `s · TCKD` per row.
    pub tckd: RowLoss,
    /// `s · NCKD` per row.
    pub nckd: RowLoss,
    /// `α · tckd + β · nckd` per row.
    pub loss: RowLoss,
}

/// Checks a weight that must be finite and `≥ 0`.
fn check_nonneg(name: &'static str, v: f64) -> Result<f64, KdError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(KdError::OutOfRange {
            name,
            value: v,
            min: 0.0,
            max: f64::INFINITY,
        })
    }
}

/// Decoupled KD per row; see the [module docs](self) for the formula.
///
/// Rows whose label equals `ignore_index` give 0 and leave the `Mean` denominator.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., C]`, `C ≥ 2`
/// - `labels`: the leading shape, integers in `[0, C)` or the ignore index
/// - returns [`DkdRows`].
///
/// # Panics
/// If the shapes differ, `C < 2`, a label is out of range, or `alpha`/`beta` is negative or not
/// finite.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::dkd::dkd;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[3.0, 0.0, -2.0], [0.5, 2.0, 0.1]], &device);
/// let y = Tensor::<1, Int>::from_ints([0, 1], &device);
/// let rows = dkd(s, t, y, 1.0, 8.0, Temperature::new(4.0).unwrap(), T2Scaling::On, Some(-100));
/// assert!(rows.loss.reduce(Reduction::RowMean).into_scalar::<f32>() > 0.0);
/// ```
///
/// # References
/// Zhao, Cui, Song, Qiu, Liang, *Decoupled Knowledge Distillation*, CVPR 2022.
#[allow(clippy::too_many_arguments)]
pub fn dkd<const D: usize, const DL: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    labels: Tensor<DL, Int>,
    alpha: f64,
    beta: f64,
    temperature: Temperature,
    scaling: T2Scaling,
    ignore_index: Option<i64>,
) -> DkdRows {
    let dims = student_logits.dims();
    assert_same_shape(&dims, &teacher_logits.dims());
    crate::logits::hard::assert_label_shape(&labels, &dims);
    for (name, v) in [("alpha", alpha), ("beta", beta)] {
        if let Err(e) = check_nonneg(name, v) {
            panic!("{e}");
        }
    }
    let c = dims[D - 1];
    assert!(
        c >= 2,
        "student_logits: DKD needs at least 2 classes, got shape {dims:?}"
    );
    if let Err(e) = check_labels(&labels, c, ignore_index) {
        panic!("labels: {e}");
    }
    let (s, rows, _) = flatten_rows(student_logits);
    let (t, _, _) = flatten_rows(teacher_logits.detach());
    let r = s.dims()[0];
    let labels = labels.reshape([r]);
    let keep = match ignore_index {
        Some(ii) => labels.clone().not_equal_elem(ii),
        None => labels.clone().not_equal_elem(i64::MIN),
    };
    let safe = labels.mask_fill(keep.clone().bool_not(), 0);
    let target = safe.clone().one_hot::<2>(c).equal_elem(1);
    let safe = safe.reshape([r, 1]);

    let parts = |x: Tensor<2>| {
        let z = x.div_scalar(temperature.get());
        let lse = row_logsumexp(z.clone());
        let log_target = z
            .clone()
            .gather(1, safe.clone())
            .reshape([r])
            .sub(lse.clone());
        let others = z.mask_fill(target.clone(), f32::NEG_INFINITY);
        let log_rest = row_logsumexp(others.clone()).sub(lse);
        let binary = Tensor::cat(
            vec![log_target.reshape([r, 1]), log_rest.reshape([r, 1])],
            1,
        );
        let non_target = temperature_log_softmax(others, Temperature::ONE);
        (binary, non_target)
    };
    let (bs, ns) = parts(s);
    let (bt, nt) = parts(t);
    let f = scaling.factor(temperature);
    let tckd = kl_rows_from_log_probs(bt, bs).mul_scalar(f);
    let nckd = kl_rows_from_log_probs(nt, ns).mul_scalar(f);
    let loss = tckd
        .clone()
        .mul_scalar(alpha)
        .add(nckd.clone().mul_scalar(beta));
    let mask = RowMask::new(keep).reshape_to(&rows);
    let wrap = |v: Tensor<1>| RowLoss::new(v, &rows, c).masked(&mask);
    DkdRows {
        tckd: wrap(tckd),
        nckd: wrap(nckd),
        loss: wrap(loss),
    }
}

/// Configuration of [`DkdLoss`]. Defaults are the paper's CIFAR-100 setting (`α = 1`,
/// `β = 8`, `T = 4`, `T²` on as in mdistiller).
#[derive(Config, Debug)]
pub struct DkdLossConfig {
    /// Weight of TCKD (finite, ≥ 0).
    #[config(default = 1.0)]
    pub alpha: f64,
    /// Weight of NCKD (finite, ≥ 0).
    #[config(default = 8.0)]
    pub beta: f64,
    /// Softmax temperature (finite, > 0).
    #[config(default = 4.0)]
    pub temperature: f64,
    /// Multiply by `T²`.
    #[config(default = true)]
    pub t2_scaling: bool,
    /// Labels equal to this are ignored.
    #[config(default = "Some(IGNORE_INDEX)")]
    pub ignore_index: Option<i64>,
}

impl DkdLossConfig {
    /// Builds the loss, validating every parameter.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`], or [`KdError::OutOfRange`] for `alpha`/`beta`.
    pub fn try_init(&self) -> Result<DkdLoss, KdError> {
        Temperature::new(self.temperature)?;
        check_nonneg("alpha", self.alpha)?;
        check_nonneg("beta", self.beta)?;
        Ok(DkdLoss {
            config: self.clone(),
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> DkdLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`dkd`].
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::dkd::DkdLossConfig;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = DkdLossConfig::new().init();
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0], &device);
/// let v = loss.forward(s.clone(), s, y, Reduction::RowMean).into_scalar::<f32>();
/// assert!(v.abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct DkdLoss {
    /// The validated configuration.
    #[module(skip)]
    pub config: DkdLossConfig,
}

impl DkdLoss {
    /// Per-row parts (see [`dkd`]).
    ///
    /// # Panics
    /// As [`dkd`].
    pub fn forward_no_reduction<const D: usize, const DL: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        labels: Tensor<DL, Int>,
    ) -> DkdRows {
        let c = &self.config;
        let t = Temperature::new(c.temperature).unwrap_or_else(|e| panic!("{e}"));
        let scaling = T2Scaling::from_flag(c.t2_scaling);
        dkd(
            student_logits,
            teacher_logits,
            labels,
            c.alpha,
            c.beta,
            t,
            scaling,
            c.ignore_index,
        )
    }

    /// Reduced `α · TCKD + β · NCKD`, `[1]`.
    ///
    /// # Panics
    /// As [`dkd`].
    pub fn forward<const D: usize, const DL: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        labels: Tensor<DL, Int>,
        reduction: Reduction,
    ) -> Tensor<1> {
        self.forward_no_reduction(student_logits, teacher_logits, labels)
            .loss
            .reduce(reduction)
    }
}
