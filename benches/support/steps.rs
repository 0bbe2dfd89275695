//! Timed steps shared by `examples/compare_peers.rs` and `benches/fused.rs`: forward + backward
//! (gradients w.r.t. the student inputs) + device sync, on the cases of
//! `../shared/reference/bench_torch.py`. Included with `#[path]`; not a public API.

use burn::tensor::{Device, Distribution, Int, Tensor};
use kd_losses::attention::{HeadReduce, attention_mse_scores};
use kd_losses::divergence::Divergence;
use kd_losses::hidden::hidden_mse;
use kd_losses::*;

/// The Burn configuration these timings run in (the dev-dependency in `Cargo.toml`): what an
/// application gets with `burn = { version = "0.22", features = ["flex", "ndarray", "wgpu",
/// "autodiff", "train"] }`.
pub const BURN_FEATURES: &str = "burn 0.22 default features + flex, ndarray, wgpu, autodiff \
     (Flex with simd + rayon; wgpu with fusion + autotune)";

/// The device of an implementation name such as `flex-fused` or `wgpu-composed`.
pub fn device_for(imp: &str) -> Device {
    #[allow(deprecated)]
    match imp.split('-').next().unwrap_or("") {
        "flex" => Device::flex().autodiff(),
        "ndarray" => Device::ndarray().autodiff(),
        "wgpu" => Device::wgpu(Default::default()).autodiff(),
        other => panic!("--impls: unknown backend {other:?} (flex, ndarray, wgpu)"),
    }
}

/// A `*-fused` implementation must really run the fused kernel on its device.
fn assert_fused_runs(composed: bool, imp: &str, logits: &Tensor<2>) {
    assert!(
        composed || kd_losses::fused::fused_available(logits),
        "{imp}: the fused kernel does not run on this device"
    );
}

/// The squared-error rows as the fused kernel reduces them, or (`composed`) computed first with
/// Burn operations and reduced by them.
fn path(rows: RowLoss, composed: bool) -> RowLoss {
    if composed {
        RowLoss::new(rows.values(), rows.row_dims(), rows.row_size())
    } else {
        rows
    }
}

/// One timed step: forward + backward + device sync.
pub type Step = Box<dyn FnMut()>;

/// The dtype of a case: a `_f16` or `_bf16` suffix, `f32` otherwise.
pub fn case_dtype(case: &str) -> burn::tensor::DType {
    if case.ends_with("_bf16") {
        burn::tensor::DType::BF16
    } else if case.ends_with("_f16") {
        burn::tensor::DType::F16
    } else {
        burn::tensor::DType::F32
    }
}

/// `2·N(0, 1)` logits in the case's dtype (as `bench_torch.py` / `bench_gpu.py`).
fn logits(shape: [usize; 2], case: &str, dev: &Device) -> Tensor<2> {
    let x = Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), dev).mul_scalar(2.0);
    let dtype = case_dtype(case);
    if dtype == burn::tensor::DType::F32 {
        x
    } else {
        x.cast(dtype)
    }
}

