//! API contracts of the divergence family: validation errors, pinned panic messages, vocabulary
//! alignment, sparse-teacher options, ensembles, DKD, schedules and the learnable temperature.

mod common;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use common::*;
use kd_losses::chunked::{chunk_rows_for_budget, chunked_divergence, chunked_rows};
use kd_losses::divergence::{
    Divergence, DivergenceKind, DivergenceLossConfig, JsdConvention, divergence, generalized_jsd,
    reverse_kl, skew_kl, skew_reverse_kl, total_variation,
};
use kd_losses::dkd::{DkdLossConfig, dkd};
use kd_losses::ensemble::{EnsembleMode, TeacherWeights, ensemble_divergence};
use kd_losses::prelude::*;
use kd_losses::schedule::{LearnableTemperatureConfig, Schedule, TemperatureSchedule};
use kd_losses::sparse::{
    SparseKdLossConfig, SparseOptions, check_topk_indices, sparse_divergence, topk_kd,
};
use kd_losses::vocab::align_vocab;

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

// ----------------------------------------------------------------------------- validation

#[test]
fn beta_and_alpha_must_be_in_unit_interval() {
    for x in [-0.1, 1.1, f64::NAN] {
        for conv in [JsdConvention::Trl, JsdConvention::Continuous] {
            let e = Divergence::generalized_jsd(x, conv).unwrap_err();
            assert!(
                matches!(e, KdError::OutOfRange { name: "beta", .. }),
                "{e:?}"
            );
        }
        assert!(matches!(
            Divergence::skew_kl(x).unwrap_err(),
            KdError::OutOfRange { name: "alpha", .. }
        ));
        assert!(matches!(
            Divergence::skew_reverse_kl(x).unwrap_err(),
            KdError::OutOfRange { name: "alpha", .. }
        ));
    }
    assert_eq!(
        Divergence::generalized_jsd(1.5, JsdConvention::Trl)
            .unwrap_err()
            .to_string(),
        "beta must be in [0, 1], got 1.5"
    );
    assert_eq!(
        DivergenceLossConfig::new(DivergenceKind::SkewKl)
            .with_alpha(-0.5)
            .try_init()
            .unwrap_err()
            .to_string(),
        "alpha must be in [0, 1], got -0.5"
    );
    // Only the parameter the kind uses is checked.
    assert!(
        DivergenceLossConfig::new(DivergenceKind::ReverseKl)
            .with_alpha(7.0)
            .try_init()
            .is_ok()
    );
    assert!(
        DivergenceLossConfig::new(DivergenceKind::GjsdTrl)
            .with_beta(0.0)
            .try_init()
            .is_ok()
    );
    assert!(
        DivergenceLossConfig::new(DivergenceKind::GjsdContinuous)
            .with_beta(1.0)
            .try_init()
            .is_ok()
    );
    assert_eq!(
        DivergenceLossConfig::new(DivergenceKind::ForwardKl)
            .with_temperature(0.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        "temperature must be finite and > 0, got 0"
    );
}

#[test]
#[should_panic(expected = "beta must be in [0, 1], got 2")]
fn gjsd_function_panics_on_bad_beta() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    generalized_jsd(s.clone(), s, 2.0, JsdConvention::Trl, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(expected = "alpha must be in [0, 1], got -1")]
fn skew_function_panics_on_bad_alpha() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    skew_reverse_kl(s.clone(), s, -1.0, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(
    expected = "teacher_logits: shape [1, 5] does not match student_logits shape [1, 4]"
)]
fn shape_mismatch_names_both_shapes() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0]]);
    let t = floats(vec![0.0; 5], [1, 5], &dev());
    reverse_kl(s, t, t1(), T2Scaling::Off);
}

#[test]
#[should_panic(expected = "temperature: shape [3] must be [1] or the number of rows [2]")]
fn per_row_temperature_length_is_checked() {
    let s = m2(&[[0.0, 1.0, 2.0, 3.0], [0.0; 4]]);
    let temps = floats(vec![1.0; 3], [3], &dev());
    divergence(s.clone(), s, Divergence::ForwardKl, temps, T2Scaling::Off);
}

