//! Hinton's soft loss: `T² · KL(p_teacher ‖ p_student)`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::KdError;
use crate::reduction::{Reduction, RowLoss, RowMask, flatten_rows, same_dtype};
use crate::temperature::{Temperature, temperature_log_softmax};

/// Whether the soft loss is multiplied by `T²`.
///
/// Hinton et al. (2015) scale the soft loss by `T²` so that its gradient, which shrinks as
/// `1/T²`, keeps the same magnitude relative to the hard loss when `T` changes. TRL and DistiLLM
/// do not scale; PyTorch recipes usually do. The crate's default is [`T2Scaling::On`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum T2Scaling {
    /// Multiply by `T²` (Hinton).
    #[default]
    On,
    /// No factor.
    Off,
}

impl T2Scaling {
    /// `On` for `true` (the configs' `t2_scaling` field).
    pub(crate) fn from_flag(on: bool) -> Self {
        if on { T2Scaling::On } else { T2Scaling::Off }
    }

    pub(crate) fn factor(self, t: Temperature) -> f64 {
        match self {
            T2Scaling::On => t.squared(),
            T2Scaling::Off => 1.0,
        }
    }
}

/// Checks that student and teacher logits have the same shape, and that the last dimension (the
/// classes of a distribution) is not empty.
pub(crate) fn assert_same_shape(student: &[usize], teacher: &[usize]) {
    assert!(
        student == teacher,
        "teacher_logits: shape {teacher:?} does not match student_logits shape {student:?}"
    );
    assert_classes("student_logits", student);
}

/// Panics unless the last dimension of `dims` (the classes) is at least 1.
pub(crate) fn assert_classes(name: &str, dims: &[usize]) {
    assert!(
        dims.last().is_some_and(|&v| v > 0),
        "{name}: shape {dims:?} has an empty last dimension; a distribution needs at least one class"
    );
}

/// `φ(d)/d² = (e^{−d} − 1 + d)/d²` by its Taylor series, for `|d| ≤ ½` (relative error below
/// 3e-9).
fn phi_over_d2(d: Tensor<2>) -> Tensor<2> {
    const C: [f64; 8] = crate::numerics::PHI_OVER_D2_TAYLOR;
    let mut h = d.zeros_like().add_scalar(C[7]);
    for &c in C[..7].iter().rev() {
        h = h.mul(d.clone()).add_scalar(c);
    }
    h
}

/// Per-row forward KL `Σ_v p_v (log p_v − log q_v)` from log-probabilities `[R, V]`, with the
/// convention `0 · log 0 = 0` (entries with `p_v = 0` contribute 0 and no gradient). For inputs
/// that need not be normalised (a top-k support, DKD's parts); normalised distributions go
/// through [`kl_rows_normalized`].
pub(crate) fn kl_rows_from_log_probs(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    let r = log_p.dims()[0];
    let p = log_p.clone().exp();
    let zero = p.clone().equal_elem(0.0);
    // Mask the log-ratio before multiplying: at p = 0 it may be NaN (-inf - -inf), and
    // 0 · NaN in the backward pass would poison the gradient of `p` (reverse KL, where the
    // student is the first argument).
    let terms = p.mul(log_p.sub(log_q).mask_fill(zero, 0.0));
    terms.sum_dim(1).reshape([r])
}

/// `log(1 + x)`, accurate for tiny `x` on every backend (some compute `log1p` as `log(1 + x)`,
/// which loses all digits of an `x` below the `f32` epsilon): `x − x²/2 + x³/3` for
/// `|x| ≤ 1e-3` (relative error below 1e-9), `log1p` elsewhere.
fn log1p_small<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let small = x.clone().abs().lower_equal_elem(1e-3);
    let xs = x.clone().mask_fill(small.clone().bool_not(), 0.0);
    let series = xs.clone().mul(
        xs.clone()
            .mul_scalar(1.0 / 3.0)
            .sub_scalar(0.5)
            .mul(xs)
            .add_scalar(1.0),
    );
    let large = x.clone().mask_fill(small.clone(), 0.0).log1p();
    large.mask_where(small, series)
}

