//! The fused linear-head loss against the materialized path: every divergence, masks and
//! uneven chunks, without autodiff, fully ignored and empty batches, the teacher gets no
//! gradient, half-precision inputs.

use super::*;

#[test]
fn parity_every_divergence_masks_and_chunks() {
    for (name, dev) in DEVICES.iter() {
        let mut checks = 0;
        for (k, kind) in KINDS.into_iter().enumerate() {
            // wgpu (a shader per new shape and op mix on CI's software renderer) takes two of
            // the four configurations.
            let configs: &[(Option<usize>, bool, bool)] = if *name == "wgpu" {
                &[(Some(3), true, false), (None, false, true)]
            } else {
                &[
                    (Some(3), false, false),
                    (Some(2), true, false),
                    (None, true, true),
                    (Some(N + 5), false, true),
                ]
            };
            for &(chunk, with_mask, teacher_logits) in configs {
                let loss = FusedLinearKdLossConfig::new()
                    .with_divergence(kind)
                    .with_temperature(1.5 + k as f64 * 0.25)
                    .with_alpha(0.3)
                    .with_label_smoothing(if k % 2 == 0 { 0.0 } else { 0.1 })
                    .with_chunk_rows(chunk)
                    .init();
                let x = inputs(k as u64 * 17 + chunk.unwrap_or(0) as u64);
                let a = fused(&x, dev, &loss, with_mask, teacher_logits);
                let b = materialized(&x, dev, &loss, with_mask, teacher_logits);
                compare(
                    &format!(
                        "{name} {kind:?} chunk {chunk:?} mask {with_mask} logits {teacher_logits}"
                    ),
                    &a,
                    &b,
                );
                checks += 4;
            }
        }
        report("fused_linear_parity", name, checks);
    }
}

/// Without autodiff (or with nothing tracked) the loss is only evaluated: same value.
#[test]
fn value_without_autodiff() {
    let dev = Device::flex();
    let x = inputs(3);
    let loss = FusedLinearKdLossConfig::new()
        .with_chunk_rows(Some(2))
        .init();
    let h = floats(x.h.clone(), [N, H], &dev);
    let head = LinearHead::new(floats(x.w.clone(), [H, V], &dev)).with_bias(floats(
        x.b.clone(),
        [V],
        &dev,
    ));
    let teacher = LinearTeacher::Head {
        hidden: floats(x.ht.clone(), [N, HT], &dev),
        head: LinearHead::new(floats(x.wt.clone(), [HT, V], &dev)),
    };
    let out = loss.forward(h, &head, teacher, ints(x.labels.clone(), [N], &dev));
    let reference = materialized(&x, &Device::flex().autodiff(), &loss, false, false);
    let v = scalar(out.total.clone());
    assert!((v - reference.value).abs() <= RTOL * reference.value.abs());
    // The logged terms add up to the total.
    let (s, h) = (scalar(out.soft), scalar(out.hard));
    assert!((0.5 * s + 0.5 * h - v).abs() <= 1e-6 * v.abs().max(1.0));
}

/// Every row ignored: zero loss and zero gradients, not NaN.
#[test]
fn fully_ignored_batch_is_zero() {
    let dev = Device::flex().autodiff();
    let x = inputs(5);
    let (h, w, b) = leaves(&x, &dev);
    let loss = FusedLinearKdLossConfig::new()
        .with_chunk_rows(Some(3))
        .init();
    let out = loss.forward(
        h.clone(),
        &LinearHead::new(w.clone()).with_bias(b.clone()),
        LinearTeacher::Logits(floats(values(N * V, 9, 1.0), [N, V], &dev)),
        ints(vec![-100; N], [N], &dev),
    );
    let g = collect(out.total, &h, &w, &b);
    assert_eq!(g.value, 0.0);
    assert!(g.h.iter().chain(&g.w).chain(&g.b).all(|v| *v == 0.0));
}

