//! Golden tests of the feature losses: families f (hidden-state MSE with a projection), g
//! (attention-map MSE, TextBrewer conventions) and i (cosine, DistilBERT), loss and every
//! gradient (including the projection's `W` and `b`), on every backend of `common::devices()`.
//!
//! The reference folder is `tests/golden` or `$KD_GOLDEN_DIR`. A case whose parameters this
//! file cannot map fails the test rather than being skipped.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use kd_losses::prelude::*;

fn check(case: &Case, backend: &str, key: &str, got: Option<Vec<f32>>) {
    let got = got.unwrap_or_else(|| panic!("{backend}/{}: no value for {key}", case.name));
    assert_close(
        &format!("{backend}/{}/{key}", case.name),
        &got,
        &case.expected(key).f64s(),
        F32_GOLDEN_RTOL,
    );
}

fn mask_of(case: &Case, device: &Device) -> Option<RowMask> {
    case.inputs
        .get("mask")
        .map(|m| RowMask::new(m.boolean::<2>(device)))
}

fn assert_known_params(case: &Case, known: &[&str]) {
    if let Some(obj) = case.params.as_object() {
        for k in obj.keys() {
            assert!(
                known.contains(&k.as_str()),
                "golden case {}: unmapped param {k:?}",
                case.name
            );
        }
    }
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
            check(case, backend, "loss", Some(to_vec(loss.clone())));
            let grads = loss.backward();
            check(case, backend, "grad_h_s", h_s.grad(&grads).map(to_vec));
            let mut expected_keys = 2;
            if case.expected.contains_key("grad_W") {
                let w = loss_fn.projection.weight().expect("projection weight");
                check(case, backend, "grad_W", w.grad(&grads).map(to_vec));
                expected_keys += 1;
            }
            if case.expected.contains_key("grad_b") {
                let b = loss_fn.projection.bias().expect("projection bias");
                check(case, backend, "grad_b", b.grad(&grads).map(to_vec));
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
fn golden_g_attention_mse() {
    let g = load_golden("g_attention_mse.json");
    assert_eq!(g.family, "g_attention_mse");
    for (backend, device) in devices() {
        let mut checks = 0;
        for case in &g.cases {
            assert_known_params(case, &["head_reduce", "threshold", "textbrewer"]);
            let heads = match case.param_str("head_reduce") {
                None => HeadReduce::Match,
                Some("mean") => HeadReduce::Mean,
                Some("sum") => HeadReduce::Sum,
                Some(other) => panic!("{}: unmapped head_reduce {other:?}", case.name),
            };
            if let Some(tb) = case.param_str("textbrewer") {
                assert_eq!(
                    tb, "att_mse_sum_loss",
                    "{}: unmapped textbrewer fn",
                    case.name
                );
            }
            let a_s = case.input("a_s").float::<4>(&device).require_grad();
            let a_t = case.input("a_t").float::<4>(&device);
            let mask = case.inputs.get("mask").map(|m| m.boolean::<2>(&device));
            let threshold = case.params.get("threshold").and_then(|v| v.as_f64());
            let rows = match threshold {
                Some(th) => attention_mse_textbrewer(a_s.clone(), a_t, mask, heads, th),
                // The golden maps have no -inf entries, so the score and probability forms agree;
                // the name says which one the case stores.
                None if case.name.contains("scores") => {
                    attention_mse_scores(a_s.clone(), a_t, mask, heads)
                }
                None => attention_mse_probs(a_s.clone(), a_t, mask, heads),
            };
            let loss = rows.reduce(Reduction::Mean);
            check(case, backend, "loss", Some(to_vec(loss.clone())));
            let grads = loss.backward();
            check(case, backend, "grad_a_s", a_s.grad(&grads).map(to_vec));
            assert_eq!(
                case.expected.len(),
                2,
                "{}: an expected output was not checked",
                case.name
            );
            checks += 1;
        }
        assert_eq!(checks, g.cases.len());
        report("golden_g_attention_mse", backend, checks);
    }
}

#[test]
fn golden_g_module_matches_function() {
    // The module form gives the same values as the function it wraps, on the golden inputs.
    let g = load_golden("g_attention_mse.json");
    for (backend, device) in devices() {
        let mut checks = 0;
        for case in g
            .cases
            .iter()
            .filter(|c| c.params.get("threshold").is_none())
        {
            let heads = match case.param_str("head_reduce") {
                Some("mean") => HeadReduce::Mean,
                _ => HeadReduce::Match,
            };
            let a_s = case.input("a_s").float::<4>(&device);
            let a_t = case.input("a_t").float::<4>(&device);
            let mask = case.inputs.get("mask").map(|m| m.boolean::<2>(&device));
            let loss = AttentionMseLossConfig::new().with_heads(heads).init();
            let v = to_vec(loss.forward_probs(a_s, a_t, mask, Reduction::Mean));
            assert_close(
                &format!("{backend}/{}/module", case.name),
                &v,
                &case.expected("loss").f64s(),
                F32_GOLDEN_RTOL,
            );
            checks += 1;
        }
        report("golden_g_module_matches_function", backend, checks);
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
                    let l = rows.reduce(Reduction::Mean);
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
            check(case, backend, "loss", Some(value));
            let grads = loss.backward();
            check(case, backend, "grad_h_s", h_s.grad(&grads).map(to_vec));
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
                Some(m) => loss.forward_masked(h_s, h_t, &m, Reduction::Mean),
                None => loss.forward(h_s, h_t, Reduction::Mean),
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
