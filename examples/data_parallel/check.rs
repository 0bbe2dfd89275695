//! The data-parallel distillation step of `examples/data_parallel/main.rs`, shared with the test
//! `tests/suite/train.rs`: a student trained against a frozen teacher on token shards with
//! uneven padding, run by `burn::train`'s multi-device train step, and the checks that its summed
//! gradient is the single-device gradient of the whole batch.

use burn::data::dataloader::{DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::gelu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use burn::train::train::MultiDevicesTrainStep;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use kd_losses::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Hidden size of the inputs, width of the student, vocabulary.
pub const H: usize = 16;
const D: usize = 8;
pub const V: usize = 11;
/// Sequence length of every shard.
pub const S: usize = 3;

/// One worker's part of a step: input features `[B, S, H]`, labels `[B, S]` (`-100` on padding),
/// the padding mask `[B, S]`, and the normalizer of the **whole step** (every worker's valid
/// tokens), which the host knows when it cuts the batch.
#[derive(Clone, Debug)]
pub struct Shard {
    pub inputs: Tensor<3>,
    pub labels: Tensor<2, Int>,
    pub mask: Tensor<2, Bool>,
    pub reduction: Reduction,
}

/// How a shard's loss is divided: by the global count (right) or by its own count (the bug).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// `Reduction::Normalizer(global count)`: summed shard gradients are the full-batch gradient.
    Global,
    /// `Reduction::RowMean` per shard: each worker's token mean, summed by the engine.
    PerShard,
}

impl Norm {
    /// The reduction of every shard of `batch` (the whole step).
    pub fn reduction(self, batch: &Tokens) -> Reduction {
        match self {
            Norm::Global => global(batch),
            Norm::PerShard => Reduction::RowMean,
        }
    }
}

/// Loss temperature and weight of the soft term.
const TEMPERATURE: f64 = 2.0;
const ALPHA: f64 = 0.5;

/// A two-layer student `H → D → V` and a frozen one-layer teacher `H → V` in one training module
/// (the teacher is `no_grad`: no gradient, and the optimizer leaves it alone).
#[derive(Module, Debug)]
pub struct KdStep {
    pub hidden: Linear,
    pub head: Linear,
    pub teacher: Linear,
}

impl KdStep {
    pub fn new(device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(H, D).init(device),
            head: LinearConfig::new(D, V).init(device),
            teacher: LinearConfig::new(H, V).init(device).no_grad(),
        }
    }

    /// `α·T²·KL(teacher ‖ student) + (1 − α)·CE` over the shard's valid tokens, reduced with the
    /// shard's reduction.
    pub fn loss(&self, shard: &Shard) -> Tensor<1> {
        let student = self
            .head
            .forward(gelu(self.hidden.forward(shard.inputs.clone())));
        let teacher = self.teacher.forward(shard.inputs.clone()).detach();
        let reduction = shard.reduction;
        let t = Temperature::new(TEMPERATURE).expect("temperature");
        let soft = soft_kl(student.clone(), teacher, t, T2Scaling::On)
            .masked(&RowMask::new(shard.mask.clone()))
            .reduce(reduction);
        let hard = cross_entropy(
            student,
            shard.labels.clone(),
            &CrossEntropyOptions::default(),
        )
        .reduce(reduction);
        soft.mul_scalar(ALPHA) + hard.mul_scalar(1.0 - ALPHA)
    }
}

impl TrainStep for KdStep {
    type Input = Shard;
    type Output = ();

    fn step(&self, shard: Shard) -> TrainOutput<()> {
        TrainOutput::new(self, self.loss(&shard).backward(), ())
    }
}

impl InferenceStep for KdStep {
    type Input = Shard;
    type Output = ();

    fn step(&self, _shard: Shard) {}
}

/// The per-worker data: a list of shards handed out one per step, as Burn's data loaders do.
pub struct Shards {
    items: std::vec::IntoIter<Shard>,
    total: usize,
    done: usize,
}

impl Shards {
    pub fn new(items: Vec<Shard>) -> Self {
        Self {
            total: items.len(),
            items: items.into_iter(),
            done: 0,
        }
    }
}

impl Iterator for Shards {
    type Item = Result<Shard, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.items.next()?;
        self.done += 1;
        Some(Ok(item))
    }
}

impl DataLoaderIterator<Shard> for Shards {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("shards".to_string()))
    }
}

/// A batch of `valid.len()` sequences of `S` positions, `valid[r]` of them real, the rest padding.
pub struct Tokens {
    pub inputs: Vec<f32>,
    pub labels: Vec<i64>,
    pub mask: Vec<bool>,
    pub rows: usize,
}

impl Tokens {
    /// Random features and labels (seeded) with the given valid lengths.
    pub fn random(valid: &[usize], seed: u64) -> Self {
        let rows = valid.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let inputs: Vec<f32> = (0..rows * S * H)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        let mut labels: Vec<i64> = (0..rows * S)
            .map(|_| rng.random_range(0..V as i64))
            .collect();
        let mut mask = vec![false; rows * S];
        for (r, &len) in valid.iter().enumerate() {
            for i in 0..S {
                mask[r * S + i] = i < len;
                if i >= len {
                    labels[r * S + i] = IGNORE_INDEX;
                }
            }
        }
        Tokens {
            inputs,
            labels,
            mask,
            rows,
        }
    }

    /// Valid tokens.
    pub fn count(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }

    /// Rows `[from, to)`.
    pub fn slice(&self, from: usize, to: usize) -> Tokens {
        Tokens {
            inputs: self.inputs[from * S * H..to * S * H].to_vec(),
            labels: self.labels[from * S..to * S].to_vec(),
            mask: self.mask[from * S..to * S].to_vec(),
            rows: to - from,
        }
    }