/// The teacher never receives a gradient, even when its tensors are tracked.
#[test]
fn teacher_gets_no_gradient() {
    let dev = Device::flex().autodiff();
    let x = inputs(8);
    let (h, w, _) = leaves(&x, &dev);
    let ht = floats(x.ht.clone(), [N, HT], &dev).require_grad();
    let wt = floats(x.wt.clone(), [HT, V], &dev).require_grad();
    let loss = FusedLinearKdLossConfig::new().init();
    let out = loss.forward(
        h.clone(),
        &LinearHead::new(w),
        LinearTeacher::Head {
            hidden: ht.clone(),
            head: LinearHead::new(wt.clone()),
        },
        ints(x.labels.clone(), [N], &dev),
    );
    let grads = out.total.backward();
    assert!(h.grad(&grads).is_some());
    assert!(ht.grad(&grads).is_none() && wt.grad(&grads).is_none());
}

/// Half-precision hidden states and heads (f32 accumulation inside): close to the f32 loss and
/// gradients, within the format's resolution. bf16 on flex; ndarray stores no half type, and f16
/// on wgpu passes (`KD_WGPU_HALF=1`) but takes minutes on CI's software renderer.
#[test]
fn half_precision_inputs_match_f32_within_resolution() {
    use burn::tensor::DType;
    for (name, dev) in DEVICES.iter() {
        let half = match *name {
            "flex" => DType::BF16,
            "wgpu" if std::env::var("KD_WGPU_HALF").is_ok_and(|v| v == "1") => DType::F16,
            _ => continue,
        };
        let x = inputs(21);
        let loss = FusedLinearKdLossConfig::new()
            .with_chunk_rows(Some(3))
            .init();
        let run = |dtype: DType| {
            let h = floats(x.h.clone(), [N, H], dev).cast(dtype).require_grad();
            let w = floats(x.w.clone(), [H, V], dev).cast(dtype).require_grad();
            let teacher = LinearTeacher::Head {
                hidden: floats(x.ht.clone(), [N, HT], dev).cast(dtype),
                head: LinearHead::new(floats(x.wt.clone(), [HT, V], dev).cast(dtype)),
            };
            let out = loss.forward(
                h.clone(),
                &LinearHead::new(w.clone()),
                teacher,
                ints(x.labels.clone(), [N], dev),
            );
            let value = scalar(out.total.clone().cast(DType::F32));
            let grads = out.total.backward();
            let gh = to_vec(h.grad(&grads).unwrap().cast(DType::F32));
            let gw = to_vec(w.grad(&grads).unwrap().cast(DType::F32));
            (value, gh, gw)
        };
        let (v32, gh32, gw32) = run(DType::F32);
        let (v16, gh16, gw16) = run(half);
        assert!(
            (v16 - v32).abs() <= 2e-2 * v32.abs(),
            "{name}: {half:?} loss {v16} vs f32 {v32}"
        );
        for (what, a, b) in [("h", &gh16, &gh32), ("W", &gw16, &gw32)] {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (p, q)) in a.iter().zip(b.iter()).enumerate() {
                assert!(
                    (p - q).abs() <= 3e-2 * scale,
                    "{name}: {half:?} grad {what}[{i}] {p} vs f32 {q} (scale {scale})"
                );
            }
        }
    }
}

/// No tokens at all: a zero loss whose backward gives zero head gradients.
#[test]
fn empty_batch_is_zero() {
    let dev = Device::flex().autodiff();
    let h = floats(vec![], [0, H], &dev).require_grad();
    let w = floats(values(H * V, 4, 1.0), [H, V], &dev).require_grad();
    let out = FusedLinearKdLossConfig::new().init().forward(
        h,
        &LinearHead::new(w.clone()),
        LinearTeacher::Logits(floats(vec![], [0, V], &dev)),
        ints(vec![], [0], &dev),
    );
    assert_eq!(scalar(out.total.clone()), 0.0);
    let g = to_vec(w.grad(&out.total.backward()).unwrap());
    assert!(g.iter().all(|x| *x == 0.0));
}

