//! `kd_losses::sparse`: top-k (sparse) teachers: index validation and pinned panics, the
//! missing-mass options against host references, the module's `T²`, and golden family h (top-k
//! teacher, loss and gradient, on every backend of `common::devices()`).

use crate::common::*;
use burn::tensor::{Device, Int, Tensor};
use kd_losses::divergence::Divergence;
use kd_losses::sparse::{
    SparseKdLossConfig, SparseOptions, check_topk_indices, sparse_divergence, topk_kd,
};
use kd_losses::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn t1() -> Temperature {
    Temperature::ONE
}

fn m2(rows: &[[f32; 4]]) -> Tensor<2> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    floats(data, [rows.len(), 4], &dev())
}

// -------------------------------------------------------------------------------------- API

fn idx(rows: Vec<Vec<i64>>) -> Tensor<2, Int> {
    let r = rows.len();
    let k = rows[0].len();
    ints(rows.into_iter().flatten().collect(), [r, k], &dev())
}

#[test]
fn topk_index_errors() {
    assert_eq!(
        check_topk_indices(&idx(vec![vec![0, 1, 2, 3, 0]]), 4).unwrap_err(),
        KdError::TopkTooLarge { k: 5, vocab: 4 }
    );
    assert_eq!(
        check_topk_indices(&idx(vec![vec![0, -1]]), 4)
            .unwrap_err()
            .to_string(),
        "top-k index -1 is out of range for a vocabulary of 4 (valid: 0..4)"
    );
    assert_eq!(
        check_topk_indices(&idx(vec![vec![0, 1], vec![2, 2]]), 4)
            .unwrap_err()
            .to_string(),
        "top-k index 2 appears twice in one row"
    );
    // The same id in different rows is fine.
    assert!(check_topk_indices(&idx(vec![vec![0, 1], vec![1, 0]]), 4).is_ok());
}

#[test]
#[should_panic(
    expected = "teacher indices: top-k teacher keeps k = 5 entries per row but the vocabulary has only 4"
)]
fn sparse_k_larger_than_v_panics() {
    let s = m2(&[[0.0; 4]]);
    let t = TopkTeacher::from_logits(
        idx(vec![vec![0, 1, 2, 3, 0]]),
        floats(vec![0.0; 5], [1, 5], &dev()),
    );
    topk_kd(s, t, StudentNorm::Full, t1(), T2Scaling::On);
}

#[test]
#[should_panic(
    expected = "teacher indices: top-k index 4 is out of range for a vocabulary of 4 (valid: 0..4)"
)]
fn sparse_index_out_of_range_panics() {
    let s = m2(&[[0.0; 4]]);
    let t = TopkTeacher::from_logits(idx(vec![vec![0, 4]]), floats(vec![0.0; 2], [1, 2], &dev()));
    topk_kd(s, t, StudentNorm::Full, t1(), T2Scaling::On);
}

