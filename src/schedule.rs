//! Temperatures and loss weights that change: step schedules, per-sample temperatures and a
//! learnable temperature.
//!
//! * [`Schedule`]: a plain value of the training step (constant, linear, cosine, warm-up), for
//!   a loss weight (`α`, DKD's warm-up) or, through [`TemperatureSchedule`], a temperature.
//! * [`entropy_temperature`]: one temperature per row from the teacher's entropy ("dynamic
//!   temperature"), a `[R]` tensor every divergence accepts as its
//!   [`RowTemperature`](crate::temperature::RowTemperature).
//! * [`LearnableTemperature`]: a module with one parameter, `T = T_min + softplus(θ)`, trained with
//!   the student.
//!
//! ```
//! use kd_losses::schedule::{Schedule, TemperatureSchedule};
//!
//! // Anneal T from 8 to 2 over 1000 steps with a cosine, after 100 warm-up steps at 8.
//! let s = Schedule::warm_up(100, 8.0, Schedule::cosine(8.0, 2.0, 1000));
//! let t = TemperatureSchedule::new(s).unwrap();
//! assert_eq!(t.at(0).get(), 8.0);
//! assert!((t.at(1100).get() - 2.0).abs() < 1e-12);
//! ```

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Tensor};

use crate::error::{KdError, check_positive};
use crate::rows::flatten_rows;
use crate::temperature::{Temperature, temperature_log_softmax};

/// A value as a function of the training step.
///
/// ```text
/// Constant(v):                 v
/// Linear{from, to, steps}:     from + (to − from) · min(step / steps, 1)
/// Cosine{from, to, steps}:     to + (from − to) · ½ (1 + cos(π · min(step / steps, 1)))
/// WarmUp{steps, start, then}:  start + (then(0) − start) · step / steps   for step < steps,
///                              then(step − steps)                          afterwards
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A constant.
    Constant(f64),
    /// Linear from `from` to `to` over `steps` steps, then `to`.
    Linear {
        /// Value at step 0.
        from: f64,
        /// Value from step `steps` on.
        to: f64,
        /// Length of the ramp (0: `to` at once).
        steps: u64,
    },
    /// Cosine annealing from `from` to `to` over `steps` steps, then `to`.
    Cosine {
        /// Value at step 0.
        from: f64,
        /// Value from step `steps` on.
        to: f64,
        /// Length of the ramp (0: `to` at once).
        steps: u64,
    },
    /// A linear warm-up from `start` to the start of `then`, after which `then` runs (shifted by
    /// `steps`).
    WarmUp {
        /// Warm-up length.
        steps: u64,
        /// Value at step 0.
        start: f64,
        /// The schedule after the warm-up.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// A constant.
    pub fn constant(v: f64) -> Self {
        Schedule::Constant(v)
    }

    /// Linear from `from` to `to` over `steps`.
    pub fn linear(from: f64, to: f64, steps: u64) -> Self {
        Schedule::Linear { from, to, steps }
    }

    /// Cosine from `from` to `to` over `steps`.
    pub fn cosine(from: f64, to: f64, steps: u64) -> Self {
        Schedule::Cosine { from, to, steps }
    }

    /// A linear warm-up of `steps` from `start` into `then`.
    ///
    /// ```
    /// use kd_losses::schedule::Schedule;
    /// // DKD's weight warm-up: 0 → 1 over 20 epochs, then 1.
    /// let w = Schedule::warm_up(20, 0.0, Schedule::constant(1.0));
    /// assert_eq!(w.value(5), 0.25);
    /// assert_eq!(w.value(100), 1.0);
    /// ```
    pub fn warm_up(steps: u64, start: f64, then: Schedule) -> Self {
        Schedule::WarmUp {
            steps,
            start,
            then: Box::new(then),
        }
    }

    /// The value at `step`.
    pub fn value(&self, step: u64) -> f64 {
        fn frac(step: u64, steps: u64) -> f64 {
            if steps == 0 {
                1.0
            } else {
                (step as f64 / steps as f64).min(1.0)
            }
        }
        match self {
            Schedule::Constant(v) => *v,
            Schedule::Linear { from, to, steps } => from + (to - from) * frac(step, *steps),
            Schedule::Cosine { from, to, steps } => {
                let c = 0.5 * (1.0 + (std::f64::consts::PI * frac(step, *steps)).cos());
                to + (from - to) * c
            }
            Schedule::WarmUp { steps, start, then } => {
                if step < *steps {
                    start + (then.value(0) - start) * (step as f64 / *steps as f64)
                } else {
                    then.value(step - steps)
                }
            }
        }
    }

    /// The knots (values at the ends of every piece): the schedule lies between its smallest and
    /// largest knot.
    fn knots(&self, out: &mut Vec<f64>) {
        match self {
            Schedule::Constant(v) => out.push(*v),
            Schedule::Linear { from, to, .. } | Schedule::Cosine { from, to, .. } => {
                out.push(*from);
                out.push(*to);
            }
            Schedule::WarmUp { start, then, .. } => {
                out.push(*start);
                then.knots(out);
            }
        }
    }

    /// Checks that every value is finite (for a loss weight).
    ///
    /// # Errors
    /// [`KdError::OutOfRange`] (`"schedule"`) naming the first non-finite knot.
    pub fn validate(&self) -> Result<(), KdError> {
        let mut k = Vec::new();
        self.knots(&mut k);
        for v in k {
            if !v.is_finite() {
                return Err(KdError::OutOfRange {
                    name: "schedule",
                    value: v,
                    min: f64::MIN,
                    max: f64::MAX,
                });
            }
        }
        Ok(())
    }
}

