//! Logit scale and soft cap ([`LogitTransform`]): golden family `s_softcap` (the crate's own,
//! `tests/golden/own/`, float64, closed-form gradients) through `DistillationLoss` on the door
//! (the fused kernel on flex and wgpu) and the composed path, on every backend; the divergence
//! and top-k losses against the transform applied by hand; the configuration errors.

use std::sync::LazyLock;

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::DivergenceLossConfig;
use kd_losses::sparse::SparseKdLossConfig;
use kd_losses::*;

static DEVICES: LazyLock<Vec<(&'static str, Device)>> = LazyLock::new(devices);

fn transform(case: &Case, who: &str) -> LogitTransform {
    LogitTransform {
        scale: case.param_f64(&format!("{who}_scale")),
        softcap: case.params[format!("{who}_softcap")].as_f64(),
    }
    .validated()
    .expect("a valid golden transform")
}

/// The own golden file: `tests/golden/own/s_softcap.json`, or `$KD_GOLDEN_DIR/own/` when that
/// folder has it.
fn softcap_golden() -> GoldenFile {
    let own = golden_dir().join("own/s_softcap.json");
    if own.exists() {
        load_golden("own/s_softcap.json")
    } else {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/own/s_softcap.json");
        serde_json::from_str(&std::fs::read_to_string(&path).expect("s_softcap.json"))
            .expect("s_softcap.json parses")
    }
}

#[test]
fn golden_softcap_and_scale_door_and_composed() {
    let golden = softcap_golden();
    for (name, dev) in DEVICES.iter() {
        let mut checks = 0;
        for case in &golden.cases {
            assert_known_params(
                case,
                &[
                    "T",
                    "alpha",
                    "ignore_index",
                    "student_scale",
                    "student_softcap",
                    "teacher_scale",
                    "teacher_softcap",
                ],
            );
            let loss = DistillationLossConfig::new()
                .with_temperature(case.param_f64("T"))
                .with_alpha(case.param_f64("alpha"))
                .with_student_logits(transform(case, "student"))
                .with_teacher_logits(transform(case, "teacher"))
                .init();
            for composed in [false, true] {
                let s = case.input("student").float::<2>(dev).require_grad();
                let t = case.input("teacher").float::<2>(dev);
                let y = case.input("labels").int::<1>(dev);
                let out = if composed {
                    distillation_loss_composed(s.clone(), t, y, &loss, Reduction::RowMean)
                } else {
                    distillation_loss(s.clone(), t, y, &loss, Reduction::RowMean)
                };
                let value = to_vec(out.total.clone());
                let grads = out.total.backward();
                let g = s.grad(&grads).map(|g| g.flatten::<1>(0, 1));
                let path = if composed { "composed" } else { "door" };
                check_golden_loss_grad(case, &format!("{name}/{path}"), &value, g);
                checks += 2;
            }
        }
        report("softcap_golden", name, checks);
    }
}

/// `c · tanh(s·z / c)` by hand (±inf kept), independent of `LogitTransform::apply`.
fn by_hand(z: Tensor<2>, scale: f64, cap: f64) -> Tensor<2> {
    let inf = z.clone().is_inf();
    let capped = z
        .clone()
        .mul_scalar(scale)
        .div_scalar(cap)
        .tanh()
        .mul_scalar(cap);
    capped.mask_where(inf, z)
}

#[test]
fn divergence_and_topk_losses_apply_the_transforms() {
    for (name, dev) in DEVICES.iter() {
        let s = floats(lcg(4 * 9, 3, 40.0), [4, 9], dev);
        let t = floats(lcg(4 * 9, 4, 40.0), [4, 9], dev);
        let (cs, ct) = (12.0, 20.0);
        let st = LogitTransform::softcap(cs).unwrap();
        let tt = LogitTransform {
            scale: 1.5,
            softcap: Some(ct),
        };
        let temp = Temperature::new(2.0).unwrap();
        for d in [
            Divergence::ForwardKl,
            Divergence::ReverseKl,
            Divergence::generalized_jsd(0.3, JsdConvention::Trl).unwrap(),
        ] {
            let loss = DivergenceLossConfig::new(d)
                .with_temperature(2.0)
                .with_student_logits(st)
                .with_teacher_logits(tt)
                .init();
            let got = scalar(loss.forward(s.clone(), t.clone(), Reduction::RowMean));
            let want = scalar(
                divergence(
                    by_hand(s.clone(), 1.0, cs),
                    by_hand(t.clone(), 1.5, ct),
                    d,
                    temp,
                    T2Scaling::Off,
                )
                .reduce_composed(Reduction::RowMean),
            );
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{name} {d:?}: {got} vs {want}"
            );
        }
        // Top-k: the student's transform over the full vocabulary, the teacher's on its logits.
        let idx = ints(vec![0, 3, 5, 8, 1, 2, 7, 4], [4, 2], dev);
        let vals = floats(lcg(8, 9, 40.0), [4, 2], dev);
        let sparse = SparseKdLossConfig::new()
            .with_temperature(2.0)
            .with_student_logits(st)
            .with_teacher_logits(tt)
            .init(Divergence::ForwardKl);
        let got = scalar(sparse.forward(
            s.clone(),
            TopkTeacher::from_logits(idx.clone(), vals.clone()),
            Reduction::RowMean,
        ));
        let plain = SparseKdLossConfig::new()
            .with_temperature(2.0)
            .init(Divergence::ForwardKl);
        let want = scalar(plain.forward(
            by_hand(s.clone(), 1.0, cs),
            TopkTeacher::from_logits(idx, by_hand(vals, 1.5, ct)),
            Reduction::RowMean,
        ));
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name} top-k: {got} vs {want}"
        );
        report("softcap_divergences", name, 4);
    }
}

#[test]
fn invalid_transforms_are_typed_errors() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            LogitTransform::softcap(bad),
            Err(KdError::NotPositive {
                name: "softcap",
                ..
            })
        ));
        assert!(matches!(
            LogitTransform::scaled(bad),
            Err(KdError::NotPositive {
                name: "logit scale",
                ..
            })
        ));
        let t = LogitTransform {
            scale: 1.0,
            softcap: Some(bad),
        };
        assert!(
            DistillationLossConfig::new()
                .with_student_logits(t)
                .try_init()
                .is_err()
        );
        assert!(
            DivergenceLossConfig::new(Divergence::ForwardKl)
                .with_teacher_logits(t)
                .try_init()
                .is_err()
        );
        assert!(
            SparseKdLossConfig::new()
                .with_student_logits(t)
                .try_init(Divergence::ForwardKl)
                .is_err()
        );
    }
    assert!(LogitTransform::IDENTITY.is_identity());
    assert!(!LogitTransform::scaled(2.0).unwrap().is_identity());
}
