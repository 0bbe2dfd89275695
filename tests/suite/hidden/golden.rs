//! Golden tests of the hidden-state losses: families f (hidden-state MSE with a projection) and i
//! (cosine, DistilBERT), loss and every gradient (including the projection's `W` and `b`), on
//! every backend of `common::devices()`.
//!
//! The reference folder is `tests/golden` or `$KD_GOLDEN_DIR`. A case whose parameters this
//! file cannot map fails the test rather than being skipped.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::*;

fn mask_of(case: &Case, device: &Device) -> Option<RowMask> {
    case.inputs
        .get("mask")
        .map(|m| RowMask::new(m.boolean::<2>(device)))
}

#[test]
fn golden_f_hidden_mse() {
    let g = load_golden("f_hidden_mse.json");
    assert_eq!(g.family, "f_hidden_mse");
    for (backend, device) in devices() {
        let mut checks = 0;
        for case in &g.cases {
            assert_known_params(case, &[]);
            let h_s = case.input("h_s").float::<3>(&device).require_grad();
            let h_t = case.input("h_t").float::<3>(&device);
            let projection = match (case.inputs.get("W"), case.inputs.get("b")) {
                (Some(w), b) => HiddenProjection::from_tensors(
                    w.float::<2>(&device),
                    b.map(|b| b.float::<1>(&device)),
                ),
                (None, None) => HiddenProjection::identity(),
                (None, Some(_)) => panic!("{}: bias without weight", case.name),
            };
            let loss_fn = HiddenLoss {
                projection,
                distance: HiddenDistance::Mse,
            };
            let loss = match mask_of(case, &device) {
                Some(m) => loss_fn.forward_masked(h_s.clone(), h_t, &m, Reduction::ElementMean),
                None => loss_fn.forward(h_s.clone(), h_t, Reduction::ElementMean),
            };
            check_golden_output(case, backend, "loss", Some(to_vec(loss.clone())));
            let grads = loss.backward();
            check_golden_output(case, backend, "grad_h_s", h_s.grad(&grads).map(to_vec));
            let mut expected_keys = 2;
            if case.expected.contains_key("grad_W") {
                let w = loss_fn.projection.weight().expect("projection weight");
                check_golden_output(case, backend, "grad_W", w.grad(&grads).map(to_vec));
                expected_keys += 1;
            }
            if case.expected.contains_key("grad_b") {
                let b = loss_fn.projection.bias().expect("projection bias");
                check_golden_output(case, backend, "grad_b", b.grad(&grads).map(to_vec));
                expected_keys += 1;
            }
            assert_eq!(
                expected_keys,
                case.expected.len(),
                "{}: an expected output was not checked",
                case.name
            );
            checks += 1;
        }
        assert_eq!(checks, g.cases.len());
        report("golden_f_hidden_mse", backend, checks);
    }
}

#[test]
fn golden_i_cosine() {
    let g = load_golden("i_cosine.json");
    assert_eq!(g.family, "i_cosine");
    for (backend, device) in devices() {
        let mut checks = 0;
        for case in &g.cases {
            assert_known_params(case, &["reduction"]);
            let h_s = case.input("h_s").float::<3>(&device).require_grad();
            let h_t = case.input("h_t").float::<3>(&device);
            let rows = hidden_cosine(h_s.clone(), h_t).masked_opt(mask_of(case, &device).as_ref());
            let reduction = case.param_str("reduction").expect("reduction");
            let (loss, value): (Tensor<1>, Vec<f32>) = match reduction {
                "mean" | "masked_mean" => {
                    let l = rows.reduce(Reduction::RowMean);
                    let v = to_vec(l.clone());
                    (l, v)
                }
                "none" => {
                    let values = rows.values();
                    let v = to_vec(values.clone());
                    let cot = case.cotangent.as_ref().expect("cotangent");
                    let n = cot.data.len();
                    (values.mul(floats(cot.f32s(), [n], &device)).sum(), v)
                }
                other => panic!("{}: unmapped reduction {other:?}", case.name),
            };
            check_golden_output(case, backend, "loss", Some(value));
            let grads = loss.backward();
            check_golden_output(case, backend, "grad_h_s", h_s.grad(&grads).map(to_vec));
            assert_eq!(
                case.expected.len(),
                2,
                "{}: an expected output was not checked",
                case.name
            );
            checks += 1;
        }
        assert_eq!(checks, g.cases.len());
        report("golden_i_cosine", backend, checks);
    }
}

#[test]
fn golden_i_cosine_module_with_identity_projection() {
    // HiddenLoss with the cosine distance and matching widths is the plain cosine loss.
    let g = load_golden("i_cosine.json");
    for (backend, device) in devices() {
        let mut checks = 0;
        for case in g
            .cases
            .iter()
            .filter(|c| c.param_str("reduction") != Some("none"))
        {
            let loss = HiddenLossConfig::new(HiddenProjectionConfig::new(6, 6))
                .with_distance(HiddenDistance::Cosine)
                .init(&device);
            assert!(loss.projection.is_identity());
            let h_s = case.input("h_s").float::<3>(&device);
            let h_t = case.input("h_t").float::<3>(&device);
            let v = match mask_of(case, &device) {
                Some(m) => loss.forward_masked(h_s, h_t, &m, Reduction::RowMean),
                None => loss.forward(h_s, h_t, Reduction::RowMean),
            };
            assert_close(
                &format!("{backend}/{}/module", case.name),
                &to_vec(v),
                &case.expected("loss").f64s(),
                F32_GOLDEN_RTOL,
            );
            checks += 1;
        }
        report("golden_i_cosine_module", backend, checks);
    }
}
