//! Distillation inside Burn's training loop (`burn::train`, feature `train`).
//!
//! Burn's [`Learner`](burn::train::Learner) trains any module that implements
//! [`TrainStep`](burn::train::TrainStep) and [`InferenceStep`](burn::train::InferenceStep), and
//! reports the metrics its step output can be adapted to. Two small pieces make a distillation
//! step report each loss term as a Burn metric:
//!
//! * [`KdClassificationOutput`]: what a classification distillation step returns — the total loss
//!   that was back-propagated, the student's logits, the labels, and every named term of a
//!   [`LossTerms`]. It adapts to Burn's [`LossMetric`](burn::train::metric::LossMetric) (the total),
//!   [`AccuracyMetric`](burn::train::metric::AccuracyMetric) and
//!   [`TopKAccuracyMetric`](burn::train::metric::TopKAccuracyMetric), like Burn's own
//!   [`ClassificationOutput`](burn::train::ClassificationOutput).
//! * [`LossTermMetric`]: a numeric metric that reports one term (unweighted, averaged over the
//!   epoch's items), so that `soft`, `hard` and a feature term appear on Burn's dashboard, in its
//!   logs and in its training summary.
//!
//! The teacher, the student and the loss stay in your own module: keep the teacher as a field
//! frozen with [`Module::no_grad`](burn::module::Module::no_grad) (the optimizer then leaves it
//! unchanged), and build the terms with the crate's losses. `examples/learner.rs` is a complete
//! program.
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use burn::train::metric::{Adaptor, LossInput};
//! use kd_losses::prelude::*;
//! use kd_losses::train::{KdClassificationOutput, LossTermMetric};
//!
//! let device = Device::flex().autodiff();
//! let student = Tensor::<2>::from_floats([[0.5, 0.1, -0.3], [0.0, 1.0, 0.0]], &device).require_grad();
//! let teacher = Tensor::<2>::from_floats([[2.0, 0.3, -1.0], [0.1, 3.0, 0.2]], &device);
//! let labels = Tensor::<1, Int>::from_ints([0, 1], &device);
//!
//! let kd = DistillationLossConfig::new().with_temperature(4.0).with_alpha(0.8).init();
//! let terms = kd.forward(student.clone(), teacher, labels.clone(), Reduction::RowMean).into_terms();
//! let out = KdClassificationOutput::new(terms, student.clone(), labels);
//! let grads = out.loss.backward(); // what `TrainStep::step` hands to `TrainOutput::new`
//! assert!(student.grad(&grads).is_some());
//!
//! // In the Learner: `.metrics((LossMetric::new(), LossTermMetric::new("soft"), LossTermMetric::new("hard")))`.
//! let _total: LossInput = out.adapt();
//! assert_eq!(out.term_names(), vec!["soft", "hard"]);
//! assert_eq!(LossTermMetric::new("soft").term(), "soft");
//! ```

use std::sync::Arc;

use burn::tensor::{ExecutionError, Int, Tensor, TensorReadError};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    AccuracyInput, Adaptor, ItemLazy, LossInput, Metric, MetricAttributes, MetricMetadata,
    MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry, TopKAccuracyInput,
};

use crate::combine::LossTerms;

/// The output of a classification distillation step: total loss, student logits, labels and
/// each loss term, adapted to Burn's metrics.
///
/// # Shapes
/// - `loss`: `[1]`, the weighted total `Σ_k w_k · L_k`
/// - `output`: `[B, C]`, the student's logits
/// - `targets`: `[B]`, the class labels (`-100` rows count as wrong in Burn's accuracy unless
///   you configure its pad token)
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use burn::train::metric::{AccuracyInput, Adaptor};
/// use kd_losses::combine::LossTerms;
/// use kd_losses::train::KdClassificationOutput;
///
/// let device = Device::flex();
/// let terms = LossTerms::new()
///     .with("soft", 0.5, Tensor::<1>::from_floats([2.0], &device)).unwrap()
///     .with("feature", 0.1, Tensor::<1>::from_floats([4.0], &device)).unwrap();
/// let logits = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
/// let labels = Tensor::<1, Int>::from_ints([0], &device);
/// let out = KdClassificationOutput::new(terms, logits, labels);
/// assert!((out.loss.clone().into_scalar::<f32>() - 1.4).abs() < 1e-6); // 0.5·2 + 0.1·4
/// let _accuracy: AccuracyInput = out.adapt();
/// ```
#[derive(Debug, Clone)]
pub struct KdClassificationOutput {
    /// The weighted total that the step back-propagates, `[1]`.
    pub loss: Tensor<1>,
    /// The student's logits, `[B, C]`.
    pub output: Tensor<2>,
    /// The class labels, `[B]`.
    pub targets: Tensor<1, Int>,
    /// The terms of the total, in order.
    pub terms: LossTerms,
}

impl KdClassificationOutput {
    /// Builds the output; `loss` is `terms.total()`.
    ///
    /// # Panics
    /// If `terms` is empty.
    pub fn new(terms: LossTerms, output: Tensor<2>, targets: Tensor<1, Int>) -> Self {
        KdClassificationOutput {
            loss: terms.total(),
            output,
            targets,
            terms,
        }
    }

