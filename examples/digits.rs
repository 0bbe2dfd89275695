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
//! ```text
//! cargo run --release --example digits            # full run
//! cargo run --release --example digits -- --quick # CI smoke run
//! ```
//!
//! Data: E. Alpaydin, C. Kaynak, UCI ML Repository, CC BY 4.0 (see data/README.md).

use std::io::Read;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_losses::hidden::{HiddenProjection, HiddenProjectionConfig, hidden_mse};
use kd_losses::prelude::*;

const CLASSES: usize = 10;
const FEATURES: usize = 64;

// ------------------------------------------------------------------------------------ data

struct Split {
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Split {
    fn len(&self) -> usize {
        self.y.len()
    }
}

fn load_digits() -> Vec<(Vec<f32>, i64)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz");
    let file = std::fs::File::open(path).expect("data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gzip");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f32> = l.split(',').map(|s| s.trim().parse().unwrap()).collect();
            assert_eq!(v.len(), FEATURES + 1, "digits: 65 values per line");
            (
                v[..FEATURES].iter().map(|p| p / 16.0).collect(),
                v[FEATURES] as i64,
            )
        })
        .collect()
}

/// xorshift64*: a tiny deterministic RNG for shuffling.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn split(mut all: Vec<(Vec<f32>, i64)>, test: usize) -> (Split, Split) {
    Rng(0x5e_edd1_6175).shuffle(&mut all);
    let to = |rows: &[(Vec<f32>, i64)]| Split {
        x: rows.iter().flat_map(|r| r.0.clone()).collect(),
        y: rows.iter().map(|r| r.1).collect(),
    };
    (to(&all[test..]), to(&all[..test]))
}

// ----------------------------------------------------------------------------------- model

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Mlp { layers }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with_hidden(x).0
    }

    /// Logits and the last hidden layer (after its ReLU).
    fn forward_with_hidden(&self, mut x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let n = self.layers.len();
        let mut hidden = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i + 1 < n {
                x = relu(x);
                hidden = x.clone();
            }
        }
        (x, hidden)
    }

    fn params(&self) -> usize {
        self.num_params()
    }
}

fn batch_x(s: &Split, idx: &[usize], device: &Device) -> Tensor<2> {
    let data: Vec<f32> = idx
        .iter()
        .flat_map(|&i| s.x[i * FEATURES..(i + 1) * FEATURES].iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [idx.len(), FEATURES]), device)
}

fn batch_y(y: &[i64], idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = idx.iter().map(|&i| y[i]).collect();
    Tensor::from_data(TensorData::new(data, [idx.len()]), device)
}

fn accuracy(model: &Mlp, s: &Split, device: &Device) -> f64 {
    let idx: Vec<usize> = (0..s.len()).collect();
    let pred = model
        .forward(batch_x(s, &idx, device))
        .argmax(1)
        .reshape([s.len()]);
    let pred = pred.try_into_vec_as::<i64>().unwrap();
    pred.iter().zip(&s.y).filter(|(a, b)| a == b).count() as f64 / s.len() as f64
}

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

/// Trains a student for a fixed number of optimizer steps (the same budget for every recipe).
/// `labels[i] == -100` marks an unlabelled input.
#[allow(clippy::too_many_arguments)]
fn train(
    mut model: Student,
    data: &Split,
    labels: &[i64],
    recipe: &Recipe,
    cfg: &Train,
    seed: u64,
    device: &Device,
    progress: &str,
    eval: Option<&Split>,
) -> (Mlp, Vec<(usize, f64)>) {
    let mut curve = Vec::new();
    let mut bar = Progress::new(progress, cfg.steps);
    let mut optim = AdamConfig::new().init();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Without a teacher only labelled inputs are useful.
    let pool: Vec<usize> = (0..data.len())
        .filter(|&i| !matches!(recipe, Recipe::LabelsOnly) || labels[i] != IGNORE_INDEX)
        .collect();
    let mut order = pool.clone();
    let mut cursor = order.len();
    for step in 0..cfg.steps {
        if let Some(eval) = eval.filter(|_| step % (cfg.steps / 30).max(1) == 0) {
            curve.push((step, accuracy(&model.net, eval, device)));
        }
        bar.tick(step + 1);
        let mut idx = Vec::with_capacity(cfg.batch);
        while idx.len() < cfg.batch.min(pool.len()) {
            if cursor == order.len() {
                rng.shuffle(&mut order);
                cursor = 0;
            }
            idx.push(order[cursor]);
            cursor += 1;
        }
        let x = batch_x(data, &idx, device);
        let y = batch_y(labels, &idx, device);
        let (logits, hidden) = model.net.forward_with_hidden(x);
        let hard = cross_entropy(logits.clone(), y, &CrossEntropyOptions::default())
            .reduce(Reduction::Mean);
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
            .reduce(Reduction::Mean);
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
    }
    if let Some(eval) = eval {
        curve.push((cfg.steps, accuracy(&model.net, eval, device)));
    }
    (model.net, curve)
}

