//! One door to the kernels: every public way to a logit loss — the free function reduced (after a
//! mask or not, every `Reduction` including the normalizer), the Module's `forward` /
//! `forward_masked`, `soft_loss`, `chunked_divergence`, `CrossEntropyLoss`, `DistillationLoss` — runs the fused kernel
//! where one serves the tensors (counted by `kd_losses::fused::kernel_runs`), and the composed
//! path elsewhere, with the value and student gradient of `RowLoss::reduce_composed`.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{DivergenceLossConfig, divergence, soft_loss};
use kd_losses::fused::kernel_runs;
use kd_losses::logits::CrossEntropyOptions;
use kd_losses::*;

/// One door: a name and the reduced loss it computes from tracked student logits.
type Door<'a> = (String, Box<dyn Fn(Tensor<3>) -> Tensor<1> + 'a>);

/// Runs `door` and the composed reference on the same inputs; checks that the kernel ran exactly
/// when `fused` says it serves the inputs, and that value and gradient agree.
fn check_door(
    name: &str,
    door: &Door,
    reference: &dyn Fn(Tensor<3>) -> Tensor<1>,
    s: &[f32],
    shape: [usize; 3],
    fused: bool,
    dev: &Device,
) {
    let run = |f: &dyn Fn(Tensor<3>) -> Tensor<1>| {
        let x = floats(s.to_vec(), shape, dev).require_grad();
        let before = kernel_runs();
        let loss = f(x.clone());
        let ran = kernel_runs() - before;
        let v = scalar(loss.clone());
        let g = to_vec(x.grad(&loss.backward()).expect("student gradient"));
        (ran, v, g)
    };
    let (ran, v, g) = run(&door.1);
    let (ran_ref, v_ref, g_ref) = run(reference);
    let what = format!("{name} {}", door.0);
    assert_eq!(ran_ref, 0, "{what}: the composed reference ran a kernel");
    assert_eq!(
        ran,
        u64::from(fused),
        "{what}: kernel runs {ran}, expected {} (fused available: {fused})",
        u64::from(fused)
    );
    let tol = 2e-5 * v_ref.abs().max(1.0);
    assert!(
        (v - v_ref).abs() <= tol,
        "{what}: value {v} vs composed {v_ref}"
    );
    let scale = g_ref.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-3);
    for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}: gradient[{i}] {a} vs composed {b}"
        );
    }
}

#[test]
fn every_door_of_every_divergence_reaches_the_kernel() {
    let (b, sq, v) = (2usize, 3usize, 29usize);
    let shape = [b, sq, v];
    let s = lcg(b * sq * v, 71, 4.0);
    let t = lcg(b * sq * v, 72, 4.0);
    for (name, dev) in devices() {
        let mut checks = 0;
        let teacher = || floats(t.clone(), shape, &dev);
        let mask = RowMask::new(bools(
            (0..b * sq).map(|i| i % 4 != 1).collect(),
            [b, sq],
            &dev,
        ));
        let temp = Temperature::new(2.0).unwrap();
        for d in every_divergence() {
            let fused = d.fused_available(&floats(s.clone(), shape, &dev));
            let module = DivergenceLossConfig::new(d)
                .with_temperature(2.0)
                .with_t2_scaling(true)
                .init();
            for (rn, red) in reductions() {
                for masked in [false, true] {
                    let m = masked.then_some(&mask);
                    let reference = |x: Tensor<3>| {
                        divergence(x, teacher(), d, temp, T2Scaling::On)
                            .masked_opt(m)
                            .reduce_composed(red)
                    };
                    let mut doors: Vec<Door> = vec![
                        (
                            "divergence(..).reduce".into(),
                            Box::new(|x| {
                                divergence(x, teacher(), d, temp, T2Scaling::On)
                                    .masked_opt(m)
                                    .reduce(red)
                            }),
                        ),
                        (
                            "soft_loss".into(),
                            Box::new(|x| soft_loss(x, teacher(), d, temp, T2Scaling::On, m, red)),
                        ),
                        (
                            "DivergenceLoss".into(),
                            Box::new(|x| match m {
                                Some(m) => module.forward_masked(x, teacher(), m, red),
                                None => module.forward(x, teacher(), red),
                            }),
                        ),
                    ];
                    // The chunked form is the same door (its chunks are the composed path's).
                    #[cfg(feature = "chunked")]
                    doors.push((
                        "chunked_divergence(..).reduce".into(),
                        Box::new(move |x| {
                            kd_losses::chunked::chunked_divergence(
                                x,
                                teacher(),
                                d,
                                temp,
                                T2Scaling::On,
                                4,
                            )
                            .masked_opt(m)
                            .reduce(red)
                        }),
                    ));
                    if d == Divergence::ForwardKl {
                        let kl = SoftKlLossConfig::new().with_temperature(2.0).init();
                        doors.push((
                            "soft_kl(..).reduce".into(),
                            Box::new(move |x| {
                                soft_kl(x, teacher(), temp, T2Scaling::On)
                                    .masked_opt(m)
                                    .reduce(red)
                            }),
                        ));
                        doors.push((
                            "SoftKlLoss".into(),
                            Box::new(move |x| match m {
                                Some(m) => kl.forward_masked(x, teacher(), m, red),
                                None => kl.forward(x, teacher(), red),
                            }),
                        ));
                    }
                    for door in &doors {
                        let what = format!("{name} {} {rn} mask={masked}", d.name());
                        check_door(&what, door, &reference, &s, shape, fused, &dev);
                        checks += 1;
                    }
                }
            }
        }
        report("doors_divergence", name, checks);
    }
}