    /// The shard of these rows on `device`, reduced with `reduction`.
    pub fn shard(&self, reduction: Reduction, device: &Device) -> Shard {
        Shard {
            inputs: Tensor::from_data(
                TensorData::new(self.inputs.clone(), [self.rows, S, H]),
                device,
            ),
            labels: Tensor::from_data(TensorData::new(self.labels.clone(), [self.rows, S]), device),
            mask: Tensor::from_data(TensorData::new(self.mask.clone(), [self.rows, S]), device),
            reduction,
        }
    }
}

/// The gradients of the student's four parameters, flattened, in a fixed order.
pub fn student_grads(model: &KdStep, grads: &GradientsParams) -> Vec<(&'static str, Vec<f32>)> {
    fn get2(p: &Param<Tensor<2>>, g: &GradientsParams) -> Vec<f32> {
        g.get::<2>(p.id)
            .expect("a gradient for every student weight")
            .try_into_vec_as::<f32>()
            .unwrap()
    }
    fn get1(p: &Option<Param<Tensor<1>>>, g: &GradientsParams) -> Vec<f32> {
        g.get::<1>(p.as_ref().expect("bias").id)
            .expect("a gradient for every student bias")
            .try_into_vec_as::<f32>()
            .unwrap()
    }
    vec![
        ("hidden.weight", get2(&model.hidden.weight, grads)),
        ("hidden.bias", get1(&model.hidden.bias, grads)),
        ("head.weight", get2(&model.head.weight, grads)),
        ("head.bias", get1(&model.head.bias, grads)),
    ]
}

/// `max over parameters of max|a − b| / max|b|`: the largest gradient difference relative to the
/// reference gradient's scale, parameter by parameter.
pub fn max_rel_diff(a: &[(&str, Vec<f32>)], b: &[(&str, Vec<f32>)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| {
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let diff = x
                .iter()
                .zip(y)
                .fold(0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()));
            diff / scale.max(f64::MIN_POSITIVE)
        })
        .fold(0.0, f64::max)
}

/// The reduction of every piece of a step: the step's global count of valid tokens, counted on
/// the host where the batch is cut (`Normalizer::from_count`).
pub fn global(batch: &Tokens) -> Reduction {
    Reduction::Normalizer(Normalizer::from_count(batch.count() as f64).expect("a count"))
}

/// The single-device reference: the whole batch on `device`, the token mean
/// (`Reduction::RowMean`, which is the normalizer of the whole step).
pub fn reference_grads(
    model: &KdStep,
    batch: &Tokens,
    device: &Device,
) -> Vec<(&'static str, Vec<f32>)> {
    let model = model.clone().fork(device);
    let shard = batch.shard(Reduction::RowMean, device);
    let grads = GradientsParams::from_grads(model.loss(&shard).backward(), &model);
    student_grads(&model, &grads)
}

/// One step of Burn's multi-device engine (`burn::train`'s `MultiDevicesTrainStep`, as
/// `ExecutionStrategy::MultiDevice` runs it): one worker per device, each computes its shard's
/// gradient; the gradients are moved to the main device (the first) and summed with Burn's
/// `GradientsAccumulator`. `parts[i]` are the rows of worker `i`.
pub fn engine_step(
    step: &MultiDevicesTrainStep<KdStep>,
    model: &KdStep,
    batch: &Tokens,
    parts: &[(usize, usize)],
    devices: &[Device],
    reduction: Reduction,
) -> GradientsParams {
    let mut loaders: Vec<Box<dyn DataLoaderIterator<Shard>>> = parts
        .iter()
        .zip(devices)
        .map(|(&(from, to), device)| {
            Box::new(Shards::new(vec![
                batch.slice(from, to).shard(reduction, device),
            ])) as Box<dyn DataLoaderIterator<Shard>>
        })
        .collect();
    let (outputs, _progress) = step
        .step(loaders.as_mut_slice(), model)
        .expect("every worker's step");
    assert_eq!(outputs.len(), devices.len(), "one output per worker");
    let mut accumulator = GradientsAccumulator::new();
    for output in outputs {
        accumulator.accumulate(model, output.output.grads.to_device(&devices[0], model));
    }
    accumulator.grads()
}

/// The student's gradients after one [`engine_step`] on fresh workers.
pub fn multi_device_grads(
    model: &KdStep,
    batch: &Tokens,
    parts: &[(usize, usize)],
    devices: &[Device],
    norm: Norm,
) -> Vec<(&'static str, Vec<f32>)> {
    let step = MultiDevicesTrainStep::<KdStep>::new(devices);
    let grads = engine_step(&step, model, batch, parts, devices, norm.reduction(batch));
    student_grads(model, &grads)
}

/// Gradient accumulation over micro-batches on one device (what Burn's `Learner` does with
/// `grads_accumulation(n)`): one backward pass per micro-batch, the gradients summed with
/// `GradientsAccumulator`, every micro-batch normalized by the step's count.
pub fn accumulated_grads(
    model: &KdStep,
    batch: &Tokens,
    parts: &[(usize, usize)],
    device: &Device,
    norm: Norm,
) -> Vec<(&'static str, Vec<f32>)> {
    let model = model.clone().fork(device);
    let reduction = norm.reduction(batch);
    let mut accumulator = GradientsAccumulator::new();
    for &(from, to) in parts {
        let shard = batch.slice(from, to).shard(reduction, device);
        let grads = GradientsParams::from_grads(model.loss(&shard).backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    student_grads(&model, &accumulator.grads())
}
