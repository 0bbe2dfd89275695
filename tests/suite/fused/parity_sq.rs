//! Parity of the fused squared-error kernel (hidden-state and attention-map MSE reduced through
//! `RowLoss::reduce`) with the composed path (`RowLoss::values`, which computes the rows with
//! Burn tensor operations): values and student gradients for every reduction, row masks (some
//! rows, every row), `±inf` attention scores, NaN, ±1e4, tails that are not a multiple of 8,
//! head reduction, the multi-threaded path, and scaled or reused losses (the backward scales the
//! gradient kept from the forward pass).
//!
//! On backends without the kernel (ndarray, wgpu) the same calls run composed; checked too.

use crate::common::*;
use burn::tensor::{Bool, Device, Tensor};
use kd_losses::attention::{HeadReduce, attention_mse_scores};
use kd_losses::hidden::hidden_mse;
use kd_losses::*;
use proptest::prelude::*;

fn close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: {g} vs NaN");
            continue;
        }
        let tol = rtol * w.abs() + 1e-6 * scale + 1e-30;
        assert!(
            (g - w).abs() <= tol || g == w,
            "{what}[{i}]: fused {g} vs composed {w}"
        );
    }
}

/// One loss builder: student leaf → row loss (the teacher and the mask are captured).
type Build<'a, const D: usize> = &'a dyn Fn(Tensor<D>) -> RowLoss;

/// Reduced value and student gradient of `build`, through `reduce` (fused where it runs) and
/// through the composed rows, for every reduction and an upstream scale. Returns the checks made.
fn check<const D: usize>(
    what: &str,
    s: &Tensor<D>,
    mask: Option<&RowMask>,
    build: Build<D>,
) -> usize {
    let mut checks = 0;
    for (name, red) in reductions() {
        for scale in [1.0f64, 3.0] {
            let leaf = s.clone().detach().require_grad();
            let loss = build(leaf.clone()).reduce(red).mul_scalar(scale);
            let grads = loss.backward();
            let (v1, g1) = (to_vec(loss), to_vec(leaf.grad(&grads).expect("grad")));

            let leaf = s.clone().detach().require_grad();
            let lazy = build(leaf.clone());
            let rows = RowLoss::new(lazy.values(), lazy.row_dims(), lazy.row_size());
            let rows = match mask {
                Some(m) => rows.masked(m),
                None => rows,
            };
            let loss = rows.reduce(red).mul_scalar(scale);
            let grads = loss.backward();
            let (v2, g2) = (to_vec(loss), to_vec(leaf.grad(&grads).expect("grad")));

            let what = format!("{what} {name} ×{scale}");
            close(&format!("{what} value"), &v1, &v2, 2e-5);
            if v2[0].is_finite() {
                close(&format!("{what} grad"), &g1, &g2, 2e-5);
            }
            checks += 2;
        }
    }
    checks
}

fn hidden_case(
    dev: &Device,
    dims: [usize; 3],
    seed: u64,
    scale: f32,
    mask: Option<Vec<bool>>,
) -> usize {
    let n = dims.iter().product();
    let s = floats(lcg(n, seed, scale), dims, dev);
    let t = floats(lcg(n, seed + 1, scale), dims, dev);
    let mask = mask.map(|m| RowMask::new(bools(m, [dims[0], dims[1]], dev)));
    let build = |x: Tensor<3>| hidden_mse(x, t.clone()).masked_opt(mask.as_ref());
    check(
        &format!("hidden {dims:?} seed {seed}"),
        &s,
        mask.as_ref(),
        &build,
    )
}