/// [`kl_rows_from_log_probs`] for rows that are both normalised distributions (each sums to 1,
/// or is empty), computed without cancellation: with `d = log p − log q` (`f32`, carrying the rounding `δ`
/// of the two log-normalisers),
/// ```text
/// D1 = Σ_{p>0} p·d,   D2 = Σ_{p>0} p·φ(d) + Σ_{p=0} q,   φ(d) = e^{−d} − 1 + d ≥ 0
/// KL = D1 + log1p(D2 − D1)
/// ```
/// is exact in exact arithmetic and cancels `δ` to first order: the naive `D1` alone is off by
/// `δ ≈ 1e-7 · log V`, which at high temperatures (`KL ~ 1/T²`) is larger than the KL itself
/// and can make it negative. `φ` uses its Taylor series for `|d| ≤ ½`. (The identity needs
/// `Σ q = 1`: a sub-normalised `q` would be renormalised.)
pub(crate) fn kl_rows_normalized(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    let r = log_p.dims()[0];
    let p = log_p.clone().exp();
    let zero = p.clone().equal_elem(0.0);
    let p_sum = p.clone().detach().sum_dim(1);
    // Mask the log-ratio before multiplying: at p = 0 it may be NaN (-inf - -inf), and
    // 0 · NaN in the backward pass would poison the gradient of `p` (reverse KL, where the
    // student is the first argument).
    let d = log_p.sub(log_q.clone()).mask_fill(zero.clone(), 0.0);
    let d1 = p.clone().mul(d.clone()).sum_dim(1);
    // φ: series where |d| ≤ ½ (its input clamped elsewhere, so the unused branch stays finite in
    // the backward pass), `q − p + p·d` elsewhere, `q` where p = 0.
    let small = d.clone().abs().lower_equal_elem(0.5);
    let d_small = d.clone().mask_fill(small.clone().bool_not(), 0.0);
    let series = p
        .clone()
        .mul(d_small.clone().square().mul(phi_over_d2(d_small)));
    let q = log_q.exp();
    let direct = q.clone().sub(p.clone()).add(p.mul(d));
    let terms = direct.mask_where(small, series).mask_where(zero, q);
    let d2 = terms.sum_dim(1);
    // Where D1 is not finite (a student -inf under teacher mass: +inf; NaN logits) it is the
    // answer; the correction would turn inf − inf into NaN.
    let finite = d1.clone().is_finite();
    let d1_safe = d1.clone().mask_fill(finite.clone().bool_not(), 0.0);
    let d2_safe = d2.mask_fill(finite.clone().bool_not(), 0.0);
    let corr = log1p_small(d2_safe.sub(d1_safe.clone()));
    let kl = d1_safe.clone().add(corr.clone());
    // Rounding may leave a KL of 0 slightly negative: lift the value (not the gradient) to 0
    // within 4 ulp of the two parts; anything more negative is kept (it would be a bug).
    let tol = d1_safe
        .abs()
        .add(corr.abs())
        .mul_scalar(4.0 * f64::from(f32::EPSILON));
    let lift = kl
        .clone()
        .detach()
        .neg()
        .clamp_min(0.0)
        .mask_fill(kl.clone().detach().add(tol).lower_elem(0.0), 0.0);
    let kl = kl.add(lift.detach());
    // An empty first distribution (an all -inf row) has no terms: 0 with a zero gradient.
    let empty = p_sum.equal_elem(0.0);
    kl.mask_where(finite.bool_not(), d1)
        .mask_fill(empty, 0.0)
        .reshape([r])
}

