//! Training loops: data-parallel training with Burn's multi-device engine and gradient
//! accumulation, normalized by the step's global count (`Normalizer::from_count`). The step and
//! the checks are `examples/data_parallel/check.rs`, shared with the example.

#[path = "../../examples/data_parallel/check.rs"]
#[allow(dead_code)]
mod check;

use burn::tensor::Device;
use check::{KdStep, Norm, Tokens};
use kd_losses::{KdError, Normalizer};

use crate::common::{devices, report};

/// Worker 0: 5 of 6 valid tokens; worker 1: 2 of 6 (one sequence fully padded).
const LENS: [usize; 4] = [3, 2, 2, 0];
const PARTS: [(usize, usize); 2] = [(0, 2), (2, 4)];
const MICRO: [(usize, usize); 4] = [(0, 1), (1, 2), (2, 3), (3, 4)];

fn setup(device: &Device) -> (KdStep, Tokens) {
    device.seed(42);
    (KdStep::new(device), Tokens::random(&LENS, 7))
}

#[test]
fn multi_device_sum_with_the_global_count_is_the_whole_batch_gradient() {
    for (name, device) in devices() {
        let (model, batch) = setup(&device);
        let two = vec![device.clone(), device.clone()];
        let reference = check::reference_grads(&model, &batch, &device);
        let global = check::multi_device_grads(&model, &batch, &PARTS, &two, Norm::Global);
        let diff = check::max_rel_diff(&global, &reference);
        assert!(diff <= 1e-5, "{name}: summed gradient off by {diff:e}");
        // The check can fail: the per-worker token mean is far from it on this batch.
        let per_shard = check::multi_device_grads(&model, &batch, &PARTS, &two, Norm::PerShard);
        let naive = check::max_rel_diff(&per_shard, &reference);
        assert!(
            naive > 0.1,
            "{name}: per-worker mean only {naive:e} off: padding not uneven?"
        );
        report("train::multi_device", name, 2);
    }
}

#[test]
fn accumulation_with_the_global_count_is_the_whole_batch_gradient() {
    for (name, device) in devices() {
        let (model, batch) = setup(&device);
        let reference = check::reference_grads(&model, &batch, &device);
        let acc = check::accumulated_grads(&model, &batch, &MICRO, &device, Norm::Global);
        let diff = check::max_rel_diff(&acc, &reference);
        assert!(diff <= 1e-5, "{name}: accumulated gradient off by {diff:e}");
        let naive = check::accumulated_grads(&model, &batch, &MICRO, &device, Norm::PerShard);
        let naive = check::max_rel_diff(&naive, &reference);
        assert!(
            naive > 0.1,
            "{name}: per-micro-batch mean only {naive:e} off"
        );
        report("train::accumulation", name, 2);
    }
}

#[test]
fn a_fully_padded_step_gives_zero_loss_and_zero_gradient() {
    for (name, device) in devices() {
        device.seed(3);
        let model = KdStep::new(&device);
        let batch = Tokens::random(&[0, 0], 5);
        let shard = batch.shard(check::global(&batch), &device);
        let loss = model.loss(&shard);
        assert_eq!(loss.clone().into_scalar::<f64>(), 0.0, "{name}");
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        for (param, g) in check::student_grads(&model, &grads) {
            assert!(
                g.iter().all(|v| *v == 0.0),
                "{name}: {param} gradient not zero"
            );
        }
    }
}

#[test]
fn normalizer_from_a_count() {
    assert_eq!(Normalizer::from_count(7.0).unwrap().get(), 7.0);
    assert_eq!(Normalizer::from_count(0.0).unwrap().get(), 1.0);
    assert!(matches!(
        Normalizer::from_count(-1.0),
        Err(KdError::NotPositive { .. })
    ));
    assert!(matches!(
        Normalizer::from_count(f64::NAN),
        Err(KdError::NotFinite { .. })
    ));
    assert_eq!(
        Normalizer::from_count(7.0)
            .unwrap()
            .for_averaged_gradients(2)
            .get(),
        3.5
    );
}

#[test]
#[should_panic(expected = "world_size")]
fn averaged_gradients_need_a_world() {
    let _ = Normalizer::from_count(7.0)
        .unwrap()
        .for_averaged_gradients(0);
}