    /// The terms' names, in order.
    pub fn term_names(&self) -> Vec<&str> {
        self.terms.terms().iter().map(|t| t.name.as_str()).collect()
    }
}

impl ItemLazy for KdClassificationOutput {
    /// Takes every tensor off the autodiff graph (the metrics then hold no tape), without
    /// reading anything back.
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        let terms = self.terms.terms().iter().fold(LossTerms::new(), |acc, t| {
            acc.with(t.name.clone(), t.weight, t.value.clone().without_autodiff())
                .expect("the weight was validated when the term was added")
        });
        Ok(KdClassificationOutput {
            loss: self.loss.without_autodiff(),
            output: self.output.without_autodiff(),
            targets: self.targets.without_autodiff(),
            terms,
        })
    }
}

impl Adaptor<LossInput> for KdClassificationOutput {
    /// The total loss.
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<AccuracyInput> for KdClassificationOutput {
    fn adapt(&self) -> AccuracyInput {
        AccuracyInput::new(self.output.clone(), self.targets.clone())
    }
}

impl Adaptor<TopKAccuracyInput> for KdClassificationOutput {
    fn adapt(&self) -> TopKAccuracyInput {
        TopKAccuracyInput::new(self.output.clone(), self.targets.clone())
    }
}

/// The input of [`LossTermMetric`]: the terms of one step and its batch size.
///
/// [`KdClassificationOutput`] adapts to it; build one yourself for another step output.
///
/// # Example
/// ```
/// use burn::data::dataloader::Progress;
/// use burn::tensor::{Device, Tensor};
/// use burn::train::metric::{Metric, MetricMetadata, Numeric};
/// use kd_losses::combine::LossTerms;
/// use kd_losses::train::{LossTermInput, LossTermMetric};
///
/// let device = Device::flex();
/// let step = |soft: f32, hard: f32| {
///     LossTerms::new()
///         .with("soft", 0.9, Tensor::<1>::from_floats([soft], &device)).unwrap()
///         .with("hard", 0.1, Tensor::<1>::from_floats([hard], &device)).unwrap()
/// };
/// let meta = MetricMetadata { progress: Progress::new(1, 2, None), iteration: Some(0), lr: None };
/// let mut soft = LossTermMetric::new("soft");
/// soft.update(&LossTermInput::new(step(1.0, 5.0), 30), &meta).unwrap();
/// soft.update(&LossTermInput::new(step(2.0, 5.0), 10), &meta).unwrap();
/// soft.compute().unwrap();
/// // Unweighted, averaged over items: (30·1 + 10·2) / 40.
/// assert!((soft.final_value().current() - 1.25).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct LossTermInput {
    terms: LossTerms,
    batch_size: usize,
}

impl LossTermInput {
    /// The terms of a step over `batch_size` items (the weight of this step in the epoch mean).
    pub fn new(terms: LossTerms, batch_size: usize) -> Self {
        LossTermInput { terms, batch_size }
    }
}

impl Adaptor<LossTermInput> for KdClassificationOutput {
    fn adapt(&self) -> LossTermInput {
        LossTermInput::new(self.terms.clone(), self.targets.dims()[0])
    }
}

/// A Burn numeric metric that reports one named term of a [`LossTerms`], unweighted, averaged
/// over items like Burn's `LossMetric`.
///
/// Its name is `"Loss (<term>)"` (also the name of its log file, spaces as `_`). A step output that lacks the term is a programming error and
/// panics with the names it has.
///
/// # Example
/// ```
/// use kd_losses::train::LossTermMetric;
/// use burn::train::metric::Metric;
///
/// let soft = LossTermMetric::new("soft");
/// assert_eq!(soft.name().as_str(), "Loss (soft)");
/// ```
#[derive(Clone)]
pub struct LossTermMetric {
    term: String,
    name: MetricName,
    state: NumericMetricState,
}

impl LossTermMetric {
    /// A metric for the term called `term`.
    pub fn new(term: impl Into<String>) -> Self {
        let term = term.into();
        LossTermMetric {
            name: Arc::new(format!("Loss ({term})")),
            term,
            state: NumericMetricState::default(),
        }
    }

    /// The term it reports.
    pub fn term(&self) -> &str {
        &self.term
    }
}

impl Metric for LossTermMetric {
    type Input = LossTermInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(format!(
            "the unweighted distillation loss term {:?}",
            self.term
        ))
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &LossTermInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let value = item.terms.get(&self.term).unwrap_or_else(|| {
            let names: Vec<&str> = item.terms.terms().iter().map(|t| t.name.as_str()).collect();
            panic!(
                "LossTermMetric: no term {:?} in this step's output (terms: {names:?})",
                self.term
            )
        });
        let value = value.mean().try_into_scalar::<f64>()?;
        self.state.update(value, item.batch_size);
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {
        self.state.reset();
    }
}

impl Numeric for LossTermMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
