//! `divergence::soft_loss` (every divergence, reduced, with an optional mask) against the composed
//! divergences: the CubeCL kernel computes all of them, the CPU kernel the two KL directions.

use super::*;
use kd_losses::divergence::soft_loss;
use kd_losses::divergence::{JsdConvention, divergence};

#[test]
fn fused_soft_loss_matches_divergence() {
    for (name, dev) in devices() {
        let mut checks = 0;
        let (b, sq, v) = (3usize, 4usize, 37usize);
        let s = lcg(b * sq * v, 31, 5.0);
        let t = lcg(b * sq * v, 32, 5.0);
        let mask = bools((0..b * sq).map(|i| i % 5 != 2).collect(), [b, sq], &dev);
        let mask = RowMask::new(mask);
        for d in every_divergence() {
            for &temp in &[1.0, 2.0, 1.7] {
                for (rn, red) in reductions() {
                    for m in [None, Some(&mask)] {
                        let tt = Temperature::new(temp).unwrap();
                        let st = floats(s.clone(), [b, sq, v], &dev).require_grad();
                        let te = floats(t.clone(), [b, sq, v], &dev);
                        let a = soft_loss(st.clone(), te.clone(), d, tt, T2Scaling::On, m, red);
                        let va = scalar(a.clone()) as f32;
                        let ga = to_vec(st.grad(&a.backward()).unwrap());
                        let st = floats(s.clone(), [b, sq, v], &dev).require_grad();
                        let bb = divergence(st.clone(), te, d, tt, T2Scaling::On)
                            .masked_opt(m)
                            .reduce_composed(red);
                        let vb = scalar(bb.clone()) as f32;
                        let gb = to_vec(st.grad(&bb.backward()).unwrap());
                        let what =
                            format!("{name} {} T={temp} {rn} mask={}", d.name(), m.is_some());
                        let kept_rows = if m.is_some() {
                            (0..b * sq).filter(|i| i % 5 != 2).count()
                        } else {
                            b * sq
                        };
                        let floor = value_floor(
                            temp * temp,
                            row_weight_sum(red, kept_rows, b, v),
                            v,
                            logit_range(&s, &t),
                            temp,
                        );
                        close_values(&what, va, vb, 2e-5, floor);
                        let kept = if m.is_some() {
                            (0..b * sq).filter(|i| i % 5 != 2).count()
                        } else {
                            b * sq
                        };
                        let cfg_soft = cfg(temp, 1.0, 0.0, true);
                        let floor = grad_floor(&cfg_soft, max_row_weight(red, kept, b, v));
                        close_grads(&what, &ga, &gb, 2e-5, floor);
                        checks += 2;
                    }
                }
            }
        }
        // The parametrised divergences at the endpoints where they are a KL: the fused kernel
        // runs them (bit for bit the KL's result where it runs), and they match the composed
        // evaluation of the divergence itself.
        let endpoints = [
            (
                Divergence::generalized_jsd(0.0, JsdConvention::Trl).unwrap(),
                Divergence::ForwardKl,
            ),
            (
                Divergence::generalized_jsd(1.0, JsdConvention::Trl).unwrap(),
                Divergence::ReverseKl,
            ),
            (
                Divergence::generalized_jsd(0.0, JsdConvention::Continuous).unwrap(),
                Divergence::ForwardKl,
            ),
            (
                Divergence::generalized_jsd(1.0, JsdConvention::Continuous).unwrap(),
                Divergence::ReverseKl,
            ),
            (Divergence::skew_kl(0.0).unwrap(), Divergence::ForwardKl),
            (
                Divergence::skew_reverse_kl(0.0).unwrap(),
                Divergence::ReverseKl,
            ),
        ];
        let tt = Temperature::new(2.0).unwrap();
        for (d, kl) in endpoints {
            for m in [None, Some(&mask)] {
                let run = |d: Divergence, fused: bool| {
                    let st = floats(s.clone(), [b, sq, v], &dev).require_grad();
                    let te = floats(t.clone(), [b, sq, v], &dev);
                    let out = if fused {
                        soft_loss(st.clone(), te, d, tt, T2Scaling::On, m, Reduction::RowMean)
                    } else {
                        divergence(st.clone(), te, d, tt, T2Scaling::On)
                            .masked_opt(m)
                            .reduce_composed(Reduction::RowMean)
                    };
                    let value = scalar(out.clone()) as f32;
                    (value, to_vec(st.grad(&out.backward()).unwrap()))
                };
                let (va, ga) = run(d, true);
                let what = format!("{name} {} (endpoint) mask={}", d.name(), m.is_some());
                if fused_available(&floats(s.clone(), [b, sq, v], &dev)) {
                    let (vk, gk) = run(kl, true);
                    assert!(
                        va == vk && ga == gk,
                        "{what}: not the fused {} kernel",
                        kl.name()
                    );
                }
                let (vb, gb) = run(d, false);
                close_values(&what, va, vb, 2e-5, 1e-5);
                close_grads(&what, &ga, &gb, 2e-5, 1e-6);
                checks += 2;
            }
        }
        report("parity_fused_soft", name, checks);
    }
}

