//! Distillation on real data: UCI handwritten digits (8×8 images, 10 classes).
//!
//! A teacher MLP is trained on the training labels. The same small student (same initial
//! weights, same number of optimizer steps) is then trained three ways per seed — from labels
//! alone, with Hinton distillation (`α·T²·KL + (1−α)·CE`), and with Hinton distillation plus a
//! hidden-state MSE through a learnable projection `W: 12 → 256` — in two regimes: all training
//! labels, and only 5% of them (the teacher's soft targets still cover every training input,
//! which is where distillation helps most). The table prints test accuracy (mean ± spread over
//! seeds); the last line is machine-readable:
//! `teacher_acc=… student_acc=… kd_student_acc=…` (5%-label regime, means over seeds).
//!
//! It also draws a figure (PNG, path printed at the end): test accuracy during training for the
//! first seed, and the final accuracies with their spread over seeds. Progress bars show on a
//! terminal only; in a log (stderr not a terminal) the example prints its table and nothing else.
//!
//! ```text
//! cargo run --release -p kd-examples --bin digits            # full run
//! cargo run --release -p kd-examples --bin digits -- --quick # CI smoke run
//! ```
//!
//! This example is also the `burn::train` `Learner`-free version of `examples/learner.rs`: a
//! hand-written loop, which keeps the three recipes' step budgets exactly equal.
//!
//! Data: E. Alpaydin, C. Kaynak, UCI ML Repository, CC BY 4.0 (see data/README.md).
//! Font of the figure: DejaVu Sans, embedded (see examples/flex/assets/README.md).

#[path = "../common/mod.rs"]
mod common;
mod stats;
use stats::mean_spread;

use std::io::IsTerminal;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{CLASSES, FEATURES, Mlp, Split, batch_y, load_digits, split};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kd_losses::hidden::{HiddenProjection, HiddenProjectionConfig, hidden_mse};
use kd_losses::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

// -------------------------------------------------------------------------------- training

struct Train {
    steps: usize,
    batch: usize,
    lr: f64,
}

/// What the teacher tells the student, computed once for the whole training set.
struct TeacherTargets {
    logits: Tensor<2>,
    hidden: Tensor<2>,
}

/// How a student learns.
enum Recipe<'a> {
    /// Cross-entropy on the labelled inputs only.
    LabelsOnly,
    /// `α·T²·KL(teacher ‖ student)` on every input + `(1 − α)·CE` on the labelled ones.
    Hinton(&'a TeacherTargets, &'a DistillationLoss),
    /// Hinton plus `β · MSE(h_s W + b, h_t)` through a learnable projection.
    HintonHidden(&'a TeacherTargets, &'a DistillationLoss, f64),
}

/// The student and, for the hidden-state recipe, its projection: one module, one optimizer.
#[derive(Module, Debug)]
struct Student {
    net: Mlp,
    projection: HiddenProjection,
}

/// A progress bar on stderr when it is a terminal, hidden otherwise (CI logs stay clean).
fn progress_bar(total: usize) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template("  {msg:44} [{bar:30}] {pos}/{len} steps, {elapsed}")
            .expect("a valid template")
            .progress_chars("#>-"),
    );
    bar
}

