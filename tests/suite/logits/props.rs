//! Property tests of the logit losses (proptest, 64+ cases each on the CPU backends, one in
//! `WGPU_CASE_STRIDE` on wgpu).

use std::sync::LazyLock;

use crate::common::strategies::*;
use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::*;
use proptest::prelude::*;

static DEVICES: LazyLock<Vec<(&'static str, Device)>> = LazyLock::new(devices);

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn temp(t: f64) -> Temperature {
    Temperature::new(t).unwrap()
}

fn soft(s: Tensor<2>, t: Tensor<2>, tt: f64) -> RowLoss {
    soft_kl(s, t, temp(tt), T2Scaling::On)
}

/// f64 host reference of `T² · KL(p ‖ q)` per row.
fn soft_ref(s: &[f32], t: &[f32], r: usize, c: usize, tt: f64) -> Vec<f64> {
    let lsm = |x: &[f32]| -> Vec<f64> {
        let z: Vec<f64> = x.iter().map(|&v| v as f64 / tt).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
        z.iter().map(|v| v - l).collect()
    };
    (0..r)
        .map(|i| {
            let lq = lsm(&s[i * c..(i + 1) * c]);
            let lp = lsm(&t[i * c..(i + 1) * c]);
            tt * tt
                * lp.iter()
                    .zip(&lq)
                    .map(|(a, b)| {
                        if a.exp() == 0.0 {
                            0.0
                        } else {
                            a.exp() * (a - b)
                        }
                    })
                    .sum::<f64>()
        })
        .collect()
}

proptest! {
    #![proptest_config(cfg())]

    /// KL ≥ 0 per row, and the value matches an f64 host reference.
    #[test]
    fn kl_is_nonnegative((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE) {
        let expected = soft_ref(&s, &t, r, c, tt);
        for (_, d) in case_devices(&DEVICES) {
            let rows = to_vec(soft(floats(s.clone(), [r, c], d), floats(t.clone(), [r, c], d), tt).values());
            for (i, v) in rows.iter().enumerate() {
                prop_assert!(*v >= -1e-5, "row {i}: {v} < 0");
            }
            assert_close("kl vs f64 reference", &rows, &expected, 1e-4);
        }
    }

    /// KL(x, x) = 0 with zero gradient.
    #[test]
    fn kl_of_identical_inputs_is_zero((r, c, s) in logits(LOGIT_RANGE), tt in T_RANGE) {
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let loss = soft(x.clone(), floats(s.clone(), [r, c], d), tt).reduce(Reduction::Sum);
            prop_assert!(scalar(loss.clone()).abs() < 1e-4);
            let g = to_vec(x.grad(&loss.backward()).unwrap());
            prop_assert!(g.iter().all(|v| v.abs() < 1e-5), "{g:?}");
        }
    }

    /// Adding a per-row constant to either side changes nothing.
    #[test]
    fn invariant_to_row_shift((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE,
                              shift in prop::collection::vec(-50.0f32..50.0, 5)) {
        let shifted: Vec<f32> = s.iter().enumerate().map(|(k, v)| v + shift[k / c]).collect();
        let shifted_t: Vec<f32> = t.iter().enumerate().map(|(k, v)| v - shift[k / c]).collect();
        for (_, d) in case_devices(&DEVICES) {
            let a = to_vec(soft(floats(s.clone(), [r, c], d), floats(t.clone(), [r, c], d), tt).values());
            let b = to_vec(soft(floats(shifted.clone(), [r, c], d), floats(shifted_t.clone(), [r, c], d), tt).values());
            let a64: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            assert_close("shifted", &b, &a64, 1e-3);
        }
    }

    /// ∂(mean soft loss)/∂student = T · (q − p) / R, computed independently on the host.
    #[test]
    fn gradient_is_analytic((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE) {
        let sm = |x: &[f32]| -> Vec<f64> {
            let z: Vec<f64> = x.iter().map(|&v| v as f64 / tt).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        let mut expected = Vec::new();
        for i in 0..r {
            let q = sm(&s[i * c..(i + 1) * c]);
            let p = sm(&t[i * c..(i + 1) * c]);
            expected.extend(q.iter().zip(&p).map(|(q, p)| tt * (q - p) / r as f64));
        }
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let loss = soft(x.clone(), floats(t.clone(), [r, c], d), tt).reduce(Reduction::RowMean);
            let g = to_vec(x.grad(&loss.backward()).unwrap());
            assert_close("grad", &g, &expected, 1e-4);
        }
    }

    /// Central finite differences agree with autodiff for the combined KD + CE loss.
    #[test]
    fn finite_difference_gradient((r, c, s, t) in logit_pair(-3.0f32..3.0), tt in 0.5f64..4.0,
                                  alpha in 0.0f64..1.0, label_seed in 0usize..1000) {
        let labels: Vec<i64> = (0..r).map(|i| ((label_seed + 7 * i) % c) as i64).collect();
        let kd = DistillationLossConfig::new().with_temperature(tt).with_alpha(alpha).init();
        let (_, d) = &DEVICES[0];
        let f = |v: &[f32]| -> f64 {
            let out = kd.forward(floats(v.to_vec(), [r, c], d), floats(t.clone(), [r, c], d),
                                 ints(labels.clone(), [r], d), Reduction::Sum);
            scalar(out.total)
        };
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let out = kd.forward(x.clone(), floats(t.clone(), [r, c], d), ints(labels.clone(), [r], d), Reduction::Sum);
            let g = to_vec(x.grad(&out.total.backward()).unwrap());
            for k in 0..s.len() {
                let mut up = s.clone();
                let mut dn = s.clone();
                up[k] += FD_STEP as f32;
                dn[k] -= FD_STEP as f32;
                let fd = (f(&up) - f(&dn)) / (2.0 * FD_STEP);
                let tol = FD_RTOL * fd.abs().max(1.0) + 1e-3;
                prop_assert!((g[k] as f64 - fd).abs() <= tol, "entry {k}: autodiff {} vs fd {fd}", g[k]);
            }
        }
    }

    /// `Sum / R == Mean` for the soft loss and the cross-entropy.
    #[test]
    fn sum_over_rows_is_mean((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE) {
        let labels: Vec<i64> = (0..r).map(|i| (i % c) as i64).collect();
        for (_, d) in case_devices(&DEVICES) {
            let rows = soft(floats(s.clone(), [r, c], d), floats(t.clone(), [r, c], d), tt);
            let sum = scalar(rows.clone().reduce(Reduction::Sum));
            let mean = scalar(rows.reduce(Reduction::RowMean));
            prop_assert!((sum / r as f64 - mean).abs() <= 1e-5 * mean.abs().max(1.0));
            let ce = cross_entropy(floats(s.clone(), [r, c], d), ints(labels.clone(), [r], d), &CrossEntropyOptions::default());
            let sum = scalar(ce.clone().reduce(Reduction::Sum));
            let mean = scalar(ce.reduce(Reduction::RowMean));
            prop_assert!((sum / r as f64 - mean).abs() <= 1e-5 * mean.abs().max(1.0));
        }
    }

    /// A masked loss equals the loss of the kept rows alone (value and gradient), and
    /// dropped rows get a zero gradient.
    #[test]
    fn masked_equals_sliced((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE,
                            keep in prop::collection::vec(any::<bool>(), 5)) {
        let keep = &keep[..r];
        let pick = |x: &[f32]| -> Vec<f32> {
            (0..r).filter(|&i| keep[i]).flat_map(|i| x[i * c..(i + 1) * c].to_vec()).collect()
        };
        let kept = keep.iter().filter(|&&k| k).count();
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let mask = RowMask::new(bools(keep.to_vec(), [r], d));
            let masked = soft(x.clone(), floats(t.clone(), [r, c], d), tt).masked(&mask).reduce(Reduction::RowMean);
            let mv = scalar(masked.clone());
            let g = to_vec(x.grad(&masked.backward()).unwrap());
            if kept == 0 {
                prop_assert_eq!(mv, 0.0);
                prop_assert!(g.iter().all(|v| *v == 0.0));
                continue;
            }
            let xs = floats(pick(&s), [kept, c], d).require_grad();
            let sliced = soft(xs.clone(), floats(pick(&t), [kept, c], d), tt).reduce(Reduction::RowMean);
            let sv = scalar(sliced.clone());
            prop_assert!((mv - sv).abs() <= 1e-5 * sv.abs().max(1.0), "{mv} vs {sv}");
            let gs = to_vec(xs.grad(&sliced.backward()).unwrap());
            let g_kept = pick(&g);
            let gs64: Vec<f64> = gs.iter().map(|&v| v as f64).collect();
            assert_close("masked grad", &g_kept, &gs64, 1e-5);
            for i in (0..r).filter(|&i| !keep[i]) {
                prop_assert!(g[i * c..(i + 1) * c].iter().all(|v| *v == 0.0));
            }
        }
    }

    /// Shards reduced with the global normalizer add up to the unsharded mean.
    #[test]
    fn shards_with_global_normalizer_add_up((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE,
                                            split in 0usize..5) {
        let split = split.min(r);
        let n = Normalizer::new(r as f64).unwrap();
        for (_, d) in case_devices(&DEVICES) {
            let full = scalar(soft(floats(s.clone(), [r, c], d), floats(t.clone(), [r, c], d), tt).reduce(Reduction::RowMean));
            let mut total = 0.0;
            for (a, b) in [(0, split), (split, r)] {
                if a == b { continue; }
                let part = |x: &[f32]| x[a * c..b * c].to_vec();
                total += scalar(soft(floats(part(&s), [b - a, c], d), floats(part(&t), [b - a, c], d), tt)
                    .reduce(Reduction::Normalizer(n)));
            }
            prop_assert!((total - full).abs() <= 1e-5 * full.abs().max(1.0), "{total} vs {full}");
        }
    }

    /// Logits of ±1e4 give a finite loss and gradient, for every temperature.
    #[test]
    fn finite_at_large_magnitude((r, c, s, t) in logit_pair(LARGE_RANGE), tt in 0.05f64..8.0) {
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let labels = ints((0..r as i64).map(|i| i % c as i64).collect(), [r], d);
            let kd = DistillationLossConfig::new().with_temperature(tt).init();
            let out = kd.forward(x.clone(), floats(t.clone(), [r, c], d), labels, Reduction::RowMean);
            let v = scalar(out.total.clone());
            prop_assert!(v.is_finite(), "loss {v}");
            let g = to_vec(x.grad(&out.total.backward()).unwrap());
            prop_assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        }
    }

    /// −inf entries (same positions in both, or teacher only) give a finite loss and
    /// gradient, and the gradient is exactly zero where both are −inf.
    #[test]
    fn finite_with_neg_inf_entries((r, c, s, t) in logit_pair(LOGIT_RANGE), tt in T_RANGE,
                                   holes in prop::collection::vec(any::<bool>(), 35),
                                   teacher_only in any::<bool>()) {
        let mut s = s;
        let mut t = t;
        for i in 0..r {
            for j in 1..c { // column 0 stays finite in every row
                if holes[(i * c + j) % holes.len()] {
                    t[i * c + j] = f32::NEG_INFINITY;
                    if !teacher_only { s[i * c + j] = f32::NEG_INFINITY; }
                }
            }
        }
        for (_, d) in case_devices(&DEVICES) {
            let x = floats(s.clone(), [r, c], d).require_grad();
            let loss = soft(x.clone(), floats(t.clone(), [r, c], d), tt).reduce(Reduction::RowMean);
            let v = scalar(loss.clone());
            prop_assert!(v.is_finite() && v >= -1e-5, "loss {v}");
            let g = to_vec(x.grad(&loss.backward()).unwrap());
            prop_assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
            for k in 0..s.len() {
                if s[k] == f32::NEG_INFINITY { prop_assert_eq!(g[k], 0.0); }
            }
        }
    }
}

#[test]
fn report_backends() {
    for (name, _) in DEVICES.iter() {
        let cases = cases_on(&DEVICES, name, 64);
        report(
            &format!("props_logits (10 properties x {cases} cases)"),
            name,
            10 * cases as usize,
        );
    }
}
