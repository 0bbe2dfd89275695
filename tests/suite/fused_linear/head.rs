//! What LLM users put through the head: a top-k teacher stored offline, soft-capped and scaled
//! logits, a frozen head and a low-rank adapter — each against the materialized path (the
//! logits formed in full, the crate's losses on them, Burn's autodiff through the matmuls), on
//! every backend.

use super::*;
use kd_losses::fused_linear::HeadGradients;
use kd_losses::sparse::{MissingMass, SparseKdLossConfig, StudentNorm, TopkTeacher};

const K: usize = 4;

/// The teacher's logits `ht·wt` on the host, and per row its top-`K` ids with their logits and
/// full-vocabulary log-probabilities.
fn host_topk(x: &Inputs) -> (Vec<i64>, Vec<f32>, Vec<f32>) {
    let (mut ids, mut logits, mut logps) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..N {
        let z: Vec<f64> = (0..V)
            .map(|v| {
                (0..HT)
                    .map(|j| (x.ht[r * HT + j] * x.wt[j * V + v]) as f64)
                    .sum()
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let mut order: Vec<usize> = (0..V).collect();
        order.sort_by(|a, b| z[*b].total_cmp(&z[*a]));
        for &v in &order[..K] {
            ids.push(v as i64);
            logits.push(z[v] as f32);
            logps.push((z[v] - lse) as f32);
        }
    }
    (ids, logits, logps)
}

fn topk(x: &Inputs, log_probs: bool, dev: &Device) -> TopkTeacher<2> {
    let (ids, logits, logps) = host_topk(x);
    let idx = ints(ids, [N, K], dev);
    if log_probs {
        TopkTeacher::from_log_probs(idx, floats(logps, [N, K], dev))
    } else {
        TopkTeacher::from_logits(idx, floats(logits, [N, K], dev))
    }
}

fn labels_of(x: &Inputs, with_mask: bool, dev: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = x
        .labels
        .iter()
        .zip(&x.mask)
        .map(|(&l, &m)| if with_mask && !m { -100 } else { l })
        .collect();
    ints(labels, [N], dev)
}

/// `α · SparseKdLoss + (1 − α) · CE` on the materialized logits.
fn topk_materialized(
    x: &Inputs,
    dev: &Device,
    loss: &FusedLinearKdLoss,
    log_probs: bool,
    with_mask: bool,
) -> Grads {
    let cfg = &loss.config;
    let (h, w, b) = leaves(x, dev);
    let z = h.clone().matmul(w.clone()).add(b.clone().unsqueeze_dim(0));
    let labels = labels_of(x, with_mask, dev);
    let sparse = SparseKdLossConfig::new()
        .with_temperature(cfg.temperature)
        .with_t2_scaling(cfg.t2_scaling)
        .with_missing_mass(cfg.missing_mass)
        .with_student_norm(cfg.student_norm)
        .init(loss.divergence);
    let mask = RowMask::from_labels(labels.clone(), -100);
    let soft = sparse.forward_masked(
        z.clone(),
        topk(x, log_probs, dev),
        &mask,
        Reduction::RowMean,
    );
    let options = CrossEntropyOptions {
        ignore_index: Some(-100),
        label_smoothing: cfg.label_smoothing,
        class_weights: None,
    };
    let hard = cross_entropy(z, labels, &options).reduce(Reduction::RowMean);
    let total = soft
        .mul_scalar(cfg.alpha)
        .add(hard.mul_scalar(1.0 - cfg.alpha));
    collect(total, &h, &w, &b)
}

fn topk_fused(
    x: &Inputs,
    dev: &Device,
    loss: &FusedLinearKdLoss,
    log_probs: bool,
    with_mask: bool,
) -> Grads {
    let (h, w, b) = leaves(x, dev);
    let head = LinearHead::new(w.clone()).with_bias(b.clone());
    let mask: Option<Tensor<1, Bool>> = with_mask.then(|| bools(x.mask.clone(), [N], dev));
    let out = fused_linear_distillation(
        h.clone(),
        &head,
        LinearTeacher::Topk(topk(x, log_probs, dev)),
        ints(x.labels.clone(), [N], dev),
        mask,
        loss,
        Reduction::RowMean,
    );
    collect(out.total, &h, &w, &b)
}

#[test]
fn topk_teacher_through_the_head_equals_sparse_loss_on_materialized_logits() {
    // (divergence, log-probs, missing mass, student norm, chunk, mask)
    let configs = [
        (
            Divergence::ForwardKl,
            false,
            MissingMass::Renormalize,
            StudentNorm::Full,
            Some(3),
            true,
        ),
        (
            Divergence::ForwardKl,
            true,
            MissingMass::TailBucket,
            StudentNorm::Full,
            Some(2),
            false,
        ),
        (
            Divergence::ReverseKl,
            true,
            MissingMass::TailBucket,
            StudentNorm::Full,
            None,
            true,
        ),
        (
            Divergence::GeneralizedJsd {
                beta: 0.4,
                convention: JsdConvention::Trl,
            },
            false,
            MissingMass::Renormalize,
            StudentNorm::Support,
            Some(4),
            false,
        ),
        (
            Divergence::TotalVariation,
            true,
            MissingMass::TailBucket,
            StudentNorm::Full,
            Some(5),
            true,
        ),
    ];
    for (name, dev) in DEVICES.iter() {
        let mut checks = 0;
        for (i, &(d, log_probs, mm, sn, chunk, with_mask)) in configs.iter().enumerate() {
            if *name == "wgpu" && i % 2 == 1 {
                continue; // a shader per shape and op mix on CI's software renderer
            }
            let loss = FusedLinearKdLossConfig::new()
                .with_divergence(d)
                .with_temperature(1.5 + 0.5 * i as f64)
                .with_alpha(0.6)
                .with_label_smoothing(if i % 2 == 0 { 0.0 } else { 0.1 })
                .with_missing_mass(mm)
                .with_student_norm(sn)
                .with_chunk_rows(chunk)
                .init();
            let x = inputs(40 + i as u64);
            let a = topk_fused(&x, dev, &loss, log_probs, with_mask);
            let b = topk_materialized(&x, dev, &loss, log_probs, with_mask);
            compare(
                &format!("{name} top-k {d:?} {mm:?} {sn:?} chunk {chunk:?}"),
                &a,
                &b,
            );
            checks += 4;
        }
        report("fused_linear_topk", name, checks);
    }
}

/// `α · T²·D(teacher ‖ student) + (1 − α) · CE` on materialized logits, mean over the rows whose
/// label is kept: the reference of the head's own parity tests.
fn mixed_reference(
    z: Tensor<2>,
    zt: Tensor<2>,
    labels: Tensor<1, Int>,
    kind: Divergence,
    temperature: f64,
    alpha: f64,
) -> Tensor<1> {
    let options = CrossEntropyOptions {
        ignore_index: Some(-100),
        label_smoothing: 0.0,
        class_weights: None,
    };
    let hard = cross_entropy(z.clone(), labels.clone(), &options).reduce(Reduction::RowMean);
    let t = Temperature::new(temperature).unwrap();
    let soft = divergence(z, zt, kind, t, T2Scaling::On)
        .masked(&RowMask::from_labels(labels, -100))
        .reduce(Reduction::RowMean);
    soft.mul_scalar(alpha).add(hard.mul_scalar(1.0 - alpha))
}

/// `c · tanh(s·z / c)` by hand.
fn capped(z: Tensor<2>, scale: f64, cap: f64) -> Tensor<2> {
    z.mul_scalar(scale).div_scalar(cap).tanh().mul_scalar(cap)
}

#[test]
fn soft_capped_and_scaled_logits_through_the_head() {
    let (cs, scale_t, ct) = (1.5, 1.3, 2.0);
    for (name, dev) in DEVICES.iter() {
        let mut checks = 0;
        for (k, kind) in [Divergence::ForwardKl, Divergence::SkewKl { alpha: 0.2 }]
            .into_iter()
            .enumerate()
        {
            let loss = FusedLinearKdLossConfig::new()
                .with_divergence(kind)
                .with_alpha(0.4)
                .with_chunk_rows(Some(3))
                .with_student_logits(LogitTransform::softcap(cs).unwrap())
                .with_teacher_logits(LogitTransform {
                    scale: scale_t,
                    softcap: Some(ct),
                })
                .init();
            let x = inputs(60 + k as u64);
            let a = fused(&x, dev, &loss, true, false);
            // Materialized, with the transforms written out by hand.
            let (h, w, b) = leaves(&x, dev);
            let z = capped(
                h.clone().matmul(w.clone()).add(b.clone().unsqueeze_dim(0)),
                1.0,
                cs,
            );
            let zt = capped(
                floats(x.ht.clone(), [N, HT], dev).matmul(floats(x.wt.clone(), [HT, V], dev)),
                scale_t,
                ct,
            );
            let total = mixed_reference(z, zt, labels_of(&x, true, dev), kind, 2.0, 0.4);
            let e = collect(total, &h, &w, &b);
            compare(&format!("{name} softcap {kind:?}"), &a, &e);
            checks += 4;
        }
        report("fused_linear_softcap", name, checks);
    }
}

#[test]
fn frozen_head_computes_no_weight_gradient() {
    for (name, dev) in DEVICES.iter() {
        let x = inputs(70);
        let loss = FusedLinearKdLossConfig::new()
            .with_chunk_rows(Some(3))
            .init();
        let run = |fused: bool| {
            let h = floats(x.h.clone(), [N, H], dev).require_grad();
            let w = floats(x.w.clone(), [H, V], dev); // frozen
            let teacher_h = floats(x.ht.clone(), [N, HT], dev);
            let teacher_w = floats(x.wt.clone(), [HT, V], dev);
            let labels = ints(x.labels.clone(), [N], dev);
            let (total, computed) = if fused {
                let out = loss.forward(
                    h.clone(),
                    &LinearHead::new(w.clone()),
                    LinearTeacher::Head {
                        hidden: teacher_h,
                        head: LinearHead::new(teacher_w),
                    },
                    labels,
                );
                (out.total, Some(out.gradients))
            } else {
                let kd = DistillationLossConfig::new().init();
                let out = distillation_loss(
                    h.clone().matmul(w.clone()),
                    teacher_h.matmul(teacher_w),
                    labels,
                    &kd,
                    Reduction::RowMean,
                );
                (out.total, None)
            };
            let value = scalar(total.clone());
            let grads = total.backward();
            assert!(
                w.grad(&grads).is_none(),
                "{name}: a frozen head got a gradient"
            );
            (
                value,
                to_vec(h.grad(&grads).expect("h has a gradient")),
                computed,
            )
        };
        let (va, ga, computed) = run(true);
        let (vb, gb, _) = run(false);
        assert_eq!(
            computed,
            Some(HeadGradients {
                hidden: true,
                weight: false,
                bias: false,
                adapter: false,
            }),
            "{name}: the products computed for a frozen head"
        );
        assert!((va - vb).abs() <= RTOL * vb.abs(), "{name}: {va} vs {vb}");
        assert_rel(&format!("{name} frozen grad h"), &ga, &gb);
        report("fused_linear_frozen", name, 2);
    }
}

#[test]
fn low_rank_adapter_gets_its_gradients_without_the_head_gradient() {
    const R: usize = 2;
    let scale = 0.75;
    for (name, dev) in DEVICES.iter() {
        let x = inputs(80);
        let a0 = values(H * R, 81, 0.8);
        let b0 = values(R * V, 82, 0.8);
        let loss = FusedLinearKdLossConfig::new()
            .with_divergence(Divergence::ReverseKl)
            .with_chunk_rows(Some(2))
            .init();
        let run = |fused: bool| {
            let h = floats(x.h.clone(), [N, H], dev).require_grad();
            let w = floats(x.w.clone(), [H, V], dev); // frozen base weight
            let bias = floats(x.b.clone(), [V], dev).require_grad();
            let a = floats(a0.clone(), [H, R], dev).require_grad();
            let bl = floats(b0.clone(), [R, V], dev).require_grad();
            let teacher_z =
                floats(x.ht.clone(), [N, HT], dev).matmul(floats(x.wt.clone(), [HT, V], dev));
            let labels = ints(x.labels.clone(), [N], dev);
            let total = if fused {
                let head = LinearHead::new(w.clone())
                    .with_bias(bias.clone())
                    .with_adapter(a.clone(), bl.clone(), scale);
                let out = loss.forward(h.clone(), &head, LinearTeacher::Logits(teacher_z), labels);
                assert!(
                    out.gradients.adapter && !out.gradients.weight,
                    "{name}: {:?}",
                    out.gradients
                );
                out.total
            } else {
                let z = h
                    .clone()
                    .matmul(w.clone())
                    .add(
                        h.clone()
                            .matmul(a.clone())
                            .matmul(bl.clone())
                            .mul_scalar(scale),
                    )
                    .add(bias.clone().unsqueeze_dim(0));
                let cfg = &loss.config;
                mixed_reference(
                    z,
                    teacher_z,
                    labels,
                    loss.divergence,
                    cfg.temperature,
                    cfg.alpha,
                )
            };
            let value = scalar(total.clone());
            let grads = total.backward();
            assert!(
                w.grad(&grads).is_none(),
                "{name}: the frozen base weight got a gradient"
            );
            let g = |t: &Tensor<2>| to_vec(t.grad(&grads).expect("a gradient"));
            (
                value,
                [
                    g(&h),
                    g(&a),
                    g(&bl),
                    to_vec(bias.grad(&grads).expect("bias gradient")),
                ],
            )
        };
        let (va, ga) = run(true);
        let (vb, gb) = run(false);
        assert!((va - vb).abs() <= RTOL * vb.abs(), "{name}: {va} vs {vb}");
        for (what, p, q) in [("h", 0, 0), ("A", 1, 1), ("B", 2, 2), ("bias", 3, 3)] {
            assert_rel(&format!("{name} adapter grad {what}"), &ga[p], &gb[q]);
        }
        report("fused_linear_adapter", name, 5);
    }
}

/// bf16 hidden states and heads (flex; ndarray has no half type, wgpu no bf16): the error of the
/// value and the gradients against float64 (the materialized path on the same inputs in `f64`:
/// logits product, composed loss and autodiff all in float64), the bounds docs/conventions.md
/// states; the f32 head's error on the same scale for comparison; the soft term is never below
/// 0. Inputs are rounded to bf16 first, so that only the computation's error is measured.
#[test]
fn bf16_head_error_is_within_the_stated_bounds() {
    use burn::tensor::DType;
    const BN: usize = 96;
    const BH: usize = 64;
    const BV: usize = 1500;
    let dev = Device::flex().autodiff();
    let round = |x: Vec<f32>, shape: [usize; 2]| {
        to_vec(floats(x, shape, &dev).cast(DType::BF16).cast(DType::F32))
    };
    let h0 = round(values(BN * BH, 91, 2.0), [BN, BH]);
    let w0 = round(values(BH * BV, 92, 0.4), [BH, BV]);
    let ht0 = round(values(BN * BH, 93, 2.0), [BN, BH]);
    let wt0 = round(values(BH * BV, 94, 0.6), [BH, BV]);
    let labels: Vec<i64> = (0..BN as i64)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                (i * 37) % BV as i64
            }
        })
        .collect();
    let mut worst = [0f64; 3];
    for kind in [Divergence::ForwardKl, Divergence::ReverseKl] {
        let loss = FusedLinearKdLossConfig::new()
            .with_divergence(kind)
            .with_chunk_rows(Some(32))
            .init();
        let run = |dtype: DType| {
            let h = floats(h0.clone(), [BN, BH], &dev)
                .cast(dtype)
                .require_grad();
            let w = floats(w0.clone(), [BH, BV], &dev)
                .cast(dtype)
                .require_grad();
            let teacher = LinearTeacher::Head {
                hidden: floats(ht0.clone(), [BN, BH], &dev).cast(dtype),
                head: LinearHead::new(floats(wt0.clone(), [BH, BV], &dev).cast(dtype)),
            };
            let out = loss.forward(
                h.clone(),
                &LinearHead::new(w.clone()),
                teacher,
                ints(labels.clone(), [BN], &dev),
            );
            let soft = scalar(out.soft.clone().cast(DType::F32));
            let value = scalar(out.total.clone().cast(DType::F32));
            let grads = out.total.backward();
            let gh = to_vec(h.grad(&grads).unwrap().cast(DType::F32));
            let gw = to_vec(w.grad(&grads).unwrap().cast(DType::F32));
            (value, soft, gh, gw)
        };
        // The float64 reference: the materialized logits and the composed loss in f64.
        let reference = || {
            let f64t =
                |x: &[f32], shape: [usize; 2]| floats(x.to_vec(), shape, &dev).cast(DType::F64);
            let h = f64t(&h0, [BN, BH]).require_grad();
            let w = f64t(&w0, [BH, BV]).require_grad();
            let z = h.clone().matmul(w.clone());
            let zt = f64t(&ht0, [BN, BH]).matmul(f64t(&wt0, [BH, BV]));
            let y: Tensor<1, Int> = ints(labels.clone(), [BN], &dev);
            let total = super::composed_loss(&loss, z, zt, y);
            assert_eq!(total.dtype(), DType::F64, "the reference runs in float64");
            let value = total.clone().into_scalar::<f64>();
            let grads = total.backward();
            let gh = to_vec(h.grad(&grads).unwrap().cast(DType::F32));
            let gw = to_vec(w.grad(&grads).unwrap().cast(DType::F32));
            (value, gh, gw)
        };
        let (v64, gh64, gw64) = reference();
        let (v32, _, gh32, gw32) = run(DType::F32);
        let (v16, soft16, gh16, gw16) = run(DType::BF16);
        assert!(soft16 >= 0.0, "{kind:?}: bf16 soft term {soft16} < 0");
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            a.iter()
                .zip(b)
                .fold(0f64, |m, (p, q)| m.max((*p as f64 - *q as f64).abs()))
                / scale
        };
        let errs = [
            (v16 - v64).abs() / v64.abs(),
            rel(&gh16, &gh64),
            rel(&gw16, &gw64),
        ];
        let errs32 = [
            (v32 - v64).abs() / v64.abs(),
            rel(&gh32, &gh64),
            rel(&gw32, &gw64),
        ];
        println!(
            "KD-BF16 {kind:?} vs float64: bf16 value {:.2e}, grad h {:.2e}, grad W {:.2e}; \
             f32 value {:.2e}, grad h {:.2e}, grad W {:.2e} (of the largest entry)",
            errs[0], errs[1], errs[2], errs32[0], errs32[1], errs32[2]
        );
        // The f32 head itself is exact to f32 rounding: what the bf16 bounds add is bf16's.
        assert!(
            errs32.iter().all(|e| *e <= 1e-5),
            "{kind:?}: f32 head error against float64 {errs32:?} > 1e-5"
        );
        for (w, e) in worst.iter_mut().zip(errs) {
            *w = w.max(e);
        }
    }
    // The bounds of docs/conventions.md ("bf16 through the LM head").
    assert!(worst[0] <= 1e-3, "bf16 value error {:.2e} > 1e-3", worst[0]);
    assert!(
        worst[1] <= 5e-3,
        "bf16 grad h error {:.2e} > 5e-3",
        worst[1]
    );
    assert!(
        worst[2] <= 5e-3,
        "bf16 grad W error {:.2e} > 5e-3",
        worst[2]
    );
    report("fused_linear_bf16", "flex", 3);
}