/// A one-line progress bar on stderr.
struct Progress {
    name: String,
    total: usize,
    shown: usize,
}

impl Progress {
    fn new(name: &str, total: usize) -> Self {
        Progress {
            name: name.to_string(),
            total,
            shown: usize::MAX,
        }
    }

    fn tick(&mut self, done: usize) {
        let width = 30;
        let filled = done * width / self.total.max(1);
        if filled == self.shown && done != self.total {
            return;
        }
        self.shown = filled;
        eprint!(
            "\r  {:<44} [{}{}] {done}/{}",
            self.name,
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total
        );
        if done == self.total {
            eprintln!();
        }
    }
}

/// Trains the teacher with cross-entropy on every training label.
fn train_teacher(model: Mlp, data: &Split, cfg: &Train, device: &Device) -> Mlp {
    let student = Student {
        net: model,
        projection: HiddenProjection::identity(),
    };
    train(
        student,
        data,
        &data.y,
        &Recipe::LabelsOnly,
        cfg,
        1000,
        device,
        "teacher",
        None,
    )
    .0
}

fn mean_spread(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        / v.len().max(2).saturating_sub(1) as f64)
        .sqrt();
    (m, s)
}

fn time_forward(model: &Mlp, s: &Split, device: &Device) -> f64 {
    let idx: Vec<usize> = (0..s.len().min(256)).collect();
    let x = batch_x(s, &idx, device);
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
    let teacher_acc = accuracy(&teacher, &test_set, &device);
    println!(
        "teacher {teacher_widths:?}: {} params, test accuracy {:.4} ({:.1}s)",
        teacher.params(),
        teacher_acc,
        start.elapsed().as_secs_f64()
    );
    // The teacher runs once over the training set; its outputs are constants for the students.
    let all: Vec<usize> = (0..train_set.len()).collect();
    let (t_logits, t_hidden) = teacher.forward_with_hidden(batch_x(&train_set, &all, &device));
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
    for (regime, frac) in regimes {
        let mut acc = vec![Vec::new(); recipes.len()];
        for &seed in &seeds {
            let mut rng = Rng(seed * 7919 + 17);
            let mut ids: Vec<usize> = (0..train_set.len()).collect();
            rng.shuffle(&mut ids);
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
                // Learning curves are recorded for the first seed, for the plot.
                let watch = (seed == seeds[0]).then_some(&test_set);
                let (model, curve) = train(
                    init.clone(),
                    &train_set,
                    &labels,
                    recipe,
                    &student_cfg,
                    seed,
                    &device,
                    &format!("{regime}, seed {seed}: {}", short[k]),
                    watch,
                );
                acc[k].push(accuracy(&model, &test_set, &device));
                if !curve.is_empty() {
                    curves.push((regime, k, curve));
                }
            }
        }
        let means: Vec<f64> = acc.iter().map(|a| mean_spread(a).0).collect();
        for (k, name) in recipes.iter().enumerate() {
            let (m, sd) = mean_spread(&acc[k]);
            println!("| {regime} | {name} | {m:.4} ± {sd:.4} |");
        }
        summary.push((regime, means));
    }
    println!();
    let student_params = Mlp::new(&student_widths, &device).params();
    let t_ms = time_forward(&teacher, &test_set, &device);
    let s_ms = time_forward(&Mlp::new(&student_widths, &device), &test_set, &device);
    println!(
        "parameters: teacher {}, student {student_params}; inference on a batch of 256 (flex CPU): teacher {t_ms:.3} ms, student {s_ms:.3} ms",
        teacher.params()
    );
    for (regime, m) in &summary {
        for (k, name) in recipes.iter().enumerate().skip(1) {
            let verdict = if m[k] > m[0] {
                "beats"
            } else {
                "does NOT beat"
            };
            println!(
                "{regime}: {name} {verdict} the student trained alone ({:.4} vs {:.4})",
                m[k], m[0]
            );
        }
    }
    let png = std::env::temp_dir().join("kd-losses-digits.png");
    plot::write(&png, &curves, &summary).expect("write the plot");
    println!(
        "plot: {} (left: test accuracy during training, first seed — solid: all labels, thin: 5% labels; \
         right: mean test accuracy, 0.8–1.0; blue = labels only, orange = Hinton KD, green = KD + hidden)",
        png.display()
    );
    let (_, m) = &summary[summary.len() - 1];
    println!(
        "teacher_acc={teacher_acc:.4} student_acc={:.4} kd_student_acc={:.4}",
        m[0], m[1]
    );
    println!("total time {:.1}s", start.elapsed().as_secs_f64());
}