fn attention_case(dev: &Device, ds: [usize; 4], ht: usize, seed: u64, inf_every: usize) -> usize {
    let n: usize = ds.iter().product();
    let dt = [ds[0], ht, ds[2], ds[3]];
    let mut sv = lcg(n, seed, 6.0);
    let mut tv = lcg(dt.iter().product(), seed + 1, 6.0);
    if inf_every > 0 {
        // Masked scores: -inf in both at the same keys, and a few only in one of them.
        for (i, x) in sv.iter_mut().enumerate() {
            if i % inf_every == 3 {
                *x = f32::NEG_INFINITY;
            }
        }
        for (i, x) in tv.iter_mut().enumerate() {
            if i % inf_every == 3 || i % (2 * inf_every + 1) == 5 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    let s = floats(sv, ds, dev);
    let t = floats(tv, dt, dev);
    let heads = if ht == ds[1] {
        HeadReduce::Match
    } else {
        HeadReduce::Mean
    };
    let build = |x: Tensor<4>| attention_mse_scores(x, t.clone(), None, heads);
    check(
        &format!("attention {ds:?}/{ht} seed {seed}"),
        &s,
        None,
        &build,
    )
}

#[test]
fn sq_fused_matches_composed_hidden() {
    for (name, dev) in devices() {
        let mut checks = 0;
        checks += hidden_case(&dev, [2, 5, 13], 1, 1.0, None);
        checks += hidden_case(&dev, [3, 4, 64], 2, 1e4, None);
        let m: Vec<bool> = (0..10).map(|i| i % 3 != 1).collect();
        checks += hidden_case(&dev, [2, 5, 13], 3, 2.0, Some(m));
        checks += hidden_case(&dev, [2, 5, 13], 4, 2.0, Some(vec![false; 10]));
        // 65 536 entries: the multi-threaded path on the CPU.
        let m: Vec<bool> = (0..256).map(|i| i % 5 != 0).collect();
        checks += hidden_case(&dev, [4, 64, 256], 5, 3.0, Some(m));
        report("parity_sq_hidden", name, checks);
    }
}

#[test]
fn sq_fused_matches_composed_attention() {
    for (name, dev) in devices() {
        let mut checks = 0;
        checks += attention_case(&dev, [2, 3, 6, 6], 3, 1, 0);
        checks += attention_case(&dev, [2, 3, 6, 6], 3, 2, 7);
        checks += attention_case(&dev, [2, 4, 5, 5], 2, 3, 4);
        checks += attention_case(&dev, [2, 4, 64, 64], 4, 4, 11);
        report("parity_sq_attention", name, checks);
    }
}

#[test]
fn sq_fused_nan_and_fully_masked() {
    for (name, dev) in devices() {
        let (b, s_len, d) = (2, 3, 9);
        let mut sv = lcg(b * s_len * d, 9, 1.0);
        sv[d + 2] = f32::NAN; // row 1
        let s = floats(sv, [b, s_len, d], &dev).require_grad();
        let t = floats(lcg(b * s_len * d, 10, 1.0), [b, s_len, d], &dev);
        // A NaN in a kept row propagates.
        let v = scalar(hidden_mse(s.clone(), t.clone()).reduce(Reduction::RowMean));
        assert!(v.is_nan(), "{name}: NaN row kept: {v}");
        // Masked, it leaves no trace in the value or the gradient.
        let keep = Tensor::<2, Bool>::from_data([[true, false, true], [true, true, true]], &dev);
        let loss = hidden_mse(s.clone(), t.clone())
            .masked(&RowMask::new(keep))
            .reduce(Reduction::RowMean);
        let grads = loss.backward();
        let v = to_vec(loss)[0];
        let g = to_vec(s.grad(&grads).expect("grad"));
        assert!(v.is_finite(), "{name}: masked NaN row: {v}");
        // The fused kernel skips the row: a zero gradient. The composed path multiplies the
        // zero upstream gradient by the NaN (`0 · NaN`), as PyTorch does.
        if name == "flex" {
            assert!(g.iter().all(|x| x.is_finite()), "{name}: gradient");
            assert!(g[d..2 * d].iter().all(|&x| x == 0.0), "{name}: masked row");
        }
        // Every row masked: 0 with a zero gradient.
        let none = Tensor::<2, Bool>::from_data([[false; 3]; 2], &dev);
        let s = floats(lcg(b * s_len * d, 11, 1e4), [b, s_len, d], &dev).require_grad();
        let loss = hidden_mse(s.clone(), t)
            .masked(&RowMask::new(none))
            .reduce(Reduction::RowMean);
        let grads = loss.backward();
        assert_eq!(to_vec(loss)[0], 0.0, "{name}");
        let g = to_vec(s.grad(&grads).expect("grad"));
        assert!(g.iter().all(|&x| x == 0.0), "{name}: fully masked gradient");
        report("parity_sq_edges", name, 3);
    }
}

proptest! {
    // 32 cases in CI; PROPTEST_CASES=N runs more. Failing seeds are kept (and replayed) in
    // the `.proptest-regressions` file next to this one.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        failure_persistence: regressions_beside_source(),
        .. ProptestConfig::default()
    })]

    /// Random hidden shapes, scales and masks on flex (the fused backend).
    #[test]
    fn sq_fused_matches_composed_random(
        b in 1usize..4,
        s in 1usize..6,
        d in 1usize..40,
        seed in 0u64..1_000_000,
        scale in prop_oneof![Just(1.0f32), Just(30.0), Just(1e4)],
        masked in any::<bool>(),
    ) {
        let dev = Device::flex().autodiff();
        let mask = masked.then(|| (0..b * s).map(|i| (seed as usize + i) % 3 != 0).collect());
        hidden_case(&dev, [b, s, d], seed, scale, mask);
    }
}
