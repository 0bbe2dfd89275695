//! `distillation_loss` fused vs composed: a grid of reductions, temperatures, α, label smoothing
//! and shapes; edge cases; the three backward routes; untracked calls and NaN.

use super::*;

#[test]
fn fused_matches_composed_grid() {
    for (name, dev) in devices() {
        let probe = Tensor::<2>::zeros([1, 1], &dev);
        // Flex: the CPU kernel; wgpu (Burn's default setup, with `fusion`): the CubeCL kernel;
        // none anywhere with `KD_FUSED=0`.
        let kernels_on = std::env::var("KD_FUSED").map_or(true, |v| v != "0");
        let expected = matches!(name, "flex" | "wgpu") && kernels_on;
        assert_eq!(
            fused_available(&probe),
            expected,
            "{name}: fused availability"
        );
        let mut checks = 0;
        // V not a multiple of 8; R·V above the threading threshold in the large case.
        for &(r, v) in &[(6usize, 13usize), (5, 1000), (24, 4099)] {
            let s = lcg(r * v, 1 + v as u64, 6.0);
            let t = lcg(r * v, 2 + v as u64, 6.0);
            let mut y: Vec<i64> = (0..r).map(|i| ((i * 7 + 3) % v) as i64).collect();
            y[1] = -100; // one ignored row
            let kd = Kd {
                s: &s,
                t: &t,
                y: &y,
                lead: vec![r],
                v,
            };
            for &temp in &[1.0, 2.0, 2.5, 4.0] {
                for (rn, red) in reductions() {
                    let c = cfg(temp, 0.7, 0.0, true);
                    checks += check_kd(
                        &format!("{name} [{r},{v}] T={temp} {rn}"),
                        &dev,
                        &kd,
                        &c,
                        red,
                    );
                }
            }
            let c = cfg(3.0, 0.4, 0.1, false);
            checks += check_kd(
                &format!("{name} [{r},{v}] smoothing"),
                &dev,
                &kd,
                &c,
                Reduction::RowMean,
            );
            let c = cfg(2.0, 1.0, 0.0, true);
            checks += check_kd(
                &format!("{name} [{r},{v}] alpha=1"),
                &dev,
                &kd,
                &c,
                Reduction::RowMean,
            );
            let c = cfg(2.0, 0.0, 0.0, true);
            checks += check_kd(
                &format!("{name} [{r},{v}] alpha=0"),
                &dev,
                &kd,
                &c,
                Reduction::RowMean,
            );
        }
        report("parity_fused_grid", name, checks);
    }
}

#[test]
fn fused_matches_composed_on_edge_cases() {
    for (name, dev) in devices() {
        let mut checks = 0;
        let (b, sq, v) = (2usize, 3usize, 11usize);
        let r = b * sq;
        // [B, S, V] with padding rows, -inf vocabulary padding in both, -inf in the teacher only,
        // and a row at ±1e4.
        let mut s = lcg(r * v, 11, 4.0);
        let mut t = lcg(r * v, 12, 4.0);
        for row in 0..r {
            s[row * v + v - 1] = f32::NEG_INFINITY;
            t[row * v + v - 1] = f32::NEG_INFINITY;
        }
        t[2 * v + 3] = f32::NEG_INFINITY;
        for i in 0..v - 1 {
            s[4 * v + i] = if i % 2 == 0 { 1.0e4 } else { -1.0e4 };
            t[4 * v + i] = if i % 3 == 0 { 1.0e4 } else { -1.0e4 };
        }
        let y = vec![0, 5, -100, 2, 9, -100];
        let kd = Kd {
            s: &s,
            t: &t,
            y: &y,
            lead: vec![b, sq],
            v,
        };
        for (rn, red) in reductions() {
            for &temp in &[1.0, 2.0, 0.5] {
                let c = cfg(temp, 0.5, 0.0, true);
                checks += check_kd(&format!("{name} edge T={temp} {rn}"), &dev, &kd, &c, red);
            }
        }
        // Every row ignored: 0, not NaN, and a zero gradient.
        let y_all = vec![-100; r];
        let kd_all = Kd {
            s: &s,
            t: &t,
            y: &y_all,
            lead: vec![b, sq],
            v,
        };
        let c = cfg(2.0, 0.5, 0.0, true);
        checks += check_kd(
            &format!("{name} fully masked"),
            &dev,
            &kd_all,
            &c,
            Reduction::RowMean,
        );
        let st = floats(s.clone(), [b, sq, v], &dev).require_grad();
        let out = distillation_loss(
            st.clone(),
            floats(t.clone(), [b, sq, v], &dev),
            ints(y_all.clone(), [b, sq], &dev),
            &c,
            Reduction::RowMean,
        );
        assert_eq!(scalar(out.total.clone()), 0.0, "{name}: fully masked total");
        let g = to_vec(st.grad(&out.total.backward()).unwrap());
        assert!(g.iter().all(|&x| x == 0.0), "{name}: fully masked gradient");
        checks += 1;
        report("parity_fused_edges", name, checks);
    }
}

