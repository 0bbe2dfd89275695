//! Golden tests of the attention losses: family g (attention-map MSE, TextBrewer conventions),
//! loss and gradient, on every backend of `common::devices()`.
//!
//! The reference folder is `tests/golden` or `$KD_GOLDEN_DIR`. A case whose parameters this
//! file cannot map fails the test rather than being skipped.

use crate::common::*;
use kd_losses::*;

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
            let loss = rows.reduce(Reduction::RowMean);
            check_golden_output(case, backend, "loss", Some(to_vec(loss.clone())));
            let grads = loss.backward();
            check_golden_output(case, backend, "grad_a_s", a_s.grad(&grads).map(to_vec));
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
            let v = to_vec(loss.forward_probs(a_s, a_t, mask, Reduction::RowMean));
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