/// A dependency-free PNG plot (no text; the legend is printed by `main`).
mod plot {
    use std::io::Write;

    const W: usize = 900;
    const H: usize = 420;
    const COLORS: [[u8; 3]; 3] = [[31, 119, 180], [255, 127, 14], [44, 160, 44]];

    struct Canvas(Vec<u8>);

    impl Canvas {
        fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
            if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
                let i = (y as usize * W + x as usize) * 3;
                self.0[i..i + 3].copy_from_slice(&c);
            }
        }
        fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
            for y in y0.min(y1)..=y0.max(y1) {
                for x in x0.min(x1)..=x0.max(x1) {
                    self.set(x, y, c);
                }
            }
        }
        fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
            let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
            for k in 0..=n {
                let t = k as f64 / n as f64;
                let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
                self.rect(
                    x as i64,
                    y as i64,
                    x as i64 + thick - 1,
                    y as i64 + thick - 1,
                    c,
                );
            }
        }
    }

    /// Panel frame `[x0, x1] × [y0, y1]` in pixels with horizontal grid lines every 0.05 of
    /// accuracy between `lo` and 1.0.
    fn frame(c: &mut Canvas, x0: i64, x1: i64, y0: i64, y1: i64, lo: f64) {
        let grey = [220, 220, 220];
        let steps = ((1.0 - lo) / 0.05).round() as i64;
        for k in 0..=steps {
            let y = y1 - (y1 - y0) * k / steps;
            c.rect(x0, y, x1, y, grey);
        }
        c.rect(x0, y0, x0, y1, [0, 0, 0]);
        c.rect(x0, y1, x1, y1, [0, 0, 0]);
    }

    type Curve<'a> = (&'a str, usize, Vec<(usize, f64)>);

    /// Left: accuracy curves; right: grouped bars of the mean accuracies per regime.
    pub fn write(
        path: &std::path::Path,
        curves: &[Curve],
        summary: &[(&str, Vec<f64>)],
    ) -> std::io::Result<()> {
        let mut c = Canvas(vec![255; W * H * 3]);
        let (lo, top, bottom) = (0.5, 20i64, H as i64 - 30);
        let ymap = |acc: f64, lo: f64| {
            bottom as f64 - (acc.clamp(lo, 1.0) - lo) / (1.0 - lo) * (bottom - top) as f64
        };
        // Left panel: curves.
        let (lx0, lx1) = (40i64, 500i64);
        frame(&mut c, lx0, lx1, top, bottom, lo);
        let first_regime = curves.first().map(|c| c.0);
        for (regime, k, curve) in curves {
            let last = curve.last().map(|p| p.0).unwrap_or(1).max(1) as f64;
            let thick = if Some(*regime) == first_regime { 3 } else { 1 };
            for w in curve.windows(2) {
                let p = |(s, a): (usize, f64)| {
                    (
                        lx0 as f64 + s as f64 / last * (lx1 - lx0) as f64,
                        ymap(a, lo),
                    )
                };
                c.line(p(w[0]), p(w[1]), COLORS[*k], thick);
            }
        }
        // Right panel: bars, accuracy 0.8..1.0.
        let (rx0, rx1, blo) = (560i64, 880i64, 0.8);
        frame(&mut c, rx0, rx1, top, bottom, blo);
        let group = (rx1 - rx0) / summary.len().max(1) as i64;
        for (g, (_, means)) in summary.iter().enumerate() {
            for (k, m) in means.iter().enumerate() {
                let x = rx0 + g as i64 * group + 20 + k as i64 * (group - 40) / 3;
                let w = (group - 40) / 3 - 6;
                c.rect(x, ymap(*m, blo) as i64, x + w, bottom - 1, COLORS[k]);
            }
        }
        encode(path, &c.0)
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }

    fn encode(path: &std::path::Path, rgb: &[u8]) -> std::io::Result<()> {
        let mut raw = Vec::with_capacity((W * 3 + 1) * H);
        for row in rgb.chunks(W * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(W as u32).to_be_bytes());
        ihdr.extend_from_slice(&(H as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &idat);
        chunk(&mut png, b"IEND", &[]);
        std::fs::write(path, png)
    }
}