#[test]
fn fused_backward_routes() {
    // Scaled total (kept gradient × c), and the terms differentiated on their own (recomputed).
    for (name, dev) in devices() {
        let (r, v) = (7usize, 29usize);
        let s = lcg(r * v, 21, 5.0);
        let t = lcg(r * v, 22, 5.0);
        let y: Vec<i64> = (0..r as i64).map(|i| (i * 3) % v as i64).collect();
        let c = cfg(2.0, 0.3, 0.05, true);
        type Pick = fn(&DistillationOutput) -> Tensor<1>;
        let routes: [(&str, Pick); 4] = [
            ("0.25*total", |o| o.total.clone().mul_scalar(0.25)),
            ("soft", |o| o.soft.clone()),
            ("hard", |o| o.hard.clone()),
            ("2*soft-hard+total", |o| {
                o.soft.clone().mul_scalar(2.0) - o.hard.clone() + o.total.clone()
            }),
        ];
        for (rn, pick) in routes {
            let grad = |fused: bool| {
                let st = floats(s.clone(), [r, v], &dev).require_grad();
                let tt = floats(t.clone(), [r, v], &dev);
                let yt = ints(y.clone(), [r], &dev);
                let out = if fused {
                    distillation_loss(st.clone(), tt, yt, &c, Reduction::RowMean)
                } else {
                    distillation_loss_composed(st.clone(), tt, yt, &c, Reduction::RowMean)
                };
                to_vec(st.grad(&pick(&out).backward()).unwrap())
            };
            // Mean over r rows; the terms route reaches coefficient 2 + 1 on soft and hard.
            let floor = 3.0 * grad_floor(&c, 1.0 / r as f64);
            close_grads(
                &format!("{name} {rn}"),
                &grad(true),
                &grad(false),
                2e-5,
                floor,
            );
        }
        report("parity_fused_backward", name, 4);
    }
}