/// Builds the inputs of `case` (`kd_ce_*`, `soft_kl_*`, `reverse_kl_*`, `jsd_*` — each with an
/// optional `_f16` / `_bf16` suffix —, `hidden_mse_*`, `attn_mse_*`, `fused_linear_*`) on `dev` and returns its step; `imp` ending in `-composed`
/// forces the composed path.
///
/// # Panics
/// If `imp` asks for the fused path where it does not run.
pub fn make_step(case: &str, shape: &[usize], imp: &str, dev: &Device) -> Step {
    let composed = imp.ends_with("-composed");
    let normal = Distribution::Normal(0.0, 1.0);
    if case.starts_with("fused_linear") {
        return fused_linear_step(case, shape, imp, dev);
    }
    if case.starts_with("door_") {
        return door_step(case, shape, imp, dev);
    }
    if case.starts_with("kd_ce") {
        let (n, v) = (shape[0], shape[1]);
        let s = logits([n, v], case, dev);
        let t = logits([n, v], case, dev);
        let y = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), dev);
        let kd = DistillationLossConfig::new()
            .with_temperature(2.0)
            .with_alpha(0.5)
            .init();
        assert_fused_runs(composed, imp, &s);
        let dev = dev.clone();
        return Box::new(move || {
            let s = s.clone().require_grad();
            let out = if composed {
                distillation_loss_composed(
                    s.clone(),
                    t.clone(),
                    y.clone(),
                    &kd,
                    Reduction::BatchMean,
                )
            } else {
                distillation_loss(s.clone(), t.clone(), y.clone(), &kd, Reduction::BatchMean)
            };
            let grads = out.total.backward();
            let g = s.grad(&grads).expect("student gradient");
            dev.sync().expect("device sync");
            drop(g);
        });
    }
    if case.starts_with("soft_kl") || case.starts_with("reverse_kl") || case.starts_with("jsd") {
        let (n, v) = (shape[0], shape[1]);
        let s = logits([n, v], case, dev);
        let t = logits([n, v], case, dev);
        // `jsd_*`: TRL's generalized JSD (GKD's default β = 0.5) at T = 1, as `bench_gpu.py`.
        let (d, temp) = if case.starts_with("soft_kl") {
            (Divergence::ForwardKl, 2.0)
        } else if case.starts_with("reverse_kl") {
            (Divergence::ReverseKl, 2.0)
        } else {
            let jsd = Divergence::generalized_jsd(0.5, kd_losses::divergence::JsdConvention::Trl);
            (jsd.expect("valid beta"), 1.0)
        };
        let temp = Temperature::new(temp).expect("valid temperature");
        assert!(
            composed || d.fused_available(&s),
            "{imp}: the fused kernel does not compute {} on this device",
            d.name()
        );
        let dev = dev.clone();
        return Box::new(move || {
            let s = s.clone().require_grad();
            let loss = if composed {
                kd_losses::divergence::divergence(s.clone(), t.clone(), d, temp, T2Scaling::On)
                    .reduce_composed(Reduction::BatchMean)
            } else {
                kd_losses::divergence::soft_loss(
                    s.clone(),
                    t.clone(),
                    d,
                    temp,
                    T2Scaling::On,
                    None,
                    Reduction::BatchMean,
                )
            };
            let grads = loss.backward();
            let g = s.grad(&grads).expect("student gradient");
            dev.sync().expect("device sync");
            drop(g);
        });
    }
    if !composed {
        assert!(
            imp.starts_with("flex"),
            "{imp}: the fused squared-error kernel runs on flex only"
        );
    }
    if case.starts_with("hidden") {
        let (b, sq, ds, dt) = (shape[0], shape[1], shape[2], shape[3]);
        let hs = Tensor::<2>::random([b * sq, ds], normal, dev);
        let ht = Tensor::<2>::random([b * sq, dt], normal, dev);
        let w = Tensor::<2>::random([ds, dt], normal, dev).mul_scalar(0.05);
        let bias = Tensor::<1>::random([dt], normal, dev).mul_scalar(0.1);
        let dev = dev.clone();
        return Box::new(move || {
            let (hs, w, bias) = (
                hs.clone().require_grad(),
                w.clone().require_grad(),
                bias.clone().require_grad(),
            );
            let proj = hs.clone().matmul(w.clone()) + bias.clone().unsqueeze::<2>();
            let loss = path(hidden_mse(proj, ht.clone()), composed).reduce(Reduction::ElementMean);
            let grads = loss.backward();
            let gs = (hs.grad(&grads), w.grad(&grads), bias.grad(&grads));
            dev.sync().expect("device sync");
            drop(gs);
        });
    }
    let (b, h, sq) = (shape[0], shape[1], shape[2]);
    let a_s = Tensor::<4>::random([b, h, sq, sq], normal, dev);
    let a_t = Tensor::<4>::random([b, h, sq, sq], normal, dev);
    let dev = dev.clone();
    Box::new(move || {
        let a = a_s.clone().require_grad();
        let rows = attention_mse_scores(a.clone(), a_t.clone(), None, HeadReduce::Match);
        let loss = path(rows, composed).reduce(Reduction::ElementMean);
        let grads = loss.backward();
        let g = a.grad(&grads);
        dev.sync().expect("device sync");
        drop(g);
    })
}

/// The doors of a `door_<loss>_RxV` case: every public way to the loss, plus `composed` (the
/// reference path, `RowLoss::reduce_composed` / `distillation_loss_composed`).
pub fn door_impls(case: &str) -> &'static [&'static str] {
    if case.starts_with("door_kl") {
        &[
            "flex-fn",
            "flex-fn-masked",
            "flex-module",
            "flex-module-masked",
            "flex-soft-loss",
            "flex-chunked",
            "flex-divergence-module",
            "flex-composed",
        ]
    } else if case.starts_with("door_jsd") {
        &[
            "flex-fn",
            "flex-fn-masked",
            "flex-module",
            "flex-module-masked",
            "flex-soft-loss",
            "flex-chunked",
            "flex-composed",
        ]
    } else if case.starts_with("door_ce") {
        &[
            "flex-fn",
            "flex-fn-masked",
            "flex-module",
            "flex-distillation",
            "flex-composed",
        ]
    } else {
        &["flex-fn", "flex-module", "flex-composed"]
    }
}

