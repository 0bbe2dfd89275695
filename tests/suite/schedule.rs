//! `kd_losses::schedule`: schedules evaluated at a step, temperature schedules, and the learnable
//! temperature (moves under an optimizer, stays above its bound).

use crate::common::*;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{Divergence, divergence};
use kd_losses::schedule::{LearnableTemperatureConfig, Schedule, TemperatureSchedule};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn m2(rows: &[[f32; 4]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    floats(data, [rows.len(), 4], &dev())
}

#[test]
fn schedules_evaluate_at_a_step() {
    assert_eq!(Schedule::constant(2.0).value(1000), 2.0);
    let lin = Schedule::linear(4.0, 1.0, 3);
    assert_eq!(
        [lin.value(0), lin.value(1), lin.value(3), lin.value(9)],
        [4.0, 3.0, 1.0, 1.0]
    );
    let cos = Schedule::cosine(4.0, 2.0, 10);
    assert_eq!(cos.value(0), 4.0);
    assert!((cos.value(5) - 3.0).abs() < 1e-12);
    assert_eq!(cos.value(10), 2.0);
    let wu = Schedule::warm_up(4, 0.0, Schedule::linear(1.0, 0.0, 2));
    assert_eq!(
        [
            wu.value(0),
            wu.value(2),
            wu.value(4),
            wu.value(5),
            wu.value(6)
        ],
        [0.0, 0.5, 1.0, 0.5, 0.0]
    );
    assert!(Schedule::linear(0.0, f64::NAN, 2).validate().is_err());
    assert!(TemperatureSchedule::new(Schedule::warm_up(4, 0.0, Schedule::constant(2.0))).is_err());
    assert_eq!(
        TemperatureSchedule::new(Schedule::linear(4.0, -1.0, 2))
            .unwrap_err()
            .to_string(),
        "temperature must be finite and > 0, got -1"
    );
    let ts = TemperatureSchedule::new(Schedule::cosine(8.0, 1.0, 100)).unwrap();
    assert_eq!(ts.at(100).get(), 1.0);
}

#[test]
fn learnable_temperature_moves_and_stays_positive() {
    let device = dev();
    let mut module = LearnableTemperatureConfig::new()
        .with_initial(2.0)
        .with_min(0.05)
        .init(&device);
    assert!((module.value() - 2.0).abs() < 1e-5);
    let mut optim = AdamConfig::new().init();
    let s = m2(&[[2.0, 0.5, -1.0, 0.3], [0.0, 1.0, 0.0, -2.0]]);
    let t = m2(&[[-1.0, 0.0, 3.0, 1.0], [2.0, 0.5, 0.1, 0.0]]); // other argmax than the student
    // Maximise the divergence over T (CTKD's adversarial temperature): T shrinks towards the
    // bound, and must never cross it.
    let mut last = module.value();
    for step in 0..30 {
        let loss = divergence(
            s.clone(),
            t.clone(),
            Divergence::ForwardKl,
            module.temperature(),
            T2Scaling::Off,
        )
        .reduce(Reduction::RowMean)
        .neg();
        let grads = GradientsParams::from_grads(loss.backward(), &module);
        module = optim.step(0.1, module, grads);
        let now = module.value();
        assert!(now > 0.05, "step {step}: T = {now}");
        if step == 0 {
            assert!((now - last).abs() > 1e-3, "T did not move: {last} → {now}");
        }
        last = now;
    }
    assert!(last < 1.0, "T = {last}");
    // The module is a proper Burn module: one parameter.
    assert_eq!(module.num_params(), 1);
}
