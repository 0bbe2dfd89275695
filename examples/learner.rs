//! Distillation inside Burn's training loop: `burn::train`'s `Learner` trains a student from a
//! frozen teacher, and the soft, hard and feature terms are Burn metrics.
//!
//! UCI digits (8×8 images, 10 classes), as in `examples/flex/digits.rs`:
//!
//! 1. the teacher MLP `64→256→256→10` is trained with the `Learner` (Burn's
//!    `ClassificationOutput`, loss and accuracy metrics);
//! 2. the student MLP `64→12→10` is trained with the `Learner` on the same images and labels: its
//!    step computes `α·T²·KL(teacher ‖ student) + (1 − α)·CE + β·MSE(h_s W + b, h_t)` with
//!    `kd_losses::DistillationLoss` and `kd_losses::HiddenLoss` (a learnable `12 → 256`
//!    projection of the student's hidden layer onto the teacher's), and returns a
//!    `kd_losses::train::KdClassificationOutput`; `LossTermMetric`s report each term.
//!
//! `DistillationLoss` drops rows labelled `-100` from *both* terms (sequence padding). To distill
//! on unlabelled inputs as well (`examples/flex/digits.rs`, "5% labels"), reduce `soft_kl` over every
//! row and `cross_entropy` over the labelled ones, and put both in a `LossTerms`.
//!
//! The teacher is a field of the student's training module, frozen with `Module::no_grad`: it
//! gets no gradient, so the optimizer leaves it as it is, and it is saved in the checkpoints with
//! the student.
//!
//! ```text
//! cargo run --release --all-features --example learner            # full run: Burn's terminal dashboard on a terminal
//! cargo run --all-features --example learner -- --quick           # CI smoke run: 1 + 2 short epochs, no dashboard
//! ```
//!
//! On a terminal the full run shows Burn's dashboard (press `q` to stop an epoch early); with
//! `--quick`, or when stdout is not a terminal, one line per epoch. Artifacts (metric logs,
//! checkpoints, `experiment.log`) go to `$TMPDIR/kd-losses-learner/`. The last lines print each
//! metric per epoch, read back from those logs with Burn's `LearnerSummary`, and a
//! machine-readable line `teacher_acc=… student_acc=…` (validation accuracy, last epoch).
//!
//! Data: E. Alpaydin, C. Kaynak, UCI ML Repository, CC BY 4.0 (see data/README.md).

mod common;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{AccuracyMetric, LossMetric, MetricDefinition};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, LearnerSummary, SupervisedTraining, TrainOutput,
    TrainStep,
};
use common::{CLASSES, Digit, FEATURES, Mlp, load_digits, split};
use kd_losses::HiddenLossConfig;
use kd_losses::prelude::*;
use kd_losses::train::{KdClassificationOutput, LossTermMetric};

// ------------------------------------------------------------------------------------ data

/// A batch of images `[B, 64]` and labels `[B]`.
#[derive(Clone, Debug)]
struct DigitBatch {
    images: Tensor<2>,
    labels: Tensor<1, Int>,
}

#[derive(Clone, Default)]
struct DigitBatcher;

impl Batcher<Digit, DigitBatch> for DigitBatcher {
    fn batch(&self, items: Vec<Digit>, device: &Device) -> DigitBatch {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|d| d.pixels.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|d| d.label).collect();
        DigitBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, FEATURES]), device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

fn loader(
    digits: Vec<Digit>,
    batch: usize,
    shuffle: Option<u64>,
) -> std::sync::Arc<dyn DataLoader<DigitBatch>> {
    let builder = DataLoaderBuilder::new(DigitBatcher).batch_size(batch);
    let builder = match shuffle {
        Some(seed) => builder.shuffle(seed),
        None => builder,
    };
    builder.build(InMemDataset::new(digits))
}

// ------------------------------------------------------------------------- teacher: plain CE

/// The teacher's training module: Burn's own classification step.
#[derive(Module, Debug)]
struct Classifier {
    net: Mlp,
}