/// `door_<loss>_RxV` with `<loss>` one of `kl` (forward KL, `T = 2`, `T²`), `jsd` (TRL's
/// generalized JSD, β = 0.5, `T = 1`), `ce` (cross-entropy) or `mix` (`0.5·T²·KL + 0.5·CE`,
/// `T = 2`), reduced with the row mean, through the door `imp` (see [`door_impls`]): the
/// free function reduced (`fn`), after an all-true mask (`fn-masked`), the Module's `forward`
/// (`module`) or `forward_masked` (`module-masked`), `soft_loss`, `chunked_divergence` with
/// 256-row chunks (`chunked`), `DivergenceLoss` with the forward KL (`divergence-module`), `DistillationLoss` with `α = 0` (`distillation`), or the
/// composed reference.
fn door_step(case: &str, shape: &[usize], imp: &str, dev: &Device) -> Step {
    use kd_losses::divergence::{DivergenceLossConfig, JsdConvention, divergence, soft_loss};
    let (n, v) = (shape[0], shape[1]);
    let s = logits([n, v], case, dev);
    let t = logits([n, v], case, dev);
    let y = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), dev);
    let mask = RowMask::new(Tensor::<1>::ones([n], dev).greater_elem(0.0));
    let door = imp.split_once('-').map(|x| x.1).unwrap_or("").to_string();
    let red = Reduction::RowMean;
    let loss = case.split('_').nth(1).unwrap_or("").to_string();
    let (d, temp) = match loss.as_str() {
        "jsd" => (
            Divergence::generalized_jsd(0.5, JsdConvention::Trl).expect("β"),
            1.0,
        ),
        _ => (Divergence::ForwardKl, 2.0),
    };
    let tt = Temperature::new(temp).expect("temperature");
    assert!(
        door_impls(case).contains(&imp),
        "{case}: unknown door {imp} (doors: {:?})",
        door_impls(case)
    );
    let divergence_module = DivergenceLossConfig::new(d)
        .with_temperature(temp)
        .with_t2_scaling(true)
        .init();
    let kl_module = SoftKlLossConfig::new().with_temperature(temp).init();
    let ce_module = CrossEntropyLossConfig::new().init(dev);
    let options = kd_losses::logits::CrossEntropyOptions::default();
    let mix = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(if door == "distillation" { 0.0 } else { 0.5 })
        .init();
    let dev = dev.clone();
    Box::new(move || {
        let s = s.clone().require_grad();
        let x = s.clone();
        let t = t.clone();
        let value = match (loss.as_str(), door.as_str()) {
            ("mix", "fn") | ("ce", "distillation") => {
                distillation_loss(x, t, y.clone(), &mix, red).total
            }
            ("mix", "module") => mix.forward(x, t, y.clone(), red).total,
            ("mix", _) => distillation_loss_composed(x, t, y.clone(), &mix, red).total,
            ("ce", "fn") => cross_entropy(x, y.clone(), &options).reduce(red),
            ("ce", "fn-masked") => cross_entropy(x, y.clone(), &options)
                .masked(&mask)
                .reduce(red),
            ("ce", "module") => ce_module.forward(x, y.clone(), red),
            ("ce", _) => cross_entropy(x, y.clone(), &options).reduce_composed(red),
            (_, "fn") => divergence(x, t, d, tt, T2Scaling::On).reduce(red),
            (_, "fn-masked") => divergence(x, t, d, tt, T2Scaling::On)
                .masked(&mask)
                .reduce(red),
            ("kl", "module") => kl_module.forward(x, t, red),
            ("kl", "module-masked") => kl_module.forward_masked(x, t, &mask, red),
            (_, "module" | "divergence-module") => divergence_module.forward(x, t, red),
            (_, "module-masked") => divergence_module.forward_masked(x, t, &mask, red),
            (_, "soft-loss") => soft_loss(x, t, d, tt, T2Scaling::On, None, red),
            #[cfg(feature = "chunked")]
            (_, "chunked") => {
                kd_losses::chunked::chunked_divergence(x, t, d, tt, T2Scaling::On, 256).reduce(red)
            }
            _ => divergence(x, t, d, tt, T2Scaling::On).reduce_composed(red),
        };
        let grads = value.backward();
        let g = s.grad(&grads).expect("student gradient");
        dev.sync().expect("device sync");
        drop(g);
    })
}

