//! What the language-model examples share (`sequence.rs`, `on_policy.rs`, `lm_head.rs`): the
//! character corpus, right-padded batches of token windows, a small pre-LN causal transformer
//! that returns its hidden states and attention scores, and its training from labels alone.
//! Each example uses part of it.
#![allow(dead_code)]

use std::time::Instant;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kd_losses::IGNORE_INDEX;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Padding token (inputs only; padded labels are `IGNORE_INDEX`).
pub const PAD: usize = 0;

/// Character vocabulary of the text (lower-cased, whitespace collapsed); id 0 is padding.
pub struct Corpus {
    pub chars: Vec<char>,
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
}

impl Corpus {
    /// Cicero, *De finibus* I (`lipsum::LIBER_PRIMUS`): the first 90% trains, the last 10%
    /// validates.
    pub fn load() -> Self {
        let text: String = lipsum::LIBER_PRIMUS
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        let ids: Vec<usize> = text
            .chars()
            .map(|c| 1 + chars.binary_search(&c).unwrap())
            .collect();
        let cut = ids.len() * 9 / 10;
        Corpus {
            chars,
            train: ids[..cut].to_vec(),
            valid: ids[cut..].to_vec(),
        }
    }

    pub fn vocab(&self) -> usize {
        self.chars.len() + 1
    }

    /// The id of character `c`, if the text has it.
    pub fn id(&self, c: char) -> Option<usize> {
        self.chars.binary_search(&c).ok().map(|i| i + 1)
    }
}

/// A right-padded batch: inputs `[B, S]`, next-character labels `[B, S]` (`-100` on padding),
/// and the padding mask `[B, S]` (`true` for a real position).
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub labels: Tensor<2, Int>,
    pub mask: Tensor<2, Bool>,
    pub lens: Vec<usize>,
}

/// Builds a batch from `(start, len)` windows of `ids`: position `i` reads `ids[start + i]` and
/// predicts `ids[start + i + 1]`.
pub fn make_batch(ids: &[usize], windows: &[(usize, usize)], seq: usize, device: &Device) -> Batch {
    let b = windows.len();
    let mut inputs = vec![PAD as i64; b * seq];
    let mut labels = vec![IGNORE_INDEX; b * seq];
    let mut mask = vec![false; b * seq];
    for (r, &(start, len)) in windows.iter().enumerate() {
        for i in 0..len {
            inputs[r * seq + i] = ids[start + i] as i64;
            labels[r * seq + i] = ids[start + i + 1] as i64;
            mask[r * seq + i] = true;
        }
    }
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, [b, seq]), device),
        labels: Tensor::from_data(TensorData::new(labels, [b, seq]), device),
        mask: Tensor::from_data(TensorData::new(mask, [b, seq]), device),
        lens: windows.iter().map(|w| w.1).collect(),
    }
}