/// Trains a student for a fixed number of optimizer steps (the same budget for every recipe).
/// `labels[i] == -100` marks an unlabelled input. Returns the network and, when `eval` is
/// given, its accuracy on `eval` about 30 times during training.
#[allow(clippy::too_many_arguments)]
fn train(
    mut model: Student,
    data: &Split,
    labels: &[i64],
    recipe: &Recipe,
    cfg: &Train,
    seed: u64,
    device: &Device,
    bar: &ProgressBar,
    eval: Option<&Split>,
) -> (Mlp, Vec<(usize, f64)>) {
    let mut curve = Vec::new();
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(seed);
    // Without a teacher only labelled inputs are useful.
    let pool: Vec<usize> = (0..data.len())
        .filter(|&i| !matches!(recipe, Recipe::LabelsOnly) || labels[i] != IGNORE_INDEX)
        .collect();
    let mut order = pool.clone();
    let mut cursor = order.len();
    for step in 0..cfg.steps {
        if let Some(eval) = eval.filter(|_| step % (cfg.steps / 30).max(1) == 0) {
            curve.push((step, model.net.accuracy(eval, device)));
        }
        let mut idx = Vec::with_capacity(cfg.batch);
        while idx.len() < cfg.batch.min(pool.len()) {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            idx.push(order[cursor]);
            cursor += 1;
        }
        let x = data.batch_x(&idx, device);
        let y = batch_y(labels, &idx, device);
        let (logits, hidden) = model.net.forward_with_hidden(x);
        let hard = cross_entropy(logits.clone(), y, &CrossEntropyOptions::default())
            .reduce(Reduction::RowMean);
        let rows = Tensor::<1, Int>::from_data(
            TensorData::new(
                idx.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [idx.len()],
            ),
            device,
        );
        let soft_terms = |t: &TeacherTargets, kd: &DistillationLoss| {
            let temp = Temperature::new(kd.temperature).unwrap();
            let soft = soft_kl(
                logits.clone(),
                t.logits.clone().select(0, rows.clone()),
                temp,
                T2Scaling::On,
            )
            .reduce(Reduction::RowMean);
            LossTerms::new()
                .with("soft", kd.alpha, soft)
                .and_then(|l| l.with("hard", 1.0 - kd.alpha, hard.clone()))
                .unwrap()
        };
        let loss = match recipe {
            Recipe::LabelsOnly => hard,
            Recipe::Hinton(t, kd) => soft_terms(t, kd).total(),
            Recipe::HintonHidden(t, kd, beta) => {
                let projected = model.projection.forward(hidden);
                let h = hidden_mse(projected, t.hidden.clone().select(0, rows.clone()))
                    .reduce(Reduction::ElementMean);
                soft_terms(t, kd).with("hidden", *beta, h).unwrap().total()
            }
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(cfg.lr, model, grads);
        bar.inc(1);
    }
    if let Some(eval) = eval {
        curve.push((cfg.steps, model.net.accuracy(eval, device)));
    }
    (model.net, curve)
}

/// Trains the teacher with cross-entropy on every training label.
fn train_teacher(model: Mlp, data: &Split, cfg: &Train, device: &Device) -> Mlp {
    let student = Student {
        net: model,
        projection: HiddenProjection::identity(),
    };
    let bar = progress_bar(cfg.steps);
    bar.set_message("teacher");
    let (teacher, _) = train(
        student,
        data,
        &data.y,
        &Recipe::LabelsOnly,
        cfg,
        1000,
        device,
        &bar,
        None,
    );
    bar.finish_and_clear();
    teacher
}

fn time_forward(model: &Mlp, s: &Split, device: &Device) -> f64 {
    let idx: Vec<usize> = (0..s.len().min(256)).collect();
    let x = s.batch_x(&idx, device);
    let _ = model.forward(x.clone()).into_data();
    let reps = 20;
    let start = Instant::now();
    for _ in 0..reps {
        let _ = model.forward(x.clone()).into_data();
    }
    start.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seeds: Vec<u64> = if quick { vec![1] } else { vec![1, 2, 3, 4, 5] };
    let label_fraction = 0.05;
    let device = Device::flex().autodiff();

    let (train_set, test_set) = split(load_digits(), 500);
    println!(
        "UCI digits: {} train / {} test images, 8x8, 10 classes (CC BY 4.0, Alpaydin & Kaynak 1998)",
        train_set.len(),
        test_set.len()
    );

    let teacher_cfg = Train {
        steps: if quick { 60 } else { 800 },
        batch: 64,
        lr: 2e-3,
    };
    let student_cfg = Train {
        steps: if quick { 60 } else { 600 },
        batch: 64,
        lr: 5e-3,
    };
    let kd = DistillationLossConfig::new()
        .with_temperature(4.0)
        .with_alpha(0.8)
        .init();
    let hidden_weight = 0.5;
    let student_widths = [FEATURES, 12, CLASSES];
    let teacher_widths = [FEATURES, 256, 256, CLASSES];

    device.seed(1000);
    let start = Instant::now();
    let teacher = train_teacher(
        Mlp::new(&teacher_widths, &device),
        &train_set,
        &teacher_cfg,
        &device,
    );
    let teacher_acc = teacher.accuracy(&test_set, &device);
    println!(
        "teacher {teacher_widths:?}: {} params, test accuracy {:.4} ({:.1}s)",
        teacher.num_params(),
        teacher_acc,
        start.elapsed().as_secs_f64()
    );
    // The teacher runs once over the training set; its outputs are constants for the students.
    let all: Vec<usize> = (0..train_set.len()).collect();
    let (t_logits, t_hidden) = teacher.forward_with_hidden(train_set.batch_x(&all, &device));
    let targets = TeacherTargets {
        logits: t_logits.detach(),
        hidden: t_hidden.detach(),
    };

    // Labels the students may see: all of them, or a small fraction per seed.
    let regimes = [("all labels", 1.0), ("5% labels", label_fraction)];
    let recipes = [
        "labels only",
        "Hinton KD (T=4, α=0.8)",
        "KD + hidden MSE (learnable 12→256 W)",
    ];
    let short = ["labels only", "Hinton KD", "KD + hidden"];
    let mut summary = Vec::new();
    let mut curves = Vec::new();
    println!();
    println!(
        "| regime | student {student_widths:?} | test accuracy, mean ± sd over {} seeds |",
        seeds.len()
    );
    println!("|---|---|---|");
    let bar = progress_bar(regimes.len() * seeds.len() * recipes.len() * student_cfg.steps);
    for (g, (regime, frac)) in regimes.into_iter().enumerate() {
        let mut acc = vec![Vec::new(); recipes.len()];
        for &seed in &seeds {
            let mut ids: Vec<usize> = (0..train_set.len()).collect();
            ids.shuffle(&mut StdRng::seed_from_u64(seed * 7919 + 17));
            let keep = ((train_set.len() as f64) * frac).round() as usize;
            let mut labels = vec![IGNORE_INDEX; train_set.len()];
            for &i in &ids[..keep] {
                labels[i] = train_set.y[i];
            }
            device.seed(seed);
            let init = Student {
                net: Mlp::new(&student_widths, &device),
                projection: HiddenProjectionConfig::new(student_widths[1], teacher_widths[2])
                    .init(&device),
            };
            let plans = [
                Recipe::LabelsOnly,
                Recipe::Hinton(&targets, &kd),
                Recipe::HintonHidden(&targets, &kd, hidden_weight),
            ];
            for (k, recipe) in plans.iter().enumerate() {
                bar.set_message(format!("{regime}, seed {seed}: {}", short[k]));
                // Learning curves are recorded for the first seed, for the figure.
                let watch = (seed == seeds[0]).then_some(&test_set);
                let (model, curve) = train(
                    init.clone(),
                    &train_set,
                    &labels,
                    recipe,
                    &student_cfg,
                    seed,
                    &device,
                    &bar,
                    watch,
                );
                acc[k].push(model.accuracy(&test_set, &device));
                if !curve.is_empty() {
                    curves.push(plot::Curve {
                        regime: g,
                        recipe: k,
                        points: curve,
                    });
                }
            }
        }
        let stats: Vec<(f64, f64)> = acc.iter().map(|a| mean_spread(a)).collect();
        bar.suspend(|| {
            for (name, (m, sd)) in recipes.iter().zip(&stats) {
                println!("| {regime} | {name} | {m:.4} ± {sd:.4} |");
            }
        });
        summary.push((regime, stats));
    }
    bar.finish_and_clear();
    println!();
    let student = Mlp::new(&student_widths, &device);
    let t_ms = time_forward(&teacher, &test_set, &device);
    let s_ms = time_forward(&student, &test_set, &device);
    println!(
        "parameters: teacher {}, student {}; inference on a batch of 256 (flex CPU): teacher {t_ms:.3} ms, student {s_ms:.3} ms",
        teacher.num_params(),
        student.num_params()
    );
    for (regime, stats) in &summary {
        for (k, name) in recipes.iter().enumerate().skip(1) {
            let verdict = if stats[k].0 > stats[0].0 {
                "beats"
            } else {
                "does NOT beat"
            };
            println!(
                "{regime}: {name} {verdict} the student trained alone ({:.4} vs {:.4})",
                stats[k].0, stats[0].0
            );
        }
    }
    let png = std::env::temp_dir().join("kd-losses-digits.png");
    let figure = plot::Figure {
        title: format!(
            "UCI digits: student {student_widths:?} ({} params) distilled from teacher {teacher_widths:?}",
            student.num_params()
        ),
        regimes: summary.iter().map(|s| s.0.to_string()).collect(),
        recipes: short.iter().map(|s| s.to_string()).collect(),
        curves,
        stats: summary.iter().map(|s| s.1.clone()).collect(),
        seeds: seeds.len(),
        seed: seeds[0],
        teacher_acc,
    };
    figure.write(&png).expect("write the figure");
    println!("figure: {}", png.display());
    let (_, stats) = &summary[summary.len() - 1];
    println!(
        "teacher_acc={teacher_acc:.4} student_acc={:.4} kd_student_acc={:.4}",
        stats[0].0, stats[1].0
    );
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
}

/// The figure: learning curves (left) and final accuracies with their spread (right), drawn
/// with `plotters` and an embedded font.
mod plot {
    use std::error::Error;
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    use plotters::style::{FontStyle, register_font};

    /// DejaVu Sans, registered as plotters' `sans-serif`: nothing is read from the system.
    static FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");
    /// One colour per recipe (matplotlib's first three).
    const COLORS: [RGBColor; 3] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
    ];
    const TEACHER: RGBColor = RGBColor(90, 90, 90);

    /// Test accuracy at optimizer steps, for one regime and recipe.
    pub struct Curve {
        pub regime: usize,
        pub recipe: usize,
        pub points: Vec<(usize, f64)>,
    }

    pub struct Figure {
        pub title: String,
        pub regimes: Vec<String>,
        pub recipes: Vec<String>,
        pub curves: Vec<Curve>,
        /// `stats[regime][recipe]`: mean and standard deviation of the test accuracy.
        pub stats: Vec<Vec<(f64, f64)>>,
        pub seeds: usize,
        /// The seed of the curves.
        pub seed: u64,
        pub teacher_acc: f64,
    }

    impl Figure {
        pub fn write(&self, path: &Path) -> Result<(), Box<dyn Error>> {
            register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded font does not parse")?;
            let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
            root.fill(&WHITE)?;
            let root = root.titled(&self.title, ("sans-serif", 24))?;
            let (left, right) = root.split_horizontally(780);
            self.curves_panel(&left)?;
            self.bars_panel(&right)?;
            root.present()?;
            Ok(())
        }

        /// Test accuracy against optimizer steps: colour = recipe, solid = all labels,
        /// dashed = the second regime (5% labels).
        fn curves_panel(
            &self,
            area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
        ) -> Result<(), Box<dyn Error>> {
            let last = self
                .curves
                .iter()
                .flat_map(|c| c.points.last().map(|p| p.0))
                .max()
                .unwrap_or(1)
                .max(1);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("Test accuracy during training (seed {})", self.seed),
                    ("sans-serif", 20),
                )
                .margin(16)
                .x_label_area_size(50)
                .y_label_area_size(64)
                .build_cartesian_2d(0usize..last, 0.0f64..1.0)?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc("test accuracy (500 held-out images)")
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 15))
                .y_labels(11)
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for c in &self.curves {
                let color = COLORS[c.recipe % COLORS.len()];
                let label = format!("{}, {}", self.recipes[c.recipe], self.regimes[c.regime]);
                let points = c.points.iter().copied();
                let anno = if c.regime == 0 {
                    chart.draw_series(LineSeries::new(points, color.stroke_width(3)))?
                } else {
                    chart.draw_series(DashedLineSeries::new(
                        points,
                        10,
                        6,
                        color.stroke_width(2),
                    ))?
                };
                // Legend marks: one solid stroke, or two dashes.
                let (a, b) = if c.regime == 0 { (10, 10) } else { (7, 13) };
                let width = if c.regime == 0 { 3 } else { 2 };
                anno.label(label).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (a, 0)], color.stroke_width(width))
                        + PathElement::new(vec![(b, 0), (20, 0)], color.stroke_width(width))
                });
            }
            let teacher = self.teacher_acc;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0, teacher), (last, teacher)],
                    8,
                    5,
                    TEACHER.stroke_width(1),
                ))?
                .label(format!("teacher ({teacher:.3})"))
                .legend(|(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (8, 0)], TEACHER)
                        + PathElement::new(vec![(13, 0), (20, 0)], TEACHER)
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.4))
                .draw()?;
            Ok(())
        }

        /// Final test accuracy per regime and recipe: bars at the mean, error bars ±1 sd.
        fn bars_panel(
            &self,
            area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
        ) -> Result<(), Box<dyn Error>> {
            let n = self.recipes.len();
            // x in hundredths of a bar: group g spans [g·slot, (g + 1)·slot) with
            // slot = 100·(n + 1); bar k of group g is centred at g·slot + 100·(k + 1).
            let slot = 100 * (n as i32 + 1);
            let width = slot * self.regimes.len() as i32;
            let center = |g: usize, k: usize| g as i32 * slot + 100 * (k as i32 + 1);
            let centers: Vec<i32> = (0..self.regimes.len())
                .map(|g| g as i32 * slot + slot / 2)
                .collect();
            let lowest = self
                .stats
                .iter()
                .flatten()
                .map(|(m, sd)| m - sd)
                .fold(f64::INFINITY, f64::min)
                .min(self.teacher_acc);
            let floor = ((lowest - 0.05) * 10.0).floor() / 10.0;
            let floor = floor.clamp(0.0, 0.9);
            let regimes = self.regimes.clone();
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "Final test accuracy, mean ± sd over {} seed{}",
                        self.seeds,
                        if self.seeds == 1 { "" } else { "s" }
                    ),
                    ("sans-serif", 20),
                )
                .margin(16)
                .x_label_area_size(50)
                .y_label_area_size(64)
                .build_cartesian_2d((0..width).with_key_points(centers), floor..1.0f64)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("labels the student sees (bar colours as in the legend on the left)")
                .y_desc(format!("test accuracy (axis from {floor:.1})"))
                .axis_desc_style(("sans-serif", 17))
                .label_style(("sans-serif", 15))
                .x_label_formatter(&|x: &i32| {
                    let g = (x / slot) as usize;
                    regimes.get(g).cloned().unwrap_or_default()
                })
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            let above = TextStyle::from(("sans-serif", 13).into_font())
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            for k in 0..n {
                let color = COLORS[k % COLORS.len()];
                chart.draw_series(self.stats.iter().enumerate().map(|(g, s)| {
                    let x = center(g, k);
                    Rectangle::new([(x - 42, floor), (x + 42, s[k].0)], color.filled())
                }))?;
                // ±1 sd: a vertical stroke with caps.
                chart.draw_series(
                    self.stats
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s[k].1 > 0.0)
                        .flat_map(|(g, s)| {
                            let x = center(g, k);
                            let (lo, hi) =
                                ((s[k].0 - s[k].1).max(floor), (s[k].0 + s[k].1).min(1.0));
                            [
                                PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1)),
                                PathElement::new(
                                    vec![(x - 12, lo), (x + 12, lo)],
                                    BLACK.stroke_width(1),
                                ),
                                PathElement::new(
                                    vec![(x - 12, hi), (x + 12, hi)],
                                    BLACK.stroke_width(1),
                                ),
                            ]
                        }),
                )?;
                chart.draw_series(self.stats.iter().enumerate().map(|(g, s)| {
                    let x = center(g, k);
                    let (m, sd) = s[k];
                    Text::new(
                        format!("{m:.3}"),
                        (x, (m + sd).min(1.0) + 0.003),
                        above.clone(),
                    )
                }))?;
            }
            let teacher = self.teacher_acc;
            chart.draw_series(DashedLineSeries::new(
                [(0, teacher), (width, teacher)],
                8,
                5,
                TEACHER.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("teacher {teacher:.3}"),
                (width - 10, teacher + 0.003),
                TextStyle::from(("sans-serif", 13).into_font())
                    .color(&TEACHER)
                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
            )))?;
            Ok(())
        }
    }
}