/// A vocabulary wider than one column block of the head-gradient accumulation (4 096 columns):
/// `∂L/∂W` is added into the accumulator block by block, uneven last block included.
#[test]
fn wide_vocabulary_head_gradient_in_blocks() {
    use kd_losses::logits::{DistillationLossConfig, distillation_loss};
    const WIDE: usize = 9_000;
    let (n, h) = (5, 3);
    for (name, dev) in DEVICES.iter().filter(|(name, _)| *name != "wgpu") {
        let leaves = || {
            (
                floats(values(n * h, 41, 1.5), [n, h], dev).require_grad(),
                floats(values(h * WIDE, 42, 1.0), [h, WIDE], dev).require_grad(),
                floats(values(WIDE, 43, 0.5), [WIDE], dev).require_grad(),
            )
        };
        let ht = floats(values(n * h, 44, 1.5), [n, h], dev);
        let wt = floats(values(h * WIDE, 45, 1.2), [h, WIDE], dev);
        let labels = || ints(vec![17, 8_999, -100, 4_096, 0], [n], dev);

        let (hs, w, b) = leaves();
        let loss = FusedLinearKdLossConfig::new()
            .with_chunk_rows(Some(2))
            .init();
        let out = fused_linear_distillation(
            hs.clone(),
            &LinearHead::new(w.clone()).with_bias(b.clone()),
            LinearTeacher::Head {
                hidden: ht.clone(),
                head: LinearHead::new(wt.clone()),
            },
            labels(),
            None,
            &loss,
            Reduction::RowMean,
        );
        let a = collect(out.total, &hs, &w, &b);

        let (hs, w, b) = leaves();
        let z = hs.clone().matmul(w.clone()).add(b.clone().unsqueeze_dim(0));
        let total = distillation_loss(
            z,
            ht.matmul(wt),
            labels(),
            &DistillationLossConfig::new().init(),
            Reduction::RowMean,
        )
        .total;
        let e = collect(total, &hs, &w, &b);
        compare(&format!("{name} V = {WIDE}"), &a, &e);
    }
}

/// The loss inside a larger graph, as in training: hidden states from a trunk (`h = x·M`), the
/// head weight used a second time (a tied embedding's penalty), the loss scaled by 0.5. The
/// gradients of `M`, `W` and `b` equal the materialized path's; on Flex and wgpu (autodiff) the
/// accumulated gradients are handed over as they are, on ndarray through the surrogate.
#[test]
fn handed_over_gradients_compose_with_the_rest_of_the_graph() {
    for (name, dev) in DEVICES.iter() {
        let x = inputs(21);
        let loss = FusedLinearKdLossConfig::new()
            .with_alpha(0.4)
            .with_chunk_rows(Some(3))
            .init();
        let trunk = values(H * H, 22, 0.8);
        let run = |fused_path: bool| {
            let m = floats(trunk.clone(), [H, H], dev).require_grad();
            let (x_in, w, b) = leaves(&x, dev);
            let x_in = x_in.detach();
            let h = x_in.matmul(m.clone());
            let zt = floats(x.ht.clone(), [N, HT], dev).matmul(floats(x.wt.clone(), [HT, V], dev));
            let labels: Tensor<1, Int> = ints(x.labels.clone(), [N], dev);
            let (kd, handed) = if fused_path {
                let head = LinearHead::new(w.clone()).with_bias(b.clone());
                let out = loss.forward(h, &head, LinearTeacher::Logits(zt), labels);
                (out.total, out.handed_over)
            } else {
                let z = h.matmul(w.clone()).add(b.clone().unsqueeze_dim(0));
                let out = distillation_loss(
                    z,
                    zt,
                    labels,
                    &DistillationLossConfig::new().with_alpha(0.4).init(),
                    Reduction::RowMean,
                );
                (out.total, false)
            };
            let total = kd
                .mul_scalar(0.5)
                .add(w.clone().powi_scalar(2).sum().mul_scalar(0.1));
            let value = scalar(total.clone());
            let grads = total.backward();
            let g = Grads {
                value,
                h: to_vec(m.grad(&grads).expect("the trunk has a gradient")),
                w: to_vec(w.grad(&grads).expect("w has a gradient")),
                b: to_vec(b.grad(&grads).expect("b has a gradient")),
            };
            (g, handed)
        };
        let (a, handed) = run(true);
        let (b, _) = run(false);
        compare(&format!("{name}: trunk, tied weight, scaled loss"), &a, &b);
        // `KD_FUSED=0` turns the hand-over off with the kernels (the surrogate carries them).
        let kernels_on = std::env::var("KD_FUSED").map_or(true, |v| v != "0");
        assert_eq!(
            handed,
            *name != "ndarray" && kernels_on,
            "{name}: gradients handed over = {handed}"
        );
        report("fused_linear_handover", name, 4);
    }
}