// ----------------------------------------------------------------------------- vocabulary

#[test]
fn vocab_mismatch_is_an_error_naming_both_sizes() {
    let s = floats(vec![0.0; 2 * 3], [2, 3], &dev());
    let t = floats(vec![0.0; 2 * 5], [2, 5], &dev());
    let e = align_vocab(s, t, VocabAlignment::Error).unwrap_err();
    assert_eq!(
        e,
        KdError::VocabMismatch {
            student: 3,
            teacher: 5
        }
    );
    assert_eq!(
        e.to_string(),
        "vocabulary mismatch: student has 3 entries, teacher has 5 \
         (align them with VocabAlignment::Truncate or VocabAlignment::PadNegInf)"
    );
}

#[test]
#[should_panic(expected = "vocabulary mismatch: student has 151936 entries, teacher has 152064")]
fn module_panics_on_vocab_mismatch_by_default() {
    let loss = DivergenceLossConfig::new(DivergenceKind::ReverseKl).init();
    let s = Tensor::<2>::zeros([1, 151_936], &Device::flex());
    let t = Tensor::<2>::zeros([1, 152_064], &Device::flex());
    loss.forward(s, t, Reduction::Mean);
}

#[test]
fn vocab_truncate_and_pad_neg_inf() {
    let s = m2(&[[1.0, 2.0, 3.0, 4.0]]);
    let t = floats(vec![1.0, 2.0, 3.0, 4.0, 9.0, 9.0], [1, 6], &dev());
    let (a, b) = align_vocab(s.clone(), t.clone(), VocabAlignment::Truncate).unwrap();
    assert_eq!(to_vec(b.clone()), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.dims(), [1, 4]);
    let v = scalar(
        divergence(a, b, Divergence::ForwardKl, t1(), T2Scaling::Off).reduce(Reduction::Sum),
    );
    assert!(v.abs() < 1e-6);

    let (a, b) = align_vocab(s, t, VocabAlignment::PadNegInf).unwrap();
    let a = to_vec(a);
    assert_eq!(&a[4..], &[f32::NEG_INFINITY, f32::NEG_INFINITY]); // never zeros
    assert_eq!(to_vec(b)[4], 9.0);

    // Padding the *teacher* (the smaller side) with -inf leaves the loss as on the shared vocab.
    let s = floats(vec![0.5, 0.1, -0.3, 2.0, 1.0], [1, 5], &dev());
    let t = floats(vec![0.2, 0.1, 0.0], [1, 3], &dev());
    let loss = DivergenceLossConfig::new(DivergenceKind::ReverseKl)
        .with_vocab(VocabAlignment::PadNegInf)
        .init();
    let padded = scalar(loss.forward(s.clone(), t.clone(), Reduction::Sum));
    assert!(
        padded.is_infinite(),
        "student mass where the teacher has none: reverse KL = +inf"
    );
    let fkl = DivergenceLossConfig::new(DivergenceKind::ForwardKl)
        .with_vocab(VocabAlignment::PadNegInf)
        .init();
    assert!(scalar(fkl.forward(s, t, Reduction::Sum)).is_finite());
}

// ----------------------------------------------------------------------------- sparse

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

// ----------------------------------------------------------------------------- ensemble

#[test]
fn ensemble_weights_are_validated() {
    assert!(matches!(
        TeacherWeights::new(&[]).unwrap_err(),
        KdError::Empty { .. }
    ));
    assert!(matches!(
        TeacherWeights::new(&[1.0, -1.0]).unwrap_err(),
        KdError::NotPositive { .. }
    ));
    assert!(TeacherWeights::new(&[1.0, f64::NAN]).is_err());
}

#[test]
#[should_panic(expected = "teacher_logits: expected 2 entries, got 1")]
fn ensemble_needs_one_weight_per_teacher() {
    let s = m2(&[[0.0; 4]]);
    let w = TeacherWeights::uniform(2).unwrap();
    ensemble_divergence(
        s.clone(),
        vec![s],
        &w,
        EnsembleMode::Losses,
        Divergence::ForwardKl,
        t1(),
        T2Scaling::Off,
    );
}

