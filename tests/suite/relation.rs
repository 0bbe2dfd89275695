//! `kd_losses::relation`: relation losses (MiniLM's self-attention relations, RKD distance and
//! angle, similarity-preserving): shape misuse (messages pinned), the teacher is detached, values
//! against slow f64 host references, and RKD's invariance to rotation and translation (proptest,
//! 64 cases on the CPU backends, one in `WGPU_CASE_STRIDE` on wgpu).

use std::sync::LazyLock;

use crate::common::*;
use burn::tensor::{Device, Distribution, Tensor};
use kd_losses::*;
use proptest::prelude::*;

fn dev() -> Device {
    Device::flex().autodiff()
}

fn rand<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device)
}

// -------------------------------------------------------- shape misuse: each message pinned

#[test]
#[should_panic(
    expected = "student_states: width 10 (shape [1, 3, 10]) is not divisible by relation_heads = 4"
)]
fn relation_heads_must_divide_the_student_width() {
    let d = dev();
    self_relation_kl(rand([1, 3, 10], &d), rand([1, 3, 16], &d), 4, None);
}

#[test]
#[should_panic(
    expected = "teacher_states: width 18 (shape [1, 3, 18]) is not divisible by relation_heads = 4"
)]
fn relation_heads_must_divide_the_teacher_width() {
    let d = dev();
    let q = |w| QkvStates {
        queries: rand([1, 3, w], &d),
        keys: rand([1, 3, w], &d),
        values: rand([1, 3, w], &d),
    };
    minilm_v2_loss(q(8), q(18), 4, None);
}

#[test]
#[should_panic(
    expected = "teacher_states: shape [1, 4, 8] does not match student_states shape [1, 3, 8] (batch and sequence length must agree)"
)]
fn relation_rejects_mismatched_sequence_lengths() {
    let d = dev();
    self_relation_kl(rand([1, 3, 8], &d), rand([1, 4, 8], &d), 2, None);
}

#[test]
#[should_panic(
    expected = "teacher_embeddings: batch 5 (shape [5, 3]) does not match student_embeddings batch 4 (shape [4, 2])"
)]
fn rkd_rejects_mismatched_batches() {
    let d = dev();
    rkd_distance(rand([4, 2], &d), rand([5, 3], &d));
}

#[test]
#[should_panic(
    expected = "teacher_embeddings: batch 2 (shape [2, 3]) does not match student_embeddings batch 3"
)]
fn sp_rejects_mismatched_batches() {
    let d = dev();
    similarity_preserving(rand([3, 2], &d), rand([2, 3], &d));
}

// --------------------------------------------------------------------- values and gradients

#[test]
fn rkd_and_sp_detach_the_teacher() {
    let d = dev();
    let s = rand([5, 3], &d).require_grad();
    let t = rand([5, 7], &d).require_grad();
    let rkd = RkdLossConfig::new().init().forward(s.clone(), t.clone());
    let total = rkd.total().add(similarity_preserving(s.clone(), t.clone()));
    let grads = total.backward();
    let g = to_vec(s.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));
    assert!(t.grad(&grads).is_none());
}

/// Slow, obviously-correct f64 host references of the relational losses.
mod reference {
    fn huber(x: f64) -> f64 {
        if x.abs() < 1.0 {
            0.5 * x * x
        } else {
            x.abs() - 0.5
        }
    }
    fn dist(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }
    fn psi_d(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = x.len();
        let mut mu = 0.0;
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    mu += dist(&x[i], &x[j]);
                }
            }
        }
        mu /= (n * (n - 1)) as f64;
        (0..n)
            .map(|i| (0..n).map(|j| dist(&x[i], &x[j]) / mu).collect())
            .collect()
    }
    pub fn rkd_distance(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (ps, pt) = (psi_d(s), psi_d(t));
        let n = s.len();
        let mut acc = 0.0;
        for i in 0..n {
            for j in 0..n {
                acc += huber(ps[i][j] - pt[i][j]);
            }
        }
        acc / (n * n) as f64
    }
    fn unit(a: &[f64], b: &[f64]) -> Vec<f64> {
        let d: Vec<f64> = b.iter().zip(a).map(|(x, y)| x - y).collect();
        let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n == 0.0 {
            d
        } else {
            d.iter().map(|v| v / n).collect()
        }
    }
    fn cosines(x: &[Vec<f64>]) -> Vec<f64> {
        let n = x.len();
        let mut out = Vec::new();
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    let (e1, e2) = (unit(&x[i], &x[j]), unit(&x[i], &x[k]));
                    out.push(e1.iter().zip(&e2).map(|(a, b)| a * b).sum());
                }
            }
        }
        out
    }
    pub fn rkd_angle(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (a, b) = (cosines(s), cosines(t));
        a.iter().zip(&b).map(|(x, y)| huber(x - y)).sum::<f64>() / a.len() as f64
    }
    fn gram_rows(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
        x.iter()
            .map(|a| {
                let row: Vec<f64> = x
                    .iter()
                    .map(|b| a.iter().zip(b).map(|(p, q)| p * q).sum())
                    .collect();
                let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                row.iter().map(|v| v / n).collect()
            })
            .collect()
    }
    pub fn sp(s: &[Vec<f64>], t: &[Vec<f64>]) -> f64 {
        let (a, b) = (gram_rows(s), gram_rows(t));
        let n = s.len();
        let mut acc = 0.0;
        for i in 0..n {
            for j in 0..n {
                acc += (a[i][j] - b[i][j]).powi(2);
            }
        }
        acc / (n * n) as f64
    }
}