/// Random training windows of random length in `[seq/2, seq]`, so most rows are padded.
pub fn sample_batch(
    ids: &[usize],
    batch: usize,
    seq: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Batch {
    let windows: Vec<(usize, usize)> = (0..batch)
        .map(|_| {
            let len = rng.random_range(seq / 2..=seq);
            (rng.random_range(0..ids.len() - len - 1), len)
        })
        .collect();
    make_batch(ids, &windows, seq, device)
}

/// The validation text cut into consecutive windows (the last one shorter, hence padded).
pub fn validation_batches(ids: &[usize], batch: usize, seq: usize, device: &Device) -> Vec<Batch> {
    let n = ids.len() - 1;
    let windows: Vec<(usize, usize)> = (0..n).step_by(seq).map(|s| (s, seq.min(n - s))).collect();
    windows
        .chunks(batch)
        .map(|w| make_batch(ids, w, seq, device))
        .collect()
}

// ----------------------------------------------------------------------------------- model

#[derive(Debug, Clone, Copy)]
pub struct Arch {
    pub layers: usize,
    pub d: usize,
    pub heads: usize,
}

/// Pre-LN transformer block with hand-written causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl Block {
    pub fn new(d: usize, heads: usize, device: &Device) -> Self {
        Block {
            ln1: LayerNormConfig::new(d).init(device),
            qkv: LinearConfig::new(d, 3 * d).init(device),
            proj: LinearConfig::new(d, d).init(device),
            ln2: LayerNormConfig::new(d).init(device),
            fc1: LinearConfig::new(d, 4 * d).init(device),
            fc2: LinearConfig::new(4 * d, d).init(device),
            heads,
        }
    }

    /// `x: [B, S, D]`, `blocked: [B, H, S, S]` (`true` where query `i` must not see key `j`).
    /// Returns the new residual stream and the pre-softmax scores `[B, H, S, S]`.
    pub fn forward(&self, x: Tensor<3>, blocked: Tensor<4, Bool>) -> (Tensor<3>, Tensor<4>) {
        let [b, s, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        let split = |i: usize| {
            qkv.clone()
                .slice([0..b, 0..s, i * d..(i + 1) * d])
                .reshape([b, s, h, dh])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .div_scalar((dh as f64).sqrt())
            .mask_fill(blocked, f32::NEG_INFINITY);
        let att = softmax(scores.clone(), 3);
        let ctx = att.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        let x = x + self.proj.forward(ctx);
        let y = self
            .fc2
            .forward(gelu(self.fc1.forward(self.ln2.forward(x.clone()))));
        (x + y, scores)
    }
}

/// Output of a forward pass: logits `[B, S, V]`, hidden states (embeddings output, then each
/// layer's output, `[B, S, D]` each: `layers + 1` tensors) and attention scores per layer.
pub struct Trace {
    pub logits: Tensor<3>,
    pub hiddens: Vec<Tensor<3>>,
    pub scores: Vec<Tensor<4>>,
}

#[derive(Module, Debug)]
pub struct Lm {
    pub tok: Embedding,
    pub pos: Embedding,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    pub head: Linear,
}

impl Lm {
    pub fn new(arch: Arch, vocab: usize, seq: usize, device: &Device) -> Self {
        Lm {
            tok: EmbeddingConfig::new(vocab, arch.d).init(device),
            pos: EmbeddingConfig::new(seq, arch.d).init(device),
            blocks: (0..arch.layers)
                .map(|_| Block::new(arch.d, arch.heads, device))
                .collect(),
            ln_f: LayerNormConfig::new(arch.d).init(device),
            head: LinearConfig::new(arch.d, vocab).init(device),
        }
    }

    /// Logits `[B, S, V]`, hidden states and attention scores.
    pub fn forward(&self, batch: &Batch) -> Trace {
        let (x, hiddens, scores) = self.trunk(batch);
        Trace {
            logits: self.head.forward(self.ln_f.forward(x)),
            hiddens,
            scores,
        }
    }

    /// The final hidden states `[B, S, D]` (after the last layer norm): the LM head's input,
    /// without forming the logits.
    pub fn last_hidden(&self, batch: &Batch) -> Tensor<3> {
        self.ln_f.forward(self.trunk(batch).0)
    }

    /// The last layer's output, every layer's hidden states and attention scores.
    fn trunk(&self, batch: &Batch) -> (Tensor<3>, Vec<Tensor<3>>, Vec<Tensor<4>>) {
        let [b, s] = batch.inputs.dims();
        let device = batch.inputs.device();
        let d = self.head.weight.val().dims()[0];
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device).reshape([1, s]);
        let mut x =
            self.tok.forward(batch.inputs.clone()) + self.pos.forward(positions).expand([b, s, d]);
        // Query i may not see key j when j > i (causal) or when j is padding.
        let causal: Vec<bool> = (0..s * s).map(|ij| ij % s > ij / s).collect();
        let future = Tensor::<4, Bool>::from_data(TensorData::new(causal, [1, 1, s, s]), &device)
            .expand([b, 1, s, s]);
        let padded = batch
            .mask
            .clone()
            .bool_not()
            .reshape([b, 1, 1, s])
            .expand([b, 1, s, s]);
        let blocked = future.bool_or(padded);
        let mut hiddens = vec![x.clone()];
        let mut scores = Vec::new();
        for block in &self.blocks {
            let heads = block.heads;
            let (y, sc) = block.forward(x, blocked.clone().expand([b, heads, s, s]));
            x = y;
            hiddens.push(x.clone());
            scores.push(sc);
        }
        (x, hiddens, scores)
    }
}

/// Perplexity per token, `exp(Σ CE / #tokens)`, over validation batches (padding excluded).
pub fn perplexity(model: &Lm, batches: &[Batch]) -> f64 {
    use kd_losses::prelude::{CrossEntropyOptions, Reduction, cross_entropy};
    let (mut nll, mut tokens) = (0.0, 0usize);
    let model = model.clone().no_grad();
    for batch in batches {
        let sum = cross_entropy(
            model.forward(batch).logits,
            batch.labels.clone(),
            &CrossEntropyOptions::default(),
        )
        .reduce(Reduction::Sum);
        nll += sum.into_scalar::<f64>();
        tokens += batch.lens.iter().sum::<usize>();
    }
    (nll / tokens.max(1) as f64).exp()
}

// -------------------------------------------------------------------------------- training

pub struct Train {
    pub steps: usize,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
}

/// Next-character cross-entropy, mean over the real positions.
pub fn ce_loss(trace: &Trace, batch: &Batch) -> Tensor<1> {
    use kd_losses::prelude::{CrossEntropyOptions, Reduction, cross_entropy};
    cross_entropy(
        trace.logits.clone(),
        batch.labels.clone(),
        &CrossEntropyOptions::default(),
    )
    .reduce(Reduction::RowMean)
}

/// Trains a language model from labels alone.
pub fn train_alone(mut model: Lm, ids: &[usize], cfg: &Train, seed: u64, device: &Device) -> Lm {
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    for step in 0..cfg.steps {
        let batch = sample_batch(ids, cfg.batch, cfg.seq, &mut rng, device);
        let loss = ce_loss(&model.forward(&batch), &batch);
        if step % 100 == 0 || step + 1 == cfg.steps {
            println!(
                "  step {step:>4} ({:.1}s): ce {:.4}",
                start.elapsed().as_secs_f64(),
                loss.clone().into_scalar::<f64>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr_at(cfg, step), model, grads);
    }
    model
}

/// Linear warm-up over the first 5% of the steps, then cosine decay to 10% of `lr`.
pub fn lr_at(cfg: &Train, step: usize) -> f64 {
    let warm = (cfg.steps / 20).max(1);
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (cfg.steps - warm).max(1) as f64;
    cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// One line of a step's loss terms: `name value, name value, …`.
pub fn describe(terms: &kd_losses::LossTerms) -> String {
    terms
        .scalars()
        .iter()
        .map(|(n, v)| format!("{n} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The teacher and student of the character-level examples (`sequence`, `on_policy`).
pub const TEACHER_ARCH: Arch = Arch {
    layers: 4,
    d: 64,
    heads: 4,
};
pub const STUDENT_ARCH: Arch = Arch {
    layers: 2,
    d: 32,
    heads: 4,
};