#[test]
fn ensemble_modes_match_host_reference() {
    let s = [0.3f32, -0.2, 1.0, 0.0];
    let ta = [1.0f32, 0.0, -1.0, 0.5];
    let tb = [-0.5f32, 2.0, 0.0, 0.0];
    let (wa, wb) = (0.25, 0.75);
    let sm = |x: &[f32]| -> Vec<f64> {
        let e: Vec<f64> = x.iter().map(|&v| (v as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    let kl = |p: &[f64], q: &[f64]| -> f64 { p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum() };
    let (q, pa, pb) = (sm(&s), sm(&ta), sm(&tb));
    let mix: Vec<f64> = pa.iter().zip(&pb).map(|(a, b)| wa * a + wb * b).collect();
    let geo: Vec<f64> = {
        let g: Vec<f64> = pa
            .iter()
            .zip(&pb)
            .map(|(a, b)| a.powf(wa) * b.powf(wb))
            .collect();
        let z: f64 = g.iter().sum();
        g.iter().map(|v| v / z).collect()
    };
    let expected = [
        (EnsembleMode::Probabilities, kl(&mix, &q)),
        (EnsembleMode::LogProbabilities, kl(&geo, &q)),
        (EnsembleMode::Losses, wa * kl(&pa, &q) + wb * kl(&pb, &q)),
    ];
    let w = TeacherWeights::new(&[1.0, 3.0]).unwrap();
    for (mode, e) in expected {
        let v = scalar(
            ensemble_divergence(
                m2(&[s]),
                vec![m2(&[ta]), m2(&[tb])],
                &w,
                mode,
                Divergence::ForwardKl,
                t1(),
                T2Scaling::Off,
            )
            .reduce(Reduction::Sum),
        );
        assert!((v - e).abs() < 1e-5, "{mode:?}: {v} vs {e}");
    }
}

// ----------------------------------------------------------------------------- DKD

/// KL(p‖q) = TCKD + (1 − p_y) · NCKD (the decomposition of Zhao et al., eq. 3).
#[test]
fn dkd_parts_recompose_the_kl() {
    let s = m2(&[[2.0, 0.5, -1.0, 0.3], [0.0, 1.0, 0.0, -2.0]]);
    let t = m2(&[[3.0, 0.0, -2.0, 1.0], [0.5, 2.0, 0.1, 0.0]]);
    let y = ints(vec![0, 2], [2], &dev());
    let temp = Temperature::new(2.0).unwrap();
    let parts = dkd(
        s.clone(),
        t.clone(),
        y,
        1.0,
        1.0,
        temp,
        T2Scaling::Off,
        Some(-100),
    );
    let kl = to_vec(soft_kl(s, t.clone(), temp, T2Scaling::Off).values());
    let p = to_vec(temperature_softmax(t, temp));
    let (tc, nc) = (to_vec(parts.tckd.values()), to_vec(parts.nckd.values()));
    for (i, y) in [0usize, 2].into_iter().enumerate() {
        let recomposed = tc[i] + (1.0 - p[i * 4 + y]) * nc[i];
        assert!(
            (recomposed - kl[i]).abs() < 1e-5,
            "row {i}: {recomposed} vs {}",
            kl[i]
        );
    }
}

#[test]
fn dkd_two_classes_is_finite_and_nckd_is_zero() {
    let s = floats(vec![1.0e4, -1.0e4, 0.0, 0.0], [2, 2], &dev()).require_grad();
    let t = floats(vec![-1.0e4, 1.0e4, 3.0, -3.0], [2, 2], &dev());
    let y = ints(vec![0, -100], [2], &dev());
    let parts = dkd(
        s.clone(),
        t,
        y,
        1.0,
        8.0,
        Temperature::new(4.0).unwrap(),
        T2Scaling::On,
        Some(-100),
    );
    assert!(to_vec(parts.nckd.values()).iter().all(|v| *v == 0.0));
    let loss = parts.loss.reduce(Reduction::Mean);
    assert!(scalar(loss.clone()).is_finite());
    let g = to_vec(s.grad(&loss.backward()).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    assert!(g[2] == 0.0 && g[3] == 0.0, "ignored row gets no gradient");
}

#[test]
#[should_panic(expected = "student_logits: DKD needs at least 2 classes, got shape [2, 1]")]
fn dkd_needs_two_classes() {
    let s = floats(vec![0.0, 0.0], [2, 1], &dev());
    dkd(
        s.clone(),
        s,
        ints(vec![0, 0], [2], &dev()),
        1.0,
        1.0,
        t1(),
        T2Scaling::On,
        None,
    );
}

#[test]
fn dkd_config_validates() {
    assert_eq!(
        DkdLossConfig::new()
            .with_beta(-1.0)
            .try_init()
            .unwrap_err()
            .to_string(),
        "beta must be in [0, inf], got -1"
    );
    assert!(
        DkdLossConfig::new()
            .with_alpha(f64::INFINITY)
            .try_init()
            .is_err()
    );
}

// ----------------------------------------------------------------------------- schedules

#[test]
fn schedules_evaluate_at_a_step() {
    assert_eq!(Schedule::constant(2.0).value(1000), 2.0);
    let lin = Schedule::linear(4.0, 1.0, 3);
    assert_eq!(
        [lin.value(0), lin.value(1), lin.value(3), lin.value(9)],
        [4.0, 3.0, 1.0, 1.0]
    );
    let cos = Schedule::cosine(4.0, 2.0, 10);
    assert_eq!(cos.value(0), 4.0);
    assert!((cos.value(5) - 3.0).abs() < 1e-12);
    assert_eq!(cos.value(10), 2.0);
    let wu = Schedule::warm_up(4, 0.0, Schedule::linear(1.0, 0.0, 2));
    assert_eq!(
        [
            wu.value(0),
            wu.value(2),
            wu.value(4),
            wu.value(5),
            wu.value(6)
        ],
        [0.0, 0.5, 1.0, 0.5, 0.0]
    );
    assert!(Schedule::linear(0.0, f64::NAN, 2).validate().is_err());
    assert!(TemperatureSchedule::new(Schedule::warm_up(4, 0.0, Schedule::constant(2.0))).is_err());
    assert_eq!(
        TemperatureSchedule::new(Schedule::linear(4.0, -1.0, 2))
            .unwrap_err()
            .to_string(),
        "temperature must be finite and > 0, got -1"
    );
    let ts = TemperatureSchedule::new(Schedule::cosine(8.0, 1.0, 100)).unwrap();
    assert_eq!(ts.at(100).get(), 1.0);
}

#[test]
fn learnable_temperature_moves_and_stays_positive() {
    let device = dev();
    let mut module = LearnableTemperatureConfig::new()
        .with_initial(2.0)
        .with_min(0.05)
        .init(&device);
    assert!((module.value() - 2.0).abs() < 1e-5);
    let mut optim = AdamConfig::new().init();
    let s = m2(&[[2.0, 0.5, -1.0, 0.3], [0.0, 1.0, 0.0, -2.0]]);
    let t = m2(&[[-1.0, 0.0, 3.0, 1.0], [2.0, 0.5, 0.1, 0.0]]); // other argmax than the student
    // Maximise the divergence over T (CTKD's adversarial temperature): T shrinks towards the
    // bound, and must never cross it.
    let mut last = module.value();
    for step in 0..30 {
        let loss = divergence(
            s.clone(),
            t.clone(),
            Divergence::ForwardKl,
            module.temperature(),
            T2Scaling::Off,
        )
        .reduce(Reduction::Mean)
        .neg();
        let grads = GradientsParams::from_grads(loss.backward(), &module);
        module = optim.step(0.1, module, grads);
        let now = module.value();
        assert!(now > 0.05, "step {step}: T = {now}");
        if step == 0 {
            assert!((now - last).abs() > 1e-3, "T did not move: {last} → {now}");
        }
        last = now;
    }
    assert!(last < 1.0, "T = {last}");
    // The module is a proper Burn module: one parameter.
    assert_eq!(module.num_params(), 1);
}

// ----------------------------------------------------------------------------- chunked

#[test]
#[should_panic(expected = "chunk_rows must be > 0, got 0")]
fn chunk_rows_must_be_positive() {
    let s = m2(&[[0.0; 4]]);
    chunked_divergence(s.clone(), s, Divergence::ForwardKl, t1(), T2Scaling::Off, 0);
}

#[test]
#[should_panic(
    expected = "temperature: a per-row temperature that requires a gradient is not supported"
)]
fn chunked_rejects_learnable_temperature() {
    let s = m2(&[[0.0; 4]]);
    let temp = LearnableTemperatureConfig::new().init(&dev());
    chunked_divergence(
        s.clone(),
        s,
        Divergence::ForwardKl,
        temp.temperature(),
        T2Scaling::Off,
        1,
    );
}

#[test]
fn chunked_without_autodiff_and_on_3d_input() {
    let device = Device::flex();
    let s = Tensor::<3>::from_floats(
        [[[1.0, 0.0], [0.0, 2.0]], [[0.5, 0.5], [3.0, 0.0]]],
        &device,
    );
    let t = Tensor::<3>::from_floats(
        [[[0.0, 1.0], [1.0, 2.0]], [[0.5, 0.0], [0.0, 3.0]]],
        &device,
    );
    let d = Divergence::generalized_jsd(0.3, JsdConvention::Continuous).unwrap();
    let a = chunked_divergence(s.clone(), t.clone(), d, t1(), T2Scaling::Off, 3);
    assert_eq!(a.row_dims(), &[2, 2]);
    let b = divergence(s, t, d, t1(), T2Scaling::Off);
    assert_close(
        "3-d chunked",
        &to_vec(a.values()),
        &to_vec(b.values())
            .iter()
            .map(|&v| v as f64)
            .collect::<Vec<_>>(),
        1e-6,
    );
    assert!(chunk_rows_for_budget(0, 10).is_err());
    // A custom row function.
    let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev()).require_grad();
    let r = chunked_rows(x.clone(), 1, |c, _, n| c.sum_dim(1).reshape([n]));
    let g = to_vec(x.grad(&r.mul_scalar(2.0).sum().backward()).unwrap());
    assert_eq!(g, vec![2.0; 4]);
}

// ----------------------------------------------------------------------------- documented values

#[test]
fn trl_endpoints_jump_and_continuous_ones_do_not() {
    let s = m2(&[[2.0, 0.5, -1.0, 0.3]]);
    let t = m2(&[[-1.0, 0.0, 2.0, 1.0]]);
    let at = |beta: f64, c: JsdConvention| {
        scalar(
            generalized_jsd(s.clone(), t.clone(), beta, c, t1(), T2Scaling::Off)
                .reduce(Reduction::Sum),
        )
    };
    let fkl = scalar(soft_kl(s.clone(), t.clone(), t1(), T2Scaling::Off).reduce(Reduction::Sum));
    assert!((at(0.0, JsdConvention::Trl) - fkl).abs() < 1e-6);
    assert!(
        at(1e-4, JsdConvention::Trl) < 0.01 * fkl,
        "the TRL mixture vanishes near β = 0"
    );
    assert!((at(1e-4, JsdConvention::Continuous) - fkl).abs() < 0.01 * fkl);
    // β = ½: both conventions are the same JSD.
    assert!((at(0.5, JsdConvention::Trl) - at(0.5, JsdConvention::Continuous)).abs() < 1e-7);
}

#[test]
fn total_variation_is_in_unit_interval_and_skew_is_bounded() {
    let s = m2(&[[1.0e4, -1.0e4, 0.0, 0.0]]);
    let t = m2(&[[-1.0e4, 1.0e4, 0.0, 0.0]]);
    assert!(
        (scalar(total_variation(s.clone(), t.clone(), t1()).reduce(Reduction::Sum)) - 1.0).abs()
            < 1e-6
    );
    let v = scalar(skew_kl(s, t, 0.25, t1(), T2Scaling::Off).reduce(Reduction::Sum));
    assert!((v - 4f64.ln()).abs() < 1e-4, "{v}");
}