#[test]
fn relational_losses_match_f64_references() {
    let s_data: Vec<f32> = vec![
        0.5, -1.0, 2.0, 0.0, 1.5, 0.25, -2.0, 1.0, -0.5, 3.0, 0.75, -1.25,
    ];
    let t_data: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4).collect();
    let rows = |v: &[f32], w: usize| -> Vec<Vec<f64>> {
        v.chunks(w)
            .map(|c| c.iter().map(|&x| x as f64).collect())
            .collect()
    };
    let (s, t) = (rows(&s_data, 3), rows(&t_data, 4));
    for (backend, device) in devices() {
        let st = floats(s_data.clone(), [4, 3], &device);
        let tt = floats(t_data.clone(), [4, 4], &device);
        let pairs = [
            (
                "rkd_distance",
                scalar(rkd_distance(st.clone(), tt.clone())),
                reference::rkd_distance(&s, &t),
            ),
            (
                "rkd_angle",
                scalar(rkd_angle(st.clone(), tt.clone())),
                reference::rkd_angle(&s, &t),
            ),
            (
                "similarity_preserving",
                scalar(similarity_preserving(st.clone(), tt.clone())),
                reference::sp(&s, &t),
            ),
        ];
        for (name, got, want) in pairs {
            assert!(want > 1e-3, "{name}: degenerate reference {want}");
            assert_close(
                &format!("{backend}/{name}"),
                &[got as f32],
                &[want],
                F32_CROSS_RTOL,
            );
        }
        report("api_relational_vs_f64_reference", backend, 3);
    }
}

// ------------------------------------------------------------------------------- properties

static DEVICES: LazyLock<Vec<(&'static str, Device)>> = LazyLock::new(devices);

/// Hidden states and attention scores of ordinary magnitude.
const FEATURE_RANGE: core::ops::Range<f32> = -3.0..3.0;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn vec_of(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(FEATURE_RANGE, n)
}

/// Rotation by `angle` in the plane of axes `(i, j)`, as a `[D, D]` matrix.
fn givens(d: usize, i: usize, j: usize, angle: f32, dev: &Device) -> Tensor<2> {
    let mut m = vec![0.0f32; d * d];
    for k in 0..d {
        m[k * d + k] = 1.0;
    }
    let (c, s) = (angle.cos(), angle.sin());
    m[i * d + i] = c;
    m[j * d + j] = c;
    m[i * d + j] = -s;
    m[j * d + i] = s;
    floats(m, [d, d], dev)
}

proptest! {
    #![proptest_config(cfg())]

    /// RKD distance and angle are invariant to rotating and translating the student and the
    /// teacher embeddings (each in its own space); SP is invariant to rotations.
    #[test]
    fn rkd_invariant_to_rotation_and_translation(
        (n, xs, xt, shift_s, shift_t, angle, scale) in (3usize..=5).prop_flat_map(|n| {
            (Just(n), vec_of(n * 3), vec_of(n * 4), vec_of(3), vec_of(4), -3.0f32..3.0, 0.5f32..4.0)
        })
    ) {
        for (_, d) in case_devices(&DEVICES) {
            let s = floats(xs.clone(), [n, 3], d);
            let t = floats(xt.clone(), [n, 4], d);
            let rs = givens(3, 0, 2, angle, d).matmul(givens(3, 0, 1, 0.7 * angle, d));
            let rt = givens(4, 1, 3, -angle, d).matmul(givens(4, 0, 2, 0.3, d));
            let s2 = s.clone().matmul(rs.clone()).add(floats(shift_s.clone(), [1, 3], d));
            let t2 = t.clone().matmul(rt.clone()).mul_scalar(scale).add(floats(shift_t.clone(), [1, 4], d));
            let close = |a: f64, c: f64| (a - c).abs() <= 2e-4 * c.abs().max(1.0);
            let (a, c) = (scalar(rkd_distance(s.clone(), t.clone())), scalar(rkd_distance(s2.clone(), t2.clone())));
            prop_assert!(close(a, c), "distance {a} vs {c}");
            let (a, c) = (scalar(rkd_angle(s.clone(), t.clone())), scalar(rkd_angle(s2, t2)));
            prop_assert!(close(a, c), "angle {a} vs {c}");
            let (a, c) = (
                scalar(similarity_preserving(s.clone(), t.clone())),
                scalar(similarity_preserving(s.matmul(rs), t.matmul(rt))),
            );
            prop_assert!(close(a, c), "sp {a} vs {c}");
        }
    }
}