impl Classifier {
    fn forward(&self, batch: DigitBatch) -> ClassificationOutput {
        let logits = self.net.forward(batch.images);
        let loss = cross_entropy(
            logits.clone(),
            batch.labels.clone(),
            &CrossEntropyOptions::default(),
        )
        .reduce(Reduction::RowMean);
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for Classifier {
    type Input = DigitBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: DigitBatch) -> TrainOutput<ClassificationOutput> {
        let out = self.forward(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Classifier {
    type Input = DigitBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: DigitBatch) -> ClassificationOutput {
        self.forward(batch)
    }
}

// ---------------------------------------------------------------- student: distillation step

/// The student's training module: the student, the frozen teacher and the losses. The hidden
/// loss owns the learnable projection, which trains with the student.
#[derive(Module, Debug)]
struct Distillation {
    student: Mlp,
    teacher: Mlp,
    kd: DistillationLoss,
    feature: HiddenLoss,
    feature_weight: f64,
}

impl Distillation {
    fn forward(&self, batch: DigitBatch) -> KdClassificationOutput {
        let (s_logits, s_hidden) = self.student.forward_with_hidden(batch.images.clone());
        let (t_logits, t_hidden) = self.teacher.forward_with_hidden(batch.images);
        // "soft" (T²·KL) and "hard" (CE), weighted α and 1 − α.
        let terms = self
            .kd
            .forward(
                s_logits.clone(),
                t_logits,
                batch.labels.clone(),
                Reduction::RowMean,
            )
            .into_terms();
        let feature = self
            .feature
            .forward(s_hidden, t_hidden, Reduction::ElementMean);
        let terms = terms
            .with("feature", self.feature_weight, feature)
            .expect("a finite weight");
        KdClassificationOutput::new(terms, s_logits, batch.labels)
    }
}

impl TrainStep for Distillation {
    type Input = DigitBatch;
    type Output = KdClassificationOutput;

    fn step(&self, batch: DigitBatch) -> TrainOutput<KdClassificationOutput> {
        let out = self.forward(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Distillation {
    type Input = DigitBatch;
    type Output = KdClassificationOutput;

    fn step(&self, batch: DigitBatch) -> KdClassificationOutput {
        self.forward(batch)
    }
}

// ---------------------------------------------------------------------------------- renderer

/// One line per epoch on stdout: Burn's `CliMetricsRenderer` prints a line per batch, too many
/// for a CI log; the metric values are printed from Burn's logs after training.
struct EpochLines {
    label: String,
    epochs: usize,
    start: Instant,
}

impl EpochLines {
    fn new() -> Self {
        EpochLines {
            label: String::new(),
            epochs: 0,
            start: Instant::now(),
        }
    }
}

impl MetricsRendererTraining for EpochLines {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl MetricsRendererEvaluation for EpochLines {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for EpochLines {
    fn start(&mut self, epochs: usize, _from: usize, _items: Option<usize>, label: Option<&str>) {
        self.label = label.unwrap_or("training").to_string();
        self.epochs = epochs;
        self.start = Instant::now();
    }
    fn update_epoch(&mut self, epoch: usize) {
        println!(
            "  {}: epoch {}/{} done ({:.1}s)",
            self.label,
            epoch,
            self.epochs,
            self.start.elapsed().as_secs_f64()
        );
    }
    fn start_split(&mut self, _split: &str, _items: usize) {}
    fn update_split(&mut self, _items: usize) {}
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for EpochLines {
    fn start_global_progress(&mut self, _tests: usize) {}
    fn start_test(&mut self, _name: &str, _items: usize) {}
    fn update_test_progress(&mut self, _items: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for EpochLines {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

// -------------------------------------------------------------------------------------- main

struct Run {
    teacher_epochs: usize,
    student_epochs: usize,
    batch: usize,
    dashboard: bool,
}

/// Burn's dashboard on a terminal, one line per epoch otherwise.
fn with_renderer<M: burn::train::LearnerModel>(
    training: SupervisedTraining<M>,
    dashboard: bool,
) -> SupervisedTraining<M> {
    if dashboard {
        training
    } else {
        training.renderer(Box::new(EpochLines::new()))
    }
}

/// Prints each metric's per-epoch means (at most 6 epochs, always the last) from the artifacts
/// in `dir`, read back with Burn's `LearnerSummary`; returns the last validation value of `key`.
fn print_summary(dir: &Path, metrics: &[&str], key: &str) -> f64 {
    let summary = LearnerSummary::new(dir, metrics).expect("Burn's metric logs");
    let epochs = summary.epochs;
    let shown: Vec<usize> = (0..6.min(epochs))
        .map(|i| epochs - (6.min(epochs) - 1 - i) * (epochs / 6).max(1))
        .collect();
    let header: Vec<String> = shown
        .iter()
        .map(|e| format!("{:>9}", format!("epoch {e}")))
        .collect();
    println!("  {:<5} {:<16} {}", "split", "metric", header.join(" "));
    let mut last = f64::NAN;
    for (split, list) in [
        ("train", &summary.metrics.train),
        ("valid", &summary.metrics.valid),
    ] {
        for m in list.iter() {
            let values: Vec<String> = shown
                .iter()
                .map(|&e| {
                    m.entries
                        .iter()
                        .find(|x| x.step == e)
                        .map_or(format!("{:>9}", "-"), |x| format!("{:>9.4}", x.value))
                })
                .collect();
            println!("  {split:<5} {:<16} {}", m.name, values.join(" "));
            if split == "valid" && m.name == key {
                last = m.entries.last().map_or(f64::NAN, |e| e.value);
            }
        }
    }
    last
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let run = Run {
        teacher_epochs: if quick { 3 } else { 40 },
        student_epochs: if quick { 3 } else { 30 },
        batch: 64,
        dashboard: !quick && std::io::stdout().is_terminal(),
    };
    let device = Device::flex().autodiff();
    let artifacts: PathBuf = std::env::temp_dir().join("kd-losses-learner");
    // Fresh logs: Burn's summary reads every epoch found in the folder.
    let _ = std::fs::remove_dir_all(&artifacts);
    let start = Instant::now();

    let (train_set, test_set) = split(load_digits(), 500);
    let train_digits = train_set.digits();
    let test_digits = test_set.digits();
    println!(
        "UCI digits: {} train / {} test (validation) images",
        train_digits.len(),
        test_digits.len(),
    );

    // 1. The teacher, trained with Burn's classification output.
    device.seed(1000);
    let teacher_dir = artifacts.join("teacher");
    let teacher = Classifier {
        net: Mlp::new(&[FEATURES, 256, 256, CLASSES], &device),
    };
    let training = SupervisedTraining::<Classifier>::new(
        &teacher_dir,
        loader(train_digits.clone(), run.batch, Some(1)),
        loader(test_digits.clone(), 500, None),
    )
    .metrics((LossMetric::new(), AccuracyMetric::new()))
    .num_epochs(run.teacher_epochs)
    .label("teacher")
    .with_default_checkpointers();
    let result = with_renderer(training, run.dashboard).launch(Learner::new(
        teacher,
        AdamConfig::new().init(),
        2e-3,
    ));
    println!(
        "teacher [64, 256, 256, 10]: {} params",
        result.model.net.num_params()
    );
    let teacher_acc = print_summary(&teacher_dir, &["Loss", "Accuracy"], "Accuracy");

    // 2. The student, distilled from the frozen teacher.
    device.seed(1);
    let distillation = Distillation {
        student: Mlp::new(&[FEATURES, 12, CLASSES], &device),
        // `valid()` left the trained teacher without autodiff: bring it back on the training
        // device, frozen.
        teacher: result.model.net.train().no_grad(),
        kd: DistillationLossConfig::new()
            .with_temperature(4.0)
            .with_alpha(0.8)
            .init(),
        feature: HiddenLossConfig::new(HiddenProjectionConfig::new(12, 256)).init(&device),
        feature_weight: 0.5,
    };
    let student_dir = artifacts.join("student");
    let training = SupervisedTraining::<Distillation>::new(
        &student_dir,
        loader(train_digits, run.batch, Some(2)),
        loader(test_digits, 500, None),
    )
    // The total, each term and the accuracy, on both splits.
    .metrics((
        LossMetric::new(),
        LossTermMetric::new("soft"),
        LossTermMetric::new("hard"),
        LossTermMetric::new("feature"),
        AccuracyMetric::new(),
    ))
    .num_epochs(run.student_epochs)
    .label("student")
    .with_default_checkpointers();
    let result = with_renderer(training, run.dashboard).launch(Learner::new(
        distillation,
        AdamConfig::new().init(),
        5e-3,
    ));
    if let Some(error) = &result.error {
        panic!("training failed: {error}");
    }
    println!(
        "student [64, 12, 10]: {} params (+ {} in the 12→256 projection)",
        result.model.student.num_params(),
        result.model.feature.num_params()
    );
    let student_acc = print_summary(
        &student_dir,
        &[
            "Loss",
            "Loss (soft)",
            "Loss (hard)",
            "Loss (feature)",
            "Accuracy",
        ],
        "Accuracy",
    );
    println!(
        "artifacts (metric logs, checkpoints): {}",
        artifacts.display()
    );
    // Burn's accuracy is in percent.
    println!(
        "teacher_acc={:.4} student_acc={:.4}",
        teacher_acc / 100.0,
        student_acc / 100.0
    );
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
}