/// A [`Schedule`] whose every value is a valid temperature.
#[derive(Debug, Clone, PartialEq)]
pub struct TemperatureSchedule(Schedule);

impl TemperatureSchedule {
    /// Validates `schedule`: every knot finite and `> 0`, so every value is.
    ///
    /// # Errors
    /// [`KdError::InvalidTemperature`] naming the first bad knot.
    pub fn new(schedule: Schedule) -> Result<Self, KdError> {
        let mut k = Vec::new();
        schedule.knots(&mut k);
        for v in k {
            Temperature::new(v)?;
        }
        Ok(TemperatureSchedule(schedule))
    }

    /// The temperature at `step`.
    pub fn at(&self, step: u64) -> Temperature {
        // Every value lies between two positive knots.
        Temperature::new(self.0.value(step)).expect("a value between positive knots")
    }

    /// The underlying schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.0
    }
}

/// One temperature per row from the teacher's normalised entropy (detached):
///
/// ```text
/// h_i = H(softmax(teacher_i)) / log V ∈ [0, 1]
/// T_i = t_confident + (t_uncertain − t_confident) · h_i
/// ```
///
/// A confident (peaked) teacher row gets `t_confident`, a uniform one `t_uncertain`; choose
/// `t_uncertain < t_confident` to sharpen uncertain rows instead. Pass the result as the
/// temperature of any divergence (`[R]`, `R` = number of rows).
///
/// # Shapes
/// - `teacher_logits`: `[..., V]`, `V ≥ 2`
/// - returns `[R]`.
///
/// # Errors
/// [`KdError::InvalidTemperature`] when either end is not a valid temperature.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::schedule::entropy_temperature;
///
/// let device = Device::flex();
/// let t = Tensor::<2>::from_floats([[0.0, 0.0], [100.0, -100.0]], &device);
/// let temps = entropy_temperature(t, 1.0, 4.0).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// assert!((temps[0] - 4.0).abs() < 1e-5 && (temps[1] - 1.0).abs() < 1e-5);
/// ```
pub fn entropy_temperature<const D: usize>(
    teacher_logits: Tensor<D>,
    t_confident: f64,
    t_uncertain: f64,
) -> Result<Tensor<1>, KdError> {
    Temperature::new(t_confident)?;
    Temperature::new(t_uncertain)?;
    let (t, _, v) = flatten_rows(teacher_logits.detach());
    let r = t.dims()[0];
    let lp = temperature_log_softmax(t, Temperature::ONE);
    let p = lp.clone().exp();
    let zero = p.clone().equal_elem(0.0);
    let h = p.mul(lp.mask_fill(zero, 0.0)).sum_dim(1).reshape([r]).neg();
    let norm = if v > 1 { (v as f64).ln() } else { 1.0 };
    let h = h.div_scalar(norm).clamp(0.0, 1.0);
    Ok(h.mul_scalar(t_uncertain - t_confident)
        .add_scalar(t_confident))
}

