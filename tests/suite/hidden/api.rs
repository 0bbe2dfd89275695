//! API tests of the hidden-state losses: bad input panics with a pinned message, configuration
//! errors are typed, projections learn, and the teacher never receives a gradient.

use crate::common::*;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Bool, Device, Distribution, Tensor};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

// -------------------------------------------------------- shape misuse: each message pinned

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 3, 5] does not match student_hidden shape [2, 3, 4] (project the student to the teacher's width first)"
)]
fn hidden_mse_rejects_unprojected_widths() {
    let d = dev();
    hidden_mse(rand([2, 3, 4], &d), rand([2, 3, 5], &d));
}

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 4, 6] does not match student_hidden shape [2, 3, 6]"
)]
fn hidden_cosine_rejects_mismatched_sequence_lengths() {
    let d = dev();
    hidden_cosine(rand([2, 3, 6], &d), rand([2, 4, 6], &d));
}

#[test]
#[should_panic(
    expected = "student_hidden: shape [2, 3, 4] does not match the projection weight [in, out] = [3, 5] (last dimension must be 3)"
)]
fn projection_rejects_wrong_input_width() {
    let d = dev();
    let proj = HiddenProjectionConfig::new(3, 5).init(&d);
    proj.forward(rand([2, 3, 4], &d));
}

#[test]
#[should_panic(
    expected = "teacher_hidden: shape [2, 3, 6] does not match student_hidden shape [2, 3, 5]"
)]
fn projection_output_must_match_teacher_width() {
    let d = dev();
    let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(3, 5)).init(&d);
    loss.forward(
        rand([2, 3, 3], &d),
        rand([2, 3, 6], &d),
        Reduction::ElementMean,
    );
}

#[test]
#[should_panic(
    expected = "bias: shape [4] does not match the projection weight [in, out] = [3, 5]"
)]
fn projection_rejects_wrong_bias() {
    let d = dev();
    HiddenProjection::from_tensors(rand([3, 5], &d), Some(rand([4], &d)));
}

#[test]
#[should_panic(expected = "mask: shape [2, 4] does not match the loss rows [2, 3]")]
fn hidden_mask_must_match_tokens() {
    let d = dev();
    let mask = RowMask::new(Tensor::<2, Bool>::full([2, 4], true, &d));
    hidden_mse(rand([2, 3, 4], &d), rand([2, 3, 4], &d)).masked(&mask);
}

// --------------------------------------------------------------- typed configuration errors

#[test]
fn config_errors_are_typed() {
    let d = dev();
    assert_eq!(
        HiddenProjectionConfig::new(0, 5).try_init(&d).unwrap_err(),
        KdError::NotPositive {
            name: "d_student",
            value: 0.0
        }
    );
    assert!(HiddenProjectionConfig::new(3, 0).try_init(&d).is_err());
    assert!(MiniLmV2LossConfig::new(0).try_init().is_err());
    assert_eq!(
        RkdLossConfig::new()
            .with_angle_weight(-1.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        format!("angle_weight must be in [0, {}], got -1", f64::MAX)
    );
}

#[test]
fn projection_inits() {
    let d = Device::flex();
    let id = HiddenProjectionConfig::new(3, 5)
        .with_init(ProjectionInit::Identity)
        .init(&d);
    let w = to_vec(id.weight().unwrap());
    assert_eq!(
        w,
        vec![1., 0., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1., 0., 0.]
    );
    assert_eq!(to_vec(id.bias().unwrap()), vec![0.0; 5]);
    let z = HiddenProjectionConfig::new(3, 2)
        .with_bias(false)
        .with_init(ProjectionInit::Zeros)
        .init(&d);
    assert!(z.bias().is_none());
    assert!(to_vec(z.weight().unwrap()).iter().all(|&v| v == 0.0));
    let n = HiddenProjectionConfig::new(4, 4)
        .with_force(true)
        .with_init(ProjectionInit::Burn(burn::module::Initializer::Constant {
            value: 0.5,
        }))
        .init(&d);
    assert_eq!(n.dims(), Some((4, 4)));
    assert!(to_vec(n.weight().unwrap()).iter().all(|&v| v == 0.5));
    // Identity when widths match and no projection is forced: no parameters at all.
    let i = HiddenProjectionConfig::new(4, 4).init(&d);
    assert!(i.is_identity() && i.num_params() == 0);
    assert_eq!(HiddenProjectionConfig::new(3, 5).init(&d).num_params(), 20);
}

// --------------------------------------------------------------------------------- learning

#[derive(Module, Debug)]
struct Student {
    encoder: Linear,
    distill: HiddenLoss,
}

/// A few Adam steps on a fixed student input and teacher target lower the hidden loss; gradients
/// reach the projection and the student, never the teacher.
#[test]
fn projection_learns_with_the_student() {
    for (backend, device) in devices() {
        let x = rand([4, 3, 6], &device);
        let teacher = rand([4, 3, 10], &device).require_grad();
        let mut model = Student {
            encoder: LinearConfig::new(6, 5).init(&device),
            distill: HiddenLossConfig::new(HiddenProjectionConfig::new(5, 10)).init(&device),
        };
        let mut optim = AdamConfig::new().init();
        let loss_of = |m: &Student| {
            let h_s = m.encoder.forward(x.clone());
            m.distill
                .forward(h_s, teacher.clone(), Reduction::ElementMean)
        };
        let first = scalar(loss_of(&model));
        {
            let loss = loss_of(&model);
            let grads = loss.backward();
            assert!(
                model
                    .distill
                    .projection
                    .weight()
                    .unwrap()
                    .grad(&grads)
                    .is_some()
            );
            assert!(
                model
                    .distill
                    .projection
                    .bias()
                    .unwrap()
                    .grad(&grads)
                    .is_some()
            );
            assert!(model.encoder.weight.val().grad(&grads).is_some());
            assert!(
                teacher.grad(&grads).is_none(),
                "{backend}: the teacher got a gradient"
            );
        }
        for _ in 0..20 {
            let loss = loss_of(&model);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.05, model, grads);
        }
        let last = scalar(loss_of(&model));
        assert!(
            last < 0.8 * first,
            "{backend}: loss {first} -> {last} did not drop"
        );
        report("api_projection_learns", backend, 1);
    }
}