/// Soft distillation loss per row: `r = s · Σ_v p_v (log p_v − log q_v)`, the forward
/// `KL(p_teacher ‖ p_student)` with `p = softmax(teacher/T)`, `q = softmax(student/T)` and
/// `s = T²` ([`T2Scaling::On`]) or `1`.
///
/// ```text
/// r_i = s · Σ_v p_iv · (log p_iv − log q_iv)          ∂r_i/∂student_iv = (s / T) · (q_iv − p_iv)
/// ```
///
/// The teacher is detached: it never receives a gradient. Entries where the teacher is `-inf`
/// (probability 0) contribute 0, also when the student is `-inf` there too (a padded
/// vocabulary). A student `-inf` where the teacher has mass gives `+inf`, as the math says.
///
/// # Shapes
/// - `student_logits`, `teacher_logits`: `[..., V]` (`[N, C]` or `[B, S, V]`)
/// - returns a [`RowLoss`] of `R = Π leading dims` rows; reduce it with
///   [`RowLoss::reduce`], after [`RowLoss::masked`] for padding.
///
/// # Panics
/// If the two shapes differ.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[1.0, 0.0, -1.0]], &device);
/// let teacher = Tensor::<2>::from_floats([[2.0, 0.5, -3.0]], &device);
/// let t = Temperature::new(2.0).unwrap();
/// let loss = soft_kl(student, teacher, t, T2Scaling::On).reduce(Reduction::Mean);
/// assert!(loss.into_scalar::<f32>() > 0.0);
/// ```
///
/// # References
/// Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network*, 2015.
pub fn soft_kl<const D: usize>(
    student_logits: Tensor<D>,
    teacher_logits: Tensor<D>,
    temperature: Temperature,
    scaling: T2Scaling,
) -> RowLoss {
    assert_same_shape(&student_logits.dims(), &teacher_logits.dims());
    let (student_logits, teacher_logits) = same_dtype(student_logits, teacher_logits);
    let (s, rows, v) = flatten_rows(student_logits);
    let (t, _, _) = flatten_rows(teacher_logits.detach());
    let f = scaling.factor(temperature);
    RowLoss::from_rows(vec![s, t], &rows, v, move |x| {
        let [s, t] = <[Tensor<2>; 2]>::try_from(x).expect("two inputs");
        let log_q = temperature_log_softmax(s, temperature);
        let log_p = temperature_log_softmax(t, temperature);
        let kl = kl_rows_normalized(log_p, log_q);
        if f == 1.0 { kl } else { kl.mul_scalar(f) }
    })
}

/// Configuration of [`SoftKlLoss`].
#[derive(Config, Debug)]
pub struct SoftKlLossConfig {
    /// Softmax temperature `T` (finite, > 0).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Multiply by `T²` (Hinton's convention).
    #[config(default = true)]
    pub t2_scaling: bool,
}

impl SoftKlLossConfig {
    /// Builds the loss, validating the temperature.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`] for a NaN, infinite or non-positive temperature.
    pub fn try_init(&self) -> Result<SoftKlLoss, KdError> {
        Temperature::new(self.temperature)?;
        Ok(SoftKlLoss {
            temperature: self.temperature,
            t2_scaling: self.t2_scaling,
        })
    }

    /// Builds the loss.
    ///
    /// # Panics
    /// On an invalid temperature (see [`try_init`](Self::try_init)).
    pub fn init(&self) -> SoftKlLoss {
        self.try_init().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Module form of [`soft_kl`]: `T² · KL(p_teacher ‖ p_student)`.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::prelude::*;
///
/// let device = Device::flex();
/// let loss = SoftKlLossConfig::new().with_temperature(4.0).init();
/// let s = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let t = Tensor::<2>::from_floats([[0.2, 0.1, 0.0]], &device);
/// let v = loss.forward(s, t, Reduction::Mean).into_scalar::<f32>();
/// assert!(v.abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct SoftKlLoss {
    /// Softmax temperature.
    pub temperature: f64,
    /// Whether the `T²` factor is applied.
    pub t2_scaling: bool,
}

impl SoftKlLoss {
    fn parts(&self) -> (Temperature, T2Scaling) {
        let t = Temperature::new(self.temperature).unwrap_or_else(|e| panic!("{e}"));
        let s = T2Scaling::from_flag(self.t2_scaling);
        (t, s)
    }

    /// Per-row values (see [`soft_kl`]).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn forward_no_reduction<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
    ) -> RowLoss {
        let (t, s) = self.parts();
        soft_kl(student_logits, teacher_logits, t, s)
    }

    /// Reduced loss `[1]`, through the fused kernel where it runs ([`crate::fused`]).
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn forward<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (t, s) = self.parts();
        crate::fused::soft_loss(
            student_logits,
            teacher_logits,
            crate::divergence::Divergence::ForwardKl,
            t,
            s,
            None,
            reduction,
        )
    }

    /// Reduced loss over the rows kept by `mask` (`[B, S]` for `[B, S, V]` logits).
    ///
    /// # Panics
    /// If the shapes differ or the mask does not match the leading dimensions.
    pub fn forward_masked<const D: usize>(
        &self,
        student_logits: Tensor<D>,
        teacher_logits: Tensor<D>,
        mask: &RowMask,
        reduction: Reduction,
    ) -> Tensor<1> {
        let (t, s) = self.parts();
        crate::fused::soft_loss(
            student_logits,
            teacher_logits,
            crate::divergence::Divergence::ForwardKl,
            t,
            s,
            Some(mask),
            reduction,
        )
    }
}