/// Every divergence on hostile rows: `-inf` entries in either distribution, an all `-inf`
/// teacher row, a `+inf` teacher logit (a point mass), ±1e4 logits and a fully masked batch:
/// the fused route (`soft_loss`, the CubeCL kernel on wgpu) gives the composed values and
/// gradients, and the same non-finite values where the divergence is infinite.
#[test]
fn every_divergence_matches_composed_on_hostile_rows() {
    let ninf = f32::NEG_INFINITY;
    let v = 5;
    #[rustfmt::skip]
    let s = vec![
        0.5, -1.0, 2.0, 0.0, 1.0,
        1.0e4, -1.0e4, 0.0, 3.0, -2.0,
        0.3, ninf, 1.0, -0.5, 0.0,
        0.1, 0.2, 0.3, 0.4, 0.5,
        2.0, 1.0, 0.0, -1.0, -2.0,
    ];
    #[rustfmt::skip]
    let t = vec![
        1.0, 0.0, ninf, -1.0, 0.5,
        -1.0e4, 1.0e4, 2.0, 0.0, 1.0,
        0.0, 1.0, 2.0, ninf, -1.0,
        ninf, ninf, ninf, ninf, ninf,
        f32::INFINITY, 0.0, 1.0, 0.0, -1.0,
    ];
    let r = s.len() / v;
    for (name, dev) in devices() {
        let mut checks = 0;
        let everything = RowMask::new(bools(vec![true; r], [r], &dev));
        let nothing = RowMask::new(bools(vec![false; r], [r], &dev));
        for d in every_divergence() {
            for &temp in &[1.0, 3.0] {
                for (mn, m) in [
                    ("none", None),
                    ("all", Some(&everything)),
                    ("empty", Some(&nothing)),
                ] {
                    let tt = Temperature::new(temp).unwrap();
                    let run = |fused: bool| {
                        let st = floats(s.clone(), [r, v], &dev).require_grad();
                        let te = floats(t.clone(), [r, v], &dev);
                        let out = if fused {
                            soft_loss(st.clone(), te, d, tt, T2Scaling::On, m, Reduction::Sum)
                        } else {
                            divergence(st.clone(), te, d, tt, T2Scaling::On)
                                .masked_opt(m)
                                .reduce_composed(Reduction::Sum)
                        };
                        let value = scalar(out.clone()) as f32;
                        (value, to_vec(st.grad(&out.backward()).unwrap()))
                    };
                    let (va, ga) = run(true);
                    let (vb, gb) = run(false);
                    let what = format!("{name} {} T={temp} mask={mn}", d.name());
                    if mn == "empty" {
                        assert_eq!(va, 0.0, "{what}: fully masked");
                        assert!(
                            ga.iter().all(|&g| g == 0.0),
                            "{what}: fully masked gradient"
                        );
                    }
                    close_values(&what, va, vb, 2e-5, 1e-5);
                    if va.is_finite() {
                        close_grads(&what, &ga, &gb, 2e-5, 1e-6);
                    }
                    checks += 2;
                }
            }
        }
        report("parity_fused_hostile_divergences", name, checks);
    }
}