#[test]
fn fused_untracked_and_nan() {
    for (name, dev) in devices() {
        let inner = dev.clone().inner();
        let (r, v) = (4usize, 10usize);
        let s = lcg(r * v, 41, 3.0);
        let t = lcg(r * v, 42, 3.0);
        let y = vec![1i64, 2, 3, 4];
        let c = cfg(2.0, 0.5, 0.0, true);
        // Without autodiff (evaluation): same value, no gradient buffer.
        let a = distillation_loss(
            floats(s.clone(), [r, v], &inner),
            floats(t.clone(), [r, v], &inner),
            ints(y.clone(), [r], &inner),
            &c,
            Reduction::RowMean,
        );
        let b = distillation_loss_composed(
            floats(s.clone(), [r, v], &inner),
            floats(t.clone(), [r, v], &inner),
            ints(y.clone(), [r], &inner),
            &c,
            Reduction::RowMean,
        );
        close_values(
            &format!("{name} untracked"),
            scalar(a.total) as f32,
            scalar(b.total) as f32,
            2e-5,
            0.0,
        );
        // A NaN logit gives a NaN loss, never a silently finite one: on the CPU backends always;
        // on wgpu the device decides (WGSL does not guarantee NaN arithmetic), and the fused
        // kernel must agree with the composed path there.
        for (which, idx) in [("student", 5usize), ("teacher", 17usize)] {
            let (mut sn, mut tn) = (s.clone(), t.clone());
            if which == "student" {
                sn[idx] = f32::NAN;
            } else {
                tn[idx] = f32::NAN;
            }
            let mk = |fused: bool| {
                let (a, b, c) = (
                    floats(sn.clone(), [r, v], &inner),
                    floats(tn.clone(), [r, v], &inner),
                    ints(y.clone(), [r], &inner),
                );
                let out = if fused {
                    distillation_loss(a, b, c, &cfg(2.0, 0.5, 0.0, true), Reduction::RowMean)
                } else {
                    distillation_loss_composed(
                        a,
                        b,
                        c,
                        &cfg(2.0, 0.5, 0.0, true),
                        Reduction::RowMean,
                    )
                };
                scalar(out.total)
            };
            let (f, c) = (mk(true), mk(false));
            if name != "wgpu" {
                assert!(
                    f.is_nan() && c.is_nan(),
                    "{name}: NaN {which} logit gave {f} / {c}"
                );
            } else {
                assert_eq!(
                    f.is_nan(),
                    c.is_nan(),
                    "{name}: NaN {which} logit gave {f} / {c}"
                );
            }
        }
        report("parity_fused_misc", name, 3);
    }
}

/// Burn's default GPU configuration — `wgpu` with Burn's `fusion` and `autotune`, as this
/// crate's dev-dependency builds it (an application's `burn = { features = ["wgpu",
/// "autodiff"] }`) — reaches the CubeCL kernel, with and without `autodiff`: `f32` and `f16`
/// logits, every divergence, the top-k teacher.
#[test]
fn default_gpu_setup_reaches_the_fused_kernel() {
    if !devices().iter().any(|(name, _)| *name == "wgpu") {
        return;
    }
    let wgpu = Device::wgpu(Default::default());
    let mut checks = 0;
    for dev in [wgpu.clone(), wgpu.autodiff()] {
        for dtype in [burn::tensor::DType::F32, burn::tensor::DType::F16] {
            let x = Tensor::<3>::zeros([2, 3, 17], &dev).cast(dtype);
            assert!(fused_available(&x), "{dtype:?}: fused_available");
            for d in [
                Divergence::ForwardKl,
                Divergence::ReverseKl,
                Divergence::generalized_jsd(0.5, kd_losses::divergence::JsdConvention::Trl)
                    .unwrap(),
                Divergence::skew_kl(0.1).unwrap(),
                Divergence::skew_reverse_kl(0.1).unwrap(),
                Divergence::TotalVariation,
                Divergence::SymmetricKl,
            ] {
                assert!(d.fused_available(&x), "{dtype:?} {}", d.name());
                checks += 1;
            }
            let topk = kd_losses::sparse::SparseKdLossConfig::new().init(Divergence::ForwardKl);
            assert!(topk.fused_available(&x), "{dtype:?}: top-k kernel");
            checks += 2;
        }
        // wgpu has no bf16 (WGSL lacks the type): the kernel declines it rather than fail to
        // compile on the device thread (Burn's fusion holds a lazily cast bf16 tensor there).
        let x = Tensor::<2>::zeros([2, 17], &dev).cast(burn::tensor::DType::BF16);
        assert!(!fused_available(&x), "bf16 on wgpu: no kernel");
        assert!(
            !Divergence::ReverseKl.fused_available(&x),
            "bf16 on wgpu: no kernel"
        );
        checks += 2;
    }
    report("default_gpu_setup", "wgpu", checks);
}