/// `fused_linear_NxHxV`: an LM head `[H, V]` on `[N, H]` student hidden states against a teacher
/// head of the same sizes; forward KL + CE, `T = 2`, `α = 0.5`, mean over tokens, f32. Gradients
/// for the hidden states and the head weight. `*-fused-linear` runs
/// [`fused_linear_distillation`](kd_losses::fused_linear::fused_linear_distillation) (no `[N, V]`
/// logits); `*-materialized` forms both logits with a matmul and runs `distillation_loss` on them.
///
/// Variants: `fused_linear_frozen_NxHxV` — the head is frozen (no `∂W`; the gradient of the
/// hidden states only); `fused_linear_topk_NxHxV` — the teacher is its top-64 logits per token
/// (computed once, outside the step), the soft term `SparseKdLoss` (forward KL, renormalised,
/// full student normaliser) on each chunk, or on the materialized logits.
#[cfg(feature = "chunked")]
fn fused_linear_step(case: &str, shape: &[usize], imp: &str, dev: &Device) -> Step {
    use kd_losses::fused_linear::{
        FusedLinearKdLossConfig, LinearHead, LinearTeacher, fused_linear_distillation,
    };
    let materialized = imp.ends_with("-materialized");
    assert!(
        materialized || imp.ends_with("-fused-linear"),
        "{imp}: the fused_linear cases take *-fused-linear or *-materialized"
    );
    let frozen = case.starts_with("fused_linear_frozen_");
    let topk = case.starts_with("fused_linear_topk_");
    let (n, h, v) = (shape[0], shape[1], shape[2]);
    let normal = Distribution::Normal(0.0, 1.0);
    let scale = 1.0 / (h as f64).sqrt();
    let hs = Tensor::<2>::random([n, h], normal, dev);
    let w = Tensor::<2>::random([h, v], normal, dev).mul_scalar(scale);
    let ht = Tensor::<2>::random([n, h], normal, dev);
    let wt = Tensor::<2>::random([h, v], normal, dev).mul_scalar(2.0 * scale);
    let y = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, v as f64), dev);
    // The stored top-64 teacher of the `topk` variant.
    let stored = topk.then(|| {
        let (vals, idx) = ht.clone().matmul(wt.clone()).topk_with_indices(64, 1);
        // As read from storage: `[N, 64]` tensors of their own (Flex's top-k results are views
        // into the sorted `[N, V]` buffers, which they would keep alive).
        (
            Tensor::<2, Int>::from_data(idx.into_data(), dev),
            Tensor::<2>::from_data(vals.into_data(), dev),
        )
    });
    // KD_FUSED_LINEAR_CHUNK overrides the automatic chunk size (for measuring it).
    let chunk = std::env::var("KD_FUSED_LINEAR_CHUNK")
        .ok()
        .map(|c| c.parse::<usize>().expect("KD_FUSED_LINEAR_CHUNK: rows"));
    let fused = FusedLinearKdLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .with_chunk_rows(chunk)
        .init();
    let kd = DistillationLossConfig::new()
        .with_temperature(2.0)
        .with_alpha(0.5)
        .init();
    let sparse = kd_losses::SparseKdLossConfig::new()
        .with_temperature(2.0)
        .init(Divergence::ForwardKl);
    let dev = dev.clone();
    Box::new(move || {
        let hs = hs.clone().require_grad();
        let w = if frozen {
            w.clone()
        } else {
            w.clone().require_grad()
        };
        let teacher_topk = || {
            let (idx, vals) = stored.clone().expect("the top-k variant");
            TopkTeacher::from_logits(idx, vals)
        };
        let total = if materialized {
            let z = hs.clone().matmul(w.clone());
            if topk {
                let mask = RowMask::from_labels(y.clone(), -100);
                let soft =
                    sparse.forward_masked(z.clone(), teacher_topk(), &mask, Reduction::RowMean);
                let options = CrossEntropyOptions {
                    ignore_index: Some(-100),
                    label_smoothing: 0.0,
                    class_weights: None,
                };
                let hard = cross_entropy(z, y.clone(), &options).reduce(Reduction::RowMean);
                soft.mul_scalar(0.5).add(hard.mul_scalar(0.5))
            } else {
                let zt = ht.clone().matmul(wt.clone());
                distillation_loss(z, zt, y.clone(), &kd, Reduction::RowMean).total
            }
        } else {
            let teacher = if topk {
                LinearTeacher::Topk(teacher_topk())
            } else {
                LinearTeacher::Head {
                    hidden: ht.clone(),
                    head: LinearHead::new(wt.clone()),
                }
            };
            let head = LinearHead::new(w.clone());
            fused_linear_distillation(
                hs.clone(),
                &head,
                teacher,
                y.clone(),
                None,
                &fused,
                Reduction::RowMean,
            )
            .total
        };
        let grads = total.backward();
        let gs = (hs.grad(&grads), w.grad(&grads));
        dev.sync().expect("device sync");
        drop(gs);
    })
}

#[cfg(not(feature = "chunked"))]
fn fused_linear_step(_: &str, _: &[usize], _: &str, _: &Device) -> Step {
    panic!("the fused_linear cases need the `chunked` feature (--all-features)")
}
