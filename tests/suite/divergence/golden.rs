//! Golden tests, family c (reverse KL, generalized JSD with TRL's semantics, skew KL), loss and
//! gradient, on every backend of `common::devices()`.
//!
//! A case whose parameters this file cannot map fails the test rather than being skipped.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::divergence::{Divergence, JsdConvention, divergence};
use kd_losses::*;

fn finish(case: &Case, rows: RowLoss, device: &Device) -> (Tensor<1>, Vec<f32>) {
    golden_finish(case, rows, device, golden_reduction)
}

fn mask_of(case: &Case, device: &Device) -> Option<RowMask> {
    golden_row_mask(case, device)
}

/// Runs a dense divergence case of rank 2 or 3.
fn run_dense(case: &Case, backend: &str, device: &Device, d: Divergence) {
    let t = Temperature::new(case.param_f64("T")).unwrap();
    let mask = mask_of(case, device);
    macro_rules! go {
        ($d:literal) => {{
            let s = case.input("student").float::<$d>(device).require_grad();
            let te = case.input("teacher").float::<$d>(device);
            let rows = divergence(s.clone(), te, d, t, T2Scaling::Off).masked_opt(mask.as_ref());
            let (loss, v) = finish(case, rows, device);
            let g = s.grad(&loss.backward()).map(|g| g.flatten::<1>(0, $d - 1));
            check_golden_loss_grad(case, backend, &v, g);
        }};
    }
    match case.input("student").rank() {
        2 => go!(2),
        3 => go!(3),
        r => panic!("golden c: unmapped rank {r}"),
    }
}

#[test]
fn golden_c_reverse_kl() {
    let g = load_golden("c_reverse_kl.json");
    assert_eq!(g.family, "c_reverse_kl");
    for (backend, device) in devices() {
        for case in &g.cases {
            run_dense(case, backend, &device, Divergence::ReverseKl);
        }
        report("golden_c_reverse_kl", backend, g.cases.len());
    }
}

#[test]
fn golden_c_gjsd_trl() {
    let g = load_golden("c_gjsd.json");
    assert_eq!(g.family, "c_gjsd");
    for (backend, device) in devices() {
        for case in &g.cases {
            let d =
                Divergence::generalized_jsd(case.param_f64("beta"), JsdConvention::Trl).unwrap();
            run_dense(case, backend, &device, d);
        }
        report("golden_c_gjsd_trl", backend, g.cases.len());
    }
}

#[test]
fn golden_c_skew_kl() {
    let g = load_golden("c_skew_kl.json");
    assert_eq!(g.family, "c_skew_kl");
    // `distillm_code_loss` is a top-level field of the masked cases (not in `common::Case`).
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("c_skew_kl.json")).expect("c_skew_kl.json"),
    )
    .expect("json");
    let code_loss = |name: &str| -> Option<f64> {
        raw["cases"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?
            .get("distillm_code_loss")?
            .as_f64()
    };
    for (backend, device) in devices() {
        let mut offsets = 0;
        for case in &g.cases {
            let alpha = case.param_f64("alpha");
            let d = match case.param_str("kind") {
                Some("skew_fkl") => Divergence::skew_kl(alpha).unwrap(),
                Some("skew_rkl") => Divergence::skew_reverse_kl(alpha).unwrap(),
                other => panic!("golden c: unmapped skew kind {other:?}"),
            };
            run_dense(case, backend, &device, d);
            // DistiLLM's skewed_forward_kl = loss + mean teacher entropy over the kept rows.
            if let Some(code) = code_loss(&case.name) {
                let mask = mask_of(case, &device).expect("masked case");
                let te = case.input("teacher").float::<3>(&device);
                // H(p) = log V − KL(p ‖ uniform); a zero student is uniform.
                let kl_pu = divergence(
                    te.zeros_like(),
                    te,
                    Divergence::ForwardKl,
                    Temperature::new(case.param_f64("T")).unwrap(),
                    T2Scaling::Off,
                )
                .masked(&mask)
                .reduce(Reduction::RowMean);
                let v = case.input("student").shape[2] as f64;
                let mean_h = v.ln() - scalar(kl_pu);
                let ours = case.expected("loss").f64s()[0];
                // skew_rkl: DistiLLM's code value is the divergence itself.
                let offset = if matches!(d, Divergence::SkewKl { .. }) {
                    mean_h
                } else {
                    0.0
                };
                assert!(
                    (code - offset - ours).abs() < 1e-5,
                    "{}: DistiLLM offset is not the teacher entropy",
                    case.name
                );
                offsets += 1;
            }
        }
        assert!(offsets > 0, "no DistiLLM offset case checked");
        report("golden_c_skew_kl", backend, g.cases.len());
    }
}
