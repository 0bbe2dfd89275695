//! What the two digits examples share (`digits.rs`, `learner.rs`): the UCI digits data, its
//! train / test split and the MLP used for teachers and students.
//!
//! Data: E. Alpaydin, C. Kaynak, *Optical Recognition of Handwritten Digits*, UCI ML Repository,
//! 1998, CC BY 4.0 (see data/README.md).
// Each example uses a different part of this module.
#![allow(dead_code)]

use std::io::Read;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Number of classes (digits 0–9).
pub const CLASSES: usize = 10;
/// Pixels per image (8×8, values 0–16, scaled to [0, 1]).
pub const FEATURES: usize = 64;
/// Seed of the train / test split: every run and every example uses the same split.
pub const SPLIT_SEED: u64 = 0x5eed_d161;

/// One image: 64 pixels in [0, 1] and its label.
#[derive(Clone, Debug)]
pub struct Digit {
    pub pixels: Vec<f32>,
    pub label: i64,
}

/// A set of images, pixels row-major `[len, 64]`.
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<i64>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// The images of `idx` as a `[idx.len(), 64]` tensor.
    pub fn batch_x(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let data: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.x[i * FEATURES..(i + 1) * FEATURES].iter().copied())
            .collect();
        Tensor::from_data(TensorData::new(data, [idx.len(), FEATURES]), device)
    }

    /// The images one by one (for a Burn `Dataset`).
    pub fn digits(&self) -> Vec<Digit> {
        (0..self.len())
            .map(|i| Digit {
                pixels: self.x[i * FEATURES..(i + 1) * FEATURES].to_vec(),
                label: self.y[i],
            })
            .collect()
    }
}

/// `y[i]` for `i` in `idx`, as a `[idx.len()]` tensor.
pub fn batch_y(y: &[i64], idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = idx.iter().map(|&i| y[i]).collect();
    Tensor::from_data(TensorData::new(data, [idx.len()]), device)
}

/// Reads `data/digits.csv.gz` (1 797 images).
pub fn load_digits() -> Vec<Digit> {
    // Embedded (57 kB): the binary runs from any directory.
    static DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_GZ)
        .read_to_string(&mut text)
        .expect("gzip");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<f32> = l.split(',').map(|s| s.trim().parse().unwrap()).collect();
            assert_eq!(v.len(), FEATURES + 1, "digits: 65 values per line");
            Digit {
                pixels: v[..FEATURES].iter().map(|p| p / 16.0).collect(),
                label: v[FEATURES] as i64,
            }
        })
        .collect()
}

/// Shuffles with [`SPLIT_SEED`] and returns `(train, test)`, `test` images in the test set.
pub fn split(mut all: Vec<Digit>, test: usize) -> (Split, Split) {
    all.shuffle(&mut StdRng::seed_from_u64(SPLIT_SEED));
    let to = |rows: &[Digit]| Split {
        x: rows.iter().flat_map(|r| r.pixels.iter().copied()).collect(),
        y: rows.iter().map(|r| r.label).collect(),
    };
    (to(&all[test..]), to(&all[..test]))
}

/// A ReLU MLP; `widths` lists the layer sizes from input to logits.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    pub fn new(widths: &[usize], device: &Device) -> Self {
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        Mlp { layers }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with_hidden(x).0
    }

    /// Logits and the last hidden layer (after its ReLU).
    pub fn forward_with_hidden(&self, mut x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
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

    /// Fraction of `s` classified correctly.
    pub fn accuracy(&self, s: &Split, device: &Device) -> f64 {
        let idx: Vec<usize> = (0..s.len()).collect();
        let pred = self
            .forward(s.batch_x(&idx, device))
            .argmax(1)
            .reshape([s.len()]);
        let pred = pred.try_into_vec_as::<i64>().unwrap();
        pred.iter().zip(&s.y).filter(|(a, b)| a == b).count() as f64 / s.len() as f64
    }
}
