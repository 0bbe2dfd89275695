//! Golden tests, families a (temperature softmax), b (Hinton soft loss), d (cross-entropy) and
//! e (α-mix), loss and gradient, on every backend of `common::devices()`.
//!
//! The reference folder is `tests/golden` or `$KD_GOLDEN_DIR`. A case whose parameters this
//! file cannot map fails the test rather than being skipped.

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::*;

fn reduction(name: &str) -> Option<Reduction> {
    golden_reduction(name)
}

fn finish(case: &Case, rows: RowLoss, device: &Device) -> (Tensor<1>, Vec<f32>) {
    golden_finish(case, rows, device, golden_reduction)
}

fn check_grad(case: &Case, backend: &str, key: &str, grad: Option<Vec<f32>>) {
    let exp = case.expected(key);
    let grad = grad.unwrap_or_else(|| panic!("{backend}/{}: no gradient for {key}", case.name));
    assert_close(
        &format!("{backend}/{}/{key}", case.name),
        &grad,
        &exp.f64s(),
        F32_GOLDEN_RTOL,
    );
}

fn run_rank<const D: usize>(
    case: &Case,
    backend: &str,
    device: &Device,
    f: impl Fn(Tensor<D>) -> (Tensor<1>, Vec<f32>),
    input: &str,
) {
    let x = case.input(input).float::<D>(device).require_grad();
    let (loss, value) = f(x.clone());
    assert_close(
        &format!("{backend}/{}/loss", case.name),
        &value,
        &case.expected("loss").f64s(),
        F32_GOLDEN_RTOL,
    );
    let grads = loss.backward();
    check_grad(
        case,
        backend,
        &format!("grad_{input}"),
        x.grad(&grads).map(to_vec),
    );
}

#[test]
fn golden_a_temperature_softmax() {
    let g = load_golden("a_softmax.json");
    assert_eq!(g.family, "a_softmax");
    for (backend, device) in devices() {
        for case in &g.cases {
            let t = Temperature::new(case.param_f64("T")).unwrap();
            let func = case.param_str("fn").expect("fn");
            let cot = case.cotangent.as_ref().expect("family a has cotangents");
            macro_rules! go {
                ($d:literal) => {{
                    let c = cot.float::<$d>(&device);
                    run_rank::<$d>(
                        case,
                        backend,
                        &device,
                        |x| {
                            let y = match func {
                                "softmax" => temperature_softmax(x, t),
                                "log_softmax" => temperature_log_softmax(x, t),
                                other => panic!("golden a: unmapped fn {other:?}"),
                            };
                            let v = to_vec(y.clone());
                            // Σ cot·y: its value may be -inf (log-softmax at -inf), but only its
                            // gradient, the VJP, is compared; the output itself is checked via v.
                            let s = y.mul(c.clone()).sum();
                            (s, v)
                        },
                        "x",
                    )
                }};
            }
            match case.input("x").rank() {
                2 => go!(2),
                3 => go!(3),
                r => panic!("golden a: unmapped rank {r}"),
            }
        }
        report("golden_a_temperature_softmax", backend, g.cases.len());
    }
}

fn mask_of(case: &Case, device: &Device) -> Option<RowMask> {
    golden_row_mask(case, device)
}

#[test]
fn golden_b_hinton_soft_loss() {
    let g = load_golden("b_hinton_kd.json");
    assert_eq!(g.family, "b_hinton_kd");
    for (backend, device) in devices() {
        for case in &g.cases {
            let t = Temperature::new(case.param_f64("T")).unwrap();
            let mask = mask_of(case, &device);
            macro_rules! go {
                ($d:literal) => {{
                    let teacher = case.input("teacher").float::<$d>(&device);
                    run_rank::<$d>(
                        case,
                        backend,
                        &device,
                        |s| {
                            let rows = soft_kl(s, teacher.clone(), t, T2Scaling::On)
                                .masked_opt(mask.as_ref());
                            finish(case, rows, &device)
                        },
                        "student",
                    )
                }};
            }
            match case.input("student").rank() {
                2 => go!(2),
                3 => go!(3),
                r => panic!("golden b: unmapped rank {r}"),
            }
        }
        report("golden_b_hinton_soft_loss", backend, g.cases.len());
    }
}

#[test]
fn golden_d_cross_entropy() {
    let g = load_golden("d_cross_entropy.json");
    assert_eq!(g.family, "d_cross_entropy");
    for (backend, device) in devices() {
        for case in &g.cases {
            let options = CrossEntropyOptions {
                ignore_index: Some(case.param_f64("ignore_index") as i64),
                label_smoothing: case.param_f64("label_smoothing"),
                class_weights: None,
            };
            macro_rules! go {
                ($d:literal) => {{
                    let labels = case.input("labels").int::<{ $d - 1 }>(&device);
                    run_rank::<$d>(
                        case,
                        backend,
                        &device,
                        |x| {
                            let rows = cross_entropy(x, labels.clone(), &options);
                            // Family d's "mean" is F.cross_entropy's mean over valid rows.
                            golden_finish(case, rows, &device, |r| match r {
                                "mean" => Some(Reduction::RowMean),
                                other => reduction(other),
                            })
                        },
                        "logits",
                    )
                }};
            }
            match case.input("logits").rank() {
                2 => go!(2),
                3 => go!(3),
                r => panic!("golden d: unmapped rank {r}"),
            }
        }
        report("golden_d_cross_entropy", backend, g.cases.len());
    }
}

#[test]
fn golden_e_combined() {
    let g = load_golden("e_combined.json");
    assert_eq!(g.family, "e_combined");
    for (backend, device) in devices() {
        for case in &g.cases {
            let kd = DistillationLossConfig::new()
                .with_temperature(case.param_f64("T"))
                .with_alpha(case.param_f64("alpha"))
                .with_ignore_index(case.param_f64("ignore_index") as i64)
                .try_init()
                .unwrap();
            macro_rules! go {
                ($d:literal) => {{
                    let teacher = case.input("teacher").float::<$d>(&device);
                    let labels = case.input("labels").int::<{ $d - 1 }>(&device);
                    run_rank::<$d>(
                        case,
                        backend,
                        &device,
                        |s| {
                            let out =
                                kd.forward(s, teacher.clone(), labels.clone(), Reduction::RowMean);
                            let v = to_vec(out.total.clone());
                            (out.total, v)
                        },
                        "student",
                    )
                }};
            }
            match case.input("student").rank() {
                2 => go!(2),
                3 => go!(3),
                r => panic!("golden e: unmapped rank {r}"),
            }
        }
        report("golden_e_combined", backend, g.cases.len());
    }
}
