//! `kd_losses::chunked` (feature `chunked`): chunk sizes are validated, a learnable temperature
//! is refused, evaluation without autodiff and on `[B, S, V]` logits, custom row functions.
//! (The property "chunked equals unchunked" is in `divergence::props`.)

use crate::common::*;
use burn::tensor::{Device, Tensor};
use kd_losses::chunked::{chunk_rows_for_budget, chunked_divergence, chunked_rows};
use kd_losses::divergence::{Divergence, JsdConvention, divergence};
use kd_losses::schedule::LearnableTemperatureConfig;
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

/// One row and one chunk: the value `[1]` takes the shared driver's hand-over path on Flex and
/// wgpu (the gradient node of the fused backends) and the inner-product surrogate on ndarray; either way
/// the gradient is scaled by the value's cotangent and adds to the rest of the graph.
#[test]
fn single_row_gradient_follows_its_cotangent_on_every_backend() {
    for (name, device) in devices() {
        let x = Tensor::<2>::from_floats([[1.0, -2.0, 0.5]], &device).require_grad();
        let r = chunked_rows(x.clone(), 4, |c, _, n| {
            c.powi_scalar(2).sum_dim(1).reshape([n])
        });
        assert_eq!(to_vec(r.clone()), vec![5.25]);
        // L = 3·r + Σ x  →  ∂L/∂x = 6·x + 1
        let loss = r.mul_scalar(3.0).add(x.clone().sum());
        let g = to_vec(x.grad(&loss.backward()).unwrap());
        assert_eq!(g, vec![7.0, -11.0, 4.0], "{name}");
    }
}