#[test]
#[should_panic(expected = "MissingMass::TailBucket needs teacher log-probabilities")]
fn tail_bucket_needs_log_probs() {
    let s = m2(&[[0.0; 4]]);
    let t = TopkTeacher::from_logits(idx(vec![vec![0, 1]]), floats(vec![0.0; 2], [1, 2], &dev()));
    let o = SparseOptions {
        missing_mass: MissingMass::TailBucket,
        student_norm: StudentNorm::Full,
    };
    sparse_divergence(s, t, Divergence::ForwardKl, o, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(expected = "topk_logits: shape [1, 3] does not match indices shape [1, 2]")]
fn topk_shapes_must_match() {
    TopkTeacher::from_logits(idx(vec![vec![0, 1]]), floats(vec![0.0; 3], [1, 3], &dev()));
}

/// Tail bucket, f64 host reference: bins = top-k + tail on both sides.
#[test]
fn tail_bucket_matches_host_reference() {
    let student = [1.0f32, 0.5, -0.5, 2.0, 0.0];
    let teacher = [2.0f64, 1.0, 0.0, -1.0, 0.5];
    let lse = |x: &[f64]| {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    };
    let tl: Vec<f64> = teacher.iter().map(|v| v - lse(&teacher)).collect();
    let ids = [0usize, 4];
    let sv: Vec<f64> = student.iter().map(|&v| v as f64).collect();
    let sl: Vec<f64> = sv.iter().map(|v| v - lse(&sv)).collect();
    let p: Vec<f64> = {
        let kept: Vec<f64> = ids.iter().map(|&i| tl[i].exp()).collect();
        let tail = 1.0 - kept.iter().sum::<f64>();
        kept.into_iter().chain([tail]).collect()
    };
    let q: Vec<f64> = {
        let kept: Vec<f64> = ids.iter().map(|&i| sl[i].exp()).collect();
        let tail: f64 = (0..5)
            .filter(|i| !ids.contains(i))
            .map(|i| sl[i].exp())
            .sum();
        kept.into_iter().chain([tail]).collect()
    };
    let rkl: f64 = q.iter().zip(&p).map(|(a, b)| a * (a.ln() - b.ln())).sum();
    let tv: f64 = 0.5 * q.iter().zip(&p).map(|(a, b)| (a - b).abs()).sum::<f64>();
    for (d, expected) in [
        (Divergence::ReverseKl, rkl),
        (Divergence::TotalVariation, tv),
    ] {
        let t = TopkTeacher::from_log_probs(
            idx(vec![vec![0, 4]]),
            floats(vec![tl[0] as f32, tl[4] as f32], [1, 2], &dev()),
        );
        let o = SparseOptions {
            missing_mass: MissingMass::TailBucket,
            student_norm: StudentNorm::Full,
        };
        let s = floats(student.to_vec(), [1, 5], &dev());
        let v = scalar(sparse_divergence(s, t, d, o, t1(), T2Scaling::Off).reduce(Reduction::Sum));
        assert!((v - expected).abs() < 1e-5, "{d:?}: {v} vs {expected}");
    }
}

#[test]
fn renormalized_reverse_kl_with_student_tail_is_infinite() {
    let s = m2(&[[1.0, 0.5, -0.5, 2.0]]);
    let t = TopkTeacher::from_logits(
        idx(vec![vec![0, 3]]),
        floats(vec![1.0, 2.0], [1, 2], &dev()),
    );
    let v = scalar(
        sparse_divergence(
            s,
            t,
            Divergence::ReverseKl,
            SparseOptions::default(),
            t1(),
            T2Scaling::Off,
        )
        .reduce(Reduction::Sum),
    );
    assert_eq!(v, f64::INFINITY);
}

#[test]
fn sparse_module_applies_t2() {
    let s = m2(&[[1.0, 0.5, -0.5, 2.0]]);
    let mk = || {
        TopkTeacher::from_logits(
            idx(vec![vec![0, 3]]),
            floats(vec![1.0, 2.0], [1, 2], &dev()),
        )
    };
    let on = SparseKdLossConfig::new()
        .with_temperature(2.0)
        .init(Divergence::ForwardKl);
    let off = SparseKdLossConfig::new()
        .with_temperature(2.0)
        .with_t2_scaling(false)
        .init(Divergence::ForwardKl);
    let a = scalar(on.forward(s.clone(), mk(), Reduction::Sum));
    let b = scalar(off.forward(s, mk(), Reduction::Sum));
    assert!((a - 4.0 * b).abs() < 1e-5);
}

// ------------------------------------------------------------------------ golden (family h)

fn finish(case: &Case, rows: RowLoss, device: &Device) -> (Tensor<1>, Vec<f32>) {
    golden_finish(case, rows, device, golden_reduction)
}

fn mask_of(case: &Case, device: &Device) -> Option<RowMask> {
    golden_row_mask(case, device)
}

#[test]
fn golden_h_topk() {
    let g = load_golden("h_topk_kd.json");
    assert_eq!(g.family, "h_topk_kd");
    for (backend, device) in devices() {
        for case in &g.cases {
            let t = Temperature::new(case.param_f64("T")).unwrap();
            let student_norm = match case.param_str("student_norm") {
                Some("full") => StudentNorm::Full,
                Some("support") => StudentNorm::Support,
                other => panic!("golden h: unmapped student_norm {other:?}"),
            };
            let options = SparseOptions {
                missing_mass: MissingMass::Renormalize,
                student_norm,
            };
            let mask = mask_of(case, &device);
            let s = case.input("student").float::<3>(&device).require_grad();
            let teacher = TopkTeacher::from_logits(
                case.input("indices").int::<3>(&device),
                case.input("topk_logits").float::<3>(&device),
            );
            assert_eq!(teacher.k() as f64, case.param_f64("k"));
            let rows = sparse_divergence(
                s.clone(),
                teacher,
                Divergence::ForwardKl,
                options,
                t,
                T2Scaling::On,
            )
            .masked_opt(mask.as_ref());
            let (loss, v) = finish(case, rows, &device);
            let grad = s.grad(&loss.backward()).map(|g| g.flatten::<1>(0, 2));
            check_golden_loss_grad(case, backend, &v, grad);
        }
        report("golden_h_topk", backend, g.cases.len());
    }
}

// ------------------------------------------------------------- the top-k kernel (CubeCL)

/// `SparseKdLoss` (forward KL, `Renormalize` + `Full`: the top-k kernel on the CubeCL backends,
/// composed elsewhere) against `sparse_divergence(..).masked(..).reduce(..)`: value and student
/// gradient over reductions, masks, temperatures, `k` up to `V`, `-inf` student entries and
/// teacher values, a `+inf` student logit, `[B, S, V]` logits; `f16` where the backend has it.
#[test]
fn topk_kernel_matches_composed() {
    let (b, sq, v) = (2usize, 3usize, 300usize);
    let r = b * sq;
    let mut s = lcg(r * v, 91, 4.0);
    // Row 0: -inf outside the teacher's ids unless k = V (then the KL is +inf); row 1 (masked
    // in the masked runs): a +inf point mass on its first id (KL 0 at k = 1, +inf beyond).
    s[v - 1] = f32::NEG_INFINITY;
    s[v + 13] = f32::INFINITY;
    let mut checks = 0;
    for (name, device) in devices() {
        let sparse_on_gpu = name == "wgpu";
        for k in [1usize, 5, 64, v] {
            // Unique ids per row: a stride coprime with V.
            let ids: Vec<i64> = (0..r)
                .flat_map(|row| (0..k).map(move |j| ((row * 13 + j * 7) % v) as i64))
                .collect();
            let mut vals = lcg(r * k, 92 + k as u64, 3.0);
            if k > 1 {
                vals[1] = f32::NEG_INFINITY;
            }
            let mask = RowMask::new(bools(
                (0..r).map(|i| i % 4 != 1).collect(),
                [b, sq],
                &device,
            ));
            for &temp in &[1.0, 2.5] {
                for (rn, red) in [
                    ("sum", Reduction::Sum),
                    ("batchmean", Reduction::BatchMean),
                    ("rowmean", Reduction::RowMean),
                ] {
                    for masked in [false, true] {
                        let loss = SparseKdLossConfig::new()
                            .with_temperature(temp)
                            .init(Divergence::ForwardKl);
                        assert_eq!(
                            loss.fused_available(&floats(vec![0.0], [1, 1], &device)),
                            name == "wgpu",
                            "{name}: the top-k kernel serves the CubeCL backends"
                        );
                        // 0: the Module; 1: the free function reduced (the same door);
                        // 2: the composed reference.
                        let run = |door: u8| {
                            let st = floats(s.clone(), [b, sq, v], &device).require_grad();
                            let teacher = TopkTeacher::from_logits(
                                ints(ids.clone(), [b, sq, k], &device),
                                floats(vals.clone(), [b, sq, k], &device),
                            );
                            let rows = |st: Tensor<3>, teacher| {
                                sparse_divergence(
                                    st,
                                    teacher,
                                    Divergence::ForwardKl,
                                    SparseOptions::default(),
                                    Temperature::new(temp).unwrap(),
                                    T2Scaling::On,
                                )
                                .masked_opt(if masked {
                                    Some(&mask)
                                } else {
                                    None
                                })
                            };
                            let before = kd_losses::fused::kernel_runs();
                            let out = match (door, masked) {
                                (0, false) => loss.forward(st.clone(), teacher, red),
                                (0, true) => loss.forward_masked(st.clone(), teacher, &mask, red),
                                (1, _) => rows(st.clone(), teacher).reduce(red),
                                _ => rows(st.clone(), teacher).reduce_composed(red),
                            };
                            let ran = kd_losses::fused::kernel_runs() - before;
                            let expected = u64::from(door < 2 && sparse_on_gpu);
                            assert_eq!(ran, expected, "{name} door {door}: kernel runs");
                            let value = scalar(out.clone());
                            // The masked runs differentiate a scaled loss: the kept gradient is
                            // scaled by the upstream gradient (on the device on CubeCL).
                            let c = if masked { 0.5 } else { 1.0 };
                            (
                                value,
                                to_vec(st.grad(&out.mul_scalar(c).backward()).unwrap()),
                            )
                        };
                        let (vb, gb) = run(2);
                        for door in [0, 1] {
                            let (va, ga) = run(door);
                            let what =
                                format!("{name} k={k} T={temp} {rn} masked={masked} door {door}");
                            if !vb.is_finite() {
                                assert_eq!(va, vb, "{what}: fused vs composed");
                                checks += 1;
                                continue;
                            }
                            assert!(
                                (va - vb).abs() <= 2e-5 * vb.abs().max(1.0),
                                "{what}: fused {va} vs composed {vb}"
                            );
                            let scale = gb.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                            for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
                                assert!(
                                    (x - y).abs() <= 2e-5 * scale.max(1e-3),
                                    "{what}: grad[{i}] fused {x} vs composed {y}"
                                );
                            }
                            checks += 2;
                        }
                    }
                }
            }
        }
        if sparse_on_gpu {
            // f16 logits read as they are by the kernel; the composed path widens them.
            let half = |x: Tensor<3>| x.cast(burn::tensor::DType::F16);
            let k = 16;
            let ids: Vec<i64> = (0..r)
                .flat_map(|row| (0..k).map(move |j| ((row * 5 + j * 11) % v) as i64))
                .collect();
            let vals = lcg(r * k, 93, 3.0);
            let loss = SparseKdLossConfig::new()
                .with_temperature(2.0)
                .init(Divergence::ForwardKl);
            let teacher = || {
                TopkTeacher::from_logits(
                    ints(ids.clone(), [b, sq, k], &device),
                    half(floats(vals.clone(), [b, sq, k], &device)),
                )
            };
            let st = half(floats(lcg(r * v, 94, 4.0), [b, sq, v], &device));
            let va = scalar(loss.forward(st.clone(), teacher(), Reduction::BatchMean));
            let vb = scalar(
                sparse_divergence(
                    st,
                    teacher(),
                    Divergence::ForwardKl,
                    SparseOptions::default(),
                    Temperature::new(2.0).unwrap(),
                    T2Scaling::On,
                )
                .reduce_composed(Reduction::BatchMean),
            );
            assert!(
                (va - vb).abs() <= 1e-4 * vb.abs().max(1.0),
                "{name} f16: {va} vs {vb}"
            );
            checks += 1;
        }
        report("parity_fused_topk", name, checks);
    }
}
