//! Data-parallel distillation with Burn's own multi-device engine, and the exact global
//! normalizer.
//!
//! Each device sees a different number of valid tokens. A per-device token mean, summed (Burn's
//! `MultiDevice` engine) or averaged (DDP with `Mean`) across devices, is not the token mean of
//! the whole batch: the tokens of the device with more padding count more. The fix is one
//! reduction: count the valid tokens of the **whole step** where the batch is cut, and reduce
//! every shard with `Reduction::Normalizer(Normalizer::from_count(count)?)`.
//!
//! This example runs a distillation step (`α·T²·KL(teacher ‖ student) + (1 − α)·CE`, a two-layer
//! student and a frozen teacher in one training module) with `burn::train`'s
//! `MultiDevicesTrainStep` — the step `ExecutionStrategy::MultiDevice` runs: one worker thread
//! per device, each forks the model to its device and returns its gradients, which are moved to
//! the main device and summed with Burn's `GradientsAccumulator` — on **two Flex devices**
//! in-process, with uneven padding (5 of 6 and 2 of 6 valid tokens). It checks that the summed
//! gradient equals the single-device gradient of the concatenated batch, shows how far the
//! per-device mean is from it, checks gradient accumulation over micro-batches (one of them
//! fully padded) the same way, then trains a few data-parallel steps.
//!
//! ```text
//! cargo run --release --all-features --example data_parallel
//! ```
//!
//! The last line is machine-readable: `devices=2 max_rel_grad_diff=..` (≤ 1e-5, or the example
//! fails). The test `train::data_parallel` in `tests/suite` runs the same checks.

#[path = "check.rs"]
mod check;

use burn::optim::AdamConfig;
use burn::tensor::Device;
use check::{KdStep, Norm, Tokens};

fn main() {
    let devices = vec![Device::flex().autodiff(), Device::flex().autodiff()];
    let main = devices[0].clone();
    main.seed(42);
    let model = KdStep::new(&main);

    // Four sequences of 3 positions; worker 0 gets rows 0..2 (3 + 2 = 5 of 6 valid),
    // worker 1 rows 2..4 (2 + 0 = 2 of 6 valid).
    let batch = Tokens::random(&[3, 2, 2, 0], 7);
    let parts = [(0, 2), (2, 4)];
    println!(
        "batch: {} sequences × {} positions, {} valid tokens; worker 0: {} valid, worker 1: {} valid",
        batch.rows,
        check::S,
        batch.count(),
        batch.slice(0, 2).count(),
        batch.slice(2, 4).count()
    );

    let reference = check::reference_grads(&model, &batch, &main);
    let global = check::multi_device_grads(&model, &batch, &parts, &devices, Norm::Global);
    let per_shard = check::multi_device_grads(&model, &batch, &parts, &devices, Norm::PerShard);
    let averaged: Vec<_> = per_shard
        .iter()
        .map(|(n, g)| (*n, g.iter().map(|v| v / devices.len() as f32).collect()))
        .collect();
    let accumulated = check::accumulated_grads(
        &model,
        &batch,
        &[(0, 1), (1, 2), (2, 3), (3, 4)],
        &main,
        Norm::Global,
    );

    let dp_diff = check::max_rel_diff(&global, &reference);
    let acc_diff = check::max_rel_diff(&accumulated, &reference);
    println!();
    println!("| gradient of the step | max relative difference to one device, whole batch |");
    println!("|---|---:|");
    println!(
        "| 2 workers, `Reduction::Normalizer(global count)`, summed by the engine | {dp_diff:.2e} |"
    );
    println!(
        "| 2 workers, per-worker token mean (`RowMean`), summed (MultiDevice) | {:.2e} |",
        check::max_rel_diff(&per_shard, &reference)
    );
    println!(
        "| 2 workers, per-worker token mean, averaged (DDP `Mean`) | {:.2e} |",
        check::max_rel_diff(&averaged, &reference)
    );
    println!("| 4 micro-batches (one fully padded), global count, accumulated | {acc_diff:.2e} |");
    assert!(
        dp_diff <= 1e-5,
        "data-parallel gradient differs by {dp_diff:e}"
    );
    assert!(
        acc_diff <= 1e-5,
        "accumulated gradient differs by {acc_diff:e}"
    );

    // A few data-parallel training steps: a fresh batch with random padding each step, the
    // summed gradients applied on the main device, as `ExecutionStrategy::MultiDevice` does.
    println!();
    let mut model = model;
    let mut optim = AdamConfig::new().init();
    let step = burn::train::train::MultiDevicesTrainStep::<KdStep>::new(&devices);
    // Four fixed batches of 8 sequences with random padding, visited in turn.
    let batches: Vec<Tokens> = (0..4u64)
        .map(|k| {
            let lens: Vec<usize> = (0..8).map(|r| (k as usize + r * 5) % 4).collect();
            Tokens::random(&lens, 100 + k)
        })
        .collect();
    let mean_loss = |model: &KdStep| {
        let total: f64 = batches
            .iter()
            .map(|b| {
                let whole = b.shard(kd_losses::Reduction::RowMean, &main);
                model.loss(&whole).into_scalar::<f64>()
            })
            .sum();
        total / batches.len() as f64
    };
    for i in 0..60usize {
        if i % 20 == 0 {
            println!(
                "step {i:>2}: loss (token mean per batch, mean over the 4 batches) {:.4}",
                mean_loss(&model)
            );
        }
        let batch = &batches[i % batches.len()];
        let grads = check::engine_step(
            &step,
            &model,
            batch,
            &[(0, 4), (4, 8)],
            &devices,
            check::global(batch),
        );
        model = optim.step(1e-2, model, grads);
    }
    println!(
        "step 60: loss (token mean per batch, mean over the 4 batches) {:.4}",
        mean_loss(&model)
    );

    println!();
    println!(
        "devices={} max_rel_grad_diff={:.2e}",
        devices.len(),
        dp_diff.max(acc_diff)
    );
}