/// Configuration of [`LearnableTemperature`].
#[derive(Config, Debug)]
pub struct LearnableTemperatureConfig {
    /// Initial temperature (finite, `> min`).
    #[config(default = 4.0)]
    pub initial: f64,
    /// Lower bound `T_min` (finite, > 0): `T = T_min + softplus(θ)` never goes below it.
    #[config(default = 0.05)]
    pub min: f64,
}

impl LearnableTemperatureConfig {
    /// Builds the module on `device`.
    ///
    /// # Errors
    /// [`KdError::NotPositive`] when `min` is not finite and > 0, or `initial − min` is not.
    pub fn try_init(&self, device: &Device) -> Result<LearnableTemperature, KdError> {
        check_positive("min", self.min)?;
        let gap = check_positive("initial - min", self.initial - self.min)?;
        // softplus⁻¹(g) = log(exp(g) − 1) = g + log(1 − exp(−g)).
        let raw = gap + (-(-gap).exp_m1()).ln();
        Ok(LearnableTemperature {
            raw: Param::from_tensor(Tensor::<1>::from_floats([raw as f32], device)),
            min: self.min,
        })
    }

    /// Builds the module.
    ///
    /// # Panics
    /// On an invalid parameter (see [`try_init`](Self::try_init)).
    pub fn init(&self, device: &Device) -> LearnableTemperature {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A temperature trained with the student: `T = T_min + softplus(θ)`, always `> T_min > 0`.
///
/// [`temperature`](Self::temperature) is a `[1]` tensor carrying θ's gradient; pass it to any
/// divergence as its temperature.
///
/// Minimising a divergence over `T` alone drives `T` up (both sides flatten towards uniform,
/// and their divergence to 0). Curriculum temperature KD (Li et al., AAAI 2023) therefore
/// *maximises* over `T`: flip the sign of the temperature's gradient, or give it its own
/// objective.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::divergence::divergence;
/// use kd_losses::divergence::Divergence;
/// use kd_losses::schedule::LearnableTemperatureConfig;
/// use kd_losses::prelude::*;
///
/// let device = Device::flex().autodiff();
/// let temp = LearnableTemperatureConfig::new().with_initial(2.0).init(&device);
/// assert!((temp.value() - 2.0).abs() < 1e-5);
/// let s = Tensor::<2>::from_floats([[1.0, 0.0]], &device).require_grad();
/// let t = Tensor::<2>::from_floats([[0.0, 1.0]], &device);
/// let loss = divergence(s, t, Divergence::ForwardKl, temp.temperature(), T2Scaling::On)
///     .reduce(Reduction::RowMean);
/// let grads = loss.backward();
/// assert!(temp.raw.val().grad(&grads).is_some());
/// ```
#[derive(Module, Debug)]
pub struct LearnableTemperature {
    /// The unconstrained parameter θ, `[1]`.
    pub raw: Param<Tensor<1>>,
    /// The lower bound `T_min`.
    pub min: f64,
}

impl LearnableTemperature {
    /// `T = T_min + softplus(θ)`, `[1]`, with θ's gradient.
    pub fn temperature(&self) -> Tensor<1> {
        softplus(self.raw.val(), 1.0).add_scalar(self.min)
    }

    /// The current temperature as a number (reads it back to the host).
    pub fn value(&self) -> f64 {
        self.temperature().into_scalar::<f32>() as f64
    }
}