#[test]
fn every_door_of_the_cross_entropy_reaches_the_kernel() {
    let (b, sq, v) = (2usize, 3usize, 29usize);
    let shape = [b, sq, v];
    let s = lcg(b * sq * v, 81, 4.0);
    let t = lcg(b * sq * v, 82, 4.0);
    for (name, dev) in devices() {
        let mut checks = 0;
        let fused = kd_losses::fused::fused_available(&floats(s.clone(), shape, &dev));
        // One ignored row (-100).
        let labels = || ints(vec![3, -100, 0, 28, 7, 11], [b, sq], &dev);
        let mask = RowMask::new(bools(
            vec![true, true, false, true, true, true],
            [b, sq],
            &dev,
        ));
        for smoothing in [0.0, 0.1] {
            let options = CrossEntropyOptions {
                label_smoothing: smoothing,
                ..CrossEntropyOptions::default()
            };
            let module = CrossEntropyLossConfig::new()
                .with_label_smoothing(smoothing)
                .init(&dev);
            for (rn, red) in reductions() {
                for masked in [false, true] {
                    let m = masked.then_some(&mask);
                    let reference = |x: Tensor<3>| {
                        cross_entropy(x, labels(), &options)
                            .masked_opt(m)
                            .reduce_composed(red)
                    };
                    let mut doors: Vec<Door> = vec![(
                        "cross_entropy(..).reduce".into(),
                        Box::new(|x| {
                            cross_entropy(x, labels(), &options)
                                .masked_opt(m)
                                .reduce(red)
                        }),
                    )];
                    if !masked {
                        doors.push((
                            "CrossEntropyLoss".into(),
                            Box::new(|x| module.forward(x, labels(), red)),
                        ));
                    }
                    for door in &doors {
                        let what = format!("{name} ε={smoothing} {rn} mask={masked}");
                        check_door(&what, door, &reference, &s, shape, fused, &dev);
                        checks += 1;
                    }
                }
            }
        }
        // The α-mix: one kernel pass for the three terms.
        for alpha in [0.0, 0.5, 1.0] {
            let kd = DistillationLossConfig::new()
                .with_temperature(2.0)
                .with_alpha(alpha)
                .init();
            for (rn, red) in reductions() {
                let door: Door = (
                    "DistillationLoss".into(),
                    Box::new(|x| {
                        kd.forward(x, floats(t.clone(), shape, &dev), labels(), red)
                            .total
                    }),
                );
                let reference = |x: Tensor<3>| {
                    distillation_loss_composed(
                        x,
                        floats(t.clone(), shape, &dev),
                        labels(),
                        &kd,
                        red,
                    )
                    .total
                };
                let what = format!("{name} α={alpha} {rn}");
                check_door(&what, &door, &reference, &s, shape, fused, &dev);
                checks += 1;
            }
        }
        report("doors_cross_entropy", name, checks);
    }
}

/// A class-weighted cross-entropy has no kernel: it takes the composed path on every backend.
#[test]
fn weighted_cross_entropy_stays_composed() {
    for (name, dev) in devices() {
        let x = floats(lcg(12, 5, 3.0), [3, 4], &dev).require_grad();
        let labels = ints(vec![0, 3, 1], [3], &dev);
        let options = CrossEntropyOptions {
            class_weights: Some(Tensor::<1>::from_floats([1.0, 2.0, 0.5, 1.5], &dev)),
            ..CrossEntropyOptions::default()
        };
        let before = kernel_runs();
        let a =
            scalar(cross_entropy(x.clone(), labels.clone(), &options).reduce(Reduction::RowMean));
        assert_eq!(kernel_runs(), before, "{name}: weighted CE ran a kernel");
        let b = scalar(cross_entropy(x, labels, &options).reduce_composed(Reduction::RowMean));
        assert_eq!(a, b, "{name}");
    }
}