/// Per-pair projections are independent parameters, the shared one is a single parameter set,
/// and each pair's term is reported.
#[test]
fn layered_hidden_loss_reports_each_pair() {
    let d = dev();
    let map = LayerMap::uniform_with_embeddings(2, 4).unwrap();
    let cfg = HiddenProjectionConfig::new(3, 5);
    let shared = LayeredHiddenLoss::new(
        map.clone(),
        &cfg,
        ProjectionSharing::Shared,
        HiddenDistance::Mse,
        &d,
    )
    .unwrap();
    let per = LayeredHiddenLoss::new(
        map,
        &cfg,
        ProjectionSharing::PerPair,
        HiddenDistance::Mse,
        &d,
    )
    .unwrap();
    assert_eq!(shared.num_params(), 20);
    assert_eq!(per.num_params(), 60);
    let s: Vec<_> = (0..3).map(|_| rand([2, 4, 3], &d)).collect();
    let t: Vec<_> = (0..5).map(|_| rand([2, 4, 5], &d)).collect();
    let terms = per.forward(&s, &t, None, Reduction::ElementMean);
    let names: Vec<_> = terms.terms().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["hidden s0->t0", "hidden s1->t2", "hidden s2->t4"]);
    // Each term equals the single-layer loss with that pair's projection.
    for (k, &(m, n)) in per.map.pairs().iter().enumerate() {
        let single = HiddenLoss {
            projection: per.projection_for(k).clone(),
            distance: HiddenDistance::Mse,
        };
        let v = scalar(single.forward(s[m].clone(), t[n].clone(), Reduction::ElementMean));
        assert!((scalar(terms.terms()[k].value.clone()) - v).abs() < 1e-6);
    }
    let grads = terms.total().backward();
    for p in &per.projections {
        assert!(p.weight().unwrap().grad(&grads).is_some());
    }
}

#[test]
fn fully_masked_hidden_losses_are_zero_with_zero_gradients() {
    let d = dev();
    let none = RowMask::new(bools(vec![false; 6], [2, 3], &d));
    for dist in [
        HiddenDistance::Mse,
        HiddenDistance::Cosine,
        HiddenDistance::NormalizedMse,
    ] {
        let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(3, 4))
            .with_distance(dist)
            .init(&d);
        let h_s = rand([2, 3, 3], &d).require_grad();
        let l = loss.forward_masked(
            h_s.clone(),
            rand([2, 3, 4], &d),
            &none,
            Reduction::ElementMean,
        );
        assert_eq!(scalar(l.clone()), 0.0, "{dist:?}");
        let grads = l.backward();
        assert!(to_vec(h_s.grad(&grads).unwrap()).iter().all(|v| *v == 0.0));
        let gw = to_vec(loss.projection.weight().unwrap().grad(&grads).unwrap());
        assert!(gw.iter().all(|v| *v == 0.0), "{dist:?}: {gw:?}");
    }
}
