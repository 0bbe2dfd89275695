//! Distillation on real data: UCI handwritten digits (8×8 images, 10 classes).
//!
//! A teacher MLP is trained on the training labels. The same small student is then trained
//! twice per seed — from labels alone, and with Hinton distillation (`α·T²·KL + (1−α)·CE`) —
//! in two regimes: all training labels, and only a small fraction of them (the teacher's soft
//! targets still cover every training input). The table prints test accuracy (mean ± spread
//! over seeds); the last line is machine-readable.
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
            (v[..FEATURES].iter().map(|p| p / 16.0).collect(), v[FEATURES] as i64)
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
    Rng(0x5eed_d161_75).shuffle(&mut all);
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

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i + 1 < n {
                x = relu(x);
            }
        }
        x
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
    let pred = model.forward(batch_x(s, &idx, device)).argmax(1).reshape([s.len()]);
    let pred = pred.try_into_vec_as::<i64>().unwrap();
    pred.iter().zip(&s.y).filter(|(a, b)| a == b).count() as f64 / s.len() as f64
}

// -------------------------------------------------------------------------------- training

struct Train {
    epochs: usize,
    batch: usize,
    lr: f64,
}

/// Trains `model`. `labels[i] == -100` marks an unlabelled input. With a teacher, the loss is
/// `α · T²·KL(teacher ‖ student)` over every input plus `(1 − α) · CE` over the labelled ones.
fn train(
    mut model: Mlp,
    data: &Split,
    labels: &[i64],
    teacher: Option<(&Mlp, &DistillationLoss)>,
    cfg: &Train,
    seed: u64,
    device: &Device,
) -> Mlp {
    let mut optim = AdamConfig::new().init();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Without a teacher only labelled inputs are useful.
    let mut order: Vec<usize> = (0..data.len())
        .filter(|&i| teacher.is_some() || labels[i] != IGNORE_INDEX)
        .collect();
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        for idx in order.chunks(cfg.batch) {
            let x = batch_x(data, idx, device);
            let y = batch_y(labels, idx, device);
            let logits = model.forward(x.clone());
            let loss = match teacher {
                None => cross_entropy(logits, y, &CrossEntropyOptions::default()).reduce(Reduction::Mean),
                Some((t, kd)) => {
                    let t_logits = t.forward(x);
                    let temp = Temperature::new(kd.temperature).unwrap();
                    let soft = soft_kl(logits.clone(), t_logits, temp, T2Scaling::On).reduce(Reduction::Mean);
                    let hard = cross_entropy(logits, y, &CrossEntropyOptions::default()).reduce(Reduction::Mean);
                    LossTerms::new()
                        .with("soft", kd.alpha, soft)
                        .and_then(|l| l.with("hard", 1.0 - kd.alpha, hard))
                        .unwrap()
                        .total()
                }
            };
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
        }
    }
    model
}

fn mean_spread(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(2).saturating_sub(1) as f64).sqrt();
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

    let teacher_cfg = Train { epochs: if quick { 5 } else { 40 }, batch: 64, lr: 2e-3 };
    let student_cfg = Train { epochs: if quick { 5 } else { 60 }, batch: 64, lr: 5e-3 };
    let kd = DistillationLossConfig::new().with_temperature(4.0).with_alpha(0.8).init();
    let student_widths = [FEATURES, 12, CLASSES];

    device.seed(1000);
    let start = Instant::now();
    let teacher = train(
        Mlp::new(&[FEATURES, 256, 256, CLASSES], &device),
        &train_set,
        &train_set.y,
        None,
        &teacher_cfg,
        1000,
        &device,
    );
    let teacher_acc = accuracy(&teacher, &test_set, &device);
    println!("teacher: {} params, test accuracy {:.4} ({:.1}s)", teacher.params(), teacher_acc, start.elapsed().as_secs_f64());

    // Labels the students may see: all of them, or a small fraction per seed.
    let regimes = [("all labels", 1.0), ("5% labels", label_fraction)];
    let mut summary = Vec::new();
    println!();
    println!("| regime | student | params | test accuracy (mean ± sd over {} seeds) |", seeds.len());
    println!("|---|---|---|---|");
    for (regime, frac) in regimes {
        let (mut base, mut distilled) = (Vec::new(), Vec::new());
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
            let init = Mlp::new(&student_widths, &device);
            let alone = train(init.clone(), &train_set, &labels, None, &student_cfg, seed, &device);
            base.push(accuracy(&alone, &test_set, &device));
            let kd_student = train(init, &train_set, &labels, Some((&teacher, &kd)), &student_cfg, seed, &device);
            distilled.push(accuracy(&kd_student, &test_set, &device));
        }
        let (bm, bs) = mean_spread(&base);
        let (km, ks) = mean_spread(&distilled);
        let params = Mlp::new(&student_widths, &device).params();
        println!("| {regime} | labels only | {params} | {bm:.4} ± {bs:.4} |");
        println!("| {regime} | Hinton KD (T=4, α=0.8) | {params} | {km:.4} ± {ks:.4} |");
        summary.push((regime, bm, km));
    }
    println!();
    let t_ms = time_forward(&teacher, &test_set, &device);
    let s_ms = time_forward(&Mlp::new(&student_widths, &device), &test_set, &device);
    println!("inference, batch of 256 (flex CPU): teacher {t_ms:.3} ms, student {s_ms:.3} ms");
    for (regime, b, k) in &summary {
        let verdict = if k > b { "beats" } else { "does NOT beat" };
        println!("{regime}: the distilled student {verdict} the student trained alone ({k:.4} vs {b:.4})");
    }
    let (_, b, k) = summary[summary.len() - 1];
    println!("teacher_acc={teacher_acc:.4} student_acc={b:.4} kd_student_acc={k:.4}");
}
